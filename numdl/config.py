"""Configs: TOML merged over the embedded default, ``--set key=value`` overrides, and validation.

Validation happens before anything is built, and every error names the offending key in one line
(``optimizer.lr: expected a number, got 'abc'``). Registered items are checked against their
constructors' annotated parameters, so a plugin's layer gets the same checks as a built-in one.
Nothing in a config is ever imported or executed: items are looked up by registered name only.
"""

import copy
import inspect
import math
import tomllib
import types
import typing
from importlib import resources

from numdl.errors import ConfigError, ShapeError, UnknownNameError

SECTIONS = {
    "data": {"name": str, "path": str, "normalize": str, "validation_split": float, "crop_padding": int,
             "horizontal_flip": bool,
             # tables (data.name = "table")
             "target": str | list[str], "features": list[str], "categorical": list[str], "id_column": str,
             "task": str, "train_path": str, "validation_path": str, "test_path": str, "test_split": float,
             "scale": str, "impute": str, "fill_value": float, "missing_indicator": bool, "scale_target": bool,
             "sampler": str, "out_of_core": bool,
             # scenes (data.name = "fashion_scenes")
             "scenes_train": int, "scenes_test": int},
    "model": {"dtype": str, "device": str, "layers": list, "nodes": list, "outputs": list, "input": str},
    "train": {"epochs": int, "batch_size": int, "shuffle": bool, "eval_batch_size": int, "checkpoint_every": int,
              "keep_checkpoints": int, "monitor": str, "early_stopping_patience": int, "clip_grad_norm": float,
              "divergence_factor": float, "threshold": float, "lr_scaling": str, "metrics": list, "callbacks": list,
              "tensorboard": bool, "tensorboard_every": int},
}
ITEM_SECTIONS = {"loss": "loss", "optimizer": "optimizer", "schedule": "schedule"}  # section -> registry kind
TOP_LEVEL = {"seed": int}

