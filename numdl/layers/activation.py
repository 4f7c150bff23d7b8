"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (element-wise) and Softmax (last axis)."""

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
    """Softmax over the last axis. For classification prefer raw logits with 'cross_entropy',
    which fuses the softmax; use this layer when probabilities are the output you need."""

    name = "softmax"

    def forward(self, x, training=False):
        rows = self.rows(x, self.input_shape[-1])
        out = self.buffer("out", rows.shape)
        self.ops.softmax_forward(out, rows)
        self._out = out
        return out.reshape(x.shape)

    def backward(self, dout):
        rows = self.rows(dout, self.input_shape[-1])
        dx = self.buffer("dx", rows.shape)
        self.ops.softmax_backward(dx, rows, self._out)
        return dx.reshape(dout.shape)
