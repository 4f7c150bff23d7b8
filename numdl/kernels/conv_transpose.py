"""2-D transposed convolution (PyTorch's ``nn.ConvTranspose2d``): stride, zero padding, output
padding, dilation, groups, with the bias fused into the pass that writes the output.

Shapes: x (N, C_in, H, W); weight (C_in, C_out / groups, kH, kW) (PyTorch's layout); bias (C_out,)
or empty; out (N, C_out, H_out, W_out) with
H_out = (H - 1) stride_h - 2 pad_h + dil_h (kH - 1) + output_padding_h + 1.

It is the adjoint (the input gradient) of the convolution that maps out-shaped images to x-shaped
ones with the same weight, so the CPU kernels are that convolution's backward and forward: forward
lays x out channel-major in ``xt`` (C_in, N H W), one GEMM per group gives the columns
(C_out kH kW, N H W), and col2im sums them onto the output; backward gathers dout with im2col, and
dweight and dx are one GEMM each per group. Kernels as large as their stride with no padding, no
dilation and one group (the 2x2, stride-2 upsampling of U-Nets) have windows that do not overlap:
each sample is then a 1x1 convolution of x into (C_out kH kW, H W) columns, scattered onto the
output (one BLAS product, or kernels.conv's 1x1 loops for few channels, by the rules of its direct
path; samples over numba's threads), and backward the gather and two 1x1 products. The CUDA twins are direct: one thread per output element, and one per weight /
bias / input element in backward (no atomics).
"""

import numpy as np
from numba import prange

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    runs_numba_threads,
    same_type,
)
from numdl.kernels.conv import (
    _col2im,
    _direct_block,
    _im2col,
    _planes_conv1x1,
    _planes_dweight1x1,
    _sum_parts,
    conv_output_index,
    shifted_gemm_conv,
    shifted_gemm_dweight,
)
from numdl.kernels.matmul import gemm, matmul

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def _to_channel_major(xt, x):
    # xt (C, N H W) = x (N, C, H, W) with the first two axes swapped.
    n_batch, channels, h, w = x.shape
    hw = h * w
    x3 = x.reshape(n_batch, channels, hw)
    for c in range(channels):
        for n in range(n_batch):
            for p in range(hw):
                xt[c, n * hw + p] = x3[n, c, p]


