"""2-D convolution (cross-correlation, as PyTorch): stride, zero padding, dilation, groups, with the
bias and an optional ReLU fused into the pass that writes the output.

Shapes: x (N, C_in, H, W); weight (C_out, C_in / groups, kH, kW) (PyTorch's layout); bias (C_out,)
or empty; out (N, C_out, H_out, W_out) with H_out = (H + 2 pad_h - dil_h (kH - 1) - 1) // stride_h + 1.

CPU: im2col into ``cols`` (C_in kH kW, S H_out W_out), then one BLAS GEMM per group into ``gemm``
(C_out, S H_out W_out); the pass that transposes ``gemm`` to NCHW adds the bias and applies the ReLU.
S is the number of samples the buffers hold (their width / H_out W_out): the whole batch, unless its
columns would pass tuning.CONV_COLUMN_CHUNK_ELEMENTS; the batch is then done S samples at a time. Backward reuses ``cols`` when it holds the whole batch and rebuilds
each chunk's otherwise (dweight is one GEMM per group and chunk, accumulated), and scatters the
GEMM-computed ``dcols`` back with col2im. CUDA: direct convolution, one thread per output element,
and one per weight / bias / input element in backward (no atomics); the CPU work buffers are unused
there and may be empty.
"""

import numpy as np

from numdl.kernels import tuning
from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math
from numdl.kernels.matmul import matmul

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def conv_output_index(in_pos, kernel_pos, stride, pad, dilation, out_size):
    # The output position whose window puts kernel tap ``kernel_pos`` on input ``in_pos``, or -1.
    shifted = in_pos + pad - kernel_pos * dilation
    if shifted < 0 or shifted % stride != 0:
        return -1
    out_pos = shifted // stride
    return out_pos if out_pos < out_size else -1


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def _valid_outputs(tap, stride, pad, dilation, in_size, out_size):
    # [first, end) of the output positions whose window puts kernel tap ``tap`` inside the input: the
    # im2col/col2im inner loops then run branch-free over that range (and zero-fill the rest).
    first = 0
    while first < out_size and first * stride - pad + tap * dilation < 0:
        first += 1
    end = out_size
    while end > first and (end - 1) * stride - pad + tap * dilation >= in_size:
        end -= 1
    return first, end


@cpu_kernel
def _im2col(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out):
    # cols[(c kh + i) kw + j, (n - first) hw + oh w_out + ow] = x[n, c, oh sh - ph + i dh, ow sw - pw + j dw]
    # or 0, for samples n in [first, first + count).
    # Flat views indexed with unsigned integers: numba then skips its negative-index fix-up on every
    # access, which halves the time of these short-row copies (2.1 -> 0.9 ns an element).
    n_batch, c_in, h, w = x.shape
    hw = h_out * w_out
    x_flat, cols_flat = x.reshape(-1), cols.reshape(-1)
    width = cols.shape[1]
    for c in range(c_in):
        for i in range(kh):
            oh_first, oh_end = _valid_outputs(i, stride_h, pad_h, dil_h, h, h_out)
            for j in range(kw):
                ow_first, ow_end = _valid_outputs(j, stride_w, pad_w, dil_w, w, w_out)
                row_start = ((c * kh + i) * kw + j) * width
                for n in range(first, first + count):
                    plane = (n * c_in + c) * h * w
                    for oh in range(h_out):
                        col = np.uint64(row_start + (n - first) * hw + oh * w_out)
                        if oh < oh_first or oh >= oh_end:
                            for ow in range(w_out):
                                cols_flat[col + np.uint64(ow)] = 0
                            continue
                        # source + ow * stride_w is the input element of output column ow (>= 0 in range)
                        source = plane + (oh * stride_h - pad_h + i * dil_h) * w + j * dil_w - pad_w
                        for ow in range(ow_first):
                            cols_flat[col + np.uint64(ow)] = 0
                        for ow in range(ow_first, ow_end):
                            cols_flat[col + np.uint64(ow)] = x_flat[np.uint64(source + ow * stride_w)]
                        for ow in range(ow_end, w_out):
                            cols_flat[col + np.uint64(ow)] = 0


