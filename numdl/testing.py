"""The conformance kit: the checks numdl runs on its own layers, losses and kernels, public so that
a plugin author runs exactly the same ones on theirs.

- ``check_layer_gradients`` / ``check_loss_gradients``: central differences at float64 against
  ``backward`` (float32 differences are too coarse to judge a gradient).
- ``check_kernel_twin``: a CPU kernel and its CUDA twin on the same inputs give the same arrays
  (on a GPU, or under ``NUMBA_ENABLE_CUDASIM=1``).
- ``compile_ptx`` / ``float64_instructions``: compile a CUDA kernel for a real GPU target without a
  GPU, and list any double-precision instruction that slipped into a float32 kernel.
"""

import numpy as np

from numdl.backend import get_ops


def numeric_gradient(f, array, eps=1e-6):
    """Central differences of scalar ``f()`` with respect to every element of ``array``, which is
    perturbed in place and restored."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = f()
        flat[i] = original - eps
        minus = f()
        flat[i] = original
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def _compare(what, analytic, numeric, rtol, atol):
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"{what}: gradient has shape {analytic.shape}, expected {numeric.shape}")
    error = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    if np.any(error > bound) or not np.all(np.isfinite(analytic)):
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(error - bound), error.shape))
        raise AssertionError(f"{what}: backward gives {analytic[worst]:.8g} at index {worst}, central "
                             f"differences give {numeric[worst]:.8g} (max abs error {error.max():.3g})")
    return float(error.max()) if error.size else 0.0


def check_layer_gradients(layer, input_shape, batch_size=3, seed=0, eps=1e-6, rtol=1e-5, atol=1e-7,
                          training=True, inputs=None, lengths=None):
    """Check ``layer.backward`` against central differences for its input and every parameter.

    The layer is built here at float64 on the CPU for samples of ``input_shape``. The objective is
    ``sum(forward(x) * g)`` for a fixed random ``g``; random layers (dropout) have their stream reset
    before every forward, so each evaluation sees the same mask. ``lengths`` marks the valid steps of
    padded sequences. Layers taking integer ids (``input_dtype``) get random ids and no input-gradient
    check. A layer that adds a term to the model's loss (``added_loss_name``, ``added_loss`` and
    ``added_loss_weight``: GaussianSample's KL) has ``added_loss_weight * added_loss`` added to the
    objective, as its backward adds that term's gradient.
    Raises AssertionError naming the layer and the parameter; returns {"input" or parameter
    name: max abs error}. A merge layer (``many_inputs``, e.g. concat) takes a list of input shapes
    and reports "input0", "input1", ...
    """
    rng = np.random.default_rng(seed)
    if getattr(layer, "many_inputs", False):
        return _check_merge_gradients(layer, input_shape, batch_size, rng, eps, rtol, atol, training, lengths)
    layer.build(tuple(input_shape), get_ops("cpu"), np.float64, rng)
    layer.needs_input_grad = True
    integer_ids = np.dtype(getattr(layer, "input_dtype", None) or np.float64).kind in "iu"
    if inputs is not None:
        x = np.array(inputs, dtype=np.int64 if integer_ids else np.float64)
    elif integer_ids:
        x = rng.integers(0, getattr(layer, "num_embeddings", 2), (batch_size,) + tuple(input_shape))
    else:
        x = rng.standard_normal((batch_size,) + tuple(input_shape))
    if lengths is not None:
        layer.lengths = np.asarray(lengths)
    state = layer.get_rng_state()

    def run():
        layer.set_rng_state(state)
        return layer.forward(x, training=training)

    upstream = rng.standard_normal(run().shape)

    def objective():
        value = float(np.sum(run() * upstream))
        if getattr(layer, "added_loss_name", None):  # a term the layer adds to the model's loss (a VAE's KL)
            value += layer.added_loss_weight * layer.added_loss
        return value

    run()
    dx = layer.backward(upstream.copy())
    dx = None if dx is None else np.array(dx)
    params = layer.named_parameters()
    analytic = {name: np.array(p.grad) for name, p in params.items()}
    name = layer.name or type(layer).__name__
    errors = {}
    if not integer_ids:
        errors["input"] = _compare(f"layer {name!r}, input", dx, numeric_gradient(objective, x, eps), rtol, atol)
    for pname, param in params.items():
        numeric = numeric_gradient(objective, param.value, eps)
        errors[pname] = _compare(f"layer {name!r}, parameter {pname!r}", analytic[pname], numeric, rtol, atol)
    return errors


def _check_merge_gradients(layer, input_shapes, batch_size, rng, eps, rtol, atol, training, lengths=None):
    """check_layer_gradients for a layer joining several inputs (``input_shapes`` a list): every
    input's gradient ("input0", "input1", ...; an input that gets None must not affect the output).
    Random streams are reset before every forward and ``lengths`` set, as for one input."""
    layer.build([tuple(s) for s in input_shapes], get_ops("cpu"), np.float64, rng)
    layer.needs_input_grad = True
    xs = [rng.standard_normal((batch_size,) + tuple(s)) for s in input_shapes]
    if lengths is not None:
        layer.lengths = np.asarray(lengths)
    state = layer.get_rng_state()

    def run():
        layer.set_rng_state(state)
        return layer.forward(xs, training=training)

    upstream = rng.standard_normal(run().shape)

    def objective():
        return float(np.sum(run() * upstream))

    run()
    grads = layer.backward(upstream.copy())
    grads = [None if g is None else np.array(g) for g in grads]
    params = layer.named_parameters()
    analytic = {name: np.array(p.grad) for name, p in params.items()}
    errors = {}
    for index, (x, grad) in enumerate(zip(xs, grads)):
        expected = np.zeros_like(x) if grad is None else grad
        errors[f"input{index}"] = _compare(f"layer {layer.name!r}, input {index}", expected,
                                           numeric_gradient(objective, x, eps), rtol, atol)
    for pname, param in params.items():
        errors[pname] = _compare(f"layer {layer.name!r}, parameter {pname!r}", analytic[pname],
                                 numeric_gradient(objective, param.value, eps), rtol, atol)
    return errors


def check_loss_gradients(loss, pred, target, eps=1e-6, rtol=1e-5, atol=1e-8):
    """Check ``loss.backward()`` against central differences of ``loss.forward(pred, target)``."""
    pred = np.array(pred, dtype=np.float64)
    loss.forward(pred, target)
    analytic = np.array(loss.backward())
    # reduction "none": the gradient of the losses' sum (backward's default upstream of ones)
    numeric = numeric_gradient(lambda: float(np.sum(loss.forward(pred, target))), pred, eps)
    return _compare(f"loss {loss.name!r}", analytic, numeric, rtol, atol)


def check_kernel_twin(cpu_kernel, cuda_kernel, args, work_items, rtol=1e-5, atol=1e-6, compare=None):
    """Run a CPU kernel and its CUDA twin on copies of ``args``; the array arguments at positions
    ``compare`` (default: all; leave out target-specific work buffers) must end equal.

    Needs a GPU or ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported). Keep arrays tiny
    under the simulator: each simulated thread is a Python thread.
    """
    from numba import cuda

    from numdl.kernels.common import launch

    cpu_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    cpu_kernel(*cpu_args)
    gpu_args = [cuda.to_device(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    launch(cuda_kernel, work_items, *gpu_args)
    for index, (expected, got) in enumerate(zip(cpu_args, gpu_args)):
        if isinstance(expected, np.ndarray) and (compare is None or index in compare):
            np.testing.assert_allclose(got.copy_to_host(), expected, rtol=rtol, atol=atol,
                                       err_msg=f"argument {index} of {cpu_kernel.__name__} differs on CUDA")


def compile_ptx(cuda_kernel, args, cc=None):
    """PTX of ``cuda_kernel`` for the types of ``args``, compiled for compute capability ``cc``.

    Works without a GPU: numba-cuda asks the current device's compute capability when it compiles
    a called device function, so for the duration a stand-in device answers ``cc``.
    """
    from types import SimpleNamespace

    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    from numdl.kernels import tuning

    cc = cc or tuning.PTX_CHECK_COMPUTE_CAPABILITY
    signature = tuple(numba.typeof(a) for a in args)
    pyfunc = getattr(cuda_kernel, "py_func", cuda_kernel)
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, signature, cc=cc, **_ptx_options(cuda_kernel))
    finally:
        dispatcher.get_current_device = real
    return ptx


def _ptx_options(cuda_kernel):
    options = getattr(cuda_kernel, "targetoptions", {}) or {}
    return {"fastmath": bool(options.get("fastmath", False))}


def float64_instructions(ptx):
    """The PTX instruction lines that compute, load or convert in double precision."""
    lines = (line.split("//")[0].strip() for line in ptx.splitlines())
    return [line for line in lines if ".f64" in line and not line.startswith(".")]
