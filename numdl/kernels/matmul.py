"""Matrix products for the CPU kernels: the BLAS ``gemm`` called directly, ``matmul``, which
splits a product over numba's threads, ``product``, a small float32 a @ b on the calling thread
in register blocks, and ``split_product``, float32 register blocks shared between numba's threads
(see their section below).

One thread pool at a time (design.md): a process starts with the BLAS's threads (numba's pool set
to one thread, so ``matmul`` is one BLAS call, as ``np.dot``); the first kernel that runs numba
threads (the recurrent, attention and dense-chain ones) hands the cores to numba for the
rest of the process: the BLAS goes to one thread and ``matmul`` gives each numba thread a block of
rows or columns (float32: of register blocks). Both pools at once (a model with an LSTM and a large
Linear layer) ran 2x slower than either alone.

``gemm`` takes any block of a row-major array whose last axis is contiguous (a row range, a column
range, a transposed view passed as a flag) and can accumulate (``beta``), which ``np.dot`` cannot.
Shapes: c (m, n) = alpha * op(a) @ op(b) + beta * c, op(a) (m, k), op(b) (k, n), where op(a) is
``a.T`` when ``trans_a``. All of them are for CPU kernels only; GPU twins have their own loops.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload, register_jitable
from numba.np.linalg import ensure_blas
from numba.np.numpy_support import as_dtype

from numdl.kernels import tuning
from numdl.kernels.common import cpu_float32_variant, numba_threads, thread_share
from numdl.kernels.simd import LANES, vfma, vload, vload_first, vsplat_from, vstore, vsum, vzero


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
    few rows); small products run on the calling thread, where a thread start costs more. float32
    C-contiguous operands with beta 0 go by register blocks (see split_product) where they apply."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    parts = numba_threads()
    if parts < 2 or m * n * k < tuning.MATMUL_MIN_SPLIT_WORK:
        gemm(c, a, b, trans_a, trans_b, 1.0, beta)
        return
    if k >= tuning.MATMUL_SPLIT_INNER_RATIO * max(m, n):
        _matmul_split_inner(c, a, b, trans_a, trans_b, beta, parts)
        return
    if beta == 0 and _register_blocks_on_threads(c, a, b, trans_a, trans_b, parts, False):
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


# ------------------------------------------------------------------------ small float32 products
# c = a @ b for the per-step products of the recurrent kernels (64 x 128 x 512 on each thread): at
# these sizes the BLAS packs b on every call, and 4 x 64 blocks of c summed in registers ran
# 1.2-1.35x its speed on one thread (tuning.SIMD_PRODUCT_MAX_B). ``split_product`` runs the three
# orientations of a dense layer's step (x @ W^T, g^T @ x, g @ W) the same way over numba's threads.

BLOCK_ROWS, BLOCK_COLUMNS = 4, 4 * LANES
# c = a @ b^T sums dot products along rows of both: blocks of 4 x 4 outputs, 16 running vectors.
DOT_BLOCK_COLUMNS = 4


@register_jitable
def _store_four(flat, at, v0, v1, v2, v3):
    # 64 consecutive elements from four vectors
    vstore(flat, at, v0)
    vstore(flat, at + LANES, v1)
    vstore(flat, at + 2 * LANES, v2)
    vstore(flat, at + 3 * LANES, v3)


@register_jitable
def _load_four(flat, at):
    return vload(flat, at), vload(flat, at + LANES), vload(flat, at + 2 * LANES), vload(flat, at + 3 * LANES)


@register_jitable
def _row_step(a_flat, b_flat, c_flat, i, j, k, a_at, a_step, b_row, c_row, accumulate):
    # c[i:i+4, j:j+64] = sum over p < k of a(i + r, p) * b[p, j:j+64] (added to c's values when
    # accumulate), where a(i + r, p) is a_flat[a_at(i + r) + p * a_step]: a's rows (a @ b) or its
    # columns (a^T @ b).
    if accumulate:
        at = i * c_row + j
        c00, c01, c02, c03 = _load_four(c_flat, at)
        c10, c11, c12, c13 = _load_four(c_flat, at + c_row)
        c20, c21, c22, c23 = _load_four(c_flat, at + 2 * c_row)
        c30, c31, c32, c33 = _load_four(c_flat, at + 3 * c_row)
    else:
        c00, c01, c02, c03 = vzero(), vzero(), vzero(), vzero()
        c10, c11, c12, c13 = vzero(), vzero(), vzero(), vzero()
        c20, c21, c22, c23 = vzero(), vzero(), vzero(), vzero()
        c30, c31, c32, c33 = vzero(), vzero(), vzero(), vzero()
    for p in range(k):
        at = p * b_row + j
        b0, b1 = vload(b_flat, at), vload(b_flat, at + LANES)
        b2, b3 = vload(b_flat, at + 2 * LANES), vload(b_flat, at + 3 * LANES)
        a0 = vsplat_from(a_flat, a_at[0] + p * a_step)
        c00, c01, c02, c03 = vfma(a0, b0, c00), vfma(a0, b1, c01), vfma(a0, b2, c02), vfma(a0, b3, c03)
        a1 = vsplat_from(a_flat, a_at[1] + p * a_step)
        c10, c11, c12, c13 = vfma(a1, b0, c10), vfma(a1, b1, c11), vfma(a1, b2, c12), vfma(a1, b3, c13)
        a2 = vsplat_from(a_flat, a_at[2] + p * a_step)
        c20, c21, c22, c23 = vfma(a2, b0, c20), vfma(a2, b1, c21), vfma(a2, b2, c22), vfma(a2, b3, c23)
        a3 = vsplat_from(a_flat, a_at[3] + p * a_step)
        c30, c31, c32, c33 = vfma(a3, b0, c30), vfma(a3, b1, c31), vfma(a3, b2, c32), vfma(a3, b3, c33)
    at = i * c_row + j
    _store_four(c_flat, at, c00, c01, c02, c03)
    _store_four(c_flat, at + c_row, c10, c11, c12, c13)
    _store_four(c_flat, at + 2 * c_row, c20, c21, c22, c23)
    _store_four(c_flat, at + 3 * c_row, c30, c31, c32, c33)


@njit(**tuning.CPU_JIT_OPTIONS)
def _product_blocks(c, a, b, trans_a, rows_from, rows_to, columns_from, columns_to, accumulate):
    # c[rows_from:rows_to, columns_from:columns_to] = op(a) @ b (+= when accumulate) in 4 x 64 blocks (whole blocks);
    # a, b and c C-contiguous (a row block of a larger array is). op(a) = a^T when trans_a: the
    # blocks then go column by column, so that b's 64 columns stay in the L1 cache while the
    # scalars come from all of a, a (k, m) that is small (a layer's output gradient).
    k = a.shape[0] if trans_a else a.shape[1]
    a_flat, b_flat, c_flat = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    a_row, b_row, c_row = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
    a_step = a_row if trans_a else 1
    if trans_a:
        for j in range(columns_from, columns_to, BLOCK_COLUMNS):
            for i in range(rows_from, rows_to, BLOCK_ROWS):
                _row_step(a_flat, b_flat, c_flat, i, j, k, (i, i + 1, i + 2, i + 3), a_step, b_row, c_row,
                          accumulate)
    else:
        for i in range(rows_from, rows_to, BLOCK_ROWS):
            a_at = (i * a_row, (i + 1) * a_row, (i + 2) * a_row, (i + 3) * a_row)
            for j in range(columns_from, columns_to, BLOCK_COLUMNS):
                _row_step(a_flat, b_flat, c_flat, i, j, k, a_at, a_step, b_row, c_row, accumulate)


@njit(**tuning.CPU_JIT_OPTIONS)
def _dot_product_blocks(c, a, b, rows_from, rows_to, columns_from, columns_to, accumulate):
    # c[i, j] = a[i] . b[j] (c = a @ b^T; += when accumulate) in 4 x 4 blocks (whole blocks), any length of the rows:
    # 16 vectors of partial sums along them (the last, short vector read masked), each added up at
    # the end. a's four rows stay in the L1 cache while b's rows stream past.
    k = a.shape[1]
    a_flat, b_flat, c_flat = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    a_row, b_row, c_row = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
    for i in range(rows_from, rows_to, BLOCK_ROWS):
        for j in range(columns_from, columns_to, DOT_BLOCK_COLUMNS):
            s00, s01, s02, s03 = vzero(), vzero(), vzero(), vzero()
            s10, s11, s12, s13 = vzero(), vzero(), vzero(), vzero()
            s20, s21, s22, s23 = vzero(), vzero(), vzero(), vzero()
            s30, s31, s32, s33 = vzero(), vzero(), vzero(), vzero()
            for p in range(0, k, LANES):
                count = min(LANES, k - p)  # vload_first reads plainly when count is 16
                b0 = vload_first(b_flat, j * b_row + p, count)
                b1 = vload_first(b_flat, (j + 1) * b_row + p, count)
                b2 = vload_first(b_flat, (j + 2) * b_row + p, count)
                b3 = vload_first(b_flat, (j + 3) * b_row + p, count)
                a0 = vload_first(a_flat, i * a_row + p, count)
                s00, s01, s02, s03 = vfma(a0, b0, s00), vfma(a0, b1, s01), vfma(a0, b2, s02), vfma(a0, b3, s03)
                a1 = vload_first(a_flat, (i + 1) * a_row + p, count)
                s10, s11, s12, s13 = vfma(a1, b0, s10), vfma(a1, b1, s11), vfma(a1, b2, s12), vfma(a1, b3, s13)
                a2 = vload_first(a_flat, (i + 2) * a_row + p, count)
                s20, s21, s22, s23 = vfma(a2, b0, s20), vfma(a2, b1, s21), vfma(a2, b2, s22), vfma(a2, b3, s23)
                a3 = vload_first(a_flat, (i + 3) * a_row + p, count)
                s30, s31, s32, s33 = vfma(a3, b0, s30), vfma(a3, b1, s31), vfma(a3, b2, s32), vfma(a3, b3, s33)
            at = i * c_row + j
            _put_sums(c_flat, at, s00, s01, s02, s03, accumulate)
            _put_sums(c_flat, at + c_row, s10, s11, s12, s13, accumulate)
            _put_sums(c_flat, at + 2 * c_row, s20, s21, s22, s23, accumulate)
            _put_sums(c_flat, at + 3 * c_row, s30, s31, s32, s33, accumulate)


@register_jitable
def _put_sums(flat, at, s0, s1, s2, s3, accumulate):
    # flat[at:at+4] = (or +=) the lane sums of four vectors
    if accumulate:
        flat[at], flat[at + 1], flat[at + 2], flat[at + 3] = (flat[at] + vsum(s0), flat[at + 1] + vsum(s1),
                                                              flat[at + 2] + vsum(s2), flat[at + 3] + vsum(s3))
    else:
        flat[at], flat[at + 1], flat[at + 2], flat[at + 3] = vsum(s0), vsum(s1), vsum(s2), vsum(s3)


@register_jitable
def _blocks(c, a, b, trans_a, trans_b, rows_from, rows_to, columns_from, columns_to, accumulate):
    if trans_b:
        _dot_product_blocks(c, a, b, rows_from, rows_to, columns_from, columns_to, accumulate)
    else:
        _product_blocks(c, a, b, trans_a, rows_from, rows_to, columns_from, columns_to, accumulate)


@register_jitable
def _whole_blocks(c, a, b, trans_a, trans_b):
    # (rows, columns) of c that whole register blocks cover; (0, 0) where the blocks do not pay or
    # do not fit: op(a) @ op(b) with both transposed, or an operand streamed once per block of rows
    # (b; a^T's a, streamed once per block of columns) past the cache (tuning.SIMD_PRODUCT_MAX_B).
    m, n = c.shape
    streamed = a.size if trans_a else b.size
    if (trans_a and trans_b) or streamed > tuning.SIMD_PRODUCT_MAX_B:
        return 0, 0
    columns = DOT_BLOCK_COLUMNS if trans_b else BLOCK_COLUMNS
    return m - m % BLOCK_ROWS, n - n % columns


@register_jitable
def _leftover_products(c, a, b, trans_a, trans_b, rows, columns, accumulate):
    # The rows and columns of c past whole blocks, by the BLAS on the calling thread.
    m, n = c.shape
    beta = 1.0 if accumulate else 0.0
    if columns < n and rows > 0:
        a_part = a[:, :rows] if trans_a else a[:rows]
        b_part = b[columns:] if trans_b else b[:, columns:]
        gemm(c[:rows, columns:], a_part, b_part, trans_a, trans_b, 1.0, beta)
    if rows < m:
        gemm(c[rows:], a[:, rows:] if trans_a else a[rows:], b, trans_a, trans_b, 1.0, beta)


def _product_float32(c, a, b, trans_a, trans_b, accumulate):
    if not _register_blocks_on_threads(c, a, b, trans_a, trans_b, 1, accumulate):  # one part: this thread
        gemm(c, a, b, trans_a, trans_b, 1.0, 1.0 if accumulate else 0.0)


@cpu_float32_variant(_product_float32)
def product(c, a, b, trans_a, trans_b, accumulate):
    """c = op(a) @ op(b), or c += op(a) @ op(b) when accumulate, on the calling thread (compiled
    callers only): float32 by register blocks where they fit (as split_product, one part),
    otherwise (and float64) one BLAS call. Operands with contiguous rows."""
    gemm(c, a, b, trans_a, trans_b, 1.0, 1.0 if accumulate else 0.0)


@njit(parallel=True, **tuning.CPU_JIT_OPTIONS)
def _blocks_on_threads(c, a, b, trans_a, trans_b, rows, columns, by_columns, parts, accumulate):
    # The whole blocks of c[:rows, :columns], one near-equal share of block columns (or rows) per
    # part, each part on a numba thread.
    block = (DOT_BLOCK_COLUMNS if trans_b else BLOCK_COLUMNS) if by_columns else BLOCK_ROWS
    size = columns if by_columns else rows
    for part in prange(parts):
        lo, hi = thread_share(size // block, part, parts)
        if by_columns:
            _blocks(c, a, b, trans_a, trans_b, 0, rows, lo * block, hi * block, accumulate)
        else:
            _blocks(c, a, b, trans_a, trans_b, lo * block, hi * block, 0, columns, accumulate)


def _register_blocks_on_threads_float32(c, a, b, trans_a, trans_b, parts, accumulate):
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if (trans_b and not trans_a and m >= BLOCK_ROWS and n >= BLOCK_COLUMNS and b.size <= tuning.SIMD_PRODUCT_MAX_B
            and (k < tuning.DOT_PRODUCT_MIN_INNER or m > tuning.DOT_PRODUCT_MAX_ROWS_PER_INNER * k)):
        # a @ b^T where the dot products' lane sums cost more than they save (a short inner
        # dimension, or enough rows that the BLAS's packing pays): b (a layer's weight) transposed
        # once, then the a @ b blocks
        b = np.ascontiguousarray(b.T)
        trans_b = False
    rows, columns = _whole_blocks(c, a, b, trans_a, trans_b)
    if rows == 0 or columns == 0:
        return False
    # each thread reads all of one operand and its share of the other: share the larger one
    column_blocks = columns // (DOT_BLOCK_COLUMNS if trans_b else BLOCK_COLUMNS)
    by_columns = column_blocks >= parts and (b.size >= a.size or rows // BLOCK_ROWS < parts)
    if parts > 1 and (by_columns or rows // BLOCK_ROWS >= parts):
        _blocks_on_threads(c, a, b, trans_a, trans_b, rows, columns, by_columns, parts, accumulate)
    else:
        _blocks(c, a, b, trans_a, trans_b, 0, rows, 0, columns, accumulate)
    _leftover_products(c, a, b, trans_a, trans_b, rows, columns, accumulate)
    return True


@cpu_float32_variant(_register_blocks_on_threads_float32)
def _register_blocks_on_threads(c, a, b, trans_a, trans_b, parts, accumulate):
    # c = op(a) @ op(b) (c += when accumulate) by float32 register blocks shared between ``parts``
    # numba threads (the rest of c by the BLAS); False (nothing done) where they do not apply:
    # float64, strided views, both transposed, an operand past the cache.
    return False


def _split_product_float32(c, a, b, trans_a, trans_b):
    k = a.shape[0] if trans_a else a.shape[1]
    parts = numba_threads() if c.size * k >= tuning.MATMUL_MIN_SPLIT_WORK else 1
    if c.size * k < tuning.SPLIT_PRODUCT_MIN_WORK or not _register_blocks_on_threads(c, a, b, trans_a, trans_b,
                                                                                    parts, False):
        matmul(c, a, b, trans_a, trans_b, 0.0)


@cpu_float32_variant(_split_product_float32)
def split_product(c, a, b, trans_a, trans_b):
    """c = op(a) @ op(b) over numba's threads (compiled callers only; c overwritten): float32 by
    register blocks (a @ b and a^T @ b: 4 x 64; a @ b^T: 4 x 4 dot products) shared between the
    threads, the rest of c by the BLAS; float64, both transposed, or an operand past the cache:
    ``matmul``. A dense layer's products at batch 64 (64x784 @ 128x784^T, 128x64^T @ 64x784) ran
    in 73 and 63 us on two threads against OpenBLAS's 111 and 100 on its own two."""
    matmul(c, a, b, trans_a, trans_b, 0.0)
