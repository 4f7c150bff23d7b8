"""Losses: softmax cross-entropy (fused; class weights, label smoothing, ignore_index, probability
targets), negative log-likelihood, MSE, MAE (L1), Huber, BCE with logits (pos_weight, element
weights) and KL divergence.

PyTorch's definitions. Class losses see logits as (outer, C, inner): PyTorch's (N, C, d1, ...) layout
is (N, C, d1 * ...), numdl's class-last (N, ..., C) is (N * ..., C, 1). Their forward kernels write
one term (and weight) per position; element losses write one term per element; the loss classes
reduce them (or return them, for reduction "none"). Backward kernels overwrite the gradient, already
multiplied by the upstream gradient: for class losses an (outer, inner) array of per-position factors
or a (1, 1) one holding the reduction's scale (1 / normaliser for a mean, 1 for a sum); for element
losses the scale (the classes multiply by an element-wise upstream gradient afterwards).
"""

import math


from numdl.kernels.activation import exp_nonpositive, sigmoid, softmax_at
from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


# The hard-label cross-entropy's per-position math is written out in one function, softmax included,
# called straight from the kernel loop: a helper nested one level deeper (the shared softmax, an
# upstream lookup) was not inlined and made the 64x10 cross-entropy forward 2x slower (5 -> 9-11 us).


@scalar_math
def cross_entropy_at(probs, logits, class_weights, smoothing, y, o, i):
    # probs[o, :, i] = softmax(logits[o, :, i]); returns the loss
    # (1-e) w_y (lse - x_y) + e/C sum_c w_c (lse - x_c), lse = log sum_c exp(x_c).
    cols = logits.shape[1]
    peak = logits[o, 0, i]
    for c in range(1, cols):
        peak = max(peak, logits[o, c, i])
    total = same_type(peak, 0.0)
    for c in range(cols):
        e = exp_nonpositive(logits[o, c, i] - peak)  # float32: inlined and vectorised, not a libm call
        probs[o, c, i] = e
        total += e
    log_total = math.log(total)
    inv = same_type(peak, 1.0) / total
    smooth_sum = same_type(peak, 0.0)
    for c in range(cols):
        probs[o, c, i] *= inv
        smooth_sum += class_weights[c] * (log_total - (logits[o, c, i] - peak))
    nll = log_total - (logits[o, y, i] - peak)
    return ((same_type(peak, 1.0) - smoothing) * class_weights[y] * nll
            + smoothing / same_type(peak, cols) * smooth_sum)


@scalar_math
def cross_entropy_backward_at(dlogits, probs, class_weights, weight_total, smoothing, y, u, o, i):
    # d/dx_j = u ((1-e) w_y (p_j - [j == y]) + e/C (W p_j - w_j)), W = the sum of the class weights.
    cols = probs.shape[1]
    hard = (same_type(smoothing, 1.0) - smoothing) * class_weights[y]
    soft = smoothing / same_type(smoothing, cols)
    for c in range(cols):
        grad = hard * probs[o, c, i] + soft * (weight_total * probs[o, c, i] - class_weights[c])
        if c == y:
            grad -= hard
        dlogits[o, c, i] = u * grad


@scalar_math
def soft_cross_entropy_at(probs, logits, targets, class_weights, smoothing, o, i):
    # Probability targets: -sum_c w_c t'_c log p_c, t' = (1 - e) t + e/C (PyTorch's); writes probs.
    # (The rarer path: it calls the shared softmax, at the nested call's cost.)
    lse = softmax_at(probs, logits, o, i)
    cols = logits.shape[1]
    keep, spread = same_type(lse, 1.0) - smoothing, smoothing / same_type(lse, cols)
    acc = same_type(lse, 0.0)
    for c in range(cols):
        acc += class_weights[c] * (keep * targets[o, c, i] + spread) * (lse - logits[o, c, i])
    return acc


@scalar_math
def soft_cross_entropy_backward_at(dlogits, probs, targets, class_weights, smoothing, u, o, i):
    # d/dx_j = u (p_j sum_c w_c t'_c - w_j t'_j).
    cols = probs.shape[1]
    keep, spread = same_type(smoothing, 1.0) - smoothing, smoothing / same_type(smoothing, cols)
    mass = same_type(smoothing, 0.0)
    for c in range(cols):
        mass += class_weights[c] * (keep * targets[o, c, i] + spread)
    for c in range(cols):
        dlogits[o, c, i] = u * (probs[o, c, i] * mass - class_weights[c] * (keep * targets[o, c, i] + spread))


