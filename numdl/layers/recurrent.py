"""Sequence layers: LSTM and GRU (stacked, bidirectional), Embedding, and SequencePool.

Sequences are (batch, time, features). Padded batches carry per-sample lengths, handed to every
layer that sets ``uses_lengths`` by ``Sequential.forward(x, lengths=...)`` (steps past a length are
ignored, as with PyTorch's packed sequences); without lengths every sample uses all steps.
"""

import math

import numpy as np

from numdl.errors import ConfigError, DataError, ShapeError
from numdl.layers.base import Layer


class SequenceLayer(Layer):
    uses_lengths = True

    def __init__(self):
        super().__init__()
        self.lengths = None

    def _lengths(self, n, steps):
        """Per-sample lengths on the device (all ``steps`` when none were given)."""
        if self.lengths is None:
            key = ("full", n, steps)
            if self._buffers.get("lengths_key") != key:
                self._buffers["lengths_key"] = key
                self._buffers["lengths"] = self.ops.asarray(np.full(n, steps, np.int64))
            return self._buffers["lengths"]
        lengths = np.asarray(self.lengths)
        if lengths.shape != (n,) or lengths.min() < 1 or lengths.max() > steps:
            raise DataError(f"layer '{self.name}': lengths must be {n} values in [1, {steps}], got {lengths.tolist()}")
        return self.ops.asarray(lengths.astype(np.int64))


