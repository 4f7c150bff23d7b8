"""Convolutional layers against PyTorch, train/eval behaviour of BatchNorm and Dropout, residual
blocks from configs, and augmentation."""

import numpy as np
import pytest

import numdl
from numdl import config
from numdl.backend import get_ops
from numdl.data import Augmenter

torch = pytest.importorskip("torch")


def _built(layer, shape):
    layer.build(shape, get_ops("cpu"), np.float64, np.random.default_rng(0))
    return layer


def test_conv2d_layer_matches_torch_forward_and_backward():
    ours = _built(numdl.Conv2d(4, [3, 2], stride=2, padding=1, dilation=2, groups=2), (4, 7, 5))
    theirs = torch.nn.Conv2d(4, 4, (3, 2), stride=2, padding=1, dilation=2, groups=2).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.params["weight"].value))
        theirs.bias.copy_(torch.tensor(ours.params["bias"].value))
    x = np.random.default_rng(1).standard_normal((3, 4, 7, 5))
    t_x = torch.tensor(x, requires_grad=True)
    t_out = theirs(t_x)
    out = ours.forward(x, training=True)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    dx = ours.backward(dout)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.params["weight"].grad, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.params["bias"].grad, theirs.bias.grad.numpy(), rtol=1e-10)


def test_conv1d_layout_matches_torch():
    ours = _built(numdl.Conv1d(3, 3, stride=2, padding=1), (2, 9))
    assert ours.params["weight"].value.shape == (3, 2, 3)
    theirs = torch.nn.Conv1d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.params["weight"].value))
        theirs.bias.copy_(torch.tensor(ours.params["bias"].value))
    x = np.random.default_rng(1).standard_normal((2, 2, 9))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("ours, theirs", [
    (lambda: numdl.MaxPool2d(3, stride=2, padding=1), lambda: torch.nn.MaxPool2d(3, stride=2, padding=1)),
    (lambda: numdl.AvgPool2d([2, 3], stride=1, padding=1), lambda: torch.nn.AvgPool2d((2, 3), stride=1, padding=1)),
])
def test_pooling_matches_torch(ours, theirs):
    layer = _built(ours(), (2, 7, 5))
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 5))
    t_x = torch.tensor(x, requires_grad=True)
    t_out = theirs()(t_x)
    np.testing.assert_allclose(layer.forward(x), t_out.detach().numpy(), rtol=1e-12)
    dout = np.random.default_rng(4).standard_normal(t_out.shape)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.backward(dout), t_x.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_batchnorm2d_train_and_eval_match_torch():
    ours = _built(numdl.BatchNorm2d(momentum=0.2, eps=1e-4), (3, 4, 5))
    theirs = torch.nn.BatchNorm2d(3, momentum=0.2, eps=1e-4).double()
    rng = np.random.default_rng(5)
    for _ in range(3):  # running statistics accumulate the same way
        x = rng.standard_normal((4, 3, 4, 5)) * 3 + 1
        np.testing.assert_allclose(ours.forward(x, training=True), theirs.train()(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.state["running_mean"], theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.state["running_var"], theirs.running_var.numpy(), rtol=1e-12)
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(ours.forward(x, training=False), theirs.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_batchnorm_eval_mode_uses_running_statistics_and_does_not_update_them():
    layer = _built(numdl.BatchNorm1d(), (3,))
    x = np.random.default_rng(6).standard_normal((8, 3)) * 5 + 2
    before = {k: v.copy() for k, v in layer.state.items()}
    out = layer.forward(x, training=False)
    np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5))  # running mean 0, var 1 at the start
    assert all(np.array_equal(before[k], layer.state[k]) for k in before)
    layer.forward(x, training=True)
    np.testing.assert_allclose(layer.state["running_mean"], 0.1 * x.mean(0))


def test_layernorm_matches_torch():
    ours = _built(numdl.LayerNorm(), (3, 6))
    ours.params["weight"].value[:] = np.linspace(0.5, 1.5, 6)
    theirs = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.params["weight"].value))
    x = np.random.default_rng(7).standard_normal((2, 3, 6))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_dropout_is_identity_in_eval_and_random_in_training():
    layer = _built(numdl.Dropout(0.5, seed=1), (1000,))
    x = np.ones((4, 1000))
    assert layer.forward(x, training=False) is x
    first = layer.forward(x, training=True).copy()
    second = layer.forward(x, training=True).copy()
    assert 0.4 < (first == 0).mean() < 0.6 and set(np.unique(first)) == {0.0, 2.0}
    assert not np.array_equal(first, second)  # the stream advances between steps


def test_model_evaluate_runs_batchnorm_and_dropout_in_eval_mode():
    model = numdl.Sequential([numdl.Flatten(), numdl.Linear(8), numdl.BatchNorm1d(), numdl.Dropout(0.5),
                              numdl.Linear(3)], input_shape=(4,), dtype="float64").compile("cross_entropy", "adam")
    x = np.random.default_rng(8).standard_normal((16, 4))
    first, second = model.predict(x), model.predict(x)
    np.testing.assert_array_equal(first, second)


def test_residual_block_from_config_trains(tmp_path):
    resolved = config.resolve(None, [
        "model.layers=[{type='reshape', shape=[1, 28, 28]}, {type='conv2d', out_channels=4, kernel_size=3, "
        "padding=1, activation='relu'}, {type='residual', activation='relu', layers=[{type='conv2d', "
        "out_channels=8, kernel_size=3, stride=2, padding=1}, {type='batchnorm2d'}]}, "
        "{type='global_avgpool2d'}, {type='linear', out_features=10}]"])
    model = config.build_model(resolved, (28, 28))
    residual = model.layers[2]
    assert [layer.name for layer in residual.skip] == ["conv2d", "batchnorm2d"]  # auto projection
    assert "2.residual.skip.0.weight" in model.named_parameters()
    x = np.random.default_rng(9).standard_normal((6, 28, 28)).astype(np.float32)
    y = np.arange(6)
    losses = [model.train_step(x, y)[0] for _ in range(15)]
    assert losses[-1] < losses[0]


def test_nested_layer_errors_name_the_nested_key():
    with pytest.raises(numdl.RegistryError, match=r"model.layers.0.layers.1.type: unknown layer 'nope'"):
        config.resolve(None, ["model.layers=[{type='residual', layers=[{type='relu'}, {type='nope'}]}]"])


def test_augmenter_is_seeded_and_keeps_shapes():
    x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    aug = Augmenter(crop_padding=1, horizontal_flip=True, fill=-1.0)
    a = aug(x, np.random.default_rng(0))
    b = aug(x, np.random.default_rng(0))
    assert a.shape == x.shape and np.array_equal(a, b)
    assert not np.array_equal(a, x)
    assert set(np.unique(a)) <= set(np.unique(x)) | {-1.0}
    flipped = Augmenter(horizontal_flip=True)(x, np.random.default_rng(3))
    for original, out in zip(x, flipped):
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
