"""Scaled dot-product attention over packed projections, with a key padding mask (per-sample
lengths) and an optional causal mask: PyTorch's ``scaled_dot_product_attention`` per head.

Shapes: qkv (N, T, 3E) holds the query, key and value projections side by side (as PyTorch's
in_proj produces them), E = heads * head_dim; lengths (N,) int64 valid keys per sample; probs
(N, heads, T, T) the attention weights, saved for backward; ctx (N, T, E) the heads' outputs side by
side. Masked keys get weight 0; a query row is computed for every position (padded queries attend to
the valid keys, as PyTorch does with key_padding_mask), so only the loss decides what they matter.
CPU and CUDA both work one (sample, head, query) row at a time, with loops: at the sequence lengths
of this library's models (tens of steps) a row fits in cache and BLAS calls would cost more.
"""

import math

import numpy as np
from numba import prange

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    runs_numba_threads,
    same_type,
    sample_block,
    scalar_math,
)

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def attention_row(ctx, probs, qkv, lengths, heads, causal, scale, n, h, t):
    steps = qkv.shape[1]
    embed = qkv.shape[2] // 3
    dim = embed // heads
    q0, k0, v0 = h * dim, embed + h * dim, 2 * embed + h * dim
    limit = lengths[n]
    if causal:
        limit = min(limit, t + 1)
    peak = same_type(scale, -math.inf)
    for s in range(limit):
        acc = same_type(scale, 0.0)
        for i in range(dim):
            acc += qkv[n, t, q0 + i] * qkv[n, s, k0 + i]
        acc *= scale
        probs[n, h, t, s] = acc
        peak = max(peak, acc)
    total = same_type(scale, 0.0)
    for s in range(limit):
        e = math.exp(probs[n, h, t, s] - peak)
        probs[n, h, t, s] = e
        total += e
    for s in range(limit, steps):
        probs[n, h, t, s] = same_type(scale, 0.0)  # masked keys
    inv = same_type(scale, 1.0) / total
    for s in range(limit):
        probs[n, h, t, s] *= inv
    for i in range(dim):
        acc = same_type(scale, 0.0)
        for s in range(limit):
            acc += probs[n, h, t, s] * qkv[n, s, v0 + i]
        ctx[n, t, h * dim + i] = acc


@scalar_math
def attention_backward_query(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, n, h, t):
    # Gradient of the query at (n, t, head h): dq = scale * sum_s dS[t, s] k_s, with
    # dS = P (dP - sum(dP P)), dP[t, s] = dctx_t . v_s.
    embed = qkv.shape[2] // 3
    dim = embed // heads
    q0, k0, v0 = h * dim, embed + h * dim, 2 * embed + h * dim
    limit = min(lengths[n], t + 1) if causal else lengths[n]
    dot = same_type(scale, 0.0)
    for s in range(limit):
        dp = same_type(scale, 0.0)
        for i in range(dim):
            dp += dctx[n, t, h * dim + i] * qkv[n, s, v0 + i]
        dot += dp * probs[n, h, t, s]
    for i in range(dim):
        dqkv[n, t, q0 + i] = same_type(scale, 0.0)
    for s in range(limit):
        dp = same_type(scale, 0.0)
        for i in range(dim):
            dp += dctx[n, t, h * dim + i] * qkv[n, s, v0 + i]
        ds = probs[n, h, t, s] * (dp - dot) * scale
        for i in range(dim):
            dqkv[n, t, q0 + i] += ds * qkv[n, s, k0 + i]


