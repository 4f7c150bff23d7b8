"""Activations: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (exact, erf form) and row-wise Softmax.

tanh, sigmoid and erf (GELU) of float32 values use approximations that vectorise (Eigen's rational
tanh and erf, a Cephes-style exp for sigmoid and tanh's tails: multiply-adds, one division, no libm
call; a libm call per element made the LSTM cell update cost more than its matrix products, and
GELU 14x slower than PyTorch's). Each saturates exactly where float32's exact function does and keeps
float32's relative precision in the tails. float64 stays exact.

Element-wise kernels take flat 1-D views (the backend ravels), so one compiled version serves any
rank. Backward kernels overwrite ``dx``. Sigmoid, Tanh and Softmax differentiate through their saved
output; the others through their saved input.
"""

import math

import numpy as np

from numba import prange, types
from numba.extending import intrinsic

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    numba_threads,
    same_type,
    scalar_math,
    scalar_math_float32,
    thread_share,
    worth_splitting,
)

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def relu(x):
    # "x < 0", not "x > 0": NaN fails every compare, so it passes through to the NaN guard (as in PyTorch).
    return same_type(x, 0.0) if x < same_type(x, 0.0) else x


@scalar_math
def relu_grad(x):
    return same_type(x, 1.0) if x > same_type(x, 0.0) else same_type(x, 0.0)


@scalar_math
def leaky_relu(x, slope):
    return x * slope if x < same_type(x, 0.0) else x


@scalar_math
def leaky_relu_grad(x, slope):
    return same_type(x, 1.0) if x > same_type(x, 0.0) else slope


# A float32 exp of x <= 0 that vectorises (numba has no SVML: a libm expf per element keeps a loop
# scalar): Cephes' expf, exp(x) = 2^n exp(r) with |r| <= ln2/2 and a polynomial for exp(r), within
# 3 ulp of the exact value, down into the denormals. 2^n is built from its bits, as two factors so
# that n down to -150 stays representable. Sigmoid and tanh only need exp(-|x|) (no overflow).
_EXP_LOW = np.float32(-104.0)  # exp(-104) rounds to 0 in float32
_LOG2E = np.float32(1.4426950408889634)
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 in two parts
_E0, _E1, _E2, _E3, _E4, _E5 = (np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_ZERO, _ONE, _TWO, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
_EXPONENT_BIAS, _MANTISSA_SCALE = np.int32(127), np.int32(1 << 23)


@intrinsic
def _float32_from_bits(typingctx, bits):
    # The float32 whose IEEE-754 bits are the int32 ``bits`` (what a C union does), on both targets.
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@scalar_math  # compiled float32 callers only; the intrinsic has no Python version
def _exp_nonpositive_float32(x):
    x = _EXP_LOW if x < _EXP_LOW else x  # compares, not min/max: NaN passes through
    x = _ZERO if x > _ZERO else x
    # n = round(x / ln2) = -k, k >= 0: truncation rounds a non-negative value down, so no floor
    # (which the CUDA target lacks for float32, and math.floor would turn the math into float64).
    k = np.int32(_HALF - x * _LOG2E)
    kf = np.float32(k)
    r = x + kf * _LN2_HIGH + kf * _LN2_LOW
    p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
    y = p * r * r + r + _ONE
    k1 = (k + np.int32(1)) >> np.int32(1)
    scale1 = _float32_from_bits((_EXPONENT_BIAS - k1) * _MANTISSA_SCALE)
    scale2 = _float32_from_bits((_EXPONENT_BIAS - (k - k1)) * _MANTISSA_SCALE)
    return y * scale1 * scale2


# Eigen's generic_fast_tanh_float on |x| <= 7.9: odd numerator and even denominator polynomials.
# Beyond, float32's tanh is one of five values, 1 - m 2^-24 for m = 4, 3, 2, 1, 0 (tanh(x) ~
# 1 - 2 exp(-2x)); each applies from where 2 exp(-2x) rounds to m 2^-24, so the tail is exactly
# rounded and reaches +-1 where float32's tanh does (|x| > 13 ln 2 = 9.01): the gradient 1 - tanh^2
# is then 0, as PyTorch's. A staircase of compares, not a second polynomial or an exp: the helper
# stays small enough for LLVM to inline and vectorise (an exp here made its loops 100x slower).
_TANH_RATIONAL_LIMIT = np.float32(7.90531110763549805)
_TANH_NUMERATOR = tuple(np.float32(c) for c in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_TANH_DENOMINATOR = tuple(np.float32(c) for c in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))
_A0, _A1, _A2, _A3, _A4, _A5, _A6 = _TANH_NUMERATOR
_B0, _B1, _B2, _B3 = _TANH_DENOMINATOR
# (threshold, value): above -ln((m + 0.5) 2^-25) / 2, tanh rounds to 1 - m 2^-24
(_S3, _V3), (_S2, _V2), (_S1, _V1), (_S0, _V0) = (
    (np.float32(-0.5 * math.log((m + 0.5) * 2.0 ** -25)), np.float32(1.0 - m * 2.0 ** -24)) for m in (3, 2, 1, 0))


def _tanh_float32(x):
    magnitude = -x if x < _ZERO else x  # compares and selects, not abs/min/max: NaN passes through
    c = _TANH_RATIONAL_LIMIT if magnitude > _TANH_RATIONAL_LIMIT else magnitude
    x2 = c * c
    numerator = c * (((((((_A6 * x2 + _A5) * x2 + _A4) * x2 + _A3) * x2 + _A2) * x2 + _A1) * x2) + _A0)
    denominator = ((_B3 * x2 + _B2) * x2 + _B1) * x2 + _B0
    t = numerator / denominator
    t = _V3 if magnitude > _S3 else t
    t = _V2 if magnitude > _S2 else t
    t = _V1 if magnitude > _S1 else t
    t = _V0 if magnitude > _S0 else t
    return -t if x < _ZERO else t


def _sigmoid_float32(x):
    # 1 / (1 + e) or e / (1 + e) with e = exp(-|x|) <= 1: no overflow, and each tail keeps float32's
    # relative precision (sigmoid(-90) ~ 8e-40, a denormal, not a clamp at 1e-7).
    e = _exp_nonpositive_float32(-x if x > _ZERO else x)
    inverse = _ONE / (_ONE + e)
    return e * inverse if x < _ZERO else inverse


# Eigen's generic_fast_erf_float: x P(x^2) / Q(x^2) on x clamped to +-4 (float32 erf is +-1 beyond);
# absolute error below 5e-7 (checked against math.erf in the tests).
_ERF_CLAMP = np.float32(4.0)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_Q0, _Q1, _Q2, _Q3, _Q4 = (np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))


