"""Optimizer steps, in place over flat 1-D views of one parameter: SGD, Adam/AdamW (amsgrad,
maximize), RMSprop, Adagrad, Adamax, NAdam, RAdam.

PyTorch's formulas (torch.optim, foreach=False), so hyper-parameters carry over. Scalars arrive
already cast to the parameter's dtype; step-dependent terms (bias corrections) are computed once on
the host per step.
"""

import math


from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def sgd_update(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, i):
    g = grad[i] + weight_decay * param[i]
    if momentum != same_type(momentum, 0.0):
        if first_step:
            buf = g  # PyTorch starts the buffer at the first gradient, undamped
        else:
            buf = momentum * momentum_buf[i] + (same_type(momentum, 1.0) - dampening) * g
        momentum_buf[i] = buf
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    param[i] -= lr * g


@scalar_math
def adam_element(p, g, m, v, v_max, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, root_correction2,
                 amsgrad, maximize):
    # One element's Adam/AdamW step on scalars: returns (param, exp_avg, exp_avg_sq, max_exp_avg_sq).
    # step_size = lr / bias_correction1 and root_correction2 = sqrt(bias_correction2) come computed once
    # per call (adam_constants). Scalars in and out, no arrays: with five arrays' worth of arguments the
    # helper was not inlined into the CPU loop, which then ran unvectorised, 5x slower.
    g = -g if maximize else g
    if decoupled:
        p = p * (same_type(lr, 1.0) - lr * weight_decay)  # AdamW
    else:
        g = g + weight_decay * p  # Adam's L2 penalty
    m = beta1 * m + (same_type(beta1, 1.0) - beta1) * g
    v = beta2 * v + (same_type(beta2, 1.0) - beta2) * g * g
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
def adam_update(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                step_size, root_correction2, amsgrad, maximize, i):
    # adam_element on element i of the arrays (max_exp_avg_sq read and written only with amsgrad).
    v_max = max_exp_avg_sq[i] if amsgrad else same_type(lr, 0.0)
    p, m, v, v_max = adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], v_max, lr, beta1, beta2, eps,
                                  weight_decay, decoupled, step_size, root_correction2, amsgrad, maximize)
    param[i] = p
    exp_avg[i] = m
    exp_avg_sq[i] = v
    if amsgrad:
        max_exp_avg_sq[i] = v_max


@scalar_math
def adagrad_update(param, state_sum, grad, clr, eps, weight_decay, maximize, i):
    g = -grad[i] if maximize else grad[i]
    g = g + weight_decay * param[i]
    total = state_sum[i] + g * g
    state_sum[i] = total
    param[i] -= clr * g / (math.sqrt(total) + eps)


@scalar_math
def adamax_update(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize, i):
    g = -grad[i] if maximize else grad[i]
    g = g + weight_decay * param[i]
    m = beta1 * exp_avg[i] + (same_type(beta1, 1.0) - beta1) * g
    u = max(beta2 * exp_inf[i], abs(g) + eps)  # PyTorch: the max of the decayed norm and |g| + eps
    exp_avg[i] = m
    exp_inf[i] = u
    param[i] -= clr * m / u


@scalar_math
def nadam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                 bias_correction2, grad_coefficient, momentum_coefficient, maximize, i):
    # grad_coefficient = lr (1 - mu_t) / (1 - prod mu), momentum_coefficient = lr mu_{t+1} / (1 - prod mu mu_{t+1})
    g = -grad[i] if maximize else grad[i]
    if decoupled:
        param[i] *= same_type(lr, 1.0) - lr * weight_decay
    else:
        g = g + weight_decay * param[i]
    m = beta1 * exp_avg[i] + (same_type(beta1, 1.0) - beta1) * g
    v = beta2 * exp_avg_sq[i] + (same_type(beta2, 1.0) - beta2) * g * g
    exp_avg[i] = m
    exp_avg_sq[i] = v
    denom = math.sqrt(v / bias_correction2) + eps
    param[i] -= grad_coefficient * g / denom + momentum_coefficient * m / denom


@scalar_math
def radam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                 bias_correction1, bias_correction2, rect, rectified, maximize, i):
    g = -grad[i] if maximize else grad[i]
    if decoupled:
        param[i] *= same_type(lr, 1.0) - lr * weight_decay
    else:
        g = g + weight_decay * param[i]
    m = beta1 * exp_avg[i] + (same_type(beta1, 1.0) - beta1) * g
    v = beta2 * exp_avg_sq[i] + (same_type(beta2, 1.0) - beta2) * g * g
    exp_avg[i] = m
    exp_avg_sq[i] = v
    corrected = m / bias_correction1
    if rectified:  # the variance is tractable: Adam's step, scaled by the rectification term
        param[i] -= corrected * lr * (math.sqrt(bias_correction2) / (math.sqrt(v) + eps)) * rect
    else:  # the first steps: momentum SGD
        param[i] -= corrected * lr


