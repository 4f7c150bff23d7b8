"""The ``numdl`` command: a thin shell over library calls. Errors numdl raises on purpose become one
line on stderr and a non-zero exit (2 for config errors), never a traceback."""

import os
import sys
import time
from pathlib import Path

import click

import numdl
from numdl import bench as bench_suites  # NumPy and the standard library only
from numdl.errors import ConfigError, DataError, NumdlError
from numdl.progress import RichEpochProgress


MAX_MESSAGE = 1000  # characters of an error line; values quoted in it are cut where they are made


def _fail(error):
    message = " ".join(str(error).split())  # one line, whatever a message quoted
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "... (cut)"
    _exit(f"error: {message}", error.exit_code)


def _exit(line, code):
    """Print ``line`` and exit with ``code``; under MPI, abort every rank (none may wait for this one
    in a collective)."""
    from numdl import distributed

    world = distributed.world() if distributed.launched_size() > 1 else None
    if world is not None:
        line = f"[rank {world.rank}] {line}"
    click.echo(line, err=True)
    if world is not None:
        sys.stderr.flush()
        world.abort(code)
    sys.exit(code)


class ThreadCount(click.ParamType):
    """``--threads``: a count >= 1, or ``auto``."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        if str(value).isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"expected a thread count >= 1 or 'auto', got {value!r}", param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(numdl.__version__, prog_name="numdl")
@click.option("--threads", type=ThreadCount(), envvar="NUMDL_THREADS",
              help="CPU threads for numdl's kernels and BLAS: a count, or auto (the default): every core, or "
                   "one thread while training runs faster so, as when other processes load the cores (chosen "
                   "by timing as it runs). One pool runs at a time.")
def cli(threads):
    """numdl: deep learning whose every hot path is a Numba kernel (CPU @njit, CUDA twins).

    Run `numdl train` to train the embedded default (an MLP on Fashion-MNIST), or
    `numdl COMMAND --help` for any command.
    """
    numdl.COMMAND_STARTED_AT = time.time()  # start-up figures of an in-process command count from here
    click.get_current_context().obj = {"threads": threads}
    from numdl.distributed import launched_size, local_size

    if not threads and launched_size() > 1:  # ranks on one host split its cores: no oversubscription
        threads = max(1, (os.cpu_count() or 1) // local_size())
    from numdl.backend.cpu import limit_threads

    limit_threads(threads or "auto")


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted key, e.g. --set optimizer.lr=3e-4 or "
                   "--set model.layers.1.out_features=256. Repeatable; applied in order.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for config.toml, metrics.jsonl and summary.json "
                   "(default: a new folder under runs/).")
@click.option("--quiet", is_flag=True, help="No progress bar (epoch lines are still printed).")
@click.option("--resume", "resume", type=click.Path(path_type=Path), metavar="RUN_DIR_OR_FILE",
              help="Continue an interrupted run exactly where it stopped: a numdl run folder (its latest "
                   "checkpoint) or a checkpoint file. The run's own config is used; --set may change only "
                   "train.epochs (to extend a finished run), early stopping and checkpointing.")
@click.option("--reset-optimizer", is_flag=True,
              help="With --resume: start the optimizer afresh when the checkpoint lacks its state "
                   "(otherwise refused: the run would not continue as it was).")
@click.option("--plot", "plot", is_flag=True,
              help="At the end, write the run's plots into RUN/plots (as numdl plot; needs numdl[plot]).")
@click.option("--tensorboard", is_flag=True,
              help="Write TensorBoard event files into RUN/tensorboard (as train.tensorboard = true; "
                   "needs numdl[tensorboard]).")
def train(config, overrides, out_dir, quiet, resume, reset_optimizer, plot, tensorboard):
    """Train a model from CONFIG (a TOML file merged over the embedded default), or the default.

    Without CONFIG this trains the reference MLP (784-128-64-10, ReLU, cross-entropy, Adam lr 1e-3,
    batch 64, 10 epochs) on Fashion-MNIST. Prints one line per epoch with train loss, test accuracy
    and samples/s.
    """
    from numdl import config as config_module
    from numdl import train as train_module

    if tensorboard:
        overrides = (*overrides, "train.tensorboard=true")
    try:
        if resume is not None:
            if config is not None:
                raise ConfigError("--resume continues a run with its own config: drop CONFIG")
            checkpoint, run_folder = train_module.find_resume(resume)
            folder = out_dir or run_folder
            if folder is None:
                raise ConfigError(f"--resume {resume}: the checkpoint is not inside a numdl run folder; give "
                                  f"--out NEW_FOLDER to continue the run there")
            resolved, resume_from = None, checkpoint
        else:
            if reset_optimizer:
                raise ConfigError("--reset-optimizer goes with --resume")
            resolved, resume_from = config_module.resolve(config, overrides), None
            folder = out_dir or train_module.new_run_folder()
        if plot:
            from numdl.plots import pyplot

            pyplot()  # before training: a missing matplotlib is one line now, not after the run
        progress = None if quiet or not sys.stdout.isatty() else RichEpochProgress()
        on_line = progress.print if progress else click.echo
        summary = train_module.run(resolved, folder, on_line=on_line, progress=progress, resume_from=resume_from,
                                   overrides=overrides if resume is not None else (),
                                   reset_optimizer=reset_optimizer)
    except NumdlError as error:
        _fail(error)
    except OSError as error:  # a full disk or a read-only folder while writing the run's files
        _fail(NumdlError(f"cannot write {error.filename or 'the run folder'}: {error.strerror or error}"))
    from numdl import distributed

    if distributed.launched_size() > 1 and distributed.world().rank != 0:
        return  # rank 0 reports
    accuracy = summary.get("test_accuracy")
    tail = f"test accuracy {accuracy:.4f}; " if accuracy is not None else ""
    click.echo(f"done: {tail}run folder {folder}")
    if plot:
        _write_plots(folder)


def _write_plots(folder):
    from numdl.plots import plot_run

    try:
        written, skipped = plot_run(folder)
    except NumdlError as error:
        _fail(error)
    for path in written:
        click.echo(f"wrote {path}")
    for name, why in skipped.items():
        click.echo(f"skipped {name}: {why}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="RUN_DIR")
def plot(run_dir):
    """Plot a run folder into RUN_DIR/plots: metrics.png (loss and every metric per epoch, the learning
    rate on a second axis), confusion.png (the test confusion matrix) and misclassified.png (the test
    images the best checkpoint gets wrong most confidently). Needs matplotlib: pip install 'numdl[plot]'.
    """
    _write_plots(run_dir)


@cli.command(name="plugins")
def list_plugins():
    """List every registered item (layers, losses, optimizers, schedules, datasets, metrics and
    callbacks) with the plugin that registered it and its config keys: each parameter's type and
    default. A name registered twice is reported as an error naming both plugins (exit 2)."""
    from numdl.config import item_parameters, parameter_text
    from numdl.plugins import KINDS, PLURALS, registry

    try:
        items = registry().items
    except NumdlError as error:
        _fail(error)
    for kind in KINDS:
        click.echo(f"{PLURALS[kind]}:")
        for name in sorted(items[kind]):
            entry = items[kind][name]
            click.echo(f"  {name:<28} {entry.source}")
            parameters = item_parameters(entry.cls)
            if parameters:
                click.echo("      " + "; ".join(parameter_text(key, annotation, default)
                                                for key, (annotation, default) in parameters.items()))


@cli.command()
@click.argument("targets", nargs=-1, metavar="[PACKAGE_OR_NAME ...]")
def check(targets):
    """Check plugin items: float64 gradients, CUDA twin under the simulator, PTX compile (no float64
    in float32 kernels), checkpoint round trip, micro-benchmark. Without arguments every item a
    plugin registers is checked; PACKAGE_OR_NAME selects by package (numdl-extras) or item name.
    Exits 1 if any check fails; an item without CUDA kernels is reported CPU-only, not failed."""
    from numdl.check import CHECKS, run_checks

    try:
        rows = run_checks(set(targets))
    except NumdlError as error:
        _fail(error)
    if not rows:
        _fail(ConfigError(f"nothing to check for {' '.join(targets) or 'the installed plugins'}"))
    failed = False
    for kind, name, source, results in rows:
        click.echo(f"{kind} {name}  [{source}]")
        for label, _ in CHECKS:
            passed, text = results[label]
            failed |= not passed
            verdict = ("SKIP" if text.startswith("skipped") else "PASS") if passed else "FAIL"
            click.echo(f"    {label:<11} {verdict}  {text if passed else text[6:]}")
    click.echo("numdl check: " + ("FAILED" if failed else "all checks passed"))
    sys.exit(1 if failed else 0)


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, as for train.")
def warmup(config, overrides):
    """Compile (or load from numba's on-disk cache) every kernel that `numdl train CONFIG` needs, so
    that the training run itself starts at once. Changes nothing else."""
    from numdl import config as config_module
    from numdl import train as train_module

    try:
        resolved = config_module.resolve(config, overrides)
        seconds = train_module.warm_up(resolved)
    except NumdlError as error:
        _fail(error)
    click.echo(f"warmup: the kernels of this config are ready in {seconds:.1f}s (cached on disk for later runs)")


@cli.command()
@click.option("--suite", "suites", multiple=True,
              type=click.Choice(bench_suites.SUITES),
              help="Benchmark suite to run (repeatable; default: all but kernels and contention). kernels: every "
                   "kernel family at two sizes; latency: model.predict on one and eight samples of the MLP, in us "
                   "per call (ratio: the peer's time over numdl's); startup: time to the first step and peak "
                   "memory of numdl train; "
                   "contention: MLP training with one and two busy processes on the machine, numdl's default "
                   "threads against --threads 1, PyTorch and JAX under the same load.")
@click.option("--quick", is_flag=True, help="Fewer samples and repetitions (a smoke run, noisy figures).")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for both numdl and PyTorch (default: every core).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Save results as JSON.")
@click.option("--compare", "baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A saved --json baseline: exit 1 if a case's numdl throughput fell by more than --tolerance.")
@click.option("--tolerance", type=float, default=0.2, show_default=True, help="Allowed relative slowdown.")
@click.pass_obj
def bench(group_options, suites, quick, threads, json_path, baseline, tolerance):
    """Train and infer reference models with numdl and PyTorch side by side (same data, weights,
    batch size, threads) and print samples/s and their ratio. `numdl --threads N bench` limits both
    sides as --threads N does."""
    import json as json_module

    from numdl import bench as bench_module

    threads = threads or (group_options or {}).get("threads")
    if threads == "auto":
        threads = None
    from numdl.backend.cpu import limit_threads

    # A fixed count (every core by default), the same for numdl and its peers; the contention suite
    # runs numdl's --threads auto itself.
    limit_threads(threads or os.cpu_count() or 1)
    report = bench_module.run(suites or bench_module.DEFAULT_SUITES, quick=quick, threads=threads)
    click.echo(bench_module.format_table(report))
    if json_path:
        bench_module.save(report, json_path)
    if baseline:
        slower = bench_module.compare(report, json_module.loads(baseline.read_text()), tolerance)
        for case, now, before in slower:
            click.echo(f"regression: {case}: {now:,.0f} samples/s, baseline {before:,.0f}", err=True)
        if slower:
            sys.exit(1)


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the dataset's files (default: the checkpoint config's data.path or numdl's search).")
def evaluate(checkpoint, data_path):
    """Evaluate CHECKPOINT on its dataset's test split: loss, accuracy, macro F1."""
    from numdl import metrics
    from numdl import train as train_module

    try:
        model, meta = numdl.load_model(checkpoint, reset_optimizer=True, with_meta=True)  # no training here
        config = meta["config"]
        if data_path is not None:
            config["data"]["path"] = str(data_path)
        data, _, _ = train_module.load_data(config)
        x_test, y_test = data["test"]
        result = model.evaluate(x_test, y_test, batch_size=config["train"]["eval_batch_size"])
    except NumdlError as error:
        _fail(error)
    line = f"test_loss {result['loss']:.4f}"
    if getattr(model.loss, "class_axis", -1) == 1:  # segmentation: per-pixel quality
        report = train_module.SegmentationReport(model, {}, config["train"]["eval_batch_size"]).report(
            x_test, y_test, result["predictions"])
        line += (f"  pixel_acc {report['pixel_accuracy']:.4f}  mean_iou {report['mean_iou']:.4f}  "
                 f"mean_dice {report['mean_dice']:.4f}")
    elif getattr(model.loss, "target_kind", None) == "boxes":
        report = train_module.DetectionReport(model, {}, config["train"]["eval_batch_size"]).report(x_test, y_test)
        line += f"  map50 {report['map50']:.4f}  map {report['map']:.4f}"
    elif result["predictions"] is not None:
        line += f"  test_acc {result['accuracy']:.4f}  macro_f1 {metrics.macro_f1(y_test.reshape(-1), result['predictions'].reshape(-1)):.4f}"
    click.echo(line)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("inputs", type=click.Path(path_type=Path), metavar="INPUT")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="CSV file (default: stdout).")