def _erf_float32(x):
    x = _ERF_CLAMP if x > _ERF_CLAMP else x
    x = -_ERF_CLAMP if x < -_ERF_CLAMP else x
    x2 = x * x
    numerator = x * ((((((_P0 * x2 + _P1) * x2 + _P2) * x2 + _P3) * x2 + _P4) * x2 + _P5) * x2 + _P6)
    denominator = (((_Q0 * x2 + _Q1) * x2 + _Q2) * x2 + _Q3) * x2 + _Q4
    return numerator / denominator


@scalar_math_float32(_exp_nonpositive_float32)
def exp_nonpositive(x):
    # exp(x) for x <= 0 (a score minus its row's maximum, in a softmax); float32 kernels get the
    # vectorising version (math.exp stays a scalar call per element: numba's wheels have no SVML).
    return math.exp(x)


@scalar_math_float32(_tanh_float32)
def tanh(x):
    return math.tanh(x)


@scalar_math_float32(_erf_float32)
def erf(x):
    return math.erf(x)


@scalar_math_float32(_sigmoid_float32)
def sigmoid(x):
    # Two branches keep exp's argument non-positive: no overflow for large |x|.
    if x >= same_type(x, 0.0):
        return same_type(x, 1.0) / (same_type(x, 1.0) + math.exp(-x))
    e = math.exp(x)
    return e / (same_type(x, 1.0) + e)


@scalar_math
def gelu(x):
    # PyTorch's default GELU: x * Phi(x) with the exact normal CDF.
    return same_type(x, 0.5) * x * (same_type(x, 1.0) + erf(x * same_type(x, 0.7071067811865476)))


@scalar_math
def gelu_grad(x):
    cdf = same_type(x, 0.5) * (same_type(x, 1.0) + erf(x * same_type(x, 0.7071067811865476)))
    pdf = same_type(x, 0.3989422804014327) * math.exp(same_type(x, -0.5) * x * x)
    return cdf + x * pdf


@scalar_math
def gelu_tanh(x):
    # PyTorch's GELU(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    inner = same_type(x, 0.7978845608028654) * (x + same_type(x, 0.044715) * x * x * x)
    return same_type(x, 0.5) * x * (same_type(x, 1.0) + tanh(inner))


@scalar_math
def gelu_tanh_grad(x):
    inner = same_type(x, 0.7978845608028654) * (x + same_type(x, 0.044715) * x * x * x)
    t = tanh(inner)
    d_inner = same_type(x, 0.7978845608028654) * (same_type(x, 1.0) + same_type(x, 0.134145) * x * x)
    return same_type(x, 0.5) * (same_type(x, 1.0) + t) + same_type(x, 0.5) * x * (same_type(x, 1.0) - t * t) * d_inner


@scalar_math
def softmax_at(out, x, o, i):
    # out[o, :, i] = softmax(x[o, :, i]), shifted by the maximum; returns log sum_c exp(x_c), with
    # which a cross-entropy finishes.
    cols = x.shape[1]
    peak = x[o, 0, i]
    for c in range(1, cols):
        peak = max(peak, x[o, c, i])
    total = same_type(peak, 0.0)
    for c in range(cols):
        e = math.exp(x[o, c, i] - peak)
        out[o, c, i] = e
        total += e
    inv = same_type(peak, 1.0) / total
    for c in range(cols):
        out[o, c, i] *= inv
    return peak + math.log(total)


