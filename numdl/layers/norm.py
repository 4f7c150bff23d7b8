"""Normalisation layers: BatchNorm1d, BatchNorm2d (train/eval modes, running statistics with
PyTorch's momentum and unbiased running variance), LayerNorm over the last axes and GroupNorm, with PyTorch's
options (affine or not, tracked statistics or not, cumulative averages, no bias)."""

import math

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class _BatchNorm(Layer):
    """PyTorch's batch norm: statistics per channel over the batch (and positions) in training;
    ``momentum`` weighs each batch into the running statistics (None, in a config "cumulative":
    their cumulative average over every batch so far), used in evaluation; ``affine=False``: no learned scale and shift;
    ``track_running_stats=False``: no running statistics, batch statistics in evaluation too.
    A ReLU right after it is applied in the same pass (``fused_relu``), as after a Linear."""

    ranks = ()
    can_fuse_relu = True

    def __init__(self, momentum: float | str | None = 0.1, eps: float = 1e-5, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        if momentum == "cumulative":  # how a TOML config, which has no None, spells momentum=None
            momentum = None
        if (momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0)) or eps <= 0:
            raise ConfigError(f"{self.name}: momentum must be in [0, 1] (or None / 'cumulative': a cumulative average) "
                              f"and eps > 0, got momentum {momentum!r}, eps {eps!r}")
        self.momentum, self.eps = momentum, eps
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)

    def hyperparameters(self):
        return {"momentum": "cumulative" if self.momentum is None else self.momentum, "eps": self.eps, "affine": self.affine,
                "track_running_stats": self.track_running_stats}

    def setup(self, input_shape, rng):
        if len(input_shape) not in self.ranks:
            raise ShapeError(f"layer '{self.name}' expects inputs with {' or '.join(str(r + 1) for r in self.ranks)} "
                             f"dimensions (batch first) but got (batch, {', '.join(map(str, input_shape))})")
        channels = input_shape[0]
        self._spatial = math.prod(input_shape[1:])
        if self.affine:
            self.add_param("weight", np.ones(channels))
            self.add_param("bias", np.zeros(channels))
        else:  # a fixed scale of 1 and shift of 0; their gradients go to scratch
            self._fixed = {name: self.ops.asarray(np.full(channels, value), dtype=self.dtype)
                           for name, value in (("weight", 1.0), ("bias", 0.0))}
            self._scratch_grads = {name: self.ops.zeros((channels,), self.dtype) for name in ("weight", "bias")}
        if self.track_running_stats:
            self.add_state("running_mean", np.zeros(channels))
            self.add_state("running_var", np.ones(channels))
            if self.momentum is None:  # the cumulative average needs the count (PyTorch's num_batches_tracked)
                self.add_state("num_batches_tracked", np.zeros(1))
        else:  # the training kernel updates running statistics: these take the updates and are never read
            self._untracked = (self.ops.zeros((channels,), self.dtype),
                               self.ops.asarray(np.ones(channels), dtype=self.dtype))
        return input_shape

    def _view(self, array):
        return array.reshape(array.shape[0], self.input_shape[0], self._spatial)

    def _affine(self):
        if self.affine:
            return self.params["weight"].value, self.params["bias"].value
        return self._fixed["weight"], self._fixed["bias"]

    def _batch_momentum(self, training):
        """The weight of this batch in the running statistics (0: they are not updated)."""
        if not (training and self.track_running_stats):
            return 0.0
        if self.momentum is not None:
            return self.momentum
        count = self.state["num_batches_tracked"]
        tracked = float(self.ops.to_numpy(count)[0]) + 1
        self.state["num_batches_tracked"] = self.ops.asarray(np.array([tracked]), dtype=self.dtype)
        return 1.0 / tracked

    fused_pool = None  # the MaxPool2d layer this batch norm applies (BatchNorm2d; set by the model)

    def forward(self, x, training=False):
        if self.fused_pool is not None:
            return self._pooled_forward(x, training)
        n = x.shape[0]
        out = self.buffer("out", (n, self.input_shape[0], self._spatial))
        gamma, beta = self._affine()
        if training or not self.track_running_stats:  # batch statistics
            running = self._batch_statistics(n, out.shape)
            self.ops.batchnorm_train_forward(out, self._xhat, self._mean, self._invstd, *running, self._view(x), gamma,
                                             beta, self._batch_momentum(training), self.eps, self.fused_relu)
        else:
            self._xhat = None
            self.ops.batchnorm_eval_forward(out, self._view(x), self.state["running_mean"], self.state["running_var"],
                                            gamma, beta, self.eps, self.fused_relu)
        self._out = out
        return out.reshape(x.shape)

    def _batch_statistics(self, n, shape):
        """The buffers and running statistics a training-mode forward (batch statistics) writes."""
        if n * self._spatial < 2:
            raise ShapeError(f"layer '{self.name}' needs more than one value per channel to take batch statistics "
                             f"(got a batch of {n})")
        self._xhat = self.buffer("xhat", shape)
        self._mean = self.buffer("mean", (self.input_shape[0],))
        self._invstd = self.buffer("invstd", (self.input_shape[0],))
        return ((self.state["running_mean"], self.state["running_var"]) if self.track_running_stats
                else self._untracked)

    def _pooled_forward(self, x, training):
        # with the 2x2 max pooling after it: only the pooled output (and each window's argmax) stored
        x = self.contiguous(x, "x_copy")  # (the CPU kernel reads flat views)
        n, width = x.shape[0], self.input_shape[2]
        out = self.buffer("out", (n,) + self.fused_pool.output_shape)
        self._pool_at = self.buffer("pool_at", out.shape, np.int8)
        gamma, beta = self._affine()
        if training or not self.track_running_stats:
            running = self._batch_statistics(n, (n, self.input_shape[0], self._spatial))
            self.ops.batchnorm_pool_train_forward(out, self._pool_at, self._xhat, self._mean, self._invstd, *running,
                                                  self._view(x), gamma, beta, self._batch_momentum(training), self.eps,
                                                  width, self.fused_relu)
        else:
            self._xhat = None
            self.ops.batchnorm_pool_eval_forward(out, self._pool_at, self._view(x), self.state["running_mean"],
                                                 self.state["running_var"], gamma, beta, self.eps, width,
                                                 self.fused_relu)
        self._out = out
        return out

    def backward(self, dout):
        if self._xhat is None:
            raise RuntimeError(f"{self.name}: backward after an evaluation-mode forward")
        dx = self.buffer("dx", self._xhat.shape) if self.needs_input_grad else None
        grads = ((self.params["weight"].grad, self.params["bias"].grad) if self.affine
                 else (self._scratch_grads["weight"], self._scratch_grads["bias"]))
        if self.fused_pool is not None:  # dout is the pooling's output gradient
            dout = self.contiguous(dout, "dout_copy")
            self.ops.batchnorm_pool_backward(dx, *grads, dout, self._out, self._pool_at, self._xhat, self._invstd,
                                             self._affine()[0], self.input_shape[2], self.fused_relu)
            return None if dx is None else dx.reshape((dout.shape[0],) + self.input_shape)
        self.ops.batchnorm_backward(dx, *grads, self._view(dout), self._xhat, self._invstd, self._affine()[0],
                                    self._out if self.fused_relu else None)
        return None if dx is None else dx.reshape(dout.shape)


