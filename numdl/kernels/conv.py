"""2-D convolution (cross-correlation, as PyTorch): stride, zero padding, dilation, groups, with the
bias and an optional ReLU fused into the pass that writes the output.

Shapes: x (N, C_in, H, W); weight (C_out, C_in / groups, kH, kW) (PyTorch's layout); bias (C_out,)
or empty; out (N, C_out, H_out, W_out) with H_out = (H + 2 pad_h - dil_h (kH - 1) - 1) // stride_h + 1.

CPU: samples split over numba's threads; each thread, a chunk of its samples at a time (one sample
when its image has tuning.CONV_GEMM_MIN_COLUMNS output pixels), copies the chunk's patches into its
own im2col columns (C_in kH kW, chunk H_out W_out), which then stay in its cache, and runs one BLAS
product per group on them; the pass that writes the output adds the bias and applies the ReLU.
Backward rebuilds each chunk's columns from x: dweight += g cols^T (each thread its own sum, added
up at the end), and dx is col2im of W^T g; over small images (tuning.CONV_GEMM_BATCH_BACKWARD_MAX_PIXELS)
it takes the whole batch's columns at once instead, each product split over the threads. One whole-batch im2col and GEMM read and wrote 29 MB of
columns for a 128 x 32 x 14 x 14 batch; per thread it ran 2.4x faster (tuning.CONV_GEMM_MIN_COLUMNS).
At stride 1 with outputs as wide as the input ("same" padding of the columns), im2col copies each
tap's shifted input plane as one run and zeroes the padding's positions after, and col2im adds
one run back: row by row, LLVM's vector loop never started on 14-pixel rows (the bench CNN's conv2,
forward and backward: 0.90 of the time, same results).

CPU, 3x3 and 1x1 kernels with stride 1, no dilation, one group, padding < the kernel size and few
output channels (``direct_conv`` says when): direct convolution instead. A stack of samples' inputs
is copied into zero-padded planes stored flat, one after another, (H + 2 pad_h) rows of
W_p = W + 2 pad_w each; output pixel (y, x) is then p = y W_p + x of a flat "padded-width" plane,
and its nine taps are src[p + i W_p + j], so one loop over every p (the positions past each row and
plane are computed and dropped) runs long, contiguous and vectorised whatever the image size, eight
output channels per pass over a kernel row of the input. The GEMM has only C_out rows there, and
OpenBLAS ran such thin products at 11-19 GF/s; the direct loops measured 54-78 GF/s a thread (the
figures behind the choice are in tuning.DIRECT_CONV_MAX_OUT_CHANNELS). dx is the same convolution of
dout (padded by k - 1 - pad) with the kernel flipped and its channel axes swapped; dweight sums
shifted dot products per channel pair.

conv2d_pool_*: the convolution with a 2x2 max pooling at stride 2 after it (and after its ReLU), as
models run Conv2d -> ReLU -> MaxPool2d(2): the pass that writes the output pools each window while
the convolution's rows are in cache, so only the pooled output and an int8 position per window
(pool_at) are stored; backward writes each window's gradient at its maximum straight into the
gradient rows the products read. For the bench's CNN (batch 128, 28x28) this saved ~6 ms of a ~34 ms
step: the 12.8 MB full-size outputs, the pooling passes over them and the ReLU masks' reads.

CUDA: direct convolution, one thread per output element (per pooled element: its window's four), and
one per weight / bias / input element in backward (no atomics).
"""

import numpy as np
from numba import prange

from numdl.kernels import tuning

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    numba_threads,
    runs_numba_threads,
    same_type,
    scalar_math,
    thread_share,
    worth_splitting,
)
from numdl.kernels.matmul import gemm, matmul

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def conv_output_index(in_pos, kernel_pos, stride, pad, dilation, out_size):
    # The output position whose window puts kernel tap ``kernel_pos`` on input ``in_pos``, or -1.
    shifted = in_pos + pad - kernel_pos * dilation
    if shifted < 0 or shifted % stride != 0:
        return -1
    out_pos = shifted // stride
    return out_pos if out_pos < out_size else -1


@scalar_math
def direct_conv(c_in, c_out, h_out, w_out, kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_h, pad_w):
    # Whether the CPU convolves directly (module docstring) rather than through im2col and a GEMM:
    # where the direct loops can run (a 3x3 or 1x1 kernel, stride 1, no dilation, one group, padding
    # at most kernel size - 1) and measured faster: at most tuning.DIRECT_CONV_MAX_OUT_CHANNELS output
    # channels (the GEMM's rows; with more, OpenBLAS's products run well). c_in, h_out, w_out: for
    # future rules.
    if not ((kh == 3 and kw == 3) or (kh == 1 and kw == 1)):
        return False
    if stride_h != 1 or stride_w != 1 or dil_h != 1 or dil_w != 1 or groups != 1:
        return False
    if pad_h > kh - 1 or pad_w > kw - 1:
        return False
    return c_out <= tuning.DIRECT_CONV_MAX_OUT_CHANNELS


@scalar_math
def shifted_gemm_conv(c_in, c_out):
    # Whether the planes path convolves by one BLAS product per kernel tap (outp += W_tap @ the planes
    # shifted by the tap) rather than by the hand-written loops: from tuning.SHIFTED_GEMM_MIN_IN_CHANNELS
    # input channels (the products' inner dimension). c_out: for future rules.
    return c_in >= tuning.SHIFTED_GEMM_MIN_IN_CHANNELS


@scalar_math
def shifted_gemm_dweight(c_in, c_out):
    # Whether the planes path's weight gradient is one BLAS product per tap (g @ shifted planes^T) rather
    # than the loops' shifted dot products (tuning.SHIFTED_GEMM_DWEIGHT_MIN_OUT_CHANNELS and _MIN_PAIRS).
    return (c_out >= tuning.SHIFTED_GEMM_DWEIGHT_MIN_OUT_CHANNELS
            or c_in * c_out >= tuning.SHIFTED_GEMM_DWEIGHT_MIN_PAIRS)


@scalar_math
def conv_size(size, kernel, stride, pad, dilation):
    # The convolution's output size along one axis (PyTorch's formula).
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@scalar_math
def pool_select(a, b, c, d):
    # The 2x2 window (a b / c d) of max pooling: its maximum and where it is (0 a, 1 b, 2 c, 3 d), as
    # kernels.pool's 2x2 path picks it: the first maximum in reading order, a NaN wins and stays
    # (selects, not max(); v != v only for NaN).
    take_b, take_d = (b > a) | (b != b), (d > c) | (d != d)
    top, bottom = b if take_b else a, d if take_d else c
    take_bottom = (bottom > top) | (bottom != bottom)
    if take_bottom:
        return bottom, 2 + int(take_d)
    return top, int(take_b)


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
    # or 0, for samples n in [first, first + count). Channels split over numba's threads when they
    # have the cores (each channel's rows are its own).
    if worth_splitting(cols.shape[0] * count * h_out * w_out):
        _im2col_split(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)
    else:
        _im2col_channels(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, 0, x.shape[1])


@cpu_parallel_kernel
def _im2col_split(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.shape[1], part, parts)
        _im2col_channels(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, lo, hi)


@cpu_kernel
def _plane_run(oh_first, oh_end, ow_first, ow_end, w_out):
    # [begin, end) of a column row's positions (oh w_out + ow) from its first valid output to its
    # last, for a tap of a stride-1 convolution whose output rows are as wide as its input's: there
    # the tap's input pixels are one run of the plane, as long as the run between.
    return oh_first * w_out + ow_first, (oh_end - 1) * w_out + ow_end


