"""Detection: numdl's mean average precision against pycocotools' COCOeval on the same predictions,
the CenterNet targets and decoding round trip, and the loss's gradients."""

import numpy as np
import pytest

from numdl import detection
from numdl.losses import CenterNetLoss
from numdl.testing import check_loss_gradients


def _random_case(rng, images=12, classes=4):
    """Ground truth (images, 5, 5) boxes and noisy detections of them plus false alarms."""
    truth = np.full((images, 5, 5), -1.0)
    detections = []
    for i in range(images):
        count = rng.integers(0, 6)
        corners = rng.uniform(0, 50, (count, 2))
        sizes = rng.uniform(4, 20, (count, 2))
        labels = rng.integers(0, classes - 1, count)  # the last class never has ground truth
        truth[i, :count] = np.column_stack([corners, corners + sizes, labels])
        found = rng.random(count) < 0.8
        jitter = rng.normal(0, 2.5, (count, 4))
        boxes = np.column_stack([corners, corners + sizes])[found] + jitter[found]
        labels_found = np.where(rng.random(count) < 0.85, labels, rng.integers(0, classes, count))[found]
        extra = rng.integers(0, 4)
        extra_corner = rng.uniform(0, 50, (extra, 2))
        boxes = np.vstack([boxes, np.column_stack([extra_corner, extra_corner + rng.uniform(3, 15, (extra, 2))])])
        labels_all = np.concatenate([labels_found, rng.integers(0, classes, extra)]).astype(np.int64)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        scores = rng.random(len(boxes))
        order = np.argsort(-scores)
        detections.append((boxes[order], scores[order], labels_all[order]))
    return truth, detections


def _cocoeval(truth, detections, classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (image_truth, (boxes, scores, labels)) in enumerate(zip(truth, detections)):
        images.append({"id": i, "width": 64, "height": 64})
        for x1, y1, x2, y2, label in image_truth[image_truth[:, 4] >= 0]:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            results.append({"image_id": i, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    ground = COCO()
    ground.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c, "name": str(c)} for c in range(classes)]}
    ground.createIndex()
    evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_average_precision_equals_pycocotools(seed, capsys):
    pytest.importorskip("pycocotools")
    truth, detections = _random_case(np.random.default_rng(seed))
    ours = detection.mean_average_precision(detections, truth, 4)
    stats = _cocoeval(truth, detections, 4)
    assert ours["map"] == pytest.approx(stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(stats[1], abs=1e-6)
    assert ours["ap50"][3] is None  # no ground truth of the last class: no AP, as COCO's -1
    assert 0.05 < ours["map50"] < 0.99


def test_perfect_maps_decode_to_the_true_boxes():
    rng = np.random.default_rng(0)
    truth = np.full((3, 4, 5), -1.0)
    truth[0, :2] = [[4, 6, 24, 30, 1], [36, 30, 60, 62, 0]]
    truth[1, :1] = [[10, 10, 30, 22, 2]]
    truth[2, :3] = [[0, 0, 20, 20, 0], [40, 0, 64, 28, 0], [20, 36, 48, 64, 1]]
    heat, regression, index = detection.centernet_targets(truth, 3, 16, 16, 4, np.float64)
    outputs = np.zeros((3, 7, 256))
    outputs[:, :3] = np.where(heat >= 1, 6.0, -6.0 + heat)  # logits: sure at centres, low elsewhere
    for n, k in zip(*np.nonzero(index >= 0)):
        outputs[n, 3:, index[n, k]] = regression[n, k]
    found = detection.decode(outputs.reshape(3, 7, 16, 16) + 0 * rng.random(), stride=4)
    for (boxes, scores, labels), image_truth in zip(found, truth):
        real = image_truth[image_truth[:, 4] >= 0]
        assert len(boxes) == len(real)
        for box, label in zip(real[:, :4], real[:, 4]):
            match = np.abs(boxes - box).max(axis=1).argmin()
            np.testing.assert_allclose(boxes[match], box, atol=1e-9)
            assert labels[match] == label
    result = detection.mean_average_precision(found, truth, 3)
    assert result["map50"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)


def test_centernet_loss_gradients_and_bad_boxes():
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((2, 7, 5, 6))
    boxes = np.array([[[1, 2, 9, 10, 0], [10, 3, 20, 19, 2], [-1] * 5], [[4, 4, 12, 8, 1], [-1] * 5, [-1] * 5]], float)
    loss = CenterNetLoss(stride=4)
    check_loss_gradients(loss, pred, boxes)
    assert set(loss.terms) == {"focal", "size", "offset"}
    with pytest.raises(Exception, match="classes must be integers in \\[0, 3\\)"):
        loss.forward(pred, np.array([[[1, 2, 9, 10, 3]]] * 2, float))
    with pytest.raises(Exception, match="x2 <= x1"):
        loss.forward(pred, np.array([[[9, 2, 1, 10, 0]]] * 2, float))
