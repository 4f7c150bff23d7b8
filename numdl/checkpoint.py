"""Checkpoints: safetensors files (tensors) with JSON metadata, written atomically, read without pickle.

Layout of the tensors: ``param/<model parameter name>``, ``state/<model state name>`` (BatchNorm's
running statistics), ``optim/<parameter index>/<buffer name>`` (optimizer moments). The metadata
(safetensors' ``__metadata__``, one key ``numdl`` holding JSON) records the format version, numdl's
version, the resolved config, the registered names of the items used and any training position the
caller adds (epoch, step, random states). Writing goes to a temporary file in the same folder, is
fsynced, then ``os.replace``d over the target: a crash mid-save leaves the previous file intact.
"""

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from numdl.errors import CheckpointError

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit for the JSON header
_TMP_PREFIX = ".numdl-tmp-"


def model_tensors(model, optimizer=None):
    """{name: host array} of everything a model (and optimizer) needs to continue exactly."""
    ops = model.ops
    tensors = {f"param/{name}": ops.to_numpy(p.value) for name, p in model.named_parameters().items()}
    for name, array in model.named_state().items():
        tensors[f"state/{name}"] = ops.to_numpy(array)
    if optimizer is not None and optimizer.state is not None:
        for index, buffers in enumerate(optimizer.state):
            for name, array in buffers.items():
                tensors[f"optim/{index}/{name}"] = ops.to_numpy(array)
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; returns the path."""
    from safetensors.numpy import save

    from numdl import __version__

    path = Path(path)
    info = {"format_version": FORMAT_VERSION, "numdl_version": __version__,
            "layers": [layer.name for layer in model.layers], "dtype": str(model.dtype),
            "input_shape": list(model.input_shape),
            "rng_states": [layer.get_rng_state() for layer in model.layers]}
    if model.loss is not None:
        info["loss"] = model.loss.name
    if optimizer is not None:
        info["optimizer"] = {"name": optimizer.name, "steps": optimizer.steps, "lr": optimizer.lr}
    info["registered_by"] = _sources(model, optimizer)
    if not (meta or {}).get("config"):  # a model made in Python: record how to rebuild it
        from numdl.config import config_of

        config = config_of(model)
        if config is not None:
            info["config"] = config
    info.update(meta or {})
    tensors = model_tensors(model, optimizer)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteTensor(bad, f"refusing to write {path}: {bad} holds NaN or Inf")
    payload = save(tensors, metadata={"numdl": json.dumps(info)})
    tmp = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{path.name}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a read-only folder: no partial file left, one line
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(f"cannot write checkpoint {path}: {error.strerror or error}") from None
    _fsync_directory(path.parent)
    return path


class NonFiniteTensor(CheckpointError):
    """A checkpoint was not written because a tensor holds NaN or Inf (``tensor`` names it)."""

    def __init__(self, tensor, message):
        super().__init__(message)
        self.tensor = tensor


def first_non_finite(tensors):
    """The name of the first floating tensor holding NaN or Inf, or None."""
    from numdl.backend import get_ops

    count_non_finite = get_ops("cpu").count_non_finite  # one vectorised pass, no boolean copy
    for name, array in tensors.items():
        if array.dtype.kind != "f" or not array.size:
            continue
        flat = np.ascontiguousarray(array).reshape(-1)
        if (count_non_finite(flat) if array.dtype in (np.float32, np.float64) else (~np.isfinite(flat)).sum()) > 0:
            return name
    return None


def _sources(model, optimizer):
    """{kind: {name: "plugin (package version)"}} of every registered item the checkpoint uses."""
    from numdl.plugins import registry

    items = registry().items
    used = {"layer": {layer.name for layer in model.layers if layer.name}}
    if model.loss is not None:
        used["loss"] = {model.loss.name}
    if optimizer is not None:
        used["optimizer"] = {optimizer.name}
    return {kind: {name: items[kind][name].source for name in sorted(names) if name in items[kind]}
            for kind, names in used.items()}


def _fsync_directory(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temporaries(folder):
    """Remove temporary files that a crashed save left behind (they are never read)."""
    for stale in Path(folder).glob(f"{_TMP_PREFIX}*"):
        try:
            stale.unlink()
        except OSError:
            pass


def read_safetensors(path, what="safetensors file"):
    """(path, header, {name: array}) of a safetensors file, refusing anything else (a pickle, a
    truncated or corrupt file) with one clear CheckpointError. Never unpickles or executes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    from numdl.fileio import regular_file

    path, size = regular_file(path, what, CheckpointError)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8 and struct.unpack("<Q", head)[0] > min(size, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: header length {struct.unpack('<Q', head)[0]} runs past the end of "
                                      f"the file or the {MAX_HEADER_BYTES} bytes a header may have; not a "
                                      f"safetensors {what} (a pickle or a truncated file?)")
            raw = head + f.read()  # the header's length is sane: the file is what it says it is
    except OSError as error:
        raise CheckpointError(f"cannot read {what} {path} ({error.strerror or error})") from None
    header = _parse_header(raw, path)
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: corrupt {what} ({error})") from None
    return path, header, tensors


