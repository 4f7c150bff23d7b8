"""Dense-prediction losses over (N, C, P) logits (P = H W pixels) and (N, P) labels: per-pixel
softmax cross-entropy with class weights and an ignored label, and the soft Dice loss.

Cross-entropy (PyTorch's ``nn.CrossEntropyLoss`` on (N, C, H, W)): forward writes each pixel's
weighted loss and weight (0 for an ignored pixel) and its softmax; backward overwrites dlogits,
already multiplied by ``scale`` (1 / the summed weights for a mean).

Soft Dice over the batch: with p the softmax and t the one-hot labels (ignored pixels left out),
per class c: I_c = sum p t, S_c = sum p + sum t, dice_c = (2 I_c + eps) / (S_c + eps), and the loss is
1 - mean_c dice_c. ``dice_statistics`` writes stats (C, 2) = (I_c, S_c); backward needs them.

``pixel_argmax`` writes each pixel's predicted class (the first largest logit; a NaN wins, as NumPy's
argmax), which the per-pixel accuracy of every training step counts: NumPy's argmax along the
strided class axis took 14 ms a step for the U-Net example's (32, 11, 64 x 64) logits.
"""

import math

from numdl.kernels.activation import exp_nonpositive
from numba import prange

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    numba_threads,
    same_type,
    scalar_math,
    thread_share,
    worth_splitting,
)

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def pixel_softmax(probs, logits, n, p):
    # probs[n, :, p] = softmax(logits[n, :, p]); returns (max, log of the sum of exp(x - max)).
    classes = logits.shape[1]
    peak = logits[n, 0, p]
    for c in range(1, classes):
        v = logits[n, c, p]
        peak = v if v > peak or v != v else peak
    total = same_type(peak, 0.0)
    for c in range(classes):
        e = exp_nonpositive(logits[n, c, p] - peak)
        probs[n, c, p] = e
        total += e
    inv = same_type(peak, 1.0) / total
    for c in range(classes):
        probs[n, c, p] *= inv
    return peak, math.log(total)


@scalar_math
def pixel_cross_entropy(pixel_loss, pixel_weight, probs, logits, labels, class_weights, ignore_index, n, p):
    peak, log_total = pixel_softmax(probs, logits, n, p)
    y = labels[n, p]
    if y == ignore_index:
        pixel_loss[n, p] = peak - peak
        pixel_weight[n, p] = peak - peak
        return
    weight = class_weights[y]
    pixel_loss[n, p] = weight * (log_total - (logits[n, y, p] - peak))
    pixel_weight[n, p] = weight


@scalar_math
def dice_pixel_grad(dlogits, probs, labels, stats, eps, scale, ignore_index, n, p):
    # dL/dp_c = -scale/C (2 t_c (S_c + eps) - (2 I_c + eps)) / (S_c + eps)^2, then through the softmax:
    # dlogit_c = p_c (g_c - sum_k p_k g_k). Ignored pixels get zero.
    classes = probs.shape[1]
    y = labels[n, p]
    if y == ignore_index:
        for c in range(classes):
            dlogits[n, c, p] = scale - scale
        return
    two = same_type(scale, 2.0)
    mixed = scale - scale
    for c in range(classes):
        den = stats[c, 1] + eps
        hot = two * den if c == y else scale - scale
        g = -scale * (hot - (two * stats[c, 0] + eps)) / (den * den)
        dlogits[n, c, p] = g
        mixed += probs[n, c, p] * g
    for c in range(classes):
        dlogits[n, c, p] = probs[n, c, p] * (dlogits[n, c, p] - mixed)


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def pixel_cross_entropy_forward_cpu(pixel_loss, pixel_weight, probs, logits, labels, class_weights, ignore_index):
    # Overwrites pixel_loss, pixel_weight (N, P) and probs (N, C, P). Samples split over numba's
    # threads when they have the cores.
    if worth_splitting(logits.size):
        _pixel_cross_entropy_forward_split(pixel_loss, pixel_weight, probs, logits, labels, class_weights,
                                           ignore_index)
    else:
        _pixel_cross_entropy_forward_samples(pixel_loss, pixel_weight, probs, logits, labels, class_weights,
                                             ignore_index)


@cpu_parallel_kernel
def _pixel_cross_entropy_forward_split(pixel_loss, pixel_weight, probs, logits, labels, class_weights, ignore_index):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(logits.shape[0], part, parts)
        _pixel_cross_entropy_forward_samples(pixel_loss[lo:hi], pixel_weight[lo:hi], probs[lo:hi], logits[lo:hi],
                                             labels[lo:hi], class_weights, ignore_index)


