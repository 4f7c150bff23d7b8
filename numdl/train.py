"""A training run from a resolved config: data, model, the loop, and the files of the run folder.

``run_folder/config.toml``  the resolved config (rerunnable as is)
``run_folder/metrics.jsonl`` one JSON object per epoch
``run_folder/summary.json``  final metrics, the per-class report and the confusion matrix
"""

import concurrent.futures
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import tomli_w

from numdl import metrics
from numdl.config import build_item, build_model
from numdl.schedules import ScheduleCallback
from numdl.errors import ConfigError, NumdlError, TrainingDiverged
from numdl.progress import format_epoch
from numdl.data import Augmenter, Normalizer, train_validation_split


#: The file that marks a folder as a numdl run folder: ``--resume`` and ``--out`` write only into a
#: folder that has it (or a new or empty one), never into a user's own folder.
RUN_MARKER = "numdl-run.json"


def is_run_folder(folder):
    return (Path(folder) / RUN_MARKER).is_file()


def prepare_run_folder(folder):
    """Create ``folder`` (or accept an empty one or an earlier numdl run folder) and mark it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder}: exists and is not a folder")
    if folder.is_dir() and not is_run_folder(folder) and any(folder.iterdir()):
        raise ConfigError(f"--out {folder}: the folder exists, is not empty and is not a numdl run folder "
                          f"(no {RUN_MARKER}); numdl would overwrite files there: choose a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / RUN_MARKER
        if not marker.exists():
            from numdl import __version__

            marker.write_text(json.dumps({"numdl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except OSError as error:
        raise NumdlError(f"cannot write the run folder {folder}: {error.strerror or error}") from None
    return folder


def new_run_folder(root="runs", prefix=""):
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    folder = Path(root) / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(root) / f"{stamp}-{suffix}"
    return folder


def load_data(config):
    """(splits, normalizer, metadata): train/validation/test arrays normalised with statistics of
    the training part only, the normalizer, and what checkpoints must carry to apply the same steps
    to new input. A dataset with its own per-column preprocessing (tables) prepares its splits
    itself (``load_prepared``); its state goes into the metadata and the normalizer is identity."""
    from numdl.plugins import registry

    data, dtype = config["data"], config["model"]["dtype"]
    dataset = registry().get("dataset", data["name"])()
    if hasattr(dataset, "configure"):  # a dataset with settings of its own reads them from the config
        dataset.configure(config)
    if hasattr(dataset, "load_prepared"):
        prepared, state = dataset.load_prepared(config)
        return prepared, Normalizer("none", dtype), {"preprocessing": state}
    x_train, y_train, x_test, y_test = dataset.load(data.get("path") or None)
    x_val = y_val = None
    if data.get("validation_split", 0.0) > 0:
        x_train, y_train, x_val, y_val = train_validation_split(
            x_train, y_train, data["validation_split"], config.get("seed", 0))
    normalizer = Normalizer(data.get("normalize", "standardize"), dtype).fit(x_train)
    prepared = {"train": (normalizer.transform(x_train), y_train), "test": (normalizer.transform(x_test), y_test)}
    if x_val is not None:
        prepared["validation"] = (normalizer.transform(x_val), y_val)
    return prepared, normalizer, {}


def check_data(config, data):
    """Every split has samples: an empty one would only surface as 'empty batch' inside fit."""
    from numdl.errors import DataError

    for split, (x, _) in data.items():
        if len(x) == 0:
            raise DataError(f"data {config['data']['name']!r}: the {split} split has no samples")


def num_classes(model):
    """The number of classes a classifying model's output gives (its class axis: last, or the
    channels of (C, H, W) segmentation logits)."""
    axis = getattr(model.loss, "class_axis", -1)
    return model.output_shape[axis - 1 if axis > 0 else axis]


def dataset_class_names(config):
    """The class names a run's dataset gives (a list), or None."""
    from numdl.plugins import registry

    try:
        dataset = registry().get("dataset", config["data"]["name"])()
        if hasattr(dataset, "configure"):
            dataset.configure(config)
        return list(dataset.class_names or []) or None
    except (NumdlError, KeyError):
        return None


