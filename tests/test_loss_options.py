"""PyTorch's loss options in use: a model trained through them, and the errors a wrong target gets.
(The formulas themselves are compared with torch in test_against_torch.py.)"""

import numpy as np
import pytest

import numdl
from numdl.errors import ConfigError, DataError, ShapeError


def _mlp(last=None):
    layers = [numdl.Linear(8), numdl.ReLU(), numdl.Linear(3)] + ([last] if last else [])
    return numdl.Sequential(layers, input_shape=(5,), dtype="float64", seed=0)


def test_log_softmax_with_nll_trains_as_cross_entropy_on_logits():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    fused = _mlp().compile(numdl.CrossEntropy(), numdl.SGD(lr=0.1))
    split = _mlp(numdl.LogSoftmax()).compile(numdl.NLLLoss(), numdl.SGD(lr=0.1))
    a = fused.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    b = split.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    np.testing.assert_allclose([h["train_loss"] for h in a], [h["train_loss"] for h in b], rtol=1e-10)
    assert a[-1]["train_accuracy"] == b[-1]["train_accuracy"]


def test_per_position_labels_with_padding_are_ignored_in_loss_and_accuracy():
    """A (N, C, L) output with PyTorch's layout; -100 marks padding, which changes nothing."""
    rng = np.random.default_rng(1)
    model = numdl.Sequential([numdl.Conv1d(3, 3, padding=1)], input_shape=(2, 6), dtype="float64", seed=0)
    model.compile(numdl.CrossEntropy(class_axis=1), numdl.SGD(lr=0.1))
    x, y = rng.standard_normal((4, 2, 6)), rng.integers(0, 3, (4, 6))
    padded = y.copy()
    padded[:, 4:] = -100
    result = model.evaluate(x, padded)
    logits = model.predict(x)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.take_along_axis(log_probs, y[:, None], axis=1)[:, 0, :4].mean()
    assert result["loss"] == pytest.approx(expected, rel=1e-12)
    assert result["accuracy"] == pytest.approx((logits.argmax(axis=1) == y)[:, :4].mean())


def test_probability_targets_train_and_score_against_their_argmax():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5))
    soft = rng.dirichlet(np.ones(3), 30)
    model = _mlp().compile(numdl.CrossEntropy(label_smoothing=0.1), numdl.Adam(lr=0.01))
    history = model.fit(x, soft, epochs=2, batch_size=10, verbose=0)
    assert np.isfinite(history[-1]["train_loss"])
    result = model.evaluate(x, soft)
    assert result["accuracy"] == pytest.approx((model.predict(x).argmax(axis=1) == soft.argmax(axis=1)).mean())


@pytest.mark.parametrize("make, pred, target, error, needle", [
    (lambda: numdl.CrossEntropy(), np.zeros((4, 3)), np.array([0, 1, 3, 2]), DataError, r"label 3 is outside \[0, 3\)"),
    (lambda: numdl.CrossEntropy(ignore_index=255), np.zeros((2, 3)), np.array([-1, 255]), DataError,
     r"label -1 is outside .*ignore_index is 255"),
    (lambda: numdl.CrossEntropy(class_axis=1), np.zeros((2, 3, 4)), np.zeros((2, 3), int), ShapeError,
     r"labels have shape \(2, 3\) but the scores need \(2, 4\)"),
    (lambda: numdl.CrossEntropy(), np.zeros((2, 3)), np.array([[0.5, np.nan, 0.5], [1, 0, 0]]), DataError,
     "probability targets contain NaN"),
    (lambda: numdl.NLLLoss(weight=[1, 2]), np.zeros((2, 3)), np.array([0, 1]), ShapeError,
     "weight has 2 entries but the scores have 3 classes"),
    (lambda: numdl.BCEWithLogits(pos_weight=[1.0, 2.0]), np.zeros((2, 3)), np.zeros((2, 3)), ShapeError,
     r"pos_weight of shape \(2,\) does not broadcast"),
    (lambda: numdl.KLDiv(), np.zeros((2, 3)), -np.ones((2, 3)), DataError, "target probabilities must be >= 0"),
])
def test_wrong_targets_are_named(make, pred, target, error, needle):
    with pytest.raises(error, match=needle):
        make().forward(pred, target)


@pytest.mark.parametrize("make", [lambda: numdl.CrossEntropy(class_axis=2), lambda: numdl.CrossEntropy(reduction="avg"),
                                  lambda: numdl.BCEWithLogits(pos_weight=[-1.0]), lambda: numdl.KLDiv(reduction="x")])
def test_bad_options_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_an_upstream_gradient_needs_reduction_none():
    loss = numdl.CrossEntropy()
    loss.forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ConfigError, match="upstream gradient goes with reduction 'none'"):
        loss.backward(np.ones(2))


def test_reduction_none_cannot_train_a_model():
    with pytest.raises(ConfigError, match="reduction 'none'"):
        _mlp().compile(numdl.CrossEntropy(reduction="none"), numdl.SGD())


# --------------------------------------------------------------------------- optimizer parameter groups
def test_parameter_groups_from_a_config_survive_a_checkpoint(tmp_path):
    from numdl import config

    text = """
[model]
layers = [{type = "linear", out_features = 4}, {type = "relu"}, {type = "linear", out_features = 3}]
[optimizer]
type = "adamw"
lr = 0.01
decay_biases_and_norms = false
param_groups = [{params = ["2.*"], lr = 0.001}, {params = "0.linear.weight", weight_decay = 0.5}]
"""
    path = tmp_path / "groups.toml"
    path.write_text(text)
    resolved = config.resolve(path)
    model = config.build_model(resolved, (5,))
    rng = np.random.default_rng(3)
    model.fit(rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8), epochs=1, verbose=0)
    assert model.optimizer._settings == [(1.0, 0.5), (1.0, 0.0), (0.1, None), (0.1, 0.0)]
    model.save(tmp_path / "m.safetensors")
    again = numdl.load_model(tmp_path / "m.safetensors")
    assert again.optimizer.hyperparameters()["param_groups"] == model.optimizer.hyperparameters()["param_groups"]
    assert again.optimizer.decay_biases_and_norms is False


@pytest.mark.parametrize("groups, needle", [
    ([{"params": "9.*", "lr": 0.1}], r"param_groups.0.params \['9.\*'\] match no parameter \(names: 0.linear.weight"),
    ([{"params": "*", "momentum": 0.1}], "unknown key 'momentum'"),
    ([{"lr": 0.1}], "must be a table with 'params'"),
    ([{"params": "*", "lr": -1}], r"param_groups.0.lr must be a finite number > 0"),
    ([{"params": "*", "lr": 0.1, "lr_scale": 2}], "give lr or lr_scale, not both"),
])
def test_bad_parameter_groups_are_named(groups, needle):
    rng = np.random.default_rng(4)
    with pytest.raises(ConfigError, match=needle):
        model = _mlp().compile(numdl.CrossEntropy(), numdl.Adam(param_groups=groups))
        model.fit(rng.standard_normal((4, 5)), rng.integers(0, 3, 4), epochs=1, verbose=0)