#: What every key means: the source of docs/config.md (``python -m numdl.config`` writes it; a test
#: keeps it complete and current).
DESCRIPTIONS = {
    "seed": "seed of weight initialisation, shuffling, dropout and augmentation (>= 0)",
    "data.name": "registered dataset (`numdl plugins` lists them)",
    "data.path": "folder of the dataset's files; empty: $NUMDL_DATA, Debian's package, then the download cache",
    "data.normalize": "standardize (one mean and std over the training set), scale (divide by its max) or none",
    "data.validation_split": "fraction of the training set held out and evaluated after every epoch, in [0, 1)",
    "data.crop_padding": "> 0: random crops of training images padded by this many pixels",
    "data.horizontal_flip": "random left-right flips of training images",
    "data.target": "tables: the target column, or a list of columns (multi-label or multi-output regression); "
                   "fashion_scenes: mask (per-pixel classes, segmentation) or boxes (detection); fashion_mnist: "
                   "labels (the default) or image (the images as (N, 1, 28, 28) targets in [0, 1]: autoencoders)",
    "data.scenes_train": "fashion_scenes: training scenes made from the training images (default 12000)",
    "data.scenes_test": "fashion_scenes: test scenes made from the test images (default 2000)",
    "data.features": "tables: the feature columns (default: every column but the target and id column)",
    "data.categorical": "tables: the categorical feature columns (default: the columns holding text), one-hot "
                        "encoded with an extra slot for categories unseen in training and missing values",
    "data.id_column": "tables: a column that identifies rows: never a feature, copied into predict's output",
    "data.task": "tables: auto (from the loss: cross_entropy classification, bce_with_logits multilabel, else "
                 "regression), classification, multilabel or regression",
    "data.train_path": "tables: the training file, when validation and test rows come in files of their own",
    "data.validation_path": "tables: a validation file (else data.validation_split of the training rows)",
    "data.test_path": "tables: a test file (else data.test_split of the rows)",
    "data.test_split": "tables: fraction of the rows held out as the test set (stratified for classes), in [0, 1)",
    "data.scale": "tables: per-column scaling fitted on training rows: standardize, minmax or none",
    "data.impute": "tables: missing numbers become the column's mean, median, most_frequent or fill_value "
                   "(constant)",
    "data.fill_value": "tables: the value data.impute = \"constant\" fills in",
    "data.missing_indicator": "tables: add a 0/1 column for each numeric column with missing training values",
    "data.scale_target": "tables, regression: train on the standardised target; predictions are mapped back",
    "data.out_of_core": "tables larger than memory: stream the files in record batches into memory-mapped "
                        "splits (on a temporary disk folder) that training reads a batch at a time",
    "data.sampler": "shuffle (each sample once an epoch) or balanced (draw classes equally often, with "
                    "replacement: oversamples rare classes)",
    "model.dtype": "float32 or float64",
    "model.device": "cpu or cuda",
    "model.layers": "the layers in order, each a table {type = ..., parameters...}; `numdl plugins` lists every "
                    "layer's parameters",
    "model.nodes": "a graph model instead of model.layers: layer tables with a `name` and the names of their "
                   "`inputs` (default: the node before), e.g. {name = \"up1\", type = \"concat\", inputs = [\"enc1\", "
                   "\"dec1\"]}; {name = ..., type = \"shared\", layer = \"<node>\", inputs = [...]} reuses a node's "
                   "layer and weights",
    "model.outputs": "graph models: the node whose output is trained (default: the last node)",
    "model.input": "graph models: the name nodes use for the data (default: \"input\")",
    "loss": "{type = ..., parameters...}: cross_entropy, nll, mse, mae, huber, bce_with_logits, kl_div, pixel_cross_entropy, centernet or a plugin's",
    "optimizer": "{type = ..., lr = ..., ...}: sgd, adam, adamw (amsgrad, maximize), rmsprop, adagrad, adamax, nadam, "
                 "radam or a plugin's; param_groups = [{params = 'name pattern', lr = ..., weight_decay = ...}] "
                 "and decay_biases_and_norms = false set them per parameter",
    "schedule": "learning-rate schedule {type = ..., ...}: constant, step, multistep, exponential, cosine, "
                "one_cycle, reduce_on_plateau",
    "train.epochs": "epochs to train (>= 1); with --resume, may be raised to extend a finished run",
    "train.batch_size": "samples per training step (>= 1)",
    "train.shuffle": "draw a new order of the training set every epoch",
    "train.eval_batch_size": "samples per evaluation batch (>= 1)",
    "train.checkpoint_every": "> 0: also write checkpoints/latest.safetensors every this many steps",
    "train.keep_checkpoints": "epoch-NNNN.safetensors files kept (latest and best are always kept)",
    "train.monitor": "metric for best.safetensors and early stopping (e.g. validation_loss, test_macro_f1); empty: "
                     "validation or test accuracy. Its direction comes from the metric",
    "train.early_stopping_patience": "> 0: stop after this many epochs without improvement of the monitor",
    "train.clip_grad_norm": "> 0: scale gradients down so their global L2 norm is at most this",
    "train.divergence_factor": "> 0: stop when a step's loss exceeds this many times the run's first loss; 0: off",
    "train.threshold": "multi-label: the probability from which a label counts as predicted",
    "train.lr_scaling": "data-parallel (mpirun -n N): none, linear (lr x N, the effective batch grows N times) or "
                        "sqrt (lr x sqrt(N)); train.batch_size stays per rank",
    "train.metrics": "registered metrics reported per evaluation set every epoch, e.g. ['macro_f1']",
    "train.callbacks": "registered callbacks, each a table {type = ..., parameters...}",
    "train.tensorboard": "write TensorBoard event files into RUN/tensorboard: every metric and the learning rate per "
                         "epoch, weight and gradient histograms per epoch (needs numdl[tensorboard])",
    "train.tensorboard_every": "> 0: with train.tensorboard, also log the training loss and learning rate every this "
                               "many steps",
}
POSITIVE = {"train.epochs", "train.batch_size", "train.eval_batch_size"}
NON_NEGATIVE = {"seed", "train.checkpoint_every", "train.keep_checkpoints", "train.early_stopping_patience",
                "train.clip_grad_norm", "train.divergence_factor", "train.tensorboard_every"}


