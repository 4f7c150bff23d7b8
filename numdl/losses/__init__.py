"""Loss classes. ``forward(pred, target)`` returns the loss as a float and keeps what ``backward()``
needs; ``backward()`` returns the gradient with respect to ``pred``. Targets are validated here, at
the boundary, before any kernel reads them."""

import math

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


class _ClassLoss(Loss):
    """A loss over class scores with integer labels: PyTorch's layouts and options shared by
    cross-entropy and NLL.

    ``class_axis`` -1 (numdl's default): scores (N, ..., C) with labels (N, ...), e.g. (N, C) with
    (N,) or per-step (N, T, C) with (N, T); ``class_axis`` 1: PyTorch's (N, C, d1, ...) with labels
    (N, d1, ...). ``weight`` per class (a weighted mean divides by the summed weights of the targets);
    labels equal to ``ignore_index`` count nowhere; ``reduction`` "mean", "sum" or "none" (``forward``
    then returns each position's loss, and ``backward`` takes an optional upstream gradient of that
    shape: the gradient of the sum when none is given).
    """

    target_kind = "labels"
    reductions = REDUCTIONS + ("none",)

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean", class_axis: int = -1):
        super().__init__(reduction)
        if weight is not None and (len(weight) == 0 or min(weight) < 0):
            raise ConfigError(f"{self.name}: weight must be a non-empty list of non-negative numbers")
        if class_axis not in (-1, 1):
            raise ConfigError(f"{self.name}: class_axis must be -1 (scores (batch, ..., classes)) or 1 "
                              f"(PyTorch's (batch, classes, d1, ...)), got {class_axis!r}")
        self.weight = None if weight is None else [float(w) for w in weight]
        self.ignore_index, self.class_axis = int(ignore_index), int(class_axis)

    def hyperparameters(self):
        return {"weight": self.weight, "ignore_index": self.ignore_index, "reduction": self.reduction,
                "class_axis": self.class_axis}

    # ------------------------------------------------------------------------------ layout
    def _layout(self, shape):
        """(outer, classes, inner) of scores of ``shape`` (batch included) and the labels' shape."""
        if len(shape) < 2:
            raise ShapeError(f"{self.name} expects scores (batch, classes) or (batch, ..., classes), got shape {shape}")
        if self.class_axis == 1:  # (math.prod: np.prod costs microseconds a call, on every step)
            return (shape[0], shape[1], math.prod(shape[2:])), (shape[0],) + tuple(shape[2:])
        return (math.prod(shape[:-1]), shape[-1], 1), tuple(shape[:-1])

    def label_shape(self, output_shape):
        """The labels' shape (without the batch) for outputs of ``output_shape`` (without the batch)."""
        return tuple(output_shape[1:]) if self.class_axis == 1 else tuple(output_shape[:-1])

    def validate_targets(self, labels, output_shape):
        """Integer labels of the model's outputs (checked against the classes and ignore_index)."""
        return self._labels_of(labels, (len(labels),) + self.label_shape(output_shape),
                               output_shape[0] if self.class_axis == 1 else output_shape[-1])

    def _labels_of(self, labels, expected, classes):
        labels = np.asarray(labels)
        if tuple(labels.shape) != tuple(expected):
            raise ShapeError(f"{self.name}: labels have shape {labels.shape} but the scores need {tuple(expected)}")
        if labels.dtype.kind not in "iu":
            if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
                labels = labels.astype(np.int64)
            else:
                raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}")
        # The common case first, in two reductions: every label a class (nothing ignored).
        self._all_counted = labels.size == 0 or (labels.min() >= 0 and labels.max() < classes and not (
            0 <= self.ignore_index < classes and (labels == self.ignore_index).any()))
        if not self._all_counted:
            bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= classes))
            if bad.any():
                raise DataError(f"label {labels[bad][0]} is outside [0, {classes}) for a model with {classes} outputs"
                                + (f" (ignore_index is {self.ignore_index})" if self.ignore_index >= 0 else ""))
        return np.ascontiguousarray(labels, dtype=np.int64)

    def _normaliser(self, sample_weight, count):
        """What a mean divides by: the summed weights of the counted targets (PyTorch's)."""
        if self.reduction != "mean":
            return 1.0
        return float(count) if self.weight is None and self._all_counted else self.ops.sum(sample_weight)

    def _weights_on_device(self, classes, dtype):
        # Made once per (weights, classes, dtype), not per step.
        if self.weight is not None and len(self.weight) != classes:
            raise ShapeError(f"{self.name}: weight has {len(self.weight)} entries but the scores have {classes} classes")
        key = (None if self.weight is None else tuple(self.weight), classes, dtype, self.ops.name)
        if self._buffers.get("class_weights_key") != key:
            host_weights = np.ones(classes) if self.weight is None else np.asarray(self.weight)
            self._buffers["class_weights_key"] = key
            self._buffers["class_weights"] = self.ops.asarray(host_weights, dtype=dtype)
        return self._buffers["class_weights"]

    # --------------------------------------------------------------------------- reduction
    def _reduce(self, sample_loss, norm):
        """The loss of the per-position terms: their sum times 1 / ``norm`` (mean), or the terms
        themselves (a host array of the labels' shape) for reduction "none"."""
        if self.reduction == "none":
            self._scale = None
            return self.ops.to_numpy(sample_loss).reshape(self._label_shape).copy()
        total = self.ops.sum(sample_loss)
        self._scale = (1.0 / norm if norm > 0 else 0.0) if self.reduction == "mean" else 1.0
        return total * self._scale

    def _upstream(self, upstream, dtype):
        """The backward kernels' (outer, inner) or (1, 1) factor array."""
        if upstream is None or self.reduction != "none":
            if upstream is not None:
                raise ConfigError(f"{self.name}: an upstream gradient goes with reduction 'none' only")
            scale = 1.0 if self._scale is None else self._scale
            if self.ops.name == "cpu":  # written in place: no array made per step
                factor = self.buffer("scale", (1, 1), dtype)
                factor[0, 0] = scale
                return factor
            return self.ops.asarray(np.full((1, 1), scale), dtype=dtype)
        host = np.asarray(upstream, dtype=np.float64)
        if host.shape != self._label_shape:
            raise ShapeError(f"{self.name}: the upstream gradient has shape {host.shape} but the losses have "
                             f"{self._label_shape}")
        return self.ops.asarray(host.reshape(self._view[0], self._view[2]), dtype=dtype)


