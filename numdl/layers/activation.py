"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (element-wise), Softmax and LogSoftmax (any
feature axis)."""

import numpy as np

from numdl.errors import ConfigError
from numdl.layers.base import Layer


class ElementwiseActivation(Layer):
    """Shared body of the element-wise activations: one forward and one backward kernel each.

    ``kernel`` names the kernel pair; ``saves_output`` says whether backward needs the output
    (sigmoid, tanh) or the input (the rest).
    """

    kernel = None
    saves_output = False

    def _slope(self):
        return None

    def forward(self, x, training=False):
        out = self.buffer("out", x.shape)
        self.ops.activation_forward(self.kernel, out, x, self._slope())
        self._saved = out if self.saves_output else x
        return out

    def backward(self, dout):
        dx = self.buffer("dx", dout.shape)
        self.ops.activation_backward(self.kernel, dx, dout, self._saved, self._slope())
        return dx


class ReLU(ElementwiseActivation):
    name = kernel = "relu"

    def __init__(self):
        super().__init__()
        self.absorbed = False  # set by Sequential when the previous layer applies this ReLU itself

    def forward(self, x, training=False):
        return x if self.absorbed else super().forward(x, training)

    def backward(self, dout):
        return dout if self.absorbed else super().backward(dout)


class LeakyReLU(ElementwiseActivation):
    name = kernel = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def _slope(self):
        return self.negative_slope

    def hyperparameters(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(ElementwiseActivation):
    name = kernel = "sigmoid"
    saves_output = True


class Tanh(ElementwiseActivation):
    name = kernel = "tanh"
    saves_output = True


class GELU(ElementwiseActivation):
    """GELU as PyTorch's ``nn.GELU``: exact, x * Phi(x) (``approximate="none"``, the default), or
    the tanh approximation 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (``"tanh"``, GPT-2's)."""

    name = "gelu"
    APPROXIMATIONS = {"none": "gelu", "tanh": "gelu_tanh"}

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in self.APPROXIMATIONS:
            raise ConfigError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.kernel = self.APPROXIMATIONS[approximate]

    def hyperparameters(self):
        return {"approximate": self.approximate}


class Softmax(Layer):
    """Softmax along ``axis`` (PyTorch's ``nn.Softmax(dim)``; the batch is axis 0, so -1, the default,
    is the last axis and 1 the channels of an image). For classification prefer raw logits with
    'cross_entropy', which fuses the softmax; use this layer when probabilities are the output you
    need."""

    name = "softmax"
    kernel = "softmax"

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = int(axis)

    def hyperparameters(self):
        return {"axis": self.axis}

    def setup(self, input_shape, rng):
        rank = len(input_shape) + 1
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ConfigError(f"{self.name}: axis {self.axis} is not a feature axis of inputs (batch, "
                              f"{', '.join(map(str, input_shape))}) (axis 0 is the batch)")
        return input_shape

    def _view(self, shape):
        # (outer, classes, inner) around the softmax axis (batch included).
        axis = self.axis % len(shape)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        return outer, shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))

    def forward(self, x, training=False):
        view = self._view(tuple(x.shape))
        out = self.buffer("out", view)
        getattr(self.ops, f"{self.kernel}_forward")(out, x.reshape(view))
        self._out = out
        return out.reshape(x.shape)

    def backward(self, dout):
        view = self._view(tuple(dout.shape))
        dx = self.buffer("dx", view)
        getattr(self.ops, f"{self.kernel}_backward")(dx, dout.reshape(view), self._out)
        return dx.reshape(dout.shape)


class LogSoftmax(Softmax):
    """Log-softmax along ``axis`` (PyTorch's ``nn.LogSoftmax(dim)``): x - logsumexp(x), computed
    stably; its outputs are what the 'nll' and 'kl_div' losses take."""

    name = "log_softmax"
    kernel = "log_softmax"
