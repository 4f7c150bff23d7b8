"""Layer classes: parameters, state and calls to ``self.ops``. No layer imports numba."""

from numdl.layers.activation import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from numdl.layers.base import Layer, Parameter
from numdl.layers.linear import Linear
from numdl.layers.shape import Dropout, Flatten

BUILTIN_LAYERS = (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, Dropout, Flatten)

__all__ = ["Layer", "Parameter", "BUILTIN_LAYERS", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
           "GELU", "Softmax", "Dropout", "Flatten"]
