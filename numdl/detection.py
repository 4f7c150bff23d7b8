"""Object detection around the CenterNet-style head (numdl.kernels.detection): training targets from
boxes, decoding the head's maps into scored boxes, and mean average precision as COCO computes it.

Why CenterNet and not a YOLO grid: an object is the peak of a class heatmap at its centre, so the
head is one more dense map (the same layers and losses as segmentation), there are no anchor sizes
to tune, several objects may share a grid cell's neighbourhood, and decoding is a 3x3 local-maximum
test (a kernel) followed by a small non-maximum suppression (a kernel) instead of thousands of
anchor boxes.

Boxes are rows [x1, y1, x2, y2, class] in input pixels (class -1: an empty slot), as
``numdl.data.scenes`` gives them. The head's maps have H x W cells of ``stride`` pixels.
"""

import math

import numpy as np

from numdl.backend import ops_for

NO_BOX = -1


def gaussian_radius(height, width, min_overlap=0.7):
    """CenterNet's radius (in cells) within which a corner shift keeps IoU >= min_overlap with the box."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def centernet_targets(boxes, classes, height, width, stride, dtype):
    """(heat (N, C, H W), regression (N, K, 4), index (N, K) int64) for boxes (N, K, 5)."""
    boxes = np.asarray(boxes, np.float64)
    n, k = boxes.shape[:2]
    heat = np.zeros((n, classes, height, width), dtype)
    regression = np.zeros((n, k, 4), dtype)
    index = np.full((n, k), -1, np.int64)
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    for i in range(n):
        for j in range(k):
            x1, y1, x2, y2, label = boxes[i, j]
            if label < 0:
                continue
            w, h = (x2 - x1) / stride, (y2 - y1) / stride
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            col, row = min(int(cx), width - 1), min(int(cy), height - 1)
            radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
            sigma = (2 * radius + 1) / 6
            peak = np.exp(-((xs - col) ** 2 + (ys - row) ** 2) / (2 * sigma * sigma))
            peak[(np.abs(xs - col) > radius) | (np.abs(ys - row) > radius)] = 0
            np.maximum(heat[i, int(label)], peak, out=heat[i, int(label)])
            regression[i, j] = (w, h, cx - col, cy - row)
            index[i, j] = row * width + col
    return heat.reshape(n, classes, height * width), regression, index


def decode(outputs, stride, top_k=20, score_threshold=0.05, iou_threshold=0.5):
    """Scored boxes from the head's outputs (N, C + 4, H, W): per image, a list of
    (boxes (m, 4) [x1, y1, x2, y2] in input pixels, clipped to the image, scores (m,), classes (m,)),
    best first: the ``top_k`` highest local maxima of the class heatmaps scoring at least
    ``score_threshold``, then non-maximum suppression per class at ``iou_threshold``."""
    ops = ops_for(outputs)
    n, channels, height, width = outputs.shape
    classes = channels - 4
    heat = np.ascontiguousarray(outputs[:, :classes])
    scores = np.empty_like(heat)
    ops.heatmap_peaks(scores, heat)
    flat = scores.reshape(n, -1)
    k = min(top_k, flat.shape[1])
    best = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(flat, best, axis=1)
    labels = best // (height * width)
    cells = best % (height * width)
    rows, cols = cells // width, cells % width
    size = outputs[:, classes:classes + 2].reshape(n, 2, -1)
    offset = outputs[:, classes + 2:classes + 4].reshape(n, 2, -1)
    w = np.maximum(np.take_along_axis(size[:, 0], cells, 1), 0)  # a negative size is no box
    h = np.maximum(np.take_along_axis(size[:, 1], cells, 1), 0)
    cx = (cols + np.take_along_axis(offset[:, 0], cells, 1)) * stride
    cy = (rows + np.take_along_axis(offset[:, 1], cells, 1)) * stride
    boxes = np.stack([cx - w * stride / 2, cy - h * stride / 2, cx + w * stride / 2, cy + h * stride / 2], -1)
    np.clip(boxes[..., 0::2], 0, width * stride, out=boxes[..., 0::2])  # inside the input image
    np.clip(boxes[..., 1::2], 0, height * stride, out=boxes[..., 1::2])
    boxes = np.ascontiguousarray(boxes, dtype=outputs.dtype)
    top_scores = np.where(top_scores >= score_threshold, top_scores, 0).astype(outputs.dtype)
    keep = np.zeros((n, k), outputs.dtype)
    ops.nms(keep, boxes, top_scores, np.ascontiguousarray(labels, np.int64), iou_threshold)
    return [(boxes[i][keep[i] == 1].astype(np.float64), top_scores[i][keep[i] == 1].astype(np.float64),
             labels[i][keep[i] == 1]) for i in range(n)]


def _iou_matrix(a, b):
    """IoU between each box of a (m, 4) and each of b (g, 4), [x1, y1, x2, y2]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


