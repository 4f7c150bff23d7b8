"""Pictures of a run folder (``numdl plot RUN``, ``numdl train --plot``), drawn with matplotlib (the
optional extra ``numdl[plot]``), written into ``RUN/plots/``:

``metrics.png``        the loss and every other metric per epoch, one panel each, a line per
                       evaluation set (train, validation, test); the learning rate on a second axis
                       of the loss panel
``confusion.png``      the test set's confusion matrix from summary.json (counts in the cells,
                       colour by the share of the true class), class names on both axes
``misclassified.png``  the test images the best checkpoint gets wrong with the highest confidence,
                       each titled with its true and predicted class (image classifiers only)

Every figure has a fixed size in pixels (FIGURE_PIXELS), whatever the run: tests and web pages can
rely on it.
"""

import json
from pathlib import Path

import numpy as np

from numdl.errors import ConfigError, DataError

DPI = 100
#: (width, height) in pixels of each figure; metrics.png grows by one row of panels per two metrics.
FIGURE_PIXELS = {"metrics_row": (1200, 380), "confusion": (900, 800), "misclassified": (1000, 1100)}
SETS = ("train", "validation", "test")  # the prefixes metrics.jsonl gives each set's values
NOT_METRICS = {"epoch", "epoch_seconds", "samples_per_second", "lr"}
GRID = 5  # misclassified.png shows up to GRID x GRID images


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), or one clear error."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'numdl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_epochs(folder):
    """The epochs of a run folder's metrics.jsonl, as a list of dicts."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{folder} is not a numdl run folder (no metrics.jsonl)")
    epochs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            epochs.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path}, line {number}: not JSON (a damaged file?)") from None
    if not epochs or not all(isinstance(e, dict) and "epoch" in e for e in epochs):
        raise DataError(f"{path} holds no finished epoch to plot")
    return epochs


def metric_series(epochs):
    """{metric: {set: [(epoch, value), ...]}} of every numeric value metrics.jsonl holds, e.g.
    "loss" -> {"train": [...], "test": [...]}; a value without a set prefix is filed under "run"."""
    series = {}
    for entry in epochs:
        for key, value in entry.items():
            if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not np.isfinite(value):
                continue
            where, _, metric = key.partition("_")
            if where not in SETS or not metric:
                where, metric = "run", key
            series.setdefault(metric, {}).setdefault(where, []).append((entry["epoch"], value))
    # the loss first, then accuracy, then the rest by name
    return dict(sorted(series.items(), key=lambda item: ({"loss": 0, "accuracy": 1}.get(item[0], 2), item[0])))


def _figure(plt, pixels, **options):
    width, height = pixels
    return plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI, **options)


def plot_metrics(epochs, path, title):
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    series = metric_series(epochs)
    if not series:
        raise DataError("metrics.jsonl holds no numeric metric to plot")
    rows = -(-len(series) // 2)
    width, row_height = FIGURE_PIXELS["metrics_row"]
    fig, axes = _figure(plt, (width, row_height * rows), nrows=rows, ncols=2, squeeze=False)
    for axis in axes.flat[len(series):]:
        axis.set_visible(False)
    for axis, (metric, by_set) in zip(axes.flat, series.items()):
        for where, points in by_set.items():
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o", markersize=3, label=where)
        axis.set_title(metric.replace("_", " "))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric.replace("_", " "))
        axis.grid(alpha=0.3)
        lines, labels = axis.get_legend_handles_labels()
        if metric == "loss":
            rates = [(e["epoch"], e["lr"]) for e in epochs if isinstance(e.get("lr"), (int, float))]
            if rates:
                second = axis.twinx()
                xs, ys = zip(*rates)
                second.plot(xs, ys, color="grey", linestyle="--", label="learning rate")
                second.set_ylabel("learning rate")
                extra_lines, extra_labels = second.get_legend_handles_labels()
                lines, labels = lines + extra_lines, labels + extra_labels
        axis.legend(lines, labels, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_confusion(matrix, names, path, title):
    plt = pyplot()
    matrix = np.asarray(matrix, np.int64)
    classes = matrix.shape[0]
    names = list(names) if names and len(names) == classes else [str(i) for i in range(classes)]
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    fig, axis = _figure(plt, FIGURE_PIXELS["confusion"])
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axis, label="share of the true class")
    axis.set_xticks(range(classes), names, rotation=45, ha="right")
    axis.set_yticks(range(classes), names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if classes <= 20:
        for i in range(classes):
            for j in range(classes):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if shares[i, j] > 0.5 else "black")
    axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def most_confident_mistakes(probabilities, labels, count):
    """Indices of the wrong predictions with the highest predicted-class probability, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