@scalar_math
def softmax_backward_at(dx, dout, out, o, i):
    # dx = out * (dout - sum(dout * out)) along the class axis: the Jacobian-vector product.
    cols = out.shape[1]
    dot = same_type(out[o, 0, i], 0.0)
    for c in range(cols):
        dot += dout[o, c, i] * out[o, c, i]
    for c in range(cols):
        dx[o, c, i] = out[o, c, i] * (dout[o, c, i] - dot)


@scalar_math
def log_softmax_at(out, x, o, i):
    # out[o, :, i] = x - peak - log(sum exp(x - peak)).
    cols = x.shape[1]
    peak = x[o, 0, i]
    for c in range(1, cols):
        peak = max(peak, x[o, c, i])
    total = same_type(peak, 0.0)
    for c in range(cols):
        total += math.exp(x[o, c, i] - peak)
    shift = peak + math.log(total)
    for c in range(cols):
        out[o, c, i] = x[o, c, i] - shift


@scalar_math
def log_softmax_backward_at(dx, dout, out, o, i):
    # dx = dout - softmax * sum(dout), softmax = exp(out).
    cols = out.shape[1]
    total = same_type(out[o, 0, i], 0.0)
    for c in range(cols):
        total += dout[o, c, i]
    for c in range(cols):
        dx[o, c, i] = dout[o, c, i] - math.exp(out[o, c, i]) * total


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def relu_forward_cpu(out, x):
    # out, x: (size,); overwrites. Split over numba's threads when they have the cores.
    if worth_splitting(x.size):
        _relu_forward_split(out, x)
    else:
        _relu_forward_range(out, x)


@cpu_kernel
def _relu_forward_range(out, x):
    for i in range(x.size):
        out[i] = relu(x[i])


@cpu_parallel_kernel
def _relu_forward_split(out, x):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.size, part, parts)
        _relu_forward_range(out[lo:hi], x[lo:hi])


@cpu_kernel
def relu_backward_cpu(dx, dout, x):
    if worth_splitting(x.size):
        _relu_backward_split(dx, dout, x)
    else:
        _relu_backward_range(dx, dout, x)


@cpu_kernel
def _relu_backward_range(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] * relu_grad(x[i])


@cpu_parallel_kernel
def _relu_backward_split(dx, dout, x):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.size, part, parts)
        _relu_backward_range(dx[lo:hi], dout[lo:hi], x[lo:hi])


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
        out[i] = tanh(x[i])


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
def gelu_tanh_forward_cpu(out, x):
    for i in range(x.size):
        out[i] = gelu_tanh(x[i])


@cpu_kernel
def gelu_tanh_backward_cpu(dx, dout, x):
    for i in range(x.size):
        dx[i] = dout[i] * gelu_tanh_grad(x[i])


@cpu_kernel
def softmax_forward_cpu(out, x):
    # out, x: (outer, classes, inner); softmax along axis 1 (classes last: inner = 1); overwrites.
    for o in range(x.shape[0]):
        for i in range(x.shape[2]):
            softmax_at(out, x, o, i)


@cpu_kernel
def softmax_backward_cpu(dx, dout, out):
    # dx, dout, out: (outer, classes, inner); overwrites.
    for o in range(out.shape[0]):
        for i in range(out.shape[2]):
            softmax_backward_at(dx, dout, out, o, i)


@cpu_kernel
def log_softmax_forward_cpu(out, x):
    # out, x: (outer, classes, inner); log-softmax along axis 1; overwrites.
    for o in range(x.shape[0]):
        for i in range(x.shape[2]):
            log_softmax_at(out, x, o, i)


@cpu_kernel
def log_softmax_backward_cpu(dx, dout, out):
    for o in range(out.shape[0]):
        for i in range(out.shape[2]):
            log_softmax_backward_at(dx, dout, out, o, i)


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
        out[i] = tanh(x[i])


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
def gelu_tanh_forward_cuda(out, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = gelu_tanh(x[i])


@cuda_kernel
def gelu_tanh_backward_cuda(dx, dout, x):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dout[i] * gelu_tanh_grad(x[i])


@cuda_kernel
def softmax_forward_cuda(out, x):
    # One thread per (outer, inner) position.
    inner = x.shape[2]
    for k in range(cuda.grid(1), x.shape[0] * inner, cuda.gridsize(1)):
        softmax_at(out, x, k // inner, k % inner)


@cuda_kernel
def softmax_backward_cuda(dx, dout, out):
    inner = out.shape[2]
    for k in range(cuda.grid(1), out.shape[0] * inner, cuda.gridsize(1)):
        softmax_backward_at(dx, dout, out, k // inner, k % inner)


@cuda_kernel
def log_softmax_forward_cuda(out, x):
    inner = x.shape[2]
    for k in range(cuda.grid(1), x.shape[0] * inner, cuda.gridsize(1)):
        log_softmax_at(out, x, k // inner, k % inner)


@cuda_kernel
def log_softmax_backward_cuda(dx, dout, out):
    inner = out.shape[2]
    for k in range(cuda.grid(1), out.shape[0] * inner, cuda.gridsize(1)):
        log_softmax_backward_at(dx, dout, out, k // inner, k % inner)
