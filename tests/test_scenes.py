"""Fashion-MNIST scenes (numdl.data.scenes) and the dense-prediction workflow end to end: a small
U-Net and a small detector trained by `numdl train`, then `numdl eval` and `numdl predict` with
mask PNGs and drawn boxes, and bad input to the new options."""

import json

import numpy as np
import pytest
from helpers import invoke_cli, separable_images, write_fashion_like

from numdl.data.scenes import MAX_OBJECTS, make_scenes
from numdl.metrics import segmentation_report


def test_scenes_are_seeded_and_masks_boxes_and_classes_agree():
    images, labels = separable_images(50, 0)
    x, masks, boxes = make_scenes(images, labels, 40, seed=3)
    again = make_scenes(images, labels, 40, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((x, masks, boxes), again))
    assert x.shape == (40, 1, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert masks.shape == (40, 64, 64) and boxes.shape == (40, MAX_OBJECTS, 5)
    counts = (boxes[:, :, 4] >= 0).sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= MAX_OBJECTS and len(set(counts)) > 1
    for scene in range(40):
        present = set(np.unique(masks[scene])) - {0}
        boxed = {int(c) + 1 for c in boxes[scene, :, 4] if c >= 0}
        assert present <= boxed  # every labelled pixel belongs to a boxed garment (occlusion may hide one)
        for x1, y1, x2, y2, c in boxes[scene][boxes[scene, :, 4] >= 0]:
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        outside = np.ones((64, 64), bool)
        for x1, y1, x2, y2, _ in boxes[scene][boxes[scene, :, 4] >= 0].astype(int):
            outside[y1:y2, x1:x2] = False
        assert (masks[scene][outside] == 0).all() and (x[scene, 0][outside] == 0).all()


def test_segmentation_report_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    predicted = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    report = segmentation_report(truth, predicted, 4, ignore_index=255)
    # the ignored pixel left out, class 0: hit 1, truth 2, predicted 2 -> IoU 1/3; class 1: hit 2, truth 2,
    # predicted 3 -> 2/3; class 2: hit 2, truth 3, predicted 2 -> 2/3; class 3 absent: left out
    assert report["iou"] == [round(1 / 3, 4), round(2 / 3, 4), round(2 / 3, 4), None]
    assert report["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert report["pixel_accuracy"] == pytest.approx(5 / 7)
    assert report["dice"][0] == pytest.approx(2 / 4)


UNET = ("[{name='e', type='conv2d', out_channels=4, kernel_size=3, padding=1, inputs=['input']}, "
        "{name='a', type='relu'}, {name='p', type='maxpool2d', kernel_size=2}, "
        "{name='m', type='conv2d', out_channels=8, kernel_size=3, padding=1, activation='relu'}, "
        "{name='u', type='upsample', scale_factor=2, mode='bilinear'}, {name='s', type='concat', inputs=['u', 'a']}, "
        "{name='logits', type='conv2d', out_channels=11, kernel_size=1}]")
DETECTOR = ("[{name='e', type='conv2d', out_channels=8, kernel_size=3, padding=1, activation='relu', "
            "inputs=['input']}, {name='p', type='maxpool2d', kernel_size=4}, "
            "{name='h', type='conv2d', out_channels=8, kernel_size=3, padding=1, activation='relu'}, "
            "{name='heat', type='conv2d', out_channels=10, kernel_size=1, bias_init='rare_class_prior', inputs=['h']}, "
            "{name='box', type='conv2d', out_channels=4, kernel_size=1, inputs=['h']}, "
            "{name='maps', type='concat', inputs=['heat', 'box']}]")


def _train(tmp_path, name, nodes, target, loss):
    data = write_fashion_like(tmp_path / "data", n_train=200, n_test=60)
    run = tmp_path / name
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", "data.name='fashion_scenes'",
                        "--set", f"data.target='{target}'", "--set", "data.scenes_train=64",
                        "--set", "data.scenes_test=16", "--set", "data.normalize='none'", "--set", "train.epochs=2",
                        "--set", "train.batch_size=16", "--set", "train.eval_batch_size=8",
                        "--set", f"model.nodes={nodes}", "--set", f"loss={loss}", "--out", run)
    assert result.exit_code == 0, result.output
    scenes = make_scenes(*separable_images(20, 5), 3, seed=1)[0]
    np.save(tmp_path / "scenes.npy", scenes[:, 0])
    return run, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pixel_accuracy_counts_as_numpy_argmax_does():
    # The training step's per-pixel count of correct predictions goes through a kernel
    # (segmentation.pixel_argmax); it must count what NumPy's argmax over the class axis does,
    # ties to the first class, without the ignored pixels.
    from numdl.backend import get_ops
    from numdl.losses import PixelCrossEntropy
    from numdl.model import _count_correct

    rng = np.random.default_rng(3)
    logits = rng.integers(-2, 3, (3, 5, 7, 6)).astype(np.float32)  # small integers: many ties
    labels = rng.integers(0, 5, (3, 7, 6))
    labels[0, :2] = -100
    loss = PixelCrossEntropy(ignore_index=-100)
    right = (logits.argmax(axis=1) == labels) & (labels != -100)
    assert _count_correct(get_ops("cpu"), logits, labels, 1, loss) == right.sum() > 0


def test_a_unet_trains_reports_iou_evaluates_and_writes_mask_pngs(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    run, epochs = _train(tmp_path, "unet", UNET, "mask", "{type='pixel_cross_entropy', dice_weight=0.5}")
    assert {"test_mean_iou", "test_pixel_accuracy", "test_mean_dice", "test_iou"} <= set(epochs[-1])
    assert 0 <= epochs[-1]["test_mean_iou"] <= 1 and len(epochs[-1]["test_iou"]) == 11
    summary = json.loads((run / "summary.json").read_text())
    assert summary["report"]["segmentation"]["mean_iou"] == pytest.approx(epochs[-1]["test_mean_iou"])
    checkpoint = run / "checkpoints" / "latest.safetensors"
    result = invoke_cli("eval", checkpoint)
    assert result.exit_code == 0 and "mean_iou" in result.output
    result = invoke_cli("predict", checkpoint, tmp_path / "scenes.npy", "--masks", tmp_path / "masks")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("index,pixels_background,pixels_T-shirt/top") and len(lines) == 4
    assert sum(int(v) for v in lines[1].split(",")[1:]) == 64 * 64
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (64, 64)
    bad = invoke_cli("predict", checkpoint, tmp_path / "scenes.npy", "--draw", tmp_path / "boxes")
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == \
        [f"error: --draw is for detection models; {checkpoint} is neither"]


def test_a_detector_trains_reports_map_and_draws_its_boxes(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    run, epochs = _train(tmp_path, "det", DETECTOR, "boxes", "{type='centernet', stride=4}")
    assert {"test_map50", "test_map", "test_ap50"} <= set(epochs[-1]) and 0 <= epochs[-1]["test_map50"] <= 1
    checkpoint = run / "checkpoints" / "latest.safetensors"
    result = invoke_cli("eval", checkpoint)
    assert result.exit_code == 0 and "map50" in result.output
    result = invoke_cli("predict", checkpoint, tmp_path / "scenes.npy", "--draw", tmp_path / "boxes")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "index,class,name,score,x1,y1,x2,y2"
    for line in lines[1:]:
        index, label, name, score, *box = line.split(",")
        assert 0 <= int(index) < 3 and 0 <= int(label) < 10 and 0 < float(score) <= 1
    pngs = sorted((tmp_path / "boxes").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (256, 256)


def test_a_detection_stride_that_does_not_match_the_map_is_a_config_error(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=100, n_test=20)
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", "data.name='fashion_scenes'",
                        "--set", "data.target='boxes'", "--set", "data.scenes_train=16", "--set", "data.scenes_test=8",
                        "--set", f"model.nodes={DETECTOR}", "--set", "loss={type='centernet', stride=2}",
                        "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.output.strip() == "error: loss.stride = 2: the model maps 64x64 inputs to 16x16 maps, a stride of " \
                                    "4; the loss needs input size = map size x stride"