@scalar_math
def rmsprop_element(p, g, sq, ga, buf, lr, alpha, eps, weight_decay, momentum, centered):
    # One element's RMSprop step on scalars: returns (param, square_avg, grad_avg, momentum_buf);
    # grad_avg and momentum_buf come back unchanged when not centered / without momentum. Scalars in
    # and out, as adam_element: the array-taking helper stayed an out-of-line call, 100x slower.
    g = g + weight_decay * p
    sq = alpha * sq + (same_type(alpha, 1.0) - alpha) * g * g
    if centered:
        ga = alpha * ga + (same_type(alpha, 1.0) - alpha) * g
        avg = math.sqrt(sq - ga * ga) + eps
    else:
        avg = math.sqrt(sq) + eps
    if momentum > same_type(momentum, 0.0):
        buf = momentum * buf + g / avg
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return p, sq, ga, buf


@scalar_math
def rmsprop_update(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                   momentum, centered, i):
    # rmsprop_element on element i of the arrays (grad_avg only when centered, momentum_buf only with momentum).
    zero = same_type(lr, 0.0)
    has_momentum = momentum > zero
    ga = grad_avg[i] if centered else zero
    buf = momentum_buf[i] if has_momentum else zero
    p, sq, ga, buf = rmsprop_element(param[i], grad[i], square_avg[i], ga, buf, lr, alpha, eps, weight_decay,
                                     momentum, centered)
    param[i] = p
    square_avg[i] = sq
    if centered:
        grad_avg[i] = ga
    if has_momentum:
        momentum_buf[i] = buf


# ---------------------------------------------------------------------------------------- CPU kernels
# param and the state buffers are updated in place; unused state buffers may be empty.


@cpu_kernel
def sgd_step_cpu(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    for i in range(param.size):
        sgd_update(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, i)


@cpu_kernel
def adam_step_cpu(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias_correction1, bias_correction2, amsgrad, maximize):
    step_size, root_correction2 = adam_constants(lr, bias_correction1, bias_correction2)
    zero = same_type(lr, 0.0)
    for i in range(param.size):  # the element's loads and stores here, the math inlined: the loop vectorises
        v_max = max_exp_avg_sq[i] if amsgrad else zero
        p, m, v, v_max = adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], v_max, lr, beta1, beta2, eps,
                                      weight_decay, decoupled, step_size, root_correction2, amsgrad, maximize)
        param[i] = p
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            max_exp_avg_sq[i] = v_max


@cpu_kernel
def adagrad_step_cpu(param, state_sum, grad, clr, eps, weight_decay, maximize):
    for i in range(param.size):
        adagrad_update(param, state_sum, grad, clr, eps, weight_decay, maximize, i)


@cpu_kernel
def adamax_step_cpu(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    for i in range(param.size):
        adamax_update(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize, i)


@cpu_kernel
def nadam_step_cpu(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction2, grad_coefficient, momentum_coefficient, maximize):
    for i in range(param.size):
        nadam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction2, grad_coefficient, momentum_coefficient, maximize, i)


@cpu_kernel
def radam_step_cpu(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, rect, rectified, maximize):
    for i in range(param.size):
        radam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction1, bias_correction2, rect, rectified, maximize, i)


@cpu_kernel
def rmsprop_step_cpu(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                     momentum, centered):
    zero = same_type(lr, 0.0)
    has_momentum = momentum > zero
    for i in range(param.size):  # loads and stores here, the math inlined (as adam_step_cpu)
        ga = grad_avg[i] if centered else zero
        buf = momentum_buf[i] if has_momentum else zero
        p, sq, ga, buf = rmsprop_element(param[i], grad[i], square_avg[i], ga, buf, lr, alpha, eps, weight_decay,
                                         momentum, centered)
        param[i] = p
        square_avg[i] = sq
        if centered:
            grad_avg[i] = ga
        if has_momentum:
            momentum_buf[i] = buf


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def sgd_step_cuda(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        sgd_update(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, i)


@cuda_kernel
def adam_step_cuda(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, amsgrad, maximize):
    step_size, root_correction2 = adam_constants(lr, bias_correction1, bias_correction2)
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adam_update(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    step_size, root_correction2, amsgrad, maximize, i)


@cuda_kernel
def adagrad_step_cuda(param, state_sum, grad, clr, eps, weight_decay, maximize):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adagrad_update(param, state_sum, grad, clr, eps, weight_decay, maximize, i)


@cuda_kernel
def adamax_step_cuda(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adamax_update(param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize, i)


@cuda_kernel
def nadam_step_cuda(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction2, grad_coefficient, momentum_coefficient, maximize):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        nadam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction2, grad_coefficient, momentum_coefficient, maximize, i)


@cuda_kernel
def radam_step_cuda(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction1, bias_correction2, rect, rectified, maximize):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        radam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                     bias_correction1, bias_correction2, rect, rectified, maximize, i)


@cuda_kernel
def rmsprop_step_cuda(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                      momentum, centered):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        rmsprop_update(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                       momentum, centered, i)
