"""Linear (fully connected) layer: ``out = x @ weight.T + bias``, PyTorch's weight layout.

Shapes: x (n, in_features), weight (out_features, in_features), bias (out_features,) or empty for
no bias, out (n, out_features).
"""

import numpy as np
from numba import cuda

from numdl.kernels.common import cpu_kernel, cuda_kernel, same_type

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def linear_forward_cpu(out, x, weight, bias):
    # out (n, out_f) = x (n, in_f) @ weight.T + bias; overwrites. weight.T goes to BLAS as a flag.
    np.dot(x, weight.T, out)
    if bias.size > 0:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += bias[j]


@cpu_kernel
def linear_backward_cpu(dx, dweight, dbias, dout, x, weight):
    # dweight (out_f, in_f) = dout.T @ x; dbias = column sums of dout; dx (n, in_f) = dout @ weight.
    # All overwrite. An empty dbias means no bias; an empty dx skips the input gradient (first layer).
    np.dot(dout.T, x, dweight)
    if dbias.size > 0:
        for j in range(dbias.shape[0]):
            dbias[j] = 0
        for i in range(dout.shape[0]):
            for j in range(dout.shape[1]):
                dbias[j] += dout[i, j]
    if dx.size > 0:
        np.dot(dout, weight, dx)


# --------------------------------------------------------------------------------------- CUDA kernels
# One thread per output element (grid-stride); correct for any size, and a start for tiled versions.


@cuda_kernel
def linear_forward_cuda(out, x, weight, bias):
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
        out[i, j] = acc


@cuda_kernel
def linear_backward_cuda(dx, dweight, dbias, dout, x, weight):
    # Work items: every dweight element, then every dbias element, then every dx element.
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
                acc += dout[i, j] * x[i, k]
            dweight[j, k] = acc
        elif item < n_dweight + n_dbias:
            j = item - n_dweight
            acc = same_type(x[0, 0], 0.0)
            for i in range(n):
                acc += dout[i, j]
            dbias[j] = acc
        else:
            rest = item - n_dweight - n_dbias
            i = rest // in_features
            k = rest % in_features
            acc = same_type(x[0, 0], 0.0)
            for j in range(out_features):
                acc += dout[i, j] * weight[j, k]
            dx[i, k] = acc
