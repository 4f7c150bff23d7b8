"""model.predict's one-call path of a dense model (numdl.dense_chain): the same outputs and input
checks as the layer-by-layer path, and only where the kernel runs every layer."""

import numpy as np
import pytest

import numdl
from numdl import dense_chain
from numdl.errors import DataError


def _layer_by_layer(model, x, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(dense_chain, "ONE_CALL_PREDICT", False)
        return model.predict(x)


def _dense_model(dtype):
    layers = [numdl.Flatten(), numdl.Linear(19), numdl.ReLU(), numdl.Dropout(0.5), numdl.Linear(13, bias=False),
              numdl.Tanh(), numdl.Linear(11), numdl.GELU(), numdl.Linear(9), numdl.GELU("tanh"), numdl.Linear(8),
              numdl.Sigmoid(), numdl.Linear(5)]
    return numdl.Sequential(layers, input_shape=(3, 7), dtype=dtype, seed=1)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("samples", [1, 3, 8, 64])
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
    chain = model._dense_chain()
    chain.predict(model, np.zeros((2, 3, 7)))
    x = np.random.default_rng(4).standard_normal((24, 3, 7))
    expected = _layer_by_layer(model, x, monkeypatch)
    np.testing.assert_allclose(chain.predict(model, x), expected, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_predict_goes_batch_by_batch_as_the_layer_path(batch_size, monkeypatch):
    model = _dense_model("float64")
    x = np.random.default_rng(6).standard_normal((30, 3, 7))
    np.testing.assert_allclose(model.predict(x, batch_size=batch_size), _layer_by_layer(model, x, monkeypatch),
                               rtol=1e-12)
    x[23, 2, 2] = np.nan  # in the fourth batch of 7: the error names it by its place in all of x
    with pytest.raises(DataError, match=r"^input data contains NaN or Inf \(first at sample 23\)$"):
        model.predict(x, batch_size=batch_size)


@pytest.mark.parametrize("layers", [[numdl.Linear(3)], [numdl.Linear(3), numdl.LeakyReLU()]], ids=["chain", "layers"])
def test_a_batch_size_below_one_is_one_clear_error_on_both_paths(layers):
    from numdl.errors import ConfigError

    model = numdl.Sequential(layers, input_shape=(4,), dtype="float32")
    for size in (0, -2):
        with pytest.raises(ConfigError, match=rf"^batch_size must be >= 1, got {size}$"):
            model.predict(np.zeros((5, 4), np.float32), batch_size=size)


def test_a_large_batch_split_between_threads_is_the_one_thread_result():
    # 2000 samples of 21 features pass tuning.SPLIT_MIN_ELEMENTS: the non-finite count and the bias and
    # activation passes go by sample halves, one per thread
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread")
    model = _dense_model("float32")
    x = np.random.default_rng(7).standard_normal((2000, 3, 7)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = model.predict(x, batch_size=2000)
        numba.set_num_threads(2)
        two = model.predict(x, batch_size=2000)
        for row in (3, 1500):  # in the first thread's half and in the second's
            bad = x.copy()
            bad[row, 1, 1] = np.inf
            with pytest.raises(DataError, match=rf"\(first at sample {row}\)$"):
                model.predict(bad, batch_size=2000)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6)


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


# ------------------------------------------------------------------------------ train_step in one call
def _trainable_chain(dtype, loss=None, optimizer=None, fused=True):
    layers = [numdl.Flatten(), numdl.Linear(12), numdl.ReLU(), numdl.Linear(9, bias=False), numdl.Tanh(),
              numdl.Linear(7), numdl.Sigmoid(), numdl.Linear(5)]
    model = numdl.Sequential(layers, input_shape=(3, 4), dtype=dtype, seed=3)
    model.compile(loss or numdl.CrossEntropy(), optimizer or numdl.Adam(lr=0.05))
    model.fused_training = fused
    return model


def _batch(dtype, samples=10, seed=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, 3, 4)).astype(dtype), rng.integers(0, 5, samples)


def _count_chain_calls(model, monkeypatch):
    calls = []
    original = model.ops.dense_chain_train
    monkeypatch.setattr(model.ops, "dense_chain_train", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("loss", [
    lambda: numdl.CrossEntropy(),
    lambda: numdl.CrossEntropy(reduction="sum", label_smoothing=0.2),
    lambda: numdl.CrossEntropy(weight=[1.0, 2.0, 0.5, 1.0, 3.0], ignore_index=2),
], ids=["mean", "sum_smoothing", "weights_ignore_index"])
def test_a_training_step_in_one_call_equals_the_layer_path(dtype, rtol, loss, monkeypatch):
    fused, layered = _trainable_chain(dtype, loss()), _trainable_chain(dtype, loss(), fused=False)
    calls = _count_chain_calls(fused, monkeypatch)
    for step in range(4):
        x, y = _batch(dtype, samples=10 if step < 3 else 3, seed=step)  # a short last batch too
        (loss_a, correct_a), (loss_b, correct_b) = fused.train_step(x, y), layered.train_step(x, y)
        assert loss_a == pytest.approx(loss_b, rel=rtol) and correct_a == correct_b
    assert len(calls) == 4
    for (name, a), b in zip(fused.named_parameters().items(), layered.parameters()):
        # the same products in the same order (float32: in register blocks, rounded apart); the inlined
        # scalar math may round its last bit apart
        np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=rtol, err_msg=name)
        np.testing.assert_allclose(a.grad, b.grad, rtol=rtol, atol=rtol, err_msg=name)


def test_label_smoothing_changed_between_steps_applies_to_the_next_one_call_step():
    # the backend converts the chain's scalars once and keeps them while they stay the same: a new
    # value must reach the kernel at the next step (as the layer path reads it every step)
    fused, layered = _trainable_chain("float64"), _trainable_chain("float64", fused=False)
    for step, smoothing in enumerate((0.0, 0.3, 0.3, 0.0)):
        fused.loss.label_smoothing = layered.loss.label_smoothing = smoothing
        x, y = _batch("float64", seed=step)
        (loss_a, _), (loss_b, _) = fused.train_step(x, y), layered.train_step(x, y)
        assert loss_a == pytest.approx(loss_b, rel=1e-12)
    for a, b in zip(fused.parameters(), layered.parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-12)


def test_fit_in_one_call_gives_the_layer_paths_history_and_weights():
    x, y = _batch("float64", samples=70)
    runs = []
    for fused in (True, False):
        model = _trainable_chain("float64", fused=fused)
        history = model.fit(x, y, epochs=2, batch_size=16, validation_data=(x[:20], y[:20]))
        runs.append((history, [p.value.copy() for p in model.parameters()]))
    (first, weights_a), (second, weights_b) = runs
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert len(first) == len(second) == 2
    for epoch_a, epoch_b in zip(first, second):
        assert epoch_a.keys() == epoch_b.keys()
        for key in epoch_a:
            if "loss" in key or "accuracy" in key:
                assert epoch_a[key] == pytest.approx(epoch_b[key], rel=1e-10), key


def test_labels_out_of_range_are_the_losss_error():
    model = _trainable_chain("float32")
    x, y = _batch("float32")
    model.train_step(x, y)
    y[4] = 5
    # the kernel finds it (int64 labels go in unchecked) before touching anything
    _refused_without_a_step(model, x, y, DataError, r"label 5 is outside \[0, 5\) for a model with 5 outputs")


def _refused_without_a_step(model, x, y, error, message):
    """train_step(x, y) raises ``error`` matching ``message`` and leaves the parameters, the optimizer's
    moments and its step count as they were."""
    before, steps = model._bank.values.copy(), model.optimizer.steps
    moments = [{name: buffer.copy() for name, buffer in state.items()} for state in model.optimizer.state]
    with pytest.raises(error, match=message):
        model.train_step(x, y)
    np.testing.assert_array_equal(model._bank.values, before)
    assert model.optimizer.steps == steps
    for saved, state in zip(moments, model.optimizer.state):
        for name, buffer in saved.items():
            np.testing.assert_array_equal(buffer, state[name], err_msg=name)


def _fusion_switched_off(model):
    """The same model taking the optimizer's own step after the chain's kernel (as before the kernel took it)."""
    model.optimizer.kernel_step = lambda params, values: None
    return model


def _count_updates(model, monkeypatch):
    calls = []
    original = model.optimizer.update
    monkeypatch.setattr(model.optimizer, "update", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", [
    lambda: numdl.Adam(lr=0.05, weight_decay=0.01),
    lambda: numdl.AdamW(lr=0.02, betas=(0.8, 0.99), maximize=True),
], ids=["adam_l2", "adamw_maximize"])
def test_adam_steps_inside_the_call_exactly_as_the_optimizer(dtype, optimizer, monkeypatch):
    inside = _trainable_chain(dtype, optimizer=optimizer())
    outside = _fusion_switched_off(_trainable_chain(dtype, optimizer=optimizer()))
    updates = _count_updates(inside, monkeypatch), _count_updates(outside, monkeypatch)
    for step in range(5):
        x, y = _batch(dtype, samples=10 if step < 4 else 3, seed=step)
        assert inside.train_step(x, y) == outside.train_step(x, y)
    assert updates == ([], [1] * 5)  # the kernel took every step of the first
    assert inside.optimizer.steps == outside.optimizer.steps == 5
    np.testing.assert_array_equal(inside._bank.values, outside._bank.values)  # bit for bit
    for a, b in zip(inside.optimizer.state, outside.optimizer.state):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class _OwnUpdateAdam(numdl.Adam):  # a plugin's Adam with an update of its own (here: Adam's)
    def update(self, param, state):
        super().update(param, state)


