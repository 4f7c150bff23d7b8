"""The CPU kernels' matrix products (numdl.kernels.matmul) and the one-pool-at-a-time rule."""

import numpy as np
import pytest
from numba import njit

from numdl.kernels.matmul import gemm, matmul, product, split_product


@njit(cache=True)
def _gemm(c, a, b, trans_a, trans_b, alpha, beta):
    gemm(c, a, b, trans_a, trans_b, alpha, beta)


SHAPES = [(7, 3, 5), (1, 9, 4), (300, 200, 100), (64, 128, 784), (128, 784, 64), (5, 0, 3), (4, 4, 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_and_matmul_match_numpy(dtype, m, n, k, trans_a, trans_b):
    _check_products(dtype, m, n, k, trans_a, trans_b, with_gemm=True)


def _check_products(dtype, m, n, k, trans_a, trans_b, with_gemm):
    """matmul (and gemm, with alpha 2) of random operands against NumPy in float64, beta 0 and 1."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    before = rng.standard_normal((m, n)).astype(dtype)
    product = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    tolerance = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    for beta in (0.0, 1.0):
        c = before.copy()
        matmul(c, a, b, trans_a, trans_b, beta)
        np.testing.assert_allclose(c, product + beta * before, **tolerance)
        if with_gemm:
            c = before.copy()
            _gemm(c, a, b, trans_a, trans_b, 2.0, beta)
            np.testing.assert_allclose(c, 2 * product + beta * before, **tolerance)


def test_gemm_reads_and_writes_blocks_of_larger_arrays():
    rng = np.random.default_rng(1)
    big = rng.standard_normal((10, 12))
    c = np.zeros((10, 12))
    _gemm(c[2:6, 3:8], big[0:4, 1:6], big[5:10, 2:7], False, False, 1.0, 0.0)
    np.testing.assert_allclose(c[2:6, 3:8], big[0:4, 1:6] @ big[5:10, 2:7])
    outside = np.ones_like(c, bool)
    outside[2:6, 3:8] = False
    assert (c[outside] == 0).all()


def test_gemm_refuses_an_operand_whose_rows_are_not_contiguous():
    a = np.ones((4, 5)).T  # a transposed view: it must come as a flag
    with pytest.raises(ValueError, match="last axis is not contiguous"):
        _gemm(np.zeros((5, 5)), a, np.ones((4, 5)), False, False, 1.0, 0.0)


def test_the_first_threaded_kernel_hands_the_cores_to_numba_for_good():
    """A fresh process starts on the BLAS's threads (numba's pool at one thread); after a recurrent
    kernel the BLAS runs on one thread and numba's pool has the cores, and a Linear still computes
    the same numbers."""
    import subprocess
    import sys

    code = """
import numpy as np, numba
from threadpoolctl import threadpool_info
import numdl
# (LeakyReLU: not a dense chain, whose predict kernel would take the cores itself)
model = numdl.Sequential([numdl.Linear(8), numdl.LeakyReLU(0.1)], input_shape=(300,), dtype="float64", seed=0)
x = np.random.default_rng(0).standard_normal((256, 300))
before = model.predict(x)
ops = model.ops
blas = lambda: sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
print(ops.thread_pool, numba.get_num_threads(), blas())
lstm = numdl.Sequential([numdl.LSTM(4)], input_shape=(3, 2), seed=0)
lstm.predict(np.zeros((2, 3, 2), np.float32))
after = model.predict(x)
print(ops.thread_pool, numba.get_num_threads(), blas(), bool(np.allclose(before, after, rtol=1e-12, atol=1e-12)))
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[-2:]
    assert first.split()[:2] == ["blas", "1"]
    assert second == "numba 2 [1] True"


# One product per way matmul splits over two threads: by rows, by columns (many more columns than
# rows), and by the inner dimension (much longer than the output: a weight gradient over many rows).
SPLIT_SHAPES = [(300, 40, 100), (20, 900, 60), (24, 16, 3000), (40, 70, 600)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", SPLIT_SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_split_over_threads_matches_numpy(dtype, m, n, k, trans_a, trans_b):
    import numba

    from numdl.kernels import tuning

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one CPU thread: nothing to split")
    assert m * n * k >= tuning.MATMUL_MIN_SPLIT_WORK
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        _check_products(dtype, m, n, k, trans_a, trans_b, with_gemm=False)
    finally:
        numba.set_num_threads(threads)


def test_split_shapes_reach_the_inner_split():
    """SPLIT_SHAPES keep covering the split by the inner dimension (two shapes past the ratio) and the
    splits by rows and columns (two short of it) whatever tuning's ratio becomes."""
    from numdl.kernels import tuning

    assert 3000 >= tuning.MATMUL_SPLIT_INNER_RATIO * 24 and 600 >= tuning.MATMUL_SPLIT_INNER_RATIO * 70
    assert 100 < tuning.MATMUL_SPLIT_INNER_RATIO * 300 and 60 < tuning.MATMUL_SPLIT_INNER_RATIO * 900


@njit(cache=True)
def _product_rows(c, a, b, lo, hi):
    # row blocks of larger arrays, as the recurrent kernels pass them
    product(c[lo:hi], a[lo:hi], b, False, False, False)


# (m, k, n): whole 4 x 64 blocks; leftover rows and columns; fewer than 4 rows or 64 columns (the
# BLAS alone); b past tuning.SIMD_PRODUCT_MAX_B (the BLAS alone)
PRODUCT_SHAPES = [(64, 128, 512), (7, 33, 70), (3, 5, 64), (8, 16, 40), (12, 600, 512), (1, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", PRODUCT_SHAPES)
def test_product_in_register_blocks_matches_numpy(dtype, m, k, n):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((m + 5, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = np.full((m + 5, n), np.nan, dtype)  # every entry of the rows it covers is written
    _product_rows(c, a, b, 2, 2 + m)
    reference = a[2:2 + m].astype(np.float64) @ b.astype(np.float64)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(c[2:2 + m], reference, **tolerance)
    assert np.isnan(c[:2]).all() and np.isnan(c[2 + m:]).all()


@njit(cache=True)
def _product(c, a, b, trans_a, trans_b, accumulate):
    product(c, a, b, trans_a, trans_b, accumulate)


# (m, k, n, trans_a, trans_b): the recurrent kernels' products with a transposed operand (x @ W_ih^T
# over a short inner dimension: W_ih transposed once, then 4 x 64 blocks; dW_ih^T = x^T @ dgates and
# dW_hh = dgates^T @ h by a^T @ b blocks; a @ b^T by 4 x 4 dot products), with leftover rows and
# columns, and both transposed (the BLAS alone)
TRANSPOSED_PRODUCT_SHAPES = [(200, 28, 512, False, True), (28, 200, 512, True, False), (136, 64, 130, True, False),
                             (30, 33, 70, True, False), (9, 20, 130, False, True), (10, 160, 10, False, True),
                             (12, 40, 70, True, True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n, trans_a, trans_b", TRANSPOSED_PRODUCT_SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_product_with_a_transposed_operand_matches_numpy(dtype, m, k, n, trans_a, trans_b, accumulate):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    # overwritten, every entry (NaN would stay NaN), or added to
    c = rng.standard_normal((m, n)).astype(dtype) if accumulate else np.full((m, n), np.nan, dtype)
    reference = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    if accumulate:
        reference += c
    _product(c, a, b, trans_a, trans_b, accumulate)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(c, reference, **tolerance)


@njit(cache=True)
def _split_product(c, a, b, trans_a, trans_b):
    split_product(c, a, b, trans_a, trans_b)


# (m, k, n): a dense layer's three products at batch 64 (whole blocks, 784 = 12 blocks of 64 + 16
# left over); odd sizes (leftover rows and columns, a dot product's short last vector); a @ b^T by b
# transposed (a short inner dimension; more rows than tuning.DOT_PRODUCT_MAX_ROWS_PER_INNER allows);
# fewer than 4 rows (the BLAS alone); below tuning.SPLIT_PRODUCT_MIN_WORK (the BLAS alone); an operand
# past tuning.SIMD_PRODUCT_MAX_B (matmul's BLAS blocks)
SPLIT_PRODUCT_SHAPES = [(64, 784, 128), (128, 64, 784), (66, 130, 70), (37, 21, 133), (300, 130, 70), (3, 400, 200),
                        (8, 8, 8), (16, 600, 512)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", SPLIT_PRODUCT_SHAPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_split_product_matches_numpy(dtype, m, k, n, trans_a, trans_b, threads):
    import numba

    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("one CPU thread")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype)  # every entry is written
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        _split_product(c, a, b, trans_a, trans_b)
    finally:
        numba.set_num_threads(before)
    reference = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(c, reference, **tolerance)


@njit(cache=True)
def _split_product_rows(c, a, b, lo, hi):
    split_product(c[lo:hi], a[lo:hi], b, False, True)  # row blocks of larger arrays: strides not the shapes'


def test_split_product_writes_only_its_block_of_a_larger_array():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((80, 300)).astype(np.float32)
    b = rng.standard_normal((68, 300)).astype(np.float32)
    c = np.full((80, 68), np.nan, np.float32)
    _split_product_rows(c, a, b, 8, 72)
    np.testing.assert_allclose(c[8:72], a[8:72].astype(np.float64) @ b.T.astype(np.float64), rtol=1e-4, atol=1e-4)
    assert np.isnan(c[:8]).all() and np.isnan(c[72:]).all()


def test_split_product_shapes_reach_both_ways_of_a_transposed_b():
    """SPLIT_PRODUCT_SHAPES keep covering a @ b^T by dot products (66 x 130) and by b transposed
    (an inner dimension of 21; 300 rows over 130) whatever tuning's bounds become."""
    from numdl.kernels import tuning

    assert 130 >= tuning.DOT_PRODUCT_MIN_INNER and 66 <= tuning.DOT_PRODUCT_MAX_ROWS_PER_INNER * 130
    assert 21 < tuning.DOT_PRODUCT_MIN_INNER and 300 > tuning.DOT_PRODUCT_MAX_ROWS_PER_INNER * 130
