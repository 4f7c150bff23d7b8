"""Models out to ONNX (``numdl export CHECKPOINT --onnx model.onnx``): the trained network as an ONNX
graph (opset 17) built with the ``onnx`` package (the optional extra ``numdl[onnx]``), with a dynamic
batch axis, for onnxruntime or any other ONNX runtime. The graph computes what ``model.predict``
does (evaluation mode: batch norm with its running statistics, dropout off); the tests run each
example model in onnxruntime and compare.

Each layer type has an emitter below; a layer ONNX cannot express here (a plugin's, an option such
as circular padding) is named in the error. Sequential models and graph models (``numdl.Model``:
concat, add, multiply, transposed convolutions, upsampling, encoder-decoders) are both exported;
sequence layers (LSTM and GRU as ONNX's own ops, attention as MatMul / Softmax graphs) take
full-length inputs, as ``predict`` without ``lengths``.
"""

import math

import numpy as np

from numdl.errors import ConfigError

OPSET = 17


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install 'numdl[onnx]'") from None
    return onnx, helper, numpy_helper


class _Graph:
    """The nodes and initializers being built, with fresh names."""

    def __init__(self, dtype):
        self.onnx, self.helper, self.numpy_helper = _onnx()
        self.nodes, self.initializers, self.dtype, self._count = [], [], np.dtype(dtype), 0

    def name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, array, hint="const", dtype=None):
        name = self.name(hint)
        array = np.ascontiguousarray(array, dtype=dtype or self.dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, hint=None, **attributes):
        out = self.name(hint or op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attributes))
        return out


def _host(layer, array):
    return np.asarray(layer.ops.to_numpy(array))


def _param(layer, name):
    return _host(layer, layer.params[name].value)


# ------------------------------------------------------------------------------- layer emitters
def _linear(g, layer, x):
    out = g.node("MatMul", [x, g.constant(_param(layer, "weight").T, "weight")])  # any rank: (..., in) @ (in, out)
    if "bias" in layer.params:
        out = g.node("Add", [out, g.constant(_param(layer, "bias"), "bias")])
    return _fused_relu(g, layer, out)


def _fused_relu(g, layer, x):
    fused = getattr(layer, "fused_relu", False) or getattr(layer, "activation", "none") == "relu"
    return g.node("Relu", [x]) if fused else x