def default_config():
    text = resources.files("numdl").joinpath("default.toml").read_text()
    return tomllib.loads(text)


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of settings; anything larger is not one


def short(value, limit=60):
    """``repr(value)`` cut to ``limit`` characters: a 10 MB value must not make a 10 MB error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def load_toml(path):
    from numdl.fileio import regular_file

    path, size = regular_file(path, "config file", ConfigError)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (arrays or tables nested too deeply)") from None


def merge(base, override):
    """``override`` over ``base``: tables merge key by key; ``model.layers`` and a loss or optimizer
    table that names a new ``type`` replace what they override as a whole."""
    result = copy.deepcopy(base)
    if isinstance(override.get("nodes"), list) and "layers" not in override:
        result.pop("layers", None)  # a graph replaces the default's chain of layers
    if isinstance(override.get("layers"), list) and "nodes" not in override:
        result.pop("nodes", None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            if key in ITEM_SECTIONS and "type" in value and value["type"] != result[key].get("type"):
                result[key] = copy.deepcopy(value)
            else:
                result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse_value(raw):
    """A --set value as TOML (numbers, booleans, quoted strings, arrays); else the bare string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw


def apply_override(config, assignment):
    """Apply one ``dotted.key=value``; list items are addressed by index (``model.layers.0.type``)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {short(assignment)}: expected key=value")
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{where}: is a value, cannot set {key}")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, key)] = parse_value(raw)
    else:
        node[last] = parse_value(raw)
        if node is config.get("model") and last in ("nodes", "layers"):  # a graph replaces a chain, and back
            node.pop("layers" if last == "nodes" else "nodes", None)


def _index(part, items, where):
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"{where}: no such item (the list has {len(items)} entries)")
    return int(part)


def resolve(path=None, overrides=()):
    """The validated config: default, merged with the file, then the overrides in order."""
    config = default_config()
    if path is not None:
        config = merge(config, load_toml(path))
    for assignment in overrides:
        apply_override(config, assignment)
    validate(config)
    return config


# ------------------------------------------------------------------------------ validation
def _type_name(annotation):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_type(path, value, annotation):
    """Raise ConfigError unless ``value`` fits ``annotation`` (int, float, bool, str, list[...], X | None)."""
    if annotation is None or annotation is inspect.Parameter.empty or annotation is typing.Any:
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return check_type(path, value, option)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {short(value)}")
        for i, item in enumerate(value):
            check_type(f"{path}.{i}", item, args[0] if args else None)
        return
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {short(value)}")
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(annotation)}, got {short(value)}")


def item_parameters(cls):
    """{name: (annotation, default)} of a registered class's constructor."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to no type checks
        hints = {}
    params = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[name] = (hints.get(name), p.default)
    return params


def annotation_text(annotation):
    """A parameter's type as a config author reads it: int, float, list[float], str or none, ..."""
    if annotation is None or annotation is inspect.Parameter.empty:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else annotation_text(a) for a in args)
    if origin in (list, tuple):
        return f"list[{annotation_text(args[0])}]" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def parameter_text(name, annotation, default):
    """``out_features: int (required)`` or ``bias: bool = true``, TOML-spelled."""
    if default is inspect.Parameter.empty:
        return f"{name}: {annotation_text(annotation)} (required)"
    if default is None:
        shown = "none"
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif isinstance(default, tuple):
        shown = repr(list(default))
    else:
        shown = repr(default)
    return f"{name}: {annotation_text(annotation)} = {shown}"