@scalar_math
def zero_classes_at(grad, o, i):
    # An ignored position's gradient: zero over the classes.
    for c in range(grad.shape[1]):
        grad[o, c, i] = 0


@scalar_math
def class_weight_total(class_weights):
    total = class_weights[0] - class_weights[0]
    for c in range(class_weights.size):
        total += class_weights[c]
    return total


@scalar_math
def huber(d, delta):
    # 0.5 d^2 inside [-delta, delta], delta (|d| - 0.5 delta) outside (PyTorch's HuberLoss).
    a = abs(d)
    return same_type(d, 0.5) * d * d if a < delta else delta * (a - same_type(d, 0.5) * delta)


@scalar_math
def huber_grad(d, delta):
    if d > delta:
        return delta
    if d < -delta:
        return -delta
    return d


@scalar_math
def sign(d):
    # PyTorch's L1 gradient: sign(d), 0 at d = 0 (NaN stays NaN through d - d)
    if d > same_type(d, 0.0):
        return same_type(d, 1.0)
    if d < same_type(d, 0.0):
        return same_type(d, -1.0)
    return d - d


@scalar_math
def bce_with_logits(x, t, weight, pos_weight):
    # -w (p t log s(x) + (1 - t) log(1 - s(x))) = w ((1 - t) x + (1 + (p - 1) t) softplus(-x)), with
    # softplus(-x) = log(1 + exp(-|x|)) + max(-x, 0): never overflows.
    one = same_type(x, 1.0)
    softplus_neg = math.log1p(math.exp(-abs(x))) + max(-x, same_type(x, 0.0))
    return weight * ((one - t) * x + (one + (pos_weight - one) * t) * softplus_neg)


@scalar_math
def bce_with_logits_grad(x, t, weight, pos_weight):
    one = same_type(x, 1.0)
    return weight * ((one + (pos_weight - one) * t) * sigmoid(x) - pos_weight * t)


@scalar_math
def kl_div(x, t, log_target):
    # PyTorch's KLDivLoss term of log-probabilities x: t (log t - x), 0 where t = 0 (xlogy);
    # exp(t) (t - x) when the target is given as log-probabilities.
    if log_target:
        return math.exp(t) * (t - x)
    if t == same_type(t, 0.0):
        return t - t
    return t * (math.log(t) - x)


@scalar_math
def kl_div_grad(t, log_target):
    return -math.exp(t) if log_target else -t


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def cross_entropy_forward_cpu(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing,
                              ignore_index):
    # sample_loss, sample_weight, labels (int) (outer, inner); probs, logits (outer, C, inner);
    # class_weights (C,); overwrites (an ignored position: loss and weight 0, probs unwritten).
    for o in range(logits.shape[0]):
        for i in range(logits.shape[2]):
            y = labels[o, i]
            if y == ignore_index:
                sample_loss[o, i] = 0
                sample_weight[o, i] = 0
            else:
                sample_loss[o, i] = cross_entropy_at(probs, logits, class_weights, smoothing, y, o, i)
                sample_weight[o, i] = class_weights[y]


@cpu_kernel
def cross_entropy_backward_cpu(dlogits, probs, labels, class_weights, smoothing, ignore_index, upstream):
    # upstream (outer, inner), or (1, 1) broadcast; overwrites dlogits.
    weight_total = class_weight_total(class_weights)
    for o in range(probs.shape[0]):
        for i in range(probs.shape[2]):
            y = labels[o, i]
            if y == ignore_index:
                zero_classes_at(dlogits, o, i)
            else:
                u = upstream[o % upstream.shape[0], i % upstream.shape[1]]
                cross_entropy_backward_at(dlogits, probs, class_weights, weight_total, smoothing, y, u, o, i)


@cpu_kernel
def soft_cross_entropy_forward_cpu(sample_loss, probs, logits, targets, class_weights, smoothing):
    # sample_loss (outer, inner); probs, logits, targets (outer, C, inner); overwrites.
    for o in range(logits.shape[0]):
        for i in range(logits.shape[2]):
            sample_loss[o, i] = soft_cross_entropy_at(probs, logits, targets, class_weights, smoothing, o, i)


