"""Weights in from PyTorch: models of the example architectures trained in PyTorch for an epoch, saved
with safetensors, imported with `numdl import-torch` (or numdl.from_torch_state_dict): the same
outputs (1e-5) and the same test accuracy (4 decimals); every mismatch named in one line."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import numdl
from helpers import write_fashion_like
from numdl.cli import cli
from numdl.data import load_fashion_mnist

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

EXAMPLES = Path(__file__).parent.parent / "examples"


class LastStep(torch.nn.Module):
    """nn.LSTM's output at the last step (numdl's lstm without return_sequences)."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        return self.lstm(x)[0][:, -1]


def _mlp():
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn():  # examples/cnn.toml, module for module
    nn = torch.nn
    return nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.25),
                         nn.Linear(128, 10))


def _lstm():  # examples/lstm.toml: 28 steps of 28 pixels, the last step's state into a Linear
    nn = torch.nn
    return nn.Sequential(LastStep(nn.LSTM(28, 128, batch_first=True)), nn.Linear(128, 10))


class Lambda(torch.nn.Module):
    """A parameter-free step (a reshape, a transpose, a mean) as an nn.Sequential child."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


class LearnedPosition(torch.nn.Module):
    """numdl's positional_encoding kind = "learned": a (steps, features) table added to the input."""

    def __init__(self, steps, features):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(steps, features) * 0.02)

    def forward(self, x):
        return x + self.weight


def _transformer():  # examples/transformer.toml: 7x7 patches, a learned position table, two encoder layers
    nn = torch.nn
    layer = dict(d_model=64, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True)
    return nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 64, 7, stride=7), Lambda(lambda x: x.flatten(2)),
                         Lambda(lambda x: x.transpose(1, 2)), LearnedPosition(16, 64),
                         nn.TransformerEncoderLayer(**layer), nn.TransformerEncoderLayer(**layer),
                         Lambda(lambda x: x.mean(1)), nn.Linear(64, 10))


def _train_one_epoch(net, x, y, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for begin in range(0, len(x), 32):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[begin:begin + 32]), y[begin:begin + 32])
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize("make, config", [(_mlp, None), (_cnn, "cnn.toml"), (_lstm, "lstm.toml"),
                                          (_transformer, "transformer.toml")],
                         ids=["mlp", "cnn", "lstm", "transformer"])
def test_a_pytorch_model_imported_gives_the_same_outputs_and_test_accuracy(tmp_path, make, config):
    data = write_fashion_like(tmp_path / "data", n_train=512, n_test=200)
    x_train, y_train, x_test, y_test = load_fashion_mnist(data)
    mean, std = x_train.mean(), x_train.std()  # numdl's data.normalize = "standardize"
    torch.manual_seed(0)
    net = _train_one_epoch(make(), torch.tensor((x_train - mean) / std, dtype=torch.float32), torch.tensor(y_train))
    with torch.no_grad():
        theirs = net(torch.tensor((x_test - mean) / std, dtype=torch.float32)).numpy()
    weights = tmp_path / "model.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(weights))

    config_path = EXAMPLES / config if config else tmp_path / "default.toml"
    if config is None:
        config_path.write_text("")
    result = CliRunner().invoke(cli, ["import-torch", str(config_path), str(weights), "--set", f"data.path='{data}'",
                                      "--set", "data.crop_padding=0"])
    assert result.exit_code == 0, result.output
    accuracy = float((theirs.argmax(axis=1) == y_test).mean())
    assert f"test_acc {accuracy:.4f}" in result.output
    model = numdl.load_model(tmp_path / "model.numdl.safetensors")
    ours = model.predict(((x_test - mean) / std).astype(np.float32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_transformer_encoder_maps_onto_torch_names():
    """nn.TransformerEncoderLayer's self_attn / linear1 / linear2 / norm1 / norm2, post- and pre-norm,
    from an in-memory state_dict (tensors, not arrays)."""
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(7, 16)
            self.post = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.pre = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True, norm_first=True,
                                                  activation="gelu")
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.pre(self.post(self.embed(x))).mean(1))

    torch.manual_seed(1)
    net = Net().double().eval()
    ours = numdl.Sequential([numdl.Linear(16), numdl.TransformerEncoderLayer(2, dim_feedforward=32, dropout=0.0),
                             numdl.TransformerEncoderLayer(4, dim_feedforward=24, dropout=0.0, norm_first=True,
                                                           activation="gelu"),
                             numdl.SequencePool("mean"), numdl.Linear(3)], input_shape=(5, 7), seed=0, dtype="float64")
    report = numdl.from_torch_state_dict(ours, net.state_dict())
    assert report["unused"] == [] and len(report["copied"]) == len(net.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 5, 7))
    np.testing.assert_allclose(ours.predict(x), net(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_a_projected_lstm_imports_with_weight_hr():
    """nn.LSTM(proj_size=...) stacked and bidirectional: weight_hr_l0, weight_hr_l0_reverse ... map onto
    numdl's LSTM(proj_size=...) by name, and the step picker's outputs agree."""
    nn = torch.nn
    torch.manual_seed(2)
    net = nn.Sequential(LastStep(nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)),
                        nn.Linear(6, 4)).double().eval()
    ours = numdl.Sequential([numdl.LSTM(8, num_layers=2, bidirectional=True, return_sequences=True, proj_size=3),
                             numdl.SequencePool("last"),  # nn's [:, -1], both directions at the last step
                             numdl.Linear(4)], input_shape=(5, 6), seed=0, dtype="float64")
    report = numdl.from_torch_state_dict(ours, net.state_dict())
    assert report["unused"] == [] and len(report["copied"]) == len(net.state_dict())
    assert any(name.endswith("weight_hr_l1_reverse") for name in report["copied"])
    x = np.random.default_rng(3).standard_normal((4, 5, 6))
    np.testing.assert_allclose(ours.predict(x), net(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_mismatches_are_named_in_one_line_and_nothing_is_copied(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=64, n_test=32)
    weights = tmp_path / "model.safetensors"
    safetensors_torch.save_file(_mlp().state_dict(), str(weights))
    (tmp_path / "default.toml").write_text("")
    runner = CliRunner()
    wide = runner.invoke(cli, ["import-torch", str(tmp_path / "default.toml"), str(weights), "--set",
                               f"data.path='{data}'", "--set", "model.layers.3.out_features=32"])
    assert wide.exit_code == 1 and wide.output.count("\n") == 1
    assert "3.linear.weight has shape (32, 128) but 3.weight has (64, 128)" in wide.output
    assert not (tmp_path / "model.numdl.safetensors").exists()
    # a pickle (torch.save) is refused without being read as one
    pickled = tmp_path / "model.pt"
    torch.save(_mlp().state_dict(), pickled)
    refused = runner.invoke(cli, ["import-torch", str(tmp_path / "default.toml"), str(pickled), "--set",
                                  f"data.path='{data}'"])
    assert refused.exit_code != 0 and "not a safetensors weights file" in refused.output
    assert "Traceback" not in refused.output


def test_a_missing_layer_is_reported():
    ours = numdl.Sequential([numdl.Flatten(), numdl.Linear(8), numdl.ReLU(), numdl.Linear(3)], input_shape=(4,), seed=0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8))
    with pytest.raises(numdl.DataError, match="has 1 top-level modules with arrays .* but the numdl model has 2"):
        numdl.from_torch_state_dict(ours, net.state_dict())