@scalar_math
def attention_backward_key_value(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, n, h, s):
    # Gradients of key and value at (n, s, head h): sums over the queries t that attended to s.
    steps = qkv.shape[1]
    embed = qkv.shape[2] // 3
    dim = embed // heads
    q0, k0, v0 = h * dim, embed + h * dim, 2 * embed + h * dim
    for i in range(dim):
        dqkv[n, s, k0 + i] = same_type(scale, 0.0)
        dqkv[n, s, v0 + i] = same_type(scale, 0.0)
    if s >= lengths[n]:
        return
    for t in range(steps):
        limit = min(lengths[n], t + 1) if causal else lengths[n]
        if s >= limit:
            continue
        p = probs[n, h, t, s]
        dot = same_type(scale, 0.0)
        dp_s = same_type(scale, 0.0)
        for u in range(limit):
            dp = same_type(scale, 0.0)
            for i in range(dim):
                dp += dctx[n, t, h * dim + i] * qkv[n, u, v0 + i]
            dot += dp * probs[n, h, t, u]
            if u == s:
                dp_s = dp
        ds = p * (dp_s - dot) * scale
        for i in range(dim):
            dqkv[n, s, k0 + i] += ds * qkv[n, t, q0 + i]
            dqkv[n, s, v0 + i] += p * dctx[n, t, h * dim + i]


# ---------------------------------------------------------------------------------------- CPU kernels


@runs_numba_threads
@cpu_kernel
def attention_forward_cpu(ctx, probs, qkv, lengths, heads, causal, scale):
    # Overwrites ctx (N, T, E) and probs (N, heads, T, T). Samples are independent: one block of
    # them per numba thread.
    _attention_forward_blocks(ctx, probs, qkv, lengths, heads, causal, scale)


@cpu_parallel_kernel
def _attention_forward_blocks(ctx, probs, qkv, lengths, heads, causal, scale):
    n_batch = qkv.shape[0]
    block = sample_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _attention_forward_samples(ctx, probs, qkv, lengths, heads, causal, scale, lo, min(n_batch, lo + block))


@cpu_kernel
def _attention_forward_samples(ctx, probs, qkv, lengths, heads, causal, scale, lo, hi):
    # Samples lo..hi-1: attention_row's arithmetic, in its order, over flat views with unsigned
    # indices (as conv._im2col: numba's negative-index fix-up on every 3-D access kept these short
    # dot products from vectorising).
    _, steps, width = qkv.shape
    embed = width // 3
    dim = embed // heads
    qkv_flat, probs_flat, ctx_flat = qkv.reshape(-1), probs.reshape(-1), ctx.reshape(-1)
    zero = same_type(scale, 0.0)
    for n in range(lo, hi):
        for h in range(heads):
            for t in range(steps):
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                query = np.uint64((n * steps + t) * width + h * dim)
                row = np.uint64(((n * heads + h) * steps + t) * steps)
                peak = same_type(scale, -math.inf)
                for s in range(limit):
                    key = np.uint64((n * steps + s) * width + embed + h * dim)
                    acc = zero
                    for i in range(dim):
                        acc += qkv_flat[query + np.uint64(i)] * qkv_flat[key + np.uint64(i)]
                    acc *= scale
                    probs_flat[row + np.uint64(s)] = acc
                    peak = max(peak, acc)
                total = zero
                for s in range(limit):
                    e = math.exp(probs_flat[row + np.uint64(s)] - peak)
                    probs_flat[row + np.uint64(s)] = e
                    total += e
                for s in range(limit, steps):
                    probs_flat[row + np.uint64(s)] = zero  # masked keys
                inv = same_type(scale, 1.0) / total
                for s in range(limit):
                    probs_flat[row + np.uint64(s)] *= inv
                out = np.uint64((n * steps + t) * embed + h * dim)
                for i in range(dim):
                    ctx_flat[out + np.uint64(i)] = zero
                for s in range(limit):
                    p = probs_flat[row + np.uint64(s)]
                    value = np.uint64((n * steps + s) * width + 2 * embed + h * dim)
                    for i in range(dim):
                        ctx_flat[out + np.uint64(i)] += p * qkv_flat[value + np.uint64(i)]


@runs_numba_threads
@cpu_kernel
def attention_backward_cpu(dqkv, dctx, probs, qkv, lengths, heads, causal, scale):
    # Overwrites dqkv (N, T, 3E). Per (sample, head): dP = dctx V^T, dS = P (dP - rowsum(dP P)) scale,
    # then dQ = dS K, dK = dS^T Q, dV = P^T dctx, in O(T^2 d). (The per-position helpers the CUDA twin
    # runs, one thread each, recompute a dP row for every key: O(T^3 d), 0.03x PyTorch at T = 64.)
    # One block of samples per numba thread, as the forward.
    _attention_backward_blocks(dqkv, dctx, probs, qkv, lengths, heads, causal, scale)


