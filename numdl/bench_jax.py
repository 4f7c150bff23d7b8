"""The compiled peer of ``numdl bench``: the reference models in JAX with the whole training step
under ``jax.jit`` and optax's Adam (the same architecture, initial weights, data order, batch size
and learning rate as numdl's), and jitted inference. Optional: with ``jax`` and ``optax`` missing
(``pip install 'numdl[bench]'``) the table's JAX column stays empty.

XLA's CPU thread pool is sized when jax is first imported: ``numdl --threads N bench`` with N below
the machine's cores limits it through XLA_FLAGS before that import.
"""

import os
import sys

import numpy as np

# the models written here (the U-Net case has no JAX twin yet)
KINDS = ("mlp", "cnn", "lstm", "tabular", "transformer")
DROPOUT = 0.1  # the transformer's, as numdl's: on attention weights, after attention, in and after the FFN


def load(threads=None):
    """(jax, jax.numpy, optax), or None where they are not installed."""
    if "jax" not in sys.modules and threads and threads < (os.cpu_count() or 1):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}")
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    return jax, jnp, optax


def _forward(jax, jnp, kind):
    """forward(params, x) -> logits for the reference model ``kind``; params in numdl's order."""
    lax = jax.lax

    def linear(x, weight, bias):
        return x @ weight.T + bias

    if kind in ("mlp", "tabular"):
        def forward(params, x):
            h = x.reshape(x.shape[0], -1)
            for index in range(0, len(params) - 2, 2):
                h = jax.nn.relu(linear(h, params[index], params[index + 1]))
            return linear(h, params[-2], params[-1])
        return forward
    if kind == "cnn":
        def conv_relu_pool(h, weight, bias):
            h = lax.conv_general_dilated(h, weight, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = jax.nn.relu(h + bias[None, :, None, None])
            return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def forward(params, x):
            h = conv_relu_pool(x.reshape(x.shape[0], 1, 28, 28), params[0], params[1])
            h = conv_relu_pool(h, params[2], params[3])
            h = jax.nn.relu(linear(h.reshape(h.shape[0], -1), params[4], params[5]))
            return linear(h, params[6], params[7])
        return forward
    if kind == "lstm":
        def forward(params, x):
            w_ih, w_hh, b_ih, b_hh, weight, bias = params
            hidden = w_hh.shape[1]
            inputs = jnp.swapaxes(x @ w_ih.T + b_ih + b_hh, 0, 1)  # every step's input projection at once

            def cell(carry, projected):
                h, c = carry
                gates = projected + h @ w_hh.T
                i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))  # PyTorch's order
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), None

            zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
            (h, _), _ = lax.scan(cell, (zeros, zeros), inputs)
            return linear(h, weight, bias)
        return forward
    if kind == "transformer":
        return _transformer_forward(jax, jnp)
    return None


def _transformer_forward(jax, jnp):
    """bench's patch transformer: 7x7 patch convolution, a learned position table, two post-norm
    encoder layers (4 heads, feed-forward 128, ReLU, dropout 0.1 as PyTorch places it), mean pool,
    Linear. forward(params, x, key): ``key`` None is evaluation (no dropout)."""
    lax = jax.lax
    heads = 4

    def dropout(h, key):
        if key is None:
            return h
        keep = jax.random.bernoulli(key, 1.0 - DROPOUT, h.shape)
        return jnp.where(keep, h / (1.0 - DROPOUT), 0.0)

    def layer_norm(h, weight, bias):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5) * weight + bias

    def encoder(h, p, keys):
        w_in, b_in, w_out, b_out, ln1_w, ln1_b, w1, b1, w2, b2, ln2_w, ln2_b = p
        n, steps, embed = h.shape
        dim = embed // heads
        qkv = (h @ w_in.T + b_in).reshape(n, steps, 3, heads, dim)
        q, k, v = (jnp.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        weights = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(dim), axis=-1)
        context = dropout(weights, keys[0]) @ v
        attended = jnp.transpose(context, (0, 2, 1, 3)).reshape(n, steps, embed) @ w_out.T + b_out
        h = layer_norm(h + dropout(attended, keys[1]), ln1_w, ln1_b)
        inner = dropout(jax.nn.relu(h @ w1.T + b1), keys[2])
        return layer_norm(h + dropout(inner @ w2.T + b2, keys[3]), ln2_w, ln2_b)

    def forward(params, x, key=None):
        patch_w, patch_b, position = params[:3]
        n = x.shape[0]
        h = lax.conv_general_dilated(x.reshape(n, 1, 28, 28), patch_w, (7, 7), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jnp.swapaxes((h + patch_b[None, :, None, None]).reshape(n, 64, 16), 1, 2) + position
        for index in range(2):
            keys = [None] * 4 if key is None else jax.random.split(jax.random.fold_in(key, index), 4)
            h = encoder(h, params[3 + 12 * index:15 + 12 * index], keys)
        return h.mean(1) @ params[-2].T + params[-1]
    return forward


def epoch(kind, mode, batches, model, threads=None):
    """A callable running JAX's epoch over ``batches`` (jitted training steps, or jitted forward
    passes) from ``model``'s initial weights, or None (no JAX, or no JAX twin of ``kind``)."""
    loaded = load(threads) if kind in KINDS else None
    if loaded is None:
        return None
    jax, jnp, optax = loaded
    forward = _forward(jax, jnp, kind)
    params = [jnp.asarray(np.array(model.ops.to_numpy(p.value))) for p in model.parameters()]
    data = [(jnp.asarray(xb), jnp.asarray(yb)) for xb, yb in batches]
    if mode != "train":
        predict = jax.jit(forward)

        def run_inference():
            for xb, _ in data:
                predict(params, xb).block_until_ready()
        return run_inference

    optimizer = optax.adam(1e-3)
    random = kind == "transformer"  # dropout: a fresh key every step, as numdl's streams advance

    def loss(p, x, y, key):
        logits = forward(p, x, key) if random else forward(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, state, x, y, key):
        grads = jax.grad(loss)(p, x, y, key)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    def run_training():
        p, state = params, optimizer.init(params)
        key = jax.random.PRNGKey(0)
        for xb, yb in data:
            key, step_key = jax.random.split(key)
            p, state = step(p, state, xb, yb, step_key)
        jax.block_until_ready(p)
    return run_training