@cpu_kernel
def _im2col_plane(cols_flat, x_flat, dst, src, h_out, w_out, oh_first, oh_end, ow_first, ow_end):
    # One tap's column row of one sample (h_out w_out values from dst) for a stride-1 convolution with
    # w_out == w: the input plane shifted (x_flat[src + k] for output position k) by one long copy,
    # then the padding's positions set to 0 (at the rows' ends the copy read the next row's pixels).
    # A 14-pixel row at a time ran scalar (LLVM's vector body is 64 elements): conv2 of the bench's
    # CNN, 2 samples' columns, 75 us that way, 25 us this way. Unsigned indices: as _im2col_channels.
    begin, end = _plane_run(oh_first, oh_end, ow_first, ow_end, w_out)
    to, source = np.uint64(dst + begin), np.uint64(src + begin)
    for k in range(end - begin):
        cols_flat[to + np.uint64(k)] = x_flat[source + np.uint64(k)]
    _zero_padding(cols_flat, dst, h_out, w_out, oh_first, oh_end, ow_first, ow_end, begin, end)


@cpu_kernel
def _zero_padding(flat, at, h_out, w_out, oh_first, oh_end, ow_first, ow_end, begin, end):
    # flat[at + k] = 0 at the positions k of a tap's column row outside its valid outputs
    zero = same_type(flat[0], 0.0)
    for k in range(begin):
        flat[np.uint64(at + k)] = zero
    for oh in range(oh_first, oh_end):
        row = at + oh * w_out
        for ow in range(ow_first):
            flat[np.uint64(row + ow)] = zero
        for ow in range(ow_end, w_out):
            flat[np.uint64(row + ow)] = zero
    for k in range(end, h_out * w_out):
        flat[np.uint64(at + k)] = zero


@cpu_kernel
def _col2im_plane(dx_flat, dcols_flat, target, col, h_out, w_out, oh_first, oh_end, ow_first, ow_end):
    # _im2col_plane's reverse: dx_flat[target + k] += dcols_flat[col + k] over the tap's run (one
    # addition an element, in col2im's order: the same sums), its padding positions in dcols
    # (scratch) set to 0 first so that they add nothing to the pixels the run passes at the rows'
    # ends. conv2 of the bench's CNN, 6 samples: 160 -> 74 us.
    begin, end = _plane_run(oh_first, oh_end, ow_first, ow_end, w_out)
    _zero_padding(dcols_flat, col, h_out, w_out, oh_first, oh_end, ow_first, ow_end, begin, end)
    to, source = np.uint64(target + begin), np.uint64(col + begin)
    for k in range(end - begin):
        dx_flat[to + np.uint64(k)] += dcols_flat[source + np.uint64(k)]


@cpu_kernel
def _im2col_channels(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out,
                     c_lo, c_hi):
    # _im2col's rows of channels c_lo..c_hi-1.
    # Flat views indexed with unsigned integers: numba then skips its negative-index fix-up on every
    # access, which halves the time of these short-row copies (2.1 -> 0.9 ns an element).
    n_batch, c_in, h, w = x.shape
    hw = h_out * w_out
    x_flat, cols_flat = x.reshape(-1), cols.reshape(-1)
    width = cols.shape[1]
    for c in range(c_lo, c_hi):
        for i in range(kh):
            oh_first, oh_end = _valid_outputs(i, stride_h, pad_h, dil_h, h, h_out)
            for j in range(kw):
                ow_first, ow_end = _valid_outputs(j, stride_w, pad_w, dil_w, w, w_out)
                row_start = ((c * kh + i) * kw + j) * width
                for n in range(first, first + count):
                    plane = (n * c_in + c) * h * w
                    if stride_h == 1 and stride_w == 1 and w_out == w and oh_first < oh_end and ow_first < ow_end:
                        _im2col_plane(cols_flat, x_flat, row_start + (n - first) * hw, plane + (i * dil_h - pad_h) * w
                                      + j * dil_w - pad_w, h_out, w_out, oh_first, oh_end, ow_first, ow_end)
                        continue
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


@runs_numba_threads
@cpu_kernel
def conv2d_forward_cpu(out, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu):
    # Overwrites out (N, C_out, H_out, W_out).
    _conv_forward(out, np.empty((0, 0, 0, 0), np.int8), x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                  groups, relu, out.shape[2], out.shape[3])


@runs_numba_threads
@cpu_kernel
def conv2d_pool_forward_cpu(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                            relu):
    # The convolution, its ReLU (when relu) and a 2x2 max pooling at stride 2 in one pass: overwrites
    # out (N, C_out, H_out // 2, W_out // 2) and pool_at (same shape, int8: where each window's maximum
    # is, 0 / 1 top row, 2 / 3 bottom row). The convolution's own output is never stored.
    h_out = conv_size(x.shape[2], weight.shape[2], stride_h, pad_h, dil_h)
    w_out = conv_size(x.shape[3], weight.shape[3], stride_w, pad_w, dil_w)
    _conv_forward(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu, h_out,
                  w_out)


@cpu_kernel
def _conv_forward(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu, h_out,
                  w_out):
    kh, kw = weight.shape[2], weight.shape[3]
    if direct_conv(x.shape[1], out.shape[1], h_out, w_out, kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_h,
                   pad_w):
        _direct_forward_blocks(out, pool_at, x, weight, bias, pad_h, pad_w, relu, h_out, w_out)
        return
    _gemm_forward_blocks(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu,
                         h_out, w_out)


@runs_numba_threads
@cpu_kernel
def conv2d_backward_cpu(dx, dweight, dbias, dout, out, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        groups, relu):
    # Overwrites dx (skipped when empty), dweight, dbias (skipped when empty); out (forward's output)
    # is read only through a fused ReLU's mask.
    _conv_backward(dx, dweight, dbias, dout, out, np.empty((0, 0, 0, 0), np.int8), x, weight, stride_h, stride_w,
                   pad_h, pad_w, dil_h, dil_w, groups, relu, dout.shape[2], dout.shape[3])


@runs_numba_threads
@cpu_kernel
def conv2d_pool_backward_cpu(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h,
                             dil_w, groups, relu):
    # conv2d_backward_cpu of conv2d_pool_forward_cpu: dout, out (the pooled output) and pool_at are
    # pooled; each window's gradient reaches the convolution's output at its maximum only.
    h_out = conv_size(x.shape[2], weight.shape[2], stride_h, pad_h, dil_h)
    w_out = conv_size(x.shape[3], weight.shape[3], stride_w, pad_w, dil_w)
    _conv_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   groups, relu, h_out, w_out)


@cpu_kernel
def _conv_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   groups, relu, h_out, w_out):
    kh, kw = weight.shape[2], weight.shape[3]
    if direct_conv(x.shape[1], dout.shape[1], h_out, w_out, kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_h,
                   pad_w):
        _direct_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, pad_h, pad_w, relu, h_out, w_out)
        return
    _gemm_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   groups, relu, h_out, w_out)


@cpu_kernel
def _col2im(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out):
    # dx[first:first + count] = the sum of every column entry back onto the input element it was
    # copied from. Channels split over numba's threads as in _im2col (each writes its own planes).
    if worth_splitting(dcols.shape[0] * count * h_out * w_out):
        _col2im_split(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)
    else:
        _col2im_channels(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, 0, dx.shape[1])