def read_checkpoint(path):
    """(tensors, metadata) of a checkpoint file, refusing anything that is not a well-formed numdl
    safetensors file with one clear CheckpointError. Never unpickles, imports or executes."""
    path, header, tensors = read_safetensors(path, "checkpoint")
    try:
        meta = json.loads(header.get("__metadata__", {}).get("numdl", ""))
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise CheckpointError(f"{path}: not a numdl checkpoint (no numdl metadata)") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {meta.get('format_version')!r}"
                              if isinstance(meta, dict) else f"{path}: malformed numdl metadata")
    check_metadata(meta, path)
    return tensors, meta


# ------------------------------------------------------------------------ metadata schema
MAX_INPUT_ELEMENTS = 1 << 31  # per sample: past this a model cannot be built on any machine numdl targets


def _is_int(value, low=0, high=None):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metadata(meta, path):
    """Refuse metadata of the wrong type or range before anything is built from it: one
    CheckpointError naming the field. Fields a checkpoint may lack are checked when present."""
    def bad(field, expected):
        value = _shorten(repr(_get(meta, field)))
        raise CheckpointError(f"{path}: metadata field {field} must be {expected}, got {value}")

    if "config" in meta:
        config = meta["config"]
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            bad("config", "a table with a model table")
        from numdl.config import validate
        from numdl.errors import ConfigError

        try:
            validate(config)
        except ConfigError as error:
            raise CheckpointError(f"{path}: the config inside is invalid: {error}") from None
    if "input_shape" in meta:
        shape = meta["input_shape"]
        # one input: a list of sizes; a graph model with several inputs: a list of such lists
        shapes = shape if isinstance(shape, list) and shape and all(isinstance(d, list) for d in shape) else [shape]
        for one in shapes:
            if not isinstance(one, list) or not one or not all(_is_int(d, 1) for d in one):
                bad("input_shape", "a list of positive integers (or of such lists, one per input)")
            if math.prod(one) > MAX_INPUT_ELEMENTS:
                bad("input_shape", f"at most {MAX_INPUT_ELEMENTS} elements per sample")
    if "optimizer" in meta:
        optimizer = meta["optimizer"]
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("name"), str):
            bad("optimizer", "a table with a name")
        if not _is_int(optimizer.get("steps")):
            bad("optimizer.steps", "an integer >= 0")
        if not _is_number(optimizer.get("lr")) or optimizer["lr"] < 0:  # a cosine schedule ends at 0
            bad("optimizer.lr", "a finite number >= 0")
    if "normalization" in meta:
        from numdl.data.transforms import NORMALIZATIONS

        state = meta["normalization"]
        if not isinstance(state, dict) or state.get("method") not in NORMALIZATIONS:
            bad("normalization", f"a table whose method is one of {', '.join(NORMALIZATIONS)}")
        if not _is_number(state.get("shift")) or not _is_number(state.get("divisor")) or state["divisor"] == 0:
            bad("normalization", "finite shift and divisor (divisor not 0)")
        low_high = state.get("input_range")
        if low_high is not None and not (isinstance(low_high, list) and len(low_high) == 2
                                         and all(_is_number(v) for v in low_high) and low_high[0] <= low_high[1]):
            bad("normalization.input_range", "[low, high]")
    if "fit_position" in meta and meta["fit_position"] is not None:
        position = meta["fit_position"]
        if not isinstance(position, dict):
            bad("fit_position", "a table")
        if not _is_int(position.get("epoch"), 1):
            bad("fit_position.epoch", "an integer >= 1")
        if not _is_int(position.get("step")):
            bad("fit_position.step", "an integer >= 0")
        if not isinstance(position.get("epoch_rng_state"), dict):
            bad("fit_position.epoch_rng_state", "a table")
        for key in ("correct", "counted"):
            if not _is_int(position.get(key, 0)):
                bad(f"fit_position.{key}", "an integer >= 0")
        if not _is_number(position.get("total_loss", 0.0)):
            bad("fit_position.total_loss", "a finite number")
        reference = position.get("reference_loss")
        if reference is not None and not _is_number(reference):
            bad("fit_position.reference_loss", "a finite number or absent")
        terms = position.get("term_totals", {})
        if not (isinstance(terms, dict) and all(isinstance(k, str) and _is_number(v) for k, v in terms.items())):
            bad("fit_position.term_totals", "a table of finite numbers")
    if "rng_states" in meta and not (isinstance(meta["rng_states"], list)
                                     and all(isinstance(state, dict) for state in meta["rng_states"])):
        bad("rng_states", "a list of tables")
    if "schedule_state" in meta and not isinstance(meta["schedule_state"], dict):
        bad("schedule_state", "a table")


