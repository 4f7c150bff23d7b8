"""Scaled dot-product attention per head, PyTorch's ``scaled_dot_product_attention``: queries from
one array, keys and values from another (the same one for self-attention), with a key padding mask
(per-sample lengths), an optional causal mask and an optional additive mask.

Shapes: q_src (N, Tq, Wq) holds each query projection at columns q_off.., k_src (N, Tk, Wk) the keys
at k_off.., v_src (N, Tk, Wv) the values at v_off.. (self-attention: all three the packed qkv
(N, T, 3E) of PyTorch's in_proj, offsets 0, E, 2E; cross-attention: q (N, Tq, E) and one kv
(N, Tk, 2E) for keys and values, offsets 0, 0, E); E = heads *
head_dim = ctx.shape[2]; lengths (N,) int64 valid keys per sample; mask (Tq, Tk) added to the scaled
scores (-inf forbids a pair; PyTorch's float attn_mask; (0, 0) for none); probs (N, heads, Tq, Tk)
the attention weights, saved for backward (before dropout); keep (N, heads, Tq, Tk) dropout's
multipliers of the weights (0 or 1/(1-p); (0, 0, 0, 0) for none); ctx (N, Tq, E) the heads' outputs side by side. Masked
keys get weight 0; a query row is computed for every position (padded queries attend to the valid
keys, as PyTorch does with key_padding_mask), so only the loss decides what they matter. A row with
every key forbidden is NaN, as in PyTorch. CPU and CUDA both work one (sample, head, query) row at a
time, with loops: at the sequence lengths of this library's models (tens of steps) a row fits in
cache and BLAS calls would cost more.
"""

import math

import numpy as np
from numba import prange

from numdl.kernels.activation import exp_nonpositive
from numdl.kernels.common import (
    cpu_float32_variant, cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, runs_numba_threads, same_type,
    sample_block, scalar_math,
)
from numdl.kernels.simd import (
    LANES, vadd, vexp_nonpositive, vfma, vkeep_first, vlargest, vload, vload_first, vmax, vmul, vsplat, vsplat_from,
    vstore, vstore_first, vsub, vsum, vzero,
)

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def attention_row(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off, k_off, v_off, n,
                  h, t):
    keys = k_src.shape[1]
    dim = ctx.shape[2] // heads
    q0, k0, v0 = q_off + h * dim, k_off + h * dim, v_off + h * dim
    limit = min(lengths[n], t + 1) if causal else lengths[n]
    masked = mask.shape[0] > 0
    peak = same_type(scale, -math.inf)
    for s in range(limit):
        acc = same_type(scale, 0.0)
        for i in range(dim):
            acc += q_src[n, t, q0 + i] * k_src[n, s, k0 + i]
        acc *= scale
        if masked:
            acc += mask[t, s]
        probs[n, h, t, s] = acc
        peak = max(peak, acc)
    total = same_type(scale, 0.0)
    for s in range(limit):
        e = exp_nonpositive(probs[n, h, t, s] - peak)
        probs[n, h, t, s] = e
        total += e
    for s in range(limit, keys):
        probs[n, h, t, s] = same_type(scale, 0.0)  # masked keys
    inv = same_type(scale, 1.0) / total
    for s in range(limit):
        probs[n, h, t, s] *= inv
    dropping = keep.shape[0] > 0
    for i in range(dim):
        acc = same_type(scale, 0.0)
        for s in range(limit):
            p = probs[n, h, t, s] * keep[n, h, t, s] if dropping else probs[n, h, t, s]
            acc += p * v_src[n, s, v0 + i]
        ctx[n, t, h * dim + i] = acc


