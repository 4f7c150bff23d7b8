"""A single-stage, CenterNet-style detector's loss and decoding, and non-maximum suppression.

The head predicts, per cell of an (H, W) map (the input downsampled ``stride`` times), C class
heatmap logits, a box size (w, h) and a sub-cell centre offset (dx, dy): pred (N, C + 4, P), P = H W.
Targets: ``heat`` (N, C, P), a Gaussian peak of 1 at each object's centre cell (0 far from objects);
``regression`` (N, K, 4) the (w, h, dx, dy) of each of up to K objects, at pixel ``index`` (N, K)
(-1: no object). The loss (Zhou et al., "Objects as Points", 2019) is the penalty-reduced focal loss
over the heatmap plus L1 on size and offset at the object centres:

    focal = -sum_pos (1 - p)^2 log p - sum_neg (1 - y)^4 p^2 log(1 - p),   p = sigmoid(logit)

``centernet_forward`` writes per-sample sums (N, 3): focal, size L1, offset L1 (the loss class
normalises them by the number of objects); ``centernet_backward`` overwrites dpred with the gradient
of ``scale_focal * focal + scale_size * size + scale_offset * offset``. log p and log(1 - p) are
computed as -softplus(-x) and -softplus(x): finite for any logit, without CenterNet's clamp.

``heatmap_peaks`` keeps a cell's score (its sigmoid) where it is the maximum of its 3x3 neighbourhood
in its class, 0 elsewhere: the detector's decoding step, instead of anchors and regression targets.
``nms`` is greedy non-maximum suppression per image: boxes (N, K, 4) sorted by falling score; a box is
dropped when it overlaps a kept box of the same class by more than the IoU threshold.
"""

import math

from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math
from numdl.kernels.loss import sign  # PyTorch's L1 gradient: sign(d), 0 at 0

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def softplus(x):
    # log(1 + exp(x)) without overflow.
    zero = same_type(x, 0.0)
    top = x if x > zero else zero
    return top + math.log1p(math.exp(-abs(x)))


@scalar_math
def focal_term(x, y):
    # (loss, d loss / d x) of one heatmap cell with logit x and target y.
    one = same_type(x, 1.0)
    log_p, log_q = -softplus(-x), -softplus(x)
    p = math.exp(log_p)
    q = one - p
    if y >= one:
        return -q * q * log_p, q * q * (same_type(x, 2.0) * p * log_p - q)
    w = one - y
    w = w * w
    w = w * w
    return -w * p * p * log_q, w * p * p * (p - same_type(x, 2.0) * q * log_q)


@scalar_math
def sample_terms(terms, pred, heat, regression, index, n):
    # terms[n] = (focal sum over sample n's heatmaps, size L1 sum, offset L1 sum at its object centres).
    classes, pixels = heat.shape[1], heat.shape[2]
    focal = same_type(terms[0, 0], 0.0)
    for c in range(classes):
        for p in range(pixels):
            focal += focal_term(pred[n, c, p], heat[n, c, p])[0]
    size = same_type(terms[0, 0], 0.0)
    offset = same_type(terms[0, 0], 0.0)
    for k in range(index.shape[1]):
        p = index[n, k]
        if p < 0:
            continue
        size += abs(pred[n, classes, p] - regression[n, k, 0]) + abs(pred[n, classes + 1, p] - regression[n, k, 1])
        offset += abs(pred[n, classes + 2, p] - regression[n, k, 2]) + abs(pred[n, classes + 3, p] - regression[n, k, 3])
    terms[n, 0] = focal
    terms[n, 1] = size
    terms[n, 2] = offset


@scalar_math
def box_overlap(boxes, n, a, b):
    # IoU of boxes a and b of image n ([x1, y1, x2, y2]).
    zero = same_type(boxes[n, a, 0], 0.0)
    w = min(boxes[n, a, 2], boxes[n, b, 2]) - max(boxes[n, a, 0], boxes[n, b, 0])
    h = min(boxes[n, a, 3], boxes[n, b, 3]) - max(boxes[n, a, 1], boxes[n, b, 1])
    if w <= zero or h <= zero:
        return zero
    inter = w * h
    area_a = (boxes[n, a, 2] - boxes[n, a, 0]) * (boxes[n, a, 3] - boxes[n, a, 1])
    area_b = (boxes[n, b, 2] - boxes[n, b, 0]) * (boxes[n, b, 3] - boxes[n, b, 1])
    return inter / (area_a + area_b - inter)


@scalar_math
def nms_image(keep, boxes, scores, classes, threshold, n):
    # Greedy suppression within image n; boxes come sorted by falling score (score 0: an empty slot).
    count = boxes.shape[1]
    for a in range(count):
        keep[n, a] = 1 if scores[n, a] > same_type(scores[n, a], 0.0) else 0
    for a in range(count):
        if keep[n, a] == 0:
            continue
        for b in range(a + 1, count):
            if keep[n, b] != 0 and classes[n, b] == classes[n, a] and box_overlap(boxes, n, a, b) > threshold:
                keep[n, b] = 0


