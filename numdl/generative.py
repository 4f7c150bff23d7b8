"""Numbers for generated Fashion-MNIST images: Frechet distance (FID) and kernel inception distance
(KID) on the features of a numdl classifier trained on Fashion-MNIST, and the classes it sees.

FID and KID compare two sets of images through a network's features: FID the Gaussians fitted to
them, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); KID the squared maximum mean discrepancy with
the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated without bias and averaged over
random subsets (Binkowski et al., 2018; the estimator of torch-fidelity and clean-fid). For photos
both use Inception-v3's ImageNet features; for 28x28 garments a network trained on them is the
practice (as the MNIST literature does). numdl's is ``features.toml`` (a small CNN, 0.91 test accuracy),
its features the 128 activations before the class layer; the figures are therefore on numdl's own
scale, comparable between numdl runs, not with published ImageNet-feature FIDs.

The weights are trained once (``feature_checkpoint`` trains them when its folder has none) and
reused from then on.
"""

import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from numdl.errors import DataError

IMAGE_SHAPE = (28, 28)


def default_folder():
    """Where the feature network's run folder lives: numdl's cache folder ($XDG_CACHE_HOME/numdl or
    ~/.cache/numdl)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "numdl" / "features" / "fashion_mnist"


def train_feature_network(folder, data_path=None, on_line=print):
    """Train the feature network from the shipped ``features.toml`` into the run folder ``folder``;
    returns its best checkpoint."""
    from numdl import config as config_module
    from numdl import train as train_module

    overrides = [] if data_path is None else [f"data.path={str(data_path)!r}"]
    with resources.as_file(resources.files("numdl").joinpath("features.toml")) as path:
        config = config_module.resolve(path, overrides)
    train_module.run(config, folder, on_line=on_line)
    return Path(folder) / "checkpoints" / "best.safetensors"


def feature_checkpoint(folder=None, data_path=None, on_line=print):
    """The feature network's checkpoint in ``folder`` (default: default_folder()), trained first if
    the folder holds none."""
    folder = Path(folder) if folder is not None else default_folder()
    checkpoint = folder / "checkpoints" / "best.safetensors"
    if checkpoint.is_file():
        return checkpoint
    on_line(f"training the feature network once (numdl/features.toml) into {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Trained beside the folder and moved into place when done: an interrupted training leaves no
    # half-trained network to be reused as if it were the real one.
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    train_feature_network(partial, data_path, on_line)
    try:
        partial.rename(folder)
    except OSError:  # another process finished first: use its network
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return checkpoint


class FeatureNetwork:
    """A trained classifier read as a feature extractor: ``features`` are the activations entering
    its last layer, ``classify`` its predicted classes. Images come as the training data did (for
    Fashion-MNIST, pixels 0-255, shape (N, 28, 28) or (N, 1, 28, 28))."""

    def __init__(self, checkpoint):
        import numdl
        from numdl.data import Normalizer

        self.model, meta = numdl.load_model(checkpoint, reset_optimizer=True, with_meta=True)
        if getattr(self.model, "layers", None) is None or len(self.model.layers) < 2:
            raise DataError(f"{checkpoint}: a feature network is a Sequential classifier (features enter its last layer)")
        if "normalization" not in meta:
            raise DataError(f"{checkpoint} does not record its input normalisation (not written by numdl train)")
        self.normalizer = Normalizer.from_state(meta["normalization"], meta["config"]["model"]["dtype"])
        self.input_range = self.normalizer.input_range
        self.dtype = np.dtype(meta["config"]["model"]["dtype"])
        from numdl.train import dataset_class_names

        classes = self.model.output_shape[-1]
        names = dataset_class_names(meta["config"])
        self.class_names = names if names and len(names) == classes else [str(i) for i in range(classes)]

    def _batches(self, images, batch_size):
        images = check_images(images, "images")
        for begin in range(0, len(images), batch_size):
            x = self.normalizer.transform(np.asarray(images[begin:begin + batch_size], np.float64).reshape(
                (-1,) + IMAGE_SHAPE))
            yield self.model.ops.asarray(np.ascontiguousarray(x, self.dtype))

    def features(self, images, batch_size=500):
        """(N, D) float64 features of ``images``."""
        out = []
        for x in self._batches(images, batch_size):
            for layer in self.model.layers[:-1]:
                x = layer.forward(x, False)
            out.append(np.asarray(self.model.ops.to_numpy(x), np.float64).reshape(len(x), -1))
        return np.concatenate(out)

    def classify(self, images, batch_size=500):
        """(N,) predicted classes of ``images``."""
        return np.concatenate([np.asarray(self.model.ops.to_numpy(self.model.forward(x))).argmax(axis=1)
                               for x in self._batches(images, batch_size)])


def check_images(images, source):
    """``images`` as (N, 28, 28) or (N, 1, 28, 28) finite numbers, or one clear DataError."""
    images = np.asarray(images)
    if images.dtype.kind not in "fiub":
        raise DataError(f"{source}: holds {images.dtype} values, not pixel numbers")
    shape = tuple(images.shape)
    if not (images.ndim in (3, 4) and shape[-2:] == IMAGE_SHAPE and (images.ndim == 3 or shape[1] == 1)):
        raise DataError(f"{source}: expected images of shape (N, 28, 28) or (N, 1, 28, 28), got {shape}")
    if len(images) < 2:
        raise DataError(f"{source}: {len(images)} image(s); the statistics need at least 2 (thousands, to mean much)")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"{source}: holds NaN or infinite values")
    return images.reshape((-1,) + IMAGE_SHAPE)


def feature_statistics(features):
    """(mean, covariance) of (N, D) features: the Gaussian FID fits (unbiased covariance, as np.cov)."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(features_a, features_b):
    """FID between two sets of features: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)),
    with SciPy's matrix square root (offset by 1e-6 I, as pytorch-fid does, when the product is
    singular and the root comes out non-finite)."""
    from scipy import linalg

    mu_a, sigma_a = feature_statistics(features_a)
    mu_b, sigma_b = feature_statistics(features_b)
    with warnings.catch_warnings():
        # features that never fire (dead ReLU units) make the product singular: SciPy warns, and
        # its root is still the right one (checked in the tests), or non-finite and redone below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(root).all():
            offset = np.eye(len(sigma_a)) * 1e-6
            root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    root = np.real(root)  # the imaginary part is rounding error for covariance products
    difference = mu_a - mu_b
    return float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root))