@scalar_math
def attention_backward_query(dq_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal, scale, q_off,
                             k_off, v_off, n, h, t):
    # Gradient of the query at (n, t, head h): dq = scale * sum_s dS[t, s] k_s, with
    # dS = P (dP - sum(dP P)), dP[t, s] = dctx_t . v_s. (An additive mask is a constant: no gradient.)
    dim = dctx.shape[2] // heads
    q0, k0, v0 = q_off + h * dim, k_off + h * dim, v_off + h * dim
    limit = min(lengths[n], t + 1) if causal else lengths[n]
    dropping = keep.shape[0] > 0
    dot = same_type(scale, 0.0)
    for s in range(limit):
        dp = same_type(scale, 0.0)
        for i in range(dim):
            dp += dctx[n, t, h * dim + i] * v_src[n, s, v0 + i]
        if dropping:
            dp *= keep[n, h, t, s]
        dot += dp * probs[n, h, t, s]
    for i in range(dim):
        dq_src[n, t, q0 + i] = same_type(scale, 0.0)
    for s in range(limit):
        dp = same_type(scale, 0.0)
        for i in range(dim):
            dp += dctx[n, t, h * dim + i] * v_src[n, s, v0 + i]
        if dropping:
            dp *= keep[n, h, t, s]
        ds = probs[n, h, t, s] * (dp - dot) * scale
        for i in range(dim):
            dq_src[n, t, q0 + i] += ds * k_src[n, s, k0 + i]


@scalar_math
def attention_backward_key_value(dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal,
                                 scale, q_off, k_off, v_off, n, h, s):
    # Gradients of key and value at (n, s, head h): sums over the queries t that attended to s.
    queries = q_src.shape[1]
    dim = dctx.shape[2] // heads
    q0, k0, v0 = q_off + h * dim, k_off + h * dim, v_off + h * dim
    for i in range(dim):
        dk_src[n, s, k0 + i] = same_type(scale, 0.0)
        dv_src[n, s, v0 + i] = same_type(scale, 0.0)
    if s >= lengths[n]:
        return
    dropping = keep.shape[0] > 0
    for t in range(queries):
        limit = min(lengths[n], t + 1) if causal else lengths[n]
        if s >= limit:
            continue
        p = probs[n, h, t, s]
        dot = same_type(scale, 0.0)
        dp_s = same_type(scale, 0.0)
        for u in range(limit):
            dp = same_type(scale, 0.0)
            for i in range(dim):
                dp += dctx[n, t, h * dim + i] * v_src[n, u, v0 + i]
            if dropping:
                dp *= keep[n, h, t, u]
            dot += dp * probs[n, h, t, u]
            if u == s:
                dp_s = dp
        ds = p * (dp_s - dot) * scale
        kept = p * keep[n, h, t, s] if dropping else p
        for i in range(dim):
            dk_src[n, s, k0 + i] += ds * q_src[n, t, q0 + i]
            dv_src[n, s, v0 + i] += kept * dctx[n, t, h * dim + i]


# ---------------------------------------------------------------------------------------- CPU kernels


@runs_numba_threads
@cpu_kernel
def attention_forward_cpu(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off, k_off,
                          v_off):
    # Overwrites ctx (N, Tq, E) and probs (N, heads, Tq, Tk). Samples are independent: one block of
    # them per numba thread.
    _attention_forward_blocks(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off,
                              k_off, v_off)


@cpu_parallel_kernel
def _attention_forward_blocks(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off,
                              k_off, v_off):
    n_batch = q_src.shape[0]
    block = sample_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _attention_forward_samples(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off,
                                   k_off, v_off, lo, min(n_batch, lo + block))


# The float32 CPU passes: 16 lanes at a time (numdl.kernels.simd). A head's rows are as short as its
# 16 features or keys, under LLVM's 64-iteration vector loop, so the loops of the float64 passes
# below ran scalar in float32 too. Per (sample, head) the keys (forward) or values (backward) are
# laid out feature-major in a scratch, so that a row of scores is a sum of 16-lane vectors
# (q_i times the keys' feature i) rather than one horizontal sum per key; the softmax, its exp
# included, runs on those vectors; the gradient sums stay in registers (dQ row by row, dK and dV
# key by key) instead of being added into memory. 1.7x (forward) and 1.4x (backward) the
# float64-style loops on one thread at 128 samples x 16 steps x 4 heads of 16.


