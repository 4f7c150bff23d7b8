"""Optimizer steps, in place over flat 1-D views of one parameter: SGD, Adam/AdamW (amsgrad,
maximize), RMSprop, Adagrad, Adamax, NAdam, RAdam.

PyTorch's formulas (torch.optim, foreach=False), so hyper-parameters carry over. Scalars arrive
already cast to the parameter's dtype; step-dependent terms (bias corrections) are computed once on
the host per step.
"""

import math

from numba import prange

from numdl.kernels.common import (
    cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, same_type, scalar_math, vector_share,
    worth_splitting,
)

# --------------------------------------------------------------------------- scalar math (both targets)
# Each *_element helper is one element's step on scalars, returning the new parameter and state:
# scalars in and out, so LLVM inlines it and the CPU loops vectorise (helpers that took the arrays
# stayed out-of-line calls, 5-100x slower). The kernels do the loads and stores.
#
# Subnormal numbers: a state buffer that decays geometrically while its gradient is zero (a dead
# ReLU unit, a pixel that is almost always 0) reaches the subnormal range and stays there (0.9 times
# the smallest subnormal rounds back to it). On x86 every operation on a subnormal costs ~100
# cycles: on Fashion-MNIST a third of Adam's first moments were subnormal after two epochs and
# its step took 600-900 us instead of 95. So decaying state below float32's smallest normal number
# is stored as zero. That changes no result that matters: such a value moves a parameter by less
# than lr * 1.2e-38 / eps. Where a division has no eps to guard it (eps = 0), nothing is flushed
# (a zeroed second moment could then divide by zero), and the arithmetic is PyTorch's exactly.

#: float32's smallest normal number (2**-126), the flushing threshold of both dtypes.
SMALLEST_NORMAL = 2.0 ** -126


@scalar_math
def flush_floor(eps):
    # The threshold below which a state value is stored as zero: none (0) when eps is 0.
    return same_type(eps, SMALLEST_NORMAL) if eps > same_type(eps, 0.0) else same_type(eps, 0.0)


@scalar_math
def flushed(x, floor):
    # x, or zero when |x| < floor (NaN stays NaN: the comparison is false).
    return same_type(x, 0.0) if abs(x) < floor else x


@scalar_math
def sgd_element(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step, floor):
    # Returns (param, momentum_buf); momentum_buf comes back unchanged without momentum.
    g = g + weight_decay * p
    if momentum != same_type(momentum, 0.0):
        if first_step:
            buf = g  # PyTorch starts the buffer at the first gradient, undamped
        else:
            buf = flushed(momentum * buf + (same_type(momentum, 1.0) - dampening) * g, floor)
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    return p - lr * g, buf


@scalar_math
def adam_element(p, g, m, v, v_max, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, root_correction2,
                 amsgrad, maximize, floor):
    # One element's Adam/AdamW step: returns (param, exp_avg, exp_avg_sq, max_exp_avg_sq).
    # step_size = lr / bias_correction1 and root_correction2 = sqrt(bias_correction2) come computed once
    # per call (adam_constants).
    g = -g if maximize else g
    if decoupled:
        p = p * (same_type(lr, 1.0) - lr * weight_decay)  # AdamW
    else:
        g = g + weight_decay * p  # Adam's L2 penalty
    m = flushed(beta1 * m + (same_type(beta1, 1.0) - beta1) * g, floor)
    v = flushed(beta2 * v + (same_type(beta2, 1.0) - beta2) * g * g, floor)
    second = v
    if amsgrad:  # the largest second moment so far (Reddi et al.), as PyTorch keeps it
        v_max = max(v_max, v)
        second = v_max
    denom = math.sqrt(second) / root_correction2 + eps
    return p - step_size * m / denom, m, v, v_max


@scalar_math
def adam_constants(lr, bias_correction1, bias_correction2):
    # (step_size, root_correction2) of adam_element.
    return lr / bias_correction1, math.sqrt(bias_correction2)


@scalar_math
def adagrad_element(p, g, total, clr, eps, weight_decay, maximize, floor):
    # Returns (param, state_sum). The sum only grows, but from tiny gradients it can start subnormal.
    g = -g if maximize else g
    g = g + weight_decay * p
    total = flushed(total + g * g, floor)
    return p - clr * g / (math.sqrt(total) + eps), total


@scalar_math
def adamax_element(p, g, m, u, clr, beta1, beta2, eps, weight_decay, maximize, floor):
    # Returns (param, exp_avg, exp_inf). exp_inf >= eps: only the first moment can decay to subnormal.
    g = -g if maximize else g
    g = g + weight_decay * p
    m = flushed(beta1 * m + (same_type(beta1, 1.0) - beta1) * g, floor)
    u = max(beta2 * u, abs(g) + eps)  # PyTorch: the max of the decayed norm and |g| + eps
    return p - clr * m / u, m, u


