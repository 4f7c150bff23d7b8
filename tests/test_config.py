import pytest

from numdl import config
from numdl.errors import ConfigError, RegistryError


def test_default_is_the_reference_mlp():
    resolved = config.resolve()
    layers = resolved["model"]["layers"]
    assert [l.get("out_features") for l in layers if l["type"] == "linear"] == [128, 64, 10]
    assert resolved["optimizer"] == {"type": "adam", "lr": 1e-3}
    assert resolved["train"]["batch_size"] == 64 and resolved["train"]["epochs"] == 10


def test_file_merges_over_default_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 3\n[optimizer]\ntype = "sgd"\nmomentum = 0.9\n')
    resolved = config.resolve(path, ["optimizer.lr=0.05", "model.layers.1.out_features=256", "train.epochs=4"])
    assert {k: resolved["train"][k] for k in ("epochs", "batch_size", "shuffle")} == \
        {"epochs": 4, "batch_size": 64, "shuffle": True}  # the file's epochs, then the override
    assert resolved["optimizer"] == {"type": "sgd", "momentum": 0.9, "lr": 0.05}  # a new type replaces the table
    assert resolved["model"]["layers"][1]["out_features"] == 256


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=abc", "optimizer.lr: expected a number, got 'abc'"),
    ("optimizer.lr=true", "optimizer.lr: expected a number, got True"),
    ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
    ("train.epochs=0", "train.epochs: must be >= 1"),
    ("train.shuffle=3", "train.shuffle: expected true or false"),
    ("train.epoch=3", "train.epoch: unknown key"),
    ("colour=3", "colour: unknown key"),
    ("model.layers.1.units=3", "model.layers.1.units: unknown parameter of layer 'linear' (accepts: out_features"),
    ("model.layers.9.type=relu", "model.layers.9: no such item"),
    ("model.dtype=float16", "model.dtype: must be float32 or float64"),
    ("data.name=cifar", "data.name: unknown dataset 'cifar'"),
    ("loss.weight=[1, 'a']", "loss.weight.1: expected a number, got 'a'"),
    ("optimizer.betas=0.9", "optimizer.betas: expected a list"),
    ("nonsense", "expected key=value"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        config.resolve(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_layer_lists_the_available_ones():
    with pytest.raises(RegistryError, match=r"model.layers.0.type: unknown layer 'nope'; available: adaptive_avgpool2d, adaptive_maxpool2d, add, avgpool2d, batchnorm1d"):
        config.resolve(None, ["model.layers.0.type=nope"])


def test_missing_required_parameter(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nlayers = [{type = "linear"}]\n')
    with pytest.raises(ConfigError, match="model.layers.0.out_features: required by layer 'linear'"):
        config.resolve(path)


def test_broken_toml_and_missing_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.resolve(path)
    with pytest.raises(ConfigError, match="not found"):
        config.resolve(tmp_path / "missing.toml")


def test_constructor_refusals_become_config_errors():
    resolved = config.resolve(None, ["optimizer.lr=-1"])
    with pytest.raises(ConfigError, match="optimizer: adam: lr must be > 0"):
        config.build_model(resolved, (28, 28))


def test_config_never_imports_code(tmp_path):
    """A config can only name registered items: an import path is just an unknown name."""
    with pytest.raises(RegistryError, match="unknown layer 'os.system'"):
        config.resolve(None, ["model.layers.0.type=os.system"])
