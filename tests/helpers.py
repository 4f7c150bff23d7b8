"""Small synthetic data the tests write themselves (no download, no Debian package needed)."""

import numpy as np

from numdl.data import write_idx

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def separable_images(n, seed, size=28, classes=10):
    """uint8 images whose class is written in their brightness pattern: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.int64)
    band = size // classes
    for i, label in enumerate(labels):
        images[i, :, label * band:(label + 1) * band] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_like(folder, n_train=600, n_test=200, gz=True):
    """The four Fashion-MNIST files, with synthetic content, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = separable_images(n_train, 0)
    x_test, y_test = separable_images(n_test, 1)
    suffix = ".gz" if gz else ""
    for stem, array in zip(STEMS, (x_train, y_train, x_test, y_test)):
        write_idx(folder / f"{stem}{suffix}", array)
    return folder


def invoke_cli(*args):
    """Run the numdl command in-process (click's test runner): arguments are str()-ed; an exception
    other than the command's own exit propagates, so a traceback fails the test."""
    from click.testing import CliRunner

    from numdl.cli import cli

    result = CliRunner().invoke(cli, list(map(str, args)))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result
