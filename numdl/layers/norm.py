"""Normalisation layers: BatchNorm1d, BatchNorm2d (train/eval modes, running statistics with
PyTorch's momentum and unbiased running variance) and LayerNorm over the last axis."""

import math

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class _BatchNorm(Layer):
    ranks = ()

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= momentum <= 1.0 or eps <= 0:
            raise ConfigError(f"{self.name}: momentum must be in [0, 1] and eps > 0")
        self.momentum, self.eps = momentum, eps

    def hyperparameters(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def setup(self, input_shape, rng):
        if len(input_shape) not in self.ranks:
            raise ShapeError(f"layer '{self.name}' expects inputs with {' or '.join(str(r + 1) for r in self.ranks)} "
                             f"dimensions (batch first) but got (batch, {', '.join(map(str, input_shape))})")
        channels = input_shape[0]
        self._spatial = math.prod(input_shape[1:])
        self.add_param("weight", np.ones(channels))
        self.add_param("bias", np.zeros(channels))
        self.add_state("running_mean", np.zeros(channels))
        self.add_state("running_var", np.ones(channels))
        return input_shape

    def _view(self, array):
        return array.reshape(array.shape[0], self.input_shape[0], self._spatial)

    def forward(self, x, training=False):
        n = x.shape[0]
        out = self.buffer("out", (n, self.input_shape[0], self._spatial))
        gamma, beta = self.params["weight"].value, self.params["bias"].value
        if training:
            if n * self._spatial < 2:
                raise ShapeError(f"layer '{self.name}' needs more than one value per channel in training "
                                 f"(got a batch of {n})")
            self._xhat = self.buffer("xhat", out.shape)
            self._mean = self.buffer("mean", (self.input_shape[0],))
            self._invstd = self.buffer("invstd", (self.input_shape[0],))
            self.ops.batchnorm_train_forward(out, self._xhat, self._mean, self._invstd, self.state["running_mean"],
                                             self.state["running_var"], self._view(x), gamma, beta, self.momentum,
                                             self.eps)
        else:
            self._xhat = None
            self.ops.batchnorm_eval_forward(out, self._view(x), self.state["running_mean"], self.state["running_var"],
                                            gamma, beta, self.eps)
        return out.reshape(x.shape)

    def backward(self, dout):
        if self._xhat is None:
            raise RuntimeError(f"{self.name}: backward after an evaluation-mode forward")
        dx = self.buffer("dx", self._xhat.shape) if self.needs_input_grad else None
        self.ops.batchnorm_backward(dx, self.params["weight"].grad, self.params["bias"].grad, self._view(dout),
                                    self._xhat, self._invstd, self.params["weight"].value)
        return None if dx is None else dx.reshape(dout.shape)


class BatchNorm1d(_BatchNorm):
    """Over (batch, features) or (batch, channels, length) inputs, statistics per feature/channel."""

    name = "batchnorm1d"
    ranks = (1, 2)


class BatchNorm2d(_BatchNorm):
    """Over (batch, channels, height, width) inputs, statistics per channel."""

    name = "batchnorm2d"
    ranks = (3,)


class LayerNorm(Layer):
    """Normalises each sample over its last axis, with a learned scale and shift per feature."""

    name = "layernorm"

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        if eps <= 0:
            raise ConfigError("layernorm: eps must be > 0")
        self.eps = eps

    def hyperparameters(self):
        return {"eps": self.eps}

    def setup(self, input_shape, rng):
        features = input_shape[-1]
        self.add_param("weight", np.ones(features))
        self.add_param("bias", np.zeros(features))
        return input_shape

    def forward(self, x, training=False):
        rows = self.rows(x, self.input_shape[-1])
        out = self.buffer("out", rows.shape)
        self._xhat = self.buffer("xhat", rows.shape)
        self._invstd = self.buffer("invstd", (rows.shape[0],))
        self.ops.layernorm_forward(out, self._xhat, self._invstd, rows, self.params["weight"].value,
                                   self.params["bias"].value, self.eps)
        return out.reshape(x.shape)

    def backward(self, dout):
        rows = self.rows(dout, self.input_shape[-1])
        dx = self.buffer("dx", rows.shape) if self.needs_input_grad else None
        self.ops.layernorm_backward(dx, self.params["weight"].grad, self.params["bias"].grad, rows, self._xhat,
                                    self._invstd, self.params["weight"].value)
        return None if dx is None else dx.reshape(dout.shape)
