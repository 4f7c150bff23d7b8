"""Normalisation: BatchNorm (1-D and 2-D alike), LayerNorm and GroupNorm, with PyTorch's conventions.

BatchNorm works on x viewed as (N, C, S) (S = H W for BatchNorm2d, 1 or L for BatchNorm1d): batch
statistics over N and S per channel, normalised with the biased variance; the running variance is
updated with the unbiased one, ``running = (1 - momentum) running + momentum batch``; ``relu`` applies a
following ReLU in the same pass (backward then needs ``out``, whose non-positive entries stop the
gradient). LayerNorm works on x viewed as (R, D), statistics per row. GroupNorm works on x viewed as
(N, G, M), statistics per sample and group over its M = (C / G) S values, the affine per channel
(element m of group g belongs to channel g C/G + m // S). ``xhat`` and ``invstd`` are saved for
backward.

batchnorm_pool_*: BatchNorm2d with a 2x2 max pooling at stride 2 after it (and after its ReLU), as
models run BatchNorm2d -> ReLU -> MaxPool2d(2): out is pooled, (N, C, H // 2, W // 2), with pool_at
(int8, where each window's maximum is: 0 / 1 top row, 2 / 3 bottom row, as kernels.conv's pooled
convolution) and ``width`` = W; x, xhat and dx keep the (N, C, S) view. The full-size output is never
stored, and backward reads the pooled gradient instead of a full-size one and its ReLU mask.
"""

import math

import numpy as np
from numba import prange

from numdl.kernels.common import (
    cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, same_type, scalar_math, thread_share,
    worth_splitting,
)
from numdl.kernels.conv import pool_select, store_pooled

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def batchnorm_statistics(mean, invstd, running_mean, running_var, x, momentum, eps, c):
    # Channel c's batch mean and 1 / std (stored in mean, invstd and returned), and its running
    # statistics updated.
    n_batch, s = x.shape[0], x.shape[2]
    count = n_batch * s
    total = same_type(eps, 0.0)
    for n in range(n_batch):
        for i in range(s):
            total += x[n, c, i]
    mu = total / same_type(eps, count)
    squares = same_type(eps, 0.0)
    for n in range(n_batch):
        for i in range(s):
            d = x[n, c, i] - mu
            squares += d * d
    var = squares / same_type(eps, count)
    inv = same_type(eps, 1.0) / math.sqrt(var + eps)
    mean[c] = mu
    invstd[c] = inv
    unbiased = squares / same_type(eps, max(count - 1, 1))
    running_mean[c] = (same_type(eps, 1.0) - momentum) * running_mean[c] + momentum * mu
    running_var[c] = (same_type(eps, 1.0) - momentum) * running_var[c] + momentum * unbiased
    return mu, inv


@scalar_math
def batchnorm_train_channel(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu, c):
    mu, inv = batchnorm_statistics(mean, invstd, running_mean, running_var, x, momentum, eps, c)
    zero = same_type(eps, 0.0)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            h = (x[n, c, i] - mu) * inv
            xhat[n, c, i] = h
            v = gamma[c] * h + beta[c]
            out[n, c, i] = zero if relu and v < zero else v  # not max(): a NaN must reach the NaN guard


@scalar_math
def _relu_of(v, relu):
    return same_type(v, 0.0) if relu and v < 0 else v  # a NaN stays


@scalar_math
def batchnorm_pool_window(out, pool_at, values, scale, shift, width, relu, n, c, py, px):
    # Pooled element (py, px) of channel c: the maximum of the window's four scale v + shift (ReLU'd)
    # of ``values`` (N, C, S).
    top = 2 * py * width + 2 * px
    a = _relu_of(values[n, c, top] * scale + shift, relu)
    b = _relu_of(values[n, c, top + 1] * scale + shift, relu)
    d0 = _relu_of(values[n, c, top + width] * scale + shift, relu)
    d1 = _relu_of(values[n, c, top + width + 1] * scale + shift, relu)
    best, at = pool_select(a, b, d0, d1)
    out[n, c, py, px] = best
    pool_at[n, c, py, px] = at


