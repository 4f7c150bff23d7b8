"""numdl: a deep-learning library whose every hot path is a Numba kernel.

The public API. Importing numdl compiles nothing and touches no GPU: kernels load on first use.
"""

import time as _time

#: When numdl was imported (a start-up clock where /proc is not available).
IMPORTED_AT = _time.time()
#: When the ``numdl`` command last started (set by its group callback), or None.
COMMAND_STARTED_AT = None

__version__ = "0.1.0"

from numdl.errors import (CheckpointError, ConfigError, DataError, DeviceError, NumdlError, RegistryError,
                          ShapeError)
from numdl.hookspecs import hookimpl
from numdl.graph import Input, Model
from numdl.layers import (GELU, GRU, LSTM, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Add, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv1d, Conv2d,
                          ConvTranspose2d, Crop2d, CrossAttention, Dropout, Embedding, FinalState, GaussianSample, Flatten, GlobalAvgPool2d, GroupNorm, Layer, LayerNorm,
                          LeakyReLU, Linear, LogSoftmax, MaxPool2d, MultiHeadAttention, Multiply, Pad2d, Parameter,
                          PositionalEncoding, ReLU, Reshape, Residual, SequencePool, Sigmoid, Softmax, SwapAxes, Tanh,
                          TransformerDecoderLayer, TransformerEncoderLayer, Upsample)
from numdl.losses import MAE, MSE, BCEWithLogits, CrossEntropy, Huber, KLDiv, Loss, NLLLoss, PixelCrossEntropy
from numdl.model import Sequential
from numdl.optim import SGD, Adagrad, Adam, Adamax, AdamW, NAdam, Optimizer, RAdam, RMSprop


def from_torch_state_dict(model, state_dict, strict=True):
    """Copy a PyTorch model's ``state_dict`` into a built numdl model of the same architecture (see
    numdl.from_torch); returns {"copied": [...], "unused": [...]}."""
    from numdl.from_torch import from_torch_state_dict as port

    return port(model, state_dict, strict)


def load_model(path, reset_optimizer=False, with_meta=False):
    """A model rebuilt from a checkpoint written by ``numdl train`` or ``model.save`` (its config is
    inside), weights, state and optimizer restored; with ``with_meta``, (model, metadata). Items are
    looked up by registered name; nothing is imported. ``reset_optimizer``: see ``load_weights``."""
    from numdl import config as config_module
    from numdl.checkpoint import read_checkpoint

    _, meta = read_checkpoint(path)  # the metadata's schema is checked there
    if "config" not in meta or "input_shape" not in meta:
        raise CheckpointError(f"{path} holds no model config; build the model and call model.load_weights")
    model = config_module.build_model(meta["config"], tuple(meta["input_shape"]))
    model.load_weights(path, reset_optimizer=reset_optimizer)
    return (model, meta) if with_meta else model


__all__ = [
    "__version__", "load_model", "from_torch_state_dict", "hookimpl", "Sequential", "Model", "Input",
    "Layer", "Parameter", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "LogSoftmax", "Dropout", "Flatten",
    "Reshape", "Conv2d", "Conv1d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d",
    "LayerNorm", "GroupNorm", "Residual", "LSTM", "GRU", "Embedding", "SequencePool", "FinalState", "MultiHeadAttention",
    "CrossAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "PositionalEncoding", "SwapAxes", "ConvTranspose2d", "Upsample", "Pad2d", "Concat",
    "Add", "Multiply", "Crop2d", "GaussianSample", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "Loss", "CrossEntropy", "NLLLoss", "MSE", "MAE", "Huber", "BCEWithLogits", "KLDiv", "PixelCrossEntropy",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam",
    "NumdlError", "CheckpointError", "ConfigError", "DataError", "DeviceError", "RegistryError", "ShapeError",
]