class BatchNorm1d(_BatchNorm):
    """Over (batch, features) or (batch, channels, length) inputs, statistics per feature/channel."""

    name = "batchnorm1d"
    ranks = (1, 2)


class BatchNorm2d(_BatchNorm):
    """Over (batch, channels, height, width) inputs, statistics per channel."""

    name = "batchnorm2d"
    ranks = (3,)

    def can_fuse_pool(self, pool):
        """Whether this batch norm can apply ``pool`` (the next layer, after any ReLU it applies) in the
        pass that writes its output: a 2x2 max pooling at stride 2 (layers.pool.fusible_max_pool) on
        images of at least 2x2."""
        from numdl.layers.pool import fusible_max_pool

        return fusible_max_pool(pool) and min(self.input_shape[1:]) >= 2


class LayerNorm(Layer):
    """PyTorch's ``nn.LayerNorm``: normalises each sample over its last axes (``normalized_shape``,
    their sizes; default: the last axis), then scales and shifts element-wise (``elementwise_affine``;
    ``bias=False``: the scale only)."""

    name = "layernorm"

    def __init__(self, normalized_shape: int | list[int] | None = None, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        if eps <= 0:
            raise ConfigError("layernorm: eps must be > 0")
        shape = [normalized_shape] if isinstance(normalized_shape, int) else normalized_shape
        if shape is not None and (not shape or any(not isinstance(d, int) or d < 1 for d in shape)):
            raise ConfigError(f"layernorm: normalized_shape must be a positive size or a list of them, got "
                              f"{normalized_shape!r}")
        self.normalized_shape = None if shape is None else [int(d) for d in shape]
        self.eps, self.elementwise_affine, self.bias = eps, bool(elementwise_affine), bool(bias)

    def hyperparameters(self):
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias}

    def setup(self, input_shape, rng):
        shape = tuple(self.normalized_shape or input_shape[-1:])
        if tuple(input_shape[len(input_shape) - len(shape):]) != shape or len(shape) > len(input_shape):
            raise ShapeError(f"layer 'layernorm': normalized_shape {list(shape)} must be the last axes of the input, "
                             f"got input shape (batch, {', '.join(map(str, input_shape))})")
        self._features = math.prod(shape)
        fixed = {}
        if self.elementwise_affine:
            self.add_param("weight", np.ones(shape))
            if self.bias:
                self.add_param("bias", np.zeros(shape))
            else:
                fixed["bias"] = 0.0
        else:
            fixed = {"weight": 1.0, "bias": 0.0}
        # fixed scale (1) and shift (0) where there is no parameter; their gradients go to scratch
        self._fixed = {name: self.ops.asarray(np.full(self._features, value), dtype=self.dtype)
                       for name, value in fixed.items()}
        self._scratch_grads = {name: self.ops.zeros((self._features,), self.dtype) for name in fixed}
        return input_shape

    def _flat(self, name, grad=False):
        if name in self.params:
            array = self.params[name].grad if grad else self.params[name].value
            return array.reshape(self._features)
        return self._scratch_grads[name] if grad else self._fixed[name]

    def forward(self, x, training=False):
        rows = self.rows(x, self._features)
        out = self.buffer("out", rows.shape)
        self._xhat = self.buffer("xhat", rows.shape)
        self._invstd = self.buffer("invstd", (rows.shape[0],))
        self.ops.layernorm_forward(out, self._xhat, self._invstd, rows, self._flat("weight"), self._flat("bias"),
                                   self.eps)
        return out.reshape(x.shape)

    def backward(self, dout):
        rows = self.rows(dout, self._features)
        dx = self.buffer("dx", rows.shape) if self.needs_input_grad else None
        self.ops.layernorm_backward(dx, self._flat("weight", grad=True), self._flat("bias", grad=True), rows,
                                    self._xhat, self._invstd, self._flat("weight"))
        return None if dx is None else dx.reshape(dout.shape)