def check_model_fits_labels(model, labels):
    """ConfigError (exit 2) when the model's output cannot be compared with the labels, naming the
    layer where the shapes part (a model without 'flatten' gives (28, 10) per image, not (10,))."""
    if getattr(model.loss, "target_kind", None) == "boxes":  # a detection head: its map must match its stride
        stride = model.loss.stride
        image, grid = tuple(model.input_shape[-2:]), tuple(model.output_shape[-2:])
        if len(model.input_shape) != 3 or len(model.output_shape) != 3 or image != (grid[0] * stride, grid[1] * stride):
            found = f", a stride of {image[0] // grid[0]}" if grid[0] and image[0] % grid[0] == 0 else ""
            raise ConfigError(f"loss.stride = {stride}: the model maps {'x'.join(map(str, image))} inputs to "
                              f"{'x'.join(map(str, grid))} maps{found}; the loss needs input size = map size x stride")
        return
    if getattr(model.loss, "target_kind", None) != "labels":
        return
    label_shape = tuple(labels.shape[1:])
    out = tuple(model.output_shape)
    if getattr(model.loss, "class_axis", -1) == 1:  # dense prediction: (C, H, W) logits, (H, W) labels
        if out[1:] != label_shape:
            raise ConfigError(f"the model gives outputs of shape {out} per sample, but labels of shape {label_shape} "
                              f"need (classes, {', '.join(map(str, label_shape))}): the output node must keep the "
                              f"input's height and width")
    elif not hasattr(model, "order") and out[:-1] != label_shape:
        index = next((i for i, layer in enumerate(model.layers)
                      if len(layer.output_shape) != len(label_shape) + 1
                      and all(len(later.output_shape) == len(out) for later in model.layers[i:])), len(model.layers) - 1)
        # within the layers that keep the extra axes, the first dense one is where a flatten belongs
        index = next((i for i in range(index, len(model.layers)) if hasattr(model.layers[i], "out_features")), index)
        layer = model.layers[index]
        raise ConfigError(f"model.layers.{index} ({layer.name}) gives each sample outputs of shape {layer.output_shape}, "
                          f"and the model ends with {out}, but labels of shape {label_shape} need "
                          f"{label_shape + (out[-1],)}: add a 'flatten' (or pooling) layer before model.layers.{index}")
    elif out[:-1] != label_shape:
        raise ConfigError(f"the model's output node gives each sample outputs of shape {out}, but labels of shape "
                          f"{label_shape} need {label_shape + (out[-1],)}")
    weight = getattr(model.loss, "weight", None)
    if weight is not None and len(weight) != num_classes(model):
        raise ConfigError(f"loss.weight: has {len(weight)} entries but the model gives {num_classes(model)} classes")


def make_augmenter(config, normalizer):
    data = config["data"]
    fill = float(normalizer.transform(np.zeros(1))[0])  # a black pixel, normalised
    augmenter = Augmenter(data.get("crop_padding", 0), data.get("horizontal_flip", False), fill)
    return augmenter if augmenter.active else None


EVAL_SETS = ("train", "validation", "test")


def monitored_metric(monitor):
    """``validation_macro_f1`` -> ("validation", "macro_f1")."""
    head, _, tail = monitor.partition("_")
    return (head, tail) if head in EVAL_SETS and tail else (None, monitor)


def higher_is_better(monitor):
    """Whether a larger value of the epoch metric ``monitor`` is better: losses and errors are
    lower-is-better; accuracy and every registered metric higher, unless the metric's class sets
    ``higher_is_better = False``."""
    from numdl.errors import UnknownNameError
    from numdl.plugins import registry

    name = monitored_metric(monitor)[1]
    if name in ("loss", "mae", "rmse", "mse") or name.endswith(("_loss", "error")):
        return False
    try:
        return bool(getattr(registry().get("metric", name), "higher_is_better", True))
    except UnknownNameError:
        return True  # accuracy


