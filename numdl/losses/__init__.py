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

    #: The reductions the loss offers.
    reductions = REDUCTIONS

    def __init__(self, reduction: str = "mean"):
        if reduction not in self.reductions:
            raise ConfigError(f"{self.name}: reduction must be one of {', '.join(self.reductions)}, got {reduction!r}")
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
    """Losses that are a sum of per-element terms over predictions and same-shaped targets, reduced
    by ``mean`` (over every element), ``sum``, or ``batchmean``: summed over each sample's elements,
    averaged over the samples (PyTorch's KLDivLoss reduction; a VAE's reconstruction term, whose
    scale must match the KL term's, summed over the latent dimensions)."""

    kernel = None
    reductions = REDUCTIONS + ("batchmean",)

    def forward(self, pred, target):
        self.ops = ops_for(pred)
        target = self.ops.asarray(target, dtype=pred.dtype)
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(f"{self.name}: predictions have shape {tuple(pred.shape)} but targets have "
                             f"shape {tuple(target.shape)}")
        self._pred, self._target = pred, target
        self._scale = {"mean": 1.0 / max(pred.size, 1), "batchmean": 1.0 / max(pred.shape[0], 1)}.get(
            self.reduction, 1.0)
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


class PixelCrossEntropy(Loss):
    """Cross-entropy of (N, C, H, W) logits against (N, H, W) class labels: segmentation (PyTorch's
    ``nn.CrossEntropyLoss`` on that layout). ``weight`` per class; pixels labelled ``ignore_index``
    count nowhere (mean over the weights of the others); ``dice_weight`` > 0 adds that times the soft
    Dice loss (1 - the mean over classes of 2|P.T| / (|P| + |T|) on the softmax, over the batch),
    which weighs small classes as much as the background."""

    name = "pixel_cross_entropy"
    target_kind = "labels"
    class_axis = 1
    check_pred_shape = (3, 4, 2, 5)

    @staticmethod
    def check_target(rng, pred_shape):
        return rng.integers(0, pred_shape[1], (pred_shape[0],) + tuple(pred_shape[2:]))

    def __init__(self, weight: list[float] | None = None, ignore_index: int = -100, dice_weight: float = 0.0,
                 reduction: str = "mean"):
        super().__init__(reduction)
        if weight is not None and (len(weight) == 0 or min(weight) < 0):
            raise ConfigError(f"{self.name}: weight must be a non-empty list of non-negative numbers")
        if dice_weight < 0:
            raise ConfigError(f"{self.name}: dice_weight must be >= 0, got {dice_weight}")
        self.weight, self.ignore_index, self.dice_weight = weight, int(ignore_index), float(dice_weight)
        self.terms = {}

    def hyperparameters(self):
        return {"weight": self.weight, "ignore_index": self.ignore_index, "dice_weight": self.dice_weight,
                "reduction": self.reduction}

    @staticmethod
    def label_shape(output_shape):
        return tuple(output_shape[1:])

    def validate_targets(self, labels, output_shape):
        """(N, H, W) labels of the model's (C, H, W) outputs: integers in [0, C) or ignore_index."""
        labels = np.asarray(labels)
        expected = tuple(output_shape[1:])
        if labels.ndim < 1 or tuple(labels.shape[1:]) != expected:
            raise ShapeError(f"{self.name}: labels have shape {labels.shape} but the model's outputs "
                             f"{tuple(output_shape)} need (batch, {', '.join(map(str, expected))})")
        if labels.dtype.kind not in "iu":
            if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
                labels = labels.astype(np.int64)
            else:
                raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}")
        classes = output_shape[0]
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= classes))
        if bad.any():
            raise DataError(f"label {labels[bad][0]} is outside [0, {classes}) for a model with {classes} classes "
                            f"(ignore_index is {self.ignore_index})")
        return np.ascontiguousarray(labels, dtype=np.int64)

    def forward(self, logits, labels):
        self.ops = ops_for(logits)
        if len(logits.shape) < 3:
            raise ShapeError(f"{self.name} expects logits (batch, classes, height, width), got {tuple(logits.shape)}")
        self._shape = tuple(logits.shape)
        n, classes = self._shape[0], self._shape[1]
        pixels = int(np.prod(self._shape[2:]))
        labels = self.validate_targets(np.asarray(labels).reshape((n,) + self._shape[2:]), self._shape[1:])
        if self.weight is not None and len(self.weight) != classes:
            raise ShapeError(f"{self.name}: weight has {len(self.weight)} entries but the logits have {classes} classes")
        dtype = logits.dtype
        key = (None if self.weight is None else tuple(self.weight), classes, dtype, self.ops.name)
        if self._buffers.get("class_weights_key") != key:
            self._buffers["class_weights_key"] = key
            self._buffers["class_weights"] = self.ops.asarray(np.ones(classes) if self.weight is None else
                                                              np.asarray(self.weight), dtype=dtype)
        self._class_weights = self._buffers["class_weights"]
        logits3 = logits.reshape(n, classes, pixels)
        self._labels = self.ops.asarray(labels.reshape(n, pixels))
        pixel_loss = self.buffer("pixel_loss", (n, pixels), dtype)
        pixel_weight = self.buffer("pixel_weight", (n, pixels), dtype)
        self._probs = self.buffer("probs", (n, classes, pixels), dtype)
        self.ops.pixel_cross_entropy_forward(pixel_loss, pixel_weight, self._probs, logits3, self._labels,
                                             self._class_weights, self.ignore_index)
        total = self.ops.sum(pixel_loss)
        if self.reduction == "mean":
            norm = self.ops.sum(pixel_weight)
            self._scale = 1.0 / norm if norm > 0 else 0.0
            total *= self._scale
        else:
            self._scale = 1.0
        self.terms = {"cross_entropy": total}
        if self.dice_weight > 0:
            self._stats = self.buffer("dice_stats", (classes, 2), dtype)
            self.ops.dice_statistics(self._stats, self._probs, self._labels, self.ignore_index)
            stats = self.ops.to_numpy(self._stats).astype(np.float64)
            dice = 1.0 - float(np.mean((2 * stats[:, 0] + DICE_EPS) / (stats[:, 1] + DICE_EPS)))
            self.terms["dice"] = dice
            total += self.dice_weight * dice
        return total

    def backward(self):
        dlogits = self.buffer("dlogits", self._probs.shape, self._probs.dtype)
        self.ops.pixel_cross_entropy_backward(dlogits, self._probs, self._labels, self._class_weights,
                                              self.ignore_index, self._scale)
        if self.dice_weight > 0:
            ddice = self.buffer("ddice", self._probs.shape, self._probs.dtype)
            self.ops.dice_backward(ddice, self._probs, self._labels, self._stats, DICE_EPS,
                                   self.dice_weight / self._probs.shape[1], self.ignore_index)
            self.ops.add(dlogits, dlogits, ddice)
        return dlogits.reshape(self._shape)