def check_item(path, table, kind):
    """Validate one ``{type = ..., **params}`` table against the registered class; returns it."""
    from numdl.plugins import registry

    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table with a 'type' key, got {short(table)}")
    if "type" not in table:
        raise ConfigError(f"{path}.type: missing (which {kind}?)")
    check_type(f"{path}.type", table["type"], str)
    try:
        cls = registry().get(kind, table["type"])
    except UnknownNameError as error:  # a duplicate name (a plugin's fault) is raised as it is
        raise UnknownNameError(f"{path}.type: {error}") from None
    accepted = item_parameters(cls)
    nested = getattr(cls, "nested_layers", None)
    for key, value in table.items():
        if key == "type":
            continue
        if key == nested:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{path}.{key}: expected a non-empty list of layer tables")
            for index, child in enumerate(value):
                check_item(f"{path}.{key}.{index}", child, "layer")
            continue
        if key not in accepted:
            names = ", ".join(accepted) or "no parameters"
            raise ConfigError(f"{path}.{key}: unknown parameter of {kind} {short(table['type'])} (accepts: {names})")
        check_type(f"{path}.{key}", value, accepted[key][0])
    missing = [k for k, (_, default) in accepted.items() if default is inspect.Parameter.empty and k not in table]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}: required by {kind} {table['type']!r}")
    return cls


def validate(config):
    for key, value in config.items():
        if key in TOP_LEVEL:
            check_type(key, value, TOP_LEVEL[key])
            if key in NON_NEGATIVE and value < 0:
                raise ConfigError(f"{key}: must be >= 0, got {value}")
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table")
            for sub, subvalue in value.items():
                if sub not in SECTIONS[key]:
                    raise ConfigError(f"{key}.{sub}: unknown key (known: {', '.join(SECTIONS[key])})")
                check_type(f"{key}.{sub}", subvalue, SECTIONS[key][sub])
                if f"{key}.{sub}" in POSITIVE and subvalue < 1:
                    raise ConfigError(f"{key}.{sub}: must be >= 1, got {subvalue}")
                if f"{key}.{sub}" in NON_NEGATIVE and subvalue < 0:
                    raise ConfigError(f"{key}.{sub}: must be >= 0, got {subvalue}")
        elif key in ITEM_SECTIONS:
            check_item(key, value, ITEM_SECTIONS[key])
        else:
            known = ", ".join([*TOP_LEVEL, *SECTIONS, *ITEM_SECTIONS])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    layers = config["model"].get("layers", [])
    nodes = config["model"].get("nodes")
    if nodes is not None:
        if layers:
            raise ConfigError("model: give model.layers (a chain) or model.nodes (a graph), not both")
        check_nodes(nodes)
    elif not layers:
        raise ConfigError("model.layers: at least one layer is needed")
    elif "outputs" in config["model"] or "input" in config["model"]:
        raise ConfigError("model.outputs and model.input belong to graph models (model.nodes)")
    for i, layer in enumerate(layers):
        check_item(f"model.layers.{i}", layer, "layer")
    from numdl.plugins import registry

    try:
        registry().get("dataset", config["data"].get("name"))
    except UnknownNameError as error:
        raise UnknownNameError(f"data.name: {error}") from None
    for i, metric in enumerate(config["train"].get("metrics", [])):
        try:
            registry().get("metric", metric)
        except UnknownNameError as error:
            raise UnknownNameError(f"train.metrics.{i}: {error}") from None
    for i, table in enumerate(config["train"].get("callbacks", [])):
        check_item(f"train.callbacks.{i}", table, "callback")
    if config["model"].get("dtype") not in ("float32", "float64"):
        raise ConfigError(f"model.dtype: must be float32 or float64, got {short(config['model'].get('dtype'))}")
    if config["model"].get("device") not in ("cpu", "cuda"):
        raise ConfigError(f"model.device: must be cpu or cuda, got {short(config['model'].get('device'))}")
    data = config["data"]
    if not 0.0 <= data.get("validation_split", 0.0) < 1.0:
        raise ConfigError("data.validation_split: must be in [0, 1)")
    if not 0.0 <= data.get("test_split", 0.0) < 1.0 or data.get("validation_split", 0.0) + data.get("test_split", 0.0) >= 1:
        raise ConfigError("data.test_split: must be in [0, 1), with validation_split + test_split < 1")
    for key, allowed in (("task", ("auto", "classification", "multilabel", "regression")),
                         ("scale", ("standardize", "minmax", "none")),
                         ("impute", ("mean", "median", "most_frequent", "constant")),
                         ("sampler", ("shuffle", "balanced"))):
        if key in data and data[key] not in allowed:
            raise ConfigError(f"data.{key}: must be one of {', '.join(allowed)}, got {short(data[key])}")
    if config["train"].get("lr_scaling", "none") not in ("none", "linear", "sqrt"):
        raise ConfigError(f"train.lr_scaling: must be one of none, linear, sqrt, got {short(config['train']['lr_scaling'])}")
    if not 0.0 < config["train"].get("threshold", 0.5) < 1.0:
        raise ConfigError("train.threshold: must be in (0, 1)")
    _check_monitor(config)


