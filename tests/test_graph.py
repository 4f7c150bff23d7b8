"""Graph models: the functional API and config graphs, gradients through shared layers, fan-out and
several outputs (float64 central differences), training, checkpoints, and the errors a malformed
graph gets."""

import re

import numpy as np
import pytest
from helpers import invoke_cli, write_fashion_like

import numdl
from numdl.errors import ConfigError, DataError, ShapeError
from numdl.testing import numeric_gradient


def _two_headed_graph(dtype="float64", input_grad=False):
    """Input -> conv -> relu -> a conv used twice -> sum of three tensors (fan-out) -> two heads."""
    x = numdl.Input((2, 6, 6), name="image")
    relu = numdl.ReLU()(numdl.Conv2d(3, 3, padding=1)(x), name="features")
    shared = numdl.Conv2d(3, 3, padding=1)
    once = shared(relu, name="once")
    twice = shared(once, name="twice")
    total = numdl.Add()([once, twice, relu], name="sum")
    up = numdl.Upsample(scale_factor=2, mode="bilinear")(total)
    learned = numdl.ConvTranspose2d(2, 2, stride=2)(total)
    joined = numdl.Concat()([up, learned], name="joined")
    classes = numdl.Linear(4)(numdl.Flatten()(joined), name="classes")
    gated = numdl.Multiply()([numdl.Crop2d([6, 6])(joined), numdl.Crop2d()([joined, x])], name="gated")
    return numdl.Model(x, [classes, gated], dtype=dtype, input_grad=input_grad)


def test_gradients_through_a_shared_layer_fan_out_and_two_outputs_match_central_differences():
    model = _two_headed_graph(input_grad=True)
    model.compile(["cross_entropy", "mse"], "sgd", loss_weights=[1.0, 0.5])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 6))
    targets = [rng.integers(0, 4, 3), rng.standard_normal((3,) + model.output_shapes[1])]

    def loss():
        return model.loss.forward(model.forward(x, training=True), targets)

    loss()
    dx = np.array(model.backward(model.loss.backward()))
    assert model.loss.terms.keys() == {"classes", "gated"}
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), rtol=1e-6, atol=1e-8)
    names = model.named_parameters()
    assert "twice.weight" not in names and "once.weight" in names  # one set of weights for the shared layer
    for name, param in names.items():
        analytic = np.array(param.grad)
        np.testing.assert_allclose(analytic, numeric_gradient(loss, param.value), rtol=1e-6, atol=1e-8, err_msg=name)


def test_a_chain_built_as_a_graph_trains_exactly_as_the_sequential():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 64)

    def layers():
        return [numdl.Conv2d(4, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2), numdl.Flatten(), numdl.Linear(3)]

    chain = numdl.Sequential(layers(), seed=5).compile("cross_entropy", numdl.Adam(lr=1e-2))
    tensor = inputs = numdl.Input((1, 8, 8))
    for layer in layers():
        tensor = layer(tensor)
    graph = numdl.Model(inputs, tensor, seed=5).compile("cross_entropy", numdl.Adam(lr=1e-2))
    first = chain.fit(x, y, epochs=2, batch_size=16, verbose=0)
    second = graph.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert [h["train_loss"] for h in first] == [h["train_loss"] for h in second]
    np.testing.assert_array_equal(chain.predict(x), graph.predict(x))


def test_two_inputs_two_outputs_fit_evaluate_predict_and_checkpoint(tmp_path):
    a, b = numdl.Input((5,), name="a"), numdl.Input((3,), name="b")
    hidden = numdl.ReLU()(numdl.Linear(8)(numdl.Concat(axis=1)([a, b])))
    model = numdl.Model([a, b], [numdl.Linear(2)(hidden, name="label"), numdl.Linear(1)(hidden, name="value")],
                        seed=1)
    model.compile({"label": "cross_entropy", "value": "mse"}, numdl.Adam(lr=1e-2), loss_weights=[1.0, 0.1])
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((200, 5)), rng.standard_normal((200, 3))
    labels = (xa[:, 0] + xb[:, 0] > 0).astype(np.int64)
    values = (xa[:, 1] - xb[:, 1])[:, None]
    history = model.fit([xa, xb], [labels, values], epochs=15, batch_size=20, verbose=0)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    label_out, value_out = model.predict([xa, xb])
    assert label_out.shape == (200, 2) and value_out.shape == (200, 1)
    assert (label_out.argmax(1) == labels).mean() > 0.9
    assert model.evaluate([xa, xb], [labels, values])["loss"] == pytest.approx(history[-1]["train_loss"], rel=0.5)
    model.save(tmp_path / "two.safetensors")
    with pytest.raises(ConfigError, match="belongs to another built model"):  # layers are not shared by models
        numdl.Model([a, b], [numdl.Linear(2)(hidden), numdl.Linear(1)(hidden)])
    a2, b2 = numdl.Input((5,), name="a"), numdl.Input((3,), name="b")
    hidden2 = numdl.ReLU()(numdl.Linear(8)(numdl.Concat(axis=1)([a2, b2])))
    clone = numdl.Model([a2, b2], [numdl.Linear(2)(hidden2, name="label"), numdl.Linear(1)(hidden2, name="value")],
                        seed=9)
    clone.compile(["cross_entropy", "mse"], numdl.Adam(lr=1e-2)).load_weights(tmp_path / "two.safetensors")
    np.testing.assert_array_equal(clone.predict([xa, xb])[0], label_out)
    a3, b3 = numdl.Input((5,), name="a"), numdl.Input((3,), name="b")
    hidden3 = numdl.ReLU()(numdl.Linear(8)(numdl.Concat(axis=1)([a3, b3])))
    other = numdl.Model([a3, b3], [numdl.Linear(2)(hidden3), numdl.Linear(1)(hidden3)])  # heads named otherwise
    other.compile(["cross_entropy", "mse"], numdl.Adam(lr=1e-2))
    with pytest.raises(numdl.CheckpointError, match="missing: param/linear_1.bias"):
        other.load_weights(tmp_path / "two.safetensors")
    with pytest.raises(ShapeError, match="2 inputs"):
        model.predict(xa)
    xb[150, 1] = np.nan
    with pytest.raises(DataError, match="input data \\(b\\) contains NaN or Inf \\(first at sample 150\\)"):
        model.predict([xa, xb], batch_size=64)
    xb[150, 1] = 0.0
    with pytest.raises(ShapeError, match="2 outputs but 1 targets"):
        model.fit([xa, xb], [labels], verbose=0)