@cpu_kernel
def conv2d_forward_cpu(out, cols, gemm, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       groups, relu):
    # Overwrites out, cols (kept for backward when it holds the whole batch) and gemm (scratch).
    n_batch, c_out, h_out, w_out = out.shape
    kh, kw = weight.shape[2], weight.shape[3]
    hw = h_out * w_out
    k = weight.shape[1] * kh * kw
    c_out_g = c_out // groups
    chunk = max(cols.shape[1] // hw, 1)
    w2 = weight.reshape(c_out, k)
    out_flat, gemm_flat = out.reshape(-1), gemm.reshape(-1)
    stride = gemm.shape[1]
    zero = same_type(out[0, 0, 0, 0], 0.0)
    for first in range(0, n_batch, chunk):
        count = min(chunk, n_batch - first)
        width = count * hw
        _im2col(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)
        for g in range(groups):
            matmul(gemm[g * c_out_g:(g + 1) * c_out_g, :width], w2[g * c_out_g:(g + 1) * c_out_g],
                   cols[g * k:(g + 1) * k, :width], False, False, 0.0)
        for n in range(first, first + count):
            for c in range(c_out):
                b = bias[c] if bias.size > 0 else zero
                source = np.uint64(c * stride + (n - first) * hw)
                target = np.uint64((n * c_out + c) * hw)
                for p in range(hw):
                    v = gemm_flat[source + np.uint64(p)] + b
                    if relu:
                        v = zero if v < zero else v  # not max(): a NaN must reach the NaN guard
                    out_flat[target + np.uint64(p)] = v


@cpu_kernel
def conv2d_backward_cpu(dx, dweight, dbias, dcols, dgemm, flipped, dout, out, x, cols, weight, stride_h, stride_w,
                        pad_h, pad_w, dil_h, dil_w, groups, relu):
    # Overwrites dx (skipped when empty), dweight, dbias (skipped when empty), dcols, dgemm and flipped
    # (scratch). cols holds forward's columns when it held the whole batch; else each chunk's are rebuilt
    # from x (the CUDA twin reads x only).
    #
    # dx of a "same" convolution (stride 1, no dilation, one group, no fused ReLU, output as large as
    # the input) is itself a convolution: of dout, padded by k - 1 - pad, with the kernel flipped and
    # its channel axes swapped (``flipped``, (C_in, C_out kH kW)), written straight into each sample's
    # dx. That is an im2col gather and a (C_in, C_out kH kW) GEMM instead of a (C_in kH kW, C_out) GEMM
    # and a col2im scatter. Measured (backward of 3x3 convolutions, batch 32): 48 -> 16 channels at
    # 32x32 25 ms against 29, 96 -> 32 at 16x16 19 against 22; but 8 -> 32 at 32x32 26 against 9, and
    # 32 -> 64 at 14x14 (batch 128) 57 against 33: the gather of dout costs more than the scatter it
    # saves when dout has more channels than x, and per-sample products of small images are slow.
    n_batch, c_out, h_out, w_out = dout.shape
    kh, kw = weight.shape[2], weight.shape[3]
    hw = h_out * w_out
    k = weight.shape[1] * kh * kw
    c_out_g = c_out // groups
    chunk = max(cols.shape[1] // hw, 1)
    dout_flat, out_flat, dgemm_flat = dout.reshape(-1), out.reshape(-1), dgemm.reshape(-1)
    stride = dgemm.shape[1]
    zero = same_type(dout[0, 0, 0, 0], 0.0)
    dw2 = dweight.reshape(c_out, k)
    w2 = weight.reshape(c_out, k)
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    # (only where it measured faster: fewer output than input channels, images of SAME_CONV_MIN_PIXELS)
    same = (dx.size > 0 and flipped.size > 0 and not relu and groups == 1 and stride_h == 1 and stride_w == 1
            and dil_h == 1 and dil_w == 1 and h * w == hw and c_out < c_in and hw >= tuning.SAME_CONV_MIN_PIXELS)
    k_flipped = c_out * kh * kw
    if same:
        for co in range(c_out):
            for ci in range(c_in):
                for i in range(kh):
                    for j in range(kw):
                        flipped[ci, (co * kh + i) * kw + j] = weight[co, ci, kh - 1 - i, kw - 1 - j]
    dx3 = dx.reshape(dx.shape[0], c_in, h * w) if dx.size > 0 else dx.reshape(0, 0, 0)
    if dbias.size > 0:
        dbias[:] = 0
    for first in range(0, n_batch, chunk):
        count = min(chunk, n_batch - first)
        width = count * hw
        if chunk < n_batch:
            _im2col(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)
        # NCHW dout -> dgemm (C_out, S HW), through the fused ReLU's mask, summing dbias on the way
        # (flat views, unsigned indices: see _im2col).
        for c in range(c_out):
            total = zero
            for n in range(first, first + count):
                source = np.uint64((n * c_out + c) * hw)
                target = np.uint64(c * stride + (n - first) * hw)
                for p in range(hw):
                    g = dout_flat[source + np.uint64(p)]
                    if relu:
                        g = zero if out_flat[source + np.uint64(p)] <= zero else g
                    dgemm_flat[target + np.uint64(p)] = g
                    total += g
            if dbias.size > 0:
                dbias[c] += total
        beta = 0.0 if first == 0 else 1.0
        for g in range(groups):
            rows, taps = slice(g * c_out_g, (g + 1) * c_out_g), slice(g * k, (g + 1) * k)
            matmul(dw2[rows], dgemm[rows, :width], cols[taps, :width], False, True, beta)
            if dx.size > 0 and not same:
                matmul(dcols[taps, :width], w2[rows], dgemm[rows, :width], True, False, 0.0)
        if same:
            _im2col(dcols, dout, first, count, 1, 1, kh - 1 - pad_h, kw - 1 - pad_w, 1, 1, kh, kw, h, w)
            for n in range(first, first + count):
                s = n - first
                matmul(dx3[n], flipped, dcols[:k_flipped, s * hw:(s + 1) * hw], False, False, 0.0)
        elif dx.size > 0:
            _col2im(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)


@cpu_kernel
def _col2im(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out):
    # dx[first:first + count] = the sum of every column entry back onto the input element it was
    # copied from (unsigned flat indices, as in _im2col).
    n_batch, c_in, h, w = dx.shape
    hw = h_out * w_out
    dx[first:first + count] = 0
    dx_flat, dcols_flat = dx.reshape(-1), dcols.reshape(-1)
    width = dcols.shape[1]
    for c in range(c_in):
        for i in range(kh):
            oh_first, oh_end = _valid_outputs(i, stride_h, pad_h, dil_h, h, h_out)
            for j in range(kw):
                ow_first, ow_end = _valid_outputs(j, stride_w, pad_w, dil_w, w, w_out)
                row_start = ((c * kh + i) * kw + j) * width
                for n in range(first, first + count):
                    plane = (n * c_in + c) * h * w
                    for oh in range(oh_first, oh_end):
                        col = np.uint64(row_start + (n - first) * hw + oh * w_out)
                        target = plane + (oh * stride_h - pad_h + i * dil_h) * w + j * dil_w - pad_w
                        for ow in range(ow_first, ow_end):
                            dx_flat[np.uint64(target + ow * stride_w)] += dcols_flat[col + np.uint64(ow)]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def conv2d_forward_cuda(out, cols, gemm, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        groups, relu):
    n_batch, c_out, h_out, w_out = out.shape
    c_in_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    h, w = x.shape[2], x.shape[3]
    c_out_g = c_out // groups
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = item % w_out
        oh = (item // w_out) % h_out
        co = (item // (w_out * h_out)) % c_out
        n = item // (w_out * h_out * c_out)
        first_channel = (co // c_out_g) * c_in_g
        acc = bias[co] if bias.size > 0 else same_type(x[0, 0, 0, 0], 0.0)
        for ci in range(c_in_g):
            for i in range(kh):
                ih = oh * stride_h - pad_h + i * dil_h
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * stride_w - pad_w + j * dil_w
                    if 0 <= iw < w:
                        acc += x[n, first_channel + ci, ih, iw] * weight[co, ci, i, j]
        if relu and acc < 0:
            acc = same_type(acc, 0.0)
        out[n, co, oh, ow] = acc


@scalar_math
def _masked_grad(dout, out, relu, n, c, oh, ow):
    g = dout[n, c, oh, ow]
    if relu and out[n, c, oh, ow] <= 0:
        return same_type(g, 0.0)
    return g


@cuda_kernel
def conv2d_backward_cuda(dx, dweight, dbias, dcols, dgemm, flipped, dout, out, x, cols, weight, stride_h, stride_w,
                         pad_h, pad_w, dil_h, dil_w, groups, relu):
    # Work items: every dweight element, every dbias element, then every dx element. The CPU's work
    # buffers (dcols, dgemm, flipped, cols) are unused.
    n_batch, c_out, h_out, w_out = dout.shape
    c_in_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    c_out_g = c_out // groups
    n_dweight, n_dbias = dweight.size, dbias.size
    x_h, x_w = x.shape[2], x.shape[3]
    for item in range(cuda.grid(1), n_dweight + n_dbias + dx.size, cuda.gridsize(1)):
        if item < n_dweight:
            j = item % kw
            i = (item // kw) % kh
            ci = (item // (kw * kh)) % c_in_g
            co = item // (kw * kh * c_in_g)
            channel = (co // c_out_g) * c_in_g + ci
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for n in range(n_batch):
                for oh in range(h_out):
                    ih = oh * stride_h - pad_h + i * dil_h
                    if ih < 0 or ih >= x_h:
                        continue
                    for ow in range(w_out):
                        iw = ow * stride_w - pad_w + j * dil_w
                        if 0 <= iw < x_w:
                            acc += _masked_grad(dout, out, relu, n, co, oh, ow) * x[n, channel, ih, iw]
            dweight[co, ci, i, j] = acc
        elif item < n_dweight + n_dbias:
            co = item - n_dweight
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for n in range(n_batch):
                for oh in range(h_out):
                    for ow in range(w_out):
                        acc += _masked_grad(dout, out, relu, n, co, oh, ow)
            dbias[co] = acc
        else:
            rest = item - n_dweight - n_dbias
            iw = rest % x_w
            ih = (rest // x_w) % x_h
            c = (rest // (x_w * x_h)) % dx.shape[1]
            n = rest // (x_w * x_h * dx.shape[1])
            group, ci = c // c_in_g, c % c_in_g
            acc = same_type(weight[0, 0, 0, 0], 0.0)
            for i in range(kh):
                oh = conv_output_index(ih, i, stride_h, pad_h, dil_h, h_out)
                if oh < 0:
                    continue
                for j in range(kw):
                    ow = conv_output_index(iw, j, stride_w, pad_w, dil_w, w_out)
                    if ow < 0:
                        continue
                    for co in range(group * c_out_g, (group + 1) * c_out_g):
                        acc += _masked_grad(dout, out, relu, n, co, oh, ow) * weight[co, ci, i, j]
            dx[n, c, ih, iw] = acc
