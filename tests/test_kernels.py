"""Every CPU kernel against a plain NumPy float64 reference, at float32 and float64, and the twin
pairing rule: each ``*_cpu`` kernel has a ``*_cuda`` twin with the same leading parameters."""

import importlib
import inspect

import numpy as np
import pytest

from kernel_cases import CASES, DTYPES, all_cases, tolerance
from numdl.kernels import KERNEL_MODULES


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case_id, family, op, make", all_cases(), ids=[c[0] for c in all_cases()])
def test_cpu_kernel_matches_numpy_reference(case_id, family, op, make, dtype):
    module = importlib.import_module(f"numdl.kernels.{family}")
    args, _, expected = make(dtype, np.random.default_rng(7))
    getattr(module, f"{op}_cpu")(*args)
    for index, reference in expected.items():
        assert args[index].dtype == dtype, "kernels must not change an output's dtype"
        np.testing.assert_allclose(args[index], reference, **tolerance(case_id, dtype),
                                   err_msg=f"{case_id}: argument {index}")


# Leading output and scratch arguments (outputs come first by the Ops contract) of the kernels that
# keep work buffers between steps: layers hand them buffers from np.empty, so whatever those hold
# (here: NaN) must never reach a result.
OUTPUT_ARGUMENTS = {
    ("linear", "linear_forward"): 1, ("linear", "linear_backward"): 4,
    ("conv", "conv2d_forward"): 3, ("conv", "conv2d_backward"): 5,
    ("pool", "maxpool2d_forward"): 1, ("pool", "maxpool2d_backward"): 1,
    ("recurrent", "lstm_forward"): 6, ("recurrent", "gru_forward"): 6,
    ("recurrent", "lstm_backward"): 10, ("recurrent", "gru_backward"): 10,
}


BUFFERED_CASES = [c for c in all_cases() if (c[1], c[2]) in OUTPUT_ARGUMENTS]


@pytest.mark.parametrize("case_id, family, op, make", BUFFERED_CASES, ids=[c[0] for c in BUFFERED_CASES])
def test_cpu_kernel_never_reads_its_output_buffers_before_writing_them(case_id, family, op, make):
    module = importlib.import_module(f"numdl.kernels.{family}")
    args, _, expected = make(np.float64, np.random.default_rng(7))
    for index in range(OUTPUT_ARGUMENTS[(family, op)]):
        if args[index].dtype.kind == "f":
            args[index][...] = np.nan
    getattr(module, f"{op}_cpu")(*args)
    for index, reference in expected.items():
        np.testing.assert_allclose(args[index], reference, **tolerance(case_id, np.float64),
                                   err_msg=f"{case_id}: argument {index}")


def _kernels(suffix):
    found = {}
    for family in KERNEL_MODULES:
        module = importlib.import_module(f"numdl.kernels.{family}")
        for name, obj in vars(module).items():
            if name.endswith(suffix) and getattr(obj, "__module__", module.__name__) == module.__name__:
                found[(family, name[: -len(suffix)])] = obj
    return found


def _parameters(kernel):
    return list(inspect.signature(getattr(kernel, "py_func", kernel)).parameters)


def test_every_cpu_kernel_has_a_cuda_twin_with_the_same_parameters():
    cpu, gpu = _kernels("_cpu"), _kernels("_cuda")
    assert cpu, "no kernels found"
    assert set(cpu) == set(gpu), f"unpaired kernels: {sorted(set(cpu) ^ set(gpu))}"
    for key in cpu:
        assert _parameters(cpu[key]) == _parameters(gpu[key]), f"{key}: CPU and CUDA parameters differ"


def test_every_kernel_has_a_reference_case():
    assert set(_kernels("_cpu")) == set(CASES), "add a case to tests/kernel_cases.py for each new kernel"


def test_dropout_mask_rate_and_reproducibility():
    from numdl.kernels.dropout import dropout_forward_cpu

    x = np.ones(100_000, np.float32)
    out1, mask1, out2, mask2 = (np.empty_like(x) for _ in range(4))
    dropout_forward_cpu(out1, mask1, x, np.float32(0.25), np.float32(1 / 0.75), np.uint64(5), np.uint64(0))
    dropout_forward_cpu(out2, mask2, x, np.float32(0.25), np.float32(1 / 0.75), np.uint64(5), np.uint64(0))
    assert np.array_equal(mask1, mask2)
    assert abs((mask1 == 0).mean() - 0.25) < 0.01
    assert abs(out1.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_2x2_fast_path_matches_numpy_with_ties_and_odd_sizes(dtype):
    """maxpool2d_forward_cpu takes an unrolled path for 2x2 windows at stride 2; odd sizes leave a row
    and a column out, and ties keep the first maximum (as PyTorch). The general path is checked by
    the reference case in kernel_cases.py (3x2 window, padding 1)."""
    from numdl.kernels.pool import maxpool2d_forward_cpu

    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (3, 2, 9, 7)).astype(dtype)  # four values only: many ties
    out, argmax = np.zeros((3, 2, 4, 3), dtype), np.zeros((3, 2, 4, 3), np.int64)
    maxpool2d_forward_cpu(out, argmax, x, 2, 2, 2, 2, 0, 0)
    windows = x[:, :, :8, :6].reshape(3, 2, 4, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 2, 4, 3, 4)
    first = windows.argmax(-1)  # numpy's argmax is the first maximum too
    rows = 2 * np.arange(4)[:, None] + first // 2
    cols = 2 * np.arange(3)[None, :] + first % 2
    np.testing.assert_array_equal(out, windows.max(-1))
    np.testing.assert_array_equal(argmax, rows * 7 + cols)


def test_float32_rational_tanh_sigmoid_erf_are_accurate_and_keep_nan():
    """The float32 versions that compiled kernels use (float64 stays exact): absolute error against
    the float64 functions on the whole line, and NaN in gives NaN out (the NaN guard relies on it)."""
    import math

    from numdl.kernels.activation import erf, sigmoid, tanh
    from numdl.kernels.common import cpu_kernel

    @cpu_kernel
    def apply_all(out, x):
        for i in range(x.size):
            out[0, i], out[1, i], out[2, i] = tanh(x[i]), sigmoid(x[i]), erf(x[i])

    x = np.concatenate([np.linspace(-30, 30, 200001), [0.0, 1e-30, -1e-30]]).astype(np.float32)
    out = np.zeros((3, x.size), np.float32)
    apply_all(out, x)
    exact = np.float64(x)
    references = (np.tanh(exact), 1 / (1 + np.exp(-exact)), np.vectorize(math.erf)(exact))
    for name, got, reference, bound in zip(("tanh", "sigmoid", "erf"), out, references, (4e-7, 3e-7, 5e-7)):
        assert np.abs(got - reference).max() < bound, name
    nan = np.full(1, np.nan, np.float32)
    out = np.zeros((3, 1), np.float32)
    apply_all(out, nan)
    assert np.isnan(out).all()
