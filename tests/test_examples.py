"""The examples run: every config in examples/ is valid, and the custom-loop scripts learn."""

import importlib.util
from pathlib import Path

import pytest

from helpers import write_fashion_like
from numdl import config

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_are_valid_and_build(path):
    if "lion" in path.read_text():
        pytest.importorskip("numdl_extras", reason="examples/extras.toml needs plugins/numdl-extras installed")
    resolved = config.resolve(path)
    model = config.build_model(resolved, (28, 28))
    assert model.output_shape == (10,)


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