def test_graph_errors_name_the_nodes():
    x = numdl.Input((4,))
    with pytest.raises(ShapeError, match="node 'joined'.*concat"):
        numdl.Model(x, numdl.Concat()([numdl.Linear(3)(x), numdl.Reshape([2, 2])(x)], name="joined"))
    layer = numdl.Linear(3)
    with pytest.raises(ShapeError, match="reuses the layer of node 'first'"):
        numdl.Model(x, layer(numdl.Linear(5)(layer(x, name="first"))))
    with pytest.raises(ConfigError, match="takes one input, got 2"):
        numdl.Linear(3)([x, x])
    with pytest.raises(ConfigError, match="joins several tensors"):
        numdl.Sequential([numdl.Add()])
    other = numdl.Input((4,), name="other")
    with pytest.raises(ConfigError, match="'other' is an input the model was not given"):
        numdl.Model(x, numdl.Add()([x, other]))
    with pytest.raises(ConfigError, match="does not reach any output"):
        numdl.Model([x, other], numdl.Linear(2)(x))


def test_the_nan_guard_names_the_node():
    x = numdl.Input((3,))
    h = numdl.Linear(4)(x, name="hidden")
    model = numdl.Model(x, numdl.Linear(2)(h, name="out")).compile("cross_entropy", numdl.SGD(lr=0.1))
    model.layers[0].params["weight"].value[...] = np.inf
    with pytest.raises(numdl.errors.TrainingDiverged, match="node 'hidden'"):
        model.fit(np.ones((4, 3)), np.zeros(4, np.int64), verbose=0)


GRAPH_NODES = ("[{name='flat', type='flatten', inputs=['input']}, {name='h', type='linear', out_features=64}, "
               "{name='act', type='relu'}, {name='skip', type='linear', out_features=64, inputs=['flat']}, "
               "{name='sum', type='add', inputs=['act', 'skip']}, {name='again', type='shared', layer='h', "
               "inputs=['flat']}, {name='both', type='concat', inputs=['sum', 'again']}, "
               "{name='out', type='linear', out_features=10}]")


def test_a_config_graph_trains_checkpoints_and_predicts(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=60)
    run = tmp_path / "run"
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", "train.epochs=2",
                         "--set", f"model.nodes={GRAPH_NODES}", "--set", "model.outputs=['out']", "--out", run)
    assert result.exit_code == 0, result.output
    model = numdl.load_model(run / "checkpoints" / "latest.safetensors")
    assert isinstance(model, numdl.Model)
    assert [node.name for node in model.order][:3] == ["input", "flat", "h"]
    assert "again.weight" not in model.named_parameters() and "h.weight" in model.named_parameters()
    rebuilt = numdl.config.config_of(model)
    assert [n["name"] for n in rebuilt["model"]["nodes"]][-1] == "out" and "layers" not in rebuilt["model"]
    result = invoke_cli("eval", run / "checkpoints" / "latest.safetensors")
    assert result.exit_code == 0 and "test_acc" in result.output


