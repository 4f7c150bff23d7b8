"""Layer classes: parameters, state and calls to ``self.ops``. No layer imports numba."""

from numdl.layers.activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from numdl.layers.base import Layer, Parameter
from numdl.layers.attention import (CrossAttention, MultiHeadAttention, PositionalEncoding, SwapAxes,
                                    TransformerDecoderLayer, TransformerEncoderLayer)
from numdl.layers.composite import Chain, Residual
from numdl.layers.latent import GaussianSample
from numdl.layers.conv import Conv1d, Conv2d, ConvTranspose2d
from numdl.layers.linear import Linear
from numdl.layers.merge import Add, Concat, Crop2d, Merge, Multiply
from numdl.layers.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from numdl.layers.pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d
from numdl.layers.recurrent import GRU, LSTM, Embedding, FinalState, SequencePool
from numdl.layers.resample import Pad2d, Upsample
from numdl.layers.shape import Dropout, Flatten, Reshape

BUILTIN_LAYERS = (Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax, Dropout, Flatten, Reshape, Conv2d, Conv1d,
                  MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm, Residual, LSTM, GRU,
                  Embedding, SequencePool, FinalState, MultiHeadAttention, CrossAttention, TransformerEncoderLayer, TransformerDecoderLayer, PositionalEncoding, SwapAxes, ConvTranspose2d, Upsample,
                  Pad2d, Concat, Add, Multiply, Crop2d, GaussianSample, AdaptiveAvgPool2d, AdaptiveMaxPool2d)

__all__ = ["Layer", "Parameter", "BUILTIN_LAYERS", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
           "GELU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Reshape", "Conv2d", "Conv1d", "MaxPool2d", "AvgPool2d",
           "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "Residual", "LSTM", "GRU", "Embedding",
           "SequencePool", "FinalState", "MultiHeadAttention", "CrossAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "PositionalEncoding", "SwapAxes", "Chain",
           "ConvTranspose2d", "Upsample", "Pad2d", "Concat", "Add", "Multiply", "Crop2d", "Merge",
           "GaussianSample", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]
