"""``Sequential.predict`` on a few samples of a dense model in one kernel call.

A model that is a chain of dense layers (Flatten / Reshape, Linear, ReLU, Tanh, Sigmoid, GELU,
Dropout, which is the identity in evaluation) predicts a batch of at most ``MAX_BATCH`` samples
through kernels/dense_chain: one compiled call reads every layer's weights from the model's flat
parameter buffer, where the layer-by-layer path made a kernel call per layer and ran Python between
them (24.6 us for one sample of a 784-128-64-10 MLP, most of it around products of a few us).
Larger batches keep the layer path: there the BLAS products dominate and are the same either way.

Outputs equal the layer path's to rounding (the products may sum in another order); the input
check is the same (NaN or Inf is a DataError naming the first bad sample).
"""

import numpy as np

from numdl.errors import DataError
from numdl.layers.activation import GELU, ReLU, Sigmoid, Tanh
from numdl.layers.linear import Linear
from numdl.layers.shape import Dropout, Flatten, Reshape

#: Batches of at most this many samples take the one-call path (one sample: the kernel's own dot
#: products; more: a BLAS product per layer inside the call). model.predict on the MLP 784-128-64-10,
#: one call / layer by layer (us): 1 sample 9.6 / 25.5, 2: 15.4 / 28.7, 4: 18.7 / 30.7, 8: 35.6 / 56.8;
#: level at 12-16 (78 / 78-83), and the layer path ahead from 32 (113 / 103).
MAX_BATCH = 8

_ACTIVATIONS = (ReLU, Tanh, Sigmoid, GELU)


class DenseChain:
    """One model's chain: the kernel's layer table, its scratch, and the parameters it reads (to
    notice a value replaced by a new array after the plan was made)."""

    def __init__(self, model, rows, params, width):
        self.bank = model._bank
        self.values = [(p, p.value) for p in params]
        self.table = model.ops.asarray(np.array(rows, np.int64))
        self.width = width
        self.scratch = model.ops.zeros((2, MAX_BATCH * width), model.dtype)
        self.bad = model.ops.zeros((1,), model.dtype)
        self.output_shape = tuple(model.output_shape)

    def current(self, model):
        """Whether the plan still reads the model's parameters."""
        return self.bank is model._bank and all(p.value is value for p, value in self.values)

    def predict(self, model, x):
        """Outputs for x, a C-contiguous host array of the model's dtype and input shape (a few samples)."""
        out = np.empty((x.shape[0],) + self.output_shape, model.dtype)
        if x.shape[0] * self.width > self.scratch.shape[1]:  # the kernel does not check its scratch's size
            self.scratch = model.ops.zeros((2, x.shape[0] * self.width), model.dtype)
        model.ops.dense_chain_forward(out, self.bad, x, self.bank.values, self.table, self.scratch)
        if self.bad[0]:
            row = int(np.argwhere(~np.isfinite(x))[0][0])
            raise DataError(f"input data contains NaN or Inf (first at sample {row})")
        return out


def plan(model):
    """A DenseChain for ``model`` (a built Sequential on the CPU), or None when a layer is not one
    the kernel runs (anything but the dense chain above, a plugin's layer, a subclass)."""
    if model.ops.name != "cpu" or model._bank is None:
        return None
    codes = model.ops.dense_chain_activation_codes()
    offsets = {id(p): begin for p, begin in zip(model._bank.params, model._bank.offsets)}
    rows, params, shape = [], [], tuple(model.input_shape)
    for layer in model.layers:
        kind = type(layer)
        if kind in (Flatten, Reshape):
            shape = tuple(layer.output_shape)
        elif kind is Dropout:
            continue
        elif kind is Linear and len(shape) == 1:
            weight, bias = layer.params["weight"], layer.params.get("bias")
            rows.append([shape[0], layer.out_features, offsets[id(weight)], offsets[id(bias)] if bias else -1,
                         codes["relu"] if layer.fused_relu else 0])
            params += [weight] + ([bias] if bias else [])
            shape = (layer.out_features,)
        elif kind in _ACTIVATIONS and getattr(layer, "absorbed", False):
            continue  # a ReLU its Linear applies (fused_relu)
        elif kind in _ACTIVATIONS and rows and rows[-1][4] == 0 and layer.kernel in codes and len(shape) == 1:
            rows[-1][4] = codes[layer.kernel]
        else:
            return None
    if not rows or len(shape) != 1:
        return None
    base, item = model._bank.values.ctypes.data, model._bank.values.itemsize
    for p in params:  # an array put in a parameter's place is not in the flat buffer the kernel reads
        if not (isinstance(p.value, np.ndarray) and p.value.flags.c_contiguous
                and p.value.ctypes.data == base + offsets[id(p)] * item):
            return None
    width = max([row[1] for row in rows[:-1]] or [1])
    return DenseChain(model, rows, params, width)
