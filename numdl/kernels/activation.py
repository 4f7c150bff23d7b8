"""Activations: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (exact, erf form) and row-wise Softmax.

Element-wise kernels take flat 1-D views (the backend ravels), so one compiled version serves any
rank. Backward kernels overwrite ``dx``. Sigmoid, Tanh and Softmax differentiate through their saved
output; the others through their saved input.
"""

import math

from numba import cuda

from numdl.kernels.common import cpu_kernel, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def relu(x):
    return x if x > same_type(x, 0.0) else same_type(x, 0.0)


@scalar_math
def relu_grad(x):
    return same_type(x, 1.0) if x > same_type(x, 0.0) else same_type(x, 0.0)


@scalar_math
def leaky_relu(x, slope):
    return x if x > same_type(x, 0.0) else x * slope


@scalar_math
def leaky_relu_grad(x, slope):
    return same_type(x, 1.0) if x > same_type(x, 0.0) else slope


@scalar_math
def sigmoid(x):
    # Two branches keep exp's argument non-positive: no overflow for large |x|.
    if x >= same_type(x, 0.0):
        return same_type(x, 1.0) / (same_type(x, 1.0) + math.exp(-x))
    e = math.exp(x)
    return e / (same_type(x, 1.0) + e)


@scalar_math
def gelu(x):
    # PyTorch's default GELU: x * Phi(x) with the exact normal CDF.
    return same_type(x, 0.5) * x * (same_type(x, 1.0) + math.erf(x * same_type(x, 0.7071067811865476)))


@scalar_math
def gelu_grad(x):
    cdf = same_type(x, 0.5) * (same_type(x, 1.0) + math.erf(x * same_type(x, 0.7071067811865476)))
    pdf = same_type(x, 0.3989422804014327) * math.exp(same_type(x, -0.5) * x * x)
    return cdf + x * pdf


@scalar_math
def softmax_row(out, x, r):
    # Row r of a numerically stable softmax (shift by the row maximum); overwrites out[r].
    cols = x.shape[1]
    peak = x[r, 0]
    for c in range(1, cols):
        peak = max(peak, x[r, c])
    total = same_type(peak, 0.0)
    for c in range(cols):
        e = math.exp(x[r, c] - peak)
        out[r, c] = e
        total += e
    inv = same_type(peak, 1.0) / total
    for c in range(cols):
        out[r, c] *= inv


@scalar_math
def softmax_backward_row(dx, dout, out, r):
    # Row r of dx = out * (dout - sum(dout * out)), the softmax Jacobian-vector product.
    cols = out.shape[1]
    dot = same_type(out[r, 0], 0.0)
    for c in range(cols):
        dot += dout[r, c] * out[r, c]
    for c in range(cols):
        dx[r, c] = out[r, c] * (dout[r, c] - dot)


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def relu_forward_cpu(out, x):
    # out, x: (size,); overwrites.
    for i in range(x.size):
        out[i] = relu(x[i])


@cpu_kernel
def relu_backward_cpu(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] * relu_grad(x[i])


@cpu_kernel
def leaky_relu_forward_cpu(out, x, slope):
    for i in range(x.size):
        out[i] = leaky_relu(x[i], slope)


@cpu_kernel
def leaky_relu_backward_cpu(dx, dout, x, slope):
    for i in range(x.size):
        dx[i] = dout[i] * leaky_relu_grad(x[i], slope)


@cpu_kernel
def sigmoid_forward_cpu(out, x):
    for i in range(x.size):
        out[i] = sigmoid(x[i])


@cpu_kernel
def sigmoid_backward_cpu(dx, dout, out):
    for i in range(out.size):
        dx[i] = dout[i] * out[i] * (same_type(out[i], 1.0) - out[i])


@cpu_kernel
def tanh_forward_cpu(out, x):
    for i in range(x.size):
        out[i] = math.tanh(x[i])


@cpu_kernel
def tanh_backward_cpu(dx, dout, out):
    for i in range(out.size):
        dx[i] = dout[i] * (same_type(out[i], 1.0) - out[i] * out[i])


@cpu_kernel
def gelu_forward_cpu(out, x):
    for i in range(x.size):
        out[i] = gelu(x[i])


@cpu_kernel
def gelu_backward_cpu(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] * gelu_grad(x[i])


@cpu_kernel
def softmax_forward_cpu(out, x):
    # out, x: (rows, classes); softmax along the last axis; overwrites.
    rows = x.shape[0]
    for r in range(rows):
        softmax_row(out, x, r)


@cpu_kernel
def softmax_backward_cpu(dx, dout, out):
    # dx = out * (dout - sum(dout * out)) per row (the Jacobian-vector product); overwrites.
    rows = out.shape[0]
    for r in range(rows):
        softmax_backward_row(dx, dout, out, r)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def relu_forward_cuda(out, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = relu(x[i])


@cuda_kernel
def relu_backward_cuda(dx, dout, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dout[i] * relu_grad(x[i])


@cuda_kernel
def leaky_relu_forward_cuda(out, x, slope):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = leaky_relu(x[i], slope)


@cuda_kernel
def leaky_relu_backward_cuda(dx, dout, x, slope):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dout[i] * leaky_relu_grad(x[i], slope)


@cuda_kernel
def sigmoid_forward_cuda(out, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = sigmoid(x[i])


@cuda_kernel
def sigmoid_backward_cuda(dx, dout, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        dx[i] = dout[i] * out[i] * (same_type(out[i], 1.0) - out[i])


@cuda_kernel
def tanh_forward_cuda(out, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = math.tanh(x[i])


@cuda_kernel
def tanh_backward_cuda(dx, dout, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        dx[i] = dout[i] * (same_type(out[i], 1.0) - out[i] * out[i])


@cuda_kernel
def gelu_forward_cuda(out, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = gelu(x[i])


@cuda_kernel
def gelu_backward_cuda(dx, dout, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dout[i] * gelu_grad(x[i])


@cuda_kernel
def softmax_forward_cuda(out, x):
    # One thread per row.
    rows = x.shape[0]
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        softmax_row(out, x, r)


@cuda_kernel
def softmax_backward_cuda(dx, dout, out):
    rows = out.shape[0]
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        softmax_backward_row(dx, dout, out, r)