class _Recurrent(SequenceLayer):
    kind = None
    gates = None

    def __init__(self, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 return_sequences: bool = False, dropout: float = 0.0, bias: bool = True, initial_state: bool = False):
        super().__init__()
        if hidden_size < 1 or num_layers < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{self.name}: hidden_size and num_layers must be >= 1 and dropout in [0, 1)")
        self.hidden_size, self.num_layers, self.bidirectional = hidden_size, num_layers, bidirectional
        self.return_sequences, self.dropout, self.bias = return_sequences, dropout, bool(bias)
        self.directions = 2 if bidirectional else 1
        self._dropouts = []
        # initial_state: the layer takes [x, h0] (GRU) or [x, h0, c0] (LSTM), states of shape (batch,
        # num_layers * directions, hidden): PyTorch's (h0, c0), batch first; a graph then passes a list
        self.initial_state = bool(initial_state)
        self.many_inputs = self.initial_state
        self._states = None
        self._final_grads = {}  # "h" / "c" -> gradient of final_states() for the next backward
        self.proj_size = 0  # the LSTM's projection (PyTorch's proj_size); 0: none

    @property
    def state_size(self):
        """Features of the hidden state h (and of each direction's output): proj_size when the LSTM
        projects, else hidden_size. The LSTM's cell state keeps hidden_size."""
        return self.proj_size or self.hidden_size

    def _state_sizes(self):
        """Feature counts of the carried states: (h,) for the GRU, (h, c) for the LSTM."""
        return (self.state_size, self.hidden_size)[:self.state_count]

    def hyperparameters(self):
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers, "bidirectional": self.bidirectional,
                "return_sequences": self.return_sequences, "dropout": self.dropout, "bias": self.bias,
                "initial_state": self.initial_state}

    @property
    def state_count(self):
        """How many state arrays the layer carries: (h,) for the GRU, (h, c) for the LSTM."""
        return 2 if self.kind == "lstm" else 1

    def build(self, input_shape, ops, dtype, rng):
        if not self.initial_state:
            return super().build(input_shape, ops, dtype, rng)
        shapes = [tuple(int(d) for d in shape) for shape in input_shape]
        expected = [(self.num_layers * self.directions, size) for size in self._state_sizes()]
        if len(shapes) != 1 + self.state_count or shapes[1:] != expected:
            names = "x, h0, c0" if self.kind == "lstm" else "x, h0"
            wanted = " and ".join(f"(batch, {a}, {b})" for a, b in expected)
            raise ShapeError(f"layer '{self.name}' with initial_state takes [{names}], the states of shape "
                             f"{wanted}; got shapes {shapes}")
        self.input_shapes = shapes
        return super().build(shapes[0], ops, dtype, rng)

    def final_states(self):
        """The last forward's final states as host arrays (batch, num_layers * directions, features):
        (h_n,) for the GRU, (h_n, c_n) for the LSTM (h_n has proj_size features when the LSTM
        projects), PyTorch's (batch first; a padded sample's at its
        last valid step, the reverse direction's at step 0). Read-only: no gradient flows back
        through them."""
        if self._states is None:
            raise ConfigError(f"layer '{self.name}': no forward pass yet")
        lengths, saved_by_layer = self._states
        host_lengths = self.ops.to_numpy(lengths)
        n = len(host_lengths)
        rows = np.arange(n)
        finals = [np.empty((n, self.num_layers * self.directions, size), self.dtype) for size in self._state_sizes()]
        for layer, saved in enumerate(saved_by_layer):
            for direction, (view, _, cells, _) in enumerate(saved):
                step = np.zeros(n, np.int64) if direction == 1 else host_lengths - 1
                index = layer * self.directions + direction
                finals[0][:, index] = self.ops.to_numpy(view)[rows, step]
                if self.state_count == 2:
                    finals[1][:, index] = self.ops.to_numpy(cells)[rows, step]
        return tuple(finals)

    def add_final_state_grad(self, which, grad):
        """Add the gradient of final state ``which`` ("h" or "c", as final_states() gives them: (batch,
        L D, features)) for the next backward, which then also carries it back (PyTorch's gradient
        through h_n and c_n). numdl.FinalState hands it over in a graph."""
        grad = np.asarray(self.ops.to_numpy(grad), np.float64)
        held = self._final_grads.get(which)
        self._final_grads[which] = grad if held is None else held + grad

    def _fold_final_h(self, dout, dh_n, layer, lengths):
        """dout plus h_n's gradient at each direction's final step of ``layer`` (h_n is the output
        there: the last valid step, the reverse direction's step 0). A copy; host-side (not hot)."""
        host = np.array(self.ops.to_numpy(dout))
        steps = self.ops.to_numpy(lengths) - 1
        rows, size = np.arange(host.shape[0]), self.state_size
        for direction in range(self.directions):
            at = np.zeros_like(steps) if direction == 1 else steps
            host[rows, at, direction * size:(direction + 1) * size] += dh_n[:, layer * self.directions + direction]
        return self.ops.asarray(host.astype(self.dtype))

    def _biases(self, suffix):
        """(b_ih, b_hh) Parameters, or with bias = false zeros whose gradients go to scratch (the
        kernels keep one form)."""
        if self.bias:
            return self.params[f"bias_ih{suffix}"], self.params[f"bias_hh{suffix}"]
        return self._no_bias, self._no_bias

    def _suffix(self, layer, direction):
        return f"_l{layer}" + ("_reverse" if direction else "")

    def setup(self, input_shape, rng):
        if len(input_shape) != 2:
            raise ShapeError(f"layer '{self.name}' expects inputs (batch, time, features) but got input shape "
                             f"(batch, {', '.join(map(str, input_shape))})")
        from numdl.layers.shape import Dropout

        h, g, size = self.hidden_size, self.gates, self.state_size
        bound = 1.0 / math.sqrt(h)  # PyTorch's default: every weight and bias U(-1/sqrt(H), 1/sqrt(H))
        features = input_shape[1]
        for layer in range(self.num_layers):
            for direction in range(self.directions):
                s = self._suffix(layer, direction)
                self.add_param(f"weight_ih{s}", rng.uniform(-bound, bound, (g * h, features)))
                self.add_param(f"weight_hh{s}", rng.uniform(-bound, bound, (g * h, size)))
                if self.bias:
                    self.add_param(f"bias_ih{s}", rng.uniform(-bound, bound, g * h))
                    self.add_param(f"bias_hh{s}", rng.uniform(-bound, bound, g * h))
                if self.proj_size:  # PyTorch's order: the projection after the biases
                    self.add_param(f"weight_hr{s}", rng.uniform(-bound, bound, (size, h)))
            features = size * self.directions
        if not self.bias:
            from numdl.layers.base import Parameter

            zeros = self.ops.zeros((g * h,), self.dtype)
            self._no_bias = Parameter("no_bias", zeros, self.ops.zeros((g * h,), self.dtype))
        self._dropouts = []
        for _ in range(self.num_layers - 1):
            drop = Dropout(self.dropout)
            drop.build((input_shape[0], features), self.ops, self.dtype, rng)
            self._dropouts.append(drop)
        steps = input_shape[0]
        return (steps, features) if self.return_sequences else (features,)

    def _state_slices(self, states, n):
        """Each (layer, direction)'s (batch, features) initial states from the (batch, L D, features)
        inputs, copied out contiguous (concat_backward: the slice at that offset of the flattened rows)."""
        slices = []
        for kind, (full, h) in enumerate(zip(states, self._state_sizes())):
            flat = full.reshape(n, full.shape[1] * h)
            pieces = []
            for index in range(self.num_layers * self.directions):
                piece = self.buffer(f"state{kind}_{index}", (n, h))
                self.ops.concat_backward(piece, flat, index * h)
                pieces.append(piece)
            slices.append(pieces)
        return slices

    def forward(self, x, training=False):
        states = None
        if self.initial_state:
            x, *states = x
            for index, (array, shape) in enumerate(zip([x, *states], self.input_shapes)):
                if tuple(array.shape[1:]) != shape or array.shape[0] != x.shape[0]:
                    raise ShapeError(f"layer '{self.name}' expects input {index} of shape (batch, "
                                     f"{', '.join(map(str, shape))}) but got {tuple(array.shape)}")
            states = [self.contiguous(a, f"state{i}_copy") for i, a in enumerate(states)]
        x = self.contiguous(x, "x_copy")
        n, steps = x.shape[0], x.shape[1]
        h, g, d, size = self.hidden_size, self.gates, self.directions, self.state_size
        lengths = self._lengths(n, steps)
        self._saved = []
        self._initial = None if states is None else self._state_slices(states, n)
        inputs = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                inputs = self._dropouts[layer - 1].forward(inputs, training)
            out = self.buffer(f"out{layer}", (n, steps, d * size))
            saved = []
            for direction in range(d):
                s = self._suffix(layer, direction)
                gates = self.buffer(f"gates{s}", (n, steps, g * h))
                cells = self.buffer(f"cells{s}", (n, steps, h))
                view = out[:, :, direction * size:(direction + 1) * size] if d > 1 else out
                h0, c0 = self._initial_of(layer * d + direction)
                projection = mids = None
                if self.proj_size:
                    mids = self.buffer(f"mids{s}", (n, steps, h))
                    projection = (self.params[f"weight_hr{s}"].value, mids, self.buffer("m_step", (n, h)))
                self.ops.recurrent_forward(self.kind, view, gates, cells, self.buffer("proj", (n * steps, g * h)),
                                           self.buffer("hh", (n, g * h)), self.buffer("h_prev", (n, size)), inputs,
                                           lengths, self.params[f"weight_ih{s}"].value,
                                           self.params[f"weight_hh{s}"].value, self._biases(s)[0].value,
                                           self._biases(s)[1].value, direction == 1, h0, c0, projection)
                saved.append((view, gates, cells, mids))
            self._saved.append((inputs, saved))
            inputs = out
        self._lengths_used = lengths
        self._states = (lengths, [saved for _, saved in self._saved])  # final_states() reads them back
        if self.return_sequences:
            return inputs
        last = self.buffer("last", (n, d * size))
        self.ops.last_step_forward(last, inputs, lengths, size)  # the reverse half takes step 0, as h_n
        return last

    def _initial_of(self, index):
        """(h0, c0) of (layer, direction) number ``index``, None where not given."""
        if self._initial is None:
            return None, None
        return self._initial[0][index], (self._initial[1][index] if self.state_count == 2 else None)

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        n = dout.shape[0]
        state_grads = None
        if self._initial is not None:
            state_grads = [self.buffer(f"dstate{kind}", (n, self.num_layers * self.directions * features))
                           for kind, features in enumerate(self._state_sizes())]
        h, g, d, size = self.hidden_size, self.gates, self.directions, self.state_size
        lengths = self._lengths_used
        steps = self._saved[0][0].shape[1]
        if not self.return_sequences:
            full = self.buffer("dlast", (n, steps, d * size))
            self.ops.last_step_backward(full, dout, lengths, size)
            dout = full
        dproj_rows = self.ops.recurrent_gate_gradient_rows(self.kind, n, steps)
        scratch = (self.buffer("dproj", (2, dproj_rows, g * h)), self.buffer("dstep", (n, g * h)),
                   self.buffer("h_step", (n * steps, size)), self.buffer("dh_next", (n, size)),
                   self.buffer("dc_next", (n, h)))
        final_grads, self._final_grads = self._final_grads, {}
        for layer in range(self.num_layers - 1, -1, -1):
            inputs, saved = self._saved[layer]
            if "h" in final_grads:
                dout = self._fold_final_h(dout, final_grads["h"], layer, lengths)
            want_dx = layer > 0 or self.needs_input_grad
            dx_total = None
            for direction, (view, gates, cells, mids) in enumerate(saved):
                s = self._suffix(layer, direction)
                dview = dout[:, :, direction * size:(direction + 1) * size] if d > 1 else dout
                dx = self.buffer(f"dx{layer}_{direction}", inputs.shape) if want_dx else None
                p = {k: self.params[f"{k}{s}"] for k in ("weight_ih", "weight_hh")}
                p["bias_ih"], p["bias_hh"] = self._biases(s)
                index = layer * d + direction
                h0, c0 = self._initial_of(index)
                dh0 = dc0 = None
                if state_grads is not None:
                    dh0 = self.buffer("dh0_piece", (n, size))
                    dc0 = self.buffer("dc0_piece", (n, h)) if self.state_count == 2 else None
                projection = None
                if self.proj_size:
                    w_hr = self.params[f"weight_hr{s}"]
                    projection = (w_hr.grad, self.buffer("dh_all", (n * steps, size)), self.buffer("dm_step", (n, h)),
                                  mids, w_hr.value)
                dcn = None
                if "c" in final_grads:
                    dcn = self.ops.asarray(np.ascontiguousarray(final_grads["c"][:, index], self.dtype))
                self.ops.recurrent_backward(self.kind, dx, p["weight_ih"].grad, p["weight_hh"].grad,
                                            p["bias_ih"].grad, p["bias_hh"].grad, scratch, dview, view, gates, cells,
                                            inputs, lengths, p["weight_ih"].value, p["weight_hh"].value,
                                            direction == 1, dh0, dc0, h0, c0, projection, dcn)
                if state_grads is not None:  # into the (batch, L D, features) gradients, at this index
                    for grad, piece, features in zip(state_grads, (dh0, dc0), self._state_sizes()):
                        self.ops.concat_forward(grad, piece, index * features)
                if dx is not None:
                    if dx_total is None:
                        dx_total = dx
                    else:
                        summed = self.buffer(f"dxsum{layer}", inputs.shape)
                        self.ops.add(summed, dx_total, dx)
                        dx_total = summed
            if layer > 0 and self.dropout > 0 and dx_total is not None:
                dx_total = self._dropouts[layer - 1].backward(dx_total)
            dout = dx_total
        if state_grads is None:
            return dout
        return [dout] + [grad.reshape(n, self.num_layers * self.directions, features)
                         for grad, features in zip(state_grads, self._state_sizes())]

    def get_rng_state(self):
        return {str(i): drop.get_rng_state() for i, drop in enumerate(self._dropouts)}

    def set_rng_state(self, state):
        for i, drop in enumerate(self._dropouts):
            if str(i) in state:
                drop.set_rng_state(state[str(i)])