@click.option("--input-range", "input_range", metavar="LOW,HIGH",
              help="The range INPUT's values lie in, e.g. 0,1: mapped linearly onto the range of the model's "
                   "training input. Without it, INPUT clearly outside that range is refused.")
@click.option("--masks", "masks", type=click.Path(file_okay=False, path_type=Path),
              help="Segmentation models: write each sample's class mask as a PNG into this folder.")
@click.option("--draw", "draw", type=click.Path(file_okay=False, path_type=Path),
              help="Detection models: write each sample with its detected boxes drawn as a PNG into this folder.")
@click.option("--min-score", "min_score", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True,
              help="Detection models: the lowest score of a box that is listed and drawn.")
def predict(checkpoint, inputs, output, input_range, masks, draw, min_score):
    """Predict INPUT with CHECKPOINT; one CSV row per sample: its index (or the run's id column), the
    predicted class and the class probabilities (or the raw outputs, or a table's target values).

    For a model trained on a table, INPUT is a CSV or Parquet file of raw rows with the training
    columns (missing values and unseen categories allowed; extra columns are ignored with a note).
    A segmentation model gives each sample's pixel count per class (and, with --masks, its mask as a
    PNG); a detection model one row per box: index, class, name, score, x1, y1, x2, y2 (and, with
    --draw, each sample with its boxes drawn).
    Otherwise INPUT is an .npy array or an IDX file of raw samples, as the training data came (for
    Fashion-MNIST: uint8 pixels 0-255, shape (N, 28, 28), or (N, 784) for a model that starts with
    flatten); numdl applies the training run's normalisation itself. The checkpoint records the
    training input's range; input far from it (e.g. pixels scaled to 0-1) is refused unless
    --input-range states its range.
    """
    from numdl import inference
    from numdl.data import Normalizer

    try:
        stated = None if input_range is None else inference.parse_range(input_range)
        if output is not None and not output.parent.is_dir():
            raise DataError(f"--output {output}: the folder {output.parent} does not exist")
        model, meta = numdl.load_model(checkpoint, reset_optimizer=True, with_meta=True)
        if "preprocessing" in meta:  # a table: raw rows, the run's own per-column steps
            header, rows, ignored = inference.table_predictions(model, meta, inputs,
                                                                meta["config"]["train"].get("threshold"))
            if ignored:
                click.echo(f"note: ignoring column{'s' if len(ignored) > 1 else ''} {', '.join(ignored)} "
                           f"(not used by the model)", err=True)
        else:
            if "normalization" not in meta:
                raise DataError(f"{checkpoint} does not record its input normalisation (not written by numdl train)")
            normalizer = Normalizer.from_state(meta["normalization"], meta["config"]["model"]["dtype"])
            x = inference.shape_for(model, inference.load_samples(inputs), inputs)
            x = inference.match_training_range(x, normalizer.input_range, stated, inputs)
            dense = getattr(model.loss, "class_axis", -1) == 1
            boxes = getattr(model.loss, "target_kind", None) == "boxes"
            for flag, name, fits in ((masks, "--masks", dense), (draw, "--draw", boxes)):
                if flag is not None and not fits:
                    raise DataError(f"{name} is for {'segmentation' if name == '--masks' else 'detection'} models; "
                                    f"{checkpoint} is neither")
                if flag is not None:
                    from numdl.images import pillow

                    pillow()  # before any work: a missing Pillow is one line, not a half-written folder
                    flag.mkdir(parents=True, exist_ok=True)
            outputs = model.predict(normalizer.transform(x))
            from numdl.train import dataset_class_names

            names = dataset_class_names(meta["config"])
            if dense:
                header, rows = inference.mask_predictions(model, outputs, names, masks)
            elif boxes:
                header, rows = inference.box_predictions(model, outputs, names, x, draw, min_score)
            else:
                header, rows = inference.image_predictions(model, outputs)
        text = inference.csv_text(header, rows)
        if output:
            from numdl.fileio import write_text_atomically

            write_text_atomically(output, text)
    except NumdlError as error:
        _fail(error)
    if not output:
        click.echo(text, nl=False)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The ONNX file to write (opset 17, dynamic batch axis).")
