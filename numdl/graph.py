"""Graph models: layers wired by name into any directed acyclic graph (U-Net skips, two inputs, two
heads, a layer used twice), with everything ``Sequential`` has (fit / evaluate / predict,
checkpoints with exact resume, the NaN guard), built from Python or from a config.

From Python (the functional API, as Keras's)::

    x = numdl.Input((1, 28, 28))
    h = numdl.Conv2d(8, 3, padding=1, activation="relu")(x)
    skip = h
    h = numdl.Conv2d(8, 3, padding=1)(h)
    h = numdl.Add()([h, skip])
    model = numdl.Model(x, numdl.Linear(10)(numdl.Flatten()(h)))

From a config: ``[[model.nodes]]`` tables, each a layer table with a ``name`` and the names of its
``inputs`` ("input" is the data), and ``model.outputs`` naming the output nodes (default: the last).

How it runs: one topological order computed once; forward stores each node's output; backward walks
the order in reverse, summing gradients where a tensor fans out (into buffers of the graph's own: a
layer's returned gradient is never written to). A layer used by several nodes keeps one set of
parameters; each extra use runs on a shallow copy with its own work buffers and gradient arrays,
which are added to the layer's gradients after backward (shared weights, gradients summed).
"""

import copy

import numpy as np

from numdl.errors import ConfigError, DataError, ShapeError
from numdl.layers.activation import ReLU
from numdl.layers.base import Parameter, ParameterBank
from numdl.layers.composite import fuse_inside
from numdl.layers.pool import MaxPool2d
from numdl.model import Sequential


class Node:
    """One vertex of a graph: an input (``layer`` None, ``shape`` given) or a layer applied to the
    outputs of ``inputs``."""

    __slots__ = ("name", "layer", "inputs", "shape", "dtype")

    def __init__(self, name, layer, inputs, shape=None, dtype=None):
        self.name, self.layer, self.inputs, self.shape, self.dtype = name, layer, list(inputs), shape, dtype

    def __repr__(self):
        what = "input" if self.layer is None else self.layer.name
        return f"Node({self.name!r}, {what}, inputs={[i.name for i in self.inputs]})"


class Tensor:
    """A symbolic tensor of the functional API: the output of a node, to be passed to further layers
    and finally to ``Model(inputs, outputs)``."""

    __slots__ = ("node",)

    def __init__(self, node):
        self.node = node

    @property
    def name(self):
        return self.node.name

    def __repr__(self):
        return f"numdl.Tensor({self.node.name!r})"