@pytest.mark.parametrize("setting", ["amsgrad", "sgd", "clip", "param_groups", "own_update"])
def test_other_optimizers_and_clipping_step_after_the_call(setting, monkeypatch):
    optimizer = {"amsgrad": lambda: numdl.Adam(lr=0.05, amsgrad=True), "sgd": lambda: numdl.SGD(lr=0.1, momentum=0.9),
                 "clip": lambda: numdl.Adam(lr=0.05),
                 "param_groups": lambda: numdl.Adam(lr=0.05, param_groups=[{"params": ["*bias"], "lr_scale": 0.5}]),
                 "own_update": lambda: _OwnUpdateAdam(lr=0.05)}
    fused, layered = (_trainable_chain("float64", optimizer=optimizer[setting](), fused=f) for f in (True, False))
    if setting == "clip":
        fused.clip_grad_norm = layered.clip_grad_norm = 0.5
    calls, updates = _count_chain_calls(fused, monkeypatch), _count_updates(fused, monkeypatch)
    for step in range(3):
        x, y = _batch("float64", seed=step)
        fused.train_step(x, y)
        layered.train_step(x, y)
    assert len(calls) == 3 and len(updates) >= 3
    for a, b in zip(fused.parameters(), layered.parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-12)


def test_a_loss_above_the_divergence_limit_takes_no_step():
    from numdl.errors import TrainingDiverged

    model = _trainable_chain("float32")
    model.divergence_factor = 2.0
    x, y = _batch("float32")
    first, _ = model.train_step(x, y)
    assert model.reference_loss == first
    model.reference_loss = first / 4  # as if the run had started four times lower: this batch is above 2x
    before, steps = model._bank.values.copy(), model.optimizer.steps
    _refused_without_a_step(model, x, y, TrainingDiverged, r"times the run's first loss .* no step was taken with it")
    model.reference_loss = first  # within the limit again: the step is taken
    model.train_step(x, y)
    assert model.optimizer.steps == steps + 1 and not np.array_equal(model._bank.values, before)


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_input_and_gradients_are_the_layer_paths_errors(fused):
    from numdl.errors import TrainingDiverged

    model = _trainable_chain("float64", fused=fused)
    x, y = _batch("float64")
    before = [p.value.copy() for p in model.parameters()]
    bad = x.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match=r"loss is nan: the output of model.layers.0 \(flatten\) is the first"):
        model.train_step(bad, y)
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b.value)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_a_large_batch_split_between_threads_trains_as_the_layer_path(dtype, rtol):
    # tuning.CHAIN_SPLIT_MIN_SAMPLES samples and more: each thread runs every layer on its share of
    # the batch (with numba at two threads); the loss, gradients and Adam's step are the layer path's
    import numba

    from numdl.kernels import tuning

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread")
    x, y = _batch(dtype, samples=tuning.CHAIN_SPLIT_MIN_SAMPLES + 5, seed=9)
    y[:7] = [0, 1, 2, 3, 4, 0, 1]
    results = {}
    _trainable_chain(dtype).ops.use_threads("numba")  # (for good, at every core: then one thread, then two)
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            fused, layered = _trainable_chain(dtype), _trainable_chain(dtype, fused=False)
            assert (fused.ops.dense_chain_partials(fused._bank.grads, x.shape[0]).shape[0] == 1) == (threads == 2)
            loss_a, correct_a = fused.train_step(x, y)
            loss_b, correct_b = layered.train_step(x, y)
            assert loss_a == pytest.approx(loss_b, rel=rtol) and correct_a == correct_b
            # (values: Adam's first step turns a float32 rounding of a gradient near 0 into up to ~1e-6)
            for a, b in zip(fused.parameters(), layered.parameters()):
                np.testing.assert_allclose(a.grad, b.grad, rtol=rtol, atol=rtol)
                np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=10 * rtol)
            results[threads] = [p.grad.copy() for p in fused.parameters()]
    finally:
        numba.set_num_threads(before)
    for one, two in zip(results[1], results[2]):
        np.testing.assert_allclose(two, one, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_training_gives_the_same_gradients_every_time(dtype):
    # The threads' blocks of samples run their layers unsynchronised: one block's gradients must never
    # land in the other's stretch of the shared scratch, whichever layer each has reached (the hidden
    # widths 12, 9, 7 differ). A race there gave wrong gradients in ~1 step of 9 (float64) and 1 of 4
    # (float32): 40 steps from fresh models, each against the first.
    import numba

    from numdl.kernels import tuning

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: numba has one thread")
    x, y = _batch(dtype, samples=tuning.CHAIN_SPLIT_MIN_SAMPLES + 5, seed=9)
    _trainable_chain(dtype).ops.use_threads("numba")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        first = None
        for _ in range(40):
            model = _trainable_chain(dtype)
            assert model.ops.dense_chain_partials(model._bank.grads, x.shape[0]).shape[0] == 1  # split in two
            model.train_step(x, y)
            grads = [p.grad.copy() for p in model.parameters()]
            if first is None:
                first = grads
            for got, want in zip(grads, first):
                np.testing.assert_array_equal(got, want)
    finally:
        numba.set_num_threads(before)


def test_a_non_finite_gradient_names_the_parameter_and_takes_no_step(monkeypatch):
    from numdl.errors import TrainingDiverged

    model = _trainable_chain("float32")
    x, y = _batch("float32")
    before = [p.value.copy() for p in model.parameters()]
    original = model.ops.dense_chain_train

    def poisoned(grads, stats, *rest):  # as if the kernel found an overflow in the third layer's weight
        original(grads, stats, *rest[:-2], None, rest[-1])  # (so the kernel takes no optimizer step)
        model.layers[5].params["weight"].grad[2, 3] = np.inf
        stats[2] = 1

    monkeypatch.setattr(model.ops, "dense_chain_train", poisoned)
    with pytest.raises(TrainingDiverged, match=r"^the gradient of 5\.linear\.weight is not finite$"):
        model.train_step(x, y)
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b.value)