class LSTM(_Recurrent):
    """Long short-term memory (PyTorch's ``nn.LSTM`` equations, gate order i, f, g, o, its parameter
    names ``weight_ih_l0`` ... and its initialisation). Returns the final hidden state (batch,
    directions * hidden) or, with ``return_sequences``, every step (batch, time, directions * hidden).

    ``proj_size`` > 0 (PyTorch's LSTM with projections): the hidden state is h_t = W_hr (o_t *
    tanh(c_t)) with ``weight_hr_l{k}`` (proj_size, hidden); outputs, h0 and h_n then have proj_size
    features per direction, the cell state keeps hidden_size."""

    name = "lstm"
    kind = "lstm"
    gates = 4

    def __init__(self, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 return_sequences: bool = False, dropout: float = 0.0, bias: bool = True, initial_state: bool = False,
                 proj_size: int = 0):
        super().__init__(hidden_size, num_layers, bidirectional, return_sequences, dropout, bias, initial_state)
        if not 0 <= proj_size < hidden_size:
            raise ConfigError(f"{self.name}: proj_size must be in [0, hidden_size = {hidden_size}), got {proj_size}")
        self.proj_size = int(proj_size)

    def hyperparameters(self):
        return {**super().hyperparameters(), "proj_size": self.proj_size}


