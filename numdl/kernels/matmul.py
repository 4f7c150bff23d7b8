"""Matrix products for the CPU kernels: the BLAS ``gemm`` called directly, and ``matmul``, which
splits a product over numba's threads.

One thread pool at a time (design.md): a process starts with the BLAS's threads (numba's pool set
to one thread, so ``matmul`` is one BLAS call, as ``np.dot``); the first kernel that runs numba
threads (the recurrent and attention ones) hands the cores to numba for the rest of the process:
the BLAS goes to one thread and ``matmul`` gives each numba thread a block of rows or columns. Both
pools at once (a model with an LSTM and a large Linear layer) ran 2x slower than either alone.

``gemm`` takes any block of a row-major array whose last axis is contiguous (a row range, a column
range, a transposed view passed as a flag) and can accumulate (``beta``), which ``np.dot`` cannot.
Shapes: c (m, n) = alpha * op(a) @ op(b) + beta * c, op(a) (m, k), op(b) (k, n), where op(a) is
``a.T`` when ``trans_a``. Both helpers are for CPU kernels only; GPU twins have their own loops.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload, register_jitable
from numba.np.linalg import ensure_blas
from numba.np.numpy_support import as_dtype

from numdl.kernels import tuning
from numdl.kernels.common import numba_threads, thread_share


def gemm(c, a, b, trans_a, trans_b, alpha, beta):
    """c = alpha * op(a) @ op(b) + beta * c on the calling thread (compiled callers only)."""
    raise NotImplementedError("gemm is called from compiled kernels only")


@register_jitable
def _keep_alive(sizes):
    # .ctypes pointers do not keep their arrays alive: a use after the call does.
    return sizes[0]


@register_jitable
def _leading_dimension(array):
    # BLAS's distance between rows; with one row any value >= its length does. Raises for a view
    # whose last axis is not contiguous (a transpose must come as a flag, not as a .T view).
    item = array.itemsize
    if array.shape[1] > 1 and array.strides[1] != item:
        raise ValueError("gemm: an operand's last axis is not contiguous (pass a transpose as a flag)")
    if array.shape[0] > 1:
        return array.strides[0] // item
    return max(array.shape[1], 1)


@overload(gemm)
def _gemm_overload(c, a, b, trans_a, trans_b, alpha, beta):
    ensure_blas()
    if not (c.dtype == a.dtype == b.dtype and c.dtype in (types.float32, types.float64)):
        return None
    dtype = c.dtype
    pointer = types.CPointer(dtype)
    # numba's own entry point to SciPy's BLAS (what np.dot calls): a symbol numba resolves when it
    # loads, so kernels calling it stay cacheable. Column-major, Fortran-style arguments.
    xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
        types.char, types.char, types.char, types.intp, types.intp, types.intp,
        pointer, pointer, types.intp, pointer, types.intp, pointer, pointer, types.intp))
    kind = ord("s" if dtype == types.float32 else "d")
    np_dtype = as_dtype(dtype)
    transposed, plain = ord("t"), ord("n")

    def impl(c, a, b, trans_a, trans_b, alpha, beta):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if m == 0 or n == 0:
            return
        scalars = np.empty(2, np_dtype)
        scalars[0] = alpha
        scalars[1] = beta
        if k == 0:  # BLAS would leave c alone; the product of nothing is zero
            for i in range(m):
                for j in range(n):
                    c[i, j] = scalars[1] * c[i, j] if beta != 0 else 0
            return
        # A row-major array is its transpose in column-major order, so BLAS computes
        # c.T = op(b).T @ op(a).T; the leading dimensions are the row strides.
        xxgemm(kind, transposed if trans_b else plain, transposed if trans_a else plain, n, m, k,
               scalars[0:1].ctypes, b.ctypes, _leading_dimension(b), a.ctypes, _leading_dimension(a),
               scalars[1:2].ctypes, c.ctypes, _leading_dimension(c))
        _keep_alive([c.size, a.size, b.size, scalars.size])

    return impl


@njit(parallel=True, **tuning.CPU_JIT_OPTIONS)
def matmul(c, a, b, trans_a, trans_b, beta):
    """c = op(a) @ op(b) + beta * c, one block of c per numba thread (rows, or columns when c has
    few rows); small products run on the calling thread, where a thread start costs more."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    parts = numba_threads()
    if parts < 2 or m * n * k < tuning.MATMUL_MIN_SPLIT_WORK:
        gemm(c, a, b, trans_a, trans_b, 1.0, beta)
        return
    if k >= tuning.MATMUL_SPLIT_INNER_RATIO * max(m, n):
        _matmul_split_inner(c, a, b, trans_a, trans_b, beta, parts)
        return
    split_rows = m >= n or (m >= tuning.MATMUL_MIN_ROWS_TO_SPLIT_ROWS and n < tuning.MATMUL_WIDE_COLUMNS * m)
    size = m if split_rows else n
    align = tuning.MATMUL_BLOCK_ALIGN
    block = ((size + parts - 1) // parts + align - 1) // align * align
    parts = (size + block - 1) // block
    for part in prange(parts):
        lo = part * block
        hi = min(size, lo + block)
        if split_rows:
            a_rows = a[:, lo:hi] if trans_a else a[lo:hi]
            gemm(c[lo:hi], a_rows, b, trans_a, trans_b, 1.0, beta)
        else:
            b_columns = b[lo:hi] if trans_b else b[:, lo:hi]
            gemm(c[:, lo:hi], a, b_columns, trans_a, trans_b, 1.0, beta)


@njit(parallel=True, **tuning.CPU_JIT_OPTIONS)
def _matmul_split_inner(c, a, b, trans_a, trans_b, beta, parts):
    # matmul for a product whose inner dimension is long against its output (a weight gradient
    # summed over thousands of rows): each thread multiplies one share of the inner dimension,
    # the first into c (with beta), the others into partial products added after.
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    partial = np.empty((parts - 1, m, n), c.dtype)
    for part in prange(parts):
        lo, hi = thread_share(k, part, parts)
        a_part = a[lo:hi] if trans_a else a[:, lo:hi]
        b_part = b[:, lo:hi] if trans_b else b[lo:hi]
        if part == 0:
            gemm(c, a_part, b_part, trans_a, trans_b, 1.0, beta)
        else:
            gemm(partial[part - 1], a_part, b_part, trans_a, trans_b, 1.0, 0.0)
    for other in range(parts - 1):
        c += partial[other]