def test_probability_targets_and_other_losses_keep_the_layer_path(monkeypatch):
    model = _trainable_chain("float64")
    calls = _count_chain_calls(model, monkeypatch)
    x, y = _batch("float64")
    soft = np.eye(5)[y] * 0.9 + 0.02
    model.train_step(x, soft)
    mse = _trainable_chain("float64", loss=numdl.MSE())
    mse.train_step(x, np.eye(5)[y])
    assert calls == [] and mse._dense_chain(training=True) is not None  # the model fits; the loss does not


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_dropout_and_gelu_in_one_call_as_the_layers(dtype, rtol, monkeypatch):
    def model(fused):
        layers = [numdl.Flatten(), numdl.Linear(16), numdl.GELU(), numdl.Dropout(0.5), numdl.Linear(8),
                  numdl.Tanh(), numdl.Dropout(0.2, seed=99), numdl.Linear(6), numdl.GELU("tanh"), numdl.Dropout(0.0),
                  numdl.Linear(5)]
        net = numdl.Sequential(layers, input_shape=(3, 4), dtype=dtype, seed=4)
        net.compile(numdl.CrossEntropy(), numdl.SGD(lr=0.1, momentum=0.9))
        net.fused_training = fused
        return net

    fused, layered = model(True), model(False)
    calls = _count_chain_calls(fused, monkeypatch)
    for step in range(3):
        x, y = _batch(dtype, samples=9, seed=10 + step)
        (loss_a, correct_a), (loss_b, correct_b) = fused.train_step(x, y), layered.train_step(x, y)
        assert loss_a == pytest.approx(loss_b, rel=rtol) and correct_a == correct_b
    assert len(calls) == 3
    for a, b in zip(fused.layers, layered.layers):  # each stream advanced as far
        assert a.get_rng_state() == b.get_rng_state()
    for (name, a), b in zip(fused.named_parameters().items(), layered.parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=rtol, err_msg=name)
    np.testing.assert_allclose(fused.predict(x), layered.predict(x), rtol=rtol, atol=rtol)