def Input(shape, name=None, dtype=None):  # a constructor, in Keras's spelling
    """A model input of samples of ``shape`` (no batch axis); ``dtype`` "int64" for token ids."""
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise ConfigError(f"Input: shape must be a list of sizes, got {shape!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"Input: shape must be positive sizes, got {shape!r}")
    return Tensor(Node(name, None, [], shape=shape, dtype=None if dtype is None else np.dtype(dtype)))


def call_layer(layer, inputs, name=None):
    """``layer(tensor)`` or ``layer([t1, t2])`` in the functional API: a new node."""
    many = getattr(layer, "many_inputs", False)
    tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not all(isinstance(t, Tensor) for t in tensors):
        raise ConfigError(f"layer {layer.name!r}: call it on numdl.Input(...) or another layer's output in the "
                          f"functional API (arrays go to model.forward / predict)")
    if not many and len(tensors) != 1:
        raise ConfigError(f"layer {layer.name!r} takes one input, got {len(tensors)}")
    return Tensor(Node(name, layer, [t.node for t in tensors]))


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Model(Sequential):
    """A graph of layers: ``Model(inputs, outputs)`` with symbolic tensors (see the module doc).

    With one input and one output it is used exactly as a Sequential; with several, ``fit``,
    ``evaluate``, ``predict`` and ``forward`` take and give lists (one array per input / output), and
    ``compile`` takes one loss per output and ``loss_weights``.
    """

    def __init__(self, inputs, outputs, dtype="float32", device="cpu", seed=0, input_grad=False, fuse=True,
                 input_shape=None):
        self.input_tensors, self.output_tensors = _as_list(inputs), _as_list(outputs)
        if not self.input_tensors or not self.output_tensors:
            raise ConfigError("a graph model needs at least one input and one output")
        for t in self.input_tensors + self.output_tensors:
            if not isinstance(t, Tensor):
                raise ConfigError(f"Model(inputs, outputs) takes numdl.Input(...) and layer outputs, got {t!r}")
        self.input_nodes = [t.node for t in self.input_tensors]
        self.output_nodes = [t.node for t in self.output_tensors]
        self.order = _topological_order(self.input_nodes, self.output_nodes)
        _name_nodes(self.order)
        layers = []
        for node in self.order:
            if node.layer is not None and all(node.layer is not seen for seen in layers):
                layers.append(node.layer)
        self.multi_input, self.multi_output = len(self.input_nodes) > 1, len(self.output_nodes) > 1
        super().__init__(layers, None, dtype, device, seed, input_grad, fuse)
        self._grad_buffers = {}  # node id -> the buffer its summed gradient is written to
        self._bank = None
        if input_shape is not None:
            self.build(input_shape)
        elif all(node.shape is not None for node in self.input_nodes):
            self.build([node.shape for node in self.input_nodes] if self.multi_input else self.input_nodes[0].shape)

    # ------------------------------------------------------------------------------ set-up
    def build(self, input_shape):
        shapes = [tuple(int(d) for d in s) for s in input_shape] if self.multi_input else \
            [tuple(int(d) for d in input_shape)]
        if len(shapes) != len(self.input_nodes):
            raise ShapeError(f"the model has {len(self.input_nodes)} inputs but {len(shapes)} shapes were given")
        for node, shape in zip(self.input_nodes, shapes):
            if node.shape is not None and tuple(node.shape) != shape:
                raise ShapeError(f"input '{node.name}' was declared with shape {node.shape}, got data of {shape}")
        rng = np.random.default_rng(self.seed)
        self.node_shapes = dict(zip(map(id, self.input_nodes), shapes))
        built = {}  # id(layer) -> the node that built it
        for node in self.order:
            if node.layer is None:
                continue
            shapes_in = [self.node_shapes[id(i)] for i in node.inputs]
            arg = shapes_in if getattr(node.layer, "many_inputs", False) else shapes_in[0]
            first = built.get(id(node.layer))
            if hasattr(node.layer, "producer"):  # final_state reads the layer whose output it is called on
                source = node.inputs[0].layer
                if source is not None and sum(n.layer is source for n in self.order) > 1:
                    raise ConfigError(f"node '{node.name}': final_state of layer {source.name!r}, which several "
                                      f"nodes use: its states would be those of whichever ran last")
                node.layer.producer = source
            if first is None:
                banks = {id(p.bank) for p in node.layer.parameters() if p.bank is not None}
                if banks - {id(self._bank)}:  # its parameters live in another model's flat buffers
                    raise ConfigError(f"node '{node.name}': layer {node.layer.name!r} belongs to another built "
                                      f"model; models do not share layers (make a new layer, or reuse it within "
                                      f"one model)")
                try:
                    shape = node.layer.build(arg, self.ops, self.dtype, rng)
                except ShapeError as error:
                    raise ShapeError(f"node '{node.name}' ({node.layer.name}): {error}") from None
                except MemoryError:
                    raise ConfigError(f"node '{node.name}' ({node.layer.name}): its parameters for input {arg} do "
                                      f"not fit in memory") from None
                built[id(node.layer)] = node
            else:
                if getattr(node.layer, "nested_layers", None):
                    raise ConfigError(f"node '{node.name}': a composite layer ({node.layer.name}) cannot be shared "
                                      f"between nodes")
                expected = [self.node_shapes[id(i)] for i in first.inputs]
                if shapes_in != expected:
                    raise ShapeError(f"node '{node.name}' reuses the layer of node '{first.name}' on inputs "
                                     f"{shapes_in}, but it was built for {expected}")
                shape = node.layer.output_shape
            self.node_shapes[id(node)] = tuple(shape)
        self.owner = {id(node.layer): built[id(node.layer)] for node in self.order if node.layer is not None}
        self.input_shape = shapes if self.multi_input else shapes[0]
        out = [self.node_shapes[id(node)] for node in self.output_nodes]
        self.output_shapes = out
        self.output_shape = out if self.multi_output else out[0]
        for path, param in self.named_parameters().items():
            param.path = path
        params = self.parameters()
        self._bank = ParameterBank(self.ops, params, self.dtype) if params else None
        self._make_runners()
        self._mark_gradients()
        if self.fuse:
            self._fuse_relus()
            for runner in self._running_layers():  # inside composite layers (fuse_runs)
                fuse_inside(runner)
        return self

    def _make_runners(self):
        """The object that runs each node: the layer itself for its first use, a copy sharing its
        parameter values (with gradient arrays of its own) for every further use."""
        self.runner, self._shared_copies = {}, []
        for node in self.order:
            if node.layer is None:
                continue
            if self.owner[id(node.layer)] is node:
                self.runner[id(node)] = node.layer
                continue
            clone = copy.copy(node.layer)
            clone._buffers = {}
            clone.params = {name: Parameter(name, p.value, self.ops.zeros(p.value.shape, self.dtype))
                            for name, p in node.layer.params.items()}
            self.runner[id(node)] = clone
            self._shared_copies.append((node.layer, clone))

    def _mark_gradients(self):
        """Which nodes backward must visit: those with parameters or fed (transitively) by one or by
        an input whose gradient is wanted; each layer computes its input gradient only if needed."""
        wants = {id(node): self.input_grad for node in self.input_nodes}
        for node in self.order:
            if node.layer is None:
                continue
            upstream = any(wants[id(i)] for i in node.inputs)
            self.runner[id(node)].needs_input_grad = upstream
            wants[id(node)] = upstream or bool(node.layer.parameters())
        self._wants = wants
        self._backward_order = [node for node in reversed(self.order) if node.layer is not None and wants[id(node)]]

    def _fuse_relus(self):
        """A ReLU node whose single input is a Linear/Conv2d node used by nothing else is applied by that
        layer, and a 2x2 max pooling after a Conv2d or BatchNorm2d by that layer (as Sequential does for
        adjacent layers)."""
        consumers = {}
        for node in self.order:
            for i in node.inputs:
                consumers[id(i)] = consumers.get(id(i), 0) + 1
        uses = {}  # layer id -> how many nodes use it
        for node in self.order:
            if node.layer is not None:
                uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
        for node in self.order:
            if not isinstance(node.layer, ReLU) or uses[id(node.layer)] != 1:
                continue
            before = node.inputs[0]
            if (before.layer is not None and before.layer.can_fuse_relu and uses[id(before.layer)] == 1
                    and consumers.get(id(before)) == 1 and before not in self.output_nodes):
                before.layer.fused_relu = node.layer.absorbed = True
        # then a MaxPool2d node fed only by a Conv2d or BatchNorm2d node (through the ReLU it applies) is
        # applied by that layer too (can_fuse_pool): nothing else may read the full-size output
        for node in self.order:
            if not isinstance(node.layer, MaxPool2d) or uses[id(node.layer)] != 1:
                continue
            before = node.inputs[0]
            if isinstance(before.layer, ReLU) and before.layer.absorbed:
                if consumers.get(id(before)) != 1 or before in self.output_nodes:
                    continue
                before = before.inputs[0]
            if (before.layer is not None and hasattr(before.layer, "can_fuse_pool") and uses[id(before.layer)] == 1
                    and consumers.get(id(before)) == 1 and before not in self.output_nodes
                    and before.layer.can_fuse_pool(node.layer)):
                before.layer.fused_pool = node.layer
                node.layer.absorbed = True

    def _dense_chain(self, training=False):
        return None  # a graph predicts and trains node by node

    def _running_layers(self):
        return list(self.runner.values())  # every use of a layer, shared copies included

    def compile(self, loss, optimizer, loss_weights=None):
        """One loss (a single output) or a list with one per output (or a dict by output node name);
        ``loss_weights`` scale each output's loss in the sum that is minimised."""
        from numdl.losses import OutputLosses
        from numdl.plugins import registry

        def make(item):
            return registry().get("loss", item)() if isinstance(item, str) else item

        if self.multi_output:
            if isinstance(loss, dict):
                unknown = sorted(set(loss) - {node.name for node in self.output_nodes})
                if unknown:
                    raise ConfigError(f"loss names unknown outputs: {', '.join(unknown)} (outputs: "
                                      f"{', '.join(node.name for node in self.output_nodes)})")
                loss = [loss.get(node.name) for node in self.output_nodes]
            if not isinstance(loss, (list, tuple)) or len(loss) != len(self.output_nodes) or None in loss:
                raise ConfigError(f"the model has {len(self.output_nodes)} outputs: give one loss for each")
            loss = OutputLosses([make(item) for item in loss], loss_weights,
                                [node.name for node in self.output_nodes])
        elif loss_weights is not None:
            raise ConfigError("loss_weights is for models with several outputs")
        return super().compile(loss, optimizer)

    @property
    def _input_dtype(self):
        node = self.input_nodes[0]
        if node.dtype is not None:
            return node.dtype
        if not self.multi_input:
            first = next((n for n in self.order if n.layer is not None and node in n.inputs), None)
            if first is not None and getattr(first.layer, "input_dtype", None):
                return np.dtype(first.layer.input_dtype)
        return self.dtype

    def _input_dtypes(self):
        if not self.multi_input:
            return [self._input_dtype]
        return [node.dtype or self.dtype for node in self.input_nodes]

    def named_parameters(self):
        """{"<node name>.<param>": Parameter}, named by the first node using each layer."""
        return {f"{self.owner[id(layer)].name}.{name}": p for layer in self.layers
                for name, p in layer.named_parameters().items()}

    def named_state(self):
        return {f"{self.owner[id(layer)].name}.{name}": a for layer in self.layers
                for name, a in layer.named_state().items()}

    # ---------------------------------------------------------------------------- running
    def forward(self, x, training=False, lengths=None):
        xs = self._inputs_list(x)
        xs = [self.ops.asarray(self.prepare(a, None, "input data", index=i)[0])
              if isinstance(a, np.ndarray) and a.dtype != dtype else a
              for i, (a, dtype) in enumerate(zip(xs, self._input_dtypes()))]
        self._check_batches(xs)
        for runner in self.runner.values():  # every use of a layer, shared copies included
            if getattr(runner, "uses_lengths", False):
                runner.lengths = lengths
        values = self._run_nodes(xs, training)
        outs = [values[id(node)] for node in self.output_nodes]
        return outs if self.multi_output else outs[0]

    def _run_nodes(self, xs, training, check=None):
        values = dict(zip(map(id, self.input_nodes), xs))
        for node in self.order:
            if node.layer is None:
                continue
            args = [values[id(i)] for i in node.inputs]
            runner = self.runner[id(node)]
            values[id(node)] = runner.forward(args if getattr(runner, "many_inputs", False) else args[0], training)
            if check is not None:
                check(node, values[id(node)])
        return values

    def backward(self, dout):
        """Backward from the gradient of each output (a list with several outputs)."""
        douts = _as_list(dout) if self.multi_output else [dout]
        grads = {}
        for node, d in zip(self.output_nodes, douts):
            self._accumulate(grads, node, d)
        for node in self._backward_order:
            d = grads.pop(id(node), None)
            runner = self.runner[id(node)]
            if d is None:  # no gradient reaches it (a path the loss ignores): zero parameter gradients
                for p in runner.params.values():
                    self.ops.zero_(p.grad)
                continue
            dx = runner.backward(d)
            if not runner.needs_input_grad:
                continue
            dxs = dx if getattr(runner, "many_inputs", False) else [dx]
            for source, g in zip(node.inputs, dxs):
                if g is not None and self._wants[id(source)]:
                    self._accumulate(grads, source, g)
        for layer, clone in self._shared_copies:
            for name, p in layer.params.items():
                self.ops.add(p.grad, p.grad, clone.params[name].grad)
        if not self.input_grad:
            return None
        batch = douts[0].shape[0]
        dxs = [grads.get(id(node)) for node in self.input_nodes]  # an input no path reads: zeros
        dxs = [self.ops.zeros((batch,) + tuple(shape), self.dtype) if d is None else d
               for d, shape in zip(dxs, self._input_shapes())]
        return dxs if self.multi_input else dxs[0]

    def _accumulate(self, grads, node, d):
        have = grads.get(id(node))
        if have is None:
            grads[id(node)] = d  # borrowed: read, never written
            return
        total = self._grad_buffer(node, d.shape)
        self.ops.add(total, have, d)
        grads[id(node)] = total

    def _grad_buffer(self, node, shape):
        array = self._grad_buffers.get(id(node))
        if array is None or tuple(array.shape) != tuple(shape):
            array = self._grad_buffers[id(node)] = self.ops.empty(tuple(shape), self.dtype)
        return array

    def _input_shapes(self):
        return self.input_shape if self.multi_input else [self.input_shape]

    def _first_non_finite(self, x, lengths):
        xs = self._inputs_list(x)
        rng_states = [layer.get_rng_state() for layer in self.layers]
        found = []

        def check(node, value):
            if not found and not np.isfinite(self.ops.to_numpy(value)).all():
                found.append(node)

        try:
            self._run_nodes(xs, True, check)
        finally:
            for layer, state in zip(self.layers, rng_states):
                layer.set_rng_state(state)
        if found:
            return f"the output of node '{found[0].name}' ({found[0].layer.name}) is the first non-finite value"
        return "every node's output is finite; the loss itself overflowed"

    def _example_batch(self, batch_size):
        from numdl.model import _example_target

        xs = [self.ops.zeros((batch_size,) + s, dtype) for s, dtype in zip(self._input_shapes(), self._input_dtypes())]
        losses = self.loss.losses if self.multi_output else [self.loss]
        targets = [_example_target(loss, batch_size, shape, self.dtype) for loss, shape in zip(losses, self.output_shapes)]
        return (xs if self.multi_input else xs[0]), (targets if self.multi_output else targets[0])

    # -------------------------------------------------------------------------- validation
    def _inputs_list(self, x):
        if not self.multi_input:
            return [x]
        if not isinstance(x, (list, tuple)) or len(x) != len(self.input_nodes):
            raise ShapeError(f"the model has {len(self.input_nodes)} inputs "
                             f"({', '.join(node.name for node in self.input_nodes)}): pass a list of that many arrays")
        return list(x)

    def _check_batches(self, xs):
        if not self.built:
            raise ConfigError("the model is not built: call build(input_shape) or fit first")
        n = xs[0].shape[0]
        for node, a, shape, dtype in zip(self.input_nodes, xs, self._input_shapes(), self._input_dtypes()):
            if tuple(a.shape[1:]) != tuple(shape):
                raise ShapeError(f"input '{node.name}' expects (batch, {', '.join(map(str, shape))}) but got "
                                 f"{tuple(a.shape)}")
            if a.dtype != dtype:
                raise DataError(f"input '{node.name}': dtype {a.dtype} does not match the model's {dtype}; convert it "
                                f"first (x.astype('{dtype}'))")
            if a.shape[0] != n:
                raise ShapeError(f"the inputs have different batch sizes ({n} and {a.shape[0]})")
        if n == 0:
            raise DataError("empty batch")

    def prepare(self, x, y, what, index=None, check_finite=True):
        """As Sequential.prepare, for each input (and each output's targets) of a graph."""
        if index is not None or (not self.multi_input and not self.multi_output):
            return super().prepare(x, y, what, index=index, check_finite=check_finite)
        xs = self._inputs_list(x)
        if not self.built:
            self.build([np.shape(a)[1:] for a in xs])
        prepared = [super(Model, self).prepare(a, None, f"{what} ({node.name})", index=i,
                                               check_finite=check_finite)[0]
                    for i, (a, node) in enumerate(zip(xs, self.input_nodes))]
        n = prepared[0].shape[0]
        if any(a.shape[0] != n for a in prepared):
            raise ShapeError(f"{what}: the inputs have different numbers of samples "
                             f"({', '.join(str(a.shape[0]) for a in prepared)})")
        if y is not None:
            ys = _as_list(y) if self.multi_output else [y]
            if len(ys) != len(self.output_nodes):
                raise ShapeError(f"{what}: the model has {len(self.output_nodes)} outputs but {len(ys)} targets "
                                 f"were given")
            losses = self.loss.losses if self.multi_output else [self.loss]
            ys = [self._prepare_targets(t, n, f"{what} ({node.name})", loss, shape)
                  for t, node, loss, shape in zip(ys, self.output_nodes, losses, self.output_shapes)]
            y = ys if self.multi_output else ys[0]
        return (prepared if self.multi_input else prepared[0]), y

    def summary(self):
        lines = [f"Model(inputs={[n.name for n in self.input_nodes]}, outputs={[n.name for n in self.output_nodes]}, "
                 f"dtype={self.dtype}, device={self.device})"]
        for node in self.order:
            if node.layer is None:
                lines.append(f"  {node.name:<18} {'input':<18}    {'':<28} -> {self.node_shapes[id(node)]}")
                continue
            shared = "" if self.owner[id(node.layer)] is node else f" (weights of {self.owner[id(node.layer)].name})"
            count = sum(int(np.prod(p.value.shape)) for p in node.layer.parameters()) if not shared else 0
            sources = ", ".join(i.name for i in node.inputs)
            lines.append(f"  {node.name:<18} {node.layer.name:<18} <- {sources:<28} -> {self.node_shapes[id(node)]}  "
                         f"params={count}{shared}")
        lines.append(f"  total parameters: {self.parameter_count()}")
        return "\n".join(lines)

    def config_table(self):
        """{"inputs": [...], "nodes": [...], "outputs": [...]}: the config that rebuilds this graph
        (``model.nodes`` tables), or None when it has several inputs (a config feeds one)."""
        if self.multi_input:
            return None
        nodes = []
        for node in self.order:
            if node.layer is None:
                continue
            if self.owner[id(node.layer)] is node:
                table = {"name": node.name, **node.layer.config_table()}
            else:
                table = {"name": node.name, "type": "shared", "layer": self.owner[id(node.layer)].name}
            table["inputs"] = [i.name for i in node.inputs]
            nodes.append(table)
        return {"input": self.input_nodes[0].name, "nodes": nodes, "outputs": [n.name for n in self.output_nodes]}


# ------------------------------------------------------------------------------- graph helpers
def _topological_order(inputs, outputs, check_inputs=True):
    """Every node the outputs depend on, each after its inputs (depth-first, in the order the
    outputs and each node's inputs are given); a node that is not an input and has no layer, or an
    input the outputs do not use, is an error."""
    order, state = [], {}
    for start in outputs:
        stack = [(start, iter(start.inputs))]
        if state.get(id(start)) == "done":
            continue
        state[id(start)] = "open"
        while stack:
            node, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                state[id(node)] = "done"
                order.append(node)
                continue
            if state.get(id(child)) == "open":
                raise ConfigError(f"the graph has a cycle through node '{child.name}'")
            if state.get(id(child)) is None:
                state[id(child)] = "open"
                stack.append((child, iter(child.inputs)))
    if not check_inputs:
        return order
    for node in order:
        if node.layer is None and all(node is not i for i in inputs):
            raise ConfigError(f"node '{node.name}' is an input the model was not given (Model(inputs=...))")
    for node in inputs:
        if state.get(id(node)) != "done":
            raise ConfigError(f"input '{node.name or 'input'}' does not reach any output")
    return order


def _name_nodes(order):
    """Give unnamed nodes "<layer name>_<k>" ("input" for inputs); given names must be unique."""
    taken = {}
    for node in order:
        if node.name is not None:
            if node.name in taken and taken[node.name] is not node:
                raise ConfigError(f"two nodes are named '{node.name}'")
            taken[node.name] = node
    counts = {}
    for node in order:
        if node.name is None:
            base = "input" if node.layer is None else node.layer.name
            k = counts.get(base, 0)
            while (f"{base}_{k}" if k else base) in taken:
                k += 1
            counts[base] = k + 1
            node.name = f"{base}_{k}" if k else base
            taken[node.name] = node


def from_config(model_config, input_shape, dtype, device, seed):
    """A built graph Model from a validated config's ``model`` table with ``nodes``."""
    from numdl.config import build_item

    input_name = model_config.get("input", "input")
    source = Node(input_name, None, [], shape=tuple(input_shape))
    nodes, layers_by_node = {input_name: source}, {}
    tables = model_config["nodes"]
    for index, table in enumerate(tables):
        path = f"model.nodes.{index}"
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}.name: every node needs a name (a string)")
        if name in nodes:
            raise ConfigError(f"{path}.name: '{name}' names two nodes")
        inputs = table.get("inputs", [tables[index - 1]["name"] if index else input_name])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(f"{path}.inputs: expected a list of node names")
        item = {k: v for k, v in table.items() if k not in ("name", "inputs")}
        if item.get("type") == "shared":
            owner = item.get("layer")
            if owner not in layers_by_node:
                raise ConfigError(f"{path}.layer: a shared node names an earlier node with a layer, got {owner!r}")
            layer = layers_by_node[owner]
        else:
            layer = build_item(path, item, "layer")
        layers_by_node[name] = layer
        nodes[name] = Node(name, layer, [], shape=None)
        nodes[name].inputs = inputs  # resolved below: a later node may be named (then: a cycle)
    for index, table in enumerate(tables):
        node = nodes[table["name"]]
        resolved = []
        for i in node.inputs:
            if i not in nodes:
                known = ", ".join(nodes)
                raise ConfigError(f"model.nodes.{index}.inputs: node '{table['name']}' reads '{i}', which no node "
                                  f"is named (nodes: {known})")
            resolved.append(nodes[i])
        node.inputs = resolved
        many = getattr(node.layer, "many_inputs", False)
        if not many and len(resolved) != 1:
            raise ConfigError(f"model.nodes.{index}.inputs: layer {node.layer.name!r} of node '{node.name}' takes one "
                              f"input, got {len(resolved)}")
    output_names = model_config.get("outputs") or [tables[-1]["name"]]
    for name in output_names:
        if name not in nodes or name == input_name:
            raise ConfigError(f"model.outputs: '{name}' is not a node of the graph")
    if len(output_names) > 1:
        raise ConfigError("model.outputs: a config trains one output (its dataset gives one target); build models "
                          "with several outputs in Python")
    _topological_order([], [node for node in nodes.values() if node is not source], check_inputs=False)  # cycles
    used = set()
    stack = [nodes[n] for n in output_names]
    while stack:
        node = stack.pop()
        if id(node) in used:
            continue
        used.add(id(node))
        stack.extend(node.inputs)
    for name, node in nodes.items():
        if id(node) not in used:
            if node is source:
                raise ConfigError(f"model.nodes: no node on the way to the output ({', '.join(output_names)}) reads "
                                  f"the data ('{input_name}')")
            raise ConfigError(f"model.nodes: node '{name}' does not lead to the output "
                              f"({', '.join(output_names)}): dangling")
    try:
        return Model(Tensor(source), [Tensor(nodes[n]) for n in output_names], dtype=dtype, device=device, seed=seed)
    except ShapeError as error:
        raise ConfigError(str(error)) from None


__all__ = ["Input", "Model", "Node", "Tensor", "from_config"]