def _conv(g, layer, x):
    from numdl.layers.conv import Conv1d

    one_d = isinstance(layer, Conv1d)
    top, bottom, left, right = layer.sides
    if layer.padding_mode == "circular":
        raise ConfigError(f"layer {layer.name!r}: padding_mode='circular' has no ONNX opset {OPSET} Pad mode")
    weight = _param(layer, "weight")
    axes = slice(1, 2) if one_d else slice(0, 2)
    pads = ([left, right] if one_d else [top, left, bottom, right])
    if layer.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge"}[layer.padding_mode]
        full = [0, 0] + pads[:len(pads) // 2] + [0, 0] + pads[len(pads) // 2:]
        x = g.node("Pad", [x, g.constant(np.array(full, np.int64), "pads", np.int64)], mode=mode)
        pads = [0] * len(pads)
    inputs = [x, g.constant(weight, "weight")]
    if "bias" in layer.params:
        inputs.append(g.constant(_param(layer, "bias"), "bias"))
    out = g.node("Conv", inputs, kernel_shape=list(layer.kernel_size[axes]), strides=list(layer.stride[axes]),
                 dilations=list(layer.dilation[axes]), pads=pads, group=layer.groups)
    return _fused_relu(g, layer, out)


def _conv_transpose(g, layer, x):
    inputs = [x, g.constant(_param(layer, "weight"), "weight")]
    if "bias" in layer.params:
        inputs.append(g.constant(_param(layer, "bias"), "bias"))
    pad_h, pad_w = layer.padding
    return g.node("ConvTranspose", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  dilations=list(layer.dilation), pads=[pad_h, pad_w, pad_h, pad_w],
                  output_padding=list(layer.output_padding), group=layer.groups)


def _batchnorm(g, layer, x):
    if not layer.track_running_stats:
        raise ConfigError(f"layer {layer.name!r}: track_running_stats=False normalises by each batch's statistics, "
                          f"which ONNX's BatchNormalization (inference) cannot")
    channels = layer.input_shape[0]
    scale = _param(layer, "weight") if layer.affine else np.ones(channels)
    bias = _param(layer, "bias") if layer.affine else np.zeros(channels)
    inputs = [x, g.constant(scale, "scale"), g.constant(bias, "bias"),
              g.constant(_host(layer, layer.state["running_mean"]), "mean"),
              g.constant(_host(layer, layer.state["running_var"]), "var")]
    return _fused_relu(g, layer, g.node("BatchNormalization", inputs, epsilon=float(layer.eps)))


def _layernorm(g, layer, x):
    features = layer._features
    scale = _param(layer, "weight").reshape(-1) if "weight" in layer.params else np.ones(features)
    bias = _param(layer, "bias").reshape(-1) if "bias" in layer.params else np.zeros(features)
    axes = len(layer.normalized_shape or [1])
    shape = tuple(layer.input_shape[len(layer.input_shape) - axes:])
    return g.node("LayerNormalization", [x, g.constant(scale.reshape(shape), "scale"),
                                         g.constant(bias.reshape(shape), "bias")],
                  axis=-axes, epsilon=float(layer.eps))


def _groupnorm(g, layer, x):
    # opset 17 has no GroupNormalization: statistics over (batch, groups, -1), then the channel affine
    grouped = g.node("Reshape", [x, _ints(g, [0, layer.num_groups, -1])])
    centred = g.node("Sub", [grouped, g.node("ReduceMean", [grouped], axes=[2], keepdims=1)])
    variance = g.node("ReduceMean", [g.node("Mul", [centred, centred])], axes=[2], keepdims=1)
    spread = g.node("Sqrt", [g.node("Add", [variance, g.constant(np.array(layer.eps), "eps")])])
    normed = g.node("Div", [centred, spread])
    out = g.node("Reshape", [normed, g.node("Shape", [x])])
    if not layer.affine:
        return out
    per_channel = (-1,) + (1,) * (len(layer.input_shape) - 1)
    scale = g.constant(_param(layer, "weight").reshape(per_channel), "scale")
    return g.node("Add", [g.node("Mul", [out, scale]), g.constant(_param(layer, "bias").reshape(per_channel), "bias")])


def _gelu(g, layer, x):
    half, one = g.constant(np.array(0.5), "half"), g.constant(np.array(1.0), "one")
    if layer.approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        cube = g.node("Mul", [g.node("Mul", [x, x]), x])
        inner = g.node("Add", [x, g.node("Mul", [cube, g.constant(np.array(0.044715), "c")])])
        core = g.node("Tanh", [g.node("Mul", [inner, g.constant(np.array(math.sqrt(2 / math.pi)), "c")])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        core = g.node("Erf", [g.node("Mul", [x, g.constant(np.array(1 / math.sqrt(2)), "c")])])
    return g.node("Mul", [g.node("Mul", [x, half]), g.node("Add", [core, one])])


def _pool(op):
    def emit(g, layer, x):
        pad_h, pad_w = layer.padding
        attributes = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                          pads=[pad_h, pad_w, pad_h, pad_w], ceil_mode=int(layer.ceil_mode))
        if op == "AveragePool":
            attributes["count_include_pad"] = int(layer.count_include_pad)
        elif tuple(layer.dilation) != (1, 1):
            attributes["dilations"] = list(layer.dilation)
        return g.node(op, [x], **attributes)
    return emit


def _adaptive_pool(g, layer, x):
    # ONNX has no adaptive pooling: windows that tile the input evenly are a plain pool
    (_, h, w), (_, out_h, out_w) = layer.input_shape, layer.output_shape
    if h % out_h or w % out_w:
        raise ConfigError(f"layer {layer.name!r}: adaptive pooling of {h}x{w} to {out_h}x{out_w} has uneven windows, "
                          f"which ONNX cannot express")
    op = "AveragePool" if layer.kind == "avg" else "MaxPool"
    kernel = [h // out_h, w // out_w]
    return g.node(op, [x], kernel_shape=kernel, strides=kernel)


def _reshape(g, layer, x):
    return g.node("Reshape", [x, g.constant(np.array([-1, *layer.output_shape], np.int64), "shape", np.int64)])


def _residual(g, layer, x):
    y = x
    for child in layer.block:
        y = _emit(g, child, [y])
    s = x
    for child in layer.skip:
        s = _emit(g, child, [s])
    out = g.node("Add", [y, s])
    return g.node("Relu", [out]) if layer.activation == "relu" else out


def _upsample(g, layer, x):
    mode = "nearest" if layer.mode == "nearest" else "linear"
    transform = "align_corners" if getattr(layer, "align_corners", False) else (
        "asymmetric" if mode == "nearest" else "half_pixel")
    size = np.array([1, *layer.output_shape], np.int64)  # the batch axis comes from the input's shape
    batch = g.node("Slice", [g.node("Shape", [x]), g.constant(np.array([0], np.int64), "zero", np.int64),
                             g.constant(np.array([1], np.int64), "one", np.int64)])
    sizes = g.node("Concat", [batch, g.constant(size[1:], "sizes", np.int64)], axis=0)
    empty = ""
    return g.node("Resize", [x, empty, empty, sizes], mode=mode, coordinate_transformation_mode=transform,
                  nearest_mode="floor")


def _gaussian_sample(g, layer, x):
    # evaluation: the mean, the first half of each row
    latent = layer.output_shape[0]
    return g.node("Slice", [x, g.constant(np.array([0], np.int64), "start", np.int64),
                            g.constant(np.array([latent], np.int64), "end", np.int64),
                            g.constant(np.array([1], np.int64), "axis", np.int64)])


def _elementwise(op, **attributes):
    return lambda g, layer, x: g.node(op, [x], **attributes)


def _ints(g, values, hint="shape"):
    return g.constant(np.array(values, np.int64), hint, np.int64)


# ------------------------------------------------------------------------- sequence layers
# Exported sequence models take full-length inputs (what predict does without ``lengths``).
RECURRENT_GATE_ORDER = {"lstm": [0, 3, 1, 2],  # PyTorch's i, f, g, o -> ONNX's i, o, f, c
                        "gru": [1, 0, 2]}       # PyTorch's r, z, n -> ONNX's z, r, h


def _recurrent(g, layer, inputs):
    """One ONNX LSTM / GRU per stacked layer (both directions in one op), in the time-major layout
    onnxruntime runs: (batch, T, F) -> (T, batch, F) in, (T, directions, batch, H) out; given initial
    states (batch, L D, H) go in as each layer's (D, batch, H) slice."""
    x, states = inputs[0], inputs[1:]
    h, kind = layer.hidden_size, layer.kind
    if layer.proj_size:
        raise ConfigError(f"layer {layer.name!r}: proj_size (the LSTM's projected hidden state) has no counterpart in "
                          f"ONNX's LSTM op, so the export cannot express it")
    order = RECURRENT_GATE_ORDER[kind]
    directions = layer.directions
    sequence = g.node("Transpose", [x], perm=[1, 0, 2])
    final = None
    for index in range(layer.num_layers):
        weights, recurrent, biases = [], [], []
        for direction in range(directions):
            suffix = layer._suffix(index, direction)
            gates = lambda array: np.concatenate([array[i * h:(i + 1) * h] for i in order])  # noqa: E731
            weights.append(gates(_param(layer, f"weight_ih{suffix}")))
            recurrent.append(gates(_param(layer, f"weight_hh{suffix}")))
            if layer.bias:
                biases.append(np.concatenate([gates(_param(layer, f"bias_ih{suffix}")),
                                              gates(_param(layer, f"bias_hh{suffix}"))]))
            else:
                biases.append(np.zeros(2 * layer.gates * h))
        attributes = dict(hidden_size=h, direction="bidirectional" if directions == 2 else "forward")
        if kind == "gru":
            attributes["linear_before_reset"] = 1  # PyTorch's n gate: r * (W_hn h + b_hn)
        out, last = g.name(f"{kind}_y"), g.name(f"{kind}_h")
        op_inputs = [sequence, g.constant(np.stack(weights), "w"), g.constant(np.stack(recurrent), "r"),
                     g.constant(np.stack(biases), "b")]
        if states:
            op_inputs.append("")  # sequence_lens: every sequence full length
            for state in states:  # (batch, L D, H) -> this layer's (D, batch, H)
                piece = g.node("Slice", [state, _ints(g, [index * directions], "start"),
                                         _ints(g, [(index + 1) * directions], "end"), _ints(g, [1], "axis")])
                op_inputs.append(g.node("Transpose", [piece], perm=[1, 0, 2]))
        g.nodes.append(g.helper.make_node(kind.upper(), op_inputs,
                                          [out, last] + ([g.name("lstm_c")] if kind == "lstm" else []),
                                          **attributes))
        # (T, directions, batch, H) -> (T, batch, directions * H): the next layer's input
        merged = g.node("Transpose", [out], perm=[0, 2, 1, 3])
        sequence = g.node("Reshape", [merged, _ints(g, [0, 0, directions * h])])
        final = last
    if layer.return_sequences:
        return g.node("Transpose", [sequence], perm=[1, 0, 2])
    # the last state of each direction (the reverse one's is at step 0), side by side: (batch, D * H)
    return g.node("Reshape", [g.node("Transpose", [final], perm=[1, 0, 2]), _ints(g, [0, directions * h])])


def _heads(g, x, heads, dim):
    """(batch, T, heads * dim) -> (batch, heads, T, dim)."""
    return g.node("Transpose", [g.node("Reshape", [x, _ints(g, [0, 0, heads, dim])])], perm=[0, 2, 1, 3])


def _attention_core(g, layer, q, k, v, embed, queries, keys, causal):
    heads = layer.num_heads
    dim = embed // heads
    q, k, v = (_heads(g, t, heads, dim) for t in (q, k, v))
    scores = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])]),
                            g.constant(np.array(layer.scale), "scale")])
    mask = np.zeros((queries, keys))
    if causal:
        mask = np.where(np.arange(keys)[None, :] > np.arange(queries)[:, None], -np.inf, 0.0)
    if layer.attn_mask is not None:
        extra = np.asarray(layer.attn_mask)
        mask = mask + (np.where(extra, -np.inf, 0.0) if extra.dtype == bool else extra)
    if causal or layer.attn_mask is not None:
        scores = g.node("Add", [scores, g.constant(mask, "mask")])
    context = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])
    merged = g.node("Reshape", [g.node("Transpose", [context], perm=[0, 2, 1, 3]), _ints(g, [0, 0, embed])])
    out = g.node("MatMul", [merged, g.constant(_param(layer, "out_proj_weight").T, "out_proj")])
    return g.node("Add", [out, g.constant(_param(layer, "out_proj_bias"), "out_bias")])