@cpu_kernel
def _pixel_cross_entropy_forward_samples(pixel_loss, pixel_weight, probs, logits, labels, class_weights,
                                         ignore_index):
    # Loops run along the pixels (the contiguous axis) so that they vectorise; pixel_loss and
    # pixel_weight hold each pixel's maximum logit and sum of exponentials until the last loop. A NaN
    # logit becomes the maximum, so the pixel's loss is NaN (and the NaN guard sees it).
    n_batch, classes, pixels = logits.shape
    for n in range(n_batch):
        peak, total = pixel_loss[n], pixel_weight[n]
        for p in range(pixels):
            peak[p] = logits[n, 0, p]
            total[p] = 0
        for c in range(1, classes):
            for p in range(pixels):
                v = logits[n, c, p]
                peak[p] = v if v > peak[p] or v != v else peak[p]
        for c in range(classes):
            for p in range(pixels):
                e = exp_nonpositive(logits[n, c, p] - peak[p])
                probs[n, c, p] = e
                total[p] += e
        for c in range(classes):
            for p in range(pixels):
                probs[n, c, p] /= total[p]
        for p in range(pixels):
            y = labels[n, p]
            if y == ignore_index:
                pixel_loss[n, p] = 0
                pixel_weight[n, p] = 0
            else:
                weight = class_weights[y]
                pixel_loss[n, p] = weight * (math.log(total[p]) - (logits[n, y, p] - peak[p]))
                pixel_weight[n, p] = weight


@cpu_kernel
def pixel_cross_entropy_backward_cpu(dlogits, probs, labels, class_weights, ignore_index, scale):
    # Overwrites dlogits (N, C, P) = scale * w_y (probs - onehot(y)); zero at ignored pixels. Samples
    # split over numba's threads when they have the cores.
    if worth_splitting(probs.size):
        _pixel_cross_entropy_backward_split(dlogits, probs, labels, class_weights, ignore_index, scale)
    else:
        _pixel_cross_entropy_backward_samples(dlogits, probs, labels, class_weights, ignore_index, scale)


@cpu_parallel_kernel
def _pixel_cross_entropy_backward_split(dlogits, probs, labels, class_weights, ignore_index, scale):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(probs.shape[0], part, parts)
        _pixel_cross_entropy_backward_samples(dlogits[lo:hi], probs[lo:hi], labels[lo:hi], class_weights,
                                              ignore_index, scale)


@cpu_kernel
def _pixel_cross_entropy_backward_samples(dlogits, probs, labels, class_weights, ignore_index, scale):
    n_batch, classes, pixels = probs.shape
    zero = same_type(scale, 0.0)
    for n in range(n_batch):
        for c in range(classes):
            for p in range(pixels):
                y = labels[n, p]
                w = zero if y == ignore_index else scale * class_weights[y]
                g = w * probs[n, c, p]
                dlogits[n, c, p] = g - w if c == y else g


@cpu_kernel
def dice_statistics_forward_cpu(stats, probs, labels, ignore_index):
    # Overwrites stats (C, 2) with (I_c, S_c) of the softmax ``probs`` (N, C, P) (cross-entropy's).
    n_batch, classes, pixels = probs.shape
    for c in range(classes):
        stats[c, 0] = 0
        stats[c, 1] = 0
    for n in range(n_batch):
        for p in range(pixels):
            y = labels[n, p]
            if y == ignore_index:
                continue
            for c in range(classes):
                stats[c, 1] += probs[n, c, p]
            stats[y, 0] += probs[n, y, p]
            stats[y, 1] += 1


@cpu_kernel
def dice_backward_cpu(dlogits, probs, labels, stats, eps, scale, ignore_index):
    # The gradient of dice_pixel_grad, vectorised along the pixels: dL/dp_c = A_c [y == c] + B_c with
    # A_c = -2 scale / D_c, B_c = scale (2 I_c + eps) / D_c^2, D_c = S_c + eps, and the softmax's
    # sum_k p_k g_k = p_y A_y + sum_k p_k B_k, kept in dlogits[n, 0] until class 0's turn.
    n_batch, classes, pixels = probs.shape
    zero = same_type(scale, 0.0)
    two = same_type(scale, 2.0)
    for n in range(n_batch):
        mixed = dlogits[n, 0]
        for p in range(pixels):
            y = labels[n, p]
            if y == ignore_index:
                mixed[p] = zero
            else:
                den = stats[y, 1] + eps
                mixed[p] = probs[n, y, p] * (-two * scale / den)
        for c in range(classes):
            den = stats[c, 1] + eps
            b = scale * (two * stats[c, 0] + eps) / (den * den)
            for p in range(pixels):
                mixed[p] += probs[n, c, p] * b
        for c in range(classes - 1, -1, -1):  # class 0 last: its row holds the mixed sums until then
            den = stats[c, 1] + eps
            a = -two * scale / den
            b = scale * (two * stats[c, 0] + eps) / (den * den)
            for p in range(pixels):
                y = labels[n, p]
                g = b + a if y == c else b
                value = probs[n, c, p] * (g - mixed[p])
                dlogits[n, c, p] = zero if y == ignore_index else value