def improves(value, best, higher):
    return value is not None and (best is None or (value > best if higher else value < best))


class EarlyStopping:
    """fit callback: stops training after ``patience`` epochs without improvement of ``monitor``
    (its direction from the metric: see higher_is_better)."""

    def __init__(self, model, monitor, patience, on_line=print):
        self.model, self.monitor, self.patience, self.on_line = model, monitor, patience, on_line
        self.higher = higher_is_better(monitor)
        self.best, self.waited = None, 0

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if improves(value, self.best, self.higher):
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.model.stop_training = True
            self.on_line(f"early stopping: {self.monitor} has not improved for {self.patience} epochs")


class Checkpointer:
    """fit callback: ``checkpoints/latest.safetensors`` every ``every_steps`` steps and at each
    epoch end, ``epoch-NNNN.safetensors`` for the last ``keep`` epochs, and ``best.safetensors`` for
    the best value of ``monitor`` (``higher``: whether larger is better). Each file holds the
    resolved config and the exact training position, so a run resumes bit for bit. Weights or
    optimizer state holding NaN or Inf are never written: the run stops, the last good file stays."""

    def __init__(self, folder, model, config, every_steps=0, keep=3, monitor="test_accuracy", best=None,
                 extra=None, schedule=None, higher=True):
        self.folder = Path(folder) / "checkpoints"
        self.extra, self.schedule = dict(extra or {}), schedule
        self.model, self.config, self.every, self.keep, self.monitor = model, config, every_steps, keep, monitor
        self.best, self.higher = best, higher
        self.steps = 0

    def _save(self, name, extra=None):
        from numdl.checkpoint import NonFiniteTensor

        meta = {"config": self.config, "fit_position": self.model.fit_position, "monitor": self.monitor,
                "best": self.best, **self.extra}
        if self.schedule is not None:
            meta["schedule_state"] = self.schedule.state()
        meta.update(extra or {})
        try:
            return self.model.save(self.folder / name, meta=meta)
        except NonFiniteTensor as error:
            position = self.model.fit_position
            raise TrainingDiverged(f"training diverged at epoch {position['epoch']}, step {position['step']}: "
                                   f"{error.tensor} is not finite after the optimizer step; {name} was not "
                                   f"written, the last good checkpoint is kept") from None

    def on_batch_end(self, batch, logs):
        self.steps += 1
        if self.every and self.steps % self.every == 0:
            self._save("latest.safetensors")

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        improved = improves(value, self.best, self.higher)
        if improved:
            self.best = value
        self._save(f"epoch-{epoch:04d}.safetensors", {"epoch_logs": logs})
        self._save("latest.safetensors", {"epoch_logs": logs})
        if improved:
            self._save("best.safetensors", {"epoch_logs": logs})
        epochs = sorted(self.folder.glob("epoch-*.safetensors"))
        for old in epochs[:-self.keep] if self.keep > 0 else epochs:
            old.unlink()


class EpochMetrics:
    """fit callback: adds each registered metric named in ``train.metrics`` for every evaluation set
    (``test_macro_f1``, ...) to the epoch's logs, before they are recorded."""

    def __init__(self, model, evals, names, batch_size):
        from numdl.plugins import registry

        self.model, self.evals, self.batch_size = model, evals, batch_size
        self.metrics = []
        for index, name in enumerate(names):
            cls = registry().get("metric", name)
            if not cls.implemented():
                raise ConfigError(f"train.metrics.{index}: metric {name!r} implements no "
                                  f"compute(y_true, y_pred, scores, num_classes)")
            self.metrics.append((name, cls()))

    def on_epoch_end(self, epoch, logs):
        classes = num_classes(self.model)
        axis = getattr(self.model.loss, "class_axis", -1)
        for set_name, (x, y) in self.evals.items():
            result = self.model.evaluate(x, y, batch_size=self.batch_size, scores=True)
            if result["predictions"] is None:
                continue
            # per-step labels (N, T) are N x T classifications: flattened for the multi-class metrics
            labels, predicted = np.asarray(y).reshape(-1), result["predictions"].reshape(-1)
            scores = np.moveaxis(result["scores"], axis, -1).reshape(-1, classes)
            for name, metric in self.metrics:
                logs[f"{set_name}_{name}"] = metric(labels, predicted, classes, scores)