@cpu_kernel
def _head_feature_major(out, src, n, offset, dim, padded):
    # out[i * padded + s] = src[n, s, offset + i] for every key s and feature i < dim (lanes past
    # the keys, up to ``padded``, are left as they are: callers mask them).
    keys, width = src.shape[1], src.shape[2]
    flat = src.reshape(-1)
    for s in range(keys):
        base = np.uint64((n * keys + s) * width + offset)
        for i in range(dim):
            out[i * padded + s] = flat[base + np.uint64(i)]


def _attention_forward_samples_float32(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale,
                                       q_off, k_off, v_off, lo, hi):
    queries, q_width = q_src.shape[1], q_src.shape[2]
    keys, v_width = k_src.shape[1], v_src.shape[2]
    embed = ctx.shape[2]
    dim = embed // heads
    padded = (keys + LANES - 1) // LANES * LANES
    masked, dropping = mask.shape[0] > 0, keep.shape[0] > 0
    q_flat, v_flat, mask_flat = q_src.reshape(-1), v_src.reshape(-1), mask.reshape(-1)
    probs_flat, ctx_flat, keep_flat = probs.reshape(-1), ctx.reshape(-1), keep.reshape(-1)
    keys_t = np.zeros(dim * padded, q_src.dtype)
    zero, minus_inf = same_type(scale, 0.0), same_type(scale, -math.inf)
    scales = vsplat(scale)
    for n in range(lo, hi):
        for h in range(heads):
            _head_feature_major(keys_t, k_src, n, k_off + h * dim, dim, padded)
            for t in range(queries):
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                query = (n * queries + t) * q_width + q_off + h * dim
                row = ((n * heads + h) * queries + t) * keys
                peaks = vsplat(minus_inf)
                for c in range(0, limit, LANES):  # scaled (and masked) scores, 16 keys at a time
                    scores = vzero()
                    for i in range(dim):
                        scores = vfma(vsplat_from(q_flat, query + i), vload(keys_t, i * padded + c), scores)
                    scores = vmul(scores, scales)
                    if masked:
                        scores = vadd(scores, vload_first(mask_flat, t * keys + c, keys - c))
                    scores = vkeep_first(scores, limit - c, minus_inf)
                    vstore_first(probs_flat, row + c, keys - c, scores)
                    peaks = vmax(peaks, scores)
                peak = vsplat(vlargest(peaks))
                sums = vzero()
                for c in range(0, keys, LANES):  # exp, and 0 for the keys past limit
                    e = vexp_nonpositive(vsub(vload_first(probs_flat, row + c, limit - c), peak))
                    e = vkeep_first(e, limit - c, zero)
                    vstore_first(probs_flat, row + c, keys - c, e)
                    sums = vadd(sums, e)
                inverse = vsplat(same_type(scale, 1.0) / vsum(sums))
                for c in range(0, limit, LANES):
                    weights = vload_first(probs_flat, row + c, limit - c)
                    vstore_first(probs_flat, row + c, limit - c, vmul(weights, inverse))
                out = (n * queries + t) * embed + h * dim
                for c in range(0, dim, LANES):  # ctx row = sum over keys of weight * value row
                    lanes = dim - c
                    value = n * keys * v_width + v_off + h * dim + c
                    acc = vzero()
                    for s in range(limit):
                        p = vsplat_from(probs_flat, row + s)
                        if dropping:
                            p = vmul(p, vsplat_from(keep_flat, row + s))
                        acc = vfma(p, vload_first(v_flat, value + s * v_width, lanes), acc)
                    vstore_first(ctx_flat, out + c, lanes, acc)


