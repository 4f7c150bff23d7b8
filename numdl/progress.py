"""What training shows while it runs: the one-line epoch report and a live progress bar (rich).

``numdl train`` and ``Sequential.fit(verbose=...)`` share both, so a run looks the same either way.
"""

import sys


# What tables add to an epoch's line (see numdl.train.TaskReport): (key in the logs, label).
TASK_FIGURES = (("macro_f1", "f1"), ("recall", "recall"), ("subset_accuracy", "subset_acc"),
                ("hamming_loss", "hamming"), ("micro_f1", "micro_f1"), ("mae", "mae"), ("rmse", "rmse"),
                ("r2", "r2"), ("mean_iou", "miou"), ("mean_dice", "dice"), ("map50", "map50"), ("map", "map"),
                ("kl", "kl"))  # a VAE's KL term (gaussian_sample)


def format_epoch(logs, epochs):
    parts = [f"epoch {logs['epoch']}/{epochs}", f"train_loss {logs['train_loss']:.4f}"]
    if logs.get("train_accuracy") is not None:
        parts.append(f"train_acc {logs['train_accuracy']:.4f}")
    for name in ("validation", "val", "test"):
        if f"{name}_loss" in logs:
            parts.append(f"{name}_loss {logs[f'{name}_loss']:.4f}")
            if logs.get(f"{name}_accuracy") is not None:
                parts.append(f"{name}_acc {logs[f'{name}_accuracy']:.4f}")
            for key, label in TASK_FIGURES:
                value = logs.get(f"{name}_{key}")
                if isinstance(value, list):
                    parts.append(f"{name}_{label} " + "/".join(f"{v:.2f}" for v in value))
                elif value is not None:
                    parts.append(f"{name}_{label} {value:.4f}")
    parts.append(f"{logs['samples_per_second']:,.0f} samples/s")
    parts.append(f"{logs['epoch_seconds']:.1f}s")
    return "  ".join(parts)


class RichEpochProgress:
    """A transient rich progress bar per epoch, in samples."""

    def __init__(self, console=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # A styled column, not "[bold]..." markup in a format string: that was printed literally.
        title = TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}", style="bold", markup=False)
        self._progress = Progress(title, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                                  console=console)
        self._task = None

    def start(self, epochs, samples):
        self.epochs, self.samples = epochs, samples
        self._progress.start()

    def begin(self, epoch):
        self._task = self._progress.add_task("train", total=self.samples, epoch=epoch, epochs=self.epochs)

    def advance(self, count):
        self._progress.advance(self._task, count)

    def end(self):
        self._progress.remove_task(self._task)

    def stop(self):
        self._progress.stop()

    def print(self, line):
        """Print above the live bar (a plain print would tear it)."""
        self._progress.console.print(line, highlight=False, markup=False, soft_wrap=True)


class FitReporter:
    """fit callback behind ``verbose``: 1 a progress bar per epoch (in a terminal) and the epoch
    line, 2 the epoch line alone."""

    def __init__(self, verbose, epochs, samples, print_line=print):
        self.epochs, self.print_line = epochs, print_line
        self.bar = RichEpochProgress() if verbose == 1 and sys.stdout.isatty() else None
        if self.bar is not None:
            self.bar.start(epochs, samples)
            self.print_line = self.bar.print

    def on_epoch_begin(self, epoch, model):
        if self.bar is not None:
            self.bar.begin(epoch)

    def on_batch_end(self, batch, logs):
        if self.bar is not None:
            self.bar.advance(logs["size"])

    def on_epoch_end(self, epoch, logs):
        if self.bar is not None:
            self.bar.end()
        self.print_line(format_epoch(logs, self.epochs))

    def close(self):
        if self.bar is not None:
            self.bar.stop()