class CrossEntropy(_ClassLoss):
    """Softmax cross-entropy on raw logits (PyTorch's ``nn.CrossEntropyLoss``), fused in one kernel.

    Targets are class indices (``ignore_index``, per-class ``weight``) or, as PyTorch, class
    probabilities of the logits' own shape (a float array: soft labels, mixup; the mean is then over
    positions, not weights). ``label_smoothing`` mixes the target with the uniform distribution. The
    layouts, ``class_axis`` and ``reduction``: see the class-loss base above.
    """

    name = "cross_entropy"

    def __init__(self, weight: list[float] | None = None, label_smoothing: float = 0.0,
                 reduction: str = "mean", class_weight: str | None = None, ignore_index: int = -100,
                 class_axis: int = -1):
        super().__init__(weight, ignore_index, reduction, class_axis)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        if class_weight not in (None, "balanced"):
            raise ConfigError(f"cross_entropy: class_weight must be 'balanced' (explicit weights go in weight), "
                              f"got {class_weight!r}")
        if class_weight is not None and weight is not None:
            raise ConfigError("cross_entropy: give weight or class_weight = 'balanced', not both")
        # class_weight = "balanced": numdl train sets weight from the training labels' counts
        # (n / (classes * count), scikit-learn's rule) before the first step.
        self.label_smoothing, self.class_weight = float(label_smoothing), class_weight

    def hyperparameters(self):
        return {**super().hyperparameters(), "weight": None if self.class_weight else self.weight,
                "label_smoothing": self.label_smoothing, "class_weight": self.class_weight}

    def validate_targets(self, targets, output_shape):
        """Integer labels, or class probabilities of the outputs' own shape (finite, >= 0)."""
        targets = np.asarray(targets)
        if targets.dtype.kind == "f" and targets.shape[1:] == tuple(output_shape) and len(output_shape) >= 1:
            if not np.isfinite(targets).all() or (targets < 0).any():
                raise DataError(f"{self.name}: probability targets must be finite and >= 0")
            return targets
        return super().validate_targets(targets, output_shape)

    def forward(self, logits, target):
        """Logits (N, ..., C) or, with class_axis 1, (N, C, d1, ...); integer labels without the class
        axis, or probabilities of the logits' shape."""
        self.ops = ops_for(logits)
        shape = tuple(logits.shape)
        self._view, self._label_shape = self._layout(shape)
        self._shape = shape
        outer, classes, inner = self._view
        target = np.asarray(target)
        dtype = logits.dtype
        self._class_weights = self._weights_on_device(classes, dtype)
        view = logits.reshape(self._view)
        sample_loss = self.buffer("sample_loss", (outer, inner), dtype)
        self._probs = self.buffer("probs", self._view, dtype)
        self._soft = target.dtype.kind == "f" and target.shape == shape
        if self._soft:
            if not np.isfinite(target).all():
                raise DataError(f"{self.name}: probability targets contain NaN or Inf")
            self._targets = self.ops.asarray(np.ascontiguousarray(target).reshape(self._view), dtype=dtype)
            self.ops.soft_cross_entropy_forward(sample_loss, self._probs, view, self._targets, self._class_weights,
                                                self.label_smoothing)
            return self._reduce(sample_loss, float(outer * inner))
        labels = self._labels_of(target, self._label_shape, classes)
        self._labels = self.ops.asarray(labels.reshape(outer, inner))
        sample_weight = self.buffer("sample_weight", (outer, inner), dtype)
        self.ops.cross_entropy_forward(sample_loss, sample_weight, self._probs, view, self._labels,
                                       self._class_weights, self.label_smoothing, self.ignore_index)
        return self._reduce(sample_loss, self._normaliser(sample_weight, outer * inner))

    def backward(self, upstream=None):
        dlogits = self.buffer("dlogits", self._view, self._probs.dtype)
        factors = self._upstream(upstream, self._probs.dtype)
        if self._soft:
            self.ops.soft_cross_entropy_backward(dlogits, self._probs, self._targets, self._class_weights,
                                                 self.label_smoothing, factors)
        else:
            self.ops.cross_entropy_backward(dlogits, self._probs, self._labels, self._class_weights,
                                            self.label_smoothing, self.ignore_index, factors)
        return dlogits.reshape(self._shape)


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of log-probabilities (PyTorch's ``nn.NLLLoss``): ``-w_y x_y``, after a
    ``log_softmax`` layer (together the same as cross-entropy on the logits). Options and layouts as
    cross-entropy's (no smoothing, no probability targets)."""

    name = "nll"

    def forward(self, log_probs, target):
        self.ops = ops_for(log_probs)
        shape = tuple(log_probs.shape)
        self._view, self._label_shape = self._layout(shape)
        self._shape, self._dtype = shape, log_probs.dtype
        outer, classes, inner = self._view
        self._class_weights = self._weights_on_device(classes, self._dtype)
        labels = self._labels_of(target, self._label_shape, classes)
        self._labels = self.ops.asarray(labels.reshape(outer, inner))
        sample_loss = self.buffer("sample_loss", (outer, inner), self._dtype)
        sample_weight = self.buffer("sample_weight", (outer, inner), self._dtype)
        self.ops.nll_forward(sample_loss, sample_weight, log_probs.reshape(self._view), self._labels,
                             self._class_weights, self.ignore_index)
        return self._reduce(sample_loss, self._normaliser(sample_weight, outer * inner))

    def backward(self, upstream=None):
        dlog_probs = self.buffer("dlog_probs", self._view, self._dtype)
        self.ops.nll_backward(dlog_probs, self._labels, self._class_weights, self.ignore_index,
                              self._upstream(upstream, self._dtype))
        return dlog_probs.reshape(self._shape)


class _ElementwiseLoss(Loss):
    """Losses that are a sum of per-element terms over predictions and same-shaped targets, reduced
    by ``mean`` (over every element), ``sum``, ``batchmean``: summed over each sample's elements,
    averaged over the samples (PyTorch's KLDivLoss reduction; a VAE's reconstruction term, whose
    scale must match the KL term's, summed over the latent dimensions), or ``none``: ``forward``
    returns the element losses (a host array of the predictions' shape) and ``backward`` takes an
    optional upstream gradient of that shape (the gradient of the sum when none is given)."""

    kernel = None
    reductions = REDUCTIONS + ("batchmean", "none")

    def forward(self, pred, target):
        self.ops = ops_for(pred)
        target = self.ops.asarray(target, dtype=pred.dtype)
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(f"{self.name}: predictions have shape {tuple(pred.shape)} but targets have "
                             f"shape {tuple(target.shape)}")
        self._pred, self._target = pred, target
        self._scale = {"mean": 1.0 / max(pred.size, 1), "batchmean": 1.0 / max(pred.shape[0], 1)}.get(
            self.reduction, 1.0)
        terms = self.buffer("terms", pred.shape, pred.dtype)
        self.ops.elementwise_loss_forward(self.kernel, terms, pred, target, *self.kernel_params())
        if self.reduction == "none":
            return self.ops.to_numpy(terms).copy()
        return self.ops.sum(terms) * self._scale

    def backward(self, upstream=None):
        dpred = self.buffer("dpred", self._pred.shape, self._pred.dtype)
        self.ops.elementwise_loss_backward(self.kernel, dpred, self._pred, self._target, self._scale,
                                           *self.kernel_params())
        if upstream is not None:
            if self.reduction != "none":
                raise ConfigError(f"{self.name}: an upstream gradient goes with reduction 'none' only")
            upstream = np.asarray(upstream)
            if upstream.shape != tuple(self._pred.shape):
                raise ShapeError(f"{self.name}: the upstream gradient has shape {upstream.shape} but the losses "
                                 f"have {tuple(self._pred.shape)}")
            self.ops.multiply(dpred, dpred, self.ops.asarray(upstream, dtype=self._pred.dtype))
        return dpred

    def kernel_params(self):
        """What the element kernels take after their arrays (Huber's delta)."""
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
    (PyTorch's ``nn.BCEWithLogitsLoss``), computed in the overflow-free form:
    ``-weight (pos_weight t log s(x) + (1 - t) log(1 - s(x)))``.

    ``pos_weight`` weighs the positives of each class (the last axis; > 1 raises recall, e.g.
    negatives / positives); ``weight`` rescales each element: one number per class of the last
    axis (a list, as a config gives it), or an array that broadcasts to the predictions.
    """

    name = kernel = "bce_with_logits"

    def __init__(self, weight=None, pos_weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        for what, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is not None:
                array = np.asarray(value, dtype=np.float64)
                if array.size == 0 or not np.isfinite(array).all() or (array < 0).any():
                    raise ConfigError(f"bce_with_logits: {what} must be non-negative finite numbers")
        self.weight, self.pos_weight = weight, pos_weight

    def hyperparameters(self):
        listed = lambda v: None if v is None else np.asarray(v, dtype=np.float64).tolist()  # noqa: E731
        return {"weight": listed(self.weight), "pos_weight": listed(self.pos_weight), "reduction": self.reduction}

    def forward(self, pred, target):
        host = np.asarray(target) if isinstance(target, np.ndarray) else None
        if host is not None and host.size and (host.min() < 0 or host.max() > 1):
            raise DataError(f"bce_with_logits: targets must lie in [0, 1], got values in "
                            f"[{host.min()}, {host.max()}]")
        self.ops = ops_for(pred)
        shape, dtype = tuple(pred.shape), pred.dtype
        self._params = (self._repeating("weight", self.weight, shape, dtype),
                        self._repeating("pos_weight", self.pos_weight, shape, dtype))
        return super().forward(pred, target)

    def _repeating(self, what, value, shape, dtype):
        """``value`` as the flat array the kernels read at [i % size]: (1,) for none, the last axis's
        (C,) for a per-class list, or broadcast to the whole (size,) otherwise. Cached per shape."""
        key = (what, shape, dtype, self.ops.name)
        cached = self._buffers.get(key)
        if cached is None or cached[0] is not value:
            array = np.ones(1) if value is None else np.asarray(value, dtype=np.float64)
            if array.ndim > 1 or (array.size > 1 and array.size != shape[-1]):
                try:
                    array = np.broadcast_to(array, shape)
                except ValueError:
                    raise ShapeError(f"bce_with_logits: {what} of shape {array.shape} does not broadcast to the "
                                     f"predictions' {shape}") from None
            cached = self._buffers[key] = (value, self.ops.asarray(np.ascontiguousarray(array).reshape(-1),
                                                                   dtype=dtype))
        return cached[1]

    def kernel_params(self):
        return self._params


class KLDiv(_ElementwiseLoss):
    """Kullback-Leibler divergence (PyTorch's ``nn.KLDivLoss``) of predictions given as
    log-probabilities (a ``log_softmax`` layer) from target probabilities: element terms
    ``t (log t - x)`` (0 where t = 0), or ``exp(t) (t - x)`` with ``log_target = true``. The true KL
    divergence per sample is ``reduction = "batchmean"``; "mean" (PyTorch's default) divides by every
    element."""

    name = kernel = "kl_div"

    def __init__(self, reduction: str = "mean", log_target: bool = False):
        super().__init__(reduction)
        self.log_target = bool(log_target)

    def hyperparameters(self):
        return {"reduction": self.reduction, "log_target": self.log_target}

    def forward(self, log_probs, target):
        host = np.asarray(target) if isinstance(target, np.ndarray) else None
        if host is not None and not self.log_target and host.size and host.min() < 0:
            raise DataError(f"kl_div: target probabilities must be >= 0 (got {host.min()}); give log-probabilities "
                            f"with log_target = true")
        return super().forward(log_probs, target)

    def kernel_params(self):
        return (self.log_target,)


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


BUILTIN_LOSSES = (CrossEntropy, NLLLoss, MSE, MAE, Huber, BCEWithLogits, KLDiv, PixelCrossEntropy, CenterNetLoss)