@cpu_float32_variant(_attention_forward_samples_float32)
def _attention_forward_samples(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off,
                               k_off, v_off, lo, hi):
    # Samples lo..hi-1: attention_row's arithmetic, in its order, over flat views with unsigned
    # indices (as conv._im2col: numba's negative-index fix-up on every 3-D access kept these short
    # dot products from vectorising).
    queries, q_width = q_src.shape[1], q_src.shape[2]
    keys, k_width, v_width = k_src.shape[1], k_src.shape[2], v_src.shape[2]
    embed = ctx.shape[2]
    dim = embed // heads
    masked, dropping = mask.shape[0] > 0, keep.shape[0] > 0
    q_flat, k_flat, v_flat = q_src.reshape(-1), k_src.reshape(-1), v_src.reshape(-1)
    probs_flat, ctx_flat, keep_flat = probs.reshape(-1), ctx.reshape(-1), keep.reshape(-1)
    zero = same_type(scale, 0.0)
    for n in range(lo, hi):
        for h in range(heads):
            for t in range(queries):
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                query = np.uint64((n * queries + t) * q_width + q_off + h * dim)
                row = np.uint64(((n * heads + h) * queries + t) * keys)
                peak = same_type(scale, -math.inf)
                for s in range(limit):
                    key = np.uint64((n * keys + s) * k_width + k_off + h * dim)
                    acc = zero
                    for i in range(dim):
                        acc += q_flat[query + np.uint64(i)] * k_flat[key + np.uint64(i)]
                    acc *= scale
                    if masked:
                        acc += mask[t, s]
                    probs_flat[row + np.uint64(s)] = acc
                    peak = max(peak, acc)
                for s in range(limit):  # apart from the sum below, so that it vectorises
                    probs_flat[row + np.uint64(s)] = exp_nonpositive(probs_flat[row + np.uint64(s)] - peak)
                total = zero
                for s in range(limit):
                    total += probs_flat[row + np.uint64(s)]
                for s in range(limit, keys):
                    probs_flat[row + np.uint64(s)] = zero  # masked keys
                inv = same_type(scale, 1.0) / total
                for s in range(limit):
                    probs_flat[row + np.uint64(s)] *= inv
                out = np.uint64((n * queries + t) * embed + h * dim)
                for i in range(dim):
                    ctx_flat[out + np.uint64(i)] = zero
                for s in range(limit):
                    p = probs_flat[row + np.uint64(s)]
                    if dropping:
                        p *= keep_flat[row + np.uint64(s)]
                    value = np.uint64((n * keys + s) * v_width + v_off + h * dim)
                    for i in range(dim):
                        ctx_flat[out + np.uint64(i)] += p * v_flat[value + np.uint64(i)]


@runs_numba_threads
@cpu_kernel
def attention_backward_cpu(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal,
                           scale, q_off, k_off, v_off):
    # Overwrites dq_src, dk_src and dv_src (one array for self-attention: each part is written once).
    # Per (sample, head): dP = dctx V^T, dS = P (dP - rowsum(dP P)) scale, then dQ = dS K,
    # dK = dS^T Q, dV = P^T dctx, in O(Tq Tk d). (The per-position helpers the CUDA twin runs, one
    # thread each, recompute a dP row for every key: O(T^3 d), 0.03x PyTorch at T = 64.) One block
    # of samples per numba thread, as the forward.
    _attention_backward_blocks(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads,
                               causal, scale, q_off, k_off, v_off)


@cpu_parallel_kernel
def _attention_backward_blocks(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads,
                               causal, scale, q_off, k_off, v_off):
    n_batch = q_src.shape[0]
    block = sample_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _attention_backward_samples(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads,
                                    causal, scale, q_off, k_off, v_off, lo, min(n_batch, lo + block))