def check_nodes(nodes):
    """Each ``model.nodes`` table: a name, its inputs, and a layer table (or a shared layer)."""
    if not nodes:
        raise ConfigError("model.nodes: at least one node is needed")
    for i, table in enumerate(nodes):
        path = f"model.nodes.{i}"
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: expected a table with name, type and inputs, got {short(table)}")
        if not isinstance(table.get("name"), str) or not table["name"]:
            raise ConfigError(f"{path}.name: every node needs a name (a string)")
        inputs = table.get("inputs", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(name, str) for name in inputs):
            raise ConfigError(f"{path}.inputs: expected a list of node names, got {short(table.get('inputs'))}")
        item = {k: v for k, v in table.items() if k not in ("name", "inputs")}
        if item.get("type") == "shared":
            if set(item) != {"type", "layer"} or not isinstance(item.get("layer"), str):
                raise ConfigError(f"{path}: a shared node has name, inputs and layer = \"<an earlier node>\" only")
            continue
        check_item(path, item, "layer")


def reported_metrics(config):
    """The epoch metrics a run of ``config`` reports (what train.monitor may name)."""
    data = config["data"]
    sets = ["test"] + (["validation"] if data.get("validation_split", 0.0) > 0 or data.get("validation_path") else [])
    task_metrics = []
    if data.get("name") == "table":  # numdl.train.TaskReport adds these every epoch
        from numdl.data.table import TASK_METRICS, task_for

        task_metrics = [m for m in TASK_METRICS[task_for(config)] if m != "recall"]  # (a list per class)
    from numdl.plugins import registry

    entry = registry().items["loss"].get(config.get("loss", {}).get("type"))
    if entry is not None and getattr(entry.cls, "class_axis", -1) == 1:  # segmentation (SegmentationReport)
        task_metrics = task_metrics + ["pixel_accuracy", "mean_iou", "mean_dice"]
    if entry is not None and getattr(entry.cls, "target_kind", None) == "boxes":  # detection (DetectionReport)
        task_metrics = task_metrics + ["map50", "map"]
    names = ["train_loss", "train_accuracy"]
    for name in sets:
        names += [f"{name}_{m}" for m in ["loss", "accuracy", *task_metrics, *config["train"].get("metrics", [])]]
    return names


def _check_monitor(config):
    monitor = config["train"].get("monitor", "")
    if monitor and monitor not in reported_metrics(config):
        raise ConfigError(f"train.monitor: the run does not report {short(monitor)} (it reports "
                          f"{', '.join(reported_metrics(config))}; add metrics with train.metrics)")


# ------------------------------------------------------------------------------ building
def build_item(path, table, kind):
    """Instantiate a validated item table; a constructor's own refusal becomes a ConfigError."""
    cls = check_item(path, table, kind)
    kwargs = {k: v for k, v in table.items() if k != "type"}
    nested = getattr(cls, "nested_layers", None)
    if nested in kwargs:
        kwargs[nested] = [build_item(f"{path}.{nested}.{i}", child, "layer") for i, child in enumerate(kwargs[nested])]
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None