def _projection(g, x, weight, bias):
    return g.node("Add", [g.node("MatMul", [x, g.constant(weight.T, "proj")]), g.constant(bias, "proj_bias")])


def _self_attention(g, layer, x):
    steps, embed = layer.input_shape
    weight, bias = _param(layer, "in_proj_weight"), _param(layer, "in_proj_bias")
    q, k, v = (_projection(g, x, weight[i * embed:(i + 1) * embed], bias[i * embed:(i + 1) * embed])
               for i in range(3))
    return _attention_core(g, layer, q, k, v, embed, steps, steps, layer.causal)


def _cross_attention(g, layer, inputs):
    (queries, embed), (keys, _) = layer.input_shapes[0], layer.input_shapes[1]
    sources = [inputs[0], inputs[1], inputs[-1]]
    projected = []
    for part, source in enumerate(sources):
        weight, _, bias, _ = layer._projection(part)
        projected.append(_projection(g, source, _host(layer, weight), _host(layer, bias)))
    return _attention_core(g, layer, *projected, embed, queries, keys, False)


def _chain(g, layer, x):
    for child in layer.layers:
        x = _emit(g, child, [x])
    return x


def _decoder_layer(g, layer, inputs):
    target, memory = inputs
    x1 = _emit(g, layer.self_block, [target])
    query = _emit(g, layer.cross_norm, [x1]) if layer.norm_first else x1
    x2 = g.node("Add", [x1, _emit(g, layer.cross, [query, memory])])
    if not layer.norm_first:
        x2 = _emit(g, layer.cross_norm, [x2])
    return _emit(g, layer.feedforward, [x2])


