"""Linear (fully connected) layer: ``out = x @ weight.T + bias``, PyTorch's weight layout.

Shapes: x (n, in_features), weight (out_features, in_features), bias (out_features,) or empty for
no bias, out (n, out_features). ``relu``: a following ReLU layer is fused in (the model found the
pair): forward clamps in the bias pass, backward lets the gradient through where ``out`` > 0 only.
"""


import numpy as np
from numba import prange

from numdl.kernels.common import (
    cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, same_type, scalar_math, thread_share,
    worth_splitting,
)
from numdl.kernels.matmul import matmul

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def linear_forward_cpu(out, x, weight, bias, relu):
    # out (n, out_f) = x (n, in_f) @ weight.T + bias; overwrites. weight.T goes to BLAS as a flag.
    # The bias and ReLU pass splits its rows over numba's threads when they have the cores (the
    # products already do, in matmul).
    matmul(out, x, weight, False, True, 0.0)
    if bias.size > 0 or relu:
        if worth_splitting(out.size):
            _bias_relu_split(out, bias, relu)
        else:
            _bias_relu_rows(out, bias, relu, 0, out.shape[0])


@cpu_kernel
def _bias_relu_rows(out, bias, relu, lo, hi):
    zero = same_type(out[0, 0], 0.0)
    for i in range(lo, hi):
        for j in range(out.shape[1]):
            v = out[i, j] + (bias[j] if bias.size > 0 else zero)
            if relu:
                v = zero if v < zero else v  # not max(): a NaN must reach the NaN guard
            out[i, j] = v


@cpu_parallel_kernel
def _bias_relu_split(out, bias, relu):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(out.shape[0], part, parts)
        _bias_relu_rows(out, bias, relu, lo, hi)


@cpu_kernel
def linear_backward_cpu(dx, dweight, dbias, dmasked, dout, out, x, weight, relu):
    # dweight (out_f, in_f) = g.T @ x; dbias = column sums of g; dx (n, in_f) = g @ weight, where g is
    # dout, or with relu dout masked by out > 0 (written into dmasked, scratch shaped like dout).
    # All overwrite. An empty dbias means no bias; an empty dx skips the input gradient (first layer).
    # The mask and bias pass splits its rows over numba's threads when they have the cores, each
    # thread summing its rows apart.
    g = dmasked if relu else dout
    if relu or dbias.size > 0:
        if worth_splitting(dout.size):
            _mask_and_sum_split(dbias, dmasked, dout, out, relu)
        else:
            _mask_and_sum_rows(dbias, dmasked, dout, out, relu, 0, dout.shape[0])
    matmul(dweight, g, x, True, False, 0.0)
    if dx.size > 0:
        matmul(dx, g, weight, False, False, 0.0)


@cpu_kernel
def _mask_and_sum_rows(sums, dmasked, dout, out, relu, lo, hi):
    # Rows lo..hi-1: with relu, dmasked = dout where out > 0, else 0; sums (empty: none) = the
    # column sums of those rows of the gradient (dmasked with relu, else dout).
    if relu:
        zero = same_type(dout[0, 0], 0.0)
        for i in range(lo, hi):
            for j in range(dout.shape[1]):
                dmasked[i, j] = zero if out[i, j] <= zero else dout[i, j]
    if sums.size > 0:
        g = dmasked if relu else dout
        for j in range(sums.shape[0]):
            sums[j] = 0
        for i in range(lo, hi):
            for j in range(g.shape[1]):
                sums[j] += g[i, j]


@cpu_parallel_kernel
def _mask_and_sum_split(dbias, dmasked, dout, out, relu):
    parts = numba_threads()
    sums = np.empty((parts, dbias.size), dout.dtype)  # each thread's column sums
    for part in prange(parts):
        lo, hi = thread_share(dout.shape[0], part, parts)
        _mask_and_sum_rows(sums[part], dmasked, dout, out, relu, lo, hi)
    if dbias.size > 0:
        dbias[:] = sums[0]
        for part in range(1, parts):
            dbias += sums[part]


# --------------------------------------------------------------------------------------- CUDA kernels
# One thread per output element (grid-stride); correct for any size, and a start for tiled versions.


@cuda_kernel
def linear_forward_cuda(out, x, weight, bias, relu):
    n, out_features = out.shape
    in_features = x.shape[1]
    for item in range(cuda.grid(1), n * out_features, cuda.gridsize(1)):
        i = item // out_features
        j = item % out_features
        acc = same_type(x[0, 0], 0.0)
        for k in range(in_features):
            acc += x[i, k] * weight[j, k]
        if bias.size > 0:
            acc += bias[j]
        if relu and acc < same_type(acc, 0.0):
            acc = same_type(acc, 0.0)
        out[i, j] = acc


@scalar_math
def masked_gradient(dout, out, relu, i, j):
    # dout[i, j], or zero where a fused ReLU clamped the output.
    if relu and out[i, j] <= same_type(out[0, 0], 0.0):
        return same_type(out[0, 0], 0.0)
    return dout[i, j]


@cuda_kernel
def linear_backward_cuda(dx, dweight, dbias, dmasked, dout, out, x, weight, relu):
    # Work items: every dweight element, then every dbias element, then every dx element. The ReLU
    # mask is applied where dout is read (dmasked, the CPU's scratch, is unused here).
    n, out_features = dout.shape
    in_features = x.shape[1]
    n_dweight = dweight.size
    n_dbias = dbias.size
    total = n_dweight + n_dbias + dx.size
    for item in range(cuda.grid(1), total, cuda.gridsize(1)):
        if item < n_dweight:
            j = item // in_features
            k = item % in_features
            acc = same_type(x[0, 0], 0.0)
            for i in range(n):
                acc += masked_gradient(dout, out, relu, i, j) * x[i, k]
            dweight[j, k] = acc
        elif item < n_dweight + n_dbias:
            j = item - n_dweight
            acc = same_type(x[0, 0], 0.0)
            for i in range(n):
                acc += masked_gradient(dout, out, relu, i, j)
            dbias[j] = acc
        else:
            rest = item - n_dweight - n_dbias
            i = rest // in_features
            k = rest % in_features
            acc = same_type(x[0, 0], 0.0)
            for j in range(out_features):
                acc += masked_gradient(dout, out, relu, i, j) * weight[j, k]
            dx[i, k] = acc