def mean_average_precision(detections, truth, num_classes, iou_thresholds=IOU_THRESHOLDS):
    """COCO's bounding-box AP (pycocotools' COCOeval, area "all", 100 detections per image and class):
    detections per image as ``decode`` gives them, truth (N, K, 5) boxes. Returns {"map": the mean
    over ``iou_thresholds`` and the classes with ground truth, "map50": at IoU 0.5, "ap50": per class
    (None without ground truth)}."""
    truth = np.asarray(truth, np.float64)
    thresholds = np.asarray(iou_thresholds, np.float64)
    precision = np.full((len(thresholds), len(RECALL_POINTS), num_classes), -1.0)
    for c in range(num_classes):
        scores, matched, total_truth = [], [], 0
        for (boxes, det_scores, det_classes), image_truth in zip(detections, truth):
            gt = image_truth[image_truth[:, 4] == c, :4]
            total_truth += len(gt)
            mine = det_classes == c
            if not mine.any():
                continue
            order = np.argsort(-det_scores[mine], kind="mergesort")[:MAX_DETECTIONS]
            dt, dt_scores = boxes[mine][order], det_scores[mine][order]
            ious = _iou_matrix(dt, gt)
            hits = np.zeros((len(thresholds), len(dt)), bool)
            for t, threshold in enumerate(thresholds):
                taken = np.zeros(len(gt), bool)
                for d in range(len(dt)):
                    best, best_iou = -1, min(threshold, 1 - 1e-10)
                    for g in range(len(gt)):  # COCOeval: the best-overlapping free truth box
                        if taken[g] or ious[d, g] < best_iou:
                            continue
                        best, best_iou = g, ious[d, g]
                    if best >= 0:
                        taken[best], hits[t, d] = True, True
            scores.append(dt_scores)
            matched.append(hits)
        if total_truth == 0:
            continue
        if not scores:
            precision[:, :, c] = 0.0
            continue
        all_scores = np.concatenate(scores)
        order = np.argsort(-all_scores, kind="mergesort")
        hits = np.concatenate(matched, axis=1)[:, order]
        true_positive = np.cumsum(hits, axis=1).astype(np.float64)
        false_positive = np.cumsum(~hits, axis=1).astype(np.float64)
        for t in range(len(thresholds)):
            recall = true_positive[t] / total_truth
            prec = true_positive[t] / (true_positive[t] + false_positive[t] + np.spacing(1))
            prec = np.maximum.accumulate(prec[::-1])[::-1]  # the precision envelope
            where = np.searchsorted(recall, RECALL_POINTS, side="left")
            values = np.zeros(len(RECALL_POINTS))
            valid = where < len(prec)
            values[valid] = prec[where[valid]]
            precision[t, :, c] = values
    present = precision[0, 0, :] > -1
    if not present.any():
        return {"map": 0.0, "map50": 0.0, "ap50": [None] * num_classes}
    per_threshold = precision[:, :, present].mean(axis=(1, 2))
    at50 = np.isclose(thresholds, 0.5)
    ap50 = [float(precision[at50][0, :, c].mean()) if present[c] else None for c in range(num_classes)]
    return {"map": float(per_threshold.mean()), "map50": float(per_threshold[at50][0]) if at50.any() else None,
            "ap50": [None if v is None else round(v, 4) for v in ap50]}
