"""Models out to ONNX: every example architecture ONNX can express, exported (after a little training,
so batch-norm statistics are not the defaults) and run in onnxruntime, gives numdl's predictions
(1e-5, float32); `numdl export` as a user runs it; what ONNX cannot express is named."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import numdl
from helpers import write_fashion_like
from numdl import config
from numdl.cli import cli

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGE_EXAMPLES = ["mlp_dropout_adamw.toml", "cnn.toml", "resnet.toml", "conv_autoencoder.toml", "conv_vae.toml"]
SCENE_EXAMPLES = ["unet.toml", "detector.toml"]


def _run(model, x):
    from numdl.onnx_export import to_onnx

    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


@pytest.mark.parametrize("name", ["default"] + IMAGE_EXAMPLES + SCENE_EXAMPLES)
def test_exported_example_models_predict_as_numdl_does(name):
    rng = np.random.default_rng(0)
    resolved = config.resolve(None if name == "default" else EXAMPLES / name)
    shape = (1, 64, 64) if name in SCENE_EXAMPLES else (28, 28)
    model = config.build_model(resolved, shape)
    x = rng.random((6,) + shape).astype(np.float32)
    if name not in SCENE_EXAMPLES:  # a few steps: batch-norm statistics away from their start
        y = x[:, None] if name in ("conv_autoencoder.toml", "conv_vae.toml") else rng.integers(0, 10, 6)
        model.fit(x, y, epochs=1, batch_size=3, verbose=0)
    (out,) = _run(model, x)
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-5, atol=1e-5)


def test_padding_modes_upsampling_and_several_outputs_export():
    x = numdl.Input((2, 5, 6))
    wide = numdl.Upsample(scale_factor=2, mode="bilinear")(x)
    sized = numdl.Upsample(size=[7, 9])(x)
    reflect = numdl.Conv2d(3, 4, padding="same", padding_mode="reflect")(sized)
    model = numdl.Model(x, [numdl.Multiply()([wide, wide]), numdl.Concat()([reflect, sized])], seed=0)
    model.compile([numdl.MSE(), numdl.MSE()], numdl.Adam())
    data = np.random.default_rng(1).standard_normal((3, 2, 5, 6)).astype(np.float32)
    for ours, theirs in zip(model.predict(data), _run(model, data)):
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


def test_numdl_export_writes_a_file_onnxruntime_runs(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=128, n_test=32)
    run = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", str(EXAMPLES / "cnn.toml"), "--set", f"data.path='{data}'", "--set",
                                  "train.epochs=1", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(cli, ["export", str(run / "checkpoints" / "best.safetensors"), "--onnx",
                                 str(tmp_path / "cnn.onnx")])
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    model = numdl.load_model(run / "checkpoints" / "best.safetensors")
    x = np.random.default_rng(2).standard_normal((5, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, input_shape, message", [
    ([numdl.Conv1d(4, 3, padding=1, padding_mode="circular"), numdl.Flatten()], (2, 5),
     "padding_mode='circular' has no ONNX opset 17 Pad mode"),
    ([numdl.LSTM(4, proj_size=2)], (5, 3), "proj_size (the LSTM's projected hidden state) has no counterpart"),
], ids=["circular-padding", "lstm-proj-size"])
def test_a_layer_onnx_cannot_express_is_named(tmp_path, layers, input_shape, message):
    model = numdl.Sequential(layers + [numdl.Linear(3)], input_shape=input_shape, seed=0)
    model.compile(numdl.CrossEntropy(), numdl.Adam())
    path = tmp_path / "model.safetensors"
    model.save(path)
    result = CliRunner().invoke(cli, ["export", str(path), "--onnx", str(tmp_path / "model.onnx")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "model.onnx").exists()


SEQUENCE_EXAMPLES = ["lstm.toml", "gru.toml", "transformer.toml"]


@pytest.mark.parametrize("name", SEQUENCE_EXAMPLES)
def test_sequence_example_models_export(name):
    """The LSTM, GRU and Transformer examples (ONNX's LSTM / GRU ops; attention as MatMul, Softmax)."""
    rng = np.random.default_rng(5)
    model = config.build_model(config.resolve(EXAMPLES / name), (28, 28))
    x = rng.random((6, 28, 28)).astype(np.float32)
    model.fit(x, rng.integers(0, 10, 6), epochs=1, batch_size=3, verbose=0)
    (out,) = _run(model, x)
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [
    [numdl.LSTM(5, num_layers=2, bidirectional=True, return_sequences=True), numdl.Linear(3)],
    [numdl.GRU(4, num_layers=2, bidirectional=True), numdl.Linear(3)],
    [numdl.LSTM(4, bias=False), numdl.Linear(2)],
    [numdl.MultiHeadAttention(2, causal=True), numdl.SequencePool("last")],
    [numdl.TransformerEncoderLayer(2, 8, dropout=0.1, norm_first=True, activation="gelu", causal=True),
     numdl.PositionalEncoding(), numdl.SwapAxes()],
], ids=["lstm-stacked-bidirectional", "gru-stacked-bidirectional", "lstm-no-bias", "causal-attention",
        "pre-norm-encoder"])
