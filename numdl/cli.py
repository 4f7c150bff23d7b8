"""The ``numdl`` command: a thin shell over library calls. Errors numdl raises on purpose become one
line on stderr and a non-zero exit (2 for config errors), never a traceback."""

import sys
from pathlib import Path

import click

import numdl
from numdl.errors import NumdlError


class RichEpochProgress:
    """A transient rich progress bar per epoch, in samples."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}", BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
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


def _fail(error):
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(numdl.__version__, prog_name="numdl")
def cli():
    """numdl: deep learning whose every hot path is a Numba kernel (CPU @njit, CUDA twins).

    Run `numdl train` to train the embedded default (an MLP on Fashion-MNIST), or
    `numdl COMMAND --help` for any command.
    """


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted key, e.g. --set optimizer.lr=3e-4 or "
                   "--set model.layers.1.out_features=256. Repeatable; applied in order.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for config.toml, metrics.jsonl and summary.json "
                   "(default: a new folder under runs/).")
@click.option("--quiet", is_flag=True, help="No progress bar (epoch lines are still printed).")
def train(config, overrides, out_dir, quiet):
    """Train a model from CONFIG (a TOML file merged over the embedded default), or the default.

    Without CONFIG this trains the reference MLP (784-128-64-10, ReLU, cross-entropy, Adam lr 1e-3,
    batch 64, 10 epochs) on Fashion-MNIST. Prints one line per epoch with train loss, test accuracy
    and samples/s.
    """
    from numdl import config as config_module
    from numdl import train as train_module

    try:
        resolved = config_module.resolve(config, overrides)
        folder = out_dir or train_module.new_run_folder()
        progress = None if quiet or not sys.stdout.isatty() else RichEpochProgress()
        on_line = progress.print if progress else click.echo
        summary = train_module.run(resolved, folder, on_line=on_line, progress=progress)
    except NumdlError as error:
        _fail(error)
    accuracy = summary.get("test_accuracy")
    tail = f"test accuracy {accuracy:.4f}; " if accuracy is not None else ""
    click.echo(f"done: {tail}run folder {folder}")


def main():
    cli()
if __name__ == "__main__":
    main()