class TaskReport:
    """fit callback for tables: each epoch's line and metrics.jsonl get what shows the task's quality
    per evaluation set: macro F1 and each class's recall (classification: what class weights or a
    balanced sampler change), subset accuracy, Hamming loss and micro/macro F1 (multi-label, at
    ``threshold``), or MAE, RMSE and R^2 in the target's own units (regression)."""

    def __init__(self, model, evals, target, threshold, batch_size):
        self.model, self.evals, self.target = model, evals, target
        self.threshold, self.batch_size = threshold, batch_size

    def report(self, x, y):
        task = self.target["task"]
        if task == "classification":
            predicted = self.model.evaluate(x, y, batch_size=self.batch_size)["predictions"]
            _, recall, f1, _ = metrics.precision_recall_f1(y, predicted, self.model.output_shape[-1])
            return {"macro_f1": float(f1.mean()), "recall": [round(float(r), 4) for r in recall]}
        outputs = self.model.predict(x, batch_size=self.batch_size)
        if task == "multilabel":
            predicted = (1.0 / (1.0 + np.exp(-outputs.astype(np.float64))) >= self.threshold).astype(np.int64)
            full = metrics.multilabel_report(np.asarray(y).astype(np.int64), predicted)
            return {k: full[k] for k in ("subset_accuracy", "hamming_loss", "micro_f1", "macro_f1")}
        scale, shift = self.target["divisor"], self.target["shift"]
        return metrics.regression_report(np.asarray(y) * scale + shift, outputs * scale + shift)

    def on_epoch_end(self, epoch, logs):
        for set_name, (x, y) in self.evals.items():
            logs.update({f"{set_name}_{k}": v for k, v in self.report(x, y).items()})


class SegmentationReport:
    """fit callback for dense prediction (a loss with class_axis 1): each evaluation set's pixel
    accuracy, mean IoU and mean Dice every epoch (and each class's IoU)."""

    def __init__(self, model, evals, batch_size):
        self.model, self.evals, self.batch_size = model, evals, batch_size

    def report(self, x, y, predictions=None):
        if predictions is None:
            predictions = self.model.evaluate(x, y, batch_size=self.batch_size)["predictions"]
        ignore = getattr(self.model.loss, "ignore_index", None)
        return metrics.segmentation_report(y, predictions, num_classes(self.model), ignore)

    def on_epoch_end(self, epoch, logs):
        for set_name, (x, y) in self.evals.items():
            done = getattr(self.model, "last_evaluations", {}).get(set_name)  # fit's own pass over the set
            full = self.report(x, y, None if done is None else done["predictions"])
            logs.update({f"{set_name}_{k}": full[k] for k in ("pixel_accuracy", "mean_iou", "mean_dice", "iou")})


class DetectionReport:
    """fit callback for a detection head (a loss with ``target_kind = "boxes"``): each evaluation
    set's COCO mean average precision at IoU 0.5 (``map50``) and over 0.5:0.95 (``map``) every epoch."""

    def __init__(self, model, evals, batch_size):
        self.model, self.evals, self.batch_size = model, evals, batch_size

    def report(self, x, boxes):
        from numdl import detection

        outputs = self.model.predict(x, batch_size=self.batch_size)
        detections = detection.decode(outputs, self.model.loss.stride)
        return detection.mean_average_precision(detections, boxes, outputs.shape[1] - 4)

    def on_epoch_end(self, epoch, logs):
        for set_name, (x, y) in self.evals.items():
            full = self.report(x, y)
            logs.update({f"{set_name}_{k}": full[k] for k in ("map50", "map", "ap50")})


