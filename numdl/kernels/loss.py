"""Losses: softmax cross-entropy (fused, class weights, label smoothing), MSE, MAE (L1), Huber, BCE
with logits.

PyTorch's definitions. Forward kernels write per-sample terms or a running sum; the loss classes turn
them into the mean or sum. Backward kernels overwrite the gradient, already multiplied by ``scale``
(1 / normaliser for a mean, 1 for a sum), so no extra pass over the gradient is needed.
"""

import math


from numdl.kernels.activation import sigmoid
from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def cross_entropy_row(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing, r):
    # Row r: probs = softmax(logits); loss = (1-e) w_y (lse - x_y) + e/C sum_c w_c (lse - x_c).
    cols = logits.shape[1]
    peak = logits[r, 0]
    for c in range(1, cols):
        peak = max(peak, logits[r, c])
    total = same_type(peak, 0.0)
    for c in range(cols):
        e = math.exp(logits[r, c] - peak)
        probs[r, c] = e
        total += e
    log_total = math.log(total)
    inv = same_type(peak, 1.0) / total
    smooth_sum = same_type(peak, 0.0)
    for c in range(cols):
        probs[r, c] *= inv
        smooth_sum += class_weights[c] * (log_total - (logits[r, c] - peak))
    y = labels[r]
    weight = class_weights[y]
    nll = log_total - (logits[r, y] - peak)
    sample_loss[r] = (same_type(peak, 1.0) - smoothing) * weight * nll + smoothing / same_type(peak, cols) * smooth_sum
    sample_weight[r] = weight


@scalar_math
def cross_entropy_backward_row(dlogits, probs, labels, class_weights, weight_total, smoothing, scale, r):
    # d/dx_j = scale * ((1-e) w_y (p_j - [j == y]) + e/C (W p_j - w_j)), W = sum of class weights.
    cols = probs.shape[1]
    y = labels[r]
    hard = (same_type(scale, 1.0) - smoothing) * class_weights[y]
    soft = smoothing / same_type(scale, cols)
    for c in range(cols):
        grad = hard * probs[r, c] + soft * (weight_total * probs[r, c] - class_weights[c])
        if c == y:
            grad -= hard
        dlogits[r, c] = scale * grad


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
def bce_with_logits(x, t):
    # max(x, 0) - x t + log(1 + exp(-|x|)): never overflows.
    return max(x, same_type(x, 0.0)) - x * t + math.log1p(math.exp(-abs(x)))


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def cross_entropy_forward_cpu(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing):
    # sample_loss, sample_weight (n,); probs, logits (n, C); labels (n,) int; class_weights (C,).
    for r in range(logits.shape[0]):
        cross_entropy_row(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing, r)


@cpu_kernel
def cross_entropy_backward_cpu(dlogits, probs, labels, class_weights, smoothing, scale):
    weight_total = same_type(scale, 0.0)
    for c in range(class_weights.size):
        weight_total += class_weights[c]
    for r in range(probs.shape[0]):
        cross_entropy_backward_row(dlogits, probs, labels, class_weights, weight_total, smoothing, scale, r)


@cpu_kernel
def mse_forward_cpu(total, pred, target):
    # total (1,) = sum((pred - target)^2) over flat views; overwrites.
    acc = same_type(total[0], 0.0)
    for i in range(pred.size):
        diff = pred[i] - target[i]
        acc += diff * diff
    total[0] = acc


@cpu_kernel
def mse_backward_cpu(dpred, pred, target, scale):
    for i in range(pred.size):
        dpred[i] = scale * same_type(scale, 2.0) * (pred[i] - target[i])


@cpu_kernel
def mae_forward_cpu(total, pred, target):
    # total (1,) = sum(|pred - target|) over flat views; overwrites.
    acc = same_type(total[0], 0.0)
    for i in range(pred.size):
        acc += abs(pred[i] - target[i])
    total[0] = acc


@cpu_kernel
def mae_backward_cpu(dpred, pred, target, scale):
    for i in range(pred.size):
        dpred[i] = scale * sign(pred[i] - target[i])


@cpu_kernel
def huber_forward_cpu(total, pred, target, delta):
    # total (1,) = sum of huber(pred - target) over flat views; overwrites.
    acc = same_type(total[0], 0.0)
    for i in range(pred.size):
        acc += huber(pred[i] - target[i], delta)
    total[0] = acc


@cpu_kernel
def huber_backward_cpu(dpred, pred, target, scale, delta):
    for i in range(pred.size):
        dpred[i] = scale * huber_grad(pred[i] - target[i], delta)


@cpu_kernel
def bce_with_logits_forward_cpu(total, logits, target):
    # total (1,) = sum of element losses over flat views; overwrites.
    acc = same_type(total[0], 0.0)
    for i in range(logits.size):
        acc += bce_with_logits(logits[i], target[i])
    total[0] = acc


@cpu_kernel
def bce_with_logits_backward_cpu(dlogits, logits, target, scale):
    for i in range(logits.size):
        dlogits[i] = scale * (sigmoid(logits[i]) - target[i])


# --------------------------------------------------------------------------------------- CUDA kernels
# Sums go through one atomic add per thread; the launcher's caller zeroes ``total`` first.


@cuda_kernel
def cross_entropy_forward_cuda(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing):
    for r in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        cross_entropy_row(sample_loss, sample_weight, probs, logits, labels, class_weights, smoothing, r)


@cuda_kernel
def cross_entropy_backward_cuda(dlogits, probs, labels, class_weights, smoothing, scale):
    weight_total = same_type(scale, 0.0)
    for c in range(class_weights.size):
        weight_total += class_weights[c]
    for r in range(cuda.grid(1), probs.shape[0], cuda.gridsize(1)):
        cross_entropy_backward_row(dlogits, probs, labels, class_weights, weight_total, smoothing, scale, r)


@cuda_kernel
def mse_forward_cuda(total, pred, target):
    acc = same_type(total[0], 0.0)
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        diff = pred[i] - target[i]
        acc += diff * diff
    cuda.atomic.add(total, 0, acc)


@cuda_kernel
def mse_backward_cuda(dpred, pred, target, scale):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * same_type(scale, 2.0) * (pred[i] - target[i])


@cuda_kernel
def mae_forward_cuda(total, pred, target):
    acc = same_type(total[0], 0.0)
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        acc += abs(pred[i] - target[i])
    cuda.atomic.add(total, 0, acc)


@cuda_kernel
def mae_backward_cuda(dpred, pred, target, scale):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * sign(pred[i] - target[i])


@cuda_kernel
def huber_forward_cuda(total, pred, target, delta):
    acc = same_type(total[0], 0.0)
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        acc += huber(pred[i] - target[i], delta)
    cuda.atomic.add(total, 0, acc)


@cuda_kernel
def huber_backward_cuda(dpred, pred, target, scale, delta):
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        dpred[i] = scale * huber_grad(pred[i] - target[i], delta)


@cuda_kernel
def bce_with_logits_forward_cuda(total, logits, target):
    acc = same_type(total[0], 0.0)
    for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
        acc += bce_with_logits(logits[i], target[i])
    cuda.atomic.add(total, 0, acc)


@cuda_kernel
def bce_with_logits_backward_cuda(dlogits, logits, target, scale):
    for i in range(cuda.grid(1), logits.size, cuda.gridsize(1)):
        dlogits[i] = scale * (sigmoid(logits[i]) - target[i])
