"""Dense models in one kernel call: ``Sequential.predict`` and ``train_step``.

A model that is a chain of dense layers (Flatten / Reshape, Linear, ReLU, Tanh, Sigmoid, GELU,
Dropout, which is the identity in evaluation) predicts each batch (``predict``'s ``batch_size``)
through kernels/dense_chain: one compiled call reads every layer's weights from the model's flat
parameter buffer, where the layer-by-layer path made a kernel call per layer and ran Python between
them (24.6 us for one sample of a 784-128-64-10 MLP, most of it around products of a few us; at
batches of 16 to 1000, after training, 24% to 3% of the time per sample). Outputs equal the layer
path's to rounding (the products may sum in another order); the input check is the same (NaN or
Inf is a DataError naming the first bad sample).

Training: a chain (any Dropout right after a hidden layer's activation), compiled with
hard-label CrossEntropy (mean or sum, class-last), runs forward, loss and backward of each
``train_step`` in one call (any batch size; on the CPU; the dropout masks are the Dropout layers' own
streams, so the same as layer by layer). A plain Adam or AdamW over the model's flat buffers (no
clipping) steps inside the same call, after the kernel's own loss and gradient checks (the same as the
model's, which then raise with nothing changed); other optimizers, clipping and the checks stay as
they are. The gradients are the layer path's (the same products in the same order; float32
products by register blocks over numba's threads, so to rounding), the errors the same lines.
``model.fused_training = False`` keeps the layer path.
"""

import numpy as np

from numdl.errors import DataError
from numdl.losses import CrossEntropy
from numdl.layers.activation import GELU, ReLU, Sigmoid, Tanh
from numdl.layers.linear import Linear
from numdl.layers.shape import Dropout, Flatten, Reshape

#: Whether ``Sequential.predict`` takes the one-call path where the plan allows (False: layer by
#: layer, for comparison; the outputs are the same to rounding).
ONE_CALL_PREDICT = True

_ACTIVATIONS = (ReLU, Tanh, Sigmoid, GELU)


class DenseChain:
    """One model's chain: the kernel's layer table, its scratch, and the parameters it reads (to
    notice a value replaced by a new array after the plan was made)."""

    def __init__(self, model, rows, params, width, dropouts, codes):
        self.bank = model._bank
        self.values = [(p, p.value) for p in params]
        self.width = width
        self.scratch = model.ops.zeros((2, width), model.dtype)  # grown to predict's batch
        self.bad = model.ops.zeros((1,), model.dtype)
        self.output_shape = tuple(model.output_shape)
        # training: the hidden layers' outputs, each after its GELU's input where it has one and followed
        # by its dropped-out copy where a Dropout follows it (acts; where each starts, per sample, goes in
        # the table), two rows of their
        # gradients (deltas), the logits and their probabilities (then gradient), and (loss, correct,
        # non-finite gradients)
        self.dropouts = dropouts
        self.dropout_rates = [(layer, layer.p) for layer in model.layers if type(layer) is Dropout]
        # (p, 1 / (1 - p)) of each hidden layer's Dropout (0, 1: none), the scale as the Dropout layer rounds it
        self.rates = np.array([[0.0, 1.0] if d is None else [d.p, 1.0 / (1.0 - d.p)] for d in dropouts]
                              + [[0.0, 1.0]], model.dtype)
        position, source = 0, -1
        for index, row in enumerate(rows):
            gelu = row[4] in (codes["gelu"], codes["gelu_tanh"])
            row[9] = position if gelu else -1  # GELU's input, kept for its slope
            position += row[1] if gelu else 0
            row[7:9] = [position if index < len(rows) - 1 else -1, source]
            if index < len(rows) - 1:
                dropout = dropouts[index]
                source = position + (row[1] if dropout is not None else 0)  # the next layer reads the dropped copy
                position += row[1] * (2 if dropout is not None else 1)
        self.table = model.ops.asarray(np.array(rows, np.int64))
        self.classes = rows[-1][1]
        self.hidden = position
        self.train_buffers = {}
        self.stats = np.zeros(5, model.dtype)

    def current(self, model):
        """Whether the plan still reads the model's parameters (and, for training, still has its
        Dropout layers' rates: a rate set to or from 0 after the plan changes which layers it runs)."""
        if self.bank is not model._bank:
            return False
        for p, value in self.values:  # plain loops: this runs on every predict call (a serving call's ~10 us)
            if p.value is not value:
                return False
        for layer, p in self.dropout_rates:
            if layer.p != p:
                return False
        return True

    def predict(self, model, x, batch_size=1000):
        """Outputs for x, a C-contiguous host array of the model's dtype and input shape: one kernel
        call per ``batch_size`` samples; NaN or Inf in a batch is a DataError before its outputs."""
        n = x.shape[0]
        out = np.empty((n,) + self.output_shape, model.dtype)
        if n <= batch_size:  # one call, without slicing (a serving call's few samples)
            self._forward(model, out, x, 0)
            return out
        step = int(batch_size)  # >= 1: model.predict checks it
        for begin in range(0, n, step):
            self._forward(model, out[begin:begin + step], x[begin:begin + step], begin)
        return out

    def _forward(self, model, out, x, first):
        if x.shape[0] * self.width > self.scratch.shape[1]:  # the kernel does not check its scratch's size
            self.scratch = model.ops.zeros((2, x.shape[0] * self.width), model.dtype)
        model.ops.dense_chain_forward(out, self.bad, x, self.bank.values, self.table, self.scratch)
        if self.bad[0]:
            row = first + int(np.argwhere(~np.isfinite(x))[0][0])
            raise DataError(f"input data contains NaN or Inf (first at sample {row})")

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

    def train_step(self, model, x, y, adam=None, loss_ceiling=np.inf):
        """Forward, cross-entropy and backward of one batch in one kernel call: fills the model's
        gradients and returns (loss, correct predictions, non-finite gradient count, whether the
        optimizer stepped). ``adam``: the optimizer's ``kernel_step``, which the kernel then takes
        unless a gradient or the loss is not finite or the loss is above ``loss_ceiling``."""
        n = x.shape[0]
        loss = model.loss
        if type(y) is np.ndarray and y.dtype == np.int64 and y.shape == (n,) and y.flags.c_contiguous:
            labels = y  # the kernel checks the range (a DataError below when one is out of it)
        else:
            labels = loss._labels_of(y, (n,), self.classes)  # the loss's own checks and errors
        weights = loss._weights_on_device(self.classes, model.dtype)
        buffers = self.train_buffers.get(n)
        if buffers is None:  # one set per batch size (an epoch has two: the batch and the last one)
            buffers = self.train_buffers[n] = (
                np.zeros(n * self.hidden, model.dtype), np.zeros((2, n * self.width), model.dtype),
                np.zeros((n, self.classes, 1), model.dtype), np.zeros((n, self.classes, 1), model.dtype))
        offsets = [(dropout, dropout.offset) for dropout in self.dropouts if dropout is not None]
        for index, dropout in enumerate(self.dropouts):
            if dropout is not None:  # the mask's stream: the layer's own (seed, offset), advanced as its forward does
                self.table[index, 5:7] = [np.uint64(dropout.seed).view(np.int64), dropout.offset]
                dropout.offset += n * int(self.table[index, 1])  # a Python int: the offset goes into checkpoints' JSON
        model.ops.dense_chain_train(self.bank.grads, self.stats, *buffers, x, labels, self.bank.values, self.table,
                                    self.rates, weights, loss.label_smoothing, loss.ignore_index,
                                    loss.reduction == "mean", adam, loss_ceiling)
        if self.stats[3]:  # a label out of range: nothing was computed; the loss's own error
            for dropout, offset in offsets:
                dropout.offset = offset
            loss._labels_of(y, (n,), self.classes)
            raise AssertionError("the chain kernel found a label out of range that the loss's check accepts")
        return float(self.stats[0]), int(self.stats[1]), int(self.stats[2]), bool(self.stats[4])