def test_recurrent_and_attention_options_export(layers):
    model = numdl.Sequential(layers, input_shape=(7, 4), seed=0)
    x = np.random.default_rng(6).standard_normal((3, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], model.predict(x), rtol=1e-5, atol=1e-5)


def test_an_encoder_decoder_with_token_inputs_exports():
    """The translation example's architecture: two int64 token inputs, cross-attention, the decoder."""
    source, prefix = numdl.Input((9,), dtype="int64"), numdl.Input((5,), dtype="int64")
    memory = numdl.TransformerEncoderLayer(2, 16)(numdl.PositionalEncoding()(numdl.Embedding(12, 8)(source)))
    x = numdl.PositionalEncoding(kind="learned")(numdl.Embedding(7, 8)(prefix))
    x = numdl.TransformerDecoderLayer(2, 16)([x, memory])
    x = numdl.TransformerDecoderLayer(2, 16, norm_first=True)([x, memory])
    model = numdl.Model([source, prefix], numdl.Linear(7)(x), seed=0)
    rng = np.random.default_rng(7)
    ids = [rng.integers(0, 12, (4, 9)), rng.integers(0, 7, (4, 5))]
    from numdl.onnx_export import to_onnx

    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input0": ids[0], "input1": ids[1]})
    np.testing.assert_allclose(out, model.predict(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [numdl.MaxPool2d(3, 2, 1, ceil_mode=True), numdl.AvgPool2d(3, 2, 1, ceil_mode=True),
                                   numdl.MaxPool2d(2, 1, 1, dilation=[2, 3]), numdl.GroupNorm(2),
                                   numdl.AvgPool2d([3, 2], 2, 1, ceil_mode=True, count_include_pad=False),
                                   numdl.AdaptiveAvgPool2d([7, 2]), numdl.AdaptiveMaxPool2d([1, 3])],
                         ids=["max-ceil", "avg-ceil", "max-dilated", "groupnorm", "avg-ceil-exclude-pad",
                              "adaptive-avg", "adaptive-max"])
def test_pooling_options_export(layer):
    model = numdl.Sequential([layer], input_shape=(2, 7, 6), seed=0)
    x = np.random.default_rng(3).standard_normal((3, 2, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], model.predict(x), rtol=1e-5, atol=1e-6)


def test_uneven_adaptive_pooling_is_named_as_not_exportable():
    from numdl.errors import ConfigError
    from numdl.onnx_export import to_onnx

    model = numdl.Sequential([numdl.AdaptiveAvgPool2d(4)], input_shape=(2, 7, 6), seed=0)
    with pytest.raises(ConfigError, match="adaptive pooling of 7x6 to 4x4 has uneven windows"):
        to_onnx(model)


@pytest.mark.parametrize("layer", [numdl.Softmax(axis=1), numdl.LogSoftmax(), numdl.LogSoftmax(axis=-2)],
                         ids=["softmax-channels", "log-softmax", "log-softmax-rows"])
def test_softmax_axes_export(layer):
    model = numdl.Sequential([layer], input_shape=(3, 4, 5), seed=0)
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3
    np.testing.assert_allclose(_run(model, x)[0], model.predict(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_layers_with_initial_states_export(kind):
    x = numdl.Input((6, 4))
    states = [numdl.Input((4, 3)) for _ in range(2 if kind == "lstm" else 1)]
    layer = (numdl.LSTM if kind == "lstm" else numdl.GRU)(3, num_layers=2, bidirectional=True, initial_state=True)
    model = numdl.Model([x, *states], numdl.Linear(2)(layer([x, *states])), seed=0)
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal((3, 6, 4)).astype(np.float32)] + \
        [rng.standard_normal((3, 4, 3)).astype(np.float32) for _ in states]
    from numdl.onnx_export import to_onnx

    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {f"input{i}": a for i, a in enumerate(arrays)})
    np.testing.assert_allclose(out, model.predict(arrays), rtol=1e-5, atol=1e-5)