class GRU(_Recurrent):
    """Gated recurrent unit (PyTorch's ``nn.GRU`` equations, gate order r, z, n)."""

    name = "gru"
    kind = "gru"
    gates = 3


class FinalState(Layer):
    """A recurrent layer's final state as a tensor of a graph, with gradient: PyTorch's h_n or c_n of
    ``out, (h_n, c_n) = lstm(x)``. Call it on the lstm / gru layer's output; it gives (batch,
    num_layers * directions, features), the layout ``initial_state`` takes, so an encoder's states can
    start a decoder: ``numdl.LSTM(..., initial_state=True)([y, FinalState("h")(seq), FinalState("c")(seq)])``.
    ``which``: "h" (proj_size features when the LSTM projects), or "c" (the LSTM's cell state). In a
    sequential model it reads the layer right before it."""

    name = "final_state"

    def __init__(self, which: str = "h"):
        super().__init__()
        if which not in ("h", "c"):
            raise ConfigError(f"final_state: which must be 'h' or 'c', got {which!r}")
        self.which = which
        self.producer = None  # the recurrent layer whose output this is called on (set by the graph)

    def hyperparameters(self):
        return {"which": self.which}

    def setup(self, input_shape, rng):
        producer = self.producer
        if not isinstance(producer, _Recurrent):
            raise ConfigError("final_state reads an lstm / gru layer: call it on such a layer's output in a graph, "
                              "or put it right after one in a sequential model")
        if self.which == "c" and producer.state_count != 2:
            raise ConfigError(f"final_state: which = 'c' needs an lstm; '{producer.name}' has no cell state")
        sizes = dict(zip("hc", producer._state_sizes()))
        return (producer.num_layers * producer.directions, sizes[self.which])

    def forward(self, x, training=False):
        finals = self.producer.final_states()
        return self.ops.asarray(np.ascontiguousarray(finals["hc".index(self.which)], self.dtype))

    def backward(self, dout):
        self.producer.add_final_state_grad(self.which, dout)
        # The sequence itself gets no gradient from here (zeros, so that the producer's backward runs).
        dx = self.buffer("dx", (dout.shape[0],) + tuple(self.input_shape))
        self.ops.zero_(dx)
        return dx