def balanced_class_weights(labels, classes):
    """scikit-learn's 'balanced' weights: n / (classes * count of the class); 0 for an absent class."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=classes).astype(np.float64)
    return [float(w) for w in np.divide(counts.sum(), classes * counts, out=np.zeros(classes), where=counts > 0)]


def balanced_sampling_weights(labels, classes):
    """Per-sample draw probabilities that give every present class the same expected share."""
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


class PluginEvents:
    """fit callback: calls the ``numdl_on_epoch_end`` hook of every plugin after each epoch."""

    def __init__(self, folder):
        from numdl.plugins import plugin_manager

        self.hook, self.folder = plugin_manager().hook, str(folder)

    def on_epoch_end(self, epoch, logs):
        self.hook.numdl_on_epoch_end(epoch=epoch, logs=dict(logs), run_folder=self.folder)


class RunRecorder:
    """fit callback: appends each epoch's metrics to metrics.jsonl and reports to ``on_line``."""

    def __init__(self, folder, epochs, on_line=print, progress=None):
        self.path = Path(folder) / "metrics.jsonl"
        self.epochs, self.on_line, self.progress = epochs, on_line, progress

    def on_epoch_begin(self, epoch, model):
        if self.progress:
            self.progress.begin(epoch)

    def on_batch_end(self, batch, logs):
        if self.progress:
            self.progress.advance(logs["size"])

    def on_epoch_end(self, epoch, logs):
        if self.progress:
            self.progress.end()
        with self.path.open("a") as f:
            f.write(json.dumps(logs) + "\n")
        self.on_line(format_epoch(logs, self.epochs))


#: A command that starts this long after numdl's import runs in a process that was doing other work
#: first (a test session, a notebook invoking the CLI): its start-up counts from the command's start.
FRESH_PROCESS_SECONDS = 10.0


def seconds_since_start():
    """Wall seconds since numdl was imported, the first thing the ``numdl`` command does. (The
    process's own start time would count whatever ran before an exec: ``bash -c 'sleep 3 && numdl
    train'`` reported 3.7 s. The interpreter's start-up before the import, ~30 ms, is not counted.)
    In a process that imported numdl long before the command ran, from the command's start."""
    import numdl

    start = numdl.IMPORTED_AT
    command = numdl.COMMAND_STARTED_AT
    if command is not None and command - start > FRESH_PROCESS_SECONDS:
        start = command
    return time.time() - start


class FirstStepTimer:
    """fit callback: records when the first training step finished, counted from numdl's import
    (start-up cost: imports, data, model, kernels from numba's cache, one step)."""

    def __init__(self, on_line):
        self.on_line, self.seconds = on_line, None

    def on_batch_end(self, batch, logs):
        if self.seconds is None:
            self.seconds = seconds_since_start()
            self.on_line(f"first training step done {self.seconds:.2f}s after start")


def weights_sha256(model):
    """SHA-256 over every parameter's bytes in a stable order (how runs are compared bit for bit)."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters().items()):
        digest.update(name.encode())
        digest.update(model.ops.to_numpy(p.value).tobytes())
    return digest.hexdigest()


def find_resume(run_dir_or_file):
    """(checkpoint, run folder) for ``--resume``: a numdl run folder (its latest checkpoint), or a
    checkpoint file; the run folder is None when the file does not lie in one's checkpoints/."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        if not is_run_folder(path):
            raise ConfigError(f"--resume {path}: not a numdl run folder (no {RUN_MARKER}); give a run folder "
                              f"or a checkpoint file")
        checkpoint = path / "checkpoints" / "latest.safetensors"
        if not checkpoint.is_file():
            raise NumdlError(f"--resume {path}: the run has no checkpoint to resume from ({checkpoint})")
        return checkpoint, path
    if not path.is_file():
        raise NumdlError(f"--resume {path}: no such run folder or checkpoint file")
    folder = path.parent.parent
    return path, (folder if path.parent.name == "checkpoints" and is_run_folder(folder) else None)


