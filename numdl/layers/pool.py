"""Pooling: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d (PyTorch semantics) and GlobalAvgPool2d
(-> (batch, channels))."""

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer
from numdl.layers.conv import conv_output_size, pair


def argmax_buffer(layer, shape):
    """The layer's int64 work array for the maxima's positions, reused while its shape stays."""
    array = layer._buffers.get("argmax")
    if array is None or tuple(array.shape) != tuple(shape):
        array = layer._buffers["argmax"] = layer.ops.empty(tuple(shape), np.int64)
    return array


def fusible_max_pool(layer):
    """Whether ``layer`` is a max pooling that the layer before it can apply in its own output pass
    (Conv2d and BatchNorm2d ``can_fuse_pool``): 2x2 windows at stride 2, unpadded, floor mode."""
    return (isinstance(layer, MaxPool2d) and layer.kernel_size == (2, 2) and layer.stride == (2, 2)
            and layer.padding == (0, 0) and layer.dilation == (1, 1) and not layer.ceil_mode)


def pooled_size(size, kernel, stride, padding, ceil_mode, dilation=1):
    """PyTorch's pooling output size: floor, or with ceil_mode one more window when the last one
    still starts inside the (left-padded) input."""
    if not ceil_mode:
        return conv_output_size(size, kernel, stride, padding, dilation)
    out = -(-(size + 2 * padding - dilation * (kernel - 1) - 1) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


class _Pool2d(Layer):
    """``ceil_mode`` (as PyTorch): the output size rounds up, the last window may hang over the edge."""

    dilation = (1, 1)  # max pooling's option; average pooling has none (as in PyTorch)

    def __init__(self, kernel_size: int | list[int], stride: int | list[int] | None = None,
                 padding: int | list[int] = 0, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride") if stride is not None else self.kernel_size
        self.padding = pair(padding, "padding")
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ConfigError(f"{self.name}: kernel_size and stride must be >= 1, padding >= 0")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ConfigError(f"{self.name}: padding must be at most half the kernel size (as in PyTorch)")

    def hyperparameters(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "ceil_mode": self.ceil_mode}

    def setup(self, input_shape, rng):
        channels, h, w = self.image_shape(input_shape)
        out_hw = tuple(pooled_size(size, k, s, p, self.ceil_mode, d)
                       for size, k, s, p, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if min(out_hw) < 1:
            raise ShapeError(f"layer '{self.name}': input {h}x{w} is smaller than the window {self.kernel_size}")
        return (channels,) + out_hw


class MaxPool2d(_Pool2d):
    """Max pooling as PyTorch's (implicit -inf padding, the first maximum of a window wins, a NaN wins
    and stays); ``dilation`` spaces the window's taps (a 3x3 window with dilation 2 spans 5x5)."""

    name = "maxpool2d"

    def __init__(self, kernel_size: int | list[int], stride: int | list[int] | None = None,
                 padding: int | list[int] = 0, ceil_mode: bool = False, dilation: int | list[int] = 1):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.absorbed = False  # set by the model when the convolution before it applies this pooling
        self.dilation = pair(dilation, "dilation")
        if min(self.dilation) < 1:
            raise ConfigError(f"{self.name}: dilation must be >= 1, got {dilation!r}")

    def hyperparameters(self):
        return {**super().hyperparameters(), "dilation": list(self.dilation)}

    def forward(self, x, training=False):
        if self.absorbed:  # the convolution before it pooled already (Conv2d.fused_pool)
            return x
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self._argmax = self._index_buffer(out.shape)
        self.ops.maxpool2d_forward(out, self._argmax, x, self.kernel_size, self.stride, self.padding, self.dilation)
        return out

    def _index_buffer(self, shape):
        return argmax_buffer(self, shape)

    def backward(self, dout):
        if self.absorbed:
            return dout
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.maxpool2d_backward(dx, dout, self._argmax, self.kernel_size, self.stride, self.padding,
                                    self.dilation)
        return dx


class AvgPool2d(_Pool2d):
    """Average pooling as PyTorch's: zero padding counts in the average (``count_include_pad``, the
    default) or not (then each window averages the image pixels it covers)."""

    name = "avgpool2d"

    def __init__(self, kernel_size: int | list[int], stride: int | list[int] | None = None,
                 padding: int | list[int] = 0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def hyperparameters(self):
        return {**super().hyperparameters(), "count_include_pad": self.count_include_pad}

    def forward(self, x, training=False):
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self.ops.avgpool2d_forward(out, x, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.avgpool2d_backward(dx, dout, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        return dx


class _AdaptivePool2d(Layer):
    """PyTorch's adaptive pooling: ``output_size`` (an int, or [height, width] where None keeps the
    input's) fixes the output; window i spans [floor(i H / out), ceil((i + 1) H / out))."""

    kind = None

    def __init__(self, output_size: int | list):
        super().__init__()
        sizes = [output_size, output_size] if isinstance(output_size, int) else list(output_size)
        if len(sizes) != 2 or not all(s is None or (isinstance(s, int) and s >= 1) for s in sizes):
            raise ConfigError(f"{self.name}: output_size must be a positive size or [height, width] (None keeps the "
                              f"input's), got {output_size!r}")
        self.output_size = sizes

    def hyperparameters(self):
        return {"output_size": self.output_size}

    def setup(self, input_shape, rng):
        channels, h, w = self.image_shape(input_shape)
        out_h, out_w = (size if size is not None else keep for size, keep in zip(self.output_size, (h, w)))
        return (channels, out_h, out_w)

    def forward(self, x, training=False):
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self._argmax = argmax_buffer(self, out.shape) if self.kind == "max" else None
        self.ops.adaptive_pool2d_forward(self.kind, out, x, self._argmax)
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.adaptive_pool2d_backward(self.kind, dx, dout, self._argmax)
        return dx


class AdaptiveAvgPool2d(_AdaptivePool2d):
    name = "adaptive_avgpool2d"
    kind = "avg"
    check_kwargs = {"output_size": [2, 3]}
    check_input_shape = (2, 5, 7)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    name = "adaptive_maxpool2d"
    kind = "max"
    check_kwargs = {"output_size": [2, 3]}
    check_input_shape = (2, 5, 7)


class GlobalAvgPool2d(Layer):
    """Mean over height and width: (batch, C, H, W) -> (batch, C)."""

    name = "global_avgpool2d"

    def setup(self, input_shape, rng):
        self.image_shape(input_shape)
        self._window = tuple(input_shape[1:])
        return (input_shape[0],)

    def forward(self, x, training=False):
        out = self.buffer("out", (x.shape[0], self.output_shape[0], 1, 1))
        self.ops.avgpool2d_forward(out, x, self._window, self._window, (0, 0))
        return out.reshape(x.shape[0], self.output_shape[0])

    def backward(self, dout):
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.avgpool2d_backward(dx, dout.reshape(dout.shape[0], -1, 1, 1), self._window, self._window, (0, 0))
        return dx