@pytest.mark.parametrize("nodes, message", [
    ("[{name='a', type='linear', out_features=4, inputs=['b']}, {name='b', type='relu', inputs=['a']}]",
     "cycle through node"),
    ("[{name='a', type='flatten'}, {name='b', type='linear', out_features=10, inputs=['nowhere']}]",
     "node 'b' reads 'nowhere', which no node is named"),
    ("[{name='a', type='flatten'}, {name='lost', type='relu', inputs=['a']}, "
     "{name='b', type='linear', out_features=10, inputs=['a']}]", "node 'lost' does not lead to the output"),
    ("[{name='a', type='flatten'}, {name='b', type='reshape', shape=[28, 28], inputs=['input']}, "
     "{name='c', type='concat', inputs=['a', 'b']}, {name='d', type='linear', out_features=10}]",
     "node 'c' \\(concat\\)"),
    ("[{name='a', type='flatten'}, {name='a', type='linear', out_features=10}]", "'a' names two nodes"),
    ("[{name='a', type='flatten'}, {name='b', type='shared', layer='zzz'}]", "a shared node names an earlier node"),
    ("[{type='flatten'}]", "model.nodes.0.name: every node needs a name"),
    ("[{name='a', type='linera'}]", "unknown layer 'linera'"),
])
def test_malformed_config_graphs_exit_2_with_one_line_naming_the_node(tmp_path, nodes, message):
    data = write_fashion_like(tmp_path / "data", n_train=60, n_test=20)
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", f"model.nodes={nodes}",
                         "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert re.search(message, lines[0]), lines[0]


def test_model_layers_and_nodes_together_are_refused(tmp_path):
    config = tmp_path / "both.toml"
    config.write_text("[model]\nlayers = [{type = 'flatten'}]\nnodes = [{name = 'a', type = 'flatten'}]\n")
    result = invoke_cli("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "not both" in result.output


def test_a_sequence_graph_takes_token_ids_and_lengths():
    """Integer token ids into an Embedding node, padded lengths reaching every recurrent and pooling
    node, two poolings of one sequence joined: padding must not change a sample's output."""
    ids = numdl.Input((6,), dtype="int64")
    steps = numdl.LSTM(5, return_sequences=True)(numdl.Embedding(10, 4)(ids))
    pooled = numdl.Concat(axis=-1)([numdl.SequencePool("mean")(steps), numdl.SequencePool("last")(steps)])
    model = numdl.Model(ids, numdl.Linear(2)(pooled), dtype="float64").compile("cross_entropy", "adam")
    rng = np.random.default_rng(0)
    x, y, lengths = rng.integers(0, 10, (40, 6)), rng.integers(0, 2, 40), rng.integers(2, 7, 40)
    model.fit(x, y, epochs=1, batch_size=8, lengths=lengths, verbose=0)
    repadded = x.copy()
    for row, length in zip(repadded, lengths):
        row[length:] = 9  # other padding values
    np.testing.assert_allclose(model.predict(repadded, lengths=lengths), model.predict(x, lengths=lengths))


def test_a_config_graph_classifies_from_an_lstms_final_states(tmp_path):
    """final_state nodes in a TOML graph: the LSTM's h_n and c_n of both layers, concatenated, into
    the classifier; trains, checkpoints and loads back to the same predictions."""
    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=60)
    nodes = ("[{name='rnn', type='lstm', hidden_size=8, num_layers=2, return_sequences=true, inputs=['input']}, "
             "{name='h', type='final_state', which='h', inputs=['rnn']}, "
             "{name='c', type='final_state', which='c', inputs=['rnn']}, "
             "{name='both', type='concat', axis=-1, inputs=['h', 'c']}, {name='flat', type='flatten'}, "
             "{name='out', type='linear', out_features=10}]")
    run = tmp_path / "run"
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", "train.epochs=2",
                        "--set", f"model.nodes={nodes}", "--set", "model.outputs=['out']", "--out", run)
    assert result.exit_code == 0, result.output
    model = numdl.load_model(run / "checkpoints" / "latest.safetensors")
    x = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    again = numdl.load_model(run / "checkpoints" / "latest.safetensors")
    np.testing.assert_array_equal(model.predict(x), again.predict(x))
    assert model.node_shapes[id(next(n for n in model.order if n.name == "both"))] == (2, 16)
    bad = nodes.replace("inputs=['rnn']}, {name='c'", "inputs=['input']}, {name='c'")
    result = invoke_cli("train", "--quiet", "--set", f"data.path='{data}'", "--set", f"model.nodes={bad}",
                        "--set", "model.outputs=['out']", "--out", tmp_path / "bad")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "final_state reads an lstm / gru layer" in result.output


@pytest.mark.parametrize("make, message", [
    (lambda: numdl.Sequential([numdl.Linear(3), numdl.FinalState()], input_shape=(4,)),
     "final_state reads an lstm / gru layer"),
    (lambda: numdl.FinalState("x"), "which must be 'h' or 'c'"),
    (lambda: numdl.Sequential([numdl.GRU(3, return_sequences=True), numdl.FinalState("c")], input_shape=(5, 4)),
     "which = 'c' needs an lstm"),
])
def test_final_state_misuse_is_named(make, message):
    with pytest.raises(numdl.NumdlError, match=message):
        make()


def test_final_state_of_a_shared_recurrent_layer_is_refused():
    x = numdl.Input((5, 4))
    shared = numdl.LSTM(4, return_sequences=True)
    twice = shared(shared(x))
    with pytest.raises(numdl.ConfigError, match="which several nodes use"):
        numdl.Model(x, numdl.FinalState()(twice))
