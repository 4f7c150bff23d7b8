"""Optimizer steps, in place over flat 1-D views of one parameter: SGD, Adam/AdamW, RMSprop.

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
def adam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                bias_correction1, bias_correction2, i):
    g = grad[i]
    if decoupled:
        param[i] *= same_type(lr, 1.0) - lr * weight_decay  # AdamW
    else:
        g = g + weight_decay * param[i]  # Adam's L2 penalty
    m = beta1 * exp_avg[i] + (same_type(beta1, 1.0) - beta1) * g
    v = beta2 * exp_avg_sq[i] + (same_type(beta2, 1.0) - beta2) * g * g
    exp_avg[i] = m
    exp_avg_sq[i] = v
    denom = math.sqrt(v) / math.sqrt(bias_correction2) + eps
    param[i] -= (lr / bias_correction1) * m / denom


@scalar_math
def rmsprop_update(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                   momentum, centered, i):
    g = grad[i] + weight_decay * param[i]
    sq = alpha * square_avg[i] + (same_type(alpha, 1.0) - alpha) * g * g
    square_avg[i] = sq
    if centered:
        ga = alpha * grad_avg[i] + (same_type(alpha, 1.0) - alpha) * g
        grad_avg[i] = ga
        avg = math.sqrt(sq - ga * ga) + eps
    else:
        avg = math.sqrt(sq) + eps
    if momentum > same_type(momentum, 0.0):
        buf = momentum * momentum_buf[i] + g / avg
        momentum_buf[i] = buf
        param[i] -= lr * buf
    else:
        param[i] -= lr * g / avg


# ---------------------------------------------------------------------------------------- CPU kernels
# param and the state buffers are updated in place; unused state buffers may be empty.


@cpu_kernel
def sgd_step_cpu(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    for i in range(param.size):
        sgd_update(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, i)


@cpu_kernel
def adam_step_cpu(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias_correction1, bias_correction2):
    for i in range(param.size):
        adam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction1, bias_correction2, i)


@cpu_kernel
def rmsprop_step_cpu(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                     momentum, centered):
    for i in range(param.size):
        rmsprop_update(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                       momentum, centered, i)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def sgd_step_cuda(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        sgd_update(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, i)


@cuda_kernel
def adam_step_cuda(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        adam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction1, bias_correction2, i)


@cuda_kernel
def rmsprop_step_cuda(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                      momentum, centered):
    for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        rmsprop_update(param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                       momentum, centered, i)
