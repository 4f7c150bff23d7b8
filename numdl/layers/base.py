"""The Layer contract every built-in and plugin layer follows.

A layer is configured by its constructor (hyper-parameters only: those are what a config names),
then ``build`` gives it a backend, a dtype, its input shape and a seeded generator: there it creates
its parameters. ``forward`` keeps what ``backward`` needs; ``backward`` writes parameter gradients
(overwriting them) and returns the gradient of its input. Shapes exclude the batch axis.
"""

import numpy as np

from numdl.errors import ShapeError


class Parameter:
    """A trainable array and its gradient, both on the layer's device. ``bank`` is the
    ParameterBank whose flat buffers hold both, once a model has packed its parameters; ``path``
    the model's name for it (what checkpoints and optimizer parameter groups use)."""

    __slots__ = ("name", "value", "grad", "bank", "path")

    def __init__(self, name, value, grad):
        self.name, self.value, self.grad = name, value, grad
        self.bank = None
        self.path = None  # the model's name for it ("0.linear.weight"), set when a model is built

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={tuple(self.value.shape)})"


class ParameterBank:
    """All parameters of a model in one flat value buffer and one flat gradient buffer.

    Each Parameter's ``value`` and ``grad`` become views of a slice of these buffers, so layers see
    no difference, while an element-wise optimizer updates every parameter in one kernel call and the
    gradient check before the step is one pass: per-parameter calls cost microseconds of dispatch
    each, which is most of a small model's optimizer step.
    """

    def __init__(self, ops, params, dtype):
        self.params = list(params)
        self.offsets = [0]
        for p in self.params:
            self.offsets.append(self.offsets[-1] + int(np.prod(p.value.shape)))
        host = np.zeros(self.offsets[-1], dtype)
        for p, begin, end in zip(self.params, self.offsets, self.offsets[1:]):
            host[begin:end] = np.asarray(ops.to_numpy(p.value), dtype).reshape(-1)
        self.values = ops.asarray(host)
        self.grads = ops.zeros(host.shape, dtype)
        for p in self.params:
            p.value, p.grad, p.bank = self.view(self.values, p), self.view(self.grads, p), self

    def view(self, flat, param):
        """The slice of a flat buffer (values, gradients or an optimizer's state) that is ``param``'s."""
        index = self.params.index(param)
        return flat[self.offsets[index]:self.offsets[index + 1]].reshape(tuple(param.value.shape))

    @staticmethod
    def of(params):
        """The bank holding exactly ``params``, in order, or None (unpacked or a subset)."""
        params = list(params)
        bank = params[0].bank if params else None
        if bank is None or len(bank.params) != len(params) or any(a is not b for a, b in zip(bank.params, params)):
            return None
        return bank


