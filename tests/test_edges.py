"""Issue 12: trust at the edges. Each bad input gets one line naming the problem and a non-zero exit
(2 for config errors), no user file outside a run folder is written, no checkpoint is written from
non-finite numbers, and nothing loaded from a checkpoint differs from what was saved."""

import json
import os
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

import numdl
from helpers import invoke_cli, separable_images, write_fashion_like
from numdl.checkpoint import read_checkpoint
from numdl.cli import cli
from numdl.errors import CheckpointError


_cli = invoke_cli  # the numdl command, in-process


def _one_line(result, code, needle):
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run of the default MLP on synthetic Fashion-MNIST files (2 epochs)."""
    root = tmp_path_factory.mktemp("edges")
    data = write_fashion_like(root / "data", n_train=256, n_test=64)
    run = root / "run"
    result = _cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", "train.epochs=2",
                  "--set", "train.batch_size=32", "--out", run)
    assert result.exit_code == 0, result.output
    return run, data


def _copy_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    return run


def _rewrite(path, tensors=None, meta=None):
    """Write a checkpoint with the given tensors and numdl metadata (defaults: the file's own)."""
    loaded, original = load_file(path), read_checkpoint(path)[1]
    save_file(loaded if tensors is None else tensors(loaded),
              str(path), metadata={"numdl": json.dumps(original if meta is None else meta(original))})


# ------------------------------------------------------------------- 1. --resume writes only into runs
def test_resume_refuses_a_checkpoint_outside_a_run_folder_and_writes_nothing(finished_run, tmp_path):
    project = tmp_path / "proj"
    (project / "models").mkdir(parents=True)
    shutil.copy(finished_run[0] / "checkpoints" / "latest.safetensors", project / "models" / "model.safetensors")
    (project / "config.toml").write_text("mine = 1\n")
    (project / "summary.json").write_text("{}")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    _one_line(_cli("train", "--resume", project / "models" / "model.safetensors"), 2, "not inside a numdl run folder")
    _one_line(_cli("train", "--resume", project), 2, "not a numdl run folder")
    _one_line(_cli("train", "--out", project), 2, "is not a numdl run folder")
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def test_a_run_can_be_extended_but_not_changed_on_resume(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    _one_line(_cli("train", "--resume", run, "--set", "model.layers.1.out_features=7"), 2, "only train.epochs")
    result = _cli("train", "--quiet", "--resume", run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_torn_last_metrics_line_is_dropped_on_resume(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a kill during the append
    result = _cli("train", "--quiet", "--resume", run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


# ------------------------------------------------------------ 2. never a checkpoint of NaN/Inf numbers
def test_no_checkpoint_is_written_from_non_finite_weights(tmp_path):
    from numdl.train import Checkpointer

    model = numdl.Sequential([numdl.Flatten(), numdl.Linear(3)], input_shape=(2, 2)).compile("cross_entropy", "adam")
    model.train_step(np.ones((4, 2, 2), np.float32), np.array([0, 1, 2, 0]))
    model.fit_position = {"epoch": 1, "step": 1, "epoch_rng_state": {}, "total_loss": 0.0, "correct": 0,
                          "counted": 0}
    saver = Checkpointer(tmp_path, model, {}, every_steps=1)
    saver.on_batch_end(0, {})
    latest = tmp_path / "checkpoints" / "latest.safetensors"
    good = latest.read_bytes()
    model.parameters()[0].value[0, 1] = np.inf
    model.fit_position["step"] = 2
    with pytest.raises(numdl.NumdlError, match="epoch 1, step 2: param/1.linear.weight is not finite"):
        saver.on_batch_end(1, {})
    assert latest.read_bytes() == good
    model.optimizer.state[0]["exp_avg_sq"][0, 0] = np.nan
    model.parameters()[0].value[0, 1] = 0.0
    with pytest.raises(CheckpointError, match="optim/0/exp_avg_sq holds NaN or Inf"):
        model.save(tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()


# ----------------------------------------------------------------- 3. missing optimizer state refused
def test_resume_without_optimizer_state_is_refused_unless_reset(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    latest = run / "checkpoints" / "latest.safetensors"
    _rewrite(latest, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("optim/")})
    _one_line(_cli("train", "--resume", run, "--set", "train.epochs=3"), 1, "the state of optimizer 'adam'")
    result = _cli("train", "--quiet", "--resume", run, "--set", "train.epochs=3", "--reset-optimizer")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------ 4. loading never casts or accepts bad numbers
@pytest.mark.parametrize("change, needle", [
    (lambda t: {**t, "param/1.linear.weight": t["param/1.linear.weight"].astype(np.float16)},
     "wrong dtype: param/1.linear.weight float16 vs model float32"),
    (lambda t: {**t, "param/1.linear.bias": np.zeros(t["param/1.linear.bias"].shape, np.uint8)},
     "wrong dtype: param/1.linear.bias uint8"),
    (lambda t: {**t, "param/1.linear.bias": np.full(t["param/1.linear.bias"].shape, 1e300)}, "float64 vs model float32"),
    (lambda t: {**t, "param/3.linear.weight": np.where(t["param/3.linear.weight"] > 0, np.nan,
                                                        t["param/3.linear.weight"]).astype(np.float32)},
     "NaN or Inf in: param/3.linear.weight"),
    (lambda t: {**t, "param/9.extra.weight": np.zeros(3, np.float32)}, "unexpected: param/9.extra.weight"),
    (lambda t: {**t, "optim/99/exp_avg": np.zeros(3, np.float32)}, "unexpected: optim/99/exp_avg"),
    (lambda t: {**t, "optim/0/momentum": t["optim/0/exp_avg"]}, "unexpected: optim/0/momentum"),
])
def test_loading_refuses_cast_non_finite_and_unknown_tensors(finished_run, tmp_path, change, needle):
    path = tmp_path / "bad.safetensors"
    shutil.copy(finished_run[0] / "checkpoints" / "latest.safetensors", path)
    _rewrite(path, tensors=change)
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(")):
        numdl.load_model(path)
    _one_line(_cli("eval", path, "--data", finished_run[1]), 1, needle)


# ------------------------------------------------------------- 5. input outside the training range
def test_predict_refuses_input_outside_the_training_range_unless_stated(finished_run, tmp_path):
    images, _ = separable_images(20, 3)
    raw, scaled = tmp_path / "raw.npy", tmp_path / "scaled.npy"
    np.save(raw, images)
    np.save(scaled, images / 239.0)  # the synthetic training pixels span 0..239
    expected = _cli("predict", finished_run[0] / "checkpoints" / "best.safetensors", raw)
    assert expected.exit_code == 0, expected.stderr
    checkpoint = finished_run[0] / "checkpoints" / "best.safetensors"
    _one_line(_cli("predict", checkpoint, scaled), 1, "values lie in [0, 1] but the model was trained on input in [0, 239]")
    stated = _cli("predict", checkpoint, scaled, "--input-range", "0,1")
    classes = [[line.split(",")[1] for line in result.stdout.splitlines()] for result in (stated, expected)]
    assert stated.exit_code == 0 and classes[0] == classes[1]
    assert "0-255" in _cli("predict", "--help").stdout
    _one_line(_cli("predict", checkpoint, scaled, "--input-range", "1"), 1, "expected LOW,HIGH")
    broken = tmp_path / "nan.npy"  # predict looks for NaN batch by batch: the sample is still named
    np.save(broken, np.where(np.arange(images.size).reshape(images.shape) == 15 * images[0].size + 7, np.nan, images))
    _one_line(_cli("predict", checkpoint, broken), 1, "input data contains NaN or Inf (first at sample 15)")


# ---------------------------------------------------------------- 6. a finite but diverged loss stops
def test_a_diverging_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    result = _cli("train", "--quiet", "--set", f"data.path='{finished_run[1]}'", "--set", "optimizer.lr=1e6",
                  "--set", "train.epochs=2", "--set", "train.checkpoint_every=1", "--out", run)
    _one_line(result, 1, "times the run's first loss")
    assert "training diverged at epoch 1, step" in result.stderr
    for path in (run / "checkpoints").glob("*.safetensors"):
        assert all(np.isfinite(v).all() for v in load_file(path).values())
    off = _cli("train", "--quiet", "--set", f"data.path='{finished_run[1]}'", "--set", "train.epochs=1",
               "--set", "train.divergence_factor=0", "--set", "optimizer.lr=10.0", "--out", tmp_path / "off")
    assert "times the run's first loss" not in off.stderr


# ------------------------------------------------------------- config values: exit 2, the key named
@pytest.mark.parametrize("setting, needle", [
    ("optimizer.lr=inf", "optimizer.lr: expected a finite number"),
    ("optimizer.lr=nan", "optimizer.lr: expected a finite number"),
    ("seed=-1", "seed: must be >= 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0"),
    ("train.divergence_factor=-2.0", "train.divergence_factor: must be >= 0"),
    ("train.monitor='test_macro_f1'", "train.monitor: the run does not report 'test_macro_f1'"),
])
def test_bad_config_values_are_one_line_and_exit_2(setting, needle, tmp_path):
    _one_line(_cli("train", "--set", setting, "--out", tmp_path / "r"), 2, needle)
    assert not (tmp_path / "r").exists()


def test_monitor_direction_comes_from_the_metric():
    from numdl.train import EarlyStopping, higher_is_better

    assert higher_is_better("test_macro_f1") and higher_is_better("validation_accuracy")
    assert not higher_is_better("test_loss") and not higher_is_better("validation_loss")

    class Model:
        stop_training = False

    model = Model()
    stopper = EarlyStopping(model, "test_macro_f1", patience=1, on_line=lambda line: None)
    for epoch, f1 in enumerate((0.3, 0.4, 0.5, 0.6), 1):
        stopper.on_epoch_end(epoch, {"test_macro_f1": f1})
    assert not model.stop_training and stopper.best == 0.6


# --------------------------------------------------------------- checkpoint metadata: schema checked
@pytest.mark.parametrize("field, value, needle", [
    ("optimizer.steps", "abc", "optimizer.steps must be an integer"),
    ("config", "a string", "config must be a table"),
    ("input_shape", "28x28", "input_shape must be a list"),
    ("input_shape", [100000, 100000], "input_shape must be at most"),
    ("normalization", "x", "normalization must be a table"),
    ("fit_position.epoch", -1, "fit_position.epoch must be an integer >= 1"),
    ("fit_position.step", 1e9, "fit_position.step must be an integer >= 0"),
])
def test_malformed_metadata_is_refused_before_anything_is_built(finished_run, tmp_path, field, value, needle):
    path = tmp_path / "meta.safetensors"
    shutil.copy(finished_run[0] / "checkpoints" / "latest.safetensors", path)

    def change(meta):
        target, *rest = field.split(".")
        if rest:
            meta[target][rest[0]] = value
        else:
            meta[target] = value
        return meta

    _rewrite(path, meta=change)
    with pytest.raises(CheckpointError, match=needle):
        numdl.load_model(path)
    _one_line(_cli("eval", path), 1, needle)


def test_a_resume_position_past_the_epoch_is_refused(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)

    def far(meta):
        meta["fit_position"]["step"] = 10 ** 6
        return meta

    _rewrite(run / "checkpoints" / "latest.safetensors", meta=far)
    _one_line(_cli("train", "--resume", run, "--set", "train.epochs=3"), 1, "lies outside an epoch of")


# ----------------------------------------------------------------------- files that are not files
def test_fifos_devices_and_huge_headers_are_refused_without_reading(finished_run, tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    _one_line(_cli("eval", fifo), 1, "not a regular file")
    _one_line(_cli("predict", fifo, fifo), 1, "not a regular file")
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    _one_line(_cli("eval", zero), 1, "not a regular file")
    sparse = tmp_path / "sparse.safetensors"
    with open(sparse, "wb") as f:
        f.write(struct.pack("<Q", 6 << 30))
        f.truncate(6 << 30)  # 6 GB of holes: the header claims it all
    _one_line(_cli("eval", sparse), 1, "runs past the end of the file or the")
    with pytest.raises(CheckpointError):
        numdl.load_model(fifo)


# ------------------------------------------------------------------------- predict's input and output
def test_predict_input_is_checked_and_shaped(finished_run, tmp_path):
    checkpoint = finished_run[0] / "checkpoints" / "best.safetensors"
    images, _ = separable_images(6, 4)
    cases = {
        "strings.npy": (np.array(["a", "b"]), "holds <U1 values"),
        "complex.npy": (np.ones((2, 28, 28), np.complex64), "holds complex64 values"),
        "dates.npy": (np.array(["2026-01-01"] * 2, dtype="datetime64[D]"), "holds datetime64[D] values"),
        "one.npy": (images[0], "without a batch axis"),
        "wrong.npy": (np.zeros((2, 5, 5), np.uint8), "samples of shape (5, 5), but the model expects (28, 28)"),
        "empty.npy": (np.zeros((0, 28, 28), np.uint8), "no samples"),
    }
    for name, (array, needle) in cases.items():
        np.save(tmp_path / name, array)
        _one_line(_cli("predict", checkpoint, tmp_path / name), 1, needle)
    huge = tmp_path / "huge.npy"
    np.save(huge, images)
    header = bytearray(huge.read_bytes())
    text = header[10:10 + struct.unpack("<H", header[8:10])[0]].decode()
    claimed = text.replace("(6, 28, 28)", f"({10 ** 12}, 28, 28)")
    huge.write_bytes(bytes(header[:8]) + struct.pack("<H", len(claimed)) + claimed.encode() + bytes(header[10 + len(text):]))
    _one_line(_cli("predict", checkpoint, huge), 1, "not a plain .npy array")
    flat = tmp_path / "flat.npy"
    np.save(flat, images.reshape(6, 784))
    np.save(tmp_path / "square.npy", images)
    assert _cli("predict", checkpoint, flat).stdout == _cli("predict", checkpoint, tmp_path / "square.npy").stdout
    _one_line(_cli("predict", checkpoint, flat, "--output", tmp_path / "missing" / "out.csv"), 1, "does not exist")
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------- shape chains and sizes: exit 2, layer named
@pytest.mark.parametrize("layers, needle", [
    ("[{type='conv2d', out_channels=4, kernel_size=3}]", "model.layers.0 (conv2d): layer 'conv2d' expects inputs"),
    ("[{type='reshape', shape=[1, 28, 28]}, {type='conv2d', out_channels=4, kernel_size=40}]",
     "model.layers.1 (conv2d): layer 'conv2d': input 28x28 is too small"),
    ("[{type='reshape', shape=[5, 5]}]", "model.layers.0 (reshape): layer 'reshape' cannot reshape"),
    ("[{type='linear', out_features=10}]", "model.layers.0 (linear) gives each sample outputs of shape (28, 10)"),
    ("[{type='flatten'}, {type='linear', out_features=10000000000}]",
     "model.layers.1 (linear): its parameters for input (784,) do not fit in memory"),
])
def test_impossible_models_are_config_errors_naming_the_layer(finished_run, tmp_path, layers, needle):
    result = _cli("train", "--set", f"data.path='{finished_run[1]}'", "--set", f"model.layers={layers}",
                  "--out", tmp_path / "r")
    _one_line(result, 2, needle)


def test_config_files_that_are_not_configs_are_one_line(finished_run, tmp_path):
    nested = tmp_path / "nested.toml"
    nested.write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    _one_line(_cli("train", nested), 2, "nested too deeply")
    big = tmp_path / "big.toml"
    big.write_text('[optimizer]\nlr = "' + "a" * 2_000_000 + '"\n')
    _one_line(_cli("train", big), 2, "a config is at most")
    long_value = tmp_path / "long.toml"
    long_value.write_text('[optimizer]\nlr = "' + "a" * 500_000 + '"\n')
    result = _cli("train", long_value)
    _one_line(result, 2, "optimizer.lr: expected a number")
    assert len(result.stderr) < 300
    _one_line(_cli("train", "--set", f"data.path='{finished_run[1]}'", "--set", "loss.weight=[1.0, 2.0]",
                   "--out", tmp_path / "w"), 2, "loss.weight: has 2 entries but the model gives 10 classes")


def test_empty_training_data_is_named(tmp_path):
    from numdl.data import write_idx

    folder = tmp_path / "empty"
    folder.mkdir()
    for stem, array in (("train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
                        ("train-labels-idx1-ubyte", np.zeros(0, np.uint8)),
                        ("t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))):
        write_idx(folder / f"{stem}.gz", array)
    _one_line(_cli("train", "--set", f"data.path='{folder}'", "--out", tmp_path / "r"), 1,
              "data 'fashion_mnist': the train split has no samples")


def test_a_duplicate_plugin_name_is_reported_as_such(tmp_path):
    from numdl import plugins
    from numdl.layers import ReLU

    class Clash:
        @numdl.hookimpl
        def numdl_register_layers(self):
            return [type("OtherReLU", (ReLU,), {"name": "relu"})]

    clash = Clash()
    plugins.plugin_manager().register(clash, name="clash")
    plugins._registry = None
    try:
        result = _cli("train", "--out", tmp_path / "r")
        _one_line(result, 2, "duplicate layer name 'relu': registered by numdl and by clash")
        assert "loss.type" not in result.stderr
    finally:
        plugins.plugin_manager().unregister(clash)
        plugins._registry = None


def test_writes_to_devices_and_missing_folders_are_refused(finished_run, tmp_path):
    checkpoint = finished_run[0] / "checkpoints" / "best.safetensors"
    images, _ = separable_images(2, 4)
    np.save(tmp_path / "x.npy", images)
    _one_line(_cli("predict", checkpoint, tmp_path / "x.npy", "--output", "/dev/null"), 1,
              "exists and is not a regular file")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


# ------------------------------------------------------------------- the Python API as documented
def test_a_model_made_in_python_saves_its_architecture_for_load_model(tmp_path):
    layers = [numdl.Reshape([1, 8, 8]), numdl.Conv2d(4, 3, padding=1), numdl.BatchNorm2d(), numdl.ReLU(),
              numdl.MaxPool2d(2), numdl.Residual([numdl.Conv2d(4, 3, padding=1), numdl.ReLU()]),
              numdl.Flatten(), numdl.Dropout(0.1), numdl.Linear(16), numdl.GELU(), numdl.LayerNorm(), numdl.Linear(3)]
    model = numdl.Sequential(layers, input_shape=(64,), seed=3)
    model.compile(numdl.CrossEntropy(label_smoothing=0.1), numdl.AdamW(lr=3e-3, weight_decay=0.05))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 64)), rng.integers(0, 3, 32)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.safetensors")
    clone = numdl.load_model(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    assert clone.loss.label_smoothing == 0.1 and clone.optimizer.weight_decay == 0.05
    assert clone.optimizer.steps == model.optimizer.steps
    assert model.train_step(x[:8].astype(np.float32), y[:8]) == clone.train_step(x[:8].astype(np.float32), y[:8])


def test_fit_reports_each_epoch_as_keras_does(capsys):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.integers(0, 2, 40)
    model = numdl.Sequential([numdl.Linear(2)], input_shape=(5,)).compile("cross_entropy", "adam")
    model.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_acc" in lines[0] and "samples/s" in lines[0]
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
    with pytest.raises(numdl.ConfigError, match="verbose must be"):
        model.fit(x, y, verbose=3)


def test_gradient_check_messages_print_plain_indices():
    from numdl.testing import check_layer_gradients

    class Wrong(numdl.Layer):
        name = "wrong"

        def forward(self, x, training=False):
            return x * 2

        def backward(self, dout):
            return dout * 3

    with pytest.raises(AssertionError) as failure:
        check_layer_gradients(Wrong(), (2,))
    assert "at index (0, 0)" in str(failure.value) and "np.int64" not in str(failure.value)


def test_the_progress_bar_title_is_text_not_markup():
    import io

    from rich.console import Console

    from numdl.progress import RichEpochProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    bar = RichEpochProgress(console)
    bar.start(3, 10)
    bar.begin(1)
    bar.advance(5)
    bar._progress.refresh()
    shown = console.file.getvalue()
    bar.stop()
    assert "epoch 1/3" in shown and "[bold]" not in shown


def test_first_step_time_counts_from_numdls_start_not_the_parent_shell(finished_run, tmp_path):
    import subprocess
    import sys

    import time

    run = tmp_path / "run"
    command = (f"sleep 3 && exec {sys.executable} -m numdl.cli train --quiet --set \"data.path='{finished_run[1]}'\" "
               f"--set train.epochs=1 --out {run}")
    start = time.monotonic()
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=600)
    after_the_sleep = time.monotonic() - start - 3
    first = json.loads((run / "summary.json").read_text())["first_step_seconds"]
    # counted from the process's start, it held the 3 s sleep: more than all the time after it
    assert 0 < first < after_the_sleep


def test_plugins_lists_every_kind_and_each_items_config_keys():
    result = _cli("plugins")
    assert result.exit_code == 0
    heads = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert heads == ["layers:", "losses:", "optimizers:", "schedules:", "datasets:", "metrics:", "callbacks:"]
    assert "out_features: int (required); bias: bool = true" in result.stdout
    assert "lr: float = 0.001" in result.stdout
    help_text = _cli("plugins", "--help").stdout
    for kind in ("datasets", "metrics", "callbacks"):
        assert kind in help_text


def test_threads_before_bench_limit_both_sides(monkeypatch):
    from numdl import bench

    seen = {}

    def fake_run(suites, quick, threads):
        seen["threads"] = threads
        return {"threads": threads, "repeats": 1, "results": [], "peak_rss_mib": 1.0, "torch": False}

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr("numdl.backend.cpu.limit_threads", lambda count: seen.setdefault("limited", count))  # (the real one would pin this process's pools)
    result = CliRunner().invoke(cli, ["--threads", "1", "bench", "--suite", "mlp"])
    assert result.exit_code == 0, result.output
    assert seen["threads"] == 1 and seen["limited"] == 1
    assert "pip install 'numdl[bench]'" in result.output


def test_a_full_disk_during_a_run_is_one_line_and_leaves_no_partial_file(finished_run, tmp_path, monkeypatch):
    import errno

    from numdl import checkpoint

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)  # the first checkpoint write hits a full disk
    run = tmp_path / "run"
    result = _cli("train", "--quiet", "--set", f"data.path='{finished_run[1]}'", "--set", "train.epochs=1",
                  "--out", run)
    _one_line(result, 1, "epoch-0001.safetensors: No space left on device")
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".numdl-tmp")]
    monkeypatch.undo()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr("pathlib.Path.write_text", read_only)
    _one_line(_cli("train", "--set", f"data.path='{finished_run[1]}'", "--out", tmp_path / "ro"), 1,
              "Read-only file system")


def test_an_unforeseen_error_is_still_one_line_unless_debugging():
    import subprocess
    import sys

    code = ("import sys, click\nimport numdl.cli as c\n"
            "c.cli.add_command(click.Command('boom', callback=lambda: 1 / 0))\n"
            "sys.argv = ['numdl', 'boom']\nc.main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: unexpected ZeroDivisionError: division by zero (NUMDL_DEBUG=1")
    debug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, NUMDL_DEBUG="1"))
    assert "Traceback" in debug.stderr


def test_import_numdl_and_a_single_process_run_never_touch_mpi(finished_run, tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom numdl.cli import cli\n"
            "try:\n    cli(['train', '--quiet', '--set', sys.argv[1], '--set', 'train.epochs=1', '--out', sys.argv[2]])\n"
            "except SystemExit:\n    pass\n"
            "print('mpi4py' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, f"data.path='{finished_run[1]}'", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if "OMPI" not in k and "PMI" not in k})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr[-1000:]
