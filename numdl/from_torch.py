"""Weights in from PyTorch: a ``state_dict`` of a PyTorch model of the same architecture mapped onto
a numdl model (``numdl.from_torch_state_dict``; ``numdl import-torch`` reads one saved with
safetensors: no pickle is ever loaded).

numdl's layers hold PyTorch's layouts (Linear (out, in), Conv (out, in / groups, kH, kW), LSTM/GRU
gates in PyTorch's order, attention's packed in_proj), so a port is a renaming. The PyTorch model
is expected to be a ``nn.Sequential`` (or any module) whose top-level children with parameters or
buffers come in the order of numdl's layers that have them; within each, the layer's
``torch_names()`` says which PyTorch name each numdl array has (the same name for most layers;
``transformer_encoder_layer`` maps onto ``nn.TransformerEncoderLayer``'s ``self_attn``,
``linear1``, ``norm1``, ...); a name found one module deeper (``lstm.weight_ih_l0`` for
``weight_ih_l0``: an LSTM inside a module that picks its last step) is taken when it is the only
one. Every shape is checked and every unmatched name reported, in one error, before anything is
copied.
"""

import numpy as np

from numdl.errors import DataError

IGNORED = ("num_batches_tracked",)  # PyTorch's batch-norm step counter: numdl keeps one only for momentum=None


def _top_level_groups(state_dict):
    """[(prefix, {rest of the name: array})] in the state_dict's order, by the first name component."""
    groups = {}
    for name, value in state_dict.items():
        prefix, _, rest = name.partition(".")
        groups.setdefault(prefix, {})[rest or prefix] = value
    return list(groups.items())


def _layers_with_arrays(model):
    """[(key, numdl name prefix, layer)] of the model's layers holding parameters or state, in order;
    the key is what a PyTorch module of the same layout would be called: the node's name in a
    graph, the layer's index in a Sequential (an nn.Sequential's child of the same position)."""
    if hasattr(model, "order"):  # a graph: its nodes in topological order, each layer once
        seen, found = set(), []
        for node in model.order:
            layer = node.layer
            if layer is not None and id(layer) not in seen and (layer.named_parameters() or layer.named_state()):
                seen.add(id(layer))
                found.append((node.name, node.name, layer))
        return found
    return [(str(i), f"{i}.{layer.name}", layer) for i, layer in enumerate(model.layers)
            if layer.named_parameters() or layer.named_state()]


def _pair_up(groups, layers):
    """Which PyTorch module goes with which numdl layer: by name when every numdl key is a PyTorch
    module name (the same nn.Sequential indices, or graph node names), else in order (numeric
    names sorted as numbers: a safetensors file does not keep the state_dict's order)."""
    by_name = dict(groups)
    if len(groups) == len(layers) and all(key in by_name for key, _, _ in layers):
        return [((key, by_name[key]), (name, layer)) for key, name, layer in layers]
    if all(prefix.isdigit() for prefix, _ in groups):
        groups = sorted(groups, key=lambda group: int(group[0]))
    return [(group, (name, layer)) for group, (_, name, layer) in zip(groups, layers)]


def _fits(ours, theirs):
    """Whether a PyTorch array of shape ``theirs`` fills a numdl array of shape ``ours``: equal, or
    equal once leading 1-sized axes are dropped (a (1, T, E) positional table into (T, E))."""
    def squeezed(shape):
        shape = tuple(shape)
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        return shape
    return tuple(ours) == tuple(theirs) or squeezed(ours) == squeezed(theirs)


def from_torch_state_dict(model, state_dict, strict=True):
    """Copy a PyTorch ``state_dict`` ({name: array or tensor}) into the built numdl ``model``.

    Returns {"copied": [numdl names], "unused": [PyTorch names left over]}. Raises DataError naming
    every problem (a missing PyTorch name, a shape mismatch, a layer count that differs, and with
    ``strict`` any PyTorch array left unused) before copying anything."""
    if not getattr(model, "built", False):
        raise DataError("from_torch_state_dict: build the model first (model.build(input_shape), or numdl.load_model)")
    arrays = {name: np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
              for name, value in state_dict.items()}
    groups = _top_level_groups(arrays)
    layers = _layers_with_arrays(model)
    problems, plan, used = [], [], set()
    if len(groups) != len(layers):
        problems.append(f"the PyTorch state_dict has {len(groups)} top-level modules with arrays "
                        f"({', '.join(prefix for prefix, _ in groups)}) but the numdl model has {len(layers)} layers "
                        f"with parameters ({', '.join(name for _, name, _ in layers)})")
    for (prefix, theirs), (ours_name, layer) in _pair_up(groups, layers):
        names = layer.torch_names()
        ours_arrays = {**{k: p.value for k, p in layer.named_parameters().items()}, **layer.named_state()}
        for ours_key, torch_key in names.items():
            if torch_key not in theirs:  # a module wrapped one level deeper (e.g. an LSTM in a step picker)
                deeper = [key for key in theirs if key.endswith(f".{torch_key}")]
                if len(deeper) == 1:
                    torch_key = deeper[0]
            full = f"{prefix}.{torch_key}" if torch_key != prefix else prefix
            if torch_key not in theirs:
                problems.append(f"{ours_name}.{ours_key}: no {full} in the state_dict")
                continue
            target, source = ours_arrays[ours_key], theirs[torch_key]
            if not _fits(target.shape, source.shape):
                problems.append(f"{ours_name}.{ours_key} has shape {tuple(target.shape)} but {full} has "
                                f"{tuple(source.shape)}")
                continue
            plan.append((layer, ours_key, f"{ours_name}.{ours_key}", source))
            used.add(full)
        for torch_key in theirs:
            full = f"{prefix}.{torch_key}" if torch_key != prefix else prefix
            if full not in used and torch_key.rpartition(".")[2] not in IGNORED:
                (problems if strict else []).append(f"{full} matches no numdl array of {ours_name}")
    unused = [name for name in arrays if name not in used and name.rpartition(".")[2] not in IGNORED]
    if problems:
        raise DataError("PyTorch weights do not fit the numdl model: " + "; ".join(problems))
    for layer, key, _, source in plan:
        parameters = layer.named_parameters()
        target = parameters[key].value if key in parameters else layer.named_state()[key]
        _copy_into(target, np.ascontiguousarray(source.reshape(tuple(target.shape)), dtype=np.dtype(model.dtype)))
    return {"copied": [name for _, _, name, _ in plan], "unused": unused}


def _copy_into(target, host):
    if isinstance(target, np.ndarray):
        target[...] = host
    else:  # a device array
        target.copy_to_device(host)
