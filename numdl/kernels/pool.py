"""2-D max and average pooling, and adaptive pooling to an output size (PyTorch semantics: implicit -inf padding for max; the average's
divisor is the window clipped to the padded image with ``count_include_pad``, else the number of
image pixels it covers).

Shapes: x (N, C, H, W); out (N, C, H_out, W_out), H_out = (H + 2 pad_h - dil_h (kH - 1) - 1) // stride_h + 1
(max pooling's taps sit dil apart; average pooling has none), or one
more with ceil_mode (the layer sizes out; a last window that starts past the padded image is dropped);
argmax (N, C, H_out, W_out) int64, the flat index h W + w of each maximum inside its (n, c) plane.
Backward overwrites dx. The CPU scatters each output gradient; the CUDA twin gathers per input
element (no atomics), looking through the windows that cover it.
"""

import math

import numpy as np
from numba import prange

from numdl.kernels.common import (
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_kernel,
    numba_threads,
    same_type,
    scalar_math,
    thread_share,
    worth_splitting,
)
from numdl.kernels.conv import conv_output_index
from numdl.kernels.layout import nchw_position

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def max_window(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n, c, oh, ow):
    # Window taps dil apart (PyTorch's dilation); implicit -inf padding.
    h, w = x.shape[2], x.shape[3]
    best = same_type(x[0, 0, 0, 0], -math.inf)
    best_index = -1
    for i in range(kh):
        ih = oh * stride_h - pad_h + i * dil_h
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            iw = ow * stride_w - pad_w + j * dil_w
            if 0 <= iw < w:
                v = x[n, c, ih, iw]
                if v > best or v != v or best_index < 0:  # a NaN wins and stays (as PyTorch)
                    best = v
                    best_index = ih * w + iw
    out[n, c, oh, ow] = best
    argmax[n, c, oh, ow] = best_index


@scalar_math
def avg_divisor(h, w, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, count_include_pad):
    # PyTorch's: the window clipped to the padded image (with count_include_pad), else to the image.
    top, left = oh * stride_h - pad_h, ow * stride_w - pad_w
    bottom, right = min(top + kh, h + pad_h), min(left + kw, w + pad_w)
    if not count_include_pad:
        top, left, bottom, right = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    return max((bottom - top) * (right - left), 1)


@scalar_math
def avg_window(out, x, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad, n, c, oh, ow):
    h, w = x.shape[2], x.shape[3]
    acc = same_type(x[0, 0, 0, 0], 0.0)
    for i in range(kh):
        ih = oh * stride_h - pad_h + i
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            iw = ow * stride_w - pad_w + j
            if 0 <= iw < w:
                acc += x[n, c, ih, iw]
    divisor = avg_divisor(h, w, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, count_include_pad)
    out[n, c, oh, ow] = acc / same_type(acc, divisor)


@scalar_math
def adaptive_start(index, in_size, out_size):
    # PyTorch's adaptive pooling windows: [floor(i in / out), ceil((i + 1) in / out)).
    return (index * in_size) // out_size