class GroupNorm(Layer):
    """PyTorch's ``nn.GroupNorm``: the channels (axis 1 of (batch, C, ...)) split into ``num_groups``
    groups, each sample's group normalised over its channels and positions (biased variance, ``eps``),
    then a per-channel scale and shift (``affine``). Batch-independent: the same in training and
    evaluation. (The channel count comes from the input; PyTorch's ``num_channels`` is checked when
    weights are imported.)"""

    name = "groupnorm"

    def __init__(self, num_groups: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_groups < 1 or eps <= 0:
            raise ConfigError(f"groupnorm: num_groups must be >= 1 and eps > 0, got {num_groups} and {eps}")
        self.num_groups, self.eps, self.affine = int(num_groups), eps, bool(affine)

    def hyperparameters(self):
        return {"num_groups": self.num_groups, "eps": self.eps, "affine": self.affine}

    def setup(self, input_shape, rng):
        if not input_shape or input_shape[0] % self.num_groups:
            raise ShapeError(f"layer 'groupnorm': {input_shape[0] if input_shape else 0} channels do not split into "
                             f"{self.num_groups} groups (input shape (batch, {', '.join(map(str, input_shape))}))")
        channels = input_shape[0]
        if self.affine:
            self.add_param("weight", np.ones(channels))
            self.add_param("bias", np.zeros(channels))
        else:  # a fixed scale of 1 and shift of 0; their gradients go to scratch
            self._fixed = {"weight": self.ops.asarray(np.ones(channels), dtype=self.dtype),
                           "bias": self.ops.zeros((channels,), self.dtype)}
            self._scratch_grads = {name: self.ops.zeros((channels,), self.dtype) for name in ("weight", "bias")}
        self._group_size = math.prod(input_shape) // self.num_groups
        return input_shape

    def _array(self, name, grad=False):
        if self.affine:
            return self.params[name].grad if grad else self.params[name].value
        return self._scratch_grads[name] if grad else self._fixed[name]

    def forward(self, x, training=False):
        view = (x.shape[0], self.num_groups, self._group_size)
        out = self.buffer("out", view)
        self._xhat = self.buffer("xhat", view)
        self._invstd = self.buffer("invstd", view[:2])
        self.ops.groupnorm_forward(out, self._xhat, self._invstd, self.contiguous(x, "x_copy").reshape(view),
                                   self._array("weight"), self._array("bias"), self.eps)
        return out.reshape(x.shape)

    def backward(self, dout):
        view = (dout.shape[0], self.num_groups, self._group_size)
        dx = self.buffer("dx", view) if self.needs_input_grad else None
        self.ops.groupnorm_backward(dx, self._array("weight", grad=True), self._array("bias", grad=True),
                                    self.contiguous(dout, "dout_copy").reshape(view), self._xhat, self._invstd,
                                    self._array("weight"))
        return None if dx is None else dx.reshape(dout.shape)
