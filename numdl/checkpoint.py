"""Checkpoints: safetensors files (tensors) with JSON metadata, written atomically, read without pickle.

Layout of the tensors: ``param/<model parameter name>``, ``state/<model state name>`` (BatchNorm's
running statistics), ``optim/<parameter index>/<buffer name>`` (optimizer moments). The metadata
(safetensors' ``__metadata__``, one key ``numdl`` holding JSON) records the format version, numdl's
version, the resolved config, the registered names of the items used and any training position the
caller adds (epoch, step, random states). Writing goes to a temporary file in the same folder, is
fsynced, then ``os.replace``d over the target: a crash mid-save leaves the previous file intact.
"""

import json
import os
import struct
from pathlib import Path

import numpy as np

from numdl.errors import CheckpointError

FORMAT_VERSION = 1
_TMP_PREFIX = ".numdl-tmp-"


def model_tensors(model, optimizer=None):
    """{name: host array} of everything a model (and optimizer) needs to continue exactly."""
    ops = model.ops
    tensors = {f"param/{name}": ops.to_numpy(p.value) for name, p in model.named_parameters().items()}
    for i, layer in enumerate(model.layers):
        for name, array in layer.named_state().items():
            tensors[f"state/{i}.{layer.name}.{name}"] = ops.to_numpy(array)
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
    info.update(meta or {})
    payload = save(model_tensors(model, optimizer), metadata={"numdl": json.dumps(info)})
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    tmp = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{path.name}"
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)
    return path


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


def read_checkpoint(path):
    """(tensors, metadata) of a checkpoint file, refusing anything that is not a well-formed numdl
    safetensors file with one clear CheckpointError. Never unpickles, imports or executes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error.strerror or error})") from None
    header = _parse_header(raw, path)
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: corrupt checkpoint ({error})") from None
    try:
        meta = json.loads(header.get("__metadata__", {}).get("numdl", ""))
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise CheckpointError(f"{path}: not a numdl checkpoint (no numdl metadata)") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {meta.get('format_version')!r}"
                              if isinstance(meta, dict) else f"{path}: malformed numdl metadata")
    return tensors, meta


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


def apply_checkpoint(model, tensors, optimizer=None, path="checkpoint"):
    """Copy checkpoint tensors into ``model`` (and ``optimizer``), after checking that every tensor
    the model needs is there with its shape and nothing else is: all problems listed at once."""
    expected = {k: tuple(v.shape) for k, v in model_tensors(model).items()}
    found = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("optim/")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(f"{k} {found[k]} vs model {expected[k]}" for k in set(expected) & set(found)
                       if expected[k] != found[k])
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if items]
        raise CheckpointError(f"{path} does not match the model; " + "; ".join(parts))
    ops = model.ops
    for name, param in model.named_parameters().items():
        _copy_into(ops, param.value, tensors[f"param/{name}"])
    for i, layer in enumerate(model.layers):
        for name, array in layer.named_state().items():
            _copy_into(ops, array, tensors[f"state/{i}.{layer.name}.{name}"])
    if optimizer is not None:
        params = model.parameters()
        names = sorted({k.split("/")[2] for k in tensors if k.startswith("optim/")})
        if names:
            for index, param in enumerate(params):
                for name in names:
                    key = f"optim/{index}/{name}"
                    if key not in tensors or tuple(tensors[key].shape) != tuple(param.value.shape):
                        raise CheckpointError(f"{path}: optimizer state {key} is missing or mis-shaped")
            optimizer.ensure_state(params)  # copied into, not replaced: they may be views of flat buffers
            for index, buffers in enumerate(optimizer.state):
                for name in names:
                    if name not in buffers:
                        raise CheckpointError(f"{path}: optimizer state optim/{index}/{name} is not a buffer "
                                              f"of {optimizer.name}")
                    _copy_into(ops, buffers[name], tensors[f"optim/{index}/{name}"])


def _copy_into(ops, target, values):
    values = np.asarray(values, dtype=target.dtype)
    if isinstance(target, np.ndarray):
        target[...] = values
    else:
        target.copy_to_device(values)
