"""Registered items beyond layers, losses, optimizers and schedules: datasets, metrics, callbacks.

Each is a class with a unique ``name``, registered through its hook (see numdl/hookspecs.py) and
named in a config: ``data.name``, ``train.metrics = [...]``, ``train.callbacks = [{type = ...}]``.
"""

import json
from pathlib import Path

from numdl import metrics


class Dataset:
    """A named data source. ``load(path)`` returns (x_train, y_train, x_test, y_test) as NumPy
    arrays; ``path`` is the config's ``data.path`` (None when empty). ``class_names`` is optional."""

    name = None
    class_names = None

    def load(self, path):
        raise NotImplementedError


class FashionMNIST(Dataset):
    """Fashion-MNIST's 28x28 images with their class labels, or, with ``data.target = "image"``, the
    images themselves as targets (an autoencoder's): (N, 1, 28, 28) pixels scaled to [0, 1] in the
    model's dtype, whatever data.normalize does to the inputs."""

    name = "fashion_mnist"
    TARGETS = ("labels", "image")

    def __init__(self):
        self.target, self.dtype = "labels", "float32"

    def configure(self, config):
        from numdl.errors import ConfigError

        data = config["data"]
        self.target = data.get("target", "labels")
        self.dtype = config["model"].get("dtype", "float32")
        if self.target not in self.TARGETS:
            raise ConfigError(f"data.target: fashion_mnist gives 'labels' (the default) or 'image' (the images "
                              f"themselves, for autoencoders), got {self.target!r}")
        if self.target == "image" and (data.get("crop_padding", 0) or data.get("horizontal_flip", False)):
            raise ConfigError("data.crop_padding / data.horizontal_flip move the input images but not the "
                              "target images of data.target = 'image'; turn them off for an autoencoder")

    @property
    def class_names(self):
        from numdl.data import CLASS_NAMES

        return CLASS_NAMES

    def load(self, path):
        import numpy as np

        from numdl.data import load_fashion_mnist

        x_train, y_train, x_test, y_test = load_fashion_mnist(path)
        if self.target == "image":
            def as_targets(images):
                return (images.astype(self.dtype) / np.array(255, self.dtype))[:, None]

            return x_train, as_targets(x_train), x_test, as_targets(x_test)
        return x_train, y_train, x_test, y_test


class FashionScenes(Dataset):
    """64x64 scenes of 1-4 Fashion-MNIST garments (numdl.data.scenes): ``data.target = "mask"`` gives
    per-pixel class masks (N, 64, 64) with 11 classes (0 background, 1 + the garment's class) for
    segmentation; ``"boxes"`` gives (N, 4, 5) rows [x1, y1, x2, y2, class] (class -1: no garment)
    for detection. ``data.scenes_train`` / ``data.scenes_test`` set the counts; test scenes are
    made from the test images only."""

    name = "fashion_scenes"
    TARGETS = ("mask", "boxes")

    def __init__(self):
        self.train_count, self.test_count, self.target, self.seed = 12000, 2000, "mask", 0

    @property
    def class_names(self):
        from numdl.data import CLASS_NAMES

        return ["background", *CLASS_NAMES] if self.target == "mask" else list(CLASS_NAMES)

    def configure(self, config):
        from numdl.errors import ConfigError

        data = config["data"]
        self.train_count = data.get("scenes_train", self.train_count)
        self.test_count = data.get("scenes_test", self.test_count)
        self.target = data.get("target", "mask")
        self.seed = config.get("seed", 0)
        if self.target not in self.TARGETS:
            raise ConfigError(f"data.target: fashion_scenes gives 'mask' or 'boxes', got {self.target!r}")
        if self.train_count < 1 or self.test_count < 1:
            raise ConfigError("data.scenes_train and data.scenes_test must be >= 1")

    def load(self, path):
        from numdl.data import load_fashion_mnist
        from numdl.data.scenes import scene_splits

        train_images, train_labels, test_images, test_labels = load_fashion_mnist(path)
        (x_train, m_train, b_train), (x_test, m_test, b_test) = scene_splits(
            train_images, train_labels, test_images, test_labels, self.train_count, self.test_count, self.seed)
        if self.target == "mask":
            return x_train, m_train, x_test, m_test
        return x_train, b_train, x_test, b_test