def warm_up(config):
    """Load or compile every kernel a run of ``config`` uses (training and evaluation batch sizes);
    returns the seconds it took."""
    data, _, _ = load_data(config)
    x_train = data["train"][0]
    model = build_model(config, x_train.shape[1:])
    train = config["train"]
    seconds = model.warmup(min(train["batch_size"], len(x_train)))
    start = time.perf_counter()
    model.forward(model.ops.asarray(x_train[:min(train["eval_batch_size"], len(x_train))]))
    return seconds + time.perf_counter() - start


#: What ``--set`` may change when a run is resumed: how long and how it goes on, never what it is
#: (the model, the data, the optimizer), which the checkpoint must match.
RESUME_OVERRIDABLE = ("train.epochs", "train.early_stopping_patience", "train.checkpoint_every",
                      "train.keep_checkpoints", "train.divergence_factor", "train.tensorboard",
                      "train.tensorboard_every")


def resumed_config(resume_meta, overrides=()):
    """The config a resumed run continues with: the checkpoint's, with ``overrides`` of the keys in
    RESUME_OVERRIDABLE (``--set train.epochs=20`` extends a finished run)."""
    from numdl.config import apply_override, validate

    config = resume_meta["config"]
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--set {key}: a resumed run keeps its config; only {', '.join(RESUME_OVERRIDABLE)} "
                              f"can change")
        apply_override(config, assignment)
    validate(config)
    return config


def _finished_epochs(metrics_path, before_epoch):
    """The lines of metrics.jsonl for epochs before ``before_epoch``; a torn last line (a kill during
    the append) or any line that is not a JSON object is dropped."""
    kept = []
    for line in metrics_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] < before_epoch:
            kept.append(line)
    return kept