def kernel_inception_distance(features_a, features_b, subsets=100, subset_size=1000, seed=0):
    """KID: (mean, standard deviation) over ``subsets`` random subsets of ``subset_size`` samples of
    each set (fewer when a set is smaller) of the unbiased squared MMD with the kernel
    (x.y / d + 1)^3."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise DataError("KID needs at least 2 samples in each set")
    dimension = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        within = (x @ x.T / dimension + 1) ** 3 + (y @ y.T / dimension + 1) ** 3
        between = (x @ y.T / dimension + 1) ** 3
        values[index] = ((within.sum() - np.diag(within).sum()) / (size - 1) - between.sum() * 2 / size) / size
    return float(values.mean()), float(values.std())


def evaluate_samples(network, samples, reference, subsets=100, subset_size=1000, seed=0):
    """FID, KID (mean and std) of ``samples`` against ``reference`` images through ``network``, and
    the share of the samples the network puts in each class."""
    features_samples = network.features(samples)
    features_reference = network.features(reference)
    kid, kid_std = kernel_inception_distance(features_samples, features_reference, subsets, subset_size, seed)
    classes = network.model.output_shape[-1]
    counts = np.bincount(network.classify(samples), minlength=classes)
    return {"samples": int(len(features_samples)), "reference": int(len(features_reference)),
            "fid": frechet_distance(features_samples, features_reference), "kid": kid, "kid_std": kid_std,
            "kid_subsets": subsets, "kid_subset_size": min(subset_size, len(features_samples), len(features_reference)),
            "class_names": network.class_names, "class_shares": (counts / counts.sum()).tolist()}


def latent_layer_index(model):
    """The index in ``model.layers`` of its GaussianSample layer (a VAE's code), or None."""
    from numdl.layers.latent import GaussianSample

    found = [i for i, layer in enumerate(getattr(model, "layers", None) or []) if isinstance(layer, GaussianSample)]
    return found[0] if len(found) == 1 else None


def decode(model, codes, batch_size=500):
    """A Sequential VAE's decoder run on ``codes`` (N, L): the outputs of the layers after its
    GaussianSample, in evaluation mode (a sample from the model: codes drawn from N(0, I))."""
    index = latent_layer_index(model)
    if index is None:
        raise DataError("decode needs a Sequential model with one gaussian_sample layer (a VAE)")
    latent = model.layers[index].output_shape
    codes = np.asarray(codes)
    if codes.ndim != 2 or tuple(codes.shape[1:]) != tuple(latent):
        raise DataError(f"decode: codes must have shape (N, {latent[0]}), got {codes.shape}")
    out = []
    for begin in range(0, len(codes), batch_size):
        h = model.ops.asarray(np.ascontiguousarray(codes[begin:begin + batch_size], model.dtype))
        for layer in model.layers[index + 1:]:
            h = layer.forward(h, False)
        out.append(np.array(model.ops.to_numpy(h)))
    return np.concatenate(out)