DICE_EPS = 1.0  # the smoothing term of the soft Dice ratio: an absent class with no prediction scores 1


class CenterNetLoss(Loss):
    """The loss of a CenterNet-style detection head (numdl.detection): outputs (N, C + 4, H, W) of C
    class heatmap logits, box width and height (in cells) and the centre's offset within its cell;
    targets (N, K, 5) boxes [x1, y1, x2, y2, class] in input pixels (class -1: empty slot), the
    input being ``stride`` times the map. Penalty-reduced focal loss on the heatmaps plus
    ``size_weight`` x L1 of the sizes and ``offset_weight`` x L1 of the offsets at the centres, each
    divided by the number of objects (as Zhou et al.); ``terms`` holds the three parts."""

    name = "centernet"
    target_kind = "boxes"
    check_pred_shape = (2, 7, 5, 6)

    @staticmethod
    def check_target(rng, pred_shape):
        boxes = np.full((pred_shape[0], 2, 5), -1.0)
        boxes[:, 0] = [1.0, 2.0, 9.0, 10.0, 0.0]
        boxes[0, 1] = [4.0, 3.0, 17.0, 15.0, pred_shape[1] - 5.0]
        return boxes

    def __init__(self, stride: int = 4, size_weight: float = 0.1, offset_weight: float = 1.0):
        super().__init__("mean")
        if stride < 1 or size_weight < 0 or offset_weight < 0:
            raise ConfigError(f"{self.name}: stride must be >= 1 and the weights >= 0")
        self.stride, self.size_weight, self.offset_weight = int(stride), float(size_weight), float(offset_weight)
        self.terms = {}

    def hyperparameters(self):
        return {"stride": self.stride, "size_weight": self.size_weight, "offset_weight": self.offset_weight}

    def example_target(self, batch, output_shape):
        """A target batch for warm-up: one small box per image."""
        boxes = np.full((batch, 1, 5), -1.0)
        boxes[:, 0] = [0.0, 0.0, 2.0 * self.stride, 2.0 * self.stride, 0.0]
        return boxes

    def validate_targets(self, boxes, output_shape):
        boxes = np.asarray(boxes)
        if boxes.ndim != 3 or boxes.shape[2] != 5:
            raise ShapeError(f"{self.name}: targets must be boxes (batch, objects, 5) [x1, y1, x2, y2, class], "
                             f"got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise DataError(f"{self.name}: boxes contain NaN or Inf")
        classes = output_shape[0] - 4
        labels = boxes[..., 4]
        used = labels >= 0
        if (labels[used] >= classes).any() or (labels != np.round(labels)).any():
            raise DataError(f"{self.name}: box classes must be integers in [0, {classes}) (or -1 for none)")
        if (boxes[..., 2][used] <= boxes[..., 0][used]).any() or (boxes[..., 3][used] <= boxes[..., 1][used]).any():
            raise DataError(f"{self.name}: a box has x2 <= x1 or y2 <= y1")
        return boxes

    def forward(self, pred, boxes):
        from numdl.detection import centernet_targets

        self.ops = ops_for(pred)
        if len(pred.shape) != 4 or pred.shape[1] < 5:
            raise ShapeError(f"{self.name} expects outputs (batch, classes + 4, height, width), got {tuple(pred.shape)}")
        n, channels, height, width = pred.shape
        boxes = self.validate_targets(boxes, pred.shape[1:])
        if boxes.shape[0] != n:
            raise ShapeError(f"{self.name}: {boxes.shape[0]} target rows for a batch of {n}")
        dtype = pred.dtype
        self._out_shape = tuple(pred.shape)
        heat, regression, index = centernet_targets(boxes, channels - 4, height, width, self.stride, dtype)
        self._pred = pred.reshape(n, channels, height * width)
        self._heat, self._regression = self.ops.asarray(heat), self.ops.asarray(regression)
        self._index = self.ops.asarray(index)
        terms = self.buffer("terms", (n, 3), dtype)
        self.ops.centernet_forward(terms, self._pred, self._heat, self._regression, self._index)
        sums = self.ops.to_numpy(terms).astype(np.float64).sum(axis=0)
        self._objects = max(int((index >= 0).sum()), 1)
        focal, size, offset = sums[0] / self._objects, sums[1] / (2 * self._objects), sums[2] / (2 * self._objects)
        self.terms = {"focal": float(focal), "size": float(size), "offset": float(offset)}
        return focal + self.size_weight * size + self.offset_weight * offset

    def backward(self):
        dpred = self.buffer("dpred", self._pred.shape, self._pred.dtype)
        objects = self._objects
        self.ops.centernet_backward(dpred, self._pred, self._heat, self._regression, self._index, 1.0 / objects,
                                    self.size_weight / (2 * objects), self.offset_weight / (2 * objects))
        return dpred.reshape(self._out_shape)


class OutputLosses:
    """The loss of a model with several outputs: ``sum(weight_i * loss_i(output_i, target_i))``, with
    each term kept in ``terms`` (output name -> its unweighted loss) for reports. Not registered: graph
    models make one from ``compile([loss, ...], loss_weights=[...])``."""

    name = "output_losses"
    target_kind = "multi"

    def __init__(self, losses, weights=None, names=None):
        self.losses = list(losses)
        weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.losses) or any(not np.isfinite(w) or w < 0 for w in weights):
            raise ConfigError(f"loss_weights must be {len(self.losses)} non-negative numbers, got {weights!r}")
        self.weights = weights
        self.names = list(names or [str(i) for i in range(len(self.losses))])
        self.terms = {}
        self._grads = None

    def forward(self, preds, targets):
        total = 0.0
        for name, loss, weight, pred, target in zip(self.names, self.losses, self.weights, preds, targets):
            value = loss.forward(pred, target)
            self.terms[name] = value
            total += weight * value
        return total

    def backward(self):
        grads = []
        for index, (loss, weight) in enumerate(zip(self.losses, self.weights)):
            grad = loss.backward()
            if weight != 1.0:
                scaled = loss.buffer("weighted_grad", grad.shape, grad.dtype)
                loss.ops.scale(scaled, grad, weight)
                grad = scaled
            grads.append(grad)
        return grads

    def hyperparameters(self):
        return {"losses": [loss.name for loss in self.losses], "weights": self.weights}


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


BUILTIN_LOSSES = (CrossEntropy, MSE, MAE, Huber, BCEWithLogits, PixelCrossEntropy, CenterNetLoss)
