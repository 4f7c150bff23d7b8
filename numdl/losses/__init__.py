"""Loss classes. ``forward(pred, target)`` returns the loss as a float and keeps what ``backward()``
needs; ``backward()`` returns the gradient with respect to ``pred``. Targets are validated here, at
the boundary, before any kernel reads them."""

import numpy as np

from numdl.backend import ops_for
from numdl.errors import ConfigError, DataError, ShapeError

REDUCTIONS = ("mean", "sum")


class Loss:
    #: The name a config uses (``[loss] type = "..."``).
    name = None
    #: "labels" when targets are class indices (accuracy is then reported), else "values".
    target_kind = "values"

    def __init__(self, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"{self.name}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.ops = None
        self._buffers = {}

    def buffer(self, key, shape, dtype):
        array = self._buffers.get(key)
        if array is None or tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            array = self._buffers[key] = self.ops.empty(tuple(shape), dtype)
        return array

    def forward(self, pred, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def hyperparameters(self):
        return {"reduction": self.reduction}


class CrossEntropy(Loss):
    """Softmax cross-entropy on raw logits (PyTorch's ``nn.CrossEntropyLoss``), fused in one kernel.

    ``weight`` gives per-class weights (the mean divides by the summed weights of the targets, as in
    PyTorch); ``label_smoothing`` mixes the one-hot target with the uniform distribution.
    """

    name = "cross_entropy"
    target_kind = "labels"

    def __init__(self, weight: list[float] | None = None, label_smoothing: float = 0.0,
                 reduction: str = "mean", class_weight: str | None = None):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        if weight is not None and (len(weight) == 0 or min(weight) < 0):
            raise ConfigError("cross_entropy: weight must be a non-empty list of non-negative numbers")
        if class_weight not in (None, "balanced"):
            raise ConfigError(f"cross_entropy: class_weight must be 'balanced' (explicit weights go in weight), "
                              f"got {class_weight!r}")
        if class_weight is not None and weight is not None:
            raise ConfigError("cross_entropy: give weight or class_weight = 'balanced', not both")
        # class_weight = "balanced": numdl train sets weight from the training labels' counts
        # (n / (classes * count), scikit-learn's rule) before the first step.
        self.weight, self.label_smoothing, self.class_weight = weight, label_smoothing, class_weight

    def hyperparameters(self):
        return {"weight": None if self.class_weight else self.weight, "label_smoothing": self.label_smoothing,
                "reduction": self.reduction, "class_weight": self.class_weight}

    def forward(self, logits, labels):
        """logits (N, C) with labels (N,), or per-step logits (N, T, C) with labels (N, T)."""
        self.ops = ops_for(logits)
        self._shape = tuple(logits.shape)
        if len(logits.shape) == 3:
            labels = np.asarray(labels)
            if labels.shape != self._shape[:2]:
                raise ShapeError(f"labels have shape {labels.shape} but the logits need {self._shape[:2]}")
            logits = logits.reshape(self._shape[0] * self._shape[1], self._shape[2])
            labels = labels.reshape(-1)
        if len(logits.shape) != 2:
            raise ShapeError(f"cross_entropy expects logits (batch, classes) or (batch, time, classes) but got "
                             f"{self._shape}")
        n, classes = logits.shape
        labels = validate_labels(labels, n, classes)
        dtype = logits.dtype
        if self.weight is not None and len(self.weight) != classes:
            raise ShapeError(f"cross_entropy: weight has {len(self.weight)} entries but the logits have "
                             f"{classes} classes")
        self._class_weights = self._weights_on_device(classes, dtype)
        self._labels = self.ops.asarray(labels)
        sample_loss = self.buffer("sample_loss", (n,), dtype)
        sample_weight = self.buffer("sample_weight", (n,), dtype)
        self._probs = self.buffer("probs", (n, classes), dtype)
        self.ops.cross_entropy_forward(sample_loss, sample_weight, self._probs, logits, self._labels,
                                       self._class_weights, self.label_smoothing)
        total = self.ops.sum(sample_loss)
        if self.reduction == "mean":
            # PyTorch: a weighted mean divides by the sum of the targets' weights.
            norm = self.ops.sum(sample_weight) if self.weight is not None else float(n)
            self._scale = 1.0 / norm if norm > 0 else 0.0
            return total * self._scale
        self._scale = 1.0
        return total

    def _weights_on_device(self, classes, dtype):
        # Made once per (weights, classes, dtype), not per step.
        key = (None if self.weight is None else tuple(self.weight), classes, dtype, self.ops.name)
        if self._buffers.get("class_weights_key") != key:
            host_weights = np.ones(classes) if self.weight is None else np.asarray(self.weight)
            self._buffers["class_weights_key"] = key
            self._buffers["class_weights"] = self.ops.asarray(host_weights, dtype=dtype)
        return self._buffers["class_weights"]

    def backward(self):
        dlogits = self.buffer("dlogits", self._probs.shape, self._probs.dtype)
        self.ops.cross_entropy_backward(dlogits, self._probs, self._labels, self._class_weights,
                                        self.label_smoothing, self._scale)
        return dlogits.reshape(self._shape)


class _ElementwiseLoss(Loss):
    """Losses that are a sum of per-element terms over predictions and same-shaped targets."""

    kernel = None

    def forward(self, pred, target):
        self.ops = ops_for(pred)
        target = self.ops.asarray(target, dtype=pred.dtype)
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(f"{self.name}: predictions have shape {tuple(pred.shape)} but targets have "
                             f"shape {tuple(target.shape)}")
        self._pred, self._target = pred, target
        self._scale = 1.0 / pred.size if self.reduction == "mean" else 1.0
        return self.ops.elementwise_loss_forward(self.kernel, pred, target, *self.kernel_params()) * self._scale

    def backward(self):
        dpred = self.buffer("dpred", self._pred.shape, self._pred.dtype)
        self.ops.elementwise_loss_backward(self.kernel, dpred, self._pred, self._target, self._scale,
                                           *self.kernel_params())
        return dpred

    def kernel_params(self):
        """Scalars the element kernels take after their arrays (Huber's delta)."""
        return ()


class MSE(_ElementwiseLoss):
    """Mean squared error (PyTorch's ``nn.MSELoss``)."""

    name = kernel = "mse"


class MAE(_ElementwiseLoss):
    """Mean absolute error (PyTorch's ``nn.L1Loss``; gradient sign(pred - target), 0 at a tie)."""

    name = kernel = "mae"


class Huber(_ElementwiseLoss):
    """Huber loss (PyTorch's ``nn.HuberLoss``): 0.5 d^2 for |d| < delta, else delta (|d| - delta / 2);
    quadratic near the target, linear (robust to outliers) far from it."""

    name = kernel = "huber"

    def __init__(self, delta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if not delta > 0:
            raise ConfigError(f"huber: delta must be > 0, got {delta}")
        self.delta = delta

    def hyperparameters(self):
        return {"delta": self.delta, "reduction": self.reduction}

    def kernel_params(self):
        return (self.delta,)


class BCEWithLogits(_ElementwiseLoss):
    """Binary cross-entropy on logits, for binary and multi-label targets in [0, 1]
    (PyTorch's ``nn.BCEWithLogitsLoss``), computed in the overflow-free form."""

    name = kernel = "bce_with_logits"

    def forward(self, pred, target):
        host = np.asarray(target) if isinstance(target, np.ndarray) else None
        if host is not None and host.size and (host.min() < 0 or host.max() > 1):
            raise DataError(f"bce_with_logits: targets must lie in [0, 1], got values in "
                            f"[{host.min()}, {host.max()}]")
        return super().forward(pred, target)


def validate_labels(labels, n, classes):
    """Class labels as a contiguous int64 host array, checked against the batch and class count."""
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2) or labels.shape[0] != n:
        raise ShapeError(f"labels have shape {labels.shape} but the batch needs ({n},) or ({n}, steps)")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise DataError(f"label {bad} is outside [0, {classes}) for a model with {classes} outputs")
    return np.ascontiguousarray(labels, dtype=np.int64)


BUILTIN_LOSSES = (CrossEntropy, MSE, MAE, Huber, BCEWithLogits)
