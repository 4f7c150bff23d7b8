"""``numdl check``: the conformance run a plugin author gets for free.

For every selected item: the float64 gradient check (layers, losses) or a descent check
(optimizers), the CPU-vs-CUDA comparison under Numba's simulator (in a subprocess: the simulator is
chosen at import), the PTX compile of every CUDA kernel the item ran, with float32 kernels scanned
for double precision, a checkpoint round trip, and a micro-benchmark. Items declare how to be
checked with optional class attributes: ``check_input_shape`` (layers, default (2, 5); a list of
shapes for a merge layer, which is checked inside a graph model), ``check_kwargs`` (constructor
arguments, default none), and for losses ``check_pred_shape`` (default (6, 4)) and
``check_target(rng, pred_shape)`` (targets of another kind than labels or values, e.g. boxes).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from numdl.backend import get_ops
from numdl.plugins import KINDS, registry

CHECKED_KINDS = ("layer", "loss", "optimizer")


def select(targets):
    """[(kind, name, Entry)] for the given package or item names (default: every plugin's items)."""
    items = registry().items
    chosen = []
    for kind in CHECKED_KINDS:
        for name, entry in sorted(items[kind].items()):
            if targets:
                if name in targets or any(t == entry.source.split(" ")[0] or f"({t} " in entry.source
                                          for t in targets):
                    chosen.append((kind, name, entry))
            elif entry.source != "numdl":
                chosen.append((kind, name, entry))
    return chosen


def _make(entry):
    return entry.cls(**getattr(entry.cls, "check_kwargs", {}))


def _layer_model(entry, device="cpu", dtype="float64"):
    """A one-layer model of the item and its per-sample input shape (a list of shapes for a merge
    layer: then a graph model of one input per shape)."""
    import numdl

    shape = getattr(entry.cls, "check_input_shape", (2, 5))
    if getattr(entry.cls, "many_inputs", False):
        shapes = [tuple(s) for s in shape]
        inputs = [numdl.Input(s) for s in shapes]
        output = _make(entry)(inputs)
        one = len(shapes) == 1  # one input: the model takes an array, not a list
        model = numdl.Model(inputs[0] if one else inputs, output, dtype=dtype, device=device, seed=0,
                            input_grad=True)
        return model, shapes[0] if one else shapes
    shape = tuple(shape)
    model = numdl.Sequential([_make(entry)], input_shape=shape, dtype=dtype, device=device, seed=0)
    return model, shape


def _random_input(rng, shape, dtype, batch=3):
    if isinstance(shape, list):
        return [rng.standard_normal((batch,) + s).astype(dtype) for s in shape]
    return rng.standard_normal((batch,) + shape).astype(dtype)


class KernelRecorder:
    """Records the (cuda kernel, arguments) of every ops.run_kernels call while active."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        ops = get_ops("cpu")
        self._original = ops.run_kernels

        def recording(cpu_kernel, cuda_kernel, work_items, *args):
            self.calls.append((cpu_kernel, cuda_kernel, [np.array(a) if isinstance(a, np.ndarray) else a
                                                         for a in args]))
            return self._original(cpu_kernel, cuda_kernel, work_items, *args)

        ops.run_kernels = recording
        return self

    def __exit__(self, *exc):
        del get_ops("cpu").run_kernels
        return False


CUDA_SKIP = "skipped: the CUDA checks need numba-cuda (pip install 'numdl[cuda]')"


def cuda_checks_available():
    """numba-cuda is installed (numba's own deprecated CUDA target fails in other ways)."""
    import importlib.util

    return importlib.util.find_spec("numba_cuda") is not None


def _randomise_parameters(model, rng):
    """Every parameter drawn at random (the same on every device): a twin that reads one element
    where it should read another (alpha[0] for alpha[c]) passes with constant initial values."""
    if model._bank is None:
        return
    values = model.ops.to_numpy(model._bank.values)
    host = rng.uniform(-1.0, 1.0, values.shape).astype(values.dtype)
    if isinstance(model._bank.values, np.ndarray):
        model._bank.values[...] = host
    else:
        model._bank.values.copy_to_device(host)


def _loss_sample(entry, rng):
    """(float64 predictions of the loss's check_pred_shape, targets of its kind) for the checks."""
    pred_shape = tuple(getattr(entry.cls, "check_pred_shape", (6, 4)))
    pred = rng.standard_normal(pred_shape)
    if hasattr(entry.cls, "check_target"):
        return pred, entry.cls.check_target(rng, pred_shape)
    if entry.cls.target_kind == "labels":
        return pred, rng.integers(0, pred_shape[-1], pred_shape[:-1])
    return pred, rng.uniform(0, 1, pred_shape)


def exercise(kind, entry, dtype="float64", device="cpu"):
    """Run the item once forward and backward (or one step) on random parameters, input and
    upstream gradient; returns the arrays it produced."""
    rng = np.random.default_rng(0)
    if kind == "layer":
        model, shape = _layer_model(entry, device, dtype)
        _randomise_parameters(model, rng)
        x = _random_input(rng, shape, dtype)
        out = model.forward([model.ops.asarray(a) for a in x] if isinstance(x, list) else model.ops.asarray(x),
                            training=True)
        upstream = rng.standard_normal(tuple(out.shape)).astype(dtype)
        if hasattr(model, "order"):  # a graph: its backward returns every input's gradient
            dx = model.backward(model.ops.asarray(upstream))
        else:
            model.layers[0].needs_input_grad = True
            dx = model.layers[0].backward(model.ops.asarray(upstream))
        result = {"out": model.ops.to_numpy(out)}
        for index, d in enumerate(dx if isinstance(dx, list) else [dx]):
            if d is not None:
                result["dx" if index == 0 else f"dx{index}"] = model.ops.to_numpy(d)
        result.update({f"grad {n}": model.ops.to_numpy(p.grad) for n, p in model.named_parameters().items()})
        return result
    if kind == "loss":
        loss = _make(entry)
        pred, target = _loss_sample(entry, rng)
        value = loss.forward(get_ops(device).asarray(pred.astype(dtype)), target)
        return {"value": np.array([value]), "grad": get_ops(device).to_numpy(loss.backward())}
    from numdl.layers.base import Parameter

    ops = get_ops(device)
    param = Parameter("p", ops.asarray(rng.standard_normal(11).astype(dtype)), ops.asarray(np.zeros(11, dtype)))
    optimizer = _make(entry)
    for _ in range(3):
        ops.zero_(param.grad)
        param.grad = ops.asarray(2 * ops.to_numpy(param.value))  # gradient of sum(p^2)
        optimizer.step([param])
    return {"param": ops.to_numpy(param.value)}


def gradient_check(kind, entry):
    from numdl.testing import check_layer_gradients, check_loss_gradients

    if kind == "layer":
        shape = getattr(entry.cls, "check_input_shape", (2, 5))
        many = getattr(entry.cls, "many_inputs", False)
        check_layer_gradients(_make(entry), [tuple(s) for s in shape] if many else tuple(shape))
        return "ok"
    if kind == "loss":
        check_loss_gradients(_make(entry), *_loss_sample(entry, np.random.default_rng(1)))
        return "ok"
    before = float(np.sum(np.random.default_rng(0).standard_normal(11) ** 2))
    after = float(np.sum(exercise(kind, entry)["param"] ** 2))
    if not after < before:
        raise AssertionError(f"optimizer {entry.name!r}: three steps on sum(p^2) did not decrease it "
                             f"({before:.4g} -> {after:.4g})")
    return "ok"


def ptx_check(kind, entry):
    from numdl.testing import compile_ptx, float64_instructions

    if not cuda_checks_available():
        return CUDA_SKIP
    compiled = set()
    for dtype in ("float32", "float64"):
        with KernelRecorder() as recorder:
            exercise(kind, entry, dtype)
        for cpu_kernel, cuda_kernel, args in recorder.calls:
            if cuda_kernel is None:
                return "CPU-only"
            key = (cuda_kernel.__name__ if hasattr(cuda_kernel, "__name__") else id(cuda_kernel), dtype)
            if key in compiled:
                continue
            ptx = compile_ptx(cuda_kernel, args)
            compiled.add(key)
            if dtype == "float32" and float64_instructions(ptx):
                raise AssertionError(f"{cuda_kernel.__name__}: float64 instructions in the float32 kernel")
    return f"ok ({len(compiled)} kernel compiles)" if compiled else "no own kernels"


def twin_check(kind, entry):
    """CPU against CUDA (simulator) in a subprocess; 'CPU-only' when the item has no CUDA twin."""
    if not cuda_checks_available():
        return CUDA_SKIP
    script = (f"import json, sys, numpy as np\nfrom numdl import check\nfrom numdl.plugins import registry\n"
              f"entry = registry().items[{kind!r}][{entry.name!r}]\n"
              f"try:\n    gpu = check.exercise({kind!r}, entry, device='cuda')\n"
              f"except Exception as error:\n    print(json.dumps({{'error': type(error).__name__ + ': ' + str(error)}}))\n"
              f"    sys.exit(0)\n"
              f"cpu = check.exercise({kind!r}, entry)\n"
              f"bad = [k for k in cpu if not np.allclose(cpu[k], gpu[k], rtol=1e-9, atol=1e-12)]\n"
              f"print(json.dumps({{'mismatch': bad}}))\n")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise AssertionError(f"simulator run failed: {result.stderr.strip().splitlines()[-1:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in report:
        if "CPU-only" in report["error"]:
            return "CPU-only"
        raise AssertionError(report["error"])
    if report["mismatch"]:
        raise AssertionError(f"CUDA differs from CPU in: {', '.join(report['mismatch'])}")
    return "ok"


def checkpoint_check(kind, entry):
    if kind != "layer":
        return "n/a"
    model, shape = _layer_model(entry)
    model.compile("mse", "sgd")
    x = _random_input(np.random.default_rng(2), shape, np.float64)
    with tempfile.TemporaryDirectory() as folder:
        path = model.save(Path(folder) / "item.safetensors")
        clone, _ = _layer_model(entry)
        for p in clone.parameters():
            p.value[...] = 0
        clone.compile("mse", "sgd").load_weights(path)
    if not np.array_equal(model.predict(x), clone.predict(x)):
        raise AssertionError("outputs differ after a checkpoint round trip")
    return "ok"


def benchmark(kind, entry):
    start = time.perf_counter()
    runs = 0
    while time.perf_counter() - start < 0.2 or runs < 3:
        exercise(kind, entry, "float32")
        runs += 1
    return f"{(time.perf_counter() - start) / runs * 1e6:,.0f} us"


CHECKS = (("gradients", gradient_check), ("cuda twin", twin_check), ("ptx", ptx_check),
          ("checkpoint", checkpoint_check), ("benchmark", benchmark))


def run_checks(targets):
    """[(kind, name, source, {check: (passed, text)})] for every selected item."""
    rows = []
    for kind, name, entry in select(targets):
        results = {}
        for label, check in CHECKS:
            try:
                results[label] = (True, check(kind, entry))
            except Exception as error:  # a failing check is a row in the table, not a crash
                results[label] = (False, f"FAIL: {error}")
        rows.append((kind, name, entry.source, results))
    return rows


__all__ = ["run_checks", "select", "exercise", "KINDS"]