@cpu_kernel
def _tiles_output(h, w, h_out, w_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    # Whether the windows tile the output exactly (no overlap, no gap, no padding): the direct path.
    return (kh == stride_h and kw == stride_w and pad_h == 0 and pad_w == 0 and dil_h == 1 and dil_w == 1
            and groups == 1 and h_out == h * kh and w_out == w * kw)


@cpu_kernel
def _tap_weights(weight):
    # (C_out kH kW, C_in, 1, 1): the 1x1 kernel that maps x to one sample's columns.
    c_in, c_out, kh, kw = weight.shape
    taps = np.empty((c_out * kh * kw, c_in, 1, 1), weight.dtype)
    for ci in range(c_in):
        for co in range(c_out):
            for i in range(kh):
                for j in range(kw):
                    taps[(co * kh + i) * kw + j, ci, 0, 0] = weight[ci, co, i, j]
    return taps


@cpu_kernel
def _tiled_forward_samples(out, x, taps, bias, lo, hi):
    # Overwrites out[lo:hi]: each sample's columns (taps @ x[n]) scattered onto its windows, plus bias.
    c_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = h_out // h, w_out // w
    columns = np.empty((taps.shape[0], h * w), x.dtype)
    zero = same_type(out[0, 0, 0, 0], 0.0)
    by_product = shifted_gemm_conv(c_in, taps.shape[0])
    for n in range(lo, hi):
        if by_product:
            gemm(columns, taps.reshape(taps.shape[0], c_in), x[n].reshape(c_in, h * w), False, False, 1.0, 0.0)
        else:
            _planes_conv1x1(columns, x[n].reshape(c_in, h * w), taps, h * w)
        for co in range(c_out):
            b = bias[co] if bias.size > 0 else zero
            for i in range(kh):
                for j in range(kw):
                    row = columns[(co * kh + i) * kw + j]
                    for y in range(h):
                        target = out[n, co, y * kh + i]
                        for xx in range(w):
                            target[xx * kw + j] = row[y * w + xx] + b


@cpu_parallel_kernel
def _tiled_forward_blocks(out, x, taps, bias):
    n_batch = x.shape[0]
    block = _direct_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _tiled_forward_samples(out, x, taps, bias, lo, min(n_batch, lo + block))


@cpu_kernel
def _tiled_backward_samples(dx, dtaps, dbias, dout, x, taps_t, lo, hi):
    # Samples lo..hi-1: overwrites their dx (skipped when empty); accumulates into this block's own
    # dtaps (C_out kH kW, C_in, 1, 1) and dbias. taps_t (C_in, C_out kH kW, 1, 1): taps transposed.
    c_out, h_out, w_out = dout.shape[1], dout.shape[2], dout.shape[3]
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = h_out // h, w_out // w
    rows = c_out * kh * kw
    columns = np.empty((rows, h * w), x.dtype)
    dweight_by_product, dx_by_product = shifted_gemm_dweight(c_in, rows), shifted_gemm_conv(rows, c_in)
    zero = same_type(dout[0, 0, 0, 0], 0.0)
    for n in range(lo, hi):
        for co in range(c_out):
            total = zero
            for i in range(kh):
                for j in range(kw):
                    row = columns[(co * kh + i) * kw + j]
                    for y in range(h):
                        source = dout[n, co, y * kh + i]
                        for xx in range(w):
                            v = source[xx * kw + j]
                            row[y * w + xx] = v
                            total += v
            if dbias.size > 0:
                dbias[co] += total
        image = x[n].reshape(c_in, h * w)
        if dweight_by_product:
            gemm(dtaps.reshape(rows, c_in), columns, image, False, True, 1.0, 1.0)
        else:
            _planes_dweight1x1(dtaps, columns, image, h * w)
        if dx.size > 0 and dx_by_product:
            gemm(dx[n].reshape(c_in, h * w), taps_t.reshape(c_in, rows), columns, False, False, 1.0, 0.0)
        elif dx.size > 0:
            _planes_conv1x1(dx[n].reshape(c_in, h * w), columns, taps_t, h * w)


@cpu_parallel_kernel
def _tiled_backward_blocks(dx, dtaps_parts, dbias_parts, dout, x, taps_t, block):
    n_batch = x.shape[0]
    for part in prange(dtaps_parts.shape[0]):
        lo = part * block
        _tiled_backward_samples(dx, dtaps_parts[part], dbias_parts[part], dout, x, taps_t, lo,
                                min(n_batch, lo + block))


@cpu_kernel
def _tiled_backward(dx, dweight, dbias, dout, x, weight):
    # The direct path of conv_transpose2d_backward_cpu: per-block sums of dweight and dbias, added here.
    n_batch = x.shape[0]
    c_in, c_out, kh, kw = weight.shape
    taps = _tap_weights(weight)
    taps_t = np.empty((c_in, taps.shape[0], 1, 1), x.dtype)
    for r in range(taps.shape[0]):
        for ci in range(c_in):
            taps_t[ci, r, 0, 0] = taps[r, ci, 0, 0]
    block = _direct_block(n_batch)
    parts = (n_batch + block - 1) // block
    dtaps_parts = np.zeros((parts,) + taps.shape, x.dtype)
    dbias_parts = np.zeros((parts, dbias.size), x.dtype)
    _tiled_backward_blocks(dx, dtaps_parts, dbias_parts, dout, x, taps_t, block)
    dtaps = np.empty(taps.shape, x.dtype)
    _sum_parts(dtaps, dtaps_parts)
    _sum_parts(dbias, dbias_parts)
    for ci in range(c_in):
        for co in range(c_out):
            for i in range(kh):
                for j in range(kw):
                    dweight[ci, co, i, j] = dtaps[(co * kh + i) * kw + j, ci, 0, 0]


@runs_numba_threads
@cpu_kernel
def conv_transpose2d_forward_cpu(out, xt, cols, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                 groups):
    # Overwrites out, xt (C_in, N H W: kept for backward) and cols (C_out kH kW, N H W: scratch); the
    # direct path (windows that tile the output) uses neither.
    n_batch, c_out, h_out, w_out = out.shape
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    if _tiles_output(h, w, h_out, w_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
        _tiled_forward_blocks(out, x, _tap_weights(weight), bias)
        return
    c_in_g = c_in // groups
    k = weight.shape[1] * kh * kw
    _to_channel_major(xt, x)
    w2 = weight.reshape(c_in, k)
    for g in range(groups):
        matmul(cols[g * k:(g + 1) * k], w2[g * c_in_g:(g + 1) * c_in_g], xt[g * c_in_g:(g + 1) * c_in_g],
               True, False, 0.0)
    _col2im(out, cols, 0, n_batch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h, w)
    if bias.size > 0:
        for n in range(n_batch):
            for c in range(c_out):
                b = bias[c]
                for i in range(h_out):
                    for j in range(w_out):
                        out[n, c, i, j] += b


@runs_numba_threads
@cpu_kernel
def conv_transpose2d_backward_cpu(dx, dweight, dbias, dcols, dxt, dout, x, xt, weight, stride_h, stride_w, pad_h,
                                  pad_w, dil_h, dil_w, groups):
    # Overwrites dx (skipped when empty), dweight, dbias (skipped when empty), dcols and dxt (scratch).
    # The GEMM path reads xt (saved by forward) for x; the direct path and the CUDA twin read x.
    n_batch, c_out, h_out, w_out = dout.shape
    c_in, h, w = dxt.shape[0], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    if _tiles_output(h, w, h_out, w_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
        _tiled_backward(dx, dweight, dbias, dout, x, weight)
        return
    c_in_g = c_in // groups
    k = weight.shape[1] * kh * kw
    _im2col(dcols, dout, 0, n_batch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h, w)
    if dbias.size > 0:
        zero = same_type(dout[0, 0, 0, 0], 0.0)
        for c in range(c_out):
            total = zero
            for n in range(n_batch):
                for i in range(h_out):
                    for j in range(w_out):
                        total += dout[n, c, i, j]
            dbias[c] = total
    dw2 = dweight.reshape(c_in, k)
    w2 = weight.reshape(c_in, k)
    for g in range(groups):
        rows, taps = slice(g * c_in_g, (g + 1) * c_in_g), slice(g * k, (g + 1) * k)
        matmul(dw2[rows], xt[rows], dcols[taps], False, True, 0.0)
        if dx.size > 0:
            matmul(dxt[rows], w2[rows], dcols[taps], False, False, 0.0)
    if dx.size > 0:
        hw = h * w
        dx3 = dx.reshape(n_batch, c_in, hw)
        for n in range(n_batch):
            for c in range(c_in):
                for p in range(hw):
                    dx3[n, c, p] = dxt[c, n * hw + p]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def conv_transpose2d_forward_cuda(out, xt, cols, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                  groups):
    # xt and cols are unused here (they may be empty).
    n_batch, c_out, h_out, w_out = out.shape
    h, w = x.shape[2], x.shape[3]
    c_out_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    c_in_g = x.shape[1] // groups
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = item % w_out
        oh = (item // w_out) % h_out
        co = (item // (w_out * h_out)) % c_out
        n = item // (w_out * h_out * c_out)
        group, col = co // c_out_g, co % c_out_g
        acc = bias[co] if bias.size > 0 else same_type(x[0, 0, 0, 0], 0.0)
        for i in range(kh):
            ih = conv_output_index(oh, i, stride_h, pad_h, dil_h, h)
            if ih < 0:
                continue
            for j in range(kw):
                iw = conv_output_index(ow, j, stride_w, pad_w, dil_w, w)
                if iw < 0:
                    continue
                for ci in range(group * c_in_g, (group + 1) * c_in_g):
                    acc += x[n, ci, ih, iw] * weight[ci, col, i, j]
        out[n, co, oh, ow] = acc


@cuda_kernel
def conv_transpose2d_backward_cuda(dx, dweight, dbias, dcols, dxt, dout, x, xt, weight, stride_h, stride_w, pad_h,
                                   pad_w, dil_h, dil_w, groups):
    # Work items: every dweight element, every dbias element, then every dx element. dcols, dxt and
    # xt are unused here.
    n_batch, c_out, h_out, w_out = dout.shape
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    c_out_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    c_in_g = c_in // groups
    n_dweight, n_dbias = dweight.size, dbias.size
    for item in range(cuda.grid(1), n_dweight + n_dbias + dx.size, cuda.gridsize(1)):
        if item < n_dweight:
            j = item % kw
            i = (item // kw) % kh
            col = (item // (kw * kh)) % c_out_g
            ci = item // (kw * kh * c_out_g)
            co = (ci // c_in_g) * c_out_g + col
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for n in range(n_batch):
                for ih in range(h):
                    oh = ih * stride_h - pad_h + i * dil_h
                    if oh < 0 or oh >= h_out:
                        continue
                    for iw in range(w):
                        ow = iw * stride_w - pad_w + j * dil_w
                        if 0 <= ow < w_out:
                            acc += x[n, ci, ih, iw] * dout[n, co, oh, ow]
            dweight[ci, col, i, j] = acc
        elif item < n_dweight + n_dbias:
            co = item - n_dweight
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for n in range(n_batch):
                for oh in range(h_out):
                    for ow in range(w_out):
                        acc += dout[n, co, oh, ow]
            dbias[co] = acc
        else:
            rest = item - n_dweight - n_dbias
            iw = rest % w
            ih = (rest // w) % h
            ci = (rest // (w * h)) % c_in
            n = rest // (w * h * c_in)
            group = ci // c_in_g
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for i in range(kh):
                oh = ih * stride_h - pad_h + i * dil_h
                if oh < 0 or oh >= h_out:
                    continue
                for j in range(kw):
                    ow = iw * stride_w - pad_w + j * dil_w
                    if ow < 0 or ow >= w_out:
                        continue
                    for col in range(c_out_g):
                        acc += weight[ci, col, i, j] * dout[n, group * c_out_g + col, oh, ow]
            dx[n, ci, ih, iw] = acc
