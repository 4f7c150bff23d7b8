"""PNG output for dense prediction (Pillow, the optional extra ``numdl[image]``): class masks in a
fixed palette, and scenes with their detected boxes drawn and labelled."""

import numpy as np

from numdl.errors import ConfigError

# Background black, then ten distinct colours (Tableau's palette): class k of a mask is PALETTE[k].
PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def pillow():
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise ConfigError("writing images needs Pillow: pip install 'numdl[image]'") from None
    return Image, ImageDraw


def colour(index):
    return PALETTE[index % len(PALETTE)] if index < len(PALETTE) else \
        tuple(int(v) for v in np.random.default_rng(index).integers(40, 256, 3))


def save_mask(path, mask):
    """A (H, W) array of class indices as an RGB PNG (class k in colour(k))."""
    Image, _ = pillow()
    table = np.array([colour(k) for k in range(int(mask.max()) + 1)], np.uint8)
    Image.fromarray(table[np.asarray(mask, np.int64)], "RGB").save(path)


def grey_image(sample):
    """A (1, H, W) or (H, W) sample as 8-bit grey, stretched over its own range."""
    image = np.asarray(sample, np.float64).reshape(np.shape(sample)[-2:])
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (scaled * 255).round().astype(np.uint8)


def save_boxes(path, sample, boxes, labels, scores, names=None, scale=4):
    """The sample with each box drawn in its class's colour and labelled "name score", enlarged
    ``scale`` times (a 64x64 scene is too small to read)."""
    Image, ImageDraw = pillow()
    image = Image.fromarray(grey_image(sample), "L").convert("RGB")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
        tint = colour(int(label) + 1)
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1], outline=tint, width=2)
        name = names[int(label)] if names and int(label) < len(names) else str(int(label))
        draw.text((x1 * scale + 3, y1 * scale + 2), f"{name} {score:.2f}", fill=tint)
    image.save(path)


def image_grid(images, columns=10, gap=2):
    """Images (N, H, W) or (N, 1, H, W), each stretched over its own range as grey_image does, laid out
    row by row in a (rows (H + gap) - gap, columns (W + gap) - gap) uint8 array with black gaps: the
    sample and reconstruction grids of the generative examples (a PNG, or a TensorBoard image)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"image_grid: expected (N, H, W) or (N, 1, H, W) images, got shape {images.shape}")
    count, height, width = images.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap), np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        grid[top:top + height, left:left + width] = grey_image(image)
    return grid


def save_grey(path, image, scale=1):
    """A (H, W) uint8 array as a grey PNG, each pixel drawn as a ``scale`` x ``scale`` block (28-pixel
    images are too small to look at one to one)."""
    Image, _ = pillow()
    image = np.asarray(image, np.uint8)
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(image, "L").save(path)
