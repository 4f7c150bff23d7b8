import numpy as np
import pytest

import numdl
from helpers import separable_images
from numdl.errors import ConfigError, DataError, ShapeError


def _data(n=400, seed=0):
    x, y = separable_images(n, seed, size=10, classes=5)
    return (x / 255.0).astype(np.float32), y


def _mlp(**kwargs):
    layers = [numdl.Flatten(), numdl.Linear(32), numdl.ReLU(), numdl.Dropout(0.1), numdl.Linear(5)]
    return numdl.Sequential(layers, **kwargs).compile("cross_entropy", numdl.Adam(lr=3e-3))


def test_fit_learns_and_history_has_metrics():
    x, y = _data()
    xt, yt = _data(200, seed=1)
    model = _mlp(seed=0)
    history = model.fit(x, y, epochs=4, batch_size=32, eval_data={"test": (xt, yt)})
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.9
    for key in ("train_accuracy", "epoch_seconds", "samples_per_second", "test_loss"):
        assert key in history[-1]
    result = model.evaluate(xt, yt)
    assert result["accuracy"] == pytest.approx(history[-1]["test_accuracy"])
    assert model.predict(xt).shape == (200, 5)


def test_same_seed_same_weights_and_different_seed_differs():
    x, y = _data()
    runs = []
    for seed in (0, 0, 1):
        model = _mlp(seed=seed)
        model.fit(x, y, epochs=1, batch_size=50)
        runs.append(np.concatenate([p.value.ravel() for p in model.parameters()]))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_float64_model_and_regression_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    model = numdl.Sequential([numdl.Linear(1)], dtype="float64").compile(numdl.MSE(), numdl.SGD(lr=0.1, momentum=0.9))
    history = model.fit(x, y, epochs=30, batch_size=32)
    assert history[-1]["train_loss"] < 1e-6
    assert history[-1]["train_accuracy"] is None
    np.testing.assert_allclose(model.layers[0].params["weight"].value, [[1.0, -2.0, 0.5]], atol=1e-3)


def test_custom_training_loop_with_public_pieces():
    """An autoencoder trained with forward / loss / backward / step, as a GAN loop would be written."""
    x, _ = _data(256)
    x = x.reshape(256, -1)
    model = numdl.Sequential([numdl.Linear(16), numdl.Tanh(), numdl.Linear(100)], input_shape=(100,), seed=0)
    loss, optimizer = numdl.MSE(), numdl.Adam(lr=1e-2)
    first = None
    for step in range(150):
        batch = x[(step * 32) % 224:(step * 32) % 224 + 32]
        value = loss.forward(model.forward(batch, training=True), batch)
        model.backward(loss.backward())
        optimizer.step(model.parameters())
        first = value if first is None else first
    assert value < 0.5 * first