def _get(meta, field):
    value = meta
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _shorten(text, limit=80):
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_header(raw, path):
    """The safetensors JSON header, with the structural checks stated in numdl's own words."""
    if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(raw)} bytes)")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > len(raw) - 8:
        raise CheckpointError(f"{path}: header length {length} runs past the end of the file ({len(raw)} bytes); "
                              f"not a safetensors checkpoint (a pickle or a truncated file?)")
    try:
        header = json.loads(raw[8:8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: checkpoint header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: checkpoint header is not a table")
    data_size = len(raw) - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        itemsize = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                    "BOOL": 1, "U64": 8, "U32": 4, "U16": 2}.get(dtype)
        if itemsize is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the data ({begin}..{end} of {data_size} bytes)")
        if (end - begin) != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} does not match its {end - begin} bytes")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise CheckpointError(f"{path}: tensor {name!r} overlaps the tensor before it")
        if begin > position:
            raise CheckpointError(f"{path}: unused bytes before tensor {name!r}")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: {data_size - position} trailing bytes after the last tensor")
    return header


def apply_checkpoint(model, tensors, optimizer=None, path="checkpoint", reset_optimizer=False, meta=None):
    """Copy checkpoint tensors into ``model`` (and ``optimizer``) after checking, all problems listed
    at once, that every tensor the model needs is there with its shape, dtype and finite values, and
    nothing else is. Nothing is cast: a float16 or float64 tensor for a float32 model is refused.

    A stateful optimizer that has taken steps must find its state (Adam's moments) in the file:
    restarting it from zero silently gives other weights than the uninterrupted run. With
    ``reset_optimizer`` its state is not loaded and it starts afresh (step 0)."""
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model_tensors(model).items()}
    optim_expected = {}
    if optimizer is not None:
        for index, param in enumerate(model.parameters()):
            for name in optimizer.state_names:
                optim_expected[f"optim/{index}/{name}"] = (tuple(param.value.shape), np.dtype(model.dtype))
    stateful = bool(optim_expected) and not reset_optimizer
    has_optim = any(k.startswith("optim/") for k in tensors)
    steps = int(((meta or {}).get("optimizer") or {}).get("steps", 0) or 0)
    if stateful and not has_optim and steps > 0:
        raise CheckpointError(
            f"{path}: the state of optimizer {optimizer.name!r} (optim/...) is missing after {steps} steps; "
            f"continuing would restart it from zero and give other weights than the uninterrupted run. "
            f"Pass --reset-optimizer (load_weights(..., reset_optimizer=True)) to accept that")
    if stateful and has_optim:
        expected.update(optim_expected)  # all of it, or the file is refused
    # Optimizer tensors not loaded (no optimizer, a reset, a fresh model's save) must still be ones
    # this optimizer has: an unknown name is reported, never ignored.
    found = {k: v for k, v in tensors.items()
             if k in expected or not (k.startswith("optim/") and (optimizer is None or k in optim_expected))}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    common = sorted(set(expected) & set(found))
    misshaped = [f"{k} {tuple(found[k].shape)} vs model {expected[k][0]}" for k in common
                 if tuple(found[k].shape) != expected[k][0]]
    mistyped = [f"{k} {found[k].dtype} vs model {expected[k][1]}" for k in common
                if found[k].dtype != expected[k][1]]
    non_finite = [k for k in common if found[k].dtype == expected[k][1] and first_non_finite({k: found[k]}) is not None]
    if missing or unexpected or misshaped or mistyped or non_finite:
        parts = [f"{label}: {', '.join(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped),
                  ("wrong dtype", mistyped), ("NaN or Inf in", non_finite)) if items]
        raise CheckpointError(f"{path} does not match the model; " + "; ".join(parts))
    ops = model.ops
    for name, param in model.named_parameters().items():
        _copy_into(ops, param.value, tensors[f"param/{name}"])
    for name, array in model.named_state().items():
        _copy_into(ops, array, tensors[f"state/{name}"])
    if stateful and has_optim:
        params = model.parameters()
        optimizer.ensure_state(params)  # copied into, not replaced: they may be views of flat buffers
        for index, buffers in enumerate(optimizer.state):
            for name in optimizer.state_names:
                _copy_into(ops, buffers[name], tensors[f"optim/{index}/{name}"])


def _copy_into(ops, target, values):
    values = np.asarray(values)  # same dtype: checked by apply_checkpoint
    if isinstance(target, np.ndarray):
        target[...] = values
    else:
        target.copy_to_device(values)
