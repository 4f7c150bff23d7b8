"""model.predict's one-call path for a few samples of a dense model (numdl.dense_chain): the same
outputs and input checks as the layer-by-layer path, and only where the kernel runs every layer."""

import numpy as np
import pytest

import numdl
from numdl import dense_chain
from numdl.errors import DataError


def _layer_by_layer(model, x, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(dense_chain, "MAX_BATCH", 0)
        return model.predict(x)


def _dense_model(dtype):
    layers = [numdl.Flatten(), numdl.Linear(19), numdl.ReLU(), numdl.Dropout(0.5), numdl.Linear(13, bias=False),
              numdl.Tanh(), numdl.Linear(11), numdl.GELU(), numdl.Linear(9), numdl.GELU("tanh"), numdl.Linear(8),
              numdl.Sigmoid(), numdl.Linear(5)]
    return numdl.Sequential(layers, input_shape=(3, 7), dtype=dtype, seed=1)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("samples", [1, 3, dense_chain.MAX_BATCH])
def test_one_call_equals_the_layer_path(dtype, rtol, samples, monkeypatch):
    model = _dense_model(dtype)
    x = np.random.default_rng(0).standard_normal((samples, 3, 7)).astype(dtype)
    chain = model._dense_chain()
    assert chain is not None and len(chain.table) == 6  # every Linear, activations folded in
    assert list(chain.table[:, 4]) == [1, 2, 4, 5, 3, 0]  # relu (fused), tanh, gelu, gelu_tanh, sigmoid, none
    got = model.predict(x)
    assert got.shape == (samples, 5) and got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, _layer_by_layer(model, x, monkeypatch), rtol=rtol, atol=rtol)


def test_it_reads_the_weights_training_changed(monkeypatch):
    model = _dense_model("float64").compile(numdl.CrossEntropy(), numdl.Adam(lr=0.1))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 3, 7)), rng.integers(0, 5, 16)
    before = model.predict(x[:2])
    model.train_step(x, y)
    after = model.predict(x[:2])
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _layer_by_layer(model, x[:2], monkeypatch), rtol=1e-12)


def test_a_replaced_parameter_array_makes_a_new_plan(monkeypatch):
    model = _dense_model("float64")
    x = np.random.default_rng(2).standard_normal((2, 3, 7))
    model.predict(x)
    weight = model.layers[1].params["weight"]
    weight.value = np.zeros_like(weight.value)  # no longer a view of the model's flat buffer
    np.testing.assert_allclose(model.predict(x), _layer_by_layer(model, x, monkeypatch), rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_the_same_error(bad, monkeypatch):
    model = _dense_model("float32")
    x = np.random.default_rng(3).standard_normal((4, 3, 7)).astype(np.float32)
    x[2, 1, 5] = bad
    with pytest.raises(DataError) as ours:
        model.predict(x)
    with pytest.raises(DataError) as layers:
        _layer_by_layer(model, x, monkeypatch)
    assert str(ours.value) == str(layers.value) == "input data contains NaN or Inf (first at sample 2)"


def test_more_samples_than_the_scratch_was_made_for(monkeypatch):
    model = _dense_model("float64")
    x = np.random.default_rng(4).standard_normal((3 * dense_chain.MAX_BATCH, 3, 7))
    chain = model._dense_chain()
    expected = _layer_by_layer(model, x, monkeypatch)
    np.testing.assert_allclose(chain.predict(model, x), expected, rtol=1e-12)


@pytest.mark.parametrize("layers", [
    [numdl.Linear(4), numdl.LeakyReLU(0.1), numdl.Linear(2)],  # an activation the kernel has no code for
    [numdl.Linear(4), numdl.ReLU(), numdl.Tanh(), numdl.Linear(2)],  # two activations in a row
    [numdl.Tanh(), numdl.Linear(2)],  # an activation before any Linear
    [numdl.Linear(4), numdl.LayerNorm(), numdl.Linear(2)],
    [numdl.Reshape([2, 3]), numdl.Linear(2)],  # a Linear over the last axis of (2, 3)
], ids=["leaky_relu", "two_activations", "activation_first", "layernorm", "linear_over_rows"])
def test_other_models_keep_the_layer_path(layers):
    model = numdl.Sequential(layers, input_shape=(6,), dtype="float64")
    assert model._dense_chain() is None
    x = np.random.default_rng(5).standard_normal((2, 6))
    assert model.predict(x).shape[0] == 2


def test_a_graph_model_keeps_the_layer_path():
    x = numdl.Input((6,))
    model = numdl.Model(x, numdl.Linear(3)(numdl.ReLU()(numdl.Linear(4)(x))), dtype="float64")
    assert model._dense_chain() is None
