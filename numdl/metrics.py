"""Classification metrics: accuracy, confusion matrix, per-class precision/recall/F1, macro F1.

Conventions follow scikit-learn: rows of the confusion matrix are true classes, columns predicted;
a precision or recall whose denominator is zero is reported as 0.
"""

import numpy as np

from numdl.errors import ShapeError


def _labels(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
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
