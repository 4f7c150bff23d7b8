"""Layers that move data around without learning: Flatten, Dropout."""

import math

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...), as a view."""

    name = "flatten"

    def setup(self, input_shape, rng):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], self.output_shape[0])

    def backward(self, dout):
        return dout.reshape((dout.shape[0],) + self.input_shape)


class Reshape(Layer):
    """(batch, ...) -> (batch, *shape), as a view; one entry may be -1 (inferred), as in Keras/PyTorch."""

    name = "reshape"

    def __init__(self, shape: list[int]):
        super().__init__()
        if not shape or sum(1 for d in shape if d == -1) > 1 or any(d == 0 or d < -1 for d in shape):
            raise ConfigError(f"reshape: shape must be positive sizes with at most one -1, got {shape!r}")
        self.shape = tuple(shape)

    def hyperparameters(self):
        return {"shape": list(self.shape)}

    def setup(self, input_shape, rng):
        total, known = math.prod(input_shape), math.prod(d for d in self.shape if d != -1)
        shape = tuple(total // known if d == -1 else d for d in self.shape)
        if math.prod(shape) != total:
            raise ShapeError(f"layer 'reshape' cannot reshape {input_shape} ({total} values) to {self.shape}")
        return shape

    def forward(self, x, training=False):
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dout):
        return dout.reshape((dout.shape[0],) + self.input_shape)


class Dropout(Layer):
    """Zeroes each element with probability ``p`` in training and scales the rest by 1/(1-p)
    (inverted dropout, as PyTorch); the identity in evaluation.

    The mask comes from a counter-based stream (seed, offset): reproducible, identical on CPU and
    CUDA, and its whole state is two integers. ``seed`` defaults to one drawn from the model's seed.
    """

    name = "dropout"

    def __init__(self, p: float = 0.5, seed: int = -1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"dropout: p must be in [0, 1), got {p}")
        self.p, self.seed = p, seed
        self.offset = 0
        self._mask = None

    def hyperparameters(self):
        return {"p": self.p, "seed": self.seed}

    def setup(self, input_shape, rng):
        if self.seed < 0:
            self.seed = int(rng.integers(0, 2**63 - 1))
        return input_shape

    def forward(self, x, training=False):
        if not training or self.p == 0.0:
            self._mask = None
            return x
        out = self.buffer("out", x.shape)
        self._mask = self.buffer("mask", x.shape)
        self.ops.dropout_forward(out, self._mask, x, self.p, self.seed, self.offset)
        self.offset += int(np.prod(x.shape))
        return out

    def backward(self, dout):
        if self._mask is None:
            return dout
        dx = self.buffer("dx", dout.shape)
        self.ops.dropout_backward(dx, dout, self._mask)
        return dx

    def get_rng_state(self):
        return {"seed": self.seed, "offset": self.offset}

    def set_rng_state(self, state):
        self.seed, self.offset = int(state["seed"]), int(state["offset"])
