"""Convolutions: Conv2d and Conv1d (a Conv2d over a height-1 image), PyTorch's shapes and layout."""

import math

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.init import get_initializer
from numdl.layers.base import Layer

ACTIVATIONS = ("none", "relu")


def pair(value, what):
    """An int or a two-item list as an (h, w) tuple."""
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ConfigError(f"{what} must be an integer or a list of two integers, got {value!r}")
    return (int(value[0]), int(value[1]))


def conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class Conv2d(Layer):
    """2-D convolution over (channels, height, width) inputs; weight (out, in / groups, kH, kW).

    As PyTorch's ``nn.Conv2d``: ``padding`` is a size per side, or "valid" (none) or "same" (the
    output as large as the input; stride 1; when the total d (k - 1) is odd the extra row and
    column go at the bottom and right), and ``padding_mode`` fills it with zeros (the default) or
    copies of the image: "reflect", "replicate", "circular". Zero padding on both sides alike is
    done inside the convolution's kernels; any other is a padding pass before them.

    ``activation = "relu"`` fuses a ReLU into the pass that writes the output (one pass fewer than a
    separate ReLU layer, and no extra buffer). Default initialisation is PyTorch's.
    """

    name = "conv2d"

    def __init__(self, out_channels: int, kernel_size: int | list[int], stride: int | list[int] = 1,
                 padding: int | list[int] | str = 0, dilation: int | list[int] = 1, groups: int = 1, bias: bool = True,
                 activation: str = "none", weight_init: str = "pytorch_default", bias_init: str = "pytorch_default",
                 padding_mode: str = "zeros"):
        super().__init__()
        if out_channels < 1 or groups < 1 or out_channels % groups:
            raise ConfigError(f"{self.name}: out_channels ({out_channels}) must be a positive multiple of groups ({groups})")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{self.name}: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"{self.name}: padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.out_channels, self.groups, self.use_bias, self.activation = out_channels, groups, bias, activation
        self.kernel_size, self.stride = pair(kernel_size, "kernel_size"), pair(stride, "stride")
        self.dilation, self.padding_mode = pair(dilation, "dilation"), padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ConfigError(f"{self.name}: padding must be a size, a list of two, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ConfigError(f"{self.name}: padding='same' is not supported for strided convolutions (as PyTorch)")
        self.padding_spec = padding if isinstance(padding, str) else pair(padding, "padding")
        # (top, bottom, left, right): "same" splits d (k - 1) with the odd one at the bottom/right
        if padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            self.sides = (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
        elif padding == "valid":
            self.sides = (0, 0, 0, 0)
        else:
            self.sides = (self.padding_spec[0], self.padding_spec[0], self.padding_spec[1], self.padding_spec[1])
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.sides) < 0:
            raise ConfigError(f"{self.name}: kernel_size, stride, dilation must be >= 1 and padding >= 0")
        top, bottom, left, right = self.sides
        # zero padding alike on both sides is the kernels' own; anything else is a padding pass first
        self.pads_first = padding_mode != "zeros" or top != bottom or left != right
        self.padding = (0, 0) if self.pads_first else (top, left)  # what the convolution kernels apply
        self.weight_init, self.bias_init = get_initializer(weight_init), get_initializer(bias_init)

    def hyperparameters(self):
        padding = self.padding_spec if isinstance(self.padding_spec, str) else list(self.padding_spec)
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": padding, "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.use_bias, "activation": self.activation, "padding_mode": self.padding_mode}

    def _image_shape(self, input_shape):
        return self.image_shape(input_shape)

    def weight_shape(self, in_channels):
        return (self.out_channels, in_channels // self.groups) + self.kernel_size

    def setup(self, input_shape, rng):
        channels, h, w = self._image_shape(input_shape)
        if channels % self.groups:
            raise ShapeError(f"layer '{self.name}': {channels} input channels are not divisible by groups={self.groups}")
        top, bottom, left, right = self.sides
        self._raw_image = (channels, h, w)
        if self.pads_first:
            limits = {"reflect": lambda pad, size: pad < size, "circular": lambda pad, size: pad <= size}
            fits = limits.get(self.padding_mode, lambda pad, size: True)
            if not all(fits(pad, size) for pad, size in ((top, h), (bottom, h), (left, w), (right, w))):
                raise ShapeError(f"layer '{self.name}': padding_mode={self.padding_mode!r} pads at most "
                                 f"{'the input size less one' if self.padding_mode == 'reflect' else 'the input size'}"
                                 f" per side; padding {list(self.sides)} on a {h}x{w} input")
            h, w = h + top + bottom, w + left + right
        out_hw = tuple(conv_output_size(size, k, s, p, d) for size, k, s, p, d in
                       zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if min(out_hw) < 1:
            raise ShapeError(f"layer '{self.name}': input {h}x{w} is too small for kernel {self.kernel_size} "
                             f"with padding {self.padding} and dilation {self.dilation}")
        fan_in = channels // self.groups * math.prod(self.kernel_size)
        fan_out = self.out_channels // self.groups * math.prod(self.kernel_size)
        shape = self.weight_shape(channels)
        self.add_param("weight", self.weight_init(shape, fan_in, fan_out, rng))
        if self.use_bias:
            self.add_param("bias", self.bias_init((self.out_channels,), fan_in, fan_out, rng))
        self._image_in = (channels, h, w)
        self._image_out = (self.out_channels,) + out_hw
        return self._image_out

    @property
    def _relu(self):
        return self.activation == "relu" or self.fused_relu

    fused_pool = None  # the MaxPool2d layer this convolution applies (set by the model; see can_fuse_pool)

    @property
    def can_fuse_relu(self):
        return self.activation == "none"

    def can_fuse_pool(self, pool):
        """Whether this convolution can apply ``pool`` (the next layer, after any ReLU it applies) in
        the pass that writes its output: a 2x2 max pooling at stride 2, unpadded, floor mode, on a 2-D
        output of at least 2x2."""
        from numdl.layers.pool import fusible_max_pool

        return fusible_max_pool(pool) and len(self.output_shape) == 3 and min(self._image_out[1:]) >= 2

    def _weight4(self, array):
        return array.reshape(self.weight_shape(self._image_in[0]))

    def forward(self, x, training=False):
        x = self.contiguous(x, "x_copy")
        n = x.shape[0]
        x4 = x.reshape((n,) + self._raw_image)
        if self.pads_first:  # the padded image, which the convolution then reads without padding
            padded = self.buffer("x_padded", (n,) + self._image_in)
            top, _, left, _ = self.sides
            if self.padding_mode == "zeros":
                self.ops.pad2d_forward(padded, x4, top, left)
            else:
                self.ops.pad2d_mode_forward(padded, x4, top, left, self.padding_mode)
            x4 = padded
        bias = self.params["bias"].value if self.use_bias else None
        weight = self._weight4(self.params["weight"].value)
        if self.fused_pool is not None:  # the max pooling after it too: only the pooled output is stored
            out = self.buffer("out", (n,) + self.fused_pool.output_shape)
            self._pool_at = self.buffer("pool_at", out.shape, np.int8)  # where each window's maximum is
            self.ops.conv2d_pool_forward(out, self._pool_at, x4, weight, bias, self.stride, self.padding,
                                         self.dilation, self.groups, self._relu)
            self._x, self._out = x4, out
            return out
        out = self.buffer("out", (n,) + self._image_out)
        self.ops.conv2d_forward(out, x4, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                                self._relu)
        self._x, self._out = x4, out
        return out.reshape((n,) + self.output_shape)

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        n = dout.shape[0]
        dx = self.buffer("dx_padded" if self.pads_first else "dx", (n,) + self._image_in) \
            if self.needs_input_grad else None
        weight = self.params["weight"]
        dbias = self.params["bias"].grad if self.use_bias else None
        if self.fused_pool is not None:  # dout is the pooling's output gradient
            self.ops.conv2d_pool_backward(dx, self._weight4(weight.grad), dbias, dout, self._out, self._pool_at,
                                          self._x, self._weight4(weight.value), self.stride, self.padding,
                                          self.dilation, self.groups, self._relu)
        else:
            self.ops.conv2d_backward(dx, self._weight4(weight.grad), dbias, dout.reshape((n,) + self._image_out),
                                     self._out, self._x, self._weight4(weight.value), self.stride, self.padding,
                                     self.dilation, self.groups, self._relu)
        if dx is None:
            return None
        if self.pads_first:  # the padded image's gradient back onto the input's pixels
            padded, dx = dx, self.buffer("dx", (n,) + self._raw_image)
            top, _, left, _ = self.sides
            if self.padding_mode == "zeros":
                self.ops.pad2d_backward(dx, padded, top, left)
            else:
                self.ops.pad2d_mode_backward(dx, padded, top, left, self.padding_mode)
        return dx.reshape((n,) + self.input_shape)


class Conv1d(Conv2d):
    """1-D convolution over (channels, length) inputs; weight (out, in / groups, k) as in PyTorch.
    Runs the Conv2d kernels on a height-1 view, so it shares their speed and their tests."""

    name = "conv1d"

    def __init__(self, out_channels: int, kernel_size: int, stride: int = 1, padding: int | str = 0, dilation: int = 1,
                 groups: int = 1, bias: bool = True, activation: str = "none", weight_init: str = "pytorch_default",
                 bias_init: str = "pytorch_default", padding_mode: str = "zeros"):
        # "same" / "valid" carry over: on the height-1 view the kernel's height is 1, so all of the
        # padding lands along the length
        super().__init__(out_channels, [1, kernel_size], [1, stride], padding if isinstance(padding, str) else
                         [0, padding], [1, dilation], groups, bias, activation, weight_init, bias_init, padding_mode)

    def hyperparameters(self):
        padding = self.padding_spec if isinstance(self.padding_spec, str) else self.padding_spec[1]
        return {"out_channels": self.out_channels, "kernel_size": self.kernel_size[1], "stride": self.stride[1],
                "padding": padding, "dilation": self.dilation[1], "groups": self.groups,
                "bias": self.use_bias, "activation": self.activation, "padding_mode": self.padding_mode}

    def _image_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ShapeError(f"layer 'conv1d' expects inputs (batch, channels, length) but got input shape "
                             f"(batch, {', '.join(map(str, input_shape))})")
        return (input_shape[0], 1, input_shape[1])

    def weight_shape(self, in_channels):
        return (self.out_channels, in_channels // self.groups, 1, self.kernel_size[1])

    def setup(self, input_shape, rng):
        out = super().setup(input_shape, rng)
        weight = self.params["weight"]
        three_d = (self.out_channels, input_shape[0] // self.groups, self.kernel_size[1])
        weight.value, weight.grad = weight.value.reshape(three_d), weight.grad.reshape(three_d)
        return (out[0], out[2])


class ConvTranspose2d(Layer):
    """2-D transposed convolution (PyTorch's ``nn.ConvTranspose2d``): weight (in, out / groups, kH, kW),
    output size ``(H - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1``. The learned
    upsampling of decoders (U-Net, DCGAN); ``output_padding`` (< stride or dilation) picks among the
    output sizes a strided convolution maps back to the same input size."""

    name = "conv_transpose2d"
    check_input_shape = (4, 3, 4)
    check_kwargs = {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1, "groups": 2}

    def __init__(self, out_channels: int, kernel_size: int | list[int], stride: int | list[int] = 1,
                 padding: int | list[int] = 0, output_padding: int | list[int] = 0, dilation: int | list[int] = 1,
                 groups: int = 1, bias: bool = True, weight_init: str = "pytorch_default",
                 bias_init: str = "pytorch_default"):
        super().__init__()
        if out_channels < 1 or groups < 1 or out_channels % groups:
            raise ConfigError(f"{self.name}: out_channels ({out_channels}) must be a positive multiple of groups ({groups})")
        self.out_channels, self.groups, self.use_bias = out_channels, groups, bias
        self.kernel_size, self.stride = pair(kernel_size, "kernel_size"), pair(stride, "stride")
        self.padding, self.dilation = pair(padding, "padding"), pair(dilation, "dilation")
        self.output_padding = pair(output_padding, "output_padding")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding + self.output_padding) < 0:
            raise ConfigError(f"{self.name}: kernel_size, stride, dilation must be >= 1, padding and output_padding >= 0")
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ConfigError(f"{self.name}: output_padding {list(self.output_padding)} must be smaller than stride "
                              f"or dilation")
        self.weight_init, self.bias_init = get_initializer(weight_init), get_initializer(bias_init)

    def hyperparameters(self):
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "output_padding": list(self.output_padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.use_bias}

    def setup(self, input_shape, rng):
        channels, h, w = self.image_shape(input_shape)
        if channels % self.groups:
            raise ShapeError(f"layer '{self.name}': {channels} input channels are not divisible by groups={self.groups}")
        out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, k, s, p, d, op in
                       zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation, self.output_padding))
        if min(out_hw) < 1:
            raise ShapeError(f"layer '{self.name}': input {h}x{w} with padding {list(self.padding)} gives an empty "
                             f"output {out_hw}")
        # PyTorch's fan-in of a transposed convolution's weight: its dimension 1 times the kernel.
        fan_in = self.out_channels // self.groups * math.prod(self.kernel_size)
        fan_out = channels // self.groups * math.prod(self.kernel_size)
        self.add_param("weight", self.weight_init((channels, self.out_channels // self.groups) + self.kernel_size,
                                                  fan_in, fan_out, rng))
        if self.use_bias:
            self.add_param("bias", self.bias_init((self.out_channels,), fan_in, fan_out, rng))
        return (self.out_channels,) + out_hw

    def _workspace(self, key, rows, n):
        columns = n * self.input_shape[1] * self.input_shape[2]
        return self.buffer(key, (rows, columns) if self.ops.uses_im2col else (0, 0))

    def forward(self, x, training=False):
        self.check_input(x)
        x = self.contiguous(x, "x_copy")
        n = x.shape[0]
        out = self.buffer("out", (n,) + self.output_shape)
        self._xt = self._workspace("xt", self.input_shape[0], n)
        cols = self._workspace("cols", self.out_channels * math.prod(self.kernel_size), n)
        bias = self.params["bias"].value if self.use_bias else None
        self.ops.conv_transpose2d_forward(out, self._xt, cols, x, self.params["weight"].value, bias, self.stride,
                                          self.padding, self.dilation, self.groups)
        self._x = x
        return out

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        n = dout.shape[0]
        dx = self.buffer("dx", (n,) + self.input_shape) if self.needs_input_grad else None
        dcols = self._workspace("dcols", self.out_channels * math.prod(self.kernel_size), n)
        dxt = self._workspace("dxt", self.input_shape[0] if self.needs_input_grad else 0, n)
        weight = self.params["weight"]
        dbias = self.params["bias"].grad if self.use_bias else None
        self.ops.conv_transpose2d_backward(dx, weight.grad, dbias, dcols, dxt, dout, self._x, self._xt, weight.value,
                                           self.stride, self.padding, self.dilation, self.groups)
        return dx