class TableDataset(Dataset):
    """CSV or Parquet tables (``data.name = "table"``): ``data.path`` (or separate train/validation/
    test files), ``data.target``, optional ``data.features`` and ``data.categorical``; split,
    imputed, scaled and encoded per column by numdl.data.table, the fitted steps saved with the
    model. A dataset that prepares its splits itself implements ``load_prepared(config)`` returning
    ({"train": (x, y), "test": ..., "validation": ...}, JSON state for checkpoints)."""

    name = "table"

    def load(self, path):
        from numdl.errors import ConfigError

        raise ConfigError("the table dataset is read through its config (data.path, data.target)")

    def load_prepared(self, config):
        from numdl.data.table import load_table_splits

        return load_table_splits(config)


class Metric:
    """A named metric, listed in ``train.metrics`` and reported after every epoch for each
    evaluation set as ``<set>_<name>``.

    Implement ``compute(y_true, y_pred, scores, num_classes) -> float``: ``y_true`` the labels (N,),
    ``y_pred`` the predicted classes (N,), ``scores`` the class probabilities (N, num_classes) (the
    softmax of the model's outputs: what top-k accuracy, AUC or log-loss need). ``higher_is_better``
    tells ``train.monitor`` and early stopping which way is better (a loss-like metric sets False).
    Calling the metric, ``metric(y_true, y_pred, num_classes, scores=None)``, returns ``compute``'s
    value as a float.
    """

    name = None
    higher_is_better = True

    def compute(self, y_true, y_pred, scores, num_classes):
        raise NotImplementedError(f"metric {self.name!r} implements no compute(y_true, y_pred, scores, num_classes)")

    def __call__(self, y_true, y_pred, num_classes, scores=None):
        return float(self.compute(y_true, y_pred, scores, num_classes))

    @classmethod
    def implemented(cls):
        return cls.compute is not Metric.compute


class MacroF1(Metric):
    name = "macro_f1"

    def compute(self, y_true, y_pred, scores, num_classes):
        return metrics.macro_f1(y_true, y_pred, num_classes)


class MacroPrecision(Metric):
    name = "macro_precision"

    def compute(self, y_true, y_pred, scores, num_classes):
        return float(metrics.precision_recall_f1(y_true, y_pred, num_classes)[0].mean())


class MacroRecall(Metric):
    name = "macro_recall"

    def compute(self, y_true, y_pred, scores, num_classes):
        return float(metrics.precision_recall_f1(y_true, y_pred, num_classes)[1].mean())


class Callback:
    """A named training callback, configured in ``train.callbacks``. Implement any of
    ``on_epoch_begin(epoch, model)``, ``on_batch_end(batch, logs)``, ``on_epoch_end(epoch, logs)``;
    ``bind(model, run_folder)`` is called once before training."""

    name = None

    def bind(self, model, run_folder):
        self.model, self.run_folder = model, Path(run_folder)


class CSVLogger(Callback):
    """Writes ``metrics.csv`` in the run folder: one row per epoch (the keys of the first epoch)."""

    name = "csv_logger"

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self._columns = None

    def on_epoch_end(self, epoch, logs):
        path = self.run_folder / self.filename
        if self._columns is None:
            self._columns = list(logs)
            path.write_text(",".join(self._columns) + "\n")
        with path.open("a") as f:
            f.write(",".join(json.dumps(logs.get(c)) for c in self._columns) + "\n")


BUILTIN_DATASETS = (FashionMNIST, TableDataset, FashionScenes)
BUILTIN_METRICS = (MacroF1, MacroPrecision, MacroRecall)
BUILTIN_CALLBACKS = (CSVLogger,)
