"""Dense models in one kernel call: ``Sequential.predict`` on a few samples, and ``train_step``.

A model that is a chain of dense layers (Flatten / Reshape, Linear, ReLU, Tanh, Sigmoid, GELU,
Dropout, which is the identity in evaluation) predicts a batch of at most ``MAX_BATCH`` samples
through kernels/dense_chain: one compiled call reads every layer's weights from the model's flat
parameter buffer, where the layer-by-layer path made a kernel call per layer and ran Python between
them (24.6 us for one sample of a 784-128-64-10 MLP, most of it around products of a few us).
Larger batches keep the layer path: there the BLAS products dominate and are the same either way.
Outputs equal the layer path's to rounding (the products may sum in another order); the input
check is the same (NaN or Inf is a DataError naming the first bad sample).

Training: a chain without Dropout or GELU, compiled with hard-label CrossEntropy (mean or sum,
class-last), runs forward, loss and backward of each ``train_step`` in one call (any batch size; on
the CPU). The optimizer, clipping and the loss and gradient checks stay as they are; the gradients are
the layer path's (the same products in the same order), the errors the same lines.
``model.fused_training = False`` keeps the layer path.
"""
import numpy as np

from numdl.errors import DataError
from numdl.losses import CrossEntropy
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
        # training: the hidden layers' outputs (acts) and two rows of their gradients (deltas), the
        # logits and their probabilities (then gradient), and (loss, correct, non-finite gradients)
        self.classes = rows[-1][1]
        self.hidden = sum(row[1] for row in rows[:-1])
        self.train_buffers = {}
        self.stats = np.zeros(3, model.dtype)

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

    # ------------------------------------------------------------------------------ training
    def trains(self, model, x, y):
        """Whether train_step can take this batch here: a host array of the model's dtype and input
        shape, integer labels (not probabilities) and a loss the kernel computes: hard-label
        cross-entropy with a mean or sum, class-last (numdl's default layout)."""
        loss = model.loss
        return (type(loss) is CrossEntropy and loss.reduction in ("mean", "sum") and loss.class_axis == -1
                and type(x) is np.ndarray and x.dtype == model.dtype and x.flags.c_contiguous and x.ndim > 1
                and x.shape[1:] == model.input_shape and 0 < x.shape[0]
                and np.asarray(y).dtype.kind in "iu")

    def train_step(self, model, x, y):
        """Forward, cross-entropy and backward of one batch in one kernel call: fills the model's
        gradients and returns (loss, correct predictions, non-finite gradient count)."""
        n = x.shape[0]
        loss = model.loss
        labels = loss._labels_of(y, (n,), self.classes)  # the loss's own checks and errors
        weights = loss._weights_on_device(self.classes, model.dtype)
        buffers = self.train_buffers.get(n)
        if buffers is None:  # one set per batch size (an epoch has two: the batch and the last one)
            buffers = self.train_buffers[n] = (
                np.zeros(n * self.hidden, model.dtype), np.zeros((2, n * self.width), model.dtype),
                np.zeros((n, self.classes, 1), model.dtype), np.zeros((n, self.classes, 1), model.dtype))
        model.ops.dense_chain_train(self.bank.grads, self.stats, *buffers, x, labels, self.bank.values, self.table,
                                    weights, loss.label_smoothing, loss.ignore_index, loss.reduction == "mean")
        return float(self.stats[0]), int(self.stats[1]), int(self.stats[2])


def plan(model, training=False):
    """A DenseChain for ``model`` (a built Sequential on the CPU), or None when a layer is not one
    the kernel runs (anything but the dense chain above, a plugin's layer, a subclass). ``training``:
    a chain for train_step, which also refuses Dropout (it is not the identity there) and GELU (its
    slope needs the input, which the kernel does not keep)."""
    if model.ops.name != "cpu" or model._bank is None:
        return None
    codes = model.ops.dense_chain_activation_codes()
    trainable_codes = {0, codes["relu"], codes["tanh"], codes["sigmoid"]}
    offsets = {id(p): begin for p, begin in zip(model._bank.params, model._bank.offsets)}
    rows, params, shape = [], [], tuple(model.input_shape)
    for layer in model.layers:
        kind = type(layer)
        if kind in (Flatten, Reshape):
            shape = tuple(layer.output_shape)
        elif kind is Dropout and not training:
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
    if not rows or len(shape) != 1 or (training and any(row[4] not in trainable_codes for row in rows)):
        return None
    base, item = model._bank.values.ctypes.data, model._bank.values.itemsize
    for p in params:  # an array put in a parameter's place is not in the flat buffer the kernel reads
        if not (isinstance(p.value, np.ndarray) and p.value.flags.c_contiguous
                and p.value.ctypes.data == base + offsets[id(p)] * item):
            return None
    if training and len(params) != len(model._bank.params):
        return None  # every gradient of the bank must be written (it always is: a chain holds them all)
    width = max([row[1] for row in rows[:-1]] or [1])
    return DenseChain(model, rows, params, width)
