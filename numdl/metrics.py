"""Metrics: multi-class (accuracy, confusion matrix, per-class precision/recall/F1, macro F1),
multi-label (per-label, micro and macro precision/recall/F1, subset accuracy, Hamming loss) and
regression (MAE, RMSE, R^2).

Conventions follow scikit-learn: rows of the confusion matrix are true classes, columns predicted;
a precision or recall whose denominator is zero is reported as 0. Multi-class functions take 1-D
label arrays and refuse 2-D ones (a multi-label indicator matrix flattened into one long label
vector gave a meaningless macro F1); the multi-label ones take (samples, labels) 0/1 arrays.
"""

import numpy as np

from numdl.errors import ShapeError


def _labels(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim > 1 or y_pred.ndim > 1:
        raise ShapeError(f"multi-class metrics take 1-D label arrays, got shapes {y_true.shape} and {y_pred.shape}; "
                         f"for (samples, labels) 0/1 arrays use the multilabel_* functions")
    if y_true.shape != y_pred.shape:
        raise ShapeError(f"{y_true.shape[0]} true labels but {y_pred.shape[0]} predictions")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def accuracy(y_true, y_pred):
    y_true, y_pred = _labels(y_true, y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else 0.0


def confusion_matrix(y_true, y_pred, num_classes=None):
    y_true, y_pred = _labels(y_true, y_pred)
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def precision_recall_f1(y_true, y_pred, num_classes=None):
    """Per-class arrays (precision, recall, f1, support)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    true_positive = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return precision, recall, f1, support.astype(np.int64)


def macro_f1(y_true, y_pred, num_classes=None):
    return float(precision_recall_f1(y_true, y_pred, num_classes)[2].mean())


def classification_report(y_true, y_pred, num_classes=None, class_names=None):
    """A JSON-ready dict: accuracy, macro precision/recall/F1, per-class rows, confusion matrix."""
    precision, recall, f1, support = precision_recall_f1(y_true, y_pred, num_classes)
    names = list(class_names) if class_names else [str(i) for i in range(len(f1))]
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {names[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                                 "f1": float(f1[c]), "support": int(support[c])} for c in range(len(f1))},
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(f1)).tolist(),
    }


# ------------------------------------------------------------------------------- multi-label
def _indicators(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ShapeError(f"multi-label metrics take two (samples, labels) arrays of one shape, got {y_true.shape} "
                         f"and {y_pred.shape}")
    if not (np.isin(y_true, (0, 1)).all() and np.isin(y_pred, (0, 1)).all()):
        raise ShapeError("multi-label metrics take 0/1 arrays (threshold the probabilities first)")
    return y_true.astype(bool), y_pred.astype(bool)


def _prf(true_positive, predicted, actual):
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive, dtype=np.float64),
                          where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive, dtype=np.float64), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return precision, recall, f1


def multilabel_report(y_true, y_pred, label_names=None):
    """Per-label, micro and macro precision/recall/F1, subset accuracy and Hamming loss of 0/1
    (samples, labels) arrays, as scikit-learn defines them (zero_division=0)."""
    y_true, y_pred = _indicators(y_true, y_pred)
    true_positive = (y_true & y_pred).sum(axis=0).astype(np.float64)
    predicted, actual = y_pred.sum(axis=0).astype(np.float64), y_true.sum(axis=0).astype(np.float64)
    precision, recall, f1 = _prf(true_positive, predicted, actual)
    micro = _prf(np.array([true_positive.sum()]), np.array([predicted.sum()]), np.array([actual.sum()]))
    names = list(label_names) if label_names else [str(i) for i in range(y_true.shape[1])]
    return {
        "subset_accuracy": float((y_true == y_pred).all(axis=1).mean()),
        "hamming_loss": float((y_true != y_pred).mean()),
        "micro_precision": float(micro[0][0]), "micro_recall": float(micro[1][0]), "micro_f1": float(micro[2][0]),
        "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_label": {names[j]: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                                 "support": int(actual[j])} for j in range(len(names))},
    }


# -------------------------------------------------------------------------------- regression
def regression_report(y_true, y_pred):
    """MAE, RMSE and R^2 (scikit-learn's r2_score, averaged uniformly over output columns)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape:
        raise ShapeError(f"targets of shape {y_true.shape} but predictions of shape {y_pred.shape}")
    y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    error = y_pred - y_true
    total = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    residual = (error ** 2).sum(axis=0)
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.where(residual > 0, 0.0, 1.0))
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())), "r2": float(r2.mean())}


def segmentation_report(y_true, y_pred, num_classes, ignore_index=None):
    """Per-pixel quality of class masks (any shape, one label per pixel): pixel accuracy, each
    class's IoU (intersection over union of predicted and true pixels) and Dice (2|P.T| / (|P| + |T|)),
    and their means over the classes present in the truth or the prediction (a class absent from
    both has no IoU: it is left out of the mean, as in torchmetrics' and mmseg's mIoU). Pixels
    labelled ``ignore_index`` are left out."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if ignore_index is not None:
        keep = y_true != ignore_index
        y_true, y_pred = y_true[keep], y_pred[keep]
    matrix = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    hits = np.diag(matrix)
    truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    union = truth + predicted - hits
    present = union > 0
    iou = np.divide(hits, union, out=np.full(num_classes, np.nan), where=present)
    dice = np.divide(2 * hits, truth + predicted, out=np.full(num_classes, np.nan), where=present)
    total = matrix.sum()
    return {"pixel_accuracy": float(hits.sum() / total) if total else 0.0,
            "mean_iou": float(np.nanmean(iou)) if present.any() else 0.0,
            "mean_dice": float(np.nanmean(dice)) if present.any() else 0.0,
            "iou": [None if np.isnan(v) else round(float(v), 4) for v in iou],
            "dice": [None if np.isnan(v) else round(float(v), 4) for v in dice]}
