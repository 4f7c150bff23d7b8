"""Layers that join several tensors of a graph model: Concat, Add, Multiply, and Crop2d (crop or
pad an image to a given size or to another tensor's size: U-Net's skip connections).

A merge layer's ``build`` receives a list of input shapes, ``forward`` a list of arrays, and
``backward`` returns a list of input gradients (None where an input needs none).
"""

import math

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class Merge(Layer):
    #: Graph models pass a list of inputs (and expect a list of gradients back).
    many_inputs = True
    #: Fewest and most inputs accepted (None: any number).
    input_count = (2, None)

    def build(self, input_shape, ops, dtype, rng):
        shapes = [tuple(int(d) for d in shape) for shape in input_shape]
        low, high = self.input_count
        if len(shapes) < low or (high is not None and len(shapes) > high):
            wanted = f"{low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
            raise ShapeError(f"layer '{self.name}' takes {wanted} inputs, got {len(shapes)}")
        self.input_shapes = shapes
        return super().build(shapes[0], ops, dtype, rng)

    def setup(self, input_shape, rng):
        return self.merge_shape(self.input_shapes)

    def merge_shape(self, shapes):
        raise NotImplementedError

    def _check_inputs(self, xs):
        for index, (x, shape) in enumerate(zip(xs, self.input_shapes)):
            if tuple(x.shape[1:]) != shape:
                raise ShapeError(f"layer {self.name!r} expects input {index} of shape (batch, "
                                 f"{', '.join(map(str, shape))}) but got {tuple(x.shape)}")


def _same_shapes(name, shapes):
    if any(shape != shapes[0] for shape in shapes):
        raise ShapeError(f"layer '{name}' joins tensors of one shape, got {', '.join(map(str, shapes))}")
    return shapes[0]


class Add(Merge):
    """The element-wise sum of its inputs (all of one shape)."""

    name = "add"
    check_input_shape = [(2, 5), (2, 5), (2, 5)]

    def merge_shape(self, shapes):
        return _same_shapes(self.name, shapes)

    def forward(self, xs, training=False):
        self._check_inputs(xs)
        out = self.buffer("out", xs[0].shape)
        self.ops.add(out, xs[0], xs[1])
        for x in xs[2:]:
            self.ops.add(out, out, x)
        return out

    def backward(self, dout):
        return [dout] * len(self.input_shapes)  # read-only: the graph sums into buffers of its own


class Multiply(Merge):
    """The element-wise product of two inputs of one shape (gates, attention maps)."""

    name = "multiply"
    input_count = (2, 2)
    check_input_shape = [(2, 5), (2, 5)]

    def merge_shape(self, shapes):
        return _same_shapes(self.name, shapes)

    def forward(self, xs, training=False):
        self._check_inputs(xs)
        out = self.buffer("out", xs[0].shape)
        self.ops.multiply(out, xs[0], xs[1])
        self._a, self._b = xs
        return out

    def backward(self, dout):
        da = self.buffer("da", dout.shape)
        db = self.buffer("db", dout.shape)
        self.ops.multiply_backward(da, db, dout, self._a, self._b)
        return [da, db]


class Concat(Merge):
    """Inputs joined along ``axis`` (counted with the batch axis, as ``torch.cat(dim=...)``: 1 is the
    channels of images); every other size must agree."""

    name = "concat"
    check_input_shape = [(2, 3, 4), (1, 3, 4)]

    def __init__(self, axis: int = 1):
        super().__init__()
        if axis == 0:
            raise ConfigError("concat: axis 0 is the batch axis; join along a sample axis (1 = channels)")
        self.axis = axis

    def hyperparameters(self):
        return {"axis": self.axis}

    def merge_shape(self, shapes):
        rank = len(shapes[0])
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= axis < rank or any(len(shape) != rank for shape in shapes):
            raise ShapeError(f"layer 'concat': axis {self.axis} does not fit inputs of shapes "
                             f"{', '.join(str(('batch',) + s) for s in shapes)}")
        for shape in shapes[1:]:
            if shape[:axis] + shape[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
                raise ShapeError(f"layer 'concat': inputs of shapes {', '.join(map(str, shapes))} differ outside "
                                 f"axis {self.axis}")
        self._sample_axis = axis
        return shapes[0][:axis] + (sum(shape[axis] for shape in shapes),) + shapes[0][axis + 1:]

    def _rows(self, n):
        return n * math.prod(self.output_shape[:self._sample_axis])

    def forward(self, xs, training=False):
        self._check_inputs(xs)
        n = xs[0].shape[0]
        out = self.buffer("out", (n,) + self.output_shape)
        rows = self._rows(n)
        out2 = out.reshape(rows, out.size // rows)
        offset = 0
        for index, x in enumerate(xs):
            x = self.contiguous(x, f"x_copy{index}")
            self.ops.concat_forward(out2, x.reshape(rows, x.size // rows), offset)
            offset += x.size // rows
        return out

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        n = dout.shape[0]
        rows = self._rows(n)
        d2 = dout.reshape(rows, dout.size // rows)
        grads, offset = [], 0
        for index, shape in enumerate(self.input_shapes):
            dx = self.buffer(f"dx{index}", (n,) + shape)
            width = dx.size // rows
            self.ops.concat_backward(dx.reshape(rows, width), d2, offset)
            grads.append(dx)
            offset += width
        return grads


class Crop2d(Merge):
    """Crops or zero-pads images (channels, height, width) to ``size = [h, w]``, or, given a second
    input, to that input's height and width (the second input only lends its size: it gets no
    gradient). The window is centred (an odd difference puts the extra row/column at the bottom/right,
    as torchvision's center_crop)."""

    name = "crop2d"
    input_count = (1, 2)
    check_input_shape = [(2, 5, 4), (1, 3, 6)]

    def __init__(self, size: list[int] | None = None):
        super().__init__()
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ConfigError(f"crop2d: size must be two positive integers [height, width], got {size!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def hyperparameters(self):
        return {"size": None if self.size is None else list(self.size)}

    def merge_shape(self, shapes):
        if any(len(shape) != 3 for shape in shapes):
            raise ShapeError(f"layer 'crop2d' expects images (channels, height, width), got "
                             f"{', '.join(map(str, shapes))}")
        if (len(shapes) == 2) == (self.size is not None):
            raise ShapeError("layer 'crop2d' takes a size or a second input to match, exactly one of them")
        size = self.size or shapes[1][1:]
        channels, h, w = shapes[0]
        # offsets of the input inside the output: negative crops
        self._top, self._left = (size[0] - h) // 2, (size[1] - w) // 2
        return (channels,) + tuple(size)

    def forward(self, xs, training=False):
        self._check_inputs(xs)
        x = self.contiguous(xs[0], "x_copy")
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self.ops.pad2d_forward(out, x, self._top, self._left)
        return out

    def backward(self, dout):
        dout = self.contiguous(dout, "dout_copy")
        dx = self.buffer("dx", (dout.shape[0],) + self.input_shapes[0])
        self.ops.pad2d_backward(dx, dout, self._top, self._left)
        return [dx] + [None] * (len(self.input_shapes) - 1)