def export(checkpoint, onnx_path):
    """Export CHECKPOINT's model to ONNX (needs numdl[onnx]): the graph model.predict computes
    (evaluation mode), with the input normalisation left to the caller as for predict's arrays.
    A layer ONNX cannot express here (recurrent, attention) is named in the error."""
    from numdl.onnx_export import _onnx, export_onnx

    try:
        _onnx()  # before loading anything: a missing package is one line
        model = numdl.load_model(checkpoint, reset_optimizer=True)
        export_onnx(model, onnx_path)
    except NumdlError as error:
        _fail(error)
    click.echo(f"wrote {onnx_path}")


@cli.command(name="import-torch")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("weights", type=click.Path(path_type=Path), metavar="WEIGHTS.safetensors")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (default: WEIGHTS with .numdl.safetensors); numdl eval / predict read it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, as for train.")
@click.option("--no-eval", is_flag=True, help="Skip the test-set evaluation.")
def import_torch(config, weights, out_path, overrides, no_eval):
    """Bring a PyTorch model's weights into numdl: CONFIG describes the same architecture, WEIGHTS is
    its state_dict saved with safetensors (safetensors.torch.save_file(model.state_dict(), path); no
    pickle is ever read). Every PyTorch name is mapped onto a numdl parameter and every shape checked;
    anything unmatched is named. The model is then evaluated on the config's test set (its data
    normalised as the config says: the PyTorch model must have been trained on the same input) and
    saved as a numdl checkpoint."""
    from numdl import config as config_module
    from numdl import train as train_module
    from numdl.checkpoint import read_safetensors
    from numdl.from_torch import from_torch_state_dict

    try:
        resolved = config_module.resolve(config, overrides)
        _, _, state_dict = read_safetensors(weights, "weights file")
        data, normalizer, data_meta = train_module.load_data(resolved)
        x_test, y_test = data["test"]
        model = config_module.build_model(resolved, x_test.shape[1:])
        report = from_torch_state_dict(model, state_dict)
        out_path = out_path or weights.with_name(weights.name.removesuffix(".safetensors") + ".numdl.safetensors")
        if out_path.resolve() == Path(weights).resolve():
            raise ConfigError(f"--out {out_path} would overwrite the PyTorch weights")
        model.save(out_path, meta={"config": resolved, "normalization": normalizer.state(), **data_meta})
        result = None if no_eval else model.evaluate(x_test, y_test, batch_size=resolved["train"]["eval_batch_size"])
    except NumdlError as error:
        _fail(error)
    except OSError as error:
        _fail(NumdlError(f"cannot write {error.filename or out_path}: {error.strerror or error}"))
    click.echo(f"copied {len(report['copied'])} arrays from {weights}; wrote {out_path}")
    if result is not None:
        accuracy = "" if result["accuracy"] is None else f"  test_acc {result['accuracy']:.4f}"
        click.echo(f"test_loss {result['loss']:.4f}{accuracy}")


