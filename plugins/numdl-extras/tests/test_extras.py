"""numdl-extras checked with numdl's public conformance kit only (numdl.testing)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numdl_extras")

from numdl.testing import check_layer_gradients, check_loss_gradients, compile_ptx, float64_instructions  # noqa: E402
from numdl_extras import kernels  # noqa: E402
from numdl_extras.plugin import FocalLoss, Lion, Swish  # noqa: E402


def test_swish_gradients_including_beta():
    errors = check_layer_gradients(Swish(beta=1.3), (2, 5))
    assert set(errors) == {"input", "beta"}


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_loss_gradients(gamma):
    rng = np.random.default_rng(0)
    check_loss_gradients(FocalLoss(gamma=gamma, alpha=0.5), rng.standard_normal((6, 4)) * 2, rng.integers(0, 4, 6))


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    import numdl

    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    assert FocalLoss(gamma=0.0).forward(logits, labels) == pytest.approx(numdl.CrossEntropy().forward(logits, labels))


def test_lion_matches_the_paper_update():
    from numdl import Parameter

    rng = np.random.default_rng(2)
    start, grads = rng.standard_normal(7), [rng.standard_normal(7) for _ in range(3)]
    param = Parameter("p", start.copy(), np.zeros(7))
    lion = Lion(lr=0.1, betas=[0.9, 0.99], weight_decay=0.01)
    p, m = start.copy(), np.zeros(7)
    for g in grads:
        param.grad[:] = g
        lion.step([param])
        p = p - 0.1 * (np.sign(0.9 * m + 0.1 * g) + 0.01 * p)
        m = 0.99 * m + 0.01 * g
    np.testing.assert_allclose(param.value, p, rtol=1e-12)


CASES = {
    "swish_forward": lambda d, r: ([np.zeros(9, d), r.standard_normal(9).astype(d), np.array([1.2], d)], 9),
    "swish_backward": lambda d, r: ([np.zeros(9, d), np.zeros(1, d), r.standard_normal(9).astype(d),
                                     r.standard_normal(9).astype(d), np.array([1.2], d)], 9),
    "lion_step": lambda d, r: ([r.standard_normal(9).astype(d), r.standard_normal(9).astype(d),
                                r.standard_normal(9).astype(d), d(0.1), d(0.9), d(0.99), d(0.01)], 9),
    "focal_loss_forward": lambda d, r: ([np.zeros(4, d), np.zeros((4, 3), d), r.standard_normal((4, 3)).astype(d),
                                         r.integers(0, 3, 4), d(0.5), d(2.0)], 4),
    "focal_loss_backward": lambda d, r: ([np.zeros((4, 3), d), np.full((4, 3), 1 / 3, d), r.integers(0, 3, 4),
                                          d(0.5), d(2.0), d(0.25)], 4),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", sorted(CASES))
def test_cuda_kernels_compile_to_ptx_without_float64_in_float32(op, dtype):
    args, _ = CASES[op](dtype, np.random.default_rng(0))
    ptx = compile_ptx(getattr(kernels, f"{op}_cuda"), args)
    if dtype is np.float32:
        assert float64_instructions(ptx) == []


def test_cuda_twins_match_under_the_simulator():
    script = textwrap.dedent(f"""
        import numpy as np
        from numdl.testing import check_kernel_twin
        from numdl_extras import kernels
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("cases", {__file__!r})
        cases = importlib.util.module_from_spec(spec); spec.loader.exec_module(cases)
        for op, make in cases.CASES.items():
            for dtype in (np.float32, np.float64):
                args, work = make(dtype, np.random.default_rng(3))
                check_kernel_twin(getattr(kernels, op + "_cpu"), getattr(kernels, op + "_cuda"), args, work,
                                  rtol=1e-4, atol=1e-5)
        print("twins ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert result.returncode == 0 and "twins ok" in result.stdout, result.stderr[-3000:]