@cpu_parallel_kernel
def _col2im_split(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(dx.shape[1], part, parts)
        _col2im_channels(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, lo, hi)


@cpu_kernel
def _col2im_channels(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out,
                     c_lo, c_hi):
    # _col2im for channels c_lo..c_hi-1 (unsigned flat indices, as in _im2col_channels).
    n_batch, c_in, h, w = dx.shape
    hw = h_out * w_out
    dx[first:first + count, c_lo:c_hi] = 0
    dx_flat, dcols_flat = dx.reshape(-1), dcols.reshape(-1)
    width = dcols.shape[1]
    for c in range(c_lo, c_hi):
        for i in range(kh):
            oh_first, oh_end = _valid_outputs(i, stride_h, pad_h, dil_h, h, h_out)
            for j in range(kw):
                ow_first, ow_end = _valid_outputs(j, stride_w, pad_w, dil_w, w, w_out)
                row_start = ((c * kh + i) * kw + j) * width
                for n in range(first, first + count):
                    plane = (n * c_in + c) * h * w
                    if stride_h == 1 and stride_w == 1 and w_out == w and oh_first < oh_end and ow_first < ow_end:
                        _col2im_plane(dx_flat, dcols_flat, plane + (i * dil_h - pad_h) * w + j * dil_w - pad_w,
                                      row_start + (n - first) * hw, h_out, w_out, oh_first, oh_end, ow_first, ow_end)
                        continue
                    for oh in range(oh_first, oh_end):
                        col = np.uint64(row_start + (n - first) * hw + oh * w_out)
                        target = plane + (oh * stride_h - pad_h + i * dil_h) * w + j * dil_w - pad_w
                        for ow in range(ow_first, ow_end):
                            dx_flat[np.uint64(target + ow * stride_w)] += dcols_flat[col + np.uint64(ow)]


@cpu_kernel
def _sum_parts(total, parts):
    # Overwrites total with the sum of parts[0], parts[1], ... (each block of samples' own gradient
    # sums, added in a fixed order); skipped when total is empty (no bias).
    if total.size == 0:
        return
    total[:] = parts[0]
    for part in range(1, parts.shape[0]):
        total += parts[part]


@cpu_kernel
def store_pooled(out_flat, at_flat, target, row, start, stride, h_out, w_out, scale, shift, relu):
    # The pooled output of one (sample, channel) plane of h_out x w_out pixels in ``row`` (pixel (y, x)
    # at start + y stride + x): out_flat[target + py (w_out // 2) + px] gets the maximum of window
    # (py, px) of scale v + shift (ReLU'd), at_flat its place in the window (pool_select). (A
    # convolution passes scale 1 and its bias: v * 1 is exact.)
    zero = same_type(row[0], 0.0)
    pw = w_out // 2
    for py in range(h_out // 2):
        top = np.uint64(start + 2 * py * stride)
        bottom = top + np.uint64(stride)
        to = np.uint64(target + py * pw)
        for px in range(pw):
            j = np.uint64(2 * px)
            a, b1 = row[top + j] * scale + shift, row[top + j + np.uint64(1)] * scale + shift
            c, d = row[bottom + j] * scale + shift, row[bottom + j + np.uint64(1)] * scale + shift
            if relu:  # not max(): a NaN must reach the NaN guard
                a, b1 = zero if a < zero else a, zero if b1 < zero else b1
                c, d = zero if c < zero else c, zero if d < zero else d
            best, at = pool_select(a, b1, c, d)
            out_flat[to + np.uint64(px)] = best
            at_flat[to + np.uint64(px)] = at


@cpu_kernel
def _unpool_grad(dest, start, stride, h_out, w_out, dout_flat, out_flat, at_flat, source, relu):
    # The output gradient of one (sample, channel) plane of a pooled convolution, written into ``dest``
    # (pixel (y, x) at start + y stride + x): each window's gradient (from dout_flat at source + py
    # (w_out // 2) + px, zero where the ReLU's output out_flat is <= 0) at its maximum, zero elsewhere and
    # on an odd last row or column (in no window). Returns the plane's gradient sum (the bias's share).
    # Zeroed rows, then one store per window: four selects per window ran 3.8x slower (they do not
    # vectorise across the interleaved pixels).
    zero = same_type(dest[0], 0.0)
    for y in range(h_out):
        dest[start + y * stride:start + y * stride + w_out] = zero
    total = zero
    pw = w_out // 2
    for py in range(h_out // 2):
        k0 = source + py * pw
        grads, outs, where = dout_flat[k0:k0 + pw], out_flat[k0:k0 + pw], at_flat[k0:k0 + pw]
        rows = dest[start + 2 * py * stride:start + (2 * py + 1) * stride + w_out]  # the window's two rows
        for px in range(pw):
            v = grads[px]
            if relu:
                v = zero if outs[px] <= zero else v
            at = np.int64(where[px])
            rows[2 * px + (at & 1) + (at >> 1) * stride] = v
            total += v
    return total


@cpu_kernel
def _gemm_samples(hw, samples, columns):
    # Samples per product on the GEMM path: enough for ``columns`` output pixels (one when its image
    # has that many; a BLAS call per tiny image costs more than its work), at most ``samples``.
    return max(1, min(samples, (columns + hw - 1) // hw))


@cpu_kernel
def _gemm_forward_samples(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu,
                          h_out, w_out, lo, hi):
    # Overwrites out[lo:hi]: per chunk of samples, im2col into this thread's columns (they stay in its
    # cache), one BLAS product per group on this thread, bias and ReLU (and the pooling, when pool_at
    # is not empty: out is then pooled) on the way out. h_out, w_out: the convolution's output size.
    c_out = out.shape[1]
    pooled = pool_at.size > 0
    at_flat = pool_at.reshape(-1)
    pooled_hw = (h_out // 2) * (w_out // 2)
    c_in, kh, kw = x.shape[1], weight.shape[2], weight.shape[3]
    hw = h_out * w_out
    k = weight.shape[1] * kh * kw
    c_out_g = c_out // groups
    chunk = _gemm_samples(hw, hi - lo, tuning.CONV_GEMM_MIN_COLUMNS)
    w2 = weight.reshape(c_out, k)
    cols = np.empty((c_in * kh * kw, chunk * hw), x.dtype)
    result = np.empty((c_out, chunk * hw), x.dtype)
    out_flat = out.reshape(-1)
    zero, one = same_type(out[0, 0, 0, 0], 0.0), same_type(out[0, 0, 0, 0], 1.0)
    for first in range(lo, hi, chunk):
        count = min(chunk, hi - first)
        width = count * hw
        _im2col_channels(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, 0, c_in)
        for g in range(groups):
            gemm(result[g * c_out_g:(g + 1) * c_out_g, :width], w2[g * c_out_g:(g + 1) * c_out_g],
                 cols[g * k:(g + 1) * k, :width], False, False, 1.0, 0.0)
        for s in range(count):
            for c in range(c_out):
                b = bias[c] if bias.size > 0 else zero
                if pooled:
                    store_pooled(out_flat, at_flat, ((first + s) * c_out + c) * pooled_hw, result[c], s * hw, w_out,
                                 h_out, w_out, one, b, relu)
                    continue
                row, target = result[c], ((first + s) * c_out + c) * hw
                for p in range(hw):
                    v = row[np.uint64(s * hw + p)] + b
                    if relu:
                        v = zero if v < zero else v  # not max(): a NaN must reach the NaN guard
                    out_flat[np.uint64(target + p)] = v


@cpu_parallel_kernel
def _gemm_forward_blocks(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu,
                         h_out, w_out):
    n_batch = x.shape[0]
    block = _direct_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _gemm_forward_samples(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                              relu, h_out, w_out, lo, min(n_batch, lo + block))


@cpu_kernel
def _gemm_backward_samples(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h,
                           dil_w, groups, relu, h_out, w_out, lo, hi):
    # Samples lo..hi-1: overwrites their dx (skipped when empty); accumulates into this block's own
    # dweight (C_out, C_in / groups, kH, kW) and dbias. Per chunk: the output gradient through the ReLU's
    # mask, the chunk's columns rebuilt from x, dweight += g cols^T, dcols = W^T g scattered by col2im.
    # With pool_at not empty, dout and out are the pooled ones (_unpool_grad).
    c_out = dout.shape[1]
    pooled = pool_at.size > 0
    at_flat = pool_at.reshape(-1)
    pooled_hw = (h_out // 2) * (w_out // 2)
    c_in, kh, kw = x.shape[1], weight.shape[2], weight.shape[3]
    hw = h_out * w_out
    k = weight.shape[1] * kh * kw
    c_out_g = c_out // groups
    chunk = _gemm_samples(hw, hi - lo, tuning.CONV_GEMM_BACKWARD_MIN_COLUMNS)
    dw2, w2 = dweight.reshape(c_out, k), weight.reshape(c_out, k)
    want_dx = dx.size > 0
    cols = np.empty((c_in * kh * kw, chunk * hw), x.dtype)
    dcols = np.empty((c_in * kh * kw if want_dx else 1, chunk * hw), x.dtype)
    g = np.empty((c_out, chunk * hw), x.dtype)
    dout_flat, out_flat = dout.reshape(-1), out.reshape(-1)
    zero = same_type(dout[0, 0, 0, 0], 0.0)
    for first in range(lo, hi, chunk):
        count = min(chunk, hi - first)
        width = count * hw
        for c in range(c_out):
            total = zero
            row = g[c]
            for s in range(count):
                if pooled:
                    total += _unpool_grad(row, s * hw, w_out, h_out, w_out, dout_flat, out_flat, at_flat,
                                          ((first + s) * c_out + c) * pooled_hw, relu)
                    continue
                source = ((first + s) * c_out + c) * hw
                for p in range(hw):
                    v = dout_flat[np.uint64(source + p)]
                    if relu and out_flat[np.uint64(source + p)] <= zero:
                        v = zero
                    row[np.uint64(s * hw + p)] = v
                    total += v
            if dbias.size > 0:
                dbias[c] += total
        _im2col_channels(cols, x, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                         w_out, 0, c_in)
        for grp in range(groups):
            rows, taps = slice(grp * c_out_g, (grp + 1) * c_out_g), slice(grp * k, (grp + 1) * k)
            gemm(dw2[rows], g[rows, :width], cols[taps, :width], False, True, 1.0, 1.0)
            if want_dx:
                gemm(dcols[taps, :width], w2[rows], g[rows, :width], True, False, 1.0, 0.0)
        if want_dx:
            _col2im_channels(dx, dcols, first, count, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out,
                             w_out, 0, c_in)


@cpu_parallel_kernel
def _gemm_backward_blocks(dx, dweight_parts, dbias_parts, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h,
                          pad_w, dil_h, dil_w, groups, relu, h_out, w_out, block):
    n_batch = x.shape[0]
    for part in prange(dweight_parts.shape[0]):
        lo = part * block
        _gemm_backward_samples(dx, dweight_parts[part], dbias_parts[part], dout, out, pool_at, x, weight, stride_h,
                               stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu, h_out, w_out, lo,
                               min(n_batch, lo + block))


@cpu_kernel
def _gemm_backward_batch(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h,
                         dil_w, groups, relu, h_out, w_out):
    # conv2d_backward_cpu for small images (tuning.CONV_GEMM_BATCH_BACKWARD_MAX_PIXELS): the whole
    # batch's columns and gradient at once, each product split over the threads by matmul.
    n_batch, c_out = dout.shape[0], dout.shape[1]
    pooled = pool_at.size > 0
    at_flat = pool_at.reshape(-1)
    pooled_hw = (h_out // 2) * (w_out // 2)
    c_in, kh, kw = x.shape[1], weight.shape[2], weight.shape[3]
    hw = h_out * w_out
    k = weight.shape[1] * kh * kw
    c_out_g = c_out // groups
    cols = np.empty((c_in * kh * kw, n_batch * hw), x.dtype)
    g = np.empty((c_out, n_batch * hw), x.dtype)
    _im2col(cols, x, 0, n_batch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)
    dout_flat, out_flat = dout.reshape(-1), out.reshape(-1)
    zero = same_type(dout[0, 0, 0, 0], 0.0)
    for c in range(c_out):
        total = zero
        row = g[c]
        for n in range(n_batch):
            if pooled:
                total += _unpool_grad(row, n * hw, w_out, h_out, w_out, dout_flat, out_flat, at_flat,
                                      (n * c_out + c) * pooled_hw, relu)
                continue
            source = (n * c_out + c) * hw
            for p in range(hw):
                v = dout_flat[np.uint64(source + p)]
                if relu and out_flat[np.uint64(source + p)] <= zero:
                    v = zero
                row[np.uint64(n * hw + p)] = v
                total += v
        if dbias.size > 0:
            dbias[c] = total
    dw2, w2 = dweight.reshape(c_out, k), weight.reshape(c_out, k)
    dcols = np.empty((c_in * kh * kw if dx.size > 0 else 1, n_batch * hw), x.dtype)
    for grp in range(groups):
        rows, taps = slice(grp * c_out_g, (grp + 1) * c_out_g), slice(grp * k, (grp + 1) * k)
        matmul(dw2[rows], g[rows], cols[taps], False, True, 0.0)
        if dx.size > 0:
            matmul(dcols[taps], w2[rows], g[rows], True, False, 0.0)
    if dx.size > 0:
        _col2im(dx, dcols, 0, n_batch, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw, h_out, w_out)


@cpu_kernel
def _gemm_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   groups, relu, h_out, w_out):
    # The GEMM path of conv2d_backward_cpu: each block of samples sums its own dweight and dbias.
    if h_out * w_out <= tuning.CONV_GEMM_BATCH_BACKWARD_MAX_PIXELS:
        _gemm_backward_batch(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h,
                             dil_w, groups, relu, h_out, w_out)
        return
    n_batch = x.shape[0]
    block = _direct_block(n_batch)
    parts = (n_batch + block - 1) // block
    dweight_parts = np.zeros((parts,) + dweight.shape, x.dtype)
    dbias_parts = np.zeros((parts, dbias.size), x.dtype)
    _gemm_backward_blocks(dx, dweight_parts, dbias_parts, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h,
                          pad_w, dil_h, dil_w, groups, relu, h_out, w_out, block)
    _sum_parts(dweight, dweight_parts)
    _sum_parts(dbias, dbias_parts)


@cpu_kernel
def _direct_block(n_batch):
    # Samples per numba thread in the direct convolutions: an even share (one sample is already
    # hundreds of microseconds of work, so no minimum as in sample_block).
    threads = numba_threads()
    return max((n_batch + threads - 1) // threads, 1)


@cpu_kernel
def _stack_planes(planes, x, lo, count, top, left, rows, width):
    # planes (C, >= count rows width), flat padded planes of ``rows`` rows of ``width`` stacked one
    # sample after another: samples lo..lo+count-1 of x (N, C, H, W), each with its first row at row
    # ``top`` and first column at ``left`` of its plane. Only the images' pixels are written: the
    # caller zeroes the planes once, and the borders stay zero.
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    for s in range(count):
        base = s * rows * width
        for c in range(c_n):
            plane, image = planes[c], x[lo + s, c]
            for y in range(h):
                start = base + (y + top) * width + left
                plane[start:start + w] = image[y]


@cpu_kernel
def _stack_size(rows, width, block):
    # Samples whose padded planes are stacked into one: loops over short planes (14x14 images) then
    # run long and their set-up and reductions are paid once per stack (tuning.DIRECT_CONV_STACK_PIXELS).
    return max(1, min(block, tuning.DIRECT_CONV_STACK_PIXELS // (rows * width)))


@cpu_kernel
def _taps(weight, co, ci):
    # The nine weights of one (output, input) channel pair, as scalars the loops keep in registers.
    k = weight[co, ci]
    return k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2], k[2, 0], k[2, 1], k[2, 2]


@cpu_kernel
def _tap_rows(src, c, first, count, width):
    # Plane c of src from position ``first`` as three views, one per kernel row: tap (i, j) of
    # position first + p is rows[i][p + j]. (Views indexed from zero by the loop counter: with one
    # view and offsets p + i width, numba's negative-index fix-up kept the loops from vectorising,
    # 2.3x slower.)
    plane = src[c]
    return (plane[first:first + count + 2], plane[first + width:first + width + count + 2],
            plane[first + 2 * width:first + 2 * width + count + 2])


@cpu_kernel
def _rows_conv3x3_8(outp, src, weight, width, co, p0, m):
    # _planes_conv3x3 for output channels co..co+7 at positions p0..p0+m-1: one kernel row of eight
    # channels per loop (24 weights stay in registers; with all nine taps of four channels, 36, they
    # were reloaded every step): 54-78 GF/s a thread against 32-61.
    c_in = weight.shape[1]
    zero = same_type(outp[0, 0], 0.0)
    o0, o1, o2, o3 = outp[co, p0:p0 + m], outp[co + 1, p0:p0 + m], outp[co + 2, p0:p0 + m], outp[co + 3, p0:p0 + m]
    o4, o5, o6, o7 = outp[co + 4, p0:p0 + m], outp[co + 5, p0:p0 + m], outp[co + 6, p0:p0 + m], outp[co + 7, p0:p0 + m]
    for q in range(8):
        outp[co + q, p0:p0 + m] = zero
    for ci in range(c_in):
        for i in range(3):
            row = src[ci, p0 + i * width:p0 + i * width + m + 2]
            k = weight[co:co + 8, ci, i]
            a0, a1, a2, b0, b1, b2 = k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2]
            c0, c1, c2, d0, d1, d2 = k[2, 0], k[2, 1], k[2, 2], k[3, 0], k[3, 1], k[3, 2]
            e0, e1, e2, f0, f1, f2 = k[4, 0], k[4, 1], k[4, 2], k[5, 0], k[5, 1], k[5, 2]
            g0, g1, g2, h0, h1, h2 = k[6, 0], k[6, 1], k[6, 2], k[7, 0], k[7, 1], k[7, 2]
            for p in range(m):
                t0, t1, t2 = row[p], row[p + 1], row[p + 2]
                o0[p] += a0 * t0 + a1 * t1 + a2 * t2
                o1[p] += b0 * t0 + b1 * t1 + b2 * t2
                o2[p] += c0 * t0 + c1 * t1 + c2 * t2
                o3[p] += d0 * t0 + d1 * t1 + d2 * t2
                o4[p] += e0 * t0 + e1 * t1 + e2 * t2
                o5[p] += f0 * t0 + f1 * t1 + f2 * t2
                o6[p] += g0 * t0 + g1 * t1 + g2 * t2
                o7[p] += h0 * t0 + h1 * t1 + h2 * t2


@cpu_kernel
def _planes_conv3x3(outp, src, weight, width, length):
    # Overwrites outp[:, :length] (C_out, >= length): the 3x3 cross-correlation of src (C_in, flat
    # padded planes of row length ``width``) with weight (C_out, C_in, 3, 3) at padded-width positions
    # p < length. Eight output channels share each load of a kernel row's taps (then four channels
    # all nine taps, then one at a time); a chunk of p at a time keeps those output rows in the L1
    # cache across the input channels.
    c_out, c_in = weight.shape[0], weight.shape[1]
    chunk = tuning.DIRECT_CONV_CHUNK_PIXELS
    zero = same_type(outp[0, 0], 0.0)
    for p0 in range(0, length, chunk):
        m = min(length - p0, chunk)
        co = 0
        while co + 8 <= c_out:
            _rows_conv3x3_8(outp, src, weight, width, co, p0, m)
            co += 8
        while co + 4 <= c_out:
            o0, o1 = outp[co, p0:p0 + m], outp[co + 1, p0:p0 + m]
            o2, o3 = outp[co + 2, p0:p0 + m], outp[co + 3, p0:p0 + m]
            o0[:] = zero
            o1[:] = zero
            o2[:] = zero
            o3[:] = zero
            for ci in range(c_in):
                a0, a1, a2, a3, a4, a5, a6, a7, a8 = _taps(weight, co, ci)
                b0, b1, b2, b3, b4, b5, b6, b7, b8 = _taps(weight, co + 1, ci)
                c0, c1, c2, c3, c4, c5, c6, c7, c8 = _taps(weight, co + 2, ci)
                d0, d1, d2, d3, d4, d5, d6, d7, d8 = _taps(weight, co + 3, ci)
                r0, r1, r2 = _tap_rows(src, ci, p0, m, width)
                for p in range(m):
                    t0, t1, t2 = r0[p], r0[p + 1], r0[p + 2]
                    t3, t4, t5 = r1[p], r1[p + 1], r1[p + 2]
                    t6, t7, t8 = r2[p], r2[p + 1], r2[p + 2]
                    o0[p] += a0 * t0 + a1 * t1 + a2 * t2 + a3 * t3 + a4 * t4 + a5 * t5 + a6 * t6 + a7 * t7 + a8 * t8
                    o1[p] += b0 * t0 + b1 * t1 + b2 * t2 + b3 * t3 + b4 * t4 + b5 * t5 + b6 * t6 + b7 * t7 + b8 * t8
                    o2[p] += c0 * t0 + c1 * t1 + c2 * t2 + c3 * t3 + c4 * t4 + c5 * t5 + c6 * t6 + c7 * t7 + c8 * t8
                    o3[p] += d0 * t0 + d1 * t1 + d2 * t2 + d3 * t3 + d4 * t4 + d5 * t5 + d6 * t6 + d7 * t7 + d8 * t8
            co += 4
        while co < c_out:  # the last one to three output channels, one at a time
            o0 = outp[co, p0:p0 + m]
            o0[:] = zero
            for ci in range(c_in):
                a0, a1, a2, a3, a4, a5, a6, a7, a8 = _taps(weight, co, ci)
                r0, r1, r2 = _tap_rows(src, ci, p0, m, width)
                for p in range(m):
                    o0[p] += (a0 * r0[p] + a1 * r0[p + 1] + a2 * r0[p + 2] + a3 * r1[p] + a4 * r1[p + 1]
                              + a5 * r1[p + 2] + a6 * r2[p] + a7 * r2[p + 1] + a8 * r2[p + 2])
            co += 1


@cpu_kernel
def _planes_dweight(dweight, g, src, width, length):
    # Accumulates into dweight (C_out, C_in, 3, 3): tap (i, j) of channel pair (co, ci) gains
    # sum_p g[co, p] src[ci, p + i width + j] over p < length, where g (C_out, >= length) is the output
    # gradient in the padded-width layout (zero past each row's W_out columns) and src as above.
    # One kernel row of four output channels (twelve sums) per loop: the three shifted input loads
    # serve four channels. (All nine taps in one loop did not vectorise; one channel at a time ran at
    # 30 GF/s, four at 48-57.)
    c_out, c_in = dweight.shape[0], dweight.shape[1]
    zero = same_type(g[0, 0], 0.0)
    co = 0
    while co < c_out:
        # the last one to three channels one at a time (the four lanes then read the same channel)
        lanes = 4 if co + 4 <= c_out else 1
        g0, g1 = g[co, :length], g[co + lanes // 4, :length]
        g2, g3 = g[co + 2 * (lanes // 4), :length], g[co + 3 * (lanes // 4), :length]
        for ci in range(c_in):
            for i in range(3):
                row = src[ci, i * width:i * width + length + 2]
                a0 = a1 = a2 = b0 = b1 = b2 = c0 = c1 = c2 = d0 = d1 = d2 = zero
                for p in range(length):
                    t0, t1, t2 = row[p], row[p + 1], row[p + 2]
                    u = g0[p]
                    a0 += u * t0
                    a1 += u * t1
                    a2 += u * t2
                    u = g1[p]
                    b0 += u * t0
                    b1 += u * t1
                    b2 += u * t2
                    u = g2[p]
                    c0 += u * t0
                    c1 += u * t1
                    c2 += u * t2
                    u = g3[p]
                    d0 += u * t0
                    d1 += u * t1
                    d2 += u * t2
                k = dweight[co, ci, i]
                k[0] += a0
                k[1] += a1
                k[2] += a2
                if lanes == 4:
                    k = dweight[co + 1, ci, i]
                    k[0] += b0
                    k[1] += b1
                    k[2] += b2
                    k = dweight[co + 2, ci, i]
                    k[0] += c0
                    k[1] += c1
                    k[2] += c2
                    k = dweight[co + 3, ci, i]
                    k[0] += d0
                    k[1] += d1
                    k[2] += d2
        co += lanes


@cpu_kernel
def _planes_conv1x1(outp, src, weight, length):
    # _planes_conv3x3 for a 1x1 kernel (weight (C_out, C_in, 1, 1)): outp[:, :length] = weight @ src.
    c_out, c_in = weight.shape[0], weight.shape[1]
    chunk = tuning.DIRECT_CONV_CHUNK_PIXELS
    zero = same_type(outp[0, 0], 0.0)
    for p0 in range(0, length, chunk):
        m = min(length - p0, chunk)
        co = 0
        while co < c_out:
            lanes = 4 if co + 4 <= c_out else 1  # the last one to three channels one at a time
            o0, o1 = outp[co, p0:p0 + m], outp[co + lanes // 4, p0:p0 + m]
            o2, o3 = outp[co + 2 * (lanes // 4), p0:p0 + m], outp[co + 3 * (lanes // 4), p0:p0 + m]
            o0[:] = zero
            if lanes == 4:
                o1[:] = zero
                o2[:] = zero
                o3[:] = zero
            for ci in range(c_in):
                row = src[ci, p0:p0 + m]
                a = weight[co, ci, 0, 0]
                if lanes == 4:
                    b, c, d = weight[co + 1, ci, 0, 0], weight[co + 2, ci, 0, 0], weight[co + 3, ci, 0, 0]
                    for p in range(m):
                        t = row[p]
                        o0[p] += a * t
                        o1[p] += b * t
                        o2[p] += c * t
                        o3[p] += d * t
                else:
                    for p in range(m):
                        o0[p] += a * row[p]
            co += lanes


@cpu_kernel
def _planes_dweight1x1(dweight, g, src, length):
    # _planes_dweight for a 1x1 kernel: dweight[co, ci, 0, 0] += sum_p g[co, p] src[ci, p].
    c_out, c_in = dweight.shape[0], dweight.shape[1]
    zero = same_type(g[0, 0], 0.0)
    co = 0
    while co < c_out:
        lanes = 4 if co + 4 <= c_out else 1  # as _planes_dweight
        g0, g1 = g[co, :length], g[co + lanes // 4, :length]
        g2, g3 = g[co + 2 * (lanes // 4), :length], g[co + 3 * (lanes // 4), :length]
        for ci in range(c_in):
            row = src[ci, :length]
            a = b = c = d = zero
            for p in range(length):
                t = row[p]
                a += g0[p] * t
                b += g1[p] * t
                c += g2[p] * t
                d += g3[p] * t
            dweight[co, ci, 0, 0] += a
            if lanes == 4:
                dweight[co + 1, ci, 0, 0] += b
                dweight[co + 2, ci, 0, 0] += c
                dweight[co + 3, ci, 0, 0] += d
        co += lanes


@cpu_kernel
def _tap_matrices(weight, wanted):
    # (k k, C_out, C_in): weight's taps as contiguous matrices, the shifted products' operands; an
    # empty array when not ``wanted`` (the loops read weight itself).
    c_out, c_in, kh, kw = weight.shape
    if not wanted:
        return np.empty((0, 0, 0), weight.dtype)
    taps = np.empty((kh * kw, c_out, c_in), weight.dtype)
    for co in range(c_out):
        for ci in range(c_in):
            for i in range(kh):
                for j in range(kw):
                    taps[i * kw + j, co, ci] = weight[co, ci, i, j]
    return taps


@cpu_kernel
def _planes_conv_gemm(outp, src, taps, k, width, length):
    # outp[:, :length] = sum over taps (i, j) of taps[i k + j] @ src[:, p + i width + j]: the shifted
    # planes are views with the planes' row stride, so no im2col columns are written (OpenBLAS ran
    # these products at 73-120 GF/s a thread where the loops ran at 37-54, 2026-11-30). A chunk of
    # positions at a time, so that its outputs stay in the L2 cache over the taps.
    chunk = tuning.SHIFTED_GEMM_CHUNK_PIXELS
    for p0 in range(0, length, chunk):
        m = min(chunk, length - p0)
        for i in range(k):
            for j in range(k):
                at = p0 + i * width + j
                gemm(outp[:, p0:p0 + m], taps[i * k + j], src[:, at:at + m], False, False, 1.0,
                     0.0 if i + j == 0 else 1.0)


@cpu_kernel
def _planes_dweight_gemm(dtaps, g, src, k, width, length):
    # dtaps[i k + j] (C_out, C_in) += g[:, :length] @ src[:, p + i width + j]^T: _planes_dweight as one
    # product per tap (the shifted planes as views, transposed by the BLAS), a chunk of positions at a
    # time (its g and planes stay in the L2 cache over the taps).
    chunk = tuning.SHIFTED_GEMM_CHUNK_PIXELS
    for p0 in range(0, length, chunk):
        m = min(chunk, length - p0)
        for i in range(k):
            for j in range(k):
                at = p0 + i * width + j
                gemm(dtaps[i * k + j], g[:, p0:p0 + m], src[:, at:at + m], False, True, 1.0, 1.0)


@cpu_kernel
def _planes_conv(outp, src, weight, taps, width, length):
    # The direct convolution of flat padded planes by a 3x3 or 1x1 kernel: by shifted products when
    # taps (from _tap_matrices) is not empty, else by the loops.
    if taps.shape[0] > 0:
        _planes_conv_gemm(outp, src, taps, weight.shape[2], width, length)
    elif weight.shape[2] == 1:
        _planes_conv1x1(outp, src, weight, length)
    else:
        _planes_conv3x3(outp, src, weight, width, length)


@cpu_kernel
def _direct_forward_samples(out, pool_at, x, weight, taps, bias, pad_h, pad_w, relu, h_out, w_out, lo, hi):
    # Overwrites out[lo:hi] (see conv2d_forward_cpu), with bias and ReLU (and the pooling, when pool_at
    # is not empty) on the way out; a stack of samples at a time (the positions between their planes are
    # computed and dropped). h_out, w_out: the convolution's output size.
    c_out = out.shape[1]
    pooled = pool_at.size > 0
    at_flat = pool_at.reshape(-1)
    pooled_hw = (h_out // 2) * (w_out // 2)
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    rows, width = h + 2 * pad_h, w + 2 * pad_w
    plane = rows * width
    stack = _stack_size(rows, width, hi - lo)
    planes = np.zeros((c_in, stack * plane + 2 * width + 2), x.dtype)
    outp = np.empty((c_out, stack * plane), x.dtype)
    zero, one = same_type(out[0, 0, 0, 0], 0.0), same_type(out[0, 0, 0, 0], 1.0)
    out_flat = out.reshape(-1)  # flat, unsigned indices: see _direct_backward_samples
    for first in range(lo, hi, stack):
        count = min(stack, hi - first)
        _stack_planes(planes, x, first, count, pad_h, pad_w, rows, width)
        _planes_conv(outp, planes, weight, taps, width, count * plane)
        for s in range(count):
            for c in range(c_out):
                b = bias[c] if bias.size > 0 else zero
                if pooled:
                    store_pooled(out_flat, at_flat, ((first + s) * c_out + c) * pooled_hw, outp[c], s * plane, width,
                                 h_out, w_out, one, b, relu)
                    continue
                row, target = outp[c], ((first + s) * c_out + c) * h_out * w_out
                for y in range(h_out):
                    at, to = s * plane + y * width, target + y * w_out
                    for i in range(w_out):
                        v = row[np.uint64(at + i)] + b
                        if relu:
                            v = zero if v < zero else v  # not max(): a NaN must reach the NaN guard
                        out_flat[np.uint64(to + i)] = v


@cpu_parallel_kernel
def _direct_forward_blocks(out, pool_at, x, weight, bias, pad_h, pad_w, relu, h_out, w_out):
    n_batch = x.shape[0]
    block = _direct_block(n_batch)
    taps = _tap_matrices(weight, shifted_gemm_conv(weight.shape[1], weight.shape[0]))
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _direct_forward_samples(out, pool_at, x, weight, taps, bias, pad_h, pad_w, relu, h_out, w_out, lo,
                                min(n_batch, lo + block))


@cpu_kernel
def _direct_backward_samples(dx, dweight, dbias, dout, out, pool_at, x, flipped, flipped_taps, pad_h, pad_w, relu,
                             h_out, w_out, lo, hi):
    # Samples lo..hi-1: overwrites their dx (skipped when empty); accumulates into this block's own
    # dweight (C_out, C_in, k, k) and dbias (C_out,). flipped (C_in, C_out, k, k): the weight with
    # its taps reversed and channel axes swapped, which convolves dout (padded by k - 1 - pad) into dx.
    # A stack of samples at a time, as the forward; g holds their output gradients in the input
    # planes' layout (zero between rows and planes), dplanes in the padded layout dx's convolution reads.
    # With pool_at not empty, dout and out are the pooled ones (_unpool_grad).
    c_out = dout.shape[1]
    pooled = pool_at.size > 0
    at_flat = pool_at.reshape(-1)
    pooled_hw = (h_out // 2) * (w_out // 2)
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    rows, width = h + 2 * pad_h, w + 2 * pad_w
    plane = rows * width
    want_dx = dx.size > 0
    k = flipped.shape[2]
    top, left = k - 1 - pad_h, k - 1 - pad_w
    drows, dwidth = h_out + 2 * top, w_out + 2 * left  # = h + k - 1, w + k - 1
    dplane = drows * dwidth
    stack = max(1, min(_stack_size(rows, width, hi - lo), _stack_size(drows, dwidth, hi - lo)))
    planes = np.zeros((c_in, stack * plane + 2 * width + 2), x.dtype)
    g = np.zeros((c_out, stack * plane), x.dtype)
    dplanes = np.zeros((c_out, stack * dplane + 2 * dwidth + 2 if want_dx else 1), x.dtype)
    dxp = np.empty((c_in, stack * dplane if want_dx else 1), x.dtype)
    by_products = shifted_gemm_dweight(c_in, c_out)
    dtaps = np.zeros((k * k if by_products else 0, c_out, c_in), x.dtype)
    zero = same_type(dout[0, 0, 0, 0], 0.0)
    # flat views and unsigned indices for the short rows of these copies (as in _im2col_channels:
    # with a slice per row, the copies cost as much as the dx convolution on 14x14 images)
    dout_flat, out_flat, dx_flat = dout.reshape(-1), out.reshape(-1), dx.reshape(-1)
    hw_out = h_out * w_out
    for first in range(lo, hi, stack):
        count = min(stack, hi - first)
        if count < stack:  # a last, shorter stack: no stale sample past it (0 * NaN is NaN)
            planes[:, count * plane:] = 0
        _stack_planes(planes, x, first, count, pad_h, pad_w, rows, width)
        for c in range(c_out):
            total = zero
            g_row, d_row = g[c], dplanes[c]
            for s in range(count):
                if pooled:
                    source = ((first + s) * c_out + c) * pooled_hw
                    total += _unpool_grad(g_row, s * plane, width, h_out, w_out, dout_flat, out_flat, at_flat, source,
                                          relu)
                    if want_dx:
                        _unpool_grad(d_row, s * dplane + top * dwidth + left, dwidth, h_out, w_out, dout_flat,
                                     out_flat, at_flat, source, relu)
                    continue
                source = ((first + s) * c_out + c) * hw_out
                for y in range(h_out):
                    at, to, dat = source + y * w_out, s * plane + y * width, s * dplane + (y + top) * dwidth + left
                    for i in range(w_out):
                        v = dout_flat[np.uint64(at + i)]
                        if relu and out_flat[np.uint64(at + i)] <= zero:
                            v = zero
                        g_row[np.uint64(to + i)] = v
                        if want_dx:
                            d_row[np.uint64(dat + i)] = v
                        total += v
            if dbias.size > 0:
                dbias[c] += total
        if by_products:
            _planes_dweight_gemm(dtaps, g, planes, k, width, count * plane)
        elif k == 1:
            _planes_dweight1x1(dweight, g, planes, count * plane)
        else:
            _planes_dweight(dweight, g, planes, width, count * plane)
        if want_dx:
            _planes_conv(dxp, dplanes, flipped, flipped_taps, dwidth, count * dplane)
            for s in range(count):
                for c in range(c_in):
                    d_row, target = dxp[c], ((first + s) * c_in + c) * h * w
                    for y in range(h):
                        at, to = s * dplane + y * dwidth, target + y * w
                        for i in range(w):
                            dx_flat[np.uint64(to + i)] = d_row[np.uint64(at + i)]
    if by_products:
        for co in range(c_out):
            for ci in range(c_in):
                for i in range(k):
                    for j in range(k):
                        dweight[co, ci, i, j] += dtaps[i * k + j, co, ci]


@cpu_parallel_kernel
def _direct_backward_blocks(dx, dweight_parts, dbias_parts, dout, out, pool_at, x, flipped, pad_h, pad_w, relu, h_out,
                            w_out, block):
    n_batch = x.shape[0]
    flipped_taps = _tap_matrices(flipped, dx.size > 0 and shifted_gemm_conv(flipped.shape[1], flipped.shape[0]))
    for part in prange(dweight_parts.shape[0]):
        lo = part * block
        _direct_backward_samples(dx, dweight_parts[part], dbias_parts[part], dout, out, pool_at, x, flipped,
                                 flipped_taps, pad_h, pad_w, relu, h_out, w_out, lo, min(n_batch, lo + block))


@cpu_kernel
def _direct_backward(dx, dweight, dbias, dout, out, pool_at, x, weight, pad_h, pad_w, relu, h_out, w_out):
    # The direct path of conv2d_backward_cpu: each block of samples sums its own dweight and dbias,
    # added up here (no two threads write the same sum).
    n_batch, c_out = dout.shape[0], dout.shape[1]
    c_in = x.shape[1]
    block = _direct_block(n_batch)
    parts = (n_batch + block - 1) // block
    dweight_parts = np.zeros((parts,) + dweight.shape, x.dtype)
    dbias_parts = np.zeros((parts, dbias.size), x.dtype)
    k = weight.shape[2]
    flipped = np.empty((c_in, c_out, k, k), x.dtype)
    for co in range(c_out):
        for ci in range(c_in):
            for i in range(k):
                for j in range(k):
                    flipped[ci, co, i, j] = weight[co, ci, k - 1 - i, k - 1 - j]
    _direct_backward_blocks(dx, dweight_parts, dbias_parts, dout, out, pool_at, x, flipped, pad_h, pad_w, relu, h_out,
                            w_out, block)
    _sum_parts(dweight, dweight_parts)
    _sum_parts(dbias, dbias_parts)


# --------------------------------------------------------------------------------------- CUDA kernels


@scalar_math
def _conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh, ow):
    # One output element of the convolution, before any ReLU.
    c_in_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    h, w = x.shape[2], x.shape[3]
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
    return acc


@scalar_math
def _relu_of(v, relu):
    return same_type(v, 0.0) if relu and v < 0 else v  # a NaN stays


@cuda_kernel
def conv2d_forward_cuda(out, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, relu):
    n_batch, c_out, h_out, w_out = out.shape
    c_out_g = c_out // groups
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = item % w_out
        oh = (item // w_out) % h_out
        co = (item // (w_out * h_out)) % c_out
        n = item // (w_out * h_out * c_out)
        acc = _conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh, ow)
        out[n, co, oh, ow] = _relu_of(acc, relu)


@cuda_kernel
def conv2d_pool_forward_cuda(out, pool_at, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                             relu):
    # One thread per pooled element: its window's four convolution outputs, then their maximum.
    n_batch, c_out, ph, pw = out.shape
    c_out_g = c_out // groups
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        px = item % pw
        py = (item // pw) % ph
        co = (item // (pw * ph)) % c_out
        n = item // (pw * ph * c_out)
        oh, ow = 2 * py, 2 * px
        a = _relu_of(_conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh, ow),
                     relu)
        b = _relu_of(_conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh,
                              ow + 1), relu)
        c = _relu_of(_conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh + 1,
                              ow), relu)
        d = _relu_of(_conv_at(x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, c_out_g, n, co, oh + 1,
                              ow + 1), relu)
        best, at = pool_select(a, b, c, d)
        out[n, co, py, px] = best
        pool_at[n, co, py, px] = at


@scalar_math
def _masked_grad(dout, out, relu, n, c, oh, ow):
    g = dout[n, c, oh, ow]
    if relu and out[n, c, oh, ow] <= 0:
        return same_type(g, 0.0)
    return g


@scalar_math
def _conv_grad(dout, out, pool_at, pooled, relu, n, c, oh, ow):
    # The gradient at the convolution's output (n, c, oh, ow): dout's through the ReLU's mask, or with
    # pooled, the window's when this is its maximum (0 off it, and on an odd last row or column).
    if not pooled:
        return _masked_grad(dout, out, relu, n, c, oh, ow)
    py, px = oh // 2, ow // 2
    if py >= dout.shape[2] or px >= dout.shape[3] or pool_at[n, c, py, px] != 2 * (oh - 2 * py) + (ow - 2 * px):
        return same_type(dout[0, 0, 0, 0], 0.0)
    return _masked_grad(dout, out, relu, n, c, py, px)


@scalar_math
def _conv_backward_item(item, dx, dweight, dbias, dout, out, pool_at, pooled, x, weight, stride_h, stride_w, pad_h,
                        pad_w, dil_h, dil_w, groups, relu, h_out, w_out):
    # Work item ``item`` of the CUDA backward: a dweight element, a dbias element, then a dx element.
    c_out = dout.shape[1]
    n_batch = x.shape[0]
    c_in_g, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    c_out_g = c_out // groups
    n_dweight, n_dbias = dweight.size, dbias.size
    x_h, x_w = x.shape[2], x.shape[3]
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
                        acc += _conv_grad(dout, out, pool_at, pooled, relu, n, co, oh, ow) * x[n, channel, ih, iw]
        dweight[co, ci, i, j] = acc
    elif item < n_dweight + n_dbias:
        co = item - n_dweight
        acc = same_type(weight[0, 0, 0, 0], 0.0)
        for n in range(n_batch):
            for oh in range(h_out):
                for ow in range(w_out):
                    acc += _conv_grad(dout, out, pool_at, pooled, relu, n, co, oh, ow)
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
                    acc += _conv_grad(dout, out, pool_at, pooled, relu, n, co, oh, ow) * weight[co, ci, i, j]
        dx[n, c, ih, iw] = acc


@cuda_kernel
def conv2d_backward_cuda(dx, dweight, dbias, dout, out, x, weight, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                         groups, relu):
    # Work items: every dweight element, every dbias element, then every dx element (no pooling: out
    # stands in for pool_at, which _conv_grad then never reads).
    for item in range(cuda.grid(1), dweight.size + dbias.size + dx.size, cuda.gridsize(1)):
        _conv_backward_item(item, dx, dweight, dbias, dout, out, out, False, x, weight, stride_h, stride_w, pad_h,
                            pad_w, dil_h, dil_w, groups, relu, dout.shape[2], dout.shape[3])


@cuda_kernel
def conv2d_pool_backward_cuda(dx, dweight, dbias, dout, out, pool_at, x, weight, stride_h, stride_w, pad_h, pad_w,
                              dil_h, dil_w, groups, relu):
    h_out = conv_size(x.shape[2], weight.shape[2], stride_h, pad_h, dil_h)
    w_out = conv_size(x.shape[3], weight.shape[3], stride_w, pad_w, dil_w)
    for item in range(cuda.grid(1), dweight.size + dbias.size + dx.size, cuda.gridsize(1)):
        _conv_backward_item(item, dx, dweight, dbias, dout, out, pool_at, True, x, weight, stride_h, stride_w, pad_h,
                            pad_w, dil_h, dil_w, groups, relu, h_out, w_out)
