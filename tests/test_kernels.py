"""Every CPU kernel against a plain NumPy float64 reference, at float32 and float64, and the twin
pairing rule: each ``*_cpu`` kernel has a ``*_cuda`` twin with the same leading parameters."""

import importlib
import inspect

import numpy as np
import pytest

from kernel_cases import CASES, DTYPES, all_cases, check_subnormal_step, subnormal_step_cases, tolerance
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



@pytest.mark.parametrize("eps", [1e-8, 0.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_optimizer_steps_store_decayed_subnormal_state_as_zero(dtype, eps):
    # A first moment that decays while its gradient is 0 would otherwise stick at the smallest
    # subnormal number, and every later step would pay x86's ~100-cycle subnormal penalty on it.
    from numdl.kernels import optim

    for op, (args, flushed) in subnormal_step_cases(dtype, eps).items():
        getattr(optim, f"{op}_cpu")(*args)
        check_subnormal_step(op, args, flushed, eps)

# Leading output and scratch arguments (outputs come first by the Ops contract) of the kernels that
# keep work buffers between steps: layers hand them buffers from np.empty, so whatever those hold
# (here: NaN) must never reach a result.
OUTPUT_ARGUMENTS = {
    ("linear", "linear_forward"): 1, ("linear", "linear_backward"): 4, ("dense_chain", "dense_chain_forward"): 2,
    ("dense_chain", "dense_chain_train"): 6,
    ("conv", "conv2d_forward"): 1, ("conv", "conv2d_backward"): 3,
    ("conv", "conv2d_pool_forward"): 2, ("conv", "conv2d_pool_backward"): 3,
    ("norm", "batchnorm_pool_train_forward"): 5, ("norm", "batchnorm_pool_eval_forward"): 2,
    ("norm", "batchnorm_pool_backward"): 3,
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
    maxpool2d_forward_cpu(out, argmax, x, 2, 2, 2, 2, 0, 0, 1, 1)
    windows = x[:, :, :8, :6].reshape(3, 2, 4, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 2, 4, 3, 4)
    first = windows.argmax(-1)  # numpy's argmax is the first maximum too
    rows = 2 * np.arange(4)[:, None] + first // 2
    cols = 2 * np.arange(3)[None, :] + first % 2
    np.testing.assert_array_equal(out, windows.max(-1))
    np.testing.assert_array_equal(argmax, rows * 7 + cols)

    # backward's tiled path: every element written once (NaN-filled dx), the gradient on the first
    # maximum of its window, 0 on the window's other elements and on the odd row and column left out
    from numdl.kernels.pool import maxpool2d_backward_cpu

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    maxpool2d_backward_cpu(dx, dout, argmax, 2, 2, 2, 2, 0, 0, 1, 1)
    expected = np.zeros(x.shape, dtype)
    n, c, oh, ow = np.indices(out.shape)
    expected[n, c, rows[None, None] + 0 * n, cols[None, None] + 0 * n] = dout
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("params", ["CONV", "CONV_DIRECT", "CONV_GEMM"])
def test_pooled_convolution_records_the_first_maximum_of_each_window(params, relu):
    """conv2d_pool_forward_cpu's pool_at on the GEMM, direct and chunked paths: the first maximum in
    reading order, also among the ties a ReLU makes (a window of negative values pools to 0 at
    position 0), as maxpool2d_forward_cpu does after an unfused convolution."""
    import kernel_cases
    from kernel_cases import _conv_scalars, conv2d_reference, pool2x2_reference
    from numdl.kernels.conv import conv2d_pool_forward_cpu

    p = getattr(kernel_cases, params)
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (p["n"], p["c_in"], p["h"], p["w"])).astype(np.float64)  # small integers: ties
    w = rng.integers(-1, 2, (p["c_out"], p["c_in"] // p["groups"]) + p["k"]).astype(np.float64)
    b = np.zeros(p["c_out"])
    full = conv2d_reference(x, w, b, p["stride"], p["pad"], p["dil"], p["groups"], relu)
    pooled, at = pool2x2_reference(full)
    out, pool_at = np.full(pooled.shape, np.nan), np.full(pooled.shape, -1, np.int8)
    conv2d_pool_forward_cpu(out, pool_at, x, w, b, *_conv_scalars(p), relu)
    np.testing.assert_array_equal(out, pooled)
    np.testing.assert_array_equal(pool_at, at)
    assert (full == np.roll(full, 1, axis=3)).any()  # the case has ties to break


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


def test_float32_tanh_and_sigmoid_tails_match_pytorch():
    """Issue 12.7: in their tails, float32 tanh saturates exactly (gradient 0 where PyTorch's is) and
    sigmoid keeps float32's relative precision down to the denormals (5.9e-10 at -21, not a floor
    at 1.19e-7), compared with PyTorch float32 for |x| in [8, 90]."""
    torch = pytest.importorskip("torch")
    from numdl.kernels.activation import (sigmoid_backward_cpu, sigmoid_forward_cpu, tanh_backward_cpu,
                                          tanh_forward_cpu)

    magnitudes = np.linspace(8, 90, 20001)
    x = np.concatenate([magnitudes, -magnitudes]).astype(np.float32)
    ones = np.ones_like(x)
    for forward, backward, reference in ((tanh_forward_cpu, tanh_backward_cpu, torch.tanh),
                                         (sigmoid_forward_cpu, sigmoid_backward_cpu, torch.sigmoid)):
        out, grad = np.empty_like(x), np.empty_like(x)
        forward(out, x)
        backward(grad, ones, out)
        tx = torch.from_numpy(x.copy()).requires_grad_()
        expected = reference(tx)
        expected.sum().backward()
        expected, expected_grad = expected.detach().numpy(), tx.grad.numpy()
        normal = np.abs(expected) > np.finfo(np.float32).tiny  # relative error where float32 is normal
        relative = np.abs(out[normal] - expected[normal]) / np.abs(expected[normal])
        assert relative.max() < 4 * np.finfo(np.float32).eps, forward.__name__
        if (~normal).any():  # denormals (PyTorch flushes some to 0): the exact value, to a few units of 1.4e-45
            exact = reference(torch.from_numpy(x[~normal].astype(np.float64))).numpy()
            assert np.abs(out[~normal] - exact).max() < 1e-44
        assert np.abs(grad - expected_grad).max() < 3e-7
        assert (grad[np.abs(x) > 9.1] == 0).all() if forward is tanh_forward_cpu else True
    saturated = np.empty(2, np.float32)
    tanh_forward_cpu(saturated, np.array([9.5, -90], np.float32))
    assert saturated.tolist() == [1.0, -1.0]
    tail = np.empty(1, np.float32)
    sigmoid_forward_cpu(tail, np.array([-21.0], np.float32))
    assert abs(tail[0] / 7.5825604e-10 - 1) < 1e-6


def test_nan_propagates_through_relu_and_max_pooling_as_in_pytorch():
    """Issue 12.8: relu(NaN) is NaN and a NaN anywhere in a pooling window is the window's maximum
    (its index taken), so that a NaN reaches the NaN guard."""
    torch = pytest.importorskip("torch")
    from numdl.kernels.activation import leaky_relu_forward_cpu, relu_forward_cpu
    from numdl.kernels.pool import maxpool2d_forward_cpu

    for dtype in (np.float32, np.float64):
        x = np.array([np.nan, -1.0, 2.0, 0.0], dtype)
        out = np.empty_like(x)
        relu_forward_cpu(out, x)
        assert np.isnan(out[0]) and out[1:].tolist() == [0.0, 2.0, 0.0]
        leaky_relu_forward_cpu(out, x, dtype(0.1))
        assert np.isnan(out[0])
        rng = np.random.default_rng(0)
        for kernel, stride, padding in ((2, 2, 0), (3, 2, 1), (3, 1, 0)):
            x = rng.normal(size=(2, 3, 8, 8)).astype(dtype)
            x[0, 0, 1, 1] = x[0, 1, 4, 5] = x[1, 2, 7, 7] = np.nan  # inside, and last in its window
            size = (8 + 2 * padding - kernel) // stride + 1
            out, argmax = np.empty((2, 3, size, size), dtype), np.empty((2, 3, size, size), np.int64)
            maxpool2d_forward_cpu(out, argmax, x, kernel, kernel, stride, stride, padding, padding, 1, 1)
            expected, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding,
                                                                return_indices=True)
            np.testing.assert_array_equal(out, expected.numpy())  # NaNs at the same places
            np.testing.assert_array_equal(argmax, indices.numpy())


def test_conv_cases_cover_both_cpu_paths():
    # The direct cases must take the direct paths and the others im2col, or a path goes untested.
    from kernel_cases import (CONV, CONV_DIRECT, CONV_DIRECT_1X1, CONV_DIRECT_1X1_GEMM, CONV_DIRECT_GEMM,
                              CONV_DIRECT_WIDE, CONV_SAME, conv2d_reference)

    from numdl.kernels.conv import direct_conv, shifted_gemm_conv, shifted_gemm_dweight

    def direct(p):
        x = np.zeros((1, p["c_in"], p["h"], p["w"]))
        w = np.zeros((p["c_out"], p["c_in"] // p["groups"]) + p["k"])
        out = conv2d_reference(x, w, np.zeros(0), p["stride"], p["pad"], p["dil"], p["groups"])
        return direct_conv(p["c_in"], p["c_out"], out.shape[2], out.shape[3], *p["k"], *p["stride"], *p["dil"], p["groups"],
                          *p["pad"])

    assert direct(CONV_DIRECT) and direct(CONV_DIRECT_WIDE) and direct(CONV_DIRECT_1X1)
    assert not direct(CONV) and not direct(CONV_SAME)
    # ... and within the direct path, the loops and the shifted products (forward, dx's, dweight)
    assert direct(CONV_DIRECT_GEMM) and direct(CONV_DIRECT_1X1_GEMM)
    loops = (CONV_DIRECT, CONV_DIRECT_WIDE, CONV_DIRECT_1X1)
    assert not any(shifted_gemm_conv(p["c_in"], p["c_out"]) for p in loops)
    assert not shifted_gemm_conv(CONV_DIRECT_WIDE["c_out"], CONV_DIRECT_WIDE["c_in"])  # its dx by the loops
    assert shifted_gemm_conv(CONV_DIRECT["c_out"], CONV_DIRECT["c_in"])  # dx's by products
    assert shifted_gemm_conv(CONV_DIRECT_GEMM["c_in"], 0) and shifted_gemm_conv(CONV_DIRECT_GEMM["c_out"], 0)
    assert shifted_gemm_conv(CONV_DIRECT_1X1_GEMM["c_in"], 0)
    assert shifted_gemm_dweight(CONV_DIRECT_GEMM["c_in"], CONV_DIRECT_GEMM["c_out"])
    assert not any(shifted_gemm_dweight(p["c_in"], p["c_out"]) for p in loops + (CONV_DIRECT_1X1_GEMM,))

    from kernel_cases import CONV_T, CONV_T_TILED, CONV_T_TILED_GEMM

    from numdl.kernels.conv_transpose import _tiles_output

    def tiled(p):
        out = [(s - 1) * st - 2 * pd + d * (k - 1) + op + 1 for s, st, pd, d, k, op in
               zip((p["h"], p["w"]), p["stride"], p["pad"], p["dil"], p["k"], p["out_pad"])]
        return _tiles_output(p["h"], p["w"], *out, *p["k"], *p["stride"], *p["pad"], *p["dil"], p["groups"])

    assert tiled(CONV_T_TILED) and tiled(CONV_T_TILED_GEMM) and not tiled(CONV_T)
    # the tiled path's loops (5 input channels, 1 x 2 x 3 column rows) and its products
    assert not shifted_gemm_conv(CONV_T_TILED["c_in"], 0) and not shifted_gemm_conv(6, 0)
    assert not shifted_gemm_dweight(CONV_T_TILED["c_in"], 6)
    rows = CONV_T_TILED_GEMM["c_out"] * 4
    assert shifted_gemm_conv(CONV_T_TILED_GEMM["c_in"], 0) and shifted_gemm_conv(rows, 0)
    assert shifted_gemm_dweight(CONV_T_TILED_GEMM["c_in"], rows)


@pytest.mark.parametrize("case", ["relu", "batchnorm", "maxpool2x2", "maxpool3x3", "concat", "conv3x3", "conv_im2col",
                                  "conv_transpose", "pixel_loss", "dropout", "add", "layernorm", "linear",
                                  "optimizers"])
def test_passes_split_over_threads_match_one_thread(case):
    # Passes that split over numba's threads once numba has the cores (common.worth_splitting) must
    # compute what one thread does: the same arithmetic per element, only the work divided.
    import numba

    from numdl.backend import get_ops
    from numdl.kernels import activation, conv, layout, norm, pool, tuning

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one CPU thread: nothing to split")
    get_ops("cpu").use_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 36, 34)).astype(np.float32)  # past tuning.SPLIT_MIN_ELEMENTS
    assert x.size >= tuning.SPLIT_MIN_ELEMENTS
    dout = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        if case == "relu":
            out, dx = np.empty(x.size, np.float32), np.empty(x.size, np.float32)
            activation.relu_forward_cpu(out, x.reshape(-1))
            activation.relu_backward_cpu(dx, dout.reshape(-1), x.reshape(-1))
            return out, dx
        if case == "batchnorm":
            x3, d3 = x.reshape(4, 8, -1), dout.reshape(4, 8, -1)
            out, xhat, dx = np.empty_like(x3), np.empty_like(x3), np.empty_like(x3)
            mean, invstd, running_mean, running_var = (np.zeros(8, np.float32) for _ in range(4))
            gamma, beta = rng.standard_normal(8).astype(np.float32), np.zeros(8, np.float32)
            norm.batchnorm_train_forward_cpu(out, xhat, mean, invstd, running_mean, running_var, x3, gamma, beta,
                                             np.float32(0.1), np.float32(1e-5), True)
            dgamma, dbeta = np.empty(8, np.float32), np.empty(8, np.float32)
            norm.batchnorm_backward_cpu(dx, dgamma, dbeta, d3, xhat, invstd, gamma, out, True)
            evaluated = np.empty_like(x3)
            norm.batchnorm_eval_forward_cpu(evaluated, x3, running_mean, running_var, gamma, beta, np.float32(1e-5),
                                            True)
            return out, dx, dgamma, dbeta, evaluated
        if case.startswith("maxpool"):
            k, s = (2, 2) if case == "maxpool2x2" else (3, 2)
            h_out, w_out = (36 - k) // s + 1, (34 - k) // s + 1
            out, argmax = np.empty((4, 8, h_out, w_out), np.float32), np.empty((4, 8, h_out, w_out), np.int64)
            pool.maxpool2d_forward_cpu(out, argmax, x, k, k, s, s, 0, 0, 1, 1)
            dx = np.empty_like(x)
            pool.maxpool2d_backward_cpu(dx, out * 0 + 1, argmax, k, k, s, s, 0, 0, 1, 1)
            return out, argmax, dx
        if case == "concat":
            rows = x.reshape(4, -1)
            out = np.zeros((4, rows.shape[1] + 5), np.float32)
            layout.concat_forward_cpu(out, rows, 5)
            back = np.empty_like(rows)
            layout.concat_backward_cpu(back, out, 5)
            return out, back
        if case == "dropout":  # each thread draws its share of the counter stream
            from numdl.kernels import dropout

            out, mask, dx = (np.empty(x.size, np.float32) for _ in range(3))
            dropout.dropout_forward_cpu(out, mask, x.reshape(-1), np.float32(0.3), np.float32(1 / 0.7), np.uint64(7),
                                        np.uint64(12345))
            dropout.dropout_backward_cpu(dx, dout.reshape(-1), mask)
            assert 0.25 < float((mask == 0).mean()) < 0.35
            return out, mask, dx
        if case == "add":
            from numdl.kernels import elementwise

            out = np.empty(x.size, np.float32)
            elementwise.add_forward_cpu(out, x.reshape(-1), dout.reshape(-1))
            swapped = np.empty((32, 34, 36), np.float32)
            elementwise.swap_last_axes_forward_cpu(swapped, x.reshape(32, 36, 34))
            return out, swapped
        if case == "linear":  # bias and ReLU by rows; each thread sums its rows' bias gradient apart
            from numdl.kernels import linear

            rows, w = x.reshape(-1, 34)[:, :17], rng.standard_normal((40, 17)).astype(np.float32)
            b = rng.standard_normal(40).astype(np.float32)
            out = np.empty((rows.shape[0], 40), np.float32)
            linear.linear_forward_cpu(out, rows, w, b, True)
            g = rng.standard_normal(out.shape).astype(np.float32)
            dx, dw, db, masked = np.empty_like(rows), np.empty_like(w), np.empty_like(b), np.empty_like(out)
            linear.linear_backward_cpu(dx, dw, db, masked, g, out, rows, w, True)
            return out, dx, dw, db, masked
        if case == "layernorm":  # rows split; each thread sums its rows' parameter gradients apart
            rows, d_rows = x.reshape(-1, 34), dout.reshape(-1, 34)
            gamma, beta = rng.standard_normal(34).astype(np.float32), rng.standard_normal(34).astype(np.float32)
            out, xhat, dx = np.empty_like(rows), np.empty_like(rows), np.empty_like(rows)
            invstd = np.empty(rows.shape[0], np.float32)
            norm.layernorm_forward_cpu(out, xhat, invstd, rows, gamma, beta, np.float32(1e-5))
            dgamma, dbeta = np.empty(34, np.float32), np.empty(34, np.float32)
            norm.layernorm_backward_cpu(dx, dgamma, dbeta, d_rows, xhat, invstd, gamma)
            return out, xhat, invstd, dx, dgamma, dbeta
        if case == "optimizers":  # every step, each flag that changes which state buffers it keeps
            from numdl.kernels import optim

            # an odd length: the threads' shares must not move elements between a vectorised loop's body and
            # its remainder, which can round differently (as numdl train's 109,386 parameters did)
            f, flat = np.float32, x.reshape(-1)[:-37]
            grad, empty = dout.reshape(-1)[:-37], np.empty(0, np.float32)
            results = []

            def state(n):
                buffers = [flat.copy()] + [np.abs(rng.standard_normal(flat.size)).astype(np.float32) for _ in range(n)]
                results.extend(buffers)
                return buffers

            for momentum, nesterov in ((0.0, False), (0.9, True)):
                p, buf = state(1)
                optim.sgd_step_cpu(p, buf if momentum else empty, grad, f(0.1), f(momentum), f(0.1), f(0.01),
                                   nesterov, False)
            for amsgrad, decoupled in ((False, False), (True, True)):
                p, m, v, v_max = state(3)
                optim.adam_step_cpu(p, m, v, v_max if amsgrad else empty, grad, f(1e-3), f(0.9), f(0.999), f(1e-8),
                                    f(0.01), decoupled, f(0.5), f(0.25), amsgrad, False)
            p, total = state(1)
            optim.adagrad_step_cpu(p, total, grad, f(0.01), f(1e-10), f(0.0), True)
            p, m, u = state(2)
            optim.adamax_step_cpu(p, m, u, grad, f(2e-3), f(0.9), f(0.999), f(1e-8), f(0.0), False)
            p, m, v = state(2)
            optim.nadam_step_cpu(p, m, v, grad, f(2e-3), f(0.9), f(0.999), f(1e-8), f(0.0), False, f(0.5), f(0.1),
                                 f(0.2), False)
            for rectified in (False, True):
                p, m, v = state(2)
                optim.radam_step_cpu(p, m, v, grad, f(1e-3), f(0.9), f(0.999), f(1e-8), f(0.0), False, f(0.5),
                                     f(0.25), f(0.8), rectified, False)
            for centered, momentum in ((False, 0.0), (True, 0.9)):
                p, square, average, buf = state(3)
                optim.rmsprop_step_cpu(p, square, average if centered else empty, buf if momentum else empty, grad,
                                       f(0.01), f(0.99), f(1e-8), f(0.0), f(momentum), centered)
            return results
        if case == "pixel_loss":
            from numdl.kernels import segmentation

            logits, labels = x.reshape(4, 8, -1), rng.integers(0, 8, (4, 36 * 34))
            labels[0, :5] = -100
            weights = rng.random(8).astype(np.float32)
            loss, weight, probs = np.empty_like(labels, np.float32), np.empty_like(labels, np.float32), np.empty_like(logits)
            segmentation.pixel_cross_entropy_forward_cpu(loss, weight, probs, logits, labels, weights, -100)
            dlogits, pred = np.empty_like(logits), np.empty_like(loss)
            segmentation.pixel_cross_entropy_backward_cpu(dlogits, probs, labels, weights, -100, np.float32(0.5))
            segmentation.pixel_argmax_forward_cpu(pred, logits)
            return loss, weight, probs, dlogits, pred
        if case == "conv_transpose":  # im2col and col2im around the GEMMs
            from numdl.kernels import conv_transpose

            w = rng.standard_normal((8, 3, 2, 2)).astype(np.float32)
            b = rng.standard_normal(3).astype(np.float32)
            out = np.empty((4, 3, 72, 68), np.float32)
            xt, cols = np.empty((8, 4 * 36 * 34), np.float32), np.empty((12, 4 * 36 * 34), np.float32)
            conv_transpose.conv_transpose2d_forward_cpu(out, xt, cols, x, w, b, 2, 2, 0, 0, 1, 1, 1)
            dx, dw, db, dxt = np.empty_like(x), np.empty_like(w), np.empty_like(b), np.empty_like(xt)
            g = rng.standard_normal(out.shape).astype(np.float32)
            conv_transpose.conv_transpose2d_backward_cpu(dx, dw, db, np.empty_like(cols), dxt, g, x, xt, w, 2, 2, 0, 0,
                                                         1, 1, 1)
            return out, dx, dw, db
        # 3x3 at stride 1 and 6 output channels: the direct path; 40 channels at stride 2: the GEMM path
        stride, c_out = (1, 6) if case == "conv3x3" else (2, 40)
        w = rng.standard_normal((c_out, 8, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        h_out, w_out = (36 - 1) // stride + 1, (34 - 1) // stride + 1
        out = np.empty((4, c_out, h_out, w_out), np.float32)
        conv.conv2d_forward_cpu(out, x, w, b, stride, stride, 1, 1, 1, 1, 1, True)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        g = rng.standard_normal(out.shape).astype(np.float32)
        conv.conv2d_backward_cpu(dx, dw, db, g, out, x, w, stride, stride, 1, 1, 1, 1, 1, True)
        return out, dx, dw, db

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        rng = np.random.default_rng(1)
        serial = run()
        numba.set_num_threads(2)
        rng = np.random.default_rng(1)
        split = run()
    finally:
        numba.set_num_threads(before)
    for one, two in zip(serial, split):
        if case.startswith("conv") or case in ("layernorm", "linear"):
            # sums split by thread (direct path, LayerNorm's parameter gradients) or by BLAS block: another order
            np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-4)
        else:
            np.testing.assert_array_equal(two, one)


def test_vector_shares_tile_the_range_in_whole_chunks():
    # The optimizer steps' thread shares (common.vector_share): every share starts on a chunk boundary
    # and all but the last are whole chunks, so a vectorised loop over a share puts each element in
    # its body or its remainder exactly as one loop over everything does (the two can round apart).
    from numdl.kernels import tuning
    from numdl.kernels.common import vector_share

    align = tuning.SPLIT_ALIGN_ELEMENTS
    for total in (0, 5, align - 1, align, 39131, 109386, 10 ** 6 + 3):
        for parts in (1, 2, 3, 4):
            shares = [vector_share(total, part, parts) for part in range(parts)]
            assert shares[0][0] == 0 and shares[-1][1] == total
            assert all(hi == lo for (_, hi), (lo, _) in zip(shares, shares[1:]))
            assert all(lo % align == 0 for lo, hi in shares if hi > lo)
            assert all((hi - lo) % align == 0 for lo, hi in shares if hi < total)


def test_adjoint_conv_reference_equals_the_basis_one():
    # The large direct-path case's reference (adjoint sums) against the one built from basis vectors.
    from kernel_cases import CONV_DIRECT, _adjoint_conv_grads, _conv_inputs, _numeric_conv_grads

    rng = np.random.default_rng(3)
    x, w, b, shape = _conv_inputs(np.float64, rng, CONV_DIRECT)
    dout = rng.standard_normal(shape)
    for relu in (False, True):
        for ours, basis in zip(_adjoint_conv_grads(x, w, b, dout, relu, CONV_DIRECT),
                               _numeric_conv_grads(x, w, b, dout, relu, CONV_DIRECT)):
            np.testing.assert_allclose(ours, basis, rtol=1e-12, atol=1e-12)