def plan(model, training=False):
    """A DenseChain for ``model`` (a built Sequential on the CPU), or None when a layer is not one
    the kernel runs (anything but the dense chain above, a plugin's layer, a subclass). ``training``:
    a chain for train_step, which takes Dropout only right after a hidden layer's activation (or its
    Linear)."""
    if model.ops.name != "cpu" or model._bank is None:
        return None
    codes = model.ops.dense_chain_activation_codes()
    offsets = {id(p): begin for p, begin in zip(model._bank.params, model._bank.offsets)}
    # rows: (in, out, weight offset, bias offset, activation, dropout seed, dropout offset, output
    # position, input position, GELU input position); DenseChain fills the last five
    rows, params, dropouts, shape = [], [], [], tuple(model.input_shape)
    for layer in model.layers:
        kind = type(layer)
        if kind in (Flatten, Reshape):
            shape = tuple(layer.output_shape)
        elif kind is Dropout and (not training or layer.p == 0.0):
            continue  # the identity
        elif kind is Dropout and rows and dropouts[-1] is None and len(shape) == 1:
            dropouts[-1] = layer
        elif kind is Linear and len(shape) == 1:
            weight, bias = layer.params["weight"], layer.params.get("bias")
            rows.append([shape[0], layer.out_features, offsets[id(weight)], offsets[id(bias)] if bias else -1,
                         codes["relu"] if layer.fused_relu else 0, 0, 0, 0, 0, 0])
            params += [weight] + ([bias] if bias else [])
            dropouts.append(None)
            shape = (layer.out_features,)
        elif kind in _ACTIVATIONS and getattr(layer, "absorbed", False):
            continue  # a ReLU its Linear applies (fused_relu)
        elif (kind in _ACTIVATIONS and rows and rows[-1][4] == 0 and dropouts[-1] is None and layer.kernel in codes
              and len(shape) == 1):
            rows[-1][4] = codes[layer.kernel]
        else:
            return None
    if not rows or len(shape) != 1 or dropouts[-1] is not None:
        return None  # (a Dropout on the logits: not a chain the kernel trains)
    base, item = model._bank.values.ctypes.data, model._bank.values.itemsize
    for p in params:  # an array put in a parameter's place is not in the flat buffer the kernel reads
        if not (isinstance(p.value, np.ndarray) and p.value.flags.c_contiguous
                and p.value.ctypes.data == base + offsets[id(p)] * item):
            return None
    if training and len(params) != len(model._bank.params):
        return None  # every gradient of the bank must be written (it always is: a chain holds them all)
    width = max([row[1] for row in rows[:-1]] or [1])
    return DenseChain(model, rows, params, width, dropouts[:-1], codes)
