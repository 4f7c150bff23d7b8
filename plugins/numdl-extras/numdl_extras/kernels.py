"""The plugin's kernels, each an @njit CPU kernel with a CUDA twin (numdl's conventions: outputs
first, flat 1-D views, scalars in the arrays' dtype, grid-stride CUDA loops). The twins use numdl's
``cuda_kernel``, a lazy ``cuda.jit``: numba.cuda (~0.4 s to import) loads only when a twin is used."""

import math

from numba import njit

# same_type: typed constants (a bare 1 makes float32 math float64)
from numdl.kernels.common import cuda, cuda_kernel, same_type, scalar_math

# ---------------------------------------------------------------------------------------- CPU kernels


@njit(cache=True)
def swish_forward_cpu(out, x, beta):
    # out = x * sigmoid(beta x); beta is a 1-element array (a learned parameter).
    for i in range(x.size):
        out[i] = x[i] / (1 + math.exp(-beta[0] * x[i]))


@njit(cache=True)
def swish_backward_cpu(dx, dbeta, dout, x, beta):
    # dx = dout (s + beta x s (1 - s)); dbeta = sum(dout x^2 s (1 - s)), s = sigmoid(beta x). Overwrites.
    total = dbeta[0] - dbeta[0]
    for i in range(x.size):
        s = 1 / (1 + math.exp(-beta[0] * x[i]))
        slope = s * (1 - s)
        dx[i] = dout[i] * (s + beta[0] * x[i] * slope)
        total += dout[i] * x[i] * x[i] * slope
    dbeta[0] = total


@njit(cache=True)
def lion_step_cpu(param, exp_avg, grad, lr, beta1, beta2, weight_decay):
    # Lion (Chen et al. 2023): p -= lr (sign(b1 m + (1 - b1) g) + wd p); m = b2 m + (1 - b2) g.
    for i in range(param.size):
        c = beta1 * exp_avg[i] + (1 - beta1) * grad[i]
        direction = (c > 0) - (c < 0)
        param[i] -= lr * (direction + weight_decay * param[i])
        exp_avg[i] = beta2 * exp_avg[i] + (1 - beta2) * grad[i]


@scalar_math
def focal_loss_row(sample_loss, probs, logits, labels, alpha, gamma, r):
    # sample_loss[r] = -alpha (1 - p_y)^gamma log p_y, p = softmax(logits[r]); overwrites probs[r].
    # One definition for both kernels (numdl's scalar_math), so the twins compute alike.
    one = same_type(alpha, 1.0)
    peak = logits[r, 0]
    for c in range(1, logits.shape[1]):
        peak = max(peak, logits[r, c])
    total = one - one
    for c in range(logits.shape[1]):
        probs[r, c] = math.exp(logits[r, c] - peak)
        total += probs[r, c]
    for c in range(logits.shape[1]):
        probs[r, c] /= total
    log_pt = logits[r, labels[r]] - peak - math.log(total)
    pt = probs[r, labels[r]]
    sample_loss[r] = -alpha * math.pow(one - pt, gamma) * log_pt


@scalar_math
def focal_loss_row_backward(dlogits, probs, labels, alpha, gamma, scale, r):
    one = same_type(alpha, 1.0)
    pt = probs[r, labels[r]]
    rest = one - pt
    focus = gamma * math.pow(rest, gamma - one) * pt * math.log(pt) if rest > one - one else rest - rest
    coefficient = scale * alpha * (focus - math.pow(rest, gamma))
    for c in range(probs.shape[1]):
        onehot = one if c == labels[r] else one - one
        dlogits[r, c] = coefficient * (onehot - probs[r, c])


@njit(cache=True)
def focal_loss_forward_cpu(sample_loss, probs, logits, labels, alpha, gamma):
    for r in range(logits.shape[0]):
        focal_loss_row(sample_loss, probs, logits, labels, alpha, gamma, r)


@njit(cache=True)
def focal_loss_backward_cpu(dlogits, probs, labels, alpha, gamma, scale):
    for r in range(probs.shape[0]):
        focal_loss_row_backward(dlogits, probs, labels, alpha, gamma, scale, r)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def swish_forward_cuda(out, x, beta):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = x[i] / (same_type(beta[0], 1.0) + math.exp(-beta[0] * x[i]))


@cuda_kernel
def swish_backward_cuda(dx, dbeta, dout, x, beta):
    # dbeta accumulates with atomics: the caller zeroes it first.
    one = same_type(beta[0], 1.0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        s = one / (one + math.exp(-beta[0] * x[i]))
        slope = s * (one - s)
        dx[i] = dout[i] * (s + beta[0] * x[i] * slope)
        cuda.atomic.add(dbeta, 0, dout[i] * x[i] * x[i] * slope)


@cuda_kernel
def lion_step_cuda(param, exp_avg, grad, lr, beta1, beta2, weight_decay):
    one = same_type(lr, 1.0)
    zero = same_type(lr, 0.0)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        c = beta1 * exp_avg[i] + (one - beta1) * grad[i]
        direction = one if c > zero else (-one if c < zero else zero)
        param[i] -= lr * (direction + weight_decay * param[i])
        exp_avg[i] = beta2 * exp_avg[i] + (one - beta2) * grad[i]


@cuda_kernel
def focal_loss_forward_cuda(sample_loss, probs, logits, labels, alpha, gamma):
    for r in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        focal_loss_row(sample_loss, probs, logits, labels, alpha, gamma, r)


@cuda_kernel
def focal_loss_backward_cuda(dlogits, probs, labels, alpha, gamma, scale):
    for r in range(cuda.grid(1), probs.shape[0], cuda.gridsize(1)):
        focal_loss_row_backward(dlogits, probs, labels, alpha, gamma, scale, r)