@cpu_parallel_kernel
def _attention_backward_blocks(dqkv, dctx, probs, qkv, lengths, heads, causal, scale):
    n_batch = qkv.shape[0]
    block = sample_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _attention_backward_samples(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, lo,
                                    min(n_batch, lo + block))


@cpu_kernel
def _attention_backward_samples(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, lo, hi):
    # Samples lo..hi-1; flat views and unsigned indices, as in the forward.
    _, steps, width = qkv.shape
    embed = width // 3
    dim = embed // heads
    zero = same_type(scale, 0.0)
    dscores = np.empty((steps, steps), qkv.dtype)  # one (T, T) scratch per block
    dscores_flat = dscores.reshape(-1)
    qkv_flat, dqkv_flat, dctx_flat, probs_flat = qkv.reshape(-1), dqkv.reshape(-1), dctx.reshape(-1), probs.reshape(-1)
    dqkv[lo:hi] = 0
    for n in range(lo, hi):
        for h in range(heads):
            for t in range(steps):
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                grad = np.uint64((n * steps + t) * embed + h * dim)
                row = np.uint64(((n * heads + h) * steps + t) * steps)
                scores = np.uint64(t * steps)
                dot = zero
                for s in range(limit):
                    value = np.uint64((n * steps + s) * width + 2 * embed + h * dim)
                    dp = zero
                    for i in range(dim):
                        dp += dctx_flat[grad + np.uint64(i)] * qkv_flat[value + np.uint64(i)]
                    dscores_flat[scores + np.uint64(s)] = dp
                    dot += dp * probs_flat[row + np.uint64(s)]
                for s in range(limit):
                    p = probs_flat[row + np.uint64(s)]
                    dscores_flat[scores + np.uint64(s)] = p * (dscores_flat[scores + np.uint64(s)] - dot) * scale
                for s in range(limit, steps):
                    dscores_flat[scores + np.uint64(s)] = zero  # masked keys: their probabilities are zero too
            for t in range(steps):
                row = np.uint64(((n * heads + h) * steps + t) * steps)
                query = np.uint64((n * steps + t) * width + h * dim)
                grad = np.uint64((n * steps + t) * embed + h * dim)
                for s in range(steps):
                    d = dscores_flat[np.uint64(t * steps + s)]
                    p = probs_flat[row + np.uint64(s)]
                    key = np.uint64((n * steps + s) * width + embed + h * dim)
                    value = key + np.uint64(embed)
                    # three loops, not one: each writes one slice, so each can vectorise
                    for i in range(dim):
                        dqkv_flat[query + np.uint64(i)] += d * qkv_flat[key + np.uint64(i)]
                    for i in range(dim):
                        dqkv_flat[key + np.uint64(i)] += d * qkv_flat[query + np.uint64(i)]
                    for i in range(dim):
                        dqkv_flat[value + np.uint64(i)] += p * dctx_flat[grad + np.uint64(i)]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def attention_forward_cuda(ctx, probs, qkv, lengths, heads, causal, scale):
    steps = qkv.shape[1]
    for item in range(cuda.grid(1), qkv.shape[0] * heads * steps, cuda.gridsize(1)):
        t = item % steps
        h = (item // steps) % heads
        n = item // (steps * heads)
        attention_row(ctx, probs, qkv, lengths, heads, causal, scale, n, h, t)


@cuda_kernel
def attention_backward_cuda(dqkv, dctx, probs, qkv, lengths, heads, causal, scale):
    # One thread per (sample, head, position): the query gradient there, and the key and value
    # gradients of that position (each written by exactly one thread).
    steps = qkv.shape[1]
    for item in range(cuda.grid(1), qkv.shape[0] * heads * steps, cuda.gridsize(1)):
        t = item % steps
        h = (item // steps) % heads
        n = item // (steps * heads)
        attention_backward_query(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, n, h, t)
        attention_backward_key_value(dqkv, dctx, probs, qkv, lengths, heads, causal, scale, n, h, t)