@scalar_math
def nadam_element(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction2, grad_coefficient,
                  momentum_coefficient, maximize, floor):
    # Returns (param, exp_avg, exp_avg_sq). grad_coefficient = lr (1 - mu_t) / (1 - prod mu),
    # momentum_coefficient = lr mu_{t+1} / (1 - prod mu mu_{t+1})
    g = -g if maximize else g
    if decoupled:
        p = p * (same_type(lr, 1.0) - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = flushed(beta1 * m + (same_type(beta1, 1.0) - beta1) * g, floor)
    v = flushed(beta2 * v + (same_type(beta2, 1.0) - beta2) * g * g, floor)
    denom = math.sqrt(v / bias_correction2) + eps
    return p - (grad_coefficient * g / denom + momentum_coefficient * m / denom), m, v


@scalar_math
def radam_element(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2,
                  rect, rectified, maximize, floor):
    # Returns (param, exp_avg, exp_avg_sq).
    g = -g if maximize else g
    if decoupled:
        p = p * (same_type(lr, 1.0) - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = flushed(beta1 * m + (same_type(beta1, 1.0) - beta1) * g, floor)
    v = flushed(beta2 * v + (same_type(beta2, 1.0) - beta2) * g * g, floor)
    corrected = m / bias_correction1
    if rectified:  # the variance is tractable: Adam's step, scaled by the rectification term
        return p - corrected * lr * (math.sqrt(bias_correction2) / (math.sqrt(v) + eps)) * rect, m, v
    return p - corrected * lr, m, v  # the first steps: momentum SGD


@scalar_math
def rmsprop_element(p, g, sq, ga, buf, lr, alpha, eps, weight_decay, momentum, centered, floor):
    # Returns (param, square_avg, grad_avg, momentum_buf); grad_avg and momentum_buf come back
    # unchanged when not centered / without momentum.
    g = g + weight_decay * p
    sq = flushed(alpha * sq + (same_type(alpha, 1.0) - alpha) * g * g, floor)
    if centered:
        ga = flushed(alpha * ga + (same_type(alpha, 1.0) - alpha) * g, floor)
        avg = math.sqrt(sq - ga * ga) + eps
    else:
        avg = math.sqrt(sq) + eps
    if momentum > same_type(momentum, 0.0):
        buf = flushed(momentum * buf + g / avg, floor)
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return p, sq, ga, buf


# ---------------------------------------------------------------------------------------- CPU kernels
# param and the state buffers are updated in place; unused state buffers may be empty. Each loop does
# one element's loads and stores with the math inlined, so it vectorises; a flag that decides which
# buffers exist is read outside the loop's arithmetic. Each step is split over numba's threads once
# they have the cores (common.worth_splitting), in shares of whole vector chunks (common.vector_share:
# the same bits as one thread, so --threads auto's switching changes no result). On the reference MLP
# (109k parameters, after its threaded forward and backward pass) Adam took 20-38 us on two threads
# against 92-161 us on one, as each core updates what sits in its own cache.


@cpu_kernel
def sgd_step_cpu(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    if worth_splitting(param.size):
        _sgd_split(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step)
    else:
        _sgd_range(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step)


@cpu_parallel_kernel
def _sgd_split(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _sgd_range(param[lo:hi], momentum_buf[lo:hi], grad[lo:hi], lr, momentum, dampening, weight_decay, nesterov,
                   first_step)


@cpu_kernel
def _sgd_range(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    floor = same_type(lr, SMALLEST_NORMAL)  # no division: flushing is always safe
    zero = same_type(lr, 0.0)
    if momentum == zero:  # no buffer (it may be empty): a loop of its own, which stores none
        for i in range(param.size):
            param[i], _ = sgd_element(param[i], grad[i], zero, lr, momentum, dampening, weight_decay, nesterov,
                                      first_step, floor)
        return
    for i in range(param.size):
        p, buf = sgd_element(param[i], grad[i], momentum_buf[i], lr, momentum, dampening, weight_decay, nesterov,
                             first_step, floor)
        param[i] = p
        momentum_buf[i] = buf


@cpu_kernel
def adam_step_cpu(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias_correction1, bias_correction2, amsgrad, maximize):
    if worth_splitting(param.size):
        _adam_split(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay,
                    decoupled, bias_correction1, bias_correction2, amsgrad, maximize)
    else:
        _adam_range(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay,
                    decoupled, bias_correction1, bias_correction2, amsgrad, maximize)


@cpu_parallel_kernel
def _adam_split(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                bias_correction1, bias_correction2, amsgrad, maximize):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _adam_range(param[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], max_exp_avg_sq[lo:hi], grad[lo:hi], lr, beta1,
                    beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2, amsgrad, maximize)


@cpu_kernel
def _adam_range(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                bias_correction1, bias_correction2, amsgrad, maximize):
    step_size, root_correction2 = adam_constants(lr, bias_correction1, bias_correction2)
    floor = flush_floor(eps)
    if amsgrad:  # a loop of its own: a load and store under a flag kept the loop from vectorising
        for i in range(param.size):
            p, m, v, v_max = adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq[i], lr, beta1,
                                          beta2, eps, weight_decay, decoupled, step_size, root_correction2, True,
                                          maximize, floor)
            param[i] = p
            exp_avg[i] = m
            exp_avg_sq[i] = v
            max_exp_avg_sq[i] = v_max
        return
    zero = same_type(lr, 0.0)
    for i in range(param.size):
        p, m, v, _ = adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], zero, lr, beta1, beta2, eps,
                                  weight_decay, decoupled, step_size, root_correction2, False, maximize, floor)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v


@cpu_kernel
def adagrad_step_cpu(param, state_sum, grad, clr, eps, weight_decay, maximize):
    if worth_splitting(param.size):
        _adagrad_split(param, state_sum, grad, clr, eps, weight_decay, maximize)
    else:
        _adagrad_range(param, state_sum, grad, clr, eps, weight_decay, maximize)


@cpu_parallel_kernel
def _adagrad_split(param, state_sum, grad, clr, eps, weight_decay, maximize):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _adagrad_range(param[lo:hi], state_sum[lo:hi], grad[lo:hi], clr, eps, weight_decay, maximize)


@cpu_kernel
def _adagrad_range(param, state_sum, grad, clr, eps, weight_decay, maximize):
    floor = flush_floor(eps)
    for i in range(param.size):
        param[i], state_sum[i] = adagrad_element(param[i], grad[i], state_sum[i], clr, eps, weight_decay, maximize,
                                                 floor)


@cpu_kernel
def adamax_step_cpu(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    if worth_splitting(param.size):
        _adamax_split(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize)
    else:
        _adamax_range(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize)


@cpu_parallel_kernel
def _adamax_split(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _adamax_range(param[lo:hi], exp_avg[lo:hi], exp_inf[lo:hi], grad[lo:hi], clr, beta1, beta2, eps,
                      weight_decay, maximize)


@cpu_kernel
def _adamax_range(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    floor = flush_floor(eps)
    for i in range(param.size):
        param[i], exp_avg[i], exp_inf[i] = adamax_element(param[i], grad[i], exp_avg[i], exp_inf[i], clr, beta1,
                                                          beta2, eps, weight_decay, maximize, floor)


@cpu_kernel
def nadam_step_cpu(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction2, grad_coefficient, momentum_coefficient, maximize):
    if worth_splitting(param.size):
        _nadam_split(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction2, grad_coefficient, momentum_coefficient, maximize)
    else:
        _nadam_range(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction2, grad_coefficient, momentum_coefficient, maximize)


@cpu_parallel_kernel
def _nadam_split(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction2,
                 grad_coefficient, momentum_coefficient, maximize):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _nadam_range(param[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], grad[lo:hi], lr, beta1, beta2, eps,
                     weight_decay, decoupled, bias_correction2, grad_coefficient, momentum_coefficient, maximize)


@cpu_kernel
def _nadam_range(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction2,
                 grad_coefficient, momentum_coefficient, maximize):
    floor = flush_floor(eps)
    for i in range(param.size):
        param[i], exp_avg[i], exp_avg_sq[i] = nadam_element(
            param[i], grad[i], exp_avg[i], exp_avg_sq[i], lr, beta1, beta2, eps, weight_decay, decoupled,
            bias_correction2, grad_coefficient, momentum_coefficient, maximize, floor)


@cpu_kernel
def radam_step_cpu(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, rect, rectified, maximize):
    if worth_splitting(param.size):
        _radam_split(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction1, bias_correction2, rect, rectified, maximize)
    else:
        _radam_range(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction1, bias_correction2, rect, rectified, maximize)


@cpu_parallel_kernel
def _radam_split(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                 bias_correction2, rect, rectified, maximize):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _radam_range(param[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], grad[lo:hi], lr, beta1, beta2, eps,
                     weight_decay, decoupled, bias_correction1, bias_correction2, rect, rectified, maximize)


@cpu_kernel
def _radam_range(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                 bias_correction2, rect, rectified, maximize):
    floor = flush_floor(eps)
    for i in range(param.size):
        param[i], exp_avg[i], exp_avg_sq[i] = radam_element(
            param[i], grad[i], exp_avg[i], exp_avg_sq[i], lr, beta1, beta2, eps, weight_decay, decoupled,
            bias_correction1, bias_correction2, rect, rectified, maximize, floor)


@cpu_kernel
def rmsprop_step_cpu(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay, momentum,
                     centered):
    if worth_splitting(param.size):
        _rmsprop_split(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay, momentum,
                       centered)
    else:
        _rmsprop_range(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay, momentum,
                       centered)


@cpu_parallel_kernel
def _rmsprop_split(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay, momentum,
                   centered):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = vector_share(param.size, part, parts)
        _rmsprop_range(param[lo:hi], square_avg[lo:hi], grad_avg[lo:hi], momentum_buf[lo:hi], grad[lo:hi], lr,
                       alpha, eps, weight_decay, momentum, centered)


@cpu_kernel
def _rmsprop_range(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay, momentum,
                   centered):
    zero = same_type(lr, 0.0)
    has_momentum = momentum > zero
    floor = flush_floor(eps)
    if not centered and not has_momentum:  # plain RMSprop's loop, with no load or store under a flag (as Adam's)
        for i in range(param.size):
            param[i], square_avg[i], _, _ = rmsprop_element(param[i], grad[i], square_avg[i], zero, zero, lr, alpha,
                                                            eps, weight_decay, momentum, False, floor)
        return
    for i in range(param.size):
        ga = grad_avg[i] if centered else zero
        buf = momentum_buf[i] if has_momentum else zero
        p, sq, ga, buf = rmsprop_element(param[i], grad[i], square_avg[i], ga, buf, lr, alpha, eps, weight_decay,
                                         momentum, centered, floor)
        param[i] = p
        square_avg[i] = sq
        if centered:
            grad_avg[i] = ga
        if has_momentum:
            momentum_buf[i] = buf


# --------------------------------------------------------------------------------------- CUDA kernels
# The same element steps over a grid-stride loop.


@cuda_kernel
def sgd_step_cuda(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    floor = same_type(lr, SMALLEST_NORMAL)
    has_momentum = momentum != same_type(momentum, 0.0)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        buf = momentum_buf[i] if has_momentum else same_type(lr, 0.0)
        p, buf = sgd_element(param[i], grad[i], buf, lr, momentum, dampening, weight_decay, nesterov, first_step,
                             floor)
        param[i] = p
        if has_momentum:
            momentum_buf[i] = buf


@cuda_kernel
def adam_step_cuda(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, amsgrad, maximize):
    step_size, root_correction2 = adam_constants(lr, bias_correction1, bias_correction2)
    floor = flush_floor(eps)
    zero = same_type(lr, 0.0)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        v_max = max_exp_avg_sq[i] if amsgrad else zero
        p, m, v, v_max = adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], v_max, lr, beta1, beta2, eps,
                                      weight_decay, decoupled, step_size, root_correction2, amsgrad, maximize, floor)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            max_exp_avg_sq[i] = v_max


@cuda_kernel
def adagrad_step_cuda(param, state_sum, grad, clr, eps, weight_decay, maximize):
    floor = flush_floor(eps)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p, total = adagrad_element(param[i], grad[i], state_sum[i], clr, eps, weight_decay, maximize, floor)
        param[i] = p
        state_sum[i] = total


@cuda_kernel
def adamax_step_cuda(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    floor = flush_floor(eps)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p, m, u = adamax_element(param[i], grad[i], exp_avg[i], exp_inf[i], clr, beta1, beta2, eps, weight_decay,
                                 maximize, floor)
        param[i] = p
        exp_avg[i] = m
        exp_inf[i] = u


@cuda_kernel
def nadam_step_cuda(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction2, grad_coefficient, momentum_coefficient, maximize):
    floor = flush_floor(eps)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p, m, v = nadam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], lr, beta1, beta2, eps, weight_decay,
                                decoupled, bias_correction2, grad_coefficient, momentum_coefficient, maximize, floor)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v


@cuda_kernel
def radam_step_cuda(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction1, bias_correction2, rect, rectified, maximize):
    floor = flush_floor(eps)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        p, m, v = radam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], lr, beta1, beta2, eps, weight_decay,
                                decoupled, bias_correction1, bias_correction2, rect, rectified, maximize, floor)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v


@cuda_kernel
def rmsprop_step_cuda(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                      momentum, centered):
    zero = same_type(lr, 0.0)
    has_momentum = momentum > zero
    floor = flush_floor(eps)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        ga = grad_avg[i] if centered else zero
        buf = momentum_buf[i] if has_momentum else zero
        p, sq, ga, buf = rmsprop_element(param[i], grad[i], square_avg[i], ga, buf, lr, alpha, eps, weight_decay,
                                         momentum, centered, floor)
        param[i] = p
        square_avg[i] = sq
        if centered:
            grad_avg[i] = ga
        if has_momentum:
            momentum_buf[i] = buf
