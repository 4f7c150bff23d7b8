"""pytest-benchmark tracking of numdl's training and inference steps (``pytest benchmarks``).

Timings live here and in ``numdl bench`` (which also runs PyTorch side by side), never in tests/.
"""

import numpy as np
import pytest

from numdl import bench

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("kind, batch_size", [("mlp", 64), ("mlp", 256), ("cnn", 128), ("lstm", 128),
                                              ("transformer", 128)])
def test_train_step(benchmark, kind, batch_size):
    model = bench._numdl_model(kind)
    x, y = bench._data(batch_size, (28, 28))
    model.warmup(batch_size)
    benchmark(model.train_step, x, y)


def test_mlp_inference_over_the_test_set(benchmark):
    model = bench._numdl_model("mlp")
    x, _ = bench._data(10000, (28, 28))
    model.warmup(1000)
    out = benchmark(model.predict, x, 1000)
    assert out.shape == (10000, 10) and np.isfinite(out).all()


def _kernel_family_cases():
    try:
        import torch  # the case list also names PyTorch's twin modules (unused here)
    except ImportError:
        return []
    return bench._kernel_cases(torch)


@pytest.mark.parametrize("case", _kernel_family_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def test_kernel_family_forward_backward(benchmark, case):
    """Every kernel family at its two sizes (the cases of `numdl bench --suite kernels`), numdl alone:
    one forward and backward of the layer, input gradient included."""
    import numdl

    _, _, layers, shape, batch, _ = case
    model = numdl.Sequential(layers, input_shape=shape, seed=0, input_grad=True)
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    dout = np.ones(model.forward(x, training=True).shape, np.float32)

    def step():
        model.forward(x, training=True)
        return model.backward(dout)

    dx = benchmark(step)
    assert dx.shape == x.shape and np.isfinite(dx).all()