def test_boundary_validation_messages():
    x, y = _data(64)
    model = _mlp(seed=0)
    model.fit(x, y, epochs=1, batch_size=32)
    with pytest.raises(ShapeError, match=r"samples of shape \(9, 10\) but the model expects \(10, 10\)"):
        model.evaluate(x[:, :9], y)
    bad = y.copy().astype(np.int64)
    bad[3] = 5
    with pytest.raises(DataError, match=r"label 5 is outside \[0, 5\)"):
        model.fit(x, bad, epochs=1)
    bad[3] = -1
    with pytest.raises(DataError, match=r"label -1 is outside"):
        model.evaluate(x, bad)
    nan = x.copy()
    nan[7, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN or Inf .*sample 7"):
        model.fit(nan, y, epochs=1)
    with pytest.raises(DataError, match="empty"):
        model.predict(x[:0])
    # forward converts another dtype as fit and predict do (the README's snippet passes float64)
    expected = model.forward(x.astype(np.float32)).copy()
    np.testing.assert_allclose(model.forward(x.astype(np.float64)), expected, rtol=1e-6)
    with pytest.raises(DataError, match="must be numeric"):
        model.forward(x.astype(str))
    with pytest.raises(ShapeError, match="has 64 samples but 63 targets"):
        model.fit(x, y[:63], epochs=1)


def test_layer_shape_errors_name_the_layer():
    with pytest.raises(ShapeError, match=r"model.layers.0 \(linear\).*add a 'flatten' layer"):
        numdl.Sequential([numdl.Linear(3)], input_shape=(2, 4, 4))
    with pytest.raises(ShapeError, match=r"model.layers.1 \(conv2d\).*\(batch, channels, height, width\)"):
        numdl.Sequential([numdl.Flatten(), numdl.Conv2d(3, 3)], input_shape=(4, 4))


def test_compile_required_and_unknown_names():
    model = numdl.Sequential([numdl.Linear(2)], input_shape=(3,))
    with pytest.raises(ConfigError, match="compile"):
        model.fit(np.zeros((2, 3)), np.zeros(2, int))
    with pytest.raises(numdl.RegistryError, match="unknown loss 'hinge'; available: bce_with_logits"):
        model.compile("hinge", "adam")


def test_warmup_changes_nothing():
    x, y = _data(64)
    model = _mlp(seed=0)
    model.build(x.shape[1:])
    before = [p.value.copy() for p in model.parameters()]
    dropout_state = model.layers[3].get_rng_state()
    model.warmup(8)
    assert all(np.array_equal(b, p.value) for b, p in zip(before, model.parameters()))
    assert model.layers[3].get_rng_state() == dropout_state
    assert model.optimizer.state is None


@pytest.mark.parametrize("kind", ["mlp", "cnn", "batchnorm", "residual", "transformer", "graph"])
def test_fused_relu_gives_the_unfused_numbers(kind):
    """A Linear, Conv2d or batch norm followed by a ReLU applies the ReLU itself (the ReLU layer
    passes through), inside composite layers too (a residual block, a Transformer's feed-forward,
    a composite in a graph); outputs (training and evaluation), parameter gradients and the input
    gradient equal the unfused model's."""
    def make(fuse):
        if kind == "residual":  # a block Conv2d -> BatchNorm2d -> ReLU -> Conv2d
            block = [numdl.Conv2d(1, 3, padding=1), numdl.BatchNorm2d(), numdl.ReLU(), numdl.Conv2d(1, 3, padding=1)]
            layers = [numdl.Residual(block), numdl.ReLU(), numdl.Flatten(), numdl.Linear(3)]
        elif kind == "transformer":  # the feed-forward's Linear -> ReLU, dropout off
            layers = [numdl.Reshape([6, 6]), numdl.TransformerEncoderLayer(2, 8, dropout=0.0), numdl.Flatten(),
                      numdl.Linear(3)]
        elif kind == "graph":
            image = numdl.Input((1, 6, 6))
            h = numdl.Residual([numdl.Conv2d(1, 3, padding=1), numdl.ReLU(), numdl.Conv2d(1, 3, padding=1)])(image)
            return numdl.Model(image, numdl.Linear(3)(numdl.Flatten()(h)), dtype="float64", seed=2, input_grad=True,
                               fuse=fuse)
        elif kind == "mlp":
            layers = [numdl.Flatten(), numdl.Linear(16), numdl.ReLU(), numdl.Linear(8), numdl.ReLU(), numdl.Linear(3)]
        elif kind == "cnn":
            layers = [numdl.Conv2d(4, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2), numdl.Flatten(),
                      numdl.Linear(3)]
        else:
            layers = [numdl.Conv2d(4, 3, padding=1), numdl.BatchNorm2d(), numdl.ReLU(), numdl.Flatten(),
                      numdl.Linear(3)]
        return numdl.Sequential(layers, input_shape=(1, 6, 6), dtype="float64", seed=2, input_grad=True, fuse=fuse)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 6, 6))
    dout = rng.standard_normal((5, 3))
    fused, plain = make(True), make(False)

    def relus(model):  # every ReLU, nested ones included, in order
        tops = [node.layer for node in model.order if node.layer is not None] if kind == "graph" else model.layers
        return [leaf for top in tops for _, leaf in top.leaves() if isinstance(leaf, numdl.ReLU)]

    # the ReLU after the Residual stays a layer of its own (a Residual applies no following ReLU)
    expected = {"mlp": [True, True], "residual": [True, False]}.get(kind, [True])
    assert [layer.absorbed for layer in relus(fused)] == expected
    assert not any(layer.absorbed for layer in relus(plain))
    np.testing.assert_allclose(fused.forward(x, training=True), plain.forward(x, training=True), rtol=1e-12)
    np.testing.assert_allclose(fused.backward(dout.copy()), plain.backward(dout.copy()), rtol=1e-12, atol=1e-14)
    for (name, a), b in zip(fused.named_parameters().items(), plain.parameters()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-12)