def _positional(g, layer, x):
    table = _param(layer, "weight") if layer.kind == "learned" else _host(layer, layer.state["table"])
    return g.node("Add", [x, g.constant(table, "positions")])


def _sequence_pool(g, layer, x):
    if layer.mode == "mean":
        return g.node("ReduceMean", [x], axes=[1], keepdims=0)
    last = g.node("Gather", [x, _ints(g, [layer.input_shape[0] - 1], "last")], axis=1)  # (batch, 1, F)
    return g.node("Squeeze", [last, _ints(g, [1], "axis")])


def _embedding(g, layer, x):
    if layer.max_norm is not None:
        raise ConfigError(f"layer {layer.name!r}: max_norm renormalises rows at lookup, which the export cannot")
    return g.node("Gather", [g.constant(_param(layer, "weight"), "embedding"), x], axis=0)


EMITTERS = {
    "Linear": _linear, "Conv2d": _conv, "Conv1d": _conv, "ConvTranspose2d": _conv_transpose,
    "BatchNorm1d": _batchnorm, "BatchNorm2d": _batchnorm, "LayerNorm": _layernorm, "GroupNorm": _groupnorm,
    "ReLU": lambda g, layer, x: x if layer.absorbed else g.node("Relu", [x]),
    "LeakyReLU": lambda g, layer, x: g.node("LeakyRelu", [x], alpha=float(layer.negative_slope)),
    "Sigmoid": _elementwise("Sigmoid"), "Tanh": _elementwise("Tanh"), "GELU": _gelu,
    # opset >= 13: Softmax and LogSoftmax work along one axis (counted with the batch, as numdl's)
    "Softmax": lambda g, layer, x: g.node("Softmax", [x], axis=layer.axis),
    "LogSoftmax": lambda g, layer, x: g.node("LogSoftmax", [x], axis=layer.axis),
    "Dropout": lambda g, layer, x: x,
    "Flatten": _elementwise("Flatten", axis=1), "Reshape": _reshape,
    "MaxPool2d": _pool("MaxPool"), "AvgPool2d": _pool("AveragePool"),
    "GlobalAvgPool2d": lambda g, layer, x: g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1),
    "Residual": _residual, "Upsample": _upsample, "GaussianSample": _gaussian_sample,
    "AdaptiveAvgPool2d": _adaptive_pool, "AdaptiveMaxPool2d": _adaptive_pool,
    "MultiHeadAttention": _self_attention, "Chain": _chain,
    "TransformerEncoderLayer": _chain, "PositionalEncoding": _positional, "SequencePool": _sequence_pool,
    "SwapAxes": lambda g, layer, x: g.node("Transpose", [x], perm=[0, 2, 1]), "Embedding": _embedding,
}
MANY_INPUTS = {"CrossAttention": _cross_attention, "TransformerDecoderLayer": _decoder_layer,
               "LSTM": _recurrent, "GRU": _recurrent}  # (a recurrent layer's inputs: x, or x and its states)
