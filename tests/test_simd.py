"""numdl.kernels.simd: the 16-lane float32 vectors the attention kernels are written with."""

import math

import numpy as np
import pytest
from numba import njit

from numdl.kernels import tuning
from numdl.kernels.activation import exp_nonpositive
from numdl.kernels.simd import (
    LANES, vadd, vexp_nonpositive, vfma, vkeep_first, vlargest, vload, vload_first, vmax, vmul, vsplat, vsplat_from,
    vstore, vstore_first, vsub, vsum, vzero,
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
    return vsum(x), vlargest(y)


def test_lane_arithmetic_sums_and_maxima_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    out = np.zeros(112, np.float32)
    total, largest = _arithmetic(a, b, out)
    np.testing.assert_allclose(out[:16], a + b, rtol=1e-6)
    np.testing.assert_allclose(out[16:32], a - b, rtol=1e-6)
    np.testing.assert_allclose(out[32:48], a * b, rtol=1e-6)
    np.testing.assert_allclose(out[48:64], a * b + np.float32(0.5), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[64:80], np.maximum(a, b))
    np.testing.assert_array_equal(out[80:96], np.where(np.arange(16) < 5, a, np.float32(-7.0)))
    np.testing.assert_array_equal(out[96:112], np.full(16, b[3]))
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
