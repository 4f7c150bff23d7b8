"""Issue 12.9: every built-in layer accepts inputs and upstream gradients in any memory layout
(Fortran order, slices with steps, single-sample and single-step batches) and gives the numbers the
same data in C order gives."""

import numpy as np
import pytest

import numdl
from numdl.backend import get_ops

LAYERS = {
    "linear": (lambda: numdl.Linear(5), (7,)),
    "linear_3d": (lambda: numdl.Linear(5), (4, 7)),
    "conv2d": (lambda: numdl.Conv2d(4, 3, padding=1), (2, 6, 5)),
    "conv1d": (lambda: numdl.Conv1d(4, 3), (3, 9)),
    "lstm": (lambda: numdl.LSTM(6, return_sequences=True), (4, 5)),
    "gru": (lambda: numdl.GRU(6, bidirectional=True, return_sequences=True), (4, 5)),
    "lstm_last": (lambda: numdl.LSTM(6), (4, 5)),
    "attention": (lambda: numdl.MultiHeadAttention(2), (4, 6)),
    "attention_one_step": (lambda: numdl.MultiHeadAttention(2, causal=True), (1, 6)),
    "gru_one_step": (lambda: numdl.GRU(3), (1, 5)),
    "transformer": (lambda: numdl.TransformerEncoderLayer(2, 8), (4, 6)),
    "maxpool": (lambda: numdl.MaxPool2d(2), (2, 6, 6)),
    "batchnorm2d": (lambda: numdl.BatchNorm2d(), (2, 4, 4)),
    "layernorm": (lambda: numdl.LayerNorm(), (3, 6)),
    "gelu": (lambda: numdl.GELU(), (3, 6)),
}


def _layouts(array):
    """The same values as (name, array) in other memory layouts."""
    yield "fortran", np.asfortranarray(array)
    wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
    wide[..., ::2] = array
    yield "strided", wide[..., ::2]
    reversed_batch = array[::-1].copy()[::-1]
    yield "negative stride", reversed_batch


def _built(make, shape):
    layer = make()
    layer.build(shape, get_ops("cpu"), "float64", np.random.default_rng(1))
    layer.needs_input_grad = True
    return layer


@pytest.mark.parametrize("batch", (1, 3))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_accepts_any_layout_of_input_and_gradient(name, batch):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + shape)
    reference = _built(make, shape)
    out = reference.forward(np.ascontiguousarray(x), training=True).copy()
    dout = rng.normal(size=out.shape)
    dx = reference.backward(np.ascontiguousarray(dout)).copy()
    grads = [p.grad.copy() for p in reference.parameters()]
    for label, other in _layouts(x):
        for dlabel, dother in _layouts(dout):
            layer = _built(make, shape)
            np.testing.assert_allclose(layer.forward(other, training=True), out, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name}: forward, {label} input")
            np.testing.assert_allclose(layer.backward(dother), dx, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name}: backward, {label} input, {dlabel} gradient")
            for p, g in zip(layer.parameters(), grads):
                np.testing.assert_allclose(p.grad, g, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {p.name}")


def test_model_forward_predict_and_fit_accept_fortran_and_sliced_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = numdl.Sequential([numdl.LSTM(8), numdl.Linear(3)], input_shape=(6, 5))
    model.compile("cross_entropy", "adam")
    expected = model.predict(x)
    np.testing.assert_allclose(model.predict(np.asfortranarray(x)), expected, rtol=1e-6)
    np.testing.assert_allclose(model.forward(np.asfortranarray(x)), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict(np.repeat(x, 2, axis=0)[::2]), expected, rtol=1e-6)
    model.fit(np.asfortranarray(x), y, epochs=1, batch_size=16)
