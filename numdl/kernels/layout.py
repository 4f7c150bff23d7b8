"""Copies that move values between layouts without arithmetic: concatenation and image padding/cropping.

concat: every array is viewed as (R, width) where R is the batch times the sizes before the joined
axis and width the joined axis times the sizes after it; an input's block of columns sits at
``offset`` in the output's columns. Forward copies an input into its block, backward copies the
block of the upstream gradient out (both overwrite their output).

pad2d: out (N, C, H + top + bottom, W + left + right) from x (N, C, H, W); a negative amount crops
that side. Output pixels with no source are zero. Backward gathers the matching window of dout
(the adjoint), so neither direction scatters: the CUDA twins need no atomics.

pad2d_mode: the same shapes (padding only, no cropping), the new pixels copied from the image as
PyTorch's padding modes say (``mode`` 1 reflect: mirrored without repeating the edge, 2 replicate:
the edge repeated, 3 circular: wrapped around). Several output pixels read one input pixel, so
backward scatters: the CUDA twin adds with atomics into a dx the launcher zeroed.
"""

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

REFLECT, REPLICATE, CIRCULAR = 1, 2, 3  # pad2d_mode's modes

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def nchw_position(item, channels, height, width):
    # (n, c, h, w) of flat index ``item`` in an (N, C, H, W) array: the CUDA twins' one thread per element.
    return (item // (width * height * channels), (item // (width * height)) % channels, (item // width) % height,
            item % width)


@scalar_math
def padded_source(i, size, mode):
    # The input index that padded index i (relative to the image: may be < 0 or >= size) copies.
    # The layer keeps reflect's padding below size and circular's at most size: one fold suffices.
    if 0 <= i < size:
        return i
    if mode == 1:
        return -i if i < 0 else 2 * (size - 1) - i
    if mode == 2:
        return 0 if i < 0 else size - 1
    return i + size if i < 0 else i - size

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def concat_forward_cpu(out, x, offset):
    # out (R, W_out), x (R, W_x): out[r, offset + c] = x[r, c]. Rows split over numba's threads when
    # they have the cores (as the other copies here could; these are the large ones, in U-Nets).
    if worth_splitting(x.size):
        _concat_forward_split(out, x, offset)
    else:
        _copy_columns(out, x, offset, 0)


@cpu_kernel
def _copy_columns(out, x, out_offset, x_offset):
    # out[r, out_offset + c] = x[r, x_offset + c] for the narrower one's columns c.
    for r in range(out.shape[0]):
        for c in range(min(out.shape[1] - out_offset, x.shape[1] - x_offset)):
            out[r, out_offset + c] = x[r, x_offset + c]


@cpu_parallel_kernel
def _concat_forward_split(out, x, offset):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.shape[0], part, parts)
        _copy_columns(out[lo:hi], x[lo:hi], offset, 0)


@cpu_kernel
def concat_backward_cpu(dx, dout, offset):
    # dx (R, W_x) = dout[:, offset:offset + W_x].
    if worth_splitting(dx.size):
        _concat_backward_split(dx, dout, offset)
    else:
        _copy_columns(dx, dout, 0, offset)


@cpu_parallel_kernel
def _concat_backward_split(dx, dout, offset):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(dx.shape[0], part, parts)
        _copy_columns(dx[lo:hi], dout[lo:hi], 0, offset)


@cpu_kernel
def pad2d_forward_cpu(out, x, top, left):
    n_batch, channels, h_out, w_out = out.shape
    h, w = x.shape[2], x.shape[3]
    zero = same_type(out[0, 0, 0, 0], 0.0)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                ih = oh - top
                for ow in range(w_out):
                    iw = ow - left
                    out[n, c, oh, ow] = x[n, c, ih, iw] if 0 <= ih < h and 0 <= iw < w else zero


@cpu_kernel
def pad2d_backward_cpu(dx, dout, top, left):
    n_batch, channels, h, w = dx.shape
    h_out, w_out = dout.shape[2], dout.shape[3]
    zero = same_type(dx[0, 0, 0, 0], 0.0)
    for n in range(n_batch):
        for c in range(channels):
            for ih in range(h):
                oh = ih + top
                for iw in range(w):
                    ow = iw + left
                    dx[n, c, ih, iw] = dout[n, c, oh, ow] if 0 <= oh < h_out and 0 <= ow < w_out else zero


@cpu_kernel
def pad2d_mode_forward_cpu(out, x, top, left, mode):
    n_batch, channels, h_out, w_out = out.shape
    h, w = x.shape[2], x.shape[3]
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                ih = padded_source(oh - top, h, mode)
                for ow in range(w_out):
                    out[n, c, oh, ow] = x[n, c, ih, padded_source(ow - left, w, mode)]


@cpu_kernel
def pad2d_mode_backward_cpu(dx, dout, top, left, mode):
    # Overwrites dx: every dout pixel added onto the input pixel it copied.
    n_batch, channels, h_out, w_out = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    dx[:] = 0
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                ih = padded_source(oh - top, h, mode)
                for ow in range(w_out):
                    dx[n, c, ih, padded_source(ow - left, w, mode)] += dout[n, c, oh, ow]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def concat_forward_cuda(out, x, offset):
    width = x.shape[1]
    for item in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        r, c = item // width, item % width
        out[r, offset + c] = x[r, c]


@cuda_kernel
def concat_backward_cuda(dx, dout, offset):
    width = dx.shape[1]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        r, c = item // width, item % width
        dx[r, c] = dout[r, offset + c]


@cuda_kernel
def pad2d_forward_cuda(out, x, top, left):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    h, w = x.shape[2], x.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        ih, iw = oh - top, ow - left
        if 0 <= ih < h and 0 <= iw < w:
            out[n, c, oh, ow] = x[n, c, ih, iw]
        else:
            out[n, c, oh, ow] = same_type(out[0, 0, 0, 0], 0.0)


@cuda_kernel
def pad2d_mode_forward_cuda(out, x, top, left, mode):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    h, w = x.shape[2], x.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        out[n, c, oh, ow] = x[n, c, padded_source(oh - top, h, mode), padded_source(ow - left, w, mode)]


@cuda_kernel
def pad2d_mode_backward_cuda(dx, dout, top, left, mode):
    # dx zeroed by the launcher; one thread per dout pixel adds it onto its source.
    channels, h_out, w_out = dout.shape[1], dout.shape[2], dout.shape[3]
    h, w = dx.shape[2], dx.shape[3]
    for item in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        n, c, oh, ow = nchw_position(item, channels, h_out, w_out)
        cuda.atomic.add(dx, (n, c, padded_source(oh - top, h, mode), padded_source(ow - left, w, mode)),
                        dout[n, c, oh, ow])


@cuda_kernel
def pad2d_backward_cuda(dx, dout, top, left):
    channels, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    h_out, w_out = dout.shape[2], dout.shape[3]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, ih, iw = nchw_position(item, channels, h, w)
        oh, ow = ih + top, iw + left
        if 0 <= oh < h_out and 0 <= ow < w_out:
            dx[n, c, ih, iw] = dout[n, c, oh, ow]
        else:
            dx[n, c, ih, iw] = same_type(dx[0, 0, 0, 0], 0.0)
