"""numdl.kernels.simd: the 16-lane float32 vectors the attention and LSTM cell kernels are written with."""

import math

import numpy as np
import pytest
from numba import njit

from numdl.kernels import tuning
from numdl.kernels.activation import exp_nonpositive, sigmoid, tanh
from numdl.kernels.recurrent import _lstm_cells_backward, _lstm_cells_forward
from numdl.kernels.simd import (
    LANES, vadd, vdiv, vexp_nonpositive, vfma, vkeep_first, vlargest, vload, vload_first, vmax, vmul, vsigmoid, vsplat,
    vsplat_from, vstore, vstore_first, vsub, vsum, vtanh, vzero,
)

jit = njit(fastmath=tuning.CPU_FASTMATH, error_model="numpy")


@jit
def _copy_first(out, src, offset, count):
    vstore_first(out, offset, count, vload_first(src, offset, count))


@pytest.mark.parametrize("count", [-3, 0, 1, 5, 15, 16, 40])
def test_masked_loads_and_stores_touch_the_first_count_lanes_only(count):
    src = np.arange(1, 41, dtype=np.float32)
    out = np.full(40, -1.0, np.float32)
    _copy_first(out, src, 20, count)
    lanes = max(0, min(count, LANES))
    np.testing.assert_array_equal(out[20:20 + lanes], src[20:20 + lanes])
    assert (out[:20] == -1).all() and (out[20 + lanes:] == -1).all()


@jit
def _arithmetic(a, b, out):
    x, y = vload(a, 0), vload(b, 0)
    vstore(out, 0, vadd(x, y))
    vstore(out, 16, vsub(x, y))
    vstore(out, 32, vmul(x, y))
    vstore(out, 48, vfma(x, y, vsplat(np.float32(0.5))))
    vstore(out, 64, vmax(x, y))
    vstore(out, 80, vkeep_first(x, 5, np.float32(-7.0)))
    vstore(out, 96, vadd(vzero(), vsplat_from(b, 3)))
    vstore(out, 112, vdiv(x, y))
    return vsum(x), vlargest(y)


def test_lane_arithmetic_sums_and_maxima_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    out = np.zeros(128, np.float32)
    total, largest = _arithmetic(a, b, out)
    np.testing.assert_allclose(out[:16], a + b, rtol=1e-6)
    np.testing.assert_allclose(out[16:32], a - b, rtol=1e-6)
    np.testing.assert_allclose(out[32:48], a * b, rtol=1e-6)
    np.testing.assert_allclose(out[48:64], a * b + np.float32(0.5), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[64:80], np.maximum(a, b))
    np.testing.assert_array_equal(out[80:96], np.where(np.arange(16) < 5, a, np.float32(-7.0)))
    np.testing.assert_array_equal(out[96:112], np.full(16, b[3]))
    np.testing.assert_allclose(out[112:128], a / b, rtol=1e-6)
    assert total == pytest.approx(float(a.sum()), rel=1e-6)
    assert largest == b.max()


@jit
def _vector_exp(x, out):
    for c in range(0, x.size, LANES):
        vstore_first(out, c, x.size - c, vexp_nonpositive(vload_first(x, c, x.size - c)))


@jit
def _scalar_exp(x, out):
    for i in range(x.size):
        out[i] = exp_nonpositive(x[i])


def test_vector_exp_agrees_with_the_scalar_float32_exp_and_keeps_nan():
    x = np.concatenate([-np.geomspace(1e-6, 120.0, 2000), [0.0, -0.0, -np.inf, np.nan, -87.3, -103.9]])
    x = x.astype(np.float32)
    vector, scalar = np.empty_like(x), np.empty_like(x)
    _vector_exp(x, vector)
    _scalar_exp(x, scalar)
    finite = ~np.isnan(x)
    np.testing.assert_allclose(vector[finite], scalar[finite], rtol=4e-7, atol=0)
    np.testing.assert_allclose(vector[finite], np.exp(x[finite].astype(np.float64)), rtol=4e-7, atol=1e-44)
    assert math.isnan(vector[~finite][0])


@jit
def _vector_activations(x, sigmoids, tanhs):
    for c in range(0, x.size, LANES):
        lanes = x.size - c
        vstore_first(sigmoids, c, lanes, vsigmoid(vload_first(x, c, lanes)))
        vstore_first(tanhs, c, lanes, vtanh(vload_first(x, c, lanes)))


