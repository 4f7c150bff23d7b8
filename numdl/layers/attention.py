"""Attention layers: MultiHeadAttention (self-attention, PyTorch's packed in_proj / out_proj
parameters), CrossAttention (queries from one sequence, keys and values from another),
TransformerEncoderLayer and TransformerDecoderLayer (post- or pre-norm), positional encodings,
SwapAxes."""

import math

import numpy as np

from numdl.errors import ConfigError, DataError, ShapeError
from numdl.layers.base import Layer
from numdl.layers.composite import Chain, Composite, Residual
from numdl.layers.merge import Merge
from numdl.layers.recurrent import SequenceLayer


def _sequence_shape(layer, input_shape):
    if len(input_shape) != 2:
        raise ShapeError(f"layer '{layer.name}' expects (batch, time, features) inputs but got input shape "
                         f"(batch, {', '.join(map(str, input_shape))})")
    return input_shape


class _AttentionCore:
    """What self- and cross-attention share: the attention and the output projection over projected
    queries, keys and values (``_attend``, ``_attend_backward``); PyTorch's ``attn_mask`` (set the
    ``attn_mask`` attribute to a (target, source) array before ``forward``: booleans, True where a
    query may NOT attend, or floats added to the scores, -inf forbidding); ``dropout`` on the
    attention weights in training (PyTorch's: each weight zeroed with probability p, the rest scaled
    by 1/(1-p)); ``attention_weights()``, the last forward's weights (PyTorch's ``need_weights``)."""

    attn_mask = None
    dropout = 0.0
    _keep = None

    def _add_shared_parameters(self, embed, rng):
        """After the input projections' weights: their bias, the output projection (PyTorch's
        initialisation), the score scale and the weights' dropout, in that order of draws."""
        self.add_param("in_proj_bias", np.zeros(3 * embed))
        out_bound = 1.0 / math.sqrt(embed)
        self.add_param("out_proj_weight", rng.uniform(-out_bound, out_bound, (embed, embed)))
        self.add_param("out_proj_bias", np.zeros(embed))
        self.scale = 1.0 / math.sqrt(embed // self.num_heads)
        self._build_weight_dropout(rng)

    def _build_weight_dropout(self, rng):
        from numdl.layers.shape import Dropout

        self._weight_dropout = None
        if self.dropout > 0:  # (no seed drawn without dropout: other layers' initial weights stay)
            self._weight_dropout = Dropout(self.dropout)
            self._weight_dropout.build((1,), self.ops, self.dtype, rng)

    def _keep_multipliers(self, shape, training):
        """Dropout's multipliers of the weights (0 or 1/(1-p)), or None (evaluation, no dropout)."""
        self._keep = None
        if training and self._weight_dropout is not None:
            key = ("ones", tuple(shape))
            if self._buffers.get("ones_key") != key:
                self._buffers["ones_key"] = key
                self._buffers["ones"] = self.ops.asarray(np.ones(shape), dtype=self.dtype)
            self._keep = self._weight_dropout.forward(self._buffers["ones"], training=True)
        return self._keep

    def _attend(self, sources, offsets, lengths, causal, training):
        """out_proj(attention(q, k, v)) of the projected (q, k, v) ``sources`` (arrays and column
        offsets as numdl.kernels.attention takes them): (batch, queries, embed)."""
        q_src, k_src = sources[0], sources[1]
        n, queries, keys = q_src.shape[0], q_src.shape[1], k_src.shape[1]
        embed = self.params["out_proj_weight"].value.shape[0]
        self._sources, self._offsets, self._lengths_used, self._causal = sources, offsets, lengths, causal
        self._ctx = self.buffer("ctx", (n, queries, embed))
        self._probs = self.buffer("probs", (n, self.num_heads, queries, keys))
        self.ops.attention_forward(self._ctx, self._probs, *sources, self._additive_mask(queries, keys), lengths,
                                   self.num_heads, causal, self.scale, offsets,
                                   self._keep_multipliers(self._probs.shape, training))
        out = self.buffer("out", (n * queries, embed))
        self.ops.linear_forward(out, self._ctx.reshape(n * queries, embed), self.params["out_proj_weight"].value,
                                self.params["out_proj_bias"].value)
        return out.reshape(n, queries, embed)

    def _attend_backward(self, dout, grads):
        """The out projection's parameter gradients, and the sources' gradients into ``grads``
        (dq, dk, dv: one array three times for a packed qkv)."""
        dout = self.contiguous(dout, "dout_copy")
        n, queries, embed = dout.shape
        p = self.params
        dctx = self.buffer("dctx", (n * queries, embed))
        self.ops.linear_backward(dctx, p["out_proj_weight"].grad, p["out_proj_bias"].grad,
                                 dout.reshape(n * queries, embed), self._ctx.reshape(n * queries, embed),
                                 p["out_proj_weight"].value)
        self.ops.attention_backward(*grads, dctx.reshape(n, queries, embed), self._probs, *self._sources,
                                    self._lengths_used, self.num_heads, self._causal, self.scale, self._offsets,
                                    self._keep)

    def get_rng_state(self):
        return {} if getattr(self, "_weight_dropout", None) is None else self._weight_dropout.get_rng_state()

    def set_rng_state(self, state):
        if getattr(self, "_weight_dropout", None) is not None and state:
            self._weight_dropout.set_rng_state(state)

    def _additive_mask(self, queries, keys):
        if self.attn_mask is None:
            return None
        mask = np.asarray(self.attn_mask)
        if mask.shape != (queries, keys):
            raise ShapeError(f"layer '{self.name}': attn_mask has shape {mask.shape} but the attention is "
                             f"(target {queries}, source {keys}); per-sample and per-head masks are not supported")
        if mask.dtype == bool:
            mask = np.where(mask, -np.inf, 0.0)
        elif mask.dtype.kind != "f" or np.isnan(mask).any():
            raise DataError(f"layer '{self.name}': attn_mask must be booleans or floats without NaN, got {mask.dtype}")
        return self.ops.asarray(np.ascontiguousarray(mask), dtype=self.dtype)

    def attention_weights(self, average=True):
        """The last forward's attention weights as a host array: (batch, target, source) averaged over
        the heads (PyTorch's default), or (batch, heads, target, source)."""
        probs = self.ops.to_numpy(self._probs)
        if self._keep is not None:  # as PyTorch returns them: after dropout
            probs = probs * self.ops.to_numpy(self._keep)
        return probs.mean(axis=1) if average else probs.copy()


class MultiHeadAttention(_AttentionCore, SequenceLayer):
    """Self-attention over (batch, time, embed): ``out_proj(attention(in_proj(x)))`` with
    ``num_heads`` heads of embed / num_heads features, a key padding mask from the sequence lengths,
    an optional causal mask and an optional ``attn_mask`` (see above). Parameters ``in_proj_weight``
    (3E, E), ``in_proj_bias``, ``out_proj_weight`` (E, E), ``out_proj_bias``, initialised as PyTorch
    does."""

    name = "multihead_attention"

    def __init__(self, num_heads: int, causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError("multihead_attention: num_heads must be >= 1 and dropout in [0, 1)")
        self.num_heads, self.causal, self.dropout = num_heads, causal, float(dropout)

    def torch_names(self):
        # nn.MultiheadAttention keeps the output projection as a Linear submodule
        return {"in_proj_weight": "in_proj_weight", "in_proj_bias": "in_proj_bias",
                "out_proj_weight": "out_proj.weight", "out_proj_bias": "out_proj.bias"}

    def hyperparameters(self):
        return {"num_heads": self.num_heads, "causal": self.causal, "dropout": self.dropout}

    def setup(self, input_shape, rng):
        steps, embed = _sequence_shape(self, input_shape)
        if embed % self.num_heads:
            raise ShapeError(f"layer 'multihead_attention': embed size {embed} is not divisible by "
                             f"num_heads={self.num_heads}")
        bound = math.sqrt(6.0 / (embed + 3 * embed))  # xavier_uniform over the packed (3E, E) matrix
        self.add_param("in_proj_weight", rng.uniform(-bound, bound, (3 * embed, embed)))
        self._add_shared_parameters(embed, rng)
        return input_shape

    def forward(self, x, training=False):
        x = self.contiguous(x, "x_copy")
        n, steps, embed = x.shape
        self._x = x.reshape(n * steps, embed)
        self._qkv = self.buffer("qkv", (n * steps, 3 * embed))
        self.ops.linear_forward(self._qkv, self._x, self.params["in_proj_weight"].value,
                                self.params["in_proj_bias"].value)
        qkv3 = self._qkv.reshape(n, steps, 3 * embed)
        return self._attend((qkv3, qkv3, qkv3), (0, embed, 2 * embed), self._lengths(n, steps), self.causal, training)

    def backward(self, dout):
        n, steps, embed = dout.shape
        dqkv = self.buffer("dqkv", (n, steps, 3 * embed))
        self._attend_backward(dout, (dqkv, dqkv, dqkv))
        p = self.params
        dx = self.buffer("dx", (n * steps, embed)) if self.needs_input_grad else None
        self.ops.linear_backward(dx, p["in_proj_weight"].grad, p["in_proj_bias"].grad,
                                 dqkv.reshape(n * steps, 3 * embed), self._x, p["in_proj_weight"].value)
        return None if dx is None else dx.reshape(n, steps, embed)


class CrossAttention(_AttentionCore, Merge):
    """PyTorch's ``nn.MultiheadAttention(query, key, value)`` (batch_first) with the keys and values
    from another sequence: inputs [query (batch, target, E), memory (batch, source, kdim)] (keys and
    values both from memory: an encoder-decoder's cross-attention), or [query, key, value]. When the
    key and value features equal E, the projections are packed as PyTorch packs them
    (``in_proj_weight`` (3E, E)); otherwise ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim),
    ``v_proj_weight`` (E, vdim), with ``in_proj_bias`` (3E) either way; then ``out_proj``. Set
    ``key_lengths`` (per-sample valid source steps, PyTorch's key_padding_mask) and ``attn_mask``
    before ``forward`` where the source is padded."""

    name = "cross_attention"
    input_count = (2, 3)
    check_input_shape = [(3, 4), (5, 6)]

    def __init__(self, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError("cross_attention: num_heads must be >= 1 and dropout in [0, 1)")
        self.num_heads, self.dropout = num_heads, float(dropout)
        self.key_lengths = None

    def hyperparameters(self):
        return {"num_heads": self.num_heads, "dropout": self.dropout}

    def torch_names(self):
        names = {name: name for name in self.params if not name.startswith("out_proj")}
        names.update({"out_proj_weight": "out_proj.weight", "out_proj_bias": "out_proj.bias"})
        return names

    def merge_shape(self, shapes):
        for shape in shapes:
            _sequence_shape(self, shape)
        (_, embed), key_shape, value_shape = shapes[0], shapes[1], shapes[-1]
        if embed % self.num_heads:
            raise ShapeError(f"layer 'cross_attention': embed size {embed} is not divisible by "
                             f"num_heads={self.num_heads}")
        if key_shape[0] != value_shape[0]:
            raise ShapeError(f"layer 'cross_attention': keys have {key_shape[0]} steps but values {value_shape[0]}")
        return shapes[0]

    def setup(self, input_shape, rng):
        out_shape = self.merge_shape(self.input_shapes)
        embed, kdim, vdim = self.input_shapes[0][1], self.input_shapes[1][1], self.input_shapes[-1][1]
        self.packed = kdim == embed and vdim == embed
        if self.packed:  # xavier_uniform over each matrix, as PyTorch's _reset_parameters
            bound = math.sqrt(6.0 / (embed + 3 * embed))
            self.add_param("in_proj_weight", rng.uniform(-bound, bound, (3 * embed, embed)))
        else:
            for name, width in (("q_proj_weight", embed), ("k_proj_weight", kdim), ("v_proj_weight", vdim)):
                bound = math.sqrt(6.0 / (embed + width))
                self.add_param(name, rng.uniform(-bound, bound, (embed, width)))
        self._add_shared_parameters(embed, rng)
        return out_shape

    def _projection(self, part):
        """(weight value, weight gradient, bias value, bias gradient) of projection 0 (q), 1 (k), 2 (v)."""
        embed = self.input_shapes[0][1]
        rows = slice(part * embed, (part + 1) * embed)
        bias = self.params["in_proj_bias"]
        if self.packed:
            weight = self.params["in_proj_weight"]
            return weight.value[rows], weight.grad[rows], bias.value[rows], bias.grad[rows]
        weight = self.params[("q_proj_weight", "k_proj_weight", "v_proj_weight")[part]]
        return weight.value, weight.grad, bias.value[rows], bias.grad[rows]

    def _key_lengths(self, n, keys):
        if self.key_lengths is None:
            return self.ops.asarray(np.full(n, keys, np.int64))
        lengths = np.asarray(self.key_lengths)
        if lengths.shape != (n,) or lengths.min() < 1 or lengths.max() > keys:
            raise DataError(f"layer '{self.name}': key_lengths must be {n} values in [1, {keys}], got "
                            f"{lengths.tolist()}")
        return self.ops.asarray(lengths.astype(np.int64))

    def forward(self, xs, training=False):
        self._check_inputs(xs)
        sources = [self.contiguous(x, f"x{index}_copy") for index, x in enumerate(xs)]
        sources = [sources[0], sources[1], sources[-1]]  # query, key, value (key = value = memory for two)
        n, queries, embed = sources[0].shape
        keys = sources[1].shape[1]
        self._flat = [x.reshape(x.shape[0] * x.shape[1], x.shape[2]) for x in sources]
        projected = []
        for part, (x, steps) in enumerate(zip(self._flat, (queries, keys, keys))):
            weight, _, bias, _ = self._projection(part)
            out = self.buffer(f"proj{part}", (n * steps, embed))
            self.ops.linear_forward(out, x, weight, bias)
            projected.append(out.reshape(n, steps, embed))
        return self._attend(tuple(projected), (0, 0, 0), self._key_lengths(n, keys), False, training)

    def backward(self, dout):
        n, queries, embed = dout.shape
        keys = self._sources[1].shape[1]
        dprojected = [self.buffer(f"dproj{part}", (n, steps, embed))
                      for part, steps in enumerate((queries, keys, keys))]
        self._attend_backward(dout, dprojected)
        grads = []
        for part, (x, dproj) in enumerate(zip(self._flat, dprojected)):
            weight, dweight, _, dbias = self._projection(part)
            dx = self.buffer(f"dx{part}", x.shape)
            self.ops.linear_backward(dx, dweight, dbias, dproj.reshape(x.shape[0], embed), x, weight)
            grads.append(dx.reshape((n, x.shape[0] // n, x.shape[1])))
        if len(self.input_shapes) == 2:  # memory fed both keys and values: its gradient is the sum
            self.ops.add(grads[1], grads[1], grads[2])
            return grads[:2]
        return grads


def _transformer_torch_names(layer):
    """The names PyTorch's transformer layers give the parameters of ``layer``'s leaves: self_attn,
    multihead_attn (cross-attention), and linearK / normK numbered in the order the leaves run."""
    modules = {"MultiHeadAttention": "self_attn", "CrossAttention": "multihead_attn"}
    names, counts = {}, {"LayerNorm": 0, "Linear": 0}
    for prefix, leaf in layer.leaves():
        kind = type(leaf).__name__
        if kind in counts:
            counts[kind] += 1
            module = f"{'norm' if kind == 'LayerNorm' else 'linear'}{counts[kind]}"
        elif kind in modules:
            module = modules[kind]
        else:
            continue
        names.update({f"{prefix}{ours}": f"{module}.{theirs}" for ours, theirs in leaf.torch_names().items()})
    return names


class TransformerEncoderLayer(Chain):
    """PyTorch's ``nn.TransformerEncoderLayer`` (batch_first): self-attention and a feed-forward
    block (Linear, activation, Linear), each with dropout and a residual connection, and LayerNorm
    after each (``norm_first = false``, the default) or before each (``norm_first = true``)."""

    name = "transformer_encoder_layer"

    def __init__(self, num_heads: int, dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, causal: bool = False, layer_norm_eps: float = 1e-5):
        from numdl.layers.activation import GELU, ReLU
        from numdl.layers.linear import Linear
        from numdl.layers.norm import LayerNorm
        from numdl.layers.shape import Dropout

        if activation not in ("relu", "gelu"):
            raise ConfigError(f"transformer_encoder_layer: activation must be relu or gelu, got {activation!r}")
        self.settings = {"num_heads": num_heads, "dim_feedforward": dim_feedforward, "dropout": dropout,
                         "activation": activation, "norm_first": norm_first, "causal": causal,
                         "layer_norm_eps": layer_norm_eps}
        self._dim_feedforward, self._activation = dim_feedforward, activation
        act = ReLU if activation == "relu" else GELU
        # nn.TransformerEncoderLayer's self_attn drops attention weights with the same p
        attention = [MultiHeadAttention(num_heads, causal, dropout), Dropout(dropout)]
        # The feed-forward's output width is the embed size, known only at build: see setup.
        self._feedforward_out = Linear(1)
        feedforward = [Linear(dim_feedforward), act(), Dropout(dropout), self._feedforward_out, Dropout(dropout)]
        if norm_first:
            children = [Residual([LayerNorm(eps=layer_norm_eps)] + attention),
                        Residual([LayerNorm(eps=layer_norm_eps)] + feedforward)]
        else:
            children = [Residual(attention), LayerNorm(eps=layer_norm_eps), Residual(feedforward),
                        LayerNorm(eps=layer_norm_eps)]
        super().__init__(children)

    def hyperparameters(self):
        return dict(self.settings)

    def torch_names(self):
        """PyTorch's nn.TransformerEncoderLayer names: self_attn, linear1/linear2, norm1/norm2 (in
        the order the layers run in either norm placement)."""
        return _transformer_torch_names(self)

    def setup(self, input_shape, rng):
        _sequence_shape(self, input_shape)
        self._feedforward_out.out_features = input_shape[-1]
        return super().setup(input_shape, rng)


class TransformerDecoderLayer(Composite):
    """PyTorch's ``nn.TransformerDecoderLayer`` (batch_first) on inputs [target (batch, T, E), memory
    (batch, S, E')]: masked self-attention over the target, cross-attention from the target to the
    memory (an encoder's output), and a feed-forward block, each with dropout and a residual
    connection, with LayerNorm after each (``norm_first = false``) or before each (``true``).

    ``causal`` (default true: a decoder position sees only earlier targets, what teacher forcing
    needs; false is PyTorch's unmasked default) masks the self-attention; the model's ``lengths``
    pad the target, ``memory_lengths`` (set before forward) the memory. Parameter names map onto
    PyTorch's self_attn, multihead_attn, linear1/2 and norm1/2/3 (numdl.from_torch_state_dict)."""

    name = "transformer_decoder_layer"
    many_inputs = True
    check_input_shape = [(3, 4), (5, 4)]

    def __init__(self, num_heads: int, dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu",
                 norm_first: bool = False, causal: bool = True, layer_norm_eps: float = 1e-5):
        from numdl.layers.activation import GELU, ReLU
        from numdl.layers.linear import Linear
        from numdl.layers.norm import LayerNorm
        from numdl.layers.shape import Dropout

        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ConfigError(f"transformer_decoder_layer: activation must be relu or gelu, got {activation!r}")
        self.settings = {"num_heads": num_heads, "dim_feedforward": dim_feedforward, "dropout": dropout,
                         "activation": activation, "norm_first": norm_first, "causal": causal,
                         "layer_norm_eps": layer_norm_eps}
        self.norm_first = bool(norm_first)
        self._lengths, self.memory_lengths = None, None
        act = ReLU if activation == "relu" else GELU
        self._feedforward_out = Linear(1)  # the embed size: known at build (see setup)
        attention = [MultiHeadAttention(num_heads, causal, dropout), Dropout(dropout)]
        feedforward = [Linear(dim_feedforward), act(), Dropout(dropout), self._feedforward_out, Dropout(dropout)]
        self.cross, self.cross_dropout = CrossAttention(num_heads, dropout), Dropout(dropout)
        self.cross_norm = LayerNorm(eps=layer_norm_eps)
        if self.norm_first:
            self.self_block = Residual([LayerNorm(eps=layer_norm_eps)] + attention)
            self.feedforward = Residual([LayerNorm(eps=layer_norm_eps)] + feedforward)
        else:
            self.self_block = Chain([Residual(attention), LayerNorm(eps=layer_norm_eps)])
            self.feedforward = Chain([Residual(feedforward), LayerNorm(eps=layer_norm_eps)])

    def hyperparameters(self):
        return dict(self.settings)

    def _children(self):
        # in the order the layers run (torch_names counts the norms and linears in this order)
        if self.norm_first:
            order = [self.self_block, self.cross_norm, self.cross, self.cross_dropout, self.feedforward]
        else:
            order = [self.self_block, self.cross, self.cross_dropout, self.cross_norm, self.feedforward]
        names = {id(self.self_block): "self_block", id(self.cross): "cross", id(self.cross_dropout): "cross_dropout",
                 id(self.cross_norm): "cross_norm", id(self.feedforward): "feedforward"}
        return [(names[id(layer)], layer) for layer in order]

    def build(self, input_shape, ops, dtype, rng):
        shapes = [tuple(int(d) for d in shape) for shape in input_shape]
        if len(shapes) != 2:
            raise ShapeError(f"layer '{self.name}' takes two inputs (target, memory), got {len(shapes)}")
        self.input_shapes = shapes
        return super().build(shapes[0], ops, dtype, rng)

    def setup(self, input_shape, rng):
        target, memory = self.input_shapes
        _sequence_shape(self, target)
        _sequence_shape(self, memory)
        self._feedforward_out.out_features = target[-1]
        shape = self._build_children([self.self_block], target, rng, self.name)
        query_shape = self._build_children([self.cross_norm], shape, rng, self.name) if self.norm_first else shape
        self.cross.needs_input_grad = True
        self.cross.build([query_shape, memory], self.ops, self.dtype, rng)
        self._build_children([self.cross_dropout], shape, rng, self.name)
        if not self.norm_first:
            self._build_children([self.cross_norm], shape, rng, self.name)
        return self._build_children([self.feedforward], shape, rng, self.name)

    def torch_names(self):
        return _transformer_torch_names(self)

    def forward(self, xs, training=False):
        target, memory = xs
        for index, (x, shape) in enumerate(zip(xs, self.input_shapes)):
            if tuple(x.shape[1:]) != shape:
                raise ShapeError(f"layer {self.name!r} expects input {index} of shape (batch, "
                                 f"{', '.join(map(str, shape))}) but got {tuple(x.shape)}")
        self.cross.key_lengths = self.memory_lengths
        x1 = self.self_block.forward(target, training)
        query = self.cross_norm.forward(x1, training) if self.norm_first else x1
        attended = self.cross_dropout.forward(self.cross.forward([query, memory], training), training)
        x2 = self.buffer("x2", x1.shape)
        self.ops.add(x2, x1, attended)
        if not self.norm_first:
            x2 = self.cross_norm.forward(x2, training)
        return self.feedforward.forward(x2, training)

    def backward(self, dout):
        dx2 = self.feedforward.backward(dout)
        if not self.norm_first:
            dx2 = self.cross_norm.backward(dx2)
        dquery, dmemory = self.cross.backward(self.cross_dropout.backward(dx2))
        if self.norm_first:
            dquery = self.cross_norm.backward(dquery)
        dx1 = self.buffer("dx1", dx2.shape)
        self.ops.add(dx1, dx2, dquery)
        return [self.self_block.backward(dx1), dmemory]


class PositionalEncoding(Layer):
    """Adds a position signal to (batch, time, features): ``sinusoidal`` (the fixed table of
    "Attention is all you need") or ``learned`` (a trained (time, features) table, initialised
    N(0, 0.02^2))."""

    name = "positional_encoding"

    def __init__(self, kind: str = "sinusoidal"):
        super().__init__()
        if kind not in ("sinusoidal", "learned"):
            raise ConfigError(f"positional_encoding: kind must be sinusoidal or learned, got {kind!r}")
        self.kind = kind

    def hyperparameters(self):
        return {"kind": self.kind}

    def setup(self, input_shape, rng):
        steps, features = _sequence_shape(self, input_shape)
        if self.kind == "learned":
            self.add_param("weight", rng.normal(0.0, 0.02, (steps, features)))
        else:
            position = np.arange(steps)[:, None]
            rate = np.exp(np.arange(0, features, 2) * (-math.log(10000.0) / features))
            table = np.zeros((steps, features))
            table[:, 0::2] = np.sin(position * rate)
            table[:, 1::2] = np.cos(position * rate)[:, : features // 2]
            self.add_state("table", table)
        return input_shape

    def _table(self):
        return self.params["weight"].value if self.kind == "learned" else self.state["table"]

    def forward(self, x, training=False):
        out = self.buffer("out", x.shape)
        self.ops.broadcast_add_forward(out, x, self._table())
        return out

    def backward(self, dout):
        if self.kind == "learned":
            self.ops.broadcast_add_backward(self.params["weight"].grad, dout)
        return dout


class SwapAxes(Layer):
    """(batch, A, B) -> (batch, B, A): turns a convolution's (channels, positions) into a
    sequence of positions for attention (ViT-style patch embedding)."""

    name = "swap_axes"

    def setup(self, input_shape, rng):
        if len(input_shape) != 2:
            raise ShapeError(f"layer 'swap_axes' expects (batch, A, B) inputs, got (batch, "
                             f"{', '.join(map(str, input_shape))})")
        return (input_shape[1], input_shape[0])

    def forward(self, x, training=False):
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self.ops.swap_last_axes(out, x)
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.swap_last_axes(dx, dout)
        return dx
