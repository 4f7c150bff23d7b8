"""The examples run: every config in examples/ is valid, and the custom-loop scripts learn."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_fashion_like
from numdl import config

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCENE_CONFIGS = {"unet.toml": (11, 64, 64), "detector.toml": (14, 16, 16)}  # their outputs on 64x64 scenes
AUTOENCODER_CONFIGS = {"conv_autoencoder.toml", "conv_vae.toml"}  # images out: (1, 28, 28)
IMAGE_CONFIGS = sorted(p for p in EXAMPLES.glob("*.toml") if not p.name.startswith("table_")
                       and p.name not in SCENE_CONFIGS)
TABLE_CONFIGS = sorted(EXAMPLES.glob("table_*.toml"))


@pytest.mark.parametrize("name", sorted(SCENE_CONFIGS))
def test_scene_configs_are_valid_and_build(name):
    model = config.build_model(config.resolve(EXAMPLES / name), (1, 64, 64))
    assert model.output_shape == SCENE_CONFIGS[name]


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda p: p.name)
def test_example_configs_are_valid_and_build(path):
    if "lion" in path.read_text():
        pytest.importorskip("numdl_extras", reason="examples/extras.toml needs plugins/numdl-extras installed")
    resolved = config.resolve(path)
    model = config.build_model(resolved, (28, 28))
    assert model.output_shape == ((1, 28, 28) if path.name in AUTOENCODER_CONFIGS else (10,))


def test_gan_example_matches_the_target_distribution():
    mean, std = _load("gan").main(["--steps", "1500"])
    assert abs(mean - 4.0) < 0.5 and 0.6 < std < 2.0


def test_autoencoder_example_reduces_reconstruction_error(tmp_path):
    data = write_fashion_like(tmp_path, n_train=256, n_test=64)
    before, after = _load("autoencoder").main(["--steps", "60", "--batch-size", "32", "--data", str(data)])
    assert after < 0.7 * before


def test_char_lm_learns_below_unigram_entropy_and_samples(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 40)
    entropy, loss = _load("char_lm").main(["--text", str(text), "--steps", "150", "--window", "24", "--hidden", "48",
                                           "--sample", "40"])
    assert loss < 0.6 * entropy
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("the cat sat on the m") and len(printed) >= 50


def test_forecast_beats_the_naive_forecast(tmp_path):
    rmse, naive = _load("forecast").main(["--epochs", "8"])
    assert rmse < naive


def test_extras_example_trains_with_the_plugin_items(tmp_path):
    pytest.importorskip("numdl_extras")
    from numdl import train

    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=100)
    resolved = config.resolve(EXAMPLES / "extras.toml", [f"data.path='{data}'", "train.epochs=3", "optimizer.lr=1e-3"])
    summary = train.run(resolved, tmp_path / "run", on_line=lambda line: None)
    assert summary["test_accuracy"] > 0.9


@pytest.fixture(scope="module")
def example_tables(tmp_path_factory):
    pytest.importorskip("pyarrow")
    return _load("make_tables").main(["--out", str(tmp_path_factory.mktemp("tables")), "--rows", "1500"])


@pytest.mark.parametrize("path", TABLE_CONFIGS, ids=lambda p: p.name)
def test_table_examples_train_and_predict_from_the_generated_files(path, example_tables, tmp_path):
    from click.testing import CliRunner

    from numdl import train
    from numdl.cli import cli

    data = config.resolve(path)["data"]
    table = example_tables / Path(data["path"]).name
    resolved = config.resolve(path, [f"data.path='{table}'", "train.epochs=15"])
    summary = train.run(resolved, tmp_path / "run", on_line=lambda line: None)
    report = summary["report"]
    quality = {"table_binary.toml": report.get("accuracy", 0) > 0.8,
               "table_imbalanced.toml": report.get("macro_f1", 0) > 0.5,
               "table_multilabel.toml": report.get("micro_f1", 0) > 0.7,
               "table_regression.toml": report.get("r2", 0) > 0.8}[path.name]
    assert quality, report
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "run" / "checkpoints" / "latest.safetensors"),
                                      str(table)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1501


def test_the_imbalance_example_prints_both_reports(example_tables, capsys):
    reports = _load("imbalanced").main(["--data", str(example_tables / "imbalanced.csv"), "--epochs", "4"])
    printed = capsys.readouterr().out
    assert "faulty recall" in printed and "class weights" in printed and "balanced sampler" in printed
    plain = reports["plain"]["per_class"]["faulty"]["recall"]
    assert reports["class weights"]["per_class"]["faulty"]["recall"] >= plain + 0.15


def test_dcgan_example_trains_and_reports_fid(tmp_path):
    """A few steps of examples/dcgan.py on Fashion-MNIST-like data: sample grids every epoch, the
    samples saved, FID and KID against the untrained generator's (the figures of a real run are in
    benchmarks/RESULTS.md)."""
    from numdl import generative

    data = write_fashion_like(tmp_path / "data", n_train=600, n_test=300)
    features = generative.feature_checkpoint(tmp_path / "features", data_path=data, on_line=lambda line: None)
    report = _load("dcgan").main(["--out", str(tmp_path / "run"), "--epochs", "2", "--train-size", "256",
                                  "--batch-size", "32", "--samples", "200", "--data", str(data),
                                  "--features", str(features)])
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert all(np.isfinite([e["d_loss"], e["g_loss"]]).all() for e in report["epochs"])
    assert (tmp_path / "run" / "samples-002.png").is_file()
    samples = np.load(tmp_path / "run" / "samples.npy")
    assert samples.shape == (200, 28, 28) and samples.dtype == np.uint8
    assert report["fid"] > 0 and report["untrained_fid"] > 0 and len(report["class_shares"]) == 10


def test_autoencoder_configs_train_and_the_pictures_script_draws_them(tmp_path):
    """examples/conv_autoencoder.toml and conv_vae.toml as numdl train runs them (two short epochs on
    Fashion-MNIST-like data), then examples/autoencoder_pictures.py on each run folder."""
    from click.testing import CliRunner

    from numdl import generative
    from numdl.cli import cli

    data = write_fashion_like(tmp_path / "data", n_train=400, n_test=100)
    features = generative.feature_checkpoint(tmp_path / "features", data_path=data, on_line=lambda line: None)
    for name in ("conv_autoencoder", "conv_vae"):
        run = tmp_path / name
        result = CliRunner().invoke(cli, ["train", str(EXAMPLES / f"{name}.toml"), "--set", f"data.path='{data}'",
                                          "--set", "train.epochs=2", "--set", "train.batch_size=32",
                                          "--out", str(run)])
        assert result.exit_code == 0, result.output
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs[1]["test_loss"] < epochs[0]["test_loss"]
        if name == "conv_vae":  # the loss is the negative ELBO: reconstruction + KL, each reported
            for split in ("train", "test"):
                last = epochs[-1]
                assert last[f"{split}_loss"] == pytest.approx(last[f"{split}_bce_with_logits"] + last[f"{split}_kl"])
                assert last[f"{split}_kl"] > 0
        report = _load("autoencoder_pictures").main([str(run), "--data", str(data), "--samples", "200",
                                                     "--features", str(features)])
        assert (run / "pictures" / "reconstructions.png").is_file()
        assert ("fid" in report) == (name == "conv_vae")
        if name == "conv_vae":
            assert np.load(run / "pictures" / "samples.npy").shape == (200, 28, 28)
