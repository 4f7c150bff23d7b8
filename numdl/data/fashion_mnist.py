"""Fashion-MNIST: 60,000 training and 10,000 test images of 28x28 pixels in 10 classes.

Looked for, in order: the ``path`` argument, ``$NUMDL_DATA`` (the folder itself or its
``fashion-mnist`` subfolder), Debian's ``dataset-fashion-mnist`` package, numdl's download cache.
Only if all are absent are the four files downloaded from the dataset's official mirror; each is
checked by the SHA-256 of its decompressed content (so any gzip re-compression of the same data, such
as Debian's, verifies too).
"""

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from numdl.data.idx import read_idx
from numdl.errors import DataError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "numdl" / "fashion-mnist"
# Decoded arrays (.npy) of the compressed files, wherever those were found: a start-up cache.
DECODED_CACHE_DIR = CACHE_DIR / "decoded"

# SHA-256 of the decompressed IDX bytes.
FILES = {
    "train_images": ("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


def _find_in(folder):
    """{key: path} when all four files are in ``folder`` (plain or .gz), else None."""
    found = {}
    for key, (stem, _) in FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def candidate_dirs(path=None):
    if path:
        return [Path(path)]
    dirs = []
    if os.environ.get("NUMDL_DATA"):
        base = Path(os.environ["NUMDL_DATA"])
        dirs += [base, base / "fashion-mnist"]
    return dirs + [DEBIAN_DIR, CACHE_DIR]


def download(folder=CACHE_DIR, opener=urllib.request.urlopen, mirror=MIRROR):
    """Fetch the four files into ``folder``, verifying each before it is kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, sha256 in FILES.values():
        url = f"{mirror}{stem}.gz"
        try:
            with opener(url, timeout=60) as response:
                packed = response.read()
        except (urllib.error.URLError, OSError) as error:
            raise DataError(f"Fashion-MNIST not found locally and downloading {url} failed ({error}); "
                            f"install Debian's dataset-fashion-mnist or put the four IDX files in $NUMDL_DATA") from None
        try:
            digest = hashlib.sha256(gzip.decompress(packed)).hexdigest()
        except (OSError, EOFError):
            digest = "not gzip data"
        if digest != sha256:
            raise DataError(f"{url}: checksum mismatch (SHA-256 {digest}, expected {sha256}); file not kept")
        tmp = folder / f"{stem}.gz.part"
        tmp.write_bytes(packed)
        os.replace(tmp, folder / f"{stem}.gz")
    return folder


def load_fashion_mnist(path=None, allow_download=True):
    """(x_train, y_train, x_test, y_test): uint8 images (n, 28, 28) and uint8 labels (n,)."""
    for folder in candidate_dirs(path):
        found = _find_in(folder)
        if found:
            break
    else:
        if path or not allow_download:
            where = path or ", ".join(str(d) for d in candidate_dirs())
            raise DataError(f"Fashion-MNIST files not found in {where} (need train-images-idx3-ubyte, "
                            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, .gz or not)")
        found = _find_in(download())
    arrays = {key: read_idx(found[key], cache_dir=DECODED_CACHE_DIR) for key in FILES}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


__all__ = ["load_fashion_mnist", "download", "CLASS_NAMES"]