def plot_mistakes(images, labels, probabilities, names, path, title):
    """Up to GRID x GRID of the most confident mistakes; False when there is none to show."""
    from numdl.images import grey_image

    plt = pyplot()
    chosen = most_confident_mistakes(probabilities, labels, GRID * GRID)
    if len(chosen) == 0:
        return False
    fig, axes = _figure(plt, FIGURE_PIXELS["misclassified"], nrows=GRID, ncols=GRID, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, chosen):
        predicted = int(probabilities[index].argmax())
        axis.imshow(grey_image(images[index]), cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"true: {names[int(labels[index])]}\npredicted: {names[predicted]} "
                       f"({probabilities[index, predicted]:.2f})", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _image_classifier_mistakes(folder, path, title):
    """misclassified.png for an image classifier's run (its best checkpoint on the test set); the
    reason it does not apply otherwise."""
    import numdl
    from numdl import train as train_module
    from numdl.inference import softmax

    checkpoints = Path(folder) / "checkpoints"
    checkpoint = next((checkpoints / name for name in ("best.safetensors", "latest.safetensors")
                       if (checkpoints / name).is_file()), None)
    if checkpoint is None:
        return "no checkpoint in the run folder"
    model, meta = numdl.load_model(checkpoint, reset_optimizer=True, with_meta=True)
    loss = model.loss
    if getattr(loss, "target_kind", None) != "labels" or getattr(loss, "class_axis", -1) != -1:
        return "not an image classifier"
    if "preprocessing" in meta:
        return "a table, not images"
    config = meta["config"]
    data, _, _ = train_module.load_data(config)
    x_test, y_test = data["test"]
    if np.ndim(x_test) not in (3, 4) or np.ndim(y_test) != 1 or (np.ndim(x_test) == 4 and x_test.shape[1] != 1):
        return "not one-channel images with one label each"
    outputs = model.predict(x_test, batch_size=config["train"]["eval_batch_size"])
    names = train_module.dataset_class_names(config) or [str(i) for i in range(outputs.shape[1])]
    if len(names) != outputs.shape[1]:
        names = [str(i) for i in range(outputs.shape[1])]
    if not plot_mistakes(x_test, np.asarray(y_test), softmax(np.asarray(outputs, np.float64)), names, path, title):
        return "no test image is misclassified"
    return None


def plot_run(folder):
    """Write the run folder's plots into ``folder/plots``; returns (written paths, {file: why skipped})."""
    folder = Path(folder)
    pyplot()  # before any work: a missing matplotlib is one line
    epochs = read_epochs(folder)
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    name = folder.resolve().name
    written, skipped = [], {}
    plot_metrics(epochs, out / "metrics.png", f"{name}: metrics per epoch")
    written.append(out / "metrics.png")
    summary_path = folder / "summary.json"
    report = None
    if summary_path.is_file():
        try:
            report = json.loads(summary_path.read_text()).get("report")
        except json.JSONDecodeError:
            raise DataError(f"{summary_path}: not JSON (a damaged file?)") from None
    if isinstance(report, dict) and report.get("confusion_matrix"):
        per_class = report.get("per_class")
        names = list(per_class) if isinstance(per_class, dict) else None
        plot_confusion(report["confusion_matrix"], names, out / "confusion.png", f"{name}: test confusion matrix")
        written.append(out / "confusion.png")
    else:
        skipped["confusion.png"] = "summary.json holds no confusion matrix (an unfinished run, or not a classifier)"
    why = _image_classifier_mistakes(folder, out / "misclassified.png", f"{name}: most confident test mistakes")
    if why is None:
        written.append(out / "misclassified.png")
    else:
        skipped["misclassified.png"] = why
    return written, skipped
