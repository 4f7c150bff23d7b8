"""A chain of dense layers in one call, for inference on a few samples: Linear layers, each followed
by an optional element-wise activation (what a Sequential MLP in evaluation is: Flatten, Linear,
ReLU, Dropout, Linear, ...).

Why: ``model.predict`` on one sample went through one kernel call per layer plus the Python around
each (24.6 us for a 784-128-64-10 MLP, of which the products were a few); one compiled call runs the
whole chain. Not for training (nothing is kept for backward) nor for large batches, where the
layer-by-layer BLAS products win (the model decides, tuning.DENSE_CHAIN_MAX_BATCH).

Shapes: x (n * in_0,) the samples' features flat; out (n * out_last,); bad (1,) of x's dtype, the number of
non-finite values in x (the CPU overwrites it, the CUDA twin adds to it: zero it first); params the model's flat
parameter buffer (ParameterBank.values); table (layers, 5) int64 rows (in_features, out_features,
weight offset, bias offset or -1, activation code), each weight (out, in) row-major at its offset
(PyTorch's layout); scratch (2, >= n * widest hidden layer), the activations between layers.
Activation codes: ACTIVATION_CODES. The scalar activations are the layers' own (kernels/activation),
so a chain computes what the layers do; the products sum in another order than the BLAS's (the last
bits of float32 outputs can differ from a batch predicted layer by layer).

CPU: one sample by contiguous dot products, eight weight rows at a time; several by one BLAS product
per layer; then the bias and activation. On the calling thread (and the BLAS's). CUDA: one block per
sample, its threads over a layer's output units, synchronised between layers.
"""

import math

from numdl.kernels.activation import gelu, gelu_tanh, relu, sigmoid, tanh
from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math
from numdl.kernels.matmul import gemm

#: The activation after each Linear of a chain, by the layers' kernel names (0: none).
ACTIVATION_CODES = {"relu": 1, "tanh": 2, "sigmoid": 3, "gelu": 4, "gelu_tanh": 5}


# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def activate(v, code):
    # Activation ``code`` (ACTIVATION_CODES) of one value.
    if code == 1:
        return relu(v)
    if code == 2:
        return tanh(v)
    if code == 3:
        return sigmoid(v)
    if code == 4:
        return gelu(v)
    if code == 5:
        return gelu_tanh(v)
    return v


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def _dense_rows(dst, src, params, in_f, out_f, w_at):
    # dst[j] = W[j] . src for one sample: eight weight rows per pass over src (eight independent sums
    # hide the add's latency: one row at a time ran 784 -> 128 in 8-10 us, eight in 6-8, where
    # streaming the 400 KB of weights from the L2 cache takes about 5).
    zero = same_type(params[0], 0.0)
    j = 0
    while j + 8 <= out_f:
        at = w_at + j * in_f
        r0, r1 = params[at:at + in_f], params[at + in_f:at + 2 * in_f]
        r2, r3 = params[at + 2 * in_f:at + 3 * in_f], params[at + 3 * in_f:at + 4 * in_f]
        r4, r5 = params[at + 4 * in_f:at + 5 * in_f], params[at + 5 * in_f:at + 6 * in_f]
        r6, r7 = params[at + 6 * in_f:at + 7 * in_f], params[at + 7 * in_f:at + 8 * in_f]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for k in range(in_f):
            v = src[k]
            a0 += r0[k] * v
            a1 += r1[k] * v
            a2 += r2[k] * v
            a3 += r3[k] * v
            a4 += r4[k] * v
            a5 += r5[k] * v
            a6 += r6[k] * v
            a7 += r7[k] * v
        dst[j], dst[j + 1], dst[j + 2], dst[j + 3] = a0, a1, a2, a3
        dst[j + 4], dst[j + 5], dst[j + 6], dst[j + 7] = a4, a5, a6, a7
        j += 8
    while j < out_f:
        row = params[w_at + j * in_f:w_at + (j + 1) * in_f]
        acc = zero
        for k in range(in_f):
            acc += row[k] * src[k]
        dst[j] = acc
        j += 1


@cpu_kernel
def _dense_layer(dst, src, params, n, in_f, out_f, w_at, b_at, code):
    # dst[s out_f + j] = activate(W[j] . src[s in_f:(s + 1) in_f] + b[j]) for every sample s: one sample
    # by _dense_rows, several by one BLAS product (from two samples it was as fast or faster), then
    # the bias and activation in place.
    if n == 1:
        _dense_rows(dst, src, params, in_f, out_f, w_at)
    else:
        gemm(dst[:n * out_f].reshape((n, out_f)), src[:n * in_f].reshape((n, in_f)),
             params[w_at:w_at + out_f * in_f].reshape((out_f, in_f)), False, True, 1.0, 0.0)
    zero = same_type(params[0], 0.0)
    for s in range(n):
        for j in range(out_f):
            dst[s * out_f + j] = activate(dst[s * out_f + j] + (params[b_at + j] if b_at >= 0 else zero), code)


@cpu_kernel
def dense_chain_forward_cpu(out, bad, x, params, table, scratch):
    # Overwrites out and bad (see the module docstring); the hidden layers alternate between scratch's
    # rows. The count of non-finite inputs is what predict's input check needs, without a call of its own.
    count = 0
    for i in range(x.size):
        if not math.isfinite(x[i]):
            count += 1
    bad[0] = count
    layers = table.shape[0]
    n = x.size // table[0, 0]
    for layer in range(layers):
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        src = x if layer == 0 else scratch[(layer - 1) % 2]
        dst = out if layer == layers - 1 else scratch[layer % 2]
        _dense_layer(dst, src, params, n, in_f, out_f, w_at, b_at, code)


# --------------------------------------------------------------------------------------- CUDA kernels
# One block per sample (launched per sample); every thread of a block runs the same layers, so the
# syncthreads calls are uniform.


@cuda_kernel
def dense_chain_forward_cuda(out, bad, x, params, table, scratch):
    layers = table.shape[0]
    n = x.size // table[0, 0]
    zero = same_type(params[0], 0.0)
    for s in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        for k in range(cuda.threadIdx.x, table[0, 0], cuda.blockDim.x):
            if not math.isfinite(x[s * table[0, 0] + k]):
                cuda.atomic.add(bad, 0, same_type(bad[0], 1.0))
        for layer in range(layers):
            in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
            for j in range(cuda.threadIdx.x, out_f, cuda.blockDim.x):
                acc = zero
                for k in range(in_f):
                    if layer == 0:
                        v = x[s * in_f + k]
                    else:
                        v = scratch[(layer - 1) % 2, s * in_f + k]
                    acc += params[w_at + j * in_f + k] * v
                if b_at >= 0:
                    acc += params[b_at + j]
                acc = activate(acc, code)
                if layer == layers - 1:
                    out[s * out_f + j] = acc
                else:
                    scratch[layer % 2, s * out_f + j] = acc
            cuda.syncthreads()