@cpu_kernel
def soft_cross_entropy_backward_cpu(dlogits, probs, targets, class_weights, smoothing, upstream):
    for o in range(probs.shape[0]):
        for i in range(probs.shape[2]):
            u = upstream[o % upstream.shape[0], i % upstream.shape[1]]
            soft_cross_entropy_backward_at(dlogits, probs, targets, class_weights, smoothing, u, o, i)


@cpu_kernel
def nll_forward_cpu(sample_loss, sample_weight, log_probs, labels, class_weights, ignore_index):
    # -w_y x_y of log-probabilities x: sample_loss, sample_weight, labels (outer, inner); log_probs
    # (outer, C, inner); overwrites.
    for o in range(log_probs.shape[0]):
        for i in range(log_probs.shape[2]):
            y = labels[o, i]
            if y == ignore_index:
                sample_loss[o, i] = 0
                sample_weight[o, i] = 0
            else:
                sample_loss[o, i] = -class_weights[y] * log_probs[o, y, i]
                sample_weight[o, i] = class_weights[y]


@cpu_kernel
def nll_backward_cpu(dlog_probs, labels, class_weights, ignore_index, upstream):
    for o in range(dlog_probs.shape[0]):
        for i in range(dlog_probs.shape[2]):
            zero_classes_at(dlog_probs, o, i)
            y = labels[o, i]
            if y != ignore_index:
                dlog_probs[o, y, i] = -class_weights[y] * upstream[o % upstream.shape[0], i % upstream.shape[1]]


@cpu_kernel
def mse_forward_cpu(terms, pred, target):
    # terms, pred, target: flat (size,); terms = (pred - target)^2; overwrites.
    for i in range(pred.size):
        diff = pred[i] - target[i]
        terms[i] = diff * diff


@cpu_kernel
def mse_backward_cpu(dpred, pred, target, scale):
    for i in range(pred.size):
        dpred[i] = scale * same_type(scale, 2.0) * (pred[i] - target[i])


@cpu_kernel
def mae_forward_cpu(terms, pred, target):
    for i in range(pred.size):
        terms[i] = abs(pred[i] - target[i])


@cpu_kernel
def mae_backward_cpu(dpred, pred, target, scale):
    for i in range(pred.size):
        dpred[i] = scale * sign(pred[i] - target[i])


@cpu_kernel
def huber_forward_cpu(terms, pred, target, delta):
    for i in range(pred.size):
        terms[i] = huber(pred[i] - target[i], delta)


@cpu_kernel
def huber_backward_cpu(dpred, pred, target, scale, delta):
    for i in range(pred.size):
        dpred[i] = scale * huber_grad(pred[i] - target[i], delta)


@cpu_kernel
def bce_with_logits_forward_cpu(terms, logits, target, weight, pos_weight):
    # weight, pos_weight: repeat along the flat elements (element i reads [i % size]): (1,) for a
    # scalar, (C,) per class of the last axis, (size,) per element.
    for i in range(logits.size):
        terms[i] = bce_with_logits(logits[i], target[i], weight[i % weight.size], pos_weight[i % pos_weight.size])


@cpu_kernel
def bce_with_logits_backward_cpu(dlogits, logits, target, scale, weight, pos_weight):
    for i in range(logits.size):
        dlogits[i] = scale * bce_with_logits_grad(logits[i], target[i], weight[i % weight.size],
                                                  pos_weight[i % pos_weight.size])


@cpu_kernel
def kl_div_forward_cpu(terms, log_probs, target, log_target):
    for i in range(log_probs.size):
        terms[i] = kl_div(log_probs[i], target[i], log_target)


@cpu_kernel
def kl_div_backward_cpu(dlog_probs, log_probs, target, scale, log_target):
    for i in range(log_probs.size):
        dlog_probs[i] = scale * kl_div_grad(target[i], log_target)


# --------------------------------------------------------------------------------------- CUDA kernels
# Class losses: one thread per (o, i) position, o = k // inner.