@cpu_kernel
def pixel_argmax_forward_cpu(pred, logits):
    # Overwrites pred (N, P), of the logits' dtype (as every kernel output; class indices are exact
    # in it), with the class of each pixel's first largest logit (N, C, P).
    # Samples split over numba's threads when they have the cores.
    if worth_splitting(logits.size):
        _pixel_argmax_split(pred, logits)
    else:
        _pixel_argmax_samples(pred, logits)


@cpu_kernel
def _pixel_argmax_samples(pred, logits):
    # Along the pixels (the contiguous axis, so that the loops vectorise), keeping each pixel's best
    # logit so far in a row of scratch.
    n_batch, classes, pixels = logits.shape
    best = logits[0, 0].copy() if n_batch > 0 else logits.reshape(-1)[:0].copy()
    for n in range(n_batch):
        row = pred[n]
        for p in range(pixels):
            best[p] = logits[n, 0, p]
            row[p] = 0
        for c in range(1, classes):
            label = same_type(best[0], c)
            for p in range(pixels):
                v = logits[n, c, p]
                take = (v > best[p]) | ((v != v) & (best[p] == best[p]))  # the first NaN stays
                best[p] = v if take else best[p]
                row[p] = label if take else row[p]


@cpu_parallel_kernel
def _pixel_argmax_split(pred, logits):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(logits.shape[0], part, parts)
        _pixel_argmax_samples(pred[lo:hi], logits[lo:hi])


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def pixel_cross_entropy_forward_cuda(pixel_loss, pixel_weight, probs, logits, labels, class_weights, ignore_index):
    pixels = logits.shape[2]
    for item in range(cuda.grid(1), logits.shape[0] * pixels, cuda.gridsize(1)):
        pixel_cross_entropy(pixel_loss, pixel_weight, probs, logits, labels, class_weights, ignore_index,
                            item // pixels, item % pixels)


@cuda_kernel
def pixel_cross_entropy_backward_cuda(dlogits, probs, labels, class_weights, ignore_index, scale):
    classes, pixels = probs.shape[1], probs.shape[2]
    for item in range(cuda.grid(1), probs.size, cuda.gridsize(1)):
        p = item % pixels
        c = (item // pixels) % classes
        n = item // (pixels * classes)
        y = labels[n, p]
        if y == ignore_index:
            dlogits[n, c, p] = scale - scale
        else:
            g = scale * class_weights[y] * probs[n, c, p]
            if c == y:
                g -= scale * class_weights[y]
            dlogits[n, c, p] = g


@cuda_kernel
def dice_statistics_forward_cuda(stats, probs, labels, ignore_index):
    # One thread per class (C threads: a reduction over every pixel).
    n_batch, classes, pixels = probs.shape
    for c in range(cuda.grid(1), classes, cuda.gridsize(1)):
        inter = stats[0, 0] - stats[0, 0]
        total = inter
        for n in range(n_batch):
            for p in range(pixels):
                prob = probs[n, c, p]
                y = labels[n, p]
                if y == ignore_index:
                    continue
                total += prob
                if y == c:
                    inter += prob
                    total += same_type(prob, 1.0)
        stats[c, 0] = inter
        stats[c, 1] = total


@cuda_kernel
def dice_backward_cuda(dlogits, probs, labels, stats, eps, scale, ignore_index):
    pixels = probs.shape[2]
    for item in range(cuda.grid(1), probs.shape[0] * pixels, cuda.gridsize(1)):
        dice_pixel_grad(dlogits, probs, labels, stats, eps, scale, ignore_index, item // pixels, item % pixels)


@cuda_kernel
def pixel_argmax_forward_cuda(pred, logits):
    classes, pixels = logits.shape[1], logits.shape[2]
    for item in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        n, p = item // pixels, item % pixels
        best = logits[n, 0, p]
        index = 0
        for c in range(1, classes):
            v = logits[n, c, p]
            if v > best or (v != v and best == best):
                best = v
                index = c
        pred[n, p] = same_type(best, index)
