"""Linear: ``y = x @ W.T + b`` with PyTorch's (out_features, in_features) weight layout."""

from numdl.errors import ConfigError, ShapeError
from numdl.init import get_initializer
from numdl.layers.base import Layer


class Linear(Layer):
    """Fully connected layer; ``in_features`` is inferred from the input at build time.

    The default initialisation is PyTorch's (``pytorch_default``: U(+-1/sqrt(in_features)) for the
    weight and the bias), so a model ported from PyTorch trains the same way.
    """

    name = "linear"

    def __init__(self, out_features: int, bias: bool = True, weight_init: str = "pytorch_default",
                 bias_init: str = "pytorch_default"):
        super().__init__()
        if out_features < 1:
            raise ConfigError(f"linear: out_features must be >= 1, got {out_features}")
        self.out_features, self.use_bias = out_features, bias
        self.weight_init, self.bias_init = get_initializer(weight_init), get_initializer(bias_init)
        self._x = None

    def hyperparameters(self):
        return {"out_features": self.out_features, "bias": self.use_bias,
                "weight_init": self.weight_init.__name__, "bias_init": self.bias_init.__name__}

    def setup(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ShapeError(f"layer 'linear' expects flat inputs (batch, features) but got input shape "
                             f"(batch, {', '.join(map(str, input_shape))}); add a 'flatten' layer first")
        in_features = input_shape[0]
        shape = (self.out_features, in_features)
        self.add_param("weight", self.weight_init(shape, in_features, self.out_features, rng))
        if self.use_bias:
            self.add_param("bias", self.bias_init((self.out_features,), in_features, self.out_features, rng))
        return (self.out_features,)

    def forward(self, x, training=False):
        out = self.buffer("out", (x.shape[0], self.out_features))
        bias = self.params["bias"].value if self.use_bias else None
        self.ops.linear_forward(out, x, self.params["weight"].value, bias)
        self._x = x
        return out

    def backward(self, dout):
        dx = self.buffer("dx", self._x.shape) if self.needs_input_grad else None
        dbias = self.params["bias"].grad if self.use_bias else None
        weight = self.params["weight"]
        self.ops.linear_backward(dx, weight.grad, dbias, dout, self._x, weight.value)
        return dx