def _attention_backward_samples_float32(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths,
                                        heads, causal, scale, q_off, k_off, v_off, lo, hi):
    queries, q_width = q_src.shape[1], q_src.shape[2]
    keys, k_width, v_width = k_src.shape[1], k_src.shape[2], v_src.shape[2]
    embed = dctx.shape[2]
    dim = embed // heads
    padded = (keys + LANES - 1) // LANES * LANES
    values_t = np.zeros(dim * padded, q_src.dtype)
    dscores = np.zeros(queries * padded, q_src.dtype)  # one head's dS, rows padded to whole vectors
    q_flat, k_flat = q_src.reshape(-1), k_src.reshape(-1)
    dctx_flat, probs_flat, keep_flat = dctx.reshape(-1), probs.reshape(-1), keep.reshape(-1)
    dq_flat, dk_flat, dv_flat = dq_src.reshape(-1), dk_src.reshape(-1), dv_src.reshape(-1)
    dropping = keep.shape[0] > 0
    zero = same_type(scale, 0.0)
    scales = vsplat(scale)
    dq_src[lo:hi] = 0  # columns outside the heads' stay 0
    dk_src[lo:hi] = 0
    dv_src[lo:hi] = 0
    for n in range(lo, hi):
        for h in range(heads):
            _head_feature_major(values_t, v_src, n, v_off + h * dim, dim, padded)
            for t in range(queries):  # dS = P (dP - rowsum(dP P)) scale, dP = dctx V^T (times keep)
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                grad = (n * queries + t) * embed + h * dim
                row = ((n * heads + h) * queries + t) * keys
                dots = vzero()
                for c in range(0, limit, LANES):
                    dp = vzero()
                    for i in range(dim):
                        dp = vfma(vsplat_from(dctx_flat, grad + i), vload(values_t, i * padded + c), dp)
                    if dropping:
                        dp = vmul(dp, vload_first(keep_flat, row + c, limit - c))
                    dp = vkeep_first(dp, limit - c, zero)
                    vstore(dscores, t * padded + c, dp)
                    dots = vfma(dp, vload_first(probs_flat, row + c, limit - c), dots)
                dot = vsplat(vsum(dots))
                for c in range(0, limit, LANES):
                    weights = vload_first(probs_flat, row + c, limit - c)
                    centred = vsub(vload(dscores, t * padded + c), dot)
                    vstore(dscores, t * padded + c, vmul(vmul(weights, centred), scales))
                for c in range((limit + LANES - 1) // LANES * LANES, padded, LANES):
                    vstore(dscores, t * padded + c, vzero())  # keys past limit
            for t in range(queries):  # dQ = dS K, a row at a time
                query = (n * queries + t) * q_width + q_off + h * dim
                for c in range(0, dim, LANES):
                    lanes = dim - c
                    key = n * keys * k_width + k_off + h * dim + c
                    acc = vzero()
                    for s in range(keys):
                        acc = vfma(vsplat_from(dscores, t * padded + s), vload_first(k_flat, key + s * k_width, lanes),
                                   acc)
                    vstore_first(dq_flat, query + c, lanes, acc)
            for s in range(keys):  # dK = dS^T Q and dV = (P keep)^T dctx, a key at a time
                column = (n * heads + h) * queries * keys + s
                for c in range(0, dim, LANES):
                    lanes = dim - c
                    query = n * queries * q_width + q_off + h * dim + c
                    grad = n * queries * embed + h * dim + c
                    dk_acc = vzero()
                    dv_acc = vzero()
                    for t in range(queries):
                        weight = vsplat_from(probs_flat, column + t * keys)
                        if dropping:
                            weight = vmul(weight, vsplat_from(keep_flat, column + t * keys))
                        d = vsplat_from(dscores, t * padded + s)
                        dk_acc = vfma(d, vload_first(q_flat, query + t * q_width, lanes), dk_acc)
                        dv_acc = vfma(weight, vload_first(dctx_flat, grad + t * embed, lanes), dv_acc)
                    vstore_first(dk_flat, (n * keys + s) * k_width + k_off + h * dim + c, lanes, dk_acc)
                    vstore_first(dv_flat, (n * keys + s) * v_width + v_off + h * dim + c, lanes, dv_acc)


@cpu_float32_variant(_attention_backward_samples_float32)
def _attention_backward_samples(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads,
                                causal, scale, q_off, k_off, v_off, lo, hi):
    # Samples lo..hi-1; flat views and unsigned indices, as in the forward.
    queries, q_width = q_src.shape[1], q_src.shape[2]
    keys, k_width, v_width = k_src.shape[1], k_src.shape[2], v_src.shape[2]
    embed = dctx.shape[2]
    dim = embed // heads
    zero = same_type(scale, 0.0)
    dscores = np.empty((queries, keys), q_src.dtype)  # one (Tq, Tk) scratch per block
    dscores_flat = dscores.reshape(-1)
    q_flat, k_flat, v_flat = q_src.reshape(-1), k_src.reshape(-1), v_src.reshape(-1)
    dctx_flat, probs_flat, keep_flat = dctx.reshape(-1), probs.reshape(-1), keep.reshape(-1)
    dq_flat, dk_flat, dv_flat = dq_src.reshape(-1), dk_src.reshape(-1), dv_src.reshape(-1)
    dropping = keep.shape[0] > 0
    dq_src[lo:hi] = 0  # (self-attention passes one array three times: zeroed three times, written once)
    dk_src[lo:hi] = 0
    dv_src[lo:hi] = 0
    for n in range(lo, hi):
        for h in range(heads):
            for t in range(queries):
                limit = min(lengths[n], t + 1) if causal else lengths[n]
                grad = np.uint64((n * queries + t) * embed + h * dim)
                row = np.uint64(((n * heads + h) * queries + t) * keys)
                scores = np.uint64(t * keys)
                dot = zero
                for s in range(limit):
                    value = np.uint64((n * keys + s) * v_width + v_off + h * dim)
                    dp = zero
                    for i in range(dim):
                        dp += dctx_flat[grad + np.uint64(i)] * v_flat[value + np.uint64(i)]
                    if dropping:  # the gradient reaches the kept weights only, scaled as they were
                        dp *= keep_flat[row + np.uint64(s)]
                    dscores_flat[scores + np.uint64(s)] = dp
                    dot += dp * probs_flat[row + np.uint64(s)]
                for s in range(limit):
                    p = probs_flat[row + np.uint64(s)]
                    dscores_flat[scores + np.uint64(s)] = p * (dscores_flat[scores + np.uint64(s)] - dot) * scale
                for s in range(limit, keys):
                    dscores_flat[scores + np.uint64(s)] = zero  # masked keys: their probabilities are zero too
            for t in range(queries):
                row = np.uint64(((n * heads + h) * queries + t) * keys)
                query = np.uint64((n * queries + t) * q_width + q_off + h * dim)
                grad = np.uint64((n * queries + t) * embed + h * dim)
                for s in range(keys):
                    d = dscores_flat[np.uint64(t * keys + s)]
                    p = probs_flat[row + np.uint64(s)]
                    if dropping:
                        p *= keep_flat[row + np.uint64(s)]
                    key = np.uint64((n * keys + s) * k_width + k_off + h * dim)
                    value = np.uint64((n * keys + s) * v_width + v_off + h * dim)
                    # three loops, not one: each writes one slice, so each can vectorise
                    for i in range(dim):
                        dq_flat[query + np.uint64(i)] += d * k_flat[key + np.uint64(i)]
                    for i in range(dim):
                        dk_flat[key + np.uint64(i)] += d * q_flat[query + np.uint64(i)]
                    for i in range(dim):
                        dv_flat[value + np.uint64(i)] += p * dctx_flat[grad + np.uint64(i)]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def attention_forward_cuda(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off, k_off,
                           v_off):
    queries = q_src.shape[1]
    for item in range(cuda.grid(1), q_src.shape[0] * heads * queries, cuda.gridsize(1)):
        t = item % queries
        h = (item // queries) % heads
        n = item // (queries * heads)
        attention_row(ctx, probs, q_src, k_src, v_src, mask, keep, lengths, heads, causal, scale, q_off, k_off,
                      v_off, n, h, t)


@cuda_kernel
def attention_backward_cuda(dq_src, dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal,
                            scale, q_off, k_off, v_off):
    # One thread per (sample, head, position up to max(Tq, Tk)): the query gradient there, and the
    # key and value gradients of that position (each written by exactly one thread).
    queries, keys = q_src.shape[1], k_src.shape[1]
    steps = max(queries, keys)
    for item in range(cuda.grid(1), q_src.shape[0] * heads * steps, cuda.gridsize(1)):
        position = item % steps
        h = (item // steps) % heads
        n = item // (steps * heads)
        if position < queries:
            attention_backward_query(dq_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal, scale,
                                     q_off, k_off, v_off, n, h, position)
        if position < keys:
            attention_backward_key_value(dk_src, dv_src, dctx, probs, keep, q_src, k_src, v_src, lengths, heads, causal,
                                         scale, q_off, k_off, v_off, n, h, position)