def config_of(model):
    """The config that rebuilds ``model`` (made in Python) with ``build_model``: its layers, loss and
    optimizer by registered name and hyper-parameters, over the default's other sections; None when
    some item cannot be named so (a plugin layer without ``hyperparameters``)."""
    def table(item):
        return {"type": item.name, **{k: v for k, v in item.hyperparameters().items() if v is not None}}

    config = default_config()
    config["seed"] = model.seed
    config["model"].update(dtype=str(model.dtype), device=model.device)
    graph = getattr(model, "config_table", None)
    if graph is not None:  # a graph model
        graph = graph()
        if graph is None:
            return None
        del config["model"]["layers"]
        config["model"].update(nodes=graph["nodes"], outputs=graph["outputs"], input=graph["input"])
    else:
        config["model"]["layers"] = [layer.config_table() for layer in model.layers]
    if model.loss is not None:
        config["loss"] = table(model.loss)
    if model.optimizer is not None:
        config["optimizer"] = table(model.optimizer)
    try:
        validate(config)
    except ConfigError:
        return None
    return config


def build_model(config, input_shape):
    """A built, compiled Sequential (or graph Model, for model.nodes) from a validated config."""
    from numdl.model import Sequential

    if config["model"].get("nodes"):
        from numdl.graph import from_config

        model = from_config(config["model"], input_shape, config["model"]["dtype"], config["model"]["device"],
                            config.get("seed", 0))
        model.compile(build_item("loss", config["loss"], "loss"),
                      build_item("optimizer", config["optimizer"], "optimizer"))
        return model
    layers = [build_item(f"model.layers.{i}", t, "layer") for i, t in enumerate(config["model"]["layers"])]
    model = Sequential(layers, dtype=config["model"]["dtype"], device=config["model"]["device"],
                       seed=config.get("seed", 0))
    try:
        model.build(input_shape)
    except ShapeError as error:  # a layer chain that cannot fit the data: the config's fault
        raise ConfigError(str(error)) from None
    model.compile(build_item("loss", config["loss"], "loss"), build_item("optimizer", config["optimizer"], "optimizer"))
    return model


# ------------------------------------------------------------------------- the key reference
def key_reference():
    """docs/config.md: every config key with its type, default (the embedded default's) and meaning."""
    default = default_config()
    rows = ["# Config keys", "",
            "Every key a `numdl train` config can set, with the embedded default (`numdl/default.toml`) and its "
            "meaning. A config file names only what it changes; `--set key=value` overrides one key. Generated "
            "from `numdl/config.py` by `python -m numdl.config > docs/config.md`.", "",
            "| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def default_of(key):
        node = default
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "[]" if key in ("train.metrics", "train.callbacks") else "(none)"
            node = node[part]
        if key == "model.layers":
            return f"{len(node)} layers (the reference MLP)"
        if isinstance(node, dict):
            return ", ".join(f"{k} = {_toml_value(v)}" for k, v in node.items())
        return _toml_value(node)

    keys = [(key, annotation) for key, annotation in TOP_LEVEL.items()]
    keys += [(f"{section}.{key}", annotation) for section, table in SECTIONS.items() for key, annotation in table.items()]
    keys += [(section, dict) for section in ITEM_SECTIONS]
    for key, annotation in keys:
        kind = "table" if annotation is dict else _type_name(annotation).removeprefix("an ").removeprefix("a ")
        rows.append(f"| `{key}` | {kind} | `{default_of(key)}` | {DESCRIPTIONS[key]} |")
    return "\n".join(rows) + "\n"


def _toml_value(value):
    import tomli_w

    return tomli_w.dumps({"v": value}).strip()[4:]


if __name__ == "__main__":
    print(key_reference(), end="")
