"""Linear: ``y = x @ W.T + b`` with PyTorch's (out_features, in_features) weight layout."""

from numdl.errors import ConfigError, ShapeError
from numdl.init import get_initializer
from numdl.layers.base import Layer


class Linear(Layer):
    """Fully connected layer over the last axis (any leading axes, as PyTorch's nn.Linear);
    ``in_features`` is inferred from the input at build time.

    The default initialisation is PyTorch's (``pytorch_default``: U(+-1/sqrt(in_features)) for the
    weight and the bias), so a model ported from PyTorch trains the same way.
    """

    name = "linear"
    can_fuse_relu = True

    def __init__(self, out_features: int, bias: bool = True, weight_init: str = "pytorch_default",
                 bias_init: str = "pytorch_default"):
        super().__init__()
        if out_features < 1:
            raise ConfigError(f"linear: out_features must be >= 1, got {out_features}")
        self.out_features, self.use_bias = out_features, bias
        self.weight_init, self.bias_init = get_initializer(weight_init), get_initializer(bias_init)
        self._x = self._out = None

    def hyperparameters(self):
        return {"out_features": self.out_features, "bias": self.use_bias,
                "weight_init": self.weight_init.__name__, "bias_init": self.bias_init.__name__}

    def setup(self, input_shape, rng):
        if len(input_shape) not in (1, 2):
            raise ShapeError(f"layer 'linear' expects (batch, features) or (batch, time, features) inputs but got "
                             f"input shape (batch, {', '.join(map(str, input_shape))}); add a 'flatten' layer first")
        in_features = input_shape[-1]
        shape = (self.out_features, in_features)
        self.add_param("weight", self.weight_init(shape, in_features, self.out_features, rng))
        if self.use_bias:
            self.add_param("bias", self.bias_init((self.out_features,), in_features, self.out_features, rng))
        return input_shape[:-1] + (self.out_features,)

    def forward(self, x, training=False):
        x = self.contiguous(x, "x_copy")
        rows = self.rows(x, self.input_shape[-1])  # leading axes folded into one: a view, no copy
        out = self.buffer("out", (rows.shape[0], self.out_features))
        bias = self.params["bias"].value if self.use_bias else None
        self.ops.linear_forward(out, rows, self.params["weight"].value, bias, self.fused_relu)
        self._x, self._out = rows, out
        return out.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dout):
        dx = self.buffer("dx", self._x.shape) if self.needs_input_grad else None
        dbias = self.params["bias"].grad if self.use_bias else None
        weight = self.params["weight"]
        dout = self.contiguous(dout, "dout_copy")
        drows = self.rows(dout, self.out_features)
        fused = (self._out, self.buffer("dmasked", drows.shape)) if self.fused_relu else (None, None)
        self.ops.linear_backward(dx, weight.grad, dbias, drows, self._x, weight.value, *fused)
        return None if dx is None else dx.reshape(dout.shape[:-1] + (self._x.shape[1],))