def run(config, out_dir, on_line=print, progress=None, resume_from=None, overrides=(), reset_optimizer=False,
        callbacks=(), data_parallel=True):
    """Train as ``config`` says, writing the run folder; returns the summary dict. With
    ``resume_from`` (a checkpoint path), continue that run exactly where the checkpoint left it
    (``overrides``: the --set assignments allowed on a resumed run). ``callbacks``: more fit
    callbacks, called after numdl's own (a search's pruning, say). Under an MPI launcher the ranks
    train one model together, unless ``data_parallel`` is False (each rank its own run: a search's
    workers)."""
    from numdl import distributed

    extra_callbacks = list(callbacks)
    world = distributed.world() if data_parallel else None  # None unless launched with several ranks
    resume_meta = None
    if resume_from is not None:
        from numdl.checkpoint import read_checkpoint

        _, resume_meta = read_checkpoint(resume_from)
        config = resumed_config(resume_meta, overrides)
        ranks = resume_meta.get("world_size", 1)
        if ranks != (world.size if world else 1):
            raise ConfigError(f"--resume: the run trained on {ranks} rank(s); resume it with the same number "
                              f"(mpirun -n {ranks}), or its data order and steps would differ")
    if world is not None and world.rank != 0:  # rank 0 alone writes the run folder and prints
        import atexit
        import shutil
        import tempfile

        out_dir = tempfile.mkdtemp(prefix=f"numdl-rank{world.rank}-")
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
        on_line, progress = (lambda line: None), None
    folder = prepare_run_folder(out_dir)
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    metrics_path = folder / "metrics.jsonl"
    if resume_meta is None or not metrics_path.exists():
        metrics_path.write_text("")
    else:  # keep the epochs finished before the resumed one; drop any line of a replayed epoch
        kept = _finished_epochs(metrics_path, resume_meta["fit_position"]["epoch"])
        metrics_path.write_text("".join(line + "\n" for line in kept))

    # The data load (file reads and NumPy passes, which release the GIL) overlaps with loading
    # numba and its CPU target (which hold it): ~0.2 s of start-up.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_data, config)
        if config["model"].get("device", "cpu") == "cpu":
            from numdl.backend.cpu import load_kernel_runtime

            load_kernel_runtime()
        data, normalizer, data_meta = loading.result()
    check_data(config, data)
    x_train, y_train = data["train"]
    model = build_model(config, x_train.shape[1:])
    classes = model.loss.target_kind == "labels"
    if getattr(model.loss, "class_weight", None) == "balanced":
        model.loss.weight = balanced_class_weights(y_train, num_classes(model))
    check_model_fits_labels(model, y_train)
    sampling = None
    if config["data"].get("sampler", "shuffle") == "balanced":
        if not classes:
            raise ConfigError("data.sampler: 'balanced' draws classes equally often; it needs class labels")
        if config["data"].get("out_of_core"):
            raise ConfigError("data.sampler: 'balanced' draws rows from all over the data, which pages a table "
                              "on disk back into memory; use loss.class_weight = 'balanced' with data.out_of_core")
        sampling = balanced_sampling_weights(y_train, num_classes(model))
    target_state = data_meta.get("preprocessing", {}).get("target")
    train = config["train"]
    compile_seconds = model.warmup(min(train["batch_size"], len(x_train)))
    base_lr = config["optimizer"].get("lr", model.optimizer.lr)
    if world is not None:
        rule = train.get("lr_scaling", "none")
        model.optimizer.lr = base_lr = distributed.scaled_lr(base_lr, world.size, rule)
        distributed.prepare_model(model, world)
        on_line(f"data-parallel over {world.size} ranks: batch {train['batch_size']} per rank, effective batch "
                f"{train['batch_size'] * world.size}; lr {model.optimizer.lr:g} (train.lr_scaling = {rule!r})")
    if resume_meta is not None:
        model.load_weights(resume_from, reset_optimizer=reset_optimizer)
        position = resume_meta["fit_position"]
        on_line(f"resumed from {resume_from} at epoch {position['epoch']}, step {position['step']}")
    size = f"{len(model.order) - len(model.input_nodes)} nodes" if hasattr(model, "order") else \
        f"{len(model.layers)} layers"
    on_line(f"model: {size}, {model.parameter_count():,} parameters; "
            f"{len(x_train):,} training samples; kernels ready in {compile_seconds:.1f}s")

    evals = {name: data[name] for name in ("validation", "test") if name in data}
    default_monitor = ("validation_" if "validation" in evals else "test_") + ("accuracy" if classes else "loss")
    monitor = train.get("monitor") or default_monitor
    schedule = build_item("schedule", config.get("schedule", {"type": "constant"}), "schedule")
    if resume_meta is not None and "schedule_state" in resume_meta:
        schedule.load_state(resume_meta["schedule_state"])
    samples = len(x_train) // (world.size if world else 1)  # each rank's share of an epoch
    steps_per_epoch = -(-samples // train["batch_size"])
    checkpointer = Checkpointer(folder, model, config, train.get("checkpoint_every", 0),
                                train.get("keep_checkpoints", 3), monitor,
                                None if resume_meta is None else resume_meta.get("best"),
                                {"normalization": normalizer.state(), **data_meta,
                                 "world_size": world.size if world else 1}, schedule, higher_is_better(monitor))
    # The schedule's lr is set after each step: it goes first, so checkpoints record the lr it set.
    callbacks = [ScheduleCallback(schedule, model.optimizer, base_lr, steps_per_epoch, steps_per_epoch * train["epochs"])]
    if world is not None:  # before the epoch is evaluated and recorded: averaged state, combined speed
        callbacks.append(distributed.EpochAverager(model, world))
    if train.get("metrics"):
        callbacks.append(EpochMetrics(model, evals, train["metrics"], train["eval_batch_size"]))
    dense = getattr(model.loss, "class_axis", -1) == 1
    if dense:
        callbacks.append(SegmentationReport(model, evals, train["eval_batch_size"]))
    boxes = getattr(model.loss, "target_kind", None) == "boxes"
    if boxes:
        callbacks.append(DetectionReport(model, evals, train["eval_batch_size"]))
    if target_state is not None:
        callbacks.append(TaskReport(model, evals, target_state, train.get("threshold", 0.5), train["eval_batch_size"]))
    first_step = FirstStepTimer(on_line)
    callbacks += [first_step, RunRecorder(folder, train["epochs"], on_line, progress), checkpointer,
                  PluginEvents(folder)]
    for index, table in enumerate(train.get("callbacks", [])):
        callback = build_item(f"train.callbacks.{index}", table, "callback")
        callback.bind(model, folder)
        callbacks.append(callback)
    tensorboard = None
    if train.get("tensorboard"):
        from numdl.tensorboard_log import TensorBoardLogger

        tensorboard = TensorBoardLogger(folder / "tensorboard", train.get("tensorboard_every", 50))
        tensorboard.bind(model)
        callbacks.append(tensorboard)
    if train.get("early_stopping_patience", 0) > 0:
        callbacks.append(EarlyStopping(model, monitor, train["early_stopping_patience"], on_line))
    for callback in extra_callbacks:
        if hasattr(callback, "bind"):
            callback.bind(model, folder)
        callbacks.append(callback)
    model.clip_grad_norm = train.get("clip_grad_norm", 0.0)
    model.divergence_factor = train.get("divergence_factor", 0.0)
    if progress:
        progress.start(train["epochs"], len(x_train))
    try:
        history = model.fit(x_train, y_train, epochs=train["epochs"], batch_size=train["batch_size"],
                            shuffle=train["shuffle"], seed=config.get("seed", 0), eval_data=evals,
                            callbacks=callbacks, augment=make_augmenter(config, normalizer),
                            resume=None if resume_meta is None else resume_meta["fit_position"], verbose=0,
                            sampling_weights=sampling, shard=(world.rank, world.size) if world else None,
                            eval_batch_size=train["eval_batch_size"])
    finally:
        if progress:
            progress.stop()
        if tensorboard is not None:
            tensorboard.close()

    x_test, y_test = data["test"]
    final = model.evaluate(x_test, y_test, batch_size=train["eval_batch_size"])
    finished = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    summary = {
        "epochs": len(finished),
        "final": finished[-1] if finished else {},
        "test_loss": final["loss"],
        "test_accuracy": final["accuracy"],
        "compile_seconds": compile_seconds,
        "first_step_seconds": first_step.seconds,
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "parameters": model.parameter_count(),
        "weights_sha256": weights_sha256(model),
        "normalization": normalizer.state(),
    }
    if boxes:
        summary["report"] = DetectionReport(model, {}, train["eval_batch_size"]).report(x_test, y_test)
    elif target_state is not None and target_state["task"] != "classification":
        summary["report"] = TaskReport(model, {}, target_state, train.get("threshold", 0.5),
                                       train["eval_batch_size"]).report(x_test, y_test)
    elif final["predictions"] is not None:
        names = target_state["classes"] if target_state is not None else dataset_class_names(config)
        classes = num_classes(model)
        report = metrics.classification_report(np.asarray(y_test).reshape(-1), final["predictions"].reshape(-1),
                                               classes, names if names and len(names) == classes else None)
        if dense:
            report["segmentation"] = SegmentationReport(model, {}, train["eval_batch_size"]).report(
                x_test, y_test, final["predictions"])
        summary["report"] = report
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    from numdl.plugins import plugin_manager

    plugin_manager().hook.numdl_on_train_end(summary=summary, run_folder=str(folder))
    return summary
