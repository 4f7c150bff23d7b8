import numpy as np
import pytest

from numdl import metrics


def test_metrics_on_a_hand_checked_example():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    matrix = metrics.confusion_matrix(y_true, y_pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    precision, recall, f1, support = metrics.precision_recall_f1(y_true, y_pred, 3)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(recall, [1 / 2, 1.0, 2 / 3])
    np.testing.assert_allclose(f1, [0.5, 0.8, 0.8])
    assert support.tolist() == [2, 2, 3]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(5 / 7)
    assert metrics.macro_f1(y_true, y_pred, 3) == pytest.approx(0.7)


def test_absent_class_scores_zero_not_nan():
    precision, recall, f1, support = metrics.precision_recall_f1([0, 0], [0, 0], 3)
    assert np.isfinite(precision).all() and f1.tolist() == [1.0, 0.0, 0.0] and support.tolist() == [2, 0, 0]


def test_report_is_json_ready():
    import json

    report = metrics.classification_report([0, 1, 1], [0, 1, 0], 2, ["cat", "dog"])
    assert json.loads(json.dumps(report))["per_class"]["dog"]["recall"] == 0.5
    assert report["confusion_matrix"] == [[1, 0], [1, 1]]
