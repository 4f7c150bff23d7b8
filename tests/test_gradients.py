"""Every registered layer and loss passes the float64 central-difference gradient check, through the
same public helpers (numdl.testing) that plugin authors use. New registrations are picked up here
automatically: a registered item without a sample below fails the coverage test."""

import numpy as np
import pytest

from numdl.plugins import registry
from numdl.testing import check_layer_gradients, check_loss_gradients

# name -> (constructor kwargs, input shape without the batch axis)
LAYER_SAMPLES = {
    "linear": ({"out_features": 4}, (5,)),
    "relu": ({}, (3, 4)),
    "leaky_relu": ({"negative_slope": 0.2}, (3, 4)),
    "sigmoid": ({}, (7,)),
    "tanh": ({}, (7,)),
    "gelu": ({}, (7,)),
    "softmax": ({}, (2, 5)),
    "dropout": ({"p": 0.4}, (9,)),
    "flatten": ({}, (2, 3, 2)),
}


def _labels(rng, n, classes):
    return rng.integers(0, classes, n)


# name -> (constructor kwargs, target factory given rng and pred shape)
LOSS_SAMPLES = {
    "cross_entropy": [({}, lambda r, s: _labels(r, *s)),
                      ({"weight": [1.0, 2.0, 0.5, 1.5], "label_smoothing": 0.2}, lambda r, s: _labels(r, *s)),
                      ({"reduction": "sum"}, lambda r, s: _labels(r, *s))],
    "mse": [({}, lambda r, s: r.standard_normal(s)), ({"reduction": "sum"}, lambda r, s: r.standard_normal(s))],
    "bce_with_logits": [({}, lambda r, s: r.uniform(0, 1, s))],
}


def test_every_registered_layer_and_loss_has_a_gradient_sample():
    assert set(registry().names("layer")) <= set(LAYER_SAMPLES) | _plugin_names("layer")
    assert set(registry().names("loss")) <= set(LOSS_SAMPLES) | _plugin_names("loss")


def _plugin_names(kind):
    return {name for name, entry in registry().items[kind].items() if not entry.source.startswith("numdl")}


@pytest.mark.parametrize("name", sorted(LAYER_SAMPLES))
def test_layer_gradients(name):
    kwargs, shape = LAYER_SAMPLES[name]
    layer = registry().get("layer", name)(**kwargs)
    errors = check_layer_gradients(layer, shape, batch_size=3, seed=1)
    assert set(errors) == {"input", *layer.params}


@pytest.mark.parametrize("name, index", [(n, i) for n, samples in sorted(LOSS_SAMPLES.items())
                                         for i in range(len(samples))])
def test_loss_gradients(name, index):
    kwargs, make_target = LOSS_SAMPLES[name][index]
    rng = np.random.default_rng(index)
    pred = rng.standard_normal((6, 4)) * 2
    loss = registry().get("loss", name)(**kwargs)
    check_loss_gradients(loss, pred, make_target(rng, pred.shape))


def test_gradient_check_catches_a_wrong_backward():
    from numdl.layers import Tanh

    class WrongTanh(Tanh):
        name = "wrong_tanh"

        def backward(self, dout):
            return super().backward(dout) * 1.01

    with pytest.raises(AssertionError, match="wrong_tanh.*input"):
        check_layer_gradients(WrongTanh(), (4,))


def test_gradient_check_names_the_wrong_parameter():
    from numdl.layers import Linear

    class WrongBias(Linear):
        name = "wrong_bias"

        def backward(self, dout):
            dx = super().backward(dout)
            self.params["bias"].grad[0] += 0.5
            return dx

    with pytest.raises(AssertionError, match="parameter 'bias'"):
        check_layer_gradients(WrongBias(3), (4,))