@jit
def _scalar_activations(x, sigmoids, tanhs):
    for i in range(x.size):
        sigmoids[i] = sigmoid(x[i])
        tanhs[i] = tanh(x[i])


def test_vector_sigmoid_and_tanh_agree_with_the_scalar_float32_versions_and_keep_nan():
    x = np.concatenate([np.linspace(-120.0, 120.0, 20001), [0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32)
    vector_sigmoid, vector_tanh, scalar_sigmoid, scalar_tanh = (np.empty_like(x) for _ in range(4))
    _vector_activations(x, vector_sigmoid, vector_tanh)
    _scalar_activations(x, scalar_sigmoid, scalar_tanh)
    finite = ~np.isnan(x)
    np.testing.assert_allclose(vector_sigmoid[finite], scalar_sigmoid[finite], rtol=2e-7, atol=1e-40)
    np.testing.assert_allclose(vector_tanh[finite], scalar_tanh[finite], rtol=2e-7, atol=1e-38)
    wide = x[finite].astype(np.float64)
    np.testing.assert_allclose(vector_sigmoid[finite], 1.0 / (1.0 + np.exp(-wide)), rtol=1e-6, atol=1e-38)
    np.testing.assert_allclose(vector_tanh[finite], np.tanh(wide), rtol=1e-6, atol=1e-38)
    assert math.isnan(vector_sigmoid[-1]) and math.isnan(vector_tanh[-1])
    assert (vector_tanh[-3], vector_tanh[-2], vector_sigmoid[-3], vector_sigmoid[-2]) == (1.0, -1.0, 1.0, 0.0)


@jit
def _compiled_cells(gates, cells, out, h, pre, proj, bias, c_prev, has_prev, dpre, dc, dh, db):
    # float32 C-contiguous rows: the compiled callers get the 16-lane versions
    _lstm_cells_forward(gates, cells, out, h, pre, proj, bias, c_prev, has_prev)
    _lstm_cells_backward(dpre, dc, gates, cells, c_prev, has_prev, dh, db)


@pytest.mark.parametrize("hidden", [20, 128])
@pytest.mark.parametrize("has_prev", [True, False])
def test_lstm_cells_in_lanes_match_the_scalar_equations(hidden, has_prev):
    # 20 units: one full vector and a masked tail of 4. Without a previous cell the row passed for it
    # holds NaN, which must not reach any result.
    rng = np.random.default_rng(hidden)
    pre, proj, bias = (rng.standard_normal(4 * hidden).astype(np.float32) * 2 for _ in range(3))
    c_prev = rng.standard_normal(hidden).astype(np.float32) if has_prev else np.full(hidden, np.nan, np.float32)
    dc_in, dh = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    db_in = rng.standard_normal(4 * hidden).astype(np.float32)  # the bias gradient summed so far
    compiled = [np.zeros(4 * hidden, np.float32), np.zeros(hidden, np.float32), np.zeros(hidden, np.float32),
                np.zeros(hidden, np.float32), np.zeros(4 * hidden, np.float32), dc_in.copy(), db_in.copy()]
    gates, cells, out, h, dpre, dc, db = compiled
    _compiled_cells(gates, cells, out, h, pre.copy(), proj, bias, c_prev, has_prev, dpre, dc, dh, db)
    # the reference: the scalar helpers run as Python, on float64 copies
    wide = [np.zeros(4 * hidden), np.zeros(hidden), np.zeros(hidden), np.zeros(hidden), np.zeros(4 * hidden),
            dc_in.astype(np.float64), db_in.astype(np.float64)]
    _lstm_cells_forward(wide[0], wide[1], wide[2], wide[3], pre.astype(np.float64), proj.astype(np.float64),
                        bias.astype(np.float64), c_prev.astype(np.float64), has_prev)
    _lstm_cells_backward(wide[4], wide[5], wide[0], wide[1], c_prev.astype(np.float64), has_prev,
                         dh.astype(np.float64), wide[6])
    np.testing.assert_allclose(wide[6], db_in + wide[4], rtol=1e-6)  # the reference adds its gradients
    for got, want in zip(compiled, wide):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(out, h)
