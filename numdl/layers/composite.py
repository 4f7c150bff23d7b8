"""Composite layers: Chain (children in sequence) and Residual (a block whose output is added to its
optionally projected input). Composites forward sequence lengths, parameters, state and random
streams of their children under prefixed names."""

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class Composite(Layer):
    uses_lengths = True

    def _children(self):
        """[(prefix, layer)] in a stable order."""
        raise NotImplementedError

    @property
    def lengths(self):
        return self._lengths

    @lengths.setter
    def lengths(self, value):
        self._lengths = value
        for _, layer in self._children():
            if getattr(layer, "uses_lengths", False):
                layer.lengths = value

    def named_parameters(self):
        return {f"{prefix}.{name}": p for prefix, layer in self._children()
                for name, p in layer.named_parameters().items()}

    def named_state(self):
        return {f"{prefix}.{name}": a for prefix, layer in self._children() for name, a in layer.named_state().items()}

    def torch_names(self):
        return {f"{prefix}.{ours}": f"{prefix}.{theirs}" for prefix, layer in self._children()
                for ours, theirs in layer.torch_names().items()}

    def leaves(self, prefix=""):
        return [leaf for name, layer in self._children() for leaf in layer.leaves(f"{prefix}{name}.")]

    def get_rng_state(self):
        return {prefix: layer.get_rng_state() for prefix, layer in self._children() if layer.get_rng_state()}

    def set_rng_state(self, state):
        for prefix, layer in self._children():
            if prefix in state:
                layer.set_rng_state(state[prefix])

    def layer_runs(self):
        """Lists of children that run one after the other, each feeding only the next (where a
        model may let a layer apply the ReLU or pooling after it: fuse_runs)."""
        return []

    def _build_children(self, layers, shape, rng, what):
        for index, layer in enumerate(layers):
            layer.needs_input_grad = True
            try:
                shape = layer.build(shape, self.ops, self.dtype, rng)
            except ShapeError as error:
                raise ShapeError(f"{what} layer {index} ({layer.name}): {error}") from None
        return shape