@cli.command(name="gen-eval")
@click.argument("samples", type=click.Path(path_type=Path), metavar="SAMPLES")
@click.option("--features", "features", type=click.Path(path_type=Path), metavar="CHECKPOINT",
              help="The feature network's checkpoint (default: numdl's, trained once from numdl/features.toml "
                   "into ~/.cache/numdl/features and reused).")
@click.option("--reference", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="The Fashion-MNIST split the samples are compared with.")
@click.option("--data", "data_path", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the Fashion-MNIST files (default: numdl's search, as for train).")
@click.option("--input-range", "input_range", metavar="LOW,HIGH",
              help="The range the samples' pixels lie in (e.g. 0,1 or -1,1), mapped onto the training pixels' "
                   "0-255; without it samples far from 0-255 are refused.")
@click.option("--reference-size", "reference_size", type=click.IntRange(min=2),
              help="Compare with this many images of the split (a seeded random draw; default: all of it).")
@click.option("--subsets", type=click.IntRange(min=1), default=100, show_default=True, help="KID: random subsets.")
@click.option("--subset-size", type=click.IntRange(min=2), default=1000, show_default=True,
              help="KID: samples per subset (fewer when a set is smaller).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of KID's subsets.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also save the figures as JSON.")
def gen_eval(samples, features, reference, data_path, input_range, reference_size, subsets, subset_size, seed,
             json_path):
    """Judge generated Fashion-MNIST images (SAMPLES: an .npy or IDX file of shape (N, 28, 28) or
    (N, 1, 28, 28), pixels as the dataset's 0-255 unless --input-range says otherwise) against a
    Fashion-MNIST split: FID, KID (mean and standard deviation over subsets) on the features of numdl's
    Fashion-MNIST classifier, and the share of the samples it assigns to each class."""
    import json

    import numpy as np

    from numdl import generative, inference
    from numdl.data import load_fashion_mnist

    try:
        stated = None if input_range is None else inference.parse_range(input_range)
        if json_path is not None and not json_path.parent.is_dir():
            raise DataError(f"--json {json_path}: the folder {json_path.parent} does not exist")
        images = generative.check_images(inference.load_samples(samples), str(samples))
        x_train, _, x_test, _ = load_fashion_mnist(data_path)
        checkpoint = features if features is not None else generative.feature_checkpoint(data_path=data_path,
                                                                                          on_line=click.echo)
        network = generative.FeatureNetwork(checkpoint)
        images = inference.match_training_range(images, network.input_range, stated, samples)
        reference_images = x_test if reference == "test" else x_train
        if reference_size is not None and reference_size < len(reference_images):
            drawn = np.random.default_rng(seed).choice(len(reference_images), reference_size, replace=False)
            reference_images = reference_images[np.sort(drawn)]
        result = generative.evaluate_samples(network, images, reference_images, subsets, subset_size, seed)
    except NumdlError as error:
        _fail(error)
    result["reference_split"] = reference
    shares = ", ".join(f"{name} {share:.2f}" for name, share in zip(result["class_names"], result["class_shares"]))
    click.echo(f"FID {result['fid']:.3f}  KID {result['kid']:.5f} +- {result['kid_std']:.5f} "
               f"({subsets} subsets of {result['kid_subset_size']})  {result['samples']} samples against "
               f"{result['reference']} {reference} images")
    click.echo(f"classes of the samples (numdl's classifier): {shares}")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--param", "params", multiple=True, required=True, metavar="KEY=SPACE",
              help="A searched value: loguniform(a,b), uniform(a,b), int(a,b) or choice(v1,v2,...), e.g. "
                   "--param optimizer.lr=loguniform(1e-4,1e-2). Repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Fixed overrides, as for train.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished trials the study should have (a resumed study runs the rest).")
@click.option("--method", type=click.Choice(["grid", "random", "bayes", "gp"]), default="bayes", show_default=True,
              help="grid: every combination of choice() values; random; bayes: Optuna's TPE; gp: Optuna's "
                   "Gaussian-process sampler (a few continuous parameters; needs PyTorch).")
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), default="median", show_default=True,
              help="Stop trials early whose validation metric trails the others' at the same epoch.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trial processes on this machine, sharing its cores (cores / workers threads each).")
