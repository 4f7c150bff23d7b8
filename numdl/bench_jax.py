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

# the models written here (the transformer and U-Net cases have no JAX twin yet)
KINDS = ("mlp", "cnn", "lstm", "tabular")


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
    return None


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

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    @jax.jit
    def step(p, state, x, y):
        grads = jax.grad(loss)(p, x, y)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    def run_training():
        p, state = params, optimizer.init(params)
        for xb, yb in data:
            p, state = step(p, state, xb, yb)
        jax.block_until_ready(p)
    return run_training