@pytest.mark.parametrize("kind", ["relu", "no_relu", "odd_strided", "graph", "batchnorm", "batchnorm_plain"])
def test_fused_max_pooling_gives_the_unfused_numbers(kind):
    """A Conv2d or BatchNorm2d (with the ReLU it applies, or none) followed by a 2x2 max pooling at
    stride 2 applies the pooling in its own pass (the pooling layer passes through); training and
    evaluation outputs, every gradient, the input gradient and the running statistics equal the
    unfused model's, in a Sequential and in a graph."""
    def make(fuse):
        if kind == "graph":
            image = numdl.Input((2, 9, 9))
            h = numdl.MaxPool2d(2)(numdl.ReLU()(numdl.Conv2d(4, 3, padding=1)(image)))
            h = numdl.MaxPool2d(2)(numdl.Conv2d(6, 3, padding=1, bias=False)(h))
            return numdl.Model(image, numdl.Linear(3)(numdl.Flatten()(h)), dtype="float64", seed=2, input_grad=True,
                               fuse=fuse)
        if kind == "batchnorm":  # the examples' conv -> batch norm -> ReLU -> pooling, odd 9x9 images
            first = [numdl.Conv2d(4, 3, padding=1, bias=False), numdl.BatchNorm2d(), numdl.ReLU()]
        elif kind == "batchnorm_plain":  # no ReLU, no affine, batch statistics in evaluation too
            first = [numdl.Conv2d(4, 3, padding=1), numdl.BatchNorm2d(affine=False, track_running_stats=False)]
        else:
            first = [{"relu": numdl.Conv2d(4, 3, padding=1), "no_relu": numdl.Conv2d(4, 3, padding=1, bias=False),
                      "odd_strided": numdl.Conv2d(4, 3, stride=2, dilation=2, padding=2, groups=2)}[kind]]
            first += [] if kind == "no_relu" else [numdl.ReLU()]
        layers = first + [
            numdl.MaxPool2d(2), numdl.Conv2d(6, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2), numdl.Flatten(),
            numdl.Linear(3)]
        return numdl.Sequential(layers, input_shape=(2, 9, 9), dtype="float64", seed=2, input_grad=True, fuse=fuse)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 9, 9))
    dout = rng.standard_normal((5, 3))
    fused, plain = make(True), make(False)
    layers = [node.layer for node in fused.order if node.layer is not None] if kind == "graph" else fused.layers
    pools = [layer for layer in layers if isinstance(layer, numdl.MaxPool2d)]
    assert [layer.fused_pool for layer in layers if getattr(layer, "fused_pool", None) is not None] == pools
    assert all(pool.absorbed for pool in pools)
    np.testing.assert_allclose(fused.forward(x, training=True), plain.forward(x, training=True), rtol=1e-12)
    np.testing.assert_allclose(fused.backward(dout.copy()), plain.backward(dout.copy()), rtol=1e-12, atol=1e-14)
    for (name, a), b in zip(fused.named_parameters().items(), plain.parameters()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-12)
    for (name, a), b in zip(fused.named_state().items(), plain.named_state().values()):
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)