class Chain(Composite):
    """Children applied one after the other (the building block of composite layers)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = list(layers)
        self._lengths = None

    def _children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def layer_runs(self):
        return [self.layers]

    def setup(self, input_shape, rng):
        return self._build_children(self.layers, input_shape, rng, self.name)

    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

PROJECTIONS = ("auto", "none", "conv", "conv_bn", "linear")


class Residual(Composite):
    """``out = activation(block(x) + skip(x))``.

    ``layers`` is the block: Layer instances, or config tables (``{type = ..., ...}``) that the config
    loader builds. ``projection`` picks ``skip``: ``"none"`` is the identity (shapes must match);
    ``"conv"``/``"conv_bn"`` a strided 1x1 convolution (plus BatchNorm2d) for image blocks that change
    channels or resolution; ``"linear"`` a Linear for flat blocks; ``"auto"`` the identity when the
    block keeps the shape, else ``conv_bn`` for images and ``linear`` for flat inputs (as ResNet).
    """

    name = "residual"
    #: The constructor parameter holding nested layer tables (validated and built by numdl.config).
    nested_layers = "layers"

    def __init__(self, layers: list, projection: str = "auto", activation: str = "none"):
        super().__init__()
        if not layers:
            raise ConfigError("residual: layers must name at least one layer")
        if projection not in PROJECTIONS:
            raise ConfigError(f"residual: projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        if activation not in ("none", "relu"):
            raise ConfigError(f"residual: activation must be none or relu, got {activation!r}")
        if not all(isinstance(layer, Layer) for layer in layers):
            raise ConfigError("residual: layers must be Layer instances (configs are built by numdl.config)")
        self.block, self.projection, self.activation = list(layers), projection, activation
        self.skip = []
        self._lengths = None

    def hyperparameters(self):
        return {"layers": [layer.name for layer in self.block], "projection": self.projection,
                "activation": self.activation}

    def config_table(self):
        return {**super().config_table(), "layers": [layer.config_table() for layer in self.block]}

    def setup(self, input_shape, rng):
        shape = self._build_children(self.block, input_shape, rng, "residual block")
        kind = self.projection
        if kind == "auto":
            kind = "none" if shape == input_shape else ("conv_bn" if len(input_shape) == 3 else "linear")
        self.skip = self._make_skip(kind, input_shape, shape)
        skip_shape = input_shape
        for layer in self.skip:
            layer.needs_input_grad = True
            skip_shape = layer.build(skip_shape, self.ops, self.dtype, rng)
        if skip_shape != shape:
            raise ShapeError(f"residual: the block maps {input_shape} to {shape} but the '{kind}' skip gives "
                             f"{skip_shape}; choose another projection")
        return shape

    @staticmethod
    def _make_skip(kind, input_shape, output_shape):
        from numdl.layers.conv import Conv2d
        from numdl.layers.linear import Linear
        from numdl.layers.norm import BatchNorm2d

        if kind == "none":
            return []
        if kind == "linear":
            return [Linear(output_shape[0], bias=False)]
        if len(input_shape) != 3 or len(output_shape) != 3 or input_shape[1] % output_shape[1]:
            raise ShapeError(f"residual: a convolution projection needs image shapes whose sizes divide, got "
                             f"{input_shape} -> {output_shape}")
        stride = [input_shape[1] // output_shape[1], input_shape[2] // output_shape[2]]
        conv = Conv2d(output_shape[0], 1, stride=stride, bias=False)
        return [conv, BatchNorm2d()] if kind == "conv_bn" else [conv]

    def forward(self, x, training=False):
        y = x
        for layer in self.block:
            y = layer.forward(y, training)
        s = x
        for layer in self.skip:
            s = layer.forward(s, training)
        out = self.buffer("sum", y.shape)
        self.ops.add(out, y, s)
        if self.activation == "relu":
            activated = self.buffer("out", y.shape)
            self.ops.activation_forward("relu", activated, out)
            self._sum, out = out, activated
        return out

    def backward(self, dout):
        if self.activation == "relu":
            d = self.buffer("dsum", dout.shape)
            self.ops.activation_backward("relu", d, dout, self._sum)
            dout = d
        d_block = dout
        for layer in reversed(self.block):
            d_block = layer.backward(d_block)
        d_skip = dout
        for layer in reversed(self.skip):
            d_skip = layer.backward(d_skip)
        dx = self.buffer("dx", d_block.shape)
        self.ops.add(dx, d_block, d_skip)
        return dx

    def _children(self):
        return [(f"block.{i}", layer) for i, layer in enumerate(self.block)] + \
               [(f"skip.{i}", layer) for i, layer in enumerate(self.skip)]

    def layer_runs(self):
        return [self.block, self.skip]


def fuse_runs(layers):
    """In ``layers``, run one after the other: a layer followed by a ReLU it can apply itself
    (``can_fuse_relu``: Linear, Conv2d, batch norm) applies it, and a Conv2d or BatchNorm2d (with
    that ReLU) followed by a 2x2 max pooling it can apply (``can_fuse_pool``) pools in the same
    pass, its full-size output never stored; then the same inside every composite among them (a
    Transformer's feed-forward Linear and ReLU, a residual block's convolution and ReLU)."""
    from numdl.layers.activation import ReLU

    for before, after in zip(layers, layers[1:]):
        if isinstance(after, ReLU) and before.can_fuse_relu:
            before.fused_relu = after.absorbed = True
    for index, layer in enumerate(layers):
        after = index + 2 if getattr(layer, "fused_relu", False) else index + 1
        if after < len(layers) and hasattr(layer, "can_fuse_pool") and layer.can_fuse_pool(layers[after]):
            layer.fused_pool = layers[after]
            layers[after].absorbed = True
    for layer in layers:
        fuse_inside(layer)


def fuse_inside(layer):
    """fuse_runs on the runs of children of ``layer`` and of every composite within it."""
    if not isinstance(layer, Composite):
        return
    for run in layer.layer_runs():
        fuse_runs(run)
    ran = {id(child) for run in layer.layer_runs() for child in run}
    for _, child in layer._children():
        if id(child) not in ran:
            fuse_inside(child)