@scalar_math
def is_peak(heat, n, c, i, j):
    # Whether heat[n, c, i, j] is the maximum of its 3x3 neighbourhood (ties keep every maximum).
    v = heat[n, c, i, j]
    for di in range(-1, 2):
        for dj in range(-1, 2):
            a, b = i + di, j + dj
            if 0 <= a < heat.shape[2] and 0 <= b < heat.shape[3] and heat[n, c, a, b] > v:
                return False
    return True


@scalar_math
def sigmoid_exact(x):
    one = same_type(x, 1.0)
    if x >= same_type(x, 0.0):
        return one / (one + math.exp(-x))
    e = math.exp(x)
    return e / (one + e)


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def centernet_forward_cpu(terms, pred, heat, regression, index):
    # Overwrites terms (N, 3) with each sample's focal, size-L1 and offset-L1 sums.
    for n in range(heat.shape[0]):
        sample_terms(terms, pred, heat, regression, index, n)


@cpu_kernel
def centernet_backward_cpu(dpred, pred, heat, regression, index, scale_focal, scale_size, scale_offset):
    # Overwrites dpred (N, C + 4, P).
    n_batch, classes, pixels = heat.shape
    for n in range(n_batch):
        for c in range(classes):
            for p in range(pixels):
                dpred[n, c, p] = scale_focal * focal_term(pred[n, c, p], heat[n, c, p])[1]
        for c in range(classes, classes + 4):
            for p in range(pixels):
                dpred[n, c, p] = 0
        for k in range(index.shape[1]):
            p = index[n, k]
            if p < 0:
                continue
            for r in range(4):
                scale = scale_size if r < 2 else scale_offset
                dpred[n, classes + r, p] += scale * sign(pred[n, classes + r, p] - regression[n, k, r])


@cpu_kernel
def heatmap_peaks_forward_cpu(scores, heat):
    # scores (N, C, H, W) = sigmoid(heat) at 3x3 local maxima, else 0.
    for n in range(heat.shape[0]):
        for c in range(heat.shape[1]):
            for i in range(heat.shape[2]):
                for j in range(heat.shape[3]):
                    scores[n, c, i, j] = sigmoid_exact(heat[n, c, i, j]) if is_peak(heat, n, c, i, j) else \
                        same_type(scores[0, 0, 0, 0], 0.0)


@cpu_kernel
def nms_forward_cpu(keep, boxes, scores, classes, threshold):
    # keep (N, K) of the boxes' dtype: 1 for a kept box, 0 for a suppressed one or an empty slot.
    for n in range(boxes.shape[0]):
        nms_image(keep, boxes, scores, classes, threshold, n)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def centernet_forward_cuda(terms, pred, heat, regression, index):
    # One thread per sample (a reduction over its map).
    for n in range(cuda.grid(1), heat.shape[0], cuda.gridsize(1)):
        sample_terms(terms, pred, heat, regression, index, n)


@cuda_kernel
def centernet_backward_cuda(dpred, pred, heat, regression, index, scale_focal, scale_size, scale_offset):
    # One thread per element of dpred; a regression cell sums the objects centred on it (no atomics).
    n_batch, channels, pixels = dpred.shape
    classes = channels - 4
    for item in range(cuda.grid(1), dpred.size, cuda.gridsize(1)):
        p = item % pixels
        c = (item // pixels) % channels
        n = item // (pixels * channels)
        if c < classes:
            dpred[n, c, p] = scale_focal * focal_term(pred[n, c, p], heat[n, c, p])[1]
            continue
        r = c - classes
        scale = scale_size if r < 2 else scale_offset
        g = same_type(scale, 0.0)
        for k in range(index.shape[1]):
            if index[n, k] == p:
                g += scale * sign(pred[n, c, p] - regression[n, k, r])
        dpred[n, c, p] = g


@cuda_kernel
def heatmap_peaks_forward_cuda(scores, heat):
    classes, h, w = heat.shape[1], heat.shape[2], heat.shape[3]
    for item in range(cuda.grid(1), heat.size, cuda.gridsize(1)):
        j = item % w
        i = (item // w) % h
        c = (item // (w * h)) % classes
        n = item // (w * h * classes)
        if is_peak(heat, n, c, i, j):
            scores[n, c, i, j] = sigmoid_exact(heat[n, c, i, j])
        else:
            scores[n, c, i, j] = same_type(scores[0, 0, 0, 0], 0.0)


@cuda_kernel
def nms_forward_cuda(keep, boxes, scores, classes, threshold):
    # One thread per image: greedy suppression is sequential within an image.
    for n in range(cuda.grid(1), boxes.shape[0], cuda.gridsize(1)):
        nms_image(keep, boxes, scores, classes, threshold, n)
