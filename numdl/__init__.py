"""numdl: a deep-learning library whose every hot path is a Numba kernel.

The public API. Importing numdl compiles nothing and touches no GPU: kernels load on first use.
"""

__version__ = "0.1.0"

from numdl.errors import ConfigError, DataError, DeviceError, NumdlError, RegistryError, ShapeError
from numdl.hookspecs import hookimpl
from numdl.layers import (GELU, GRU, LSTM, AvgPool2d, Embedding, MultiHeadAttention, PositionalEncoding,
                          SequencePool, SwapAxes, TransformerEncoderLayer, BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, Dropout, Flatten,
                          GlobalAvgPool2d, Layer, LayerNorm, LeakyReLU, Linear, MaxPool2d, Parameter, ReLU, Reshape,
                          Residual, Sigmoid, Softmax, Tanh)
from numdl.losses import MSE, BCEWithLogits, CrossEntropy, Loss
from numdl.model import Sequential
from numdl.optim import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = [
    "__version__", "hookimpl", "Sequential",
    "Layer", "Parameter", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "Dropout", "Flatten",
    "Reshape", "Conv2d", "Conv1d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d",
    "LayerNorm", "Residual", "LSTM", "GRU", "Embedding", "SequencePool", "MultiHeadAttention",
    "TransformerEncoderLayer", "PositionalEncoding", "SwapAxes",
    "Loss", "CrossEntropy", "MSE", "BCEWithLogits",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop",
    "NumdlError", "ConfigError", "DataError", "DeviceError", "RegistryError", "ShapeError",
]