MERGES = {"Concat": "Concat", "Add": "Sum", "Multiply": "Mul"}


def _emit(g, layer, inputs):
    kind = type(layer).__name__
    if kind in MERGES:
        attributes = {}
        if kind == "Concat":
            attributes["axis"] = layer.axis  # counted with the batch axis, as ONNX's (and PyTorch's dim)
        return g.node(MERGES[kind], inputs, **attributes)
    if kind in MANY_INPUTS:
        return MANY_INPUTS[kind](g, layer, inputs)
    emitter = EMITTERS.get(kind)
    if emitter is None:
        raise ConfigError(f"layer {layer.name!r} ({kind}) has no ONNX export yet; exportable: "
                          f"{', '.join(sorted(set(EMITTERS) | set(MERGES) | set(MANY_INPUTS)))}")
    return emitter(g, layer, inputs[0])


def to_onnx(model):
    """The ONNX ModelProto of a built numdl model (evaluation mode, batch axis dynamic)."""
    g = _Graph(model.dtype)
    element = {np.dtype("float32"): g.onnx.TensorProto.FLOAT, np.dtype("float64"): g.onnx.TensorProto.DOUBLE}
    if np.dtype(model.dtype) not in element:
        raise ConfigError(f"ONNX export supports float32 and float64 models, not {model.dtype}")
    kind = element[np.dtype(model.dtype)]

    def input_kind(dtype):  # token ids (an embedding's input) stay integers
        return g.onnx.TensorProto.INT64 if dtype is not None and np.dtype(dtype).kind in "iu" else kind

    if hasattr(model, "order"):  # a graph model
        values, inputs = {}, []
        for index, (node, dtype) in enumerate(zip(model.input_nodes, model._input_dtypes())):
            name = f"input{index}" if len(model.input_nodes) > 1 else "input"
            inputs.append(g.helper.make_tensor_value_info(name, input_kind(dtype), ["batch", *node.shape]))
            values[id(node)] = name
        for node in model.order:
            if node.layer is not None:
                values[id(node)] = _emit(g, node.layer, [values[id(i)] for i in node.inputs])
        out_names = [values[id(node)] for node in model.output_nodes]
        out_shapes = [node.layer.output_shape for node in model.output_nodes]
    else:
        inputs = [g.helper.make_tensor_value_info("input", input_kind(model._input_dtype),
                                                  ["batch", *model.input_shape])]
        value = "input"
        for layer in model.layers:
            value = _emit(g, layer, [value])
        out_names, out_shapes = [value], [model.output_shape]
    outputs = []
    for index, (name, shape) in enumerate(zip(out_names, out_shapes)):
        final = "output" if len(out_names) == 1 else f"output{index}"
        g.nodes.append(g.helper.make_node("Identity", [name], [final]))
        outputs.append(g.helper.make_tensor_value_info(final, kind, ["batch", *shape]))
    graph = g.helper.make_graph(g.nodes, "numdl", inputs, outputs, g.initializers)
    proto = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET)], producer_name="numdl")
    g.onnx.checker.check_model(proto)
    return proto


def export_onnx(model, path):
    """Write ``model`` to ``path`` as ONNX; returns the path."""
    onnx, _, _ = _onnx()
    proto = to_onnx(model)
    from numdl.fileio import write_bytes_atomically

    write_bytes_atomically(path, proto.SerializeToString())
    return path