class SequencePool(SequenceLayer):
    """(batch, time, features) -> (batch, features): the last valid step, or the mean of valid steps."""

    name = "sequence_pool"

    def __init__(self, mode: str = "last"):
        super().__init__()
        if mode not in ("last", "mean"):
            raise ConfigError(f"sequence_pool: mode must be last or mean, got {mode!r}")
        self.mode = mode

    def hyperparameters(self):
        return {"mode": self.mode}

    def setup(self, input_shape, rng):
        if len(input_shape) != 2:
            raise ShapeError(f"layer 'sequence_pool' expects (batch, time, features) inputs, got "
                             f"(batch, {', '.join(map(str, input_shape))})")
        return (input_shape[1],)

    def forward(self, x, training=False):
        self._used = self._lengths(x.shape[0], x.shape[1])
        out = self.buffer("out", (x.shape[0], x.shape[2]))
        if self.mode == "last":
            self.ops.last_step_forward(out, x, self._used, x.shape[2])
        else:
            self.ops.mean_steps_forward(out, x, self._used)
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        if self.mode == "last":
            self.ops.last_step_backward(dx, dout, self._used, dout.shape[1])
        else:
            self.ops.mean_steps_backward(dx, dout, self._used)
        return dx


class Embedding(Layer):
    """Integer token ids (batch, time) -> vectors (batch, time, dim); weight (num_embeddings, dim)
    initialised N(0, 1) as in PyTorch. Ids outside [0, num_embeddings) are refused before any kernel.

    As PyTorch's ``nn.Embedding``: ``padding_idx`` (negative: counted from the end) names a row that
    starts at zeros and gets no gradient (a padding token's vector stays put); ``max_norm`` scales
    each looked-up row whose ``norm_type``-norm exceeds it back to that norm, in place, before the
    lookup (in training and evaluation alike, as PyTorch)."""

    name = "embedding"
    input_dtype = "int64"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0):
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ConfigError("embedding: num_embeddings and embedding_dim must be >= 1")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ConfigError(f"embedding: padding_idx must be in [-{num_embeddings}, {num_embeddings}), "
                              f"got {padding_idx}")
        if max_norm is not None and not max_norm > 0:
            raise ConfigError(f"embedding: max_norm must be > 0, got {max_norm}")
        if not norm_type > 0:
            raise ConfigError(f"embedding: norm_type must be > 0, got {norm_type}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        # the row without gradient, as a non-negative index (-1: none)
        self._padding_row = -1 if padding_idx is None else padding_idx % num_embeddings

    def hyperparameters(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx, "max_norm": self.max_norm, "norm_type": self.norm_type}

    def setup(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ShapeError(f"layer 'embedding' expects token ids (batch, time), got (batch, "
                             f"{', '.join(map(str, input_shape))})")
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self._padding_row >= 0:
            weight[self._padding_row] = 0  # PyTorch's padding row starts at zeros
        self.add_param("weight", weight)
        return (input_shape[0], self.embedding_dim)

    def forward(self, x, training=False):
        host = self.ops.to_numpy(x)
        if host.dtype.kind not in "iu":
            raise DataError(f"layer 'embedding' needs integer token ids, got dtype {host.dtype}")
        if host.size and (host.min() < 0 or host.max() >= self.num_embeddings):
            bad = host[(host < 0) | (host >= self.num_embeddings)][0]
            raise DataError(f"token id {bad} is outside [0, {self.num_embeddings}) of layer 'embedding'")
        self._indices = self.ops.asarray(host.astype(np.int64, copy=False))
        if self.max_norm is not None:
            rows = self.ops.asarray(np.unique(host).astype(np.int64))
            self.ops.embedding_renorm(self.params["weight"].value, rows, self.max_norm, self.norm_type)
        out = self.buffer("out", (x.shape[0], x.shape[1], self.embedding_dim))
        self.ops.embedding_forward(out, self._indices, self.params["weight"].value)
        return out

    def backward(self, dout):
        self.ops.embedding_backward(self.params["weight"].grad, dout, self._indices, self._padding_row)
        return None  # token ids have no gradient