@cuda_kernel
def cross_entropy_forward_cuda(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing,
                               ignore_index):
    inner = logits.shape[2]
    for k in range(cuda.grid(1), logits.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        y = labels[o, i]
        if y == ignore_index:
            sample_loss[o, i] = 0
            sample_weight[o, i] = 0
        else:
            sample_loss[o, i] = cross_entropy_at(probs, logits, class_weights, smoothing, y, o, i)
            sample_weight[o, i] = class_weights[y]


@cuda_kernel
def cross_entropy_backward_cuda(dlogits, probs, labels, class_weights, smoothing, ignore_index, upstream):
    weight_total = class_weight_total(class_weights)
    inner = probs.shape[2]
    for k in range(cuda.grid(1), probs.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        y = labels[o, i]
        if y == ignore_index:
            zero_classes_at(dlogits, o, i)
        else:
            u = upstream[o % upstream.shape[0], i % upstream.shape[1]]
            cross_entropy_backward_at(dlogits, probs, class_weights, weight_total, smoothing, y, u, o, i)


@cuda_kernel
def soft_cross_entropy_forward_cuda(sample_loss, probs, logits, targets, class_weights, smoothing):
    inner = logits.shape[2]
    for k in range(cuda.grid(1), logits.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        sample_loss[o, i] = soft_cross_entropy_at(probs, logits, targets, class_weights, smoothing, o, i)


@cuda_kernel
def soft_cross_entropy_backward_cuda(dlogits, probs, targets, class_weights, smoothing, upstream):
    inner = probs.shape[2]
    for k in range(cuda.grid(1), probs.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        u = upstream[o % upstream.shape[0], i % upstream.shape[1]]
        soft_cross_entropy_backward_at(dlogits, probs, targets, class_weights, smoothing, u, o, i)


@cuda_kernel
def nll_forward_cuda(sample_loss, sample_weight, log_probs, labels, class_weights, ignore_index):
    inner = log_probs.shape[2]
    for k in range(cuda.grid(1), log_probs.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        y = labels[o, i]
        if y == ignore_index:
            sample_loss[o, i] = 0
            sample_weight[o, i] = 0
        else:
            sample_loss[o, i] = -class_weights[y] * log_probs[o, y, i]
            sample_weight[o, i] = class_weights[y]


@cuda_kernel
def nll_backward_cuda(dlog_probs, labels, class_weights, ignore_index, upstream):
    inner = dlog_probs.shape[2]
    for k in range(cuda.grid(1), dlog_probs.shape[0] * inner, cuda.gridsize(1)):
        o, i = k // inner, k % inner
        zero_classes_at(dlog_probs, o, i)
        y = labels[o, i]
        if y != ignore_index:
            dlog_probs[o, y, i] = -class_weights[y] * upstream[o % upstream.shape[0], i % upstream.shape[1]]


@cuda_kernel
def mse_forward_cuda(terms, pred, target):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        diff = pred[i] - target[i]
        terms[i] = diff * diff


@cuda_kernel
def mse_backward_cuda(dpred, pred, target, scale):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * same_type(scale, 2.0) * (pred[i] - target[i])


@cuda_kernel
def mae_forward_cuda(terms, pred, target):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        terms[i] = abs(pred[i] - target[i])


@cuda_kernel
def mae_backward_cuda(dpred, pred, target, scale):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * sign(pred[i] - target[i])


@cuda_kernel
def huber_forward_cuda(terms, pred, target, delta):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        terms[i] = huber(pred[i] - target[i], delta)


@cuda_kernel
def huber_backward_cuda(dpred, pred, target, scale, delta):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * huber_grad(pred[i] - target[i], delta)


@cuda_kernel
def bce_with_logits_forward_cuda(terms, logits, target, weight, pos_weight):
    for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
        terms[i] = bce_with_logits(logits[i], target[i], weight[i % weight.size], pos_weight[i % pos_weight.size])


@cuda_kernel
def bce_with_logits_backward_cuda(dlogits, logits, target, scale, weight, pos_weight):
    for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
        dlogits[i] = scale * bce_with_logits_grad(logits[i], target[i], weight[i % weight.size],
                                                  pos_weight[i % pos_weight.size])


@cuda_kernel
def kl_div_forward_cuda(terms, log_probs, target, log_target):
    for i in range(cuda.grid(1), log_probs.size, cuda.gridsize(1)):
        terms[i] = kl_div(log_probs[i], target[i], log_target)


@cuda_kernel
def kl_div_backward_cuda(dlog_probs, log_probs, target, scale, log_target):
    for i in range(cuda.grid(1), log_probs.size, cuda.gridsize(1)):
        dlog_probs[i] = scale * kl_div_grad(target[i], log_target)