@click.option("--storage", metavar="URL",
              help="Study storage: an SQLAlchemy URL (postgresql://... for workers on several machines); "
                   "default: an SQLite file in the study folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Study folder (default: a new runs/tune-... folder). Rerun with the same --out to resume.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("--study", "study_name", default="numdl", show_default=True,
              help="The study's name in the storage (several studies can share one database).")
@click.option("--worker", is_flag=True, hidden=True, help="Run trials only (a process started by --workers).")
def tune(config, params, overrides, trials, method, pruner, workers, storage, out_dir, seed, study_name, worker):
    """Search hyper-parameters of CONFIG (or the default) with Optuna: each trial is a numdl train
    run in its own folder under the study folder, scored on validation data; prints a ranked table
    and writes the best trial's config as best.toml."""
    import subprocess

    from numdl import tune as tune_module
    from numdl import train as train_module

    from numdl import distributed

    world = distributed.world() if distributed.launched_size() > 1 else None  # mpirun: a worker per rank
    try:
        parsed = [tune_module.parse_param(p) for p in params]
        monitor, direction = tune_module.objective_of(tune_module.search_config(config, overrides))
        folder = out_dir or train_module.new_run_folder(prefix="tune-")
        if world is not None:
            if workers > 1:
                raise ConfigError("--workers: under mpirun every rank is a worker already; drop --workers")
            folder = world.agree(str(folder))  # rank 0's study folder for every rank
            seed, worker = seed + world.rank, worker or world.rank != 0
            if world.rank == 0:  # create the study before the others open it
                tune_module.make_study(folder, storage, method, parsed, pruner, seed, direction, study_name)
            world.comm.Barrier()
        if workers > 1:  # K processes on one study; each runs trials until the study has enough
            threads = tune_module.worker_threads(workers)
            command = [sys.executable, "-m", "numdl.cli", "--threads", str(threads), "tune", *(
                [str(config)] if config else []), *[f"--param={p}" for p in params],
                *[f"--set={o}" for o in overrides], "--trials", str(trials), "--method", method,
                "--pruner", pruner, "--out", str(folder), "--study", study_name,
                *(["--storage", storage] if storage else [])]
            tune_module.make_study(folder, storage, method, parsed, pruner, seed, direction, study_name)
            children = [subprocess.Popen(command + ["--seed", str(seed + k), "--worker"]) for k in range(workers)]
            codes = [child.wait() for child in children]
            if any(codes):
                raise NumdlError(f"{sum(1 for c in codes if c)} of {workers} tune workers failed")
            study = tune_module.make_study(folder, storage, method, parsed, pruner, seed, direction, study_name)
        else:
            study = tune_module.run_search(config, overrides, parsed, folder, trials, method, storage, pruner, seed,
                                           on_line=click.echo, name=study_name)
            if world is not None:
                world.comm.Barrier()  # every rank's trials are in the study before rank 0 ranks them
            if worker:
                return
        rows = tune_module.ranked(study)
        best = tune_module.write_best(study, folder)
    except NumdlError as error:
        _fail(error)
    click.echo(f"{'rank':>4} {'trial':>5} {monitor:>20} {'state':>9}  values")
    for rank, number, value, state, assignments, _ in rows:
        shown = f"{value:.4f}" if value is not None else "-"
        click.echo(f"{rank:>4} {number:>5} {shown:>20} {state:>9}  {'  '.join(assignments)}")
    click.echo(f"study folder {folder}" + (f"; best config {best} (numdl train {best})" if best else ""))