def test_max_pooling_is_fused_only_where_the_numbers_stay_the_same():
    """Not fused: a pooling with another window or stride, or ceil_mode, or after a layer between it
    and the convolution; in a graph, a convolution whose output (or ReLU) another node reads too."""
    def fused_pools(*layers):
        model = numdl.Sequential(list(layers), input_shape=(1, 8, 8))
        model.build((1, 8, 8))
        return [layer.fused_pool is not None for layer in model.layers if isinstance(layer, numdl.Conv2d)]

    assert fused_pools(numdl.Conv2d(2, 3, padding=1), numdl.MaxPool2d(2, stride=1)) == [False]
    assert fused_pools(numdl.Conv2d(2, 3, padding=1), numdl.MaxPool2d(3)) == [False]
    assert fused_pools(numdl.Conv2d(2, 3), numdl.MaxPool2d(2, ceil_mode=True)) == [False]
    assert fused_pools(numdl.Conv2d(2, 3), numdl.AvgPool2d(2)) == [False]
    assert fused_pools(numdl.Conv2d(2, 3), numdl.ReLU(), numdl.MaxPool2d(2)) == [True]

    image = numdl.Input((1, 8, 8))
    features = numdl.ReLU()(numdl.Conv2d(2, 3, padding=1)(image))
    pooled = numdl.MaxPool2d(2)(features)
    model = numdl.Model(image, [numdl.Flatten()(pooled), numdl.Flatten()(features)])  # built: shapes known
    assert not any(node.layer.fused_pool for node in model.order if isinstance(node.layer, numdl.Conv2d))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_gradient_stops_the_step_before_any_weight_changes(bad):
    """The NaN guard's gradient check (one counting kernel over the flat gradient buffer) names the
    parameter and leaves every weight as it was."""
    from numdl.errors import TrainingDiverged

    x, y = _data(64)
    model = _mlp(input_shape=x.shape[1:], seed=0)
    # the layer path, whose backward is poisoned below (the one-call path's check: tests/test_dense_chain.py)
    model.fused_training = False
    model.warmup(16)
    head = model.layers[-1]
    backward = head.backward

    def poisoned(dout):
        result = backward(dout)
        head.params["weight"].grad[0, 1] = bad
        return result

    head.backward = poisoned
    before = {name: p.value.copy() for name, p in model.named_parameters().items()}
    with pytest.raises(TrainingDiverged, match=r"the gradient of .*linear\.weight is not finite"):
        model.train_step(x[:16], y[:16])
    for name, p in model.named_parameters().items():
        np.testing.assert_array_equal(p.value, before[name], err_msg=name)


def test_count_non_finite_counts_inf_and_nan_afresh_each_call():
    from numdl.backend import ops_for

    values = np.ones(10_001, np.float32)
    ops = ops_for(values)
    assert ops.count_non_finite(values) == 0
    values[[0, 5_000, 10_000]] = [np.nan, -np.inf, np.inf]
    assert ops.count_non_finite(values) == 3
    assert ops.count_non_finite(values[:1]) == 1 and ops.count_non_finite(values[1:5_000]) == 0
    assert ops.count_non_finite(np.zeros(0, np.float64)) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_refused_at_the_boundary_naming_the_sample(bad):
    x, y = _data(64)
    model = _mlp(input_shape=x.shape[1:], seed=0)
    x[37, 2, 3] = bad
    with pytest.raises(DataError, match="input data contains NaN or Inf \\(first at sample 37\\)"):
        model.predict(x)
    with pytest.raises(DataError, match="contains NaN or Inf \\(first at sample 37\\)"):
        model.fit(x, y, epochs=1, batch_size=16)
    # predict looks batch by batch: a sample in a later batch is still named by its place in x
    with pytest.raises(DataError, match="input data contains NaN or Inf \\(first at sample 37\\)"):
        model.predict(x, batch_size=10)
    x[37, 2, 3] = 0.0
    x[63, 0, 0] = bad
    with pytest.raises(DataError, match="input data contains NaN or Inf \\(first at sample 63\\)"):
        model.predict(x, batch_size=16)


def test_predict_reads_a_memory_mapped_input_batch_by_batch_and_names_a_bad_sample(tmp_path):
    x, _ = _data(64)
    model = _mlp(input_shape=x.shape[1:], seed=0)
    np.save(tmp_path / "x.npy", x)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(model.predict(on_disk, batch_size=16), model.predict(x, batch_size=16))
    x[50, 1, 1] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError, match="input data contains NaN or Inf \\(first at sample 50\\)"):
        model.predict(np.load(tmp_path / "bad.npy", mmap_mode="r"), batch_size=16)