def test_a_dropout_rate_changed_after_the_plan_is_the_one_used():
    x, y = _batch("float64", samples=8)
    models = []
    for fused in (True, False):
        layers = [numdl.Flatten(), numdl.Linear(10), numdl.ReLU(), numdl.Dropout(0.0), numdl.Linear(5)]
        model = numdl.Sequential(layers, input_shape=(3, 4), dtype="float64", seed=2)
        model.compile(numdl.CrossEntropy(), numdl.SGD(lr=0.1))
        model.fused_training = fused
        model.train_step(x, y)
        model.layers[3].p = 0.5  # a rate schedule, say: from the next step on
        model.train_step(x, y)
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-12)
    assert models[0].layers[3].get_rng_state() == models[1].layers[3].get_rng_state()


def test_the_dropout_example_trains_in_one_call():
    from pathlib import Path

    from numdl import config

    example = Path(__file__).resolve().parents[1] / "examples" / "mlp_dropout_adamw.toml"
    model = config.build_model(config.resolve(str(example), []), (28, 28))
    assert model._dense_chain(training=True) is not None


@pytest.mark.parametrize("layers", [
    [numdl.Linear(4), numdl.Dropout(0.2), numdl.Tanh(), numdl.Linear(2)],  # a Dropout before the activation
    [numdl.Dropout(0.2), numdl.Linear(4), numdl.Linear(2)],  # on the input
    [numdl.Linear(4), numdl.Linear(2), numdl.Dropout(0.2)],  # on the logits
], ids=["dropout_before_activation", "dropout_first", "dropout_last"])
def test_chains_the_kernel_cannot_train_keep_the_layer_path(layers):
    model = numdl.Sequential(layers, input_shape=(6,), dtype="float64")
    assert model._dense_chain(training=True) is None
    model.compile(numdl.CrossEntropy(), numdl.SGD(lr=0.1))
    loss, _ = model.train_step(np.ones((3, 6)), np.array([0, 1, 1]))
    assert np.isfinite(loss)
