"""LSTM / GRU against a NumPy float64 reference of PyTorch's equations and against torch itself, for
2 stacked bidirectional layers on a padded batch; Embedding; sequence pooling."""

import numpy as np
import pytest

import numdl
from kernel_cases import recurrent_reference
from numdl.backend import get_ops
from numdl.errors import DataError

LENGTHS = np.array([5, 2, 4])


def _layer(cls, **kwargs):
    layer = cls(3, num_layers=2, bidirectional=True, **kwargs)
    layer.build((5, 2), get_ops("cpu"), np.float64, np.random.default_rng(0))
    layer.lengths = LENGTHS
    return layer


def _numpy_stack(layer, x):
    inputs = x
    for l in range(2):
        halves = []
        for d, suffix in enumerate(("", "_reverse")):
            p = {k: layer.params[f"{k}_l{l}{suffix}"].value for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            halves.append(recurrent_reference(layer.kind, inputs, LENGTHS, p["weight_ih"], p["weight_hh"],
                                              p["bias_ih"], p["bias_hh"], reverse=d == 1))
        inputs = np.concatenate(halves, axis=2)
    return inputs


@pytest.mark.parametrize("cls", [numdl.LSTM, numdl.GRU])
def test_stacked_bidirectional_padded_matches_numpy_reference(cls):
    x = np.random.default_rng(1).standard_normal((3, 5, 2))
    expected = _numpy_stack(_layer(cls, return_sequences=True), x)
    out = _layer(cls, return_sequences=True).forward(x, training=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert np.all(out[1, 2:] == 0)  # steps past a sample's length are zero
    last = _layer(cls).forward(x)
    forward_last = expected[np.arange(3), LENGTHS - 1, :3]
    np.testing.assert_allclose(last, np.concatenate([forward_last, expected[:, 0, 3:]], axis=1), rtol=1e-12)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_stacked_bidirectional_padded_matches_torch_values_and_gradients(name):
    torch = pytest.importorskip("torch")
    ours = _layer(getattr(numdl, name), return_sequences=True)
    theirs = getattr(torch.nn, name)(2, 3, num_layers=2, bidirectional=True, batch_first=True).double()
    with torch.no_grad():
        for pname, param in theirs.named_parameters():
            param.copy_(torch.tensor(ours.params[pname].value))
    x = np.random.default_rng(2).standard_normal((3, 5, 2))
    upstream = np.random.default_rng(3).standard_normal((3, 5, 6))
    t_x = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(t_x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    t_out, _ = theirs(packed)
    t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, batch_first=True, total_length=5)
    (t_out * torch.tensor(upstream)).sum().backward()
    out = ours.forward(x, training=True)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    dx = ours.backward(upstream)
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-9, atol=1e-12)
    for pname, param in theirs.named_parameters():
        np.testing.assert_allclose(ours.params[pname].grad, param.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=pname)


def test_embedding_sums_repeated_indices_and_refuses_bad_ids():
    layer = numdl.Embedding(4, 2)
    layer.build((3,), get_ops("cpu"), np.float64, np.random.default_rng(0))
    ids = np.array([[1, 1, 3], [1, 0, 0]])
    np.testing.assert_array_equal(layer.forward(ids), layer.params["weight"].value[ids])
    layer.backward(np.ones((2, 3, 2)))
    np.testing.assert_array_equal(layer.params["weight"].grad[:, 0], [2, 3, 0, 1])
    with pytest.raises(DataError, match=r"token id 4 is outside \[0, 4\)"):
        layer.forward(np.array([[0, 4, 1]]))
    with pytest.raises(DataError, match=r"token id -1"):
        layer.forward(np.array([[0, -1, 1]]))


def test_token_model_trains_with_lengths():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 5, (64, 6))
    y = (ids == 3).any(axis=1).astype(np.int64)  # does token 3 occur?
    model = numdl.Sequential([numdl.Embedding(5, 8), numdl.GRU(16), numdl.Linear(2)], input_shape=(6,), seed=0)
    model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-2))
    history = model.fit(ids, y, epochs=30, batch_size=16)
    assert history[-1]["train_accuracy"] > 0.95
    logits = model.forward(ids[:3], lengths=np.array([6, 2, 1]))
    assert logits.shape == (3, 2)


