"""pytest-benchmark tracking of numdl's training and inference steps (``pytest benchmarks``).

Timings live here and in ``numdl bench`` (which also runs PyTorch side by side), never in tests/.
"""

import numpy as np
import pytest

from numdl import bench

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("kind, batch_size", [("mlp", 64), ("mlp", 256), ("cnn", 128), ("lstm", 128)])
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