@scalar_math
def adaptive_end(index, in_size, out_size):
    return -((-(index + 1) * in_size) // out_size)


@scalar_math
def adaptive_avg_window(out, x, n, c, oh, ow):
    h, w = x.shape[2], x.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    top, bottom = adaptive_start(oh, h, h_out), adaptive_end(oh, h, h_out)
    left, right = adaptive_start(ow, w, w_out), adaptive_end(ow, w, w_out)
    acc = same_type(x[0, 0, 0, 0], 0.0)
    for ih in range(top, bottom):
        for iw in range(left, right):
            acc += x[n, c, ih, iw]
    out[n, c, oh, ow] = acc / same_type(acc, (bottom - top) * (right - left))


@scalar_math
def adaptive_max_window(out, argmax, x, n, c, oh, ow):
    h, w = x.shape[2], x.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    top, bottom = adaptive_start(oh, h, h_out), adaptive_end(oh, h, h_out)
    left, right = adaptive_start(ow, w, w_out), adaptive_end(ow, w, w_out)
    best = x[n, c, top, left]
    best_index = top * w + left
    for ih in range(top, bottom):
        for iw in range(left, right):
            v = x[n, c, ih, iw]
            if v > best or v != v:  # the first maximum wins; a NaN wins and stays (as PyTorch)
                best = v
                best_index = ih * w + iw
    out[n, c, oh, ow] = best
    argmax[n, c, oh, ow] = best_index


@scalar_math
def adaptive_gather(dout, argmax, use_argmax, n, c, ih, iw, h, w):
    # The gradient reaching input (ih, iw) from every adaptive window covering it (windows may overlap).
    h_out, w_out = dout.shape[2], dout.shape[3]
    acc = same_type(dout[0, 0, 0, 0], 0.0)
    for oh in range(h_out):
        top, bottom = adaptive_start(oh, h, h_out), adaptive_end(oh, h, h_out)
        if ih < top or ih >= bottom:
            continue
        for ow in range(w_out):
            left, right = adaptive_start(ow, w, w_out), adaptive_end(ow, w, w_out)
            if iw < left or iw >= right:
                continue
            if use_argmax:
                if argmax[n, c, oh, ow] == same_type(argmax[0, 0, 0, 0], ih * w + iw):
                    acc += dout[n, c, oh, ow]
            else:
                acc += dout[n, c, oh, ow] / same_type(acc, (bottom - top) * (right - left))
    return acc


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def maxpool2d_forward_cpu(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # Samples split over numba's threads when they have the cores.
    if worth_splitting(x.size):
        _maxpool2d_forward_split(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    else:
        _maxpool2d_forward_samples(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)


@cpu_parallel_kernel
def _maxpool2d_forward_split(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.shape[0], part, parts)
        _maxpool2d_forward_samples(out[lo:hi], argmax[lo:hi], x[lo:hi], kh, kw, stride_h, stride_w, pad_h, pad_w,
                                   dil_h, dil_w)


@cpu_kernel
def _maxpool2d_forward_samples(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # Branch-free: maxima sit at random places in a window, and a compare-and-branch per element
    # mispredicts half the time (that cost ~30 ms for a 128x32x28x28 batch; this takes ~2-10 ms).
    n_batch, channels, h_out, w_out = out.shape
    h, w = x.shape[2], x.shape[3]
    if dil_h != 1 or dil_w != 1:  # dilated windows (rare): the taps one by one
        for n in range(n_batch):
            for c in range(channels):
                for oh in range(h_out):
                    for ow in range(w_out):
                        max_window(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                   n, c, oh, ow)
        return
    if (kh == 2 and kw == 2 and stride_h == 2 and stride_w == 2 and pad_h == 0 and pad_w == 0
            and 2 * h_out <= h and 2 * w_out <= w):  # (ceil_mode's last half window takes the general path)
        _maxpool2x2_forward(out, argmax, x)
        return
    for n in range(n_batch):
        for c in range(channels):
            plane = x[n, c]
            for oh in range(h_out):
                top = oh * stride_h - pad_h
                i0, i1 = max(top, 0), min(top + kh, h)
                for ow in range(w_out):
                    left = ow * stride_w - pad_w
                    j0, j1 = max(left, 0), min(left + kw, w)
                    best = plane[i0, j0]
                    best_index = i0 * w + j0
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = plane[i, j]
                            # strict: the first maximum wins; a NaN wins and stays (as PyTorch)
                            take = (v > best) | (v != v)
                            best = v if take else best
                            best_index += np.int64(take) * (i * w + j - best_index)
                    out[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = best_index


@cpu_kernel
def _maxpool2x2_forward(out, argmax, x):
    # The common 2x2, stride 2, unpadded window written out: two pairwise maxima, then theirs.
    n_batch, channels, h_out, w_out = out.shape
    w = x.shape[3]
    for n in range(n_batch):
        for c in range(channels):
            plane = x[n, c]
            for oh in range(h_out):
                i = 2 * oh
                for ow in range(w_out):
                    j = 2 * ow
                    a, b, c2, d = plane[i, j], plane[i, j + 1], plane[i + 1, j], plane[i + 1, j + 1]
                    # Selects, not max(): a NaN wins and stays, as in PyTorch (v != v only for NaN).
                    take_b, take_d = (b > a) | (b != b), (d > c2) | (d != d)
                    top, bottom = b if take_b else a, d if take_d else c2
                    top_index = i * w + j + np.int64(take_b)
                    bottom_index = (i + 1) * w + j + np.int64(take_d)
                    take_bottom = (bottom > top) | (bottom != bottom)
                    out[n, c, oh, ow] = bottom if take_bottom else top
                    argmax[n, c, oh, ow] = top_index + np.int64(take_bottom) * (bottom_index - top_index)


@cpu_kernel
def maxpool2d_backward_cpu(dx, dout, argmax, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    h_out, w_out = dout.shape[2], dout.shape[3]
    tiled = (kh == 2 and kw == 2 and stride_h == 2 and stride_w == 2 and pad_h == 0 and pad_w == 0
             and dil_h == 1 and dil_w == 1 and 2 * h_out <= dx.shape[2] and 2 * w_out <= dx.shape[3])
    if worth_splitting(dx.size):
        _maxpool2d_backward_split(dx, dout, argmax, tiled)
    else:
        _maxpool2d_backward_samples(dx, dout, argmax, tiled)


@cpu_parallel_kernel
def _maxpool2d_backward_split(dx, dout, argmax, tiled):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(dx.shape[0], part, parts)
        _maxpool2d_backward_samples(dx[lo:hi], dout[lo:hi], argmax[lo:hi], tiled)


@cpu_kernel
def _maxpool2x2_backward(dx, dout, argmax):
    # 2x2 windows at stride 2 tile the image: each input element belongs to one window, so each is
    # written once, with its window's gradient where it is the maximum and 0 elsewhere. No zeroing
    # pass and no division of the flat index (the general scatter below took ~2x as long).
    n_batch, channels, h_out, w_out = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    for n in range(n_batch):
        for c in range(channels):
            plane, grads, where = dx[n, c], dout[n, c], argmax[n, c]
            zero = same_type(grads[0, 0], 0.0)
            for oh in range(h_out):
                top, bottom = plane[2 * oh], plane[2 * oh + 1]
                for ow in range(w_out):
                    g, at = grads[oh, ow], where[oh, ow] - (2 * oh * w + 2 * ow)  # 0, 1, w or w + 1
                    top[2 * ow] = g if at == 0 else zero
                    top[2 * ow + 1] = g if at == 1 else zero
                    bottom[2 * ow] = g if at == w else zero
                    bottom[2 * ow + 1] = g if at == w + 1 else zero
            # an odd last row or column is in no window
            for i in range(2 * h_out, h):
                plane[i, :] = 0
            for i in range(2 * h_out):
                for j in range(2 * w_out, w):
                    plane[i, j] = 0


@cpu_kernel
def _maxpool2d_backward_samples(dx, dout, argmax, tiled):
    # Overwrites dx: each output's gradient onto its window's maximum (argmax: index in the plane).
    if tiled:
        _maxpool2x2_backward(dx, dout, argmax)
        return
    n_batch, channels, h_out, w_out = dout.shape
    w = dx.shape[3]
    dx[:] = 0
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                for ow in range(w_out):
                    index = argmax[n, c, oh, ow]
                    dx[n, c, index // w, index % w] += dout[n, c, oh, ow]


@cpu_kernel
def avgpool2d_forward_cpu(out, x, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    n_batch, channels, h_out, w_out = out.shape
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                for ow in range(w_out):
                    avg_window(out, x, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad, n, c, oh, ow)


@cpu_kernel
def avgpool2d_backward_cpu(dx, dout, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    n_batch, channels, h_out, w_out = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    dx[:] = 0
    one = same_type(dout[0, 0, 0, 0], 1.0)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                for ow in range(w_out):
                    divisor = avg_divisor(h, w, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, count_include_pad)
                    g = dout[n, c, oh, ow] * (one / same_type(one, divisor))
                    for i in range(kh):
                        ih = oh * stride_h - pad_h + i
                        if ih < 0 or ih >= h:
                            continue
                        for j in range(kw):
                            iw = ow * stride_w - pad_w + j
                            if 0 <= iw < w:
                                dx[n, c, ih, iw] += g


@cpu_kernel
def adaptive_avgpool2d_forward_cpu(out, x):
    n_batch, channels, h_out, w_out = out.shape
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                for ow in range(w_out):
                    adaptive_avg_window(out, x, n, c, oh, ow)


@cpu_kernel
def adaptive_avgpool2d_backward_cpu(dx, dout):
    n_batch, channels, h, w = dx.shape
    for n in range(n_batch):
        for c in range(channels):
            for ih in range(h):
                for iw in range(w):
                    dx[n, c, ih, iw] = adaptive_gather(dout, dout, False, n, c, ih, iw, h, w)


@cpu_kernel
def adaptive_maxpool2d_forward_cpu(out, argmax, x):
    n_batch, channels, h_out, w_out = out.shape
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                for ow in range(w_out):
                    adaptive_max_window(out, argmax, x, n, c, oh, ow)


@cpu_kernel
def adaptive_maxpool2d_backward_cpu(dx, dout, argmax):
    n_batch, channels, h, w = dx.shape
    for n in range(n_batch):
        for c in range(channels):
            for ih in range(h):
                for iw in range(w):
                    dx[n, c, ih, iw] = adaptive_gather(dout, argmax, True, n, c, ih, iw, h, w)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def maxpool2d_forward_cuda(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        max_window(out, argmax, x, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n, c, oh, ow)


@scalar_math
def gather_window_gradient(dout, argmax, use_argmax, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                           count_include_pad, n, c, ih, iw, h, w):
    # Sum of dout over the windows covering input (ih, iw): with use_argmax only the windows whose
    # maximum it was, else each divided by its average's divisor. Gather instead of scatter: one
    # writer per input element, no atomics.
    h_out, w_out = dout.shape[2], dout.shape[3]
    acc = same_type(dout[0, 0, 0, 0], 0.0)
    for i in range(kh):
        oh = conv_output_index(ih, i, stride_h, pad_h, dil_h, h_out)
        if oh < 0:
            continue
        for j in range(kw):
            ow = conv_output_index(iw, j, stride_w, pad_w, dil_w, w_out)
            if ow < 0:
                continue
            if use_argmax:
                # same_type: avg pooling passes dout as a stand-in argmax; its float compare must stay float32
                if argmax[n, c, oh, ow] == same_type(argmax[0, 0, 0, 0], ih * w + iw):
                    acc += dout[n, c, oh, ow]
            else:
                divisor = avg_divisor(h, w, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, count_include_pad)
                acc += dout[n, c, oh, ow] / same_type(acc, divisor)
    return acc


@cuda_kernel
def maxpool2d_backward_cuda(dx, dout, argmax, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, ih, iw = nchw_position(item, channels, h, w)
        dx[n, c, ih, iw] = gather_window_gradient(dout, argmax, True, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                                  dil_h, dil_w, True, n, c, ih, iw, h, w)


@cuda_kernel
def avgpool2d_forward_cuda(out, x, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        avg_window(out, x, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad, n, c, oh, ow)


@cuda_kernel
def avgpool2d_backward_cuda(dx, dout, kh, kw, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, ih, iw = nchw_position(item, channels, h, w)
        dx[n, c, ih, iw] = gather_window_gradient(dout, dout, False, kh, kw, stride_h, stride_w, pad_h, pad_w, 1, 1,
                                                  count_include_pad, n, c, ih, iw, h, w)


@cuda_kernel
def adaptive_avgpool2d_forward_cuda(out, x):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        adaptive_avg_window(out, x, n, c, oh, ow)


@cuda_kernel
def adaptive_avgpool2d_backward_cuda(dx, dout):
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, ih, iw = nchw_position(item, channels, h, w)
        dx[n, c, ih, iw] = adaptive_gather(dout, dout, False, n, c, ih, iw, h, w)


@cuda_kernel
def adaptive_maxpool2d_forward_cuda(out, argmax, x):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        adaptive_max_window(out, argmax, x, n, c, oh, ow)


@cuda_kernel
def adaptive_maxpool2d_backward_cuda(dx, dout, argmax):
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, ih, iw = nchw_position(item, channels, h, w)
        dx[n, c, ih, iw] = adaptive_gather(dout, argmax, True, n, c, ih, iw, h, w)