def main():
    add_plugin_commands(cli)
    try:
        cli()
    except Exception as error:  # a bug, or an input nobody foresaw: still one line, unless asked
        if os.environ.get("NUMDL_DEBUG"):
            raise
        _exit(f"error: unexpected {type(error).__name__}: {' '.join(str(error).split())[:MAX_MESSAGE]} "
              f"(NUMDL_DEBUG=1 shows the traceback; please report it)", 1)


def add_plugin_commands(group):
    """Let every plugin add its commands to ``group``, one plugin at a time so that a name already
    taken is reported with the plugin that tried to take it (one line, exit 2)."""
    from numdl.plugins import plugin_manager, source_name

    manager = plugin_manager()
    builtin = set(group.commands)
    try:
        for impl in manager.hook.numdl_register_commands.get_hookimpls():
            impl.function(cli=_GuardedGroup(group, builtin, source_name(manager, impl.plugin)))
    except NumdlError as error:
        _fail(error)


class _GuardedGroup:
    """What numdl_register_commands receives: the click group, refusing a name already taken."""

    def __init__(self, group, builtin, source="a plugin"):
        self._group, self._builtin, self._source = group, builtin, source

    def add_command(self, command, name=None):
        name = name or command.name
        if name in self._group.commands:
            from numdl.errors import RegistryError

            raise RegistryError(f"plugin {self._source} tried to add the command {name!r}, which numdl"
                                f"{' itself' if name in self._builtin else ' or another plugin'} already has")
        self._group.add_command(command, name)

    def __getattr__(self, attribute):
        return getattr(self._group, attribute)


if __name__ == "__main__":
    main()