@scalar_math
def batchnorm_pool_train_channel(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum,
                                 eps, width, relu, c):
    mu, inv = batchnorm_statistics(mean, invstd, running_mean, running_var, x, momentum, eps, c)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            xhat[n, c, i] = (x[n, c, i] - mu) * inv
    for n in range(out.shape[0]):
        for py in range(out.shape[2]):
            for px in range(out.shape[3]):
                batchnorm_pool_window(out, pool_at, xhat, gamma[c], beta[c], width, relu, n, c, py, px)


@scalar_math
def batchnorm_pool_eval_channel(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu, c):
    inv = same_type(eps, 1.0) / math.sqrt(running_var[c] + eps)
    scale = gamma[c] * inv
    shift = beta[c] - running_mean[c] * scale
    for n in range(out.shape[0]):
        for py in range(out.shape[2]):
            for px in range(out.shape[3]):
                batchnorm_pool_window(out, pool_at, x, scale, shift, width, relu, n, c, py, px)


@scalar_math
def batchnorm_pool_backward_channel(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu, c):
    # batchnorm_backward_channel where dy is each window's gradient (through the ReLU's mask) at its
    # maximum and zero elsewhere: the sums over the windows, then dx for dy = 0 everywhere and again
    # at each maximum.
    n_batch, s = xhat.shape[0], xhat.shape[2]
    zero = same_type(invstd[0], 0.0)
    count = same_type(invstd[0], n_batch * s)
    sum_dy = zero
    sum_dy_xhat = zero
    for n in range(n_batch):
        for py in range(dout.shape[2]):
            for px in range(dout.shape[3]):
                dy = zero if relu and out[n, c, py, px] <= zero else dout[n, c, py, px]
                at = pool_at[n, c, py, px]
                sum_dy += dy
                sum_dy_xhat += dy * xhat[n, c, (2 * py + at // 2) * width + 2 * px + at % 2]
    dgamma[c] = sum_dy_xhat
    dbeta[c] = sum_dy
    if dx.size > 0:
        k = gamma[c] * invstd[c] / count
        for n in range(n_batch):
            for i in range(s):
                dx[n, c, i] = k * (zero - sum_dy - xhat[n, c, i] * sum_dy_xhat)
        for n in range(n_batch):
            for py in range(dout.shape[2]):
                for px in range(dout.shape[3]):
                    dy = zero if relu and out[n, c, py, px] <= zero else dout[n, c, py, px]
                    at = pool_at[n, c, py, px]
                    i = (2 * py + at // 2) * width + 2 * px + at % 2
                    dx[n, c, i] = k * (count * dy - sum_dy - xhat[n, c, i] * sum_dy_xhat)


@scalar_math
def batchnorm_eval_channel(out, x, running_mean, running_var, gamma, beta, eps, relu, c):
    inv = same_type(eps, 1.0) / math.sqrt(running_var[c] + eps)
    scale = gamma[c] * inv
    shift = beta[c] - running_mean[c] * scale
    zero = same_type(eps, 0.0)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            v = x[n, c, i] * scale + shift
            out[n, c, i] = zero if relu and v < zero else v


@scalar_math
def batchnorm_backward_channel(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu, c):
    # dx = gamma invstd / M (M dy - sum(dy) - xhat sum(dy xhat)), M = N S, where dy is dout (through
    # the fused ReLU's mask: zero where out is not positive).
    n_batch, s = dout.shape[0], dout.shape[2]
    zero = same_type(invstd[0], 0.0)
    count = same_type(invstd[0], n_batch * s)
    sum_dy = zero
    sum_dy_xhat = zero
    for n in range(n_batch):
        for i in range(s):
            dy = zero if relu and out[n, c, i] <= zero else dout[n, c, i]
            sum_dy += dy
            sum_dy_xhat += dy * xhat[n, c, i]
    dgamma[c] = sum_dy_xhat
    dbeta[c] = sum_dy
    if dx.size > 0:
        k = gamma[c] * invstd[c] / count
        for n in range(n_batch):
            for i in range(s):
                dy = zero if relu and out[n, c, i] <= zero else dout[n, c, i]
                dx[n, c, i] = k * (count * dy - sum_dy - xhat[n, c, i] * sum_dy_xhat)


@scalar_math
def layernorm_row(out, xhat, invstd, x, gamma, beta, eps, r):
    d = x.shape[1]
    total = same_type(eps, 0.0)
    for j in range(d):
        total += x[r, j]
    mu = total / same_type(eps, d)
    squares = same_type(eps, 0.0)
    for j in range(d):
        diff = x[r, j] - mu
        squares += diff * diff
    inv = same_type(eps, 1.0) / math.sqrt(squares / same_type(eps, d) + eps)
    invstd[r] = inv
    for j in range(d):
        h = (x[r, j] - mu) * inv
        xhat[r, j] = h
        out[r, j] = gamma[j] * h + beta[j]


@scalar_math
def layernorm_backward_row(dx, dout, xhat, invstd, gamma, r):
    # dx = invstd (g - mean(g) - xhat mean(g xhat)), g = dout gamma.
    d = dout.shape[1]
    mean_g = same_type(invstd[0], 0.0)
    mean_gx = same_type(invstd[0], 0.0)
    for j in range(d):
        g = dout[r, j] * gamma[j]
        mean_g += g
        mean_gx += g * xhat[r, j]
    mean_g /= same_type(mean_g, d)
    mean_gx /= same_type(mean_gx, d)
    for j in range(d):
        dx[r, j] = invstd[r] * (dout[r, j] * gamma[j] - mean_g - xhat[r, j] * mean_gx)


@scalar_math
def layernorm_param_grads(dgamma, dbeta, dout, xhat, j):
    acc_gamma = same_type(xhat[0, 0], 0.0)
    acc_beta = same_type(xhat[0, 0], 0.0)
    for r in range(dout.shape[0]):
        acc_gamma += dout[r, j] * xhat[r, j]
        acc_beta += dout[r, j]
    dgamma[j] = acc_gamma
    dbeta[j] = acc_beta


@scalar_math
def group_channel(gamma, groups, m_size, g, m):
    # The channel of element m of group g: groups of C / G channels, each of S = M / (C / G) values.
    per_group = gamma.size // groups
    return g * per_group + m // (m_size // per_group)


@scalar_math
def groupnorm_row(out, xhat, invstd, x, gamma, beta, eps, n, g):
    m_size = x.shape[2]
    groups = x.shape[1]
    total = same_type(eps, 0.0)
    for m in range(m_size):
        total += x[n, g, m]
    mu = total / same_type(eps, m_size)
    squares = same_type(eps, 0.0)
    for m in range(m_size):
        diff = x[n, g, m] - mu
        squares += diff * diff
    inv = same_type(eps, 1.0) / math.sqrt(squares / same_type(eps, m_size) + eps)
    invstd[n, g] = inv
    for m in range(m_size):
        h = (x[n, g, m] - mu) * inv
        xhat[n, g, m] = h
        c = group_channel(gamma, groups, m_size, g, m)
        out[n, g, m] = gamma[c] * h + beta[c]


@scalar_math
def groupnorm_backward_row(dx, dout, xhat, invstd, gamma, n, g):
    # dx = invstd (v - mean(v) - xhat mean(v xhat)), v = dout gamma[channel], over the group's values.
    m_size = dout.shape[2]
    groups = dout.shape[1]
    mean_v = same_type(invstd[0, 0], 0.0)
    mean_vx = same_type(invstd[0, 0], 0.0)
    for m in range(m_size):
        v = dout[n, g, m] * gamma[group_channel(gamma, groups, m_size, g, m)]
        mean_v += v
        mean_vx += v * xhat[n, g, m]
    mean_v /= same_type(mean_v, m_size)
    mean_vx /= same_type(mean_vx, m_size)
    for m in range(m_size):
        v = dout[n, g, m] * gamma[group_channel(gamma, groups, m_size, g, m)]
        dx[n, g, m] = invstd[n, g] * (v - mean_v - xhat[n, g, m] * mean_vx)


@scalar_math
def groupnorm_param_grads(dgamma, dbeta, dout, xhat, c):
    # Channel c's sums over the samples and its S values.
    groups, m_size = dout.shape[1], dout.shape[2]
    per_group = dgamma.size // groups
    spatial = m_size // per_group
    g, first = c // per_group, (c % per_group) * spatial
    acc_gamma = same_type(xhat[0, 0, 0], 0.0)
    acc_beta = same_type(xhat[0, 0, 0], 0.0)
    for n in range(dout.shape[0]):
        for m in range(first, first + spatial):
            acc_gamma += dout[n, g, m] * xhat[n, g, m]
            acc_beta += dout[n, g, m]
    dgamma[c] = acc_gamma
    dbeta[c] = acc_beta


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def batchnorm_train_forward_cpu(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu):
    # out, xhat, x (N, C, S); mean, invstd, running_* , gamma, beta (C,). Updates running stats in place.
    # Channels are independent: split over numba's threads when they have the cores.
    if worth_splitting(x.size):
        _batchnorm_train_forward_split(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum,
                                       eps, relu)
        return
    for c in range(x.shape[1]):
        batchnorm_train_channel(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu, c)


@cpu_parallel_kernel
def _batchnorm_train_forward_split(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu):
    for c in prange(x.shape[1]):
        batchnorm_train_channel(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu, c)


@cpu_kernel
def batchnorm_eval_forward_cpu(out, x, running_mean, running_var, gamma, beta, eps, relu):
    if worth_splitting(x.size):
        _batchnorm_eval_forward_split(out, x, running_mean, running_var, gamma, beta, eps, relu)
        return
    for c in range(x.shape[1]):
        batchnorm_eval_channel(out, x, running_mean, running_var, gamma, beta, eps, relu, c)


@cpu_parallel_kernel
def _batchnorm_eval_forward_split(out, x, running_mean, running_var, gamma, beta, eps, relu):
    for c in prange(x.shape[1]):
        batchnorm_eval_channel(out, x, running_mean, running_var, gamma, beta, eps, relu, c)


@cpu_kernel
def batchnorm_backward_cpu(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu):
    # Overwrites dx (skipped when empty), dgamma, dbeta.
    if worth_splitting(dout.size):
        _batchnorm_backward_split(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu)
        return
    for c in range(dout.shape[1]):
        batchnorm_backward_channel(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu, c)


@cpu_parallel_kernel
def _batchnorm_backward_split(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu):
    for c in prange(dout.shape[1]):
        batchnorm_backward_channel(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu, c)


@cpu_kernel
def _pooled_planes(out, pool_at, values, scale, shift, width, relu, c):
    # Channel c's pooled output from ``values`` (N, C, S): batchnorm_pool_window's arithmetic over flat
    # views and unsigned indices (conv.store_pooled), ~3x faster than the windows one by one.
    n_batch, channels, s = values.shape
    pooled = out.shape[2] * out.shape[3]
    values_flat, out_flat, at_flat = values.reshape(-1), out.reshape(-1), pool_at.reshape(-1)
    for n in range(n_batch):
        store_pooled(out_flat, at_flat, (n * channels + c) * pooled, values_flat, (n * channels + c) * s, width,
                     s // width, width, scale, shift, relu)


@cpu_kernel
def _batchnorm_pool_train_channel(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum,
                                  eps, width, relu, c):
    # batchnorm_pool_train_channel (the CUDA twin's) with the pooling by _pooled_planes
    mu, inv = batchnorm_statistics(mean, invstd, running_mean, running_var, x, momentum, eps, c)
    for n in range(x.shape[0]):
        x_row, xhat_row = x[n, c], xhat[n, c]
        for i in range(x.shape[2]):
            xhat_row[i] = (x_row[i] - mu) * inv
    _pooled_planes(out, pool_at, xhat, gamma[c], beta[c], width, relu, c)


@cpu_kernel
def _batchnorm_pool_eval_channel(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu, c):
    inv = same_type(eps, 1.0) / math.sqrt(running_var[c] + eps)
    scale = gamma[c] * inv
    _pooled_planes(out, pool_at, x, scale, beta[c] - running_mean[c] * scale, width, relu, c)


@cpu_kernel
def batchnorm_pool_train_forward_cpu(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                     momentum, eps, width, relu):
    if worth_splitting(x.size):
        _batchnorm_pool_train_forward_split(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma,
                                            beta, momentum, eps, width, relu)
        return
    for c in range(x.shape[1]):
        _batchnorm_pool_train_channel(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                      momentum, eps, width, relu, c)


@cpu_parallel_kernel
def _batchnorm_pool_train_forward_split(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                        momentum, eps, width, relu):
    for c in prange(x.shape[1]):
        _batchnorm_pool_train_channel(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                      momentum, eps, width, relu, c)


@cpu_kernel
def batchnorm_pool_eval_forward_cpu(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu):
    if worth_splitting(x.size):
        _batchnorm_pool_eval_forward_split(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu)
        return
    for c in range(x.shape[1]):
        _batchnorm_pool_eval_channel(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu, c)


@cpu_parallel_kernel
def _batchnorm_pool_eval_forward_split(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu):
    for c in prange(x.shape[1]):
        _batchnorm_pool_eval_channel(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu, c)


@cpu_kernel
def _batchnorm_pool_backward_channel(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu, c):
    # batchnorm_pool_backward_channel (the CUDA twin's), its arithmetic in its order, over flat views
    # and unsigned indices (numba's negative-index fix-up on each computed 3-D index cost ~2x)
    n_batch, channels, s = xhat.shape
    ph, pw = dout.shape[2], dout.shape[3]
    xhat_flat, dout_flat, out_flat, at_flat = xhat.reshape(-1), dout.reshape(-1), out.reshape(-1), pool_at.reshape(-1)
    zero = same_type(invstd[0], 0.0)
    count = same_type(invstd[0], n_batch * s)
    sum_dy = zero
    sum_dy_xhat = zero
    for n in range(n_batch):
        base, pooled = (n * channels + c) * s, (n * channels + c) * ph * pw
        for py in range(ph):
            for px in range(pw):
                k = np.uint64(pooled + py * pw + px)
                dy = zero if relu and out_flat[k] <= zero else dout_flat[k]
                at = np.int64(at_flat[k])
                sum_dy += dy
                sum_dy_xhat += dy * xhat_flat[np.uint64(base + (2 * py + (at >> 1)) * width + 2 * px + (at & 1))]
    dgamma[c] = sum_dy_xhat
    dbeta[c] = sum_dy
    if dx.size == 0:
        return
    dx_flat = dx.reshape(-1)
    scale = gamma[c] * invstd[c] / count
    for n in range(n_batch):
        base = np.uint64((n * channels + c) * s)
        for i in range(s):
            dx_flat[base + np.uint64(i)] = scale * (zero - sum_dy - xhat_flat[base + np.uint64(i)] * sum_dy_xhat)
    for n in range(n_batch):
        base, pooled = (n * channels + c) * s, (n * channels + c) * ph * pw
        for py in range(ph):
            for px in range(pw):
                k = np.uint64(pooled + py * pw + px)
                dy = zero if relu and out_flat[k] <= zero else dout_flat[k]
                at = np.int64(at_flat[k])
                i = np.uint64(base + (2 * py + (at >> 1)) * width + 2 * px + (at & 1))
                dx_flat[i] = scale * (count * dy - sum_dy - xhat_flat[i] * sum_dy_xhat)


@cpu_kernel
def batchnorm_pool_backward_cpu(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu):
    # Overwrites dx (skipped when empty), dgamma, dbeta.
    if worth_splitting(xhat.size):
        _batchnorm_pool_backward_split(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu)
        return
    for c in range(xhat.shape[1]):
        _batchnorm_pool_backward_channel(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu, c)


@cpu_parallel_kernel
def _batchnorm_pool_backward_split(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu):
    for c in prange(xhat.shape[1]):
        _batchnorm_pool_backward_channel(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu, c)


@cpu_kernel
def layernorm_forward_cpu(out, xhat, invstd, x, gamma, beta, eps):
    # out, xhat, x (R, D); invstd (R,); gamma, beta (D,). Rows split over numba's threads when they
    # have the cores.
    if worth_splitting(x.size):
        _layernorm_forward_split(out, xhat, invstd, x, gamma, beta, eps)
    else:
        _layernorm_forward_rows(out, xhat, invstd, x, gamma, beta, eps, 0, x.shape[0])


@cpu_kernel
def _layernorm_forward_rows(out, xhat, invstd, x, gamma, beta, eps, lo, hi):
    for r in range(lo, hi):
        layernorm_row(out, xhat, invstd, x, gamma, beta, eps, r)


@cpu_parallel_kernel
def _layernorm_forward_split(out, xhat, invstd, x, gamma, beta, eps):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.shape[0], part, parts)
        _layernorm_forward_rows(out, xhat, invstd, x, gamma, beta, eps, lo, hi)


@cpu_kernel
def layernorm_backward_cpu(dx, dgamma, dbeta, dout, xhat, invstd, gamma):
    # dx (R, D) (empty: not wanted); dgamma, dbeta (D,); overwrites. Rows split over numba's threads
    # when they have the cores, each thread summing its rows' parameter gradients apart.
    if worth_splitting(dout.size):
        _layernorm_backward_split(dx, dgamma, dbeta, dout, xhat, invstd, gamma)
    else:
        _layernorm_backward_rows(dx, dgamma, dbeta, dout, xhat, invstd, gamma, 0, dout.shape[0])


@cpu_kernel
def _layernorm_backward_rows(dx, dgamma, dbeta, dout, xhat, invstd, gamma, lo, hi):
    # dx's rows lo..hi-1, and those rows' sums of the parameter gradients into dgamma and dbeta.
    if dx.size > 0:
        for r in range(lo, hi):
            layernorm_backward_row(dx, dout, xhat, invstd, gamma, r)
    # dgamma, dbeta: the sums layernorm_param_grads takes column by column (the CUDA twin's thread
    # per column), here row by row: the same additions in the same order, reading memory in order.
    dgamma[:] = 0
    dbeta[:] = 0
    for r in range(lo, hi):
        dout_row, xhat_row = dout[r], xhat[r]
        for j in range(dout.shape[1]):
            dgamma[j] += dout_row[j] * xhat_row[j]
            dbeta[j] += dout_row[j]


@cpu_parallel_kernel
def _layernorm_backward_split(dx, dgamma, dbeta, dout, xhat, invstd, gamma):
    parts = numba_threads()
    sums = np.empty((parts, 2, dout.shape[1]), dgamma.dtype)  # each thread's (dgamma, dbeta)
    for part in prange(parts):
        lo, hi = thread_share(dout.shape[0], part, parts)
        _layernorm_backward_rows(dx, sums[part, 0], sums[part, 1], dout, xhat, invstd, gamma, lo, hi)
    dgamma[:] = sums[0, 0]
    dbeta[:] = sums[0, 1]
    for part in range(1, parts):
        dgamma += sums[part, 0]
        dbeta += sums[part, 1]


@cpu_kernel
def groupnorm_forward_cpu(out, xhat, invstd, x, gamma, beta, eps):
    # out, xhat, x (N, G, M); invstd (N, G); gamma, beta (C,); overwrites.
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            groupnorm_row(out, xhat, invstd, x, gamma, beta, eps, n, g)


@cpu_kernel
def groupnorm_backward_cpu(dx, dgamma, dbeta, dout, xhat, invstd, gamma):
    # dx (N, G, M) (empty: not wanted); dgamma, dbeta (C,); overwrites.
    if dx.size > 0:
        for n in range(dout.shape[0]):
            for g in range(dout.shape[1]):
                groupnorm_backward_row(dx, dout, xhat, invstd, gamma, n, g)
    for c in range(dgamma.size):
        groupnorm_param_grads(dgamma, dbeta, dout, xhat, c)


# --------------------------------------------------------------------------------------- CUDA kernels
# One thread per channel (BatchNorm) or per row (LayerNorm, GroupNorm): simple and exact; a
# block-reduction version is the next step for large batches.


@cuda_kernel
def batchnorm_train_forward_cuda(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu):
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        batchnorm_train_channel(out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta, momentum, eps, relu, c)


@cuda_kernel
def batchnorm_eval_forward_cuda(out, x, running_mean, running_var, gamma, beta, eps, relu):
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        batchnorm_eval_channel(out, x, running_mean, running_var, gamma, beta, eps, relu, c)


@cuda_kernel
def batchnorm_backward_cuda(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu):
    for c in range(cuda.grid(1), dout.shape[1], cuda.gridsize(1)):
        batchnorm_backward_channel(dx, dgamma, dbeta, dout, xhat, invstd, gamma, out, relu, c)


@cuda_kernel
def batchnorm_pool_train_forward_cuda(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                      momentum, eps, width, relu):
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        batchnorm_pool_train_channel(out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                     momentum, eps, width, relu, c)


@cuda_kernel
def batchnorm_pool_eval_forward_cuda(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu):
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        batchnorm_pool_eval_channel(out, pool_at, x, running_mean, running_var, gamma, beta, eps, width, relu, c)


@cuda_kernel
def batchnorm_pool_backward_cuda(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu):
    for c in range(cuda.grid(1), xhat.shape[1], cuda.gridsize(1)):
        batchnorm_pool_backward_channel(dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu, c)


@cuda_kernel
def layernorm_forward_cuda(out, xhat, invstd, x, gamma, beta, eps):
    for r in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        layernorm_row(out, xhat, invstd, x, gamma, beta, eps, r)


@cuda_kernel
def layernorm_backward_cuda(dx, dgamma, dbeta, dout, xhat, invstd, gamma):
    # Work items: every row of dx (when wanted), then every feature's dgamma and dbeta.
    rows, d = dout.shape
    n_rows = rows if dx.size > 0 else 0
    for item in range(cuda.grid(1), n_rows + d, cuda.gridsize(1)):
        if item < n_rows:
            layernorm_backward_row(dx, dout, xhat, invstd, gamma, item)
        else:
            layernorm_param_grads(dgamma, dbeta, dout, xhat, item - n_rows)


@cuda_kernel
def groupnorm_forward_cuda(out, xhat, invstd, x, gamma, beta, eps):
    groups = x.shape[1]
    for item in range(cuda.grid(1), x.shape[0] * groups, cuda.gridsize(1)):
        groupnorm_row(out, xhat, invstd, x, gamma, beta, eps, item // groups, item % groups)


@cuda_kernel
def groupnorm_backward_cuda(dx, dgamma, dbeta, dout, xhat, invstd, gamma):
    # Work items: every (sample, group) row of dx (when wanted), then every channel's dgamma and dbeta.
    groups = dout.shape[1]
    n_rows = dout.shape[0] * groups if dx.size > 0 else 0
    for item in range(cuda.grid(1), n_rows + dgamma.size, cuda.gridsize(1)):
        if item < n_rows:
            groupnorm_backward_row(dx, dout, xhat, invstd, gamma, item // groups, item % groups)
        else:
            groupnorm_param_grads(dgamma, dbeta, dout, xhat, item - n_rows)
