"""Layers that change an image's size without learning: Upsample (nearest, bilinear) and Pad2d."""

import math

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer

MODES = ("nearest", "bilinear")


class Upsample(Layer):
    """PyTorch's ``nn.Upsample`` on (channels, height, width) images: ``scale_factor`` (a number or
    [h, w]) or an output ``size`` [h, w]; ``mode`` nearest or bilinear; ``align_corners`` (bilinear
    only) maps the corner pixels of input and output onto each other."""

    name = "upsample"
    check_input_shape = (2, 3, 4)
    check_kwargs = {"scale_factor": 2, "mode": "bilinear"}

    def __init__(self, scale_factor: float | list[float] | None = None, size: list[int] | None = None,
                 mode: str = "nearest", align_corners: bool = False):
        super().__init__()
        if (scale_factor is None) == (size is None):
            raise ConfigError("upsample: give scale_factor or size, exactly one of them")
        if mode not in MODES:
            raise ConfigError(f"upsample: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if align_corners and mode != "bilinear":
            raise ConfigError("upsample: align_corners applies to mode = 'bilinear' only")
        if scale_factor is not None:
            factors = [scale_factor] * 2 if isinstance(scale_factor, (int, float)) else list(scale_factor)
            if len(factors) != 2 or min(factors) <= 0:
                raise ConfigError(f"upsample: scale_factor must be a positive number or two, got {scale_factor!r}")
            scale_factor = tuple(float(f) for f in factors)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"upsample: size must be two positive integers [height, width], got {size!r}")
        self.scale_factor, self.size = scale_factor, None if size is None else tuple(int(s) for s in size)
        self.mode, self.align_corners = mode, bool(align_corners)

    def hyperparameters(self):
        return {"scale_factor": None if self.scale_factor is None else list(self.scale_factor),
                "size": None if self.size is None else list(self.size), "mode": self.mode,
                "align_corners": self.align_corners}

    def setup(self, input_shape, rng):
        channels, h, w = self.image_shape(input_shape)
        if self.size is not None:
            out = self.size
        else:
            out = (math.floor(h * self.scale_factor[0]), math.floor(w * self.scale_factor[1]))
        if min(out) < 1:
            raise ShapeError(f"layer 'upsample': input {h}x{w} gives an empty output {out}")
        # The source-per-output ratio PyTorch uses for each axis (see numdl.kernels.upsample).
        ratios = []
        for axis, (size_in, size_out) in enumerate(zip((h, w), out)):
            if self.align_corners:
                ratios.append((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
            elif self.scale_factor is not None:
                ratios.append(1.0 / self.scale_factor[axis])
            else:
                ratios.append(size_in / size_out)
        self._ratios = tuple(ratios)
        return (channels,) + tuple(out)

    def forward(self, x, training=False):
        self.check_input(x)
        x = self.contiguous(x, "x_copy")
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self.ops.upsample_forward(out, x, self._ratios, self.mode == "bilinear", self.align_corners)
        return out

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.upsample_backward(dx, dout, self._ratios, self.mode == "bilinear", self.align_corners)
        return dx


class Pad2d(Layer):
    """Zero padding of (channels, height, width) images by ``padding = [left, right, top, bottom]``
    (the order of ``torch.nn.functional.pad``) or one number for all sides; a negative amount crops
    that side."""

    name = "pad2d"
    check_input_shape = (2, 4, 5)
    check_kwargs = {"padding": [1, -1, 2, 0]}

    def __init__(self, padding: int | list[int]):
        super().__init__()
        amounts = [padding] * 4 if isinstance(padding, int) else list(padding)
        if len(amounts) != 4:
            raise ConfigError(f"pad2d: padding must be a number or [left, right, top, bottom], got {padding!r}")
        self.padding = tuple(int(a) for a in amounts)

    def hyperparameters(self):
        return {"padding": list(self.padding)}

    def setup(self, input_shape, rng):
        channels, h, w = self.image_shape(input_shape)
        left, right, top, bottom = self.padding
        out = (h + top + bottom, w + left + right)
        if min(out) < 1:
            raise ShapeError(f"layer 'pad2d': padding {list(self.padding)} leaves nothing of a {h}x{w} input")
        return (channels,) + out

    def forward(self, x, training=False):
        self.check_input(x)
        x = self.contiguous(x, "x_copy")
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self.ops.pad2d_forward(out, x, self.padding[2], self.padding[0])
        return out

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shape)
        self.ops.pad2d_backward(dx, dout, self.padding[2], self.padding[0])
        return dx
