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