def test_multihead_attention_matches_torch_with_key_padding_mask():
    torch = pytest.importorskip("torch")
    ours = numdl.MultiHeadAttention(2)
    ours.build((5, 4), get_ops("cpu"), np.float64, np.random.default_rng(0))
    ours.params["in_proj_bias"].value[:] = np.random.default_rng(5).standard_normal(12) * 0.1
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True).double()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.tensor(ours.params["in_proj_weight"].value))
        theirs.in_proj_bias.copy_(torch.tensor(ours.params["in_proj_bias"].value))
        theirs.out_proj.weight.copy_(torch.tensor(ours.params["out_proj_weight"].value))
        theirs.out_proj.bias.copy_(torch.tensor(ours.params["out_proj_bias"].value))
    lengths = np.array([5, 3])
    x = np.random.default_rng(6).standard_normal((2, 5, 4))
    t_x = torch.tensor(x, requires_grad=True)
    mask = torch.tensor(np.arange(5)[None, :] >= lengths[:, None])
    t_out, _ = theirs(t_x, t_x, t_x, key_padding_mask=mask)
    upstream = np.random.default_rng(7).standard_normal((2, 5, 4))
    (t_out * torch.tensor(upstream)).sum().backward()
    ours.lengths = lengths
    np.testing.assert_allclose(ours.forward(x, training=True), t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.backward(upstream), t_x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.params["in_proj_weight"].grad, theirs.in_proj_weight.grad.numpy(), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_matches_torch(norm_first):
    torch = pytest.importorskip("torch")
    ours = numdl.TransformerEncoderLayer(2, dim_feedforward=8, dropout=0.0, norm_first=norm_first)
    ours.build((5, 4), get_ops("cpu"), np.float64, np.random.default_rng(0))
    theirs = torch.nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True,
                                              norm_first=norm_first).double()
    params = {k: v.value for k, v in ours.named_parameters().items()}
    names = ({"attn": "0.block.1.", "ff1": "1.block.1.", "ff2": "1.block.4."} if norm_first else
             {"attn": "0.block.0.", "ff1": "2.block.0.", "ff2": "2.block.3."})
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(torch.tensor(params[names["attn"] + "in_proj_weight"]))
        theirs.self_attn.out_proj.weight.copy_(torch.tensor(params[names["attn"] + "out_proj_weight"]))
        for torch_linear, key in ((theirs.linear1, "ff1"), (theirs.linear2, "ff2")):
            torch_linear.weight.copy_(torch.tensor(params[names[key] + "weight"]))
            torch_linear.bias.copy_(torch.tensor(params[names[key] + "bias"]))
    x = np.random.default_rng(8).standard_normal((2, 5, 4))
    expected = theirs.eval()(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(ours.forward(x, training=False), expected, rtol=1e-9, atol=1e-11)


def test_fit_with_padded_lengths_ignores_the_padding():
    rng = np.random.default_rng(9)
    lengths = rng.integers(2, 7, 96)
    x = rng.standard_normal((96, 6, 2))
    for i, length in enumerate(lengths):
        x[i, length:] = 100.0  # garbage padding: only usable if a model read past the lengths
    y = (np.array([x[i, :lengths[i], 0].sum() for i in range(96)]) > 0).astype(np.int64)
    model = numdl.Sequential([numdl.GRU(16), numdl.Linear(2)], input_shape=(6, 2), seed=0)
    model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-2))
    history = model.fit(x, y, epochs=25, batch_size=16, lengths=lengths, eval_data={"train": (x, y, lengths)})
    assert history[-1]["train_accuracy"] > 0.9
    shifted = x.copy()
    shifted[shifted == 100.0] = -100.0
    np.testing.assert_allclose(model.predict(shifted, lengths=lengths), model.predict(x, lengths=lengths))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_cpu_kernels_split_over_threads_match_one_thread(kind, reverse):
    """The CPU recurrent kernels give each numba thread a block of samples (16 or more); a batch of
    40 padded sequences (two blocks on two threads) gives the same outputs and gradients as one
    thread running all of it, and the PyTorch equations on the outputs. The gate-gradient scratch
    the backend asks layers for (none for the LSTM) gives the same gradients as a full one."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    ops = get_ops("cpu")
    rng = np.random.default_rng(5)
    n, steps, inputs, hidden = 40, 6, 3, 4
    g = 4 if kind == "lstm" else 3
    x = rng.standard_normal((n, steps, inputs))
    lengths = rng.integers(1, steps + 1, n).astype(np.int64)
    w_ih, w_hh = rng.standard_normal((g * hidden, inputs)) * 0.5, rng.standard_normal((g * hidden, hidden)) * 0.5
    b_ih, b_hh = rng.standard_normal(g * hidden) * 0.3, rng.standard_normal(g * hidden) * 0.3
    dout = rng.standard_normal((n, steps, hidden))

    def run(threads, dproj_rows=n * steps):
        numba.set_num_threads(threads)
        try:
            out, gates, cells = np.full((n, steps, hidden), np.nan), np.empty((n, steps, g * hidden)), \
                np.empty((n, steps, hidden))
            ops.recurrent_forward(kind, out, gates, cells, np.empty((n * steps, g * hidden)), np.empty((n, g * hidden)),
                                  np.empty((n, hidden)), x, lengths, w_ih, w_hh, b_ih, b_hh, reverse)
            grads = [np.full_like(a, np.nan) for a in (x, w_ih, w_hh, b_ih, b_hh)]
            scratch = (np.empty((2, dproj_rows, g * hidden)), np.empty((n, g * hidden)), np.empty((n * steps, hidden)),
                       np.empty((n, hidden)), np.empty((n, hidden)))
            ops.recurrent_backward(kind, *grads, scratch, dout, out, gates, cells, x, lengths, w_ih, w_hh, reverse)
            return out, grads
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    # Two threads first: the first threaded kernel moves the process to numba's pool (at every core).
    (out_two, grads_two), (out_one, grads_one) = run(2), run(1)
    np.testing.assert_allclose(out_two, recurrent_reference(kind, x, lengths, w_ih, w_hh, b_ih, b_hh, reverse),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out_two, out_one, rtol=1e-12, atol=1e-14)
    for name, one, two in zip(("dx", "dw_ih", "dw_hh", "db_ih", "db_hh"), grads_one, grads_two):
        np.testing.assert_allclose(two, one, rtol=1e-10, atol=1e-12, err_msg=name)
    rows = ops.recurrent_gate_gradient_rows(kind, n, steps)
    assert rows == (0 if kind == "lstm" else n * steps)
    _, grads_asked = run(2, rows)
    for name, asked, full in zip(("dx", "dw_ih", "dw_hh", "db_ih", "db_hh"), grads_asked, grads_two):
        np.testing.assert_array_equal(asked, full, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_cpu_kernels_split_over_threads_match_one_thread(causal):
    """The attention CPU kernels give each numba thread a block of samples, as the recurrent ones:
    40 padded sequences on two threads give one thread's outputs and gradients."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two numba threads")
    ops = get_ops("cpu")
    rng = np.random.default_rng(6)
    n, steps, heads, embed = 40, 7, 2, 8
    qkv = rng.standard_normal((n, steps, 3 * embed))
    lengths = rng.integers(1, steps + 1, n).astype(np.int64)
    dctx = rng.standard_normal((n, steps, embed))

    def run(threads, dproj_rows=n * steps):
        numba.set_num_threads(threads)
        try:
            ctx, probs = np.full((n, steps, embed), np.nan), np.full((n, heads, steps, steps), np.nan)
            offsets = (0, embed, 2 * embed)
            ops.attention_forward(ctx, probs, qkv, qkv, qkv, None, lengths, heads, causal, 0.5, offsets)
            dqkv = np.full_like(qkv, np.nan)
            ops.attention_backward(dqkv, dqkv, dqkv, dctx, probs, qkv, qkv, qkv, lengths, heads, causal, 0.5,
                                   offsets)
            return ctx, probs, dqkv
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    two = run(2)  # first: the first threaded kernel moves the process to numba's pool (at every core)
    for name, one, two in zip(("ctx", "probs", "dqkv"), run(1), two):
        assert np.isfinite(two).all(), name
        np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-14, err_msg=name)


def test_attention_dropout_drops_weights_in_training_only():
    """PyTorch's MultiheadAttention(dropout=p): in training each attention weight is zeroed with
    probability p and the rest scaled by 1/(1-p) (attention_weights() shows them so, as PyTorch's
    need_weights); evaluation is the layer without dropout."""
    rng = np.random.default_rng(16)
    dropped, plain = numdl.MultiHeadAttention(2, dropout=0.4), numdl.MultiHeadAttention(2)
    for layer in (dropped, plain):
        layer.build((12, 4), get_ops("cpu"), np.float64, np.random.default_rng(0))
    x = rng.standard_normal((8, 12, 4))
    np.testing.assert_allclose(dropped.forward(x, training=False), plain.forward(x, training=False), rtol=1e-12)
    clean = plain.attention_weights(average=False)
    dropped.forward(x, training=True)
    noisy = dropped.attention_weights(average=False)
    zeroed = noisy == 0
    assert 0.35 < zeroed.mean() < 0.45
    np.testing.assert_allclose(noisy[~zeroed], clean[~zeroed] / 0.6, rtol=1e-12)
    first = noisy.copy()
    dropped.forward(x, training=True)
    assert (dropped.attention_weights(average=False) != first).any()  # a new mask every step