class Layer:
    #: The name a config uses (``type = "..."``); unique across every registered plugin.
    name = None
    #: Whether the layer can apply a following ReLU itself (``fused_relu``); Sequential then makes
    #: that ReLU a pass-through: one pass over the activations fewer each way, and one buffer less.
    can_fuse_relu = False

    def __init__(self):
        self.ops = None
        self.dtype = None
        self.input_shape = None
        self.output_shape = None
        self.params = {}
        self.state = {}  # non-trained arrays kept across steps (BatchNorm's running statistics)
        # False for the first layer of a model: no one needs the gradient of the data.
        self.needs_input_grad = True
        self.fused_relu = False  # set by Sequential when the next layer is a ReLU it absorbs
        self._buffers = {}

    # ---------------------------------------------------------------------------- building
    def build(self, input_shape, ops, dtype, rng):
        """Create parameters for inputs of ``input_shape``; returns the output shape."""
        self.ops, self.dtype, self.input_shape = ops, np.dtype(dtype), tuple(input_shape)
        self.output_shape = tuple(self.setup(self.input_shape, rng))
        return self.output_shape

    def setup(self, input_shape, rng):
        """Subclass hook: validate ``input_shape``, add parameters, return the output shape."""
        return input_shape

    def add_param(self, name, host_values):
        """Register a parameter from host values (cast to the layer's dtype, moved to its device)."""
        value = self.ops.asarray(np.asarray(host_values), dtype=self.dtype)
        self.params[name] = Parameter(name, value, self.ops.zeros(value.shape, self.dtype))
        return self.params[name]

    def add_state(self, name, host_values):
        """Register a non-trained array (saved with the model, never touched by an optimizer)."""
        self.state[name] = self.ops.asarray(np.asarray(host_values), dtype=self.dtype)
        return self.state[name]

    def parameters(self):
        return list(self.named_parameters().values())

    def named_parameters(self):
        """{name: Parameter}; composites prefix their children's names."""
        return dict(self.params)

    def named_state(self):
        return dict(self.state)

    def torch_names(self):
        """{numdl parameter or state name: the name PyTorch's equivalent module gives it}, for
        numdl.from_torch_state_dict. numdl keeps PyTorch's names where it can: the same by default."""
        return {name: name for name in [*self.named_parameters(), *self.named_state()]}

    def leaves(self, prefix=""):
        """[(name prefix, layer)] of the layers that hold arrays themselves (composites: their children)."""
        return [(prefix, self)]

    def buffer(self, key, shape, dtype=None):
        """A work array reused across steps while its shape stays (no allocation per step); of the
        layer's dtype unless ``dtype`` is given."""
        array = self._buffers.get(key)
        if array is None or tuple(array.shape) != tuple(shape):
            array = self._buffers[key] = self.ops.empty(tuple(shape), self.dtype if dtype is None else dtype)
        return array

    def contiguous(self, array, key):
        """``array`` itself when it is C-contiguous, else its values copied into the reused buffer
        ``key``: kernels index raw memory, and a Fortran-ordered or strided input or upstream gradient
        (a user's slice or transpose) is otherwise refused by them."""
        if not isinstance(array, np.ndarray) or array.flags.c_contiguous:
            return array
        if array.dtype != self.dtype:
            return np.ascontiguousarray(array)
        copy = self.buffer(key, array.shape)
        copy[...] = array
        return copy

    @staticmethod
    def rows(array, width):
        """``array`` viewed as (size / width, width). (Device arrays refuse reshape(-1) and shape[-1].)"""
        return array.reshape(array.size // width, width)

    # ---------------------------------------------------------------------------- running
    def __call__(self, inputs, name=None):
        """The functional API: ``layer(tensor)`` (or ``layer([t1, t2])`` for a merge layer) adds a node
        to a graph (see numdl.graph); ``name`` names the node. Calling one layer twice shares it."""
        from numdl.graph import call_layer

        return call_layer(self, inputs, name)

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def image_shape(self, input_shape):
        """``input_shape`` when it is an image's (channels, height, width); else a ShapeError naming the
        layer and the shape it got."""
        if len(input_shape) != 3:
            raise ShapeError(f"layer '{self.name}' expects inputs (batch, channels, height, width) but got input "
                             f"shape (batch, {', '.join(map(str, input_shape))})")
        return tuple(input_shape)

    def check_input(self, x):
        """Raise ShapeError naming this layer and both shapes when ``x`` does not fit."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"layer {self.name!r} expects input of shape (batch, {', '.join(map(str, self.input_shape))})"
                f" but got {tuple(x.shape)}")

    # ------------------------------------------------------------------- random state hooks
    def get_rng_state(self):
        """State of any random stream the layer draws from (dropout): a dict of ints, or {}."""
        return {}

    def set_rng_state(self, state):
        pass

    def hyperparameters(self):
        """Constructor arguments, as a config would name them (for saved configs and reprs)."""
        return {}

    def config_table(self):
        """The config table that builds this layer: ``{"type": name, **hyperparameters}`` (unset
        optional values left out). ``model.save`` records these so that ``numdl.load_model`` can
        rebuild a model made in Python."""
        return {"type": self.name, **{k: v for k, v in self.hyperparameters().items() if v is not None}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"
