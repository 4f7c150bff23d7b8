"""Scenes for dense prediction, built from Fashion-MNIST: 64x64 canvases with 1-4 garments at random
positions and scales, with a per-pixel class mask (0 background, 1 + the garment's class) and a
bounding box with a class per garment.

Deterministic for a seed; the test scenes use the test images only (no garment seen in training
appears in a test scene). Garments are placed so that no two boxes overlap by more than
``MAX_OVERLAP`` (intersection over union): later ones occlude the earlier ones where they do.
"""

import numpy as np

SIZE = 64
MAX_OBJECTS = 4
SCALES = (0.75, 1.5)  # garment size relative to its 28x28 image
MAX_OVERLAP = 0.2
INK = 0.05  # a garment pixel brighter than this (of 1) belongs to its mask
NO_BOX = -1  # the class of an unused box slot


def box_iou(box, boxes):
    """IoU of one [x1, y1, x2, y2] box with each row of ``boxes`` (k, 4)."""
    if len(boxes) == 0:
        return np.zeros(0)
    boxes = np.asarray(boxes, np.float64)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def make_scenes(images, labels, count, seed, size=SIZE, max_objects=MAX_OBJECTS):
    """(images (count, 1, size, size) float32 in [0, 1], masks (count, size, size) int64, boxes
    (count, max_objects, 5) float32 rows [x1, y1, x2, y2, class] in pixels, unused rows class -1)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    canvases = np.zeros((count, 1, size, size), np.float32)
    masks = np.zeros((count, size, size), np.int64)
    boxes = np.full((count, max_objects, 5), NO_BOX, np.float32)
    for scene in range(count):
        placed = []
        for _ in range(rng.integers(1, max_objects + 1)):
            index = int(rng.integers(len(images)))
            scale = rng.uniform(*SCALES)
            garment = np.clip(zoom(images[index].astype(np.float32) / 255.0, scale, order=1), 0.0, 1.0)
            ink = garment > INK
            if not ink.any():
                continue
            rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
            garment, ink = garment[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            h, w = garment.shape
            if h > size or w > size:
                continue
            for _attempt in range(20):
                top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                box = np.array([left, top, left + w, top + h], np.float64)
                if not placed or box_iou(box, [p[:4] for p in placed]).max() <= MAX_OVERLAP:
                    break
            else:
                continue
            window = canvases[scene, 0, top:top + h, left:left + w]
            window[ink] = garment[ink]
            masks[scene, top:top + h, left:left + w][ink] = int(labels[index]) + 1
            placed.append([left, top, left + w, top + h, int(labels[index])])
        boxes[scene, :len(placed)] = placed
    return canvases, masks, boxes


def scene_splits(train_images, train_labels, test_images, test_labels, train_count, test_count, seed):
    """Training scenes from the training images and test scenes from the test images."""
    return (make_scenes(train_images, train_labels, train_count, seed),
            make_scenes(test_images, test_labels, test_count, seed + 1))
