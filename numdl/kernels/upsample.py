"""Upsampling of (N, C, H, W) images, PyTorch's ``nn.Upsample`` semantics: nearest and bilinear.

Each output coordinate maps to a source coordinate with ``scale`` (input size / output size, or
1 / scale_factor when the size came from a scale factor, as PyTorch computes it):
- nearest: ``src = min(floor(dst * scale), in - 1)``;
- bilinear, align_corners=False: ``src = max(scale * (dst + 0.5) - 0.5, 0)``; align_corners=True:
  ``src = dst * (in - 1) / (out - 1)`` (the caller passes that ratio as ``scale``). The value mixes
  the two neighbours ``floor(src)`` and the next one (clamped at the edge) with weights
  ``1 - frac`` and ``frac``, separably along height and width.

Forward overwrites ``out``. Backward *accumulates* into ``dx`` (the caller zeroes it): several
output pixels read one input pixel; the CUDA twin adds with atomics.
"""

import math

from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def source_index(dst, scale, in_size, bilinear, align_corners):
    # (first neighbour, second neighbour, weight of the second) of output coordinate ``dst``.
    if not bilinear:
        first = int(math.floor(dst * scale))
        if first > in_size - 1:
            first = in_size - 1
        return first, first, scale - scale
    if align_corners:
        src = dst * scale
    else:
        src = scale * (dst + same_type(scale, 0.5)) - same_type(scale, 0.5)
        if src < 0:
            src = scale - scale
    first = int(src)
    if first > in_size - 1:
        first = in_size - 1
    second = first + 1 if first < in_size - 1 else first
    return first, second, src - same_type(src, first)


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def upsample_forward_cpu(out, x, scale_h, scale_w, bilinear, align_corners):
    # Loops in memory order (sample, channel, row, column): the source columns are recomputed per
    # row, which costs less than striding over samples and channels in the inner loop did (4x).
    n_batch, channels, h_out, w_out = out.shape
    h, w = x.shape[2], x.shape[3]
    one = same_type(scale_h, 1.0)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                h0, h1, fh = source_index(same_type(scale_h, oh), scale_h, h, bilinear, align_corners)
                for ow in range(w_out):
                    w0, w1, fw = source_index(same_type(scale_w, ow), scale_w, w, bilinear, align_corners)
                    if bilinear:
                        top = (one - fw) * x[n, c, h0, w0] + fw * x[n, c, h0, w1]
                        bottom = (one - fw) * x[n, c, h1, w0] + fw * x[n, c, h1, w1]
                        out[n, c, oh, ow] = (one - fh) * top + fh * bottom
                    else:
                        out[n, c, oh, ow] = x[n, c, h0, w0]


@cpu_kernel
def upsample_backward_cpu(dx, dout, scale_h, scale_w, bilinear, align_corners):
    # Accumulates into dx (zeroed by the caller); memory order, as the forward.
    n_batch, channels, h_out, w_out = dout.shape
    h, w = dx.shape[2], dx.shape[3]
    one = same_type(scale_h, 1.0)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(h_out):
                h0, h1, fh = source_index(same_type(scale_h, oh), scale_h, h, bilinear, align_corners)
                for ow in range(w_out):
                    w0, w1, fw = source_index(same_type(scale_w, ow), scale_w, w, bilinear, align_corners)
                    g = dout[n, c, oh, ow]
                    if bilinear:
                        dx[n, c, h0, w0] += (one - fh) * (one - fw) * g
                        dx[n, c, h0, w1] += (one - fh) * fw * g
                        dx[n, c, h1, w0] += fh * (one - fw) * g
                        dx[n, c, h1, w1] += fh * fw * g
                    else:
                        dx[n, c, h0, w0] += g


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def upsample_forward_cuda(out, x, scale_h, scale_w, bilinear, align_corners):
    channels, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    h, w = x.shape[2], x.shape[3]
    one = same_type(scale_h, 1.0)
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = item % w_out
        oh = (item // w_out) % h_out
        c = (item // (w_out * h_out)) % channels
        n = item // (w_out * h_out * channels)
        h0, h1, fh = source_index(same_type(scale_h, oh), scale_h, h, bilinear, align_corners)
        w0, w1, fw = source_index(same_type(scale_w, ow), scale_w, w, bilinear, align_corners)
        if bilinear:
            top = (one - fw) * x[n, c, h0, w0] + fw * x[n, c, h0, w1]
            bottom = (one - fw) * x[n, c, h1, w0] + fw * x[n, c, h1, w1]
            out[n, c, oh, ow] = (one - fh) * top + fh * bottom
        else:
            out[n, c, oh, ow] = x[n, c, h0, w0]


@cuda_kernel
def upsample_backward_cuda(dx, dout, scale_h, scale_w, bilinear, align_corners):
    channels, h_out, w_out = dout.shape[1], dout.shape[2], dout.shape[3]
    h, w = dx.shape[2], dx.shape[3]
    one = same_type(scale_h, 1.0)
    for item in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        ow = item % w_out
        oh = (item // w_out) % h_out
        c = (item // (w_out * h_out)) % channels
        n = item // (w_out * h_out * channels)
        h0, h1, fh = source_index(same_type(scale_h, oh), scale_h, h, bilinear, align_corners)
        w0, w1, fw = source_index(same_type(scale_w, ow), scale_w, w, bilinear, align_corners)
        g = dout[n, c, oh, ow]
        if bilinear:
            cuda.atomic.add(dx, (n, c, h0, w0), (one - fh) * (one - fw) * g)
            cuda.atomic.add(dx, (n, c, h0, w1), (one - fh) * fw * g)
            cuda.atomic.add(dx, (n, c, h1, w0), fh * (one - fw) * g)
            cuda.atomic.add(dx, (n, c, h1, w1), fh * fw * g)
        else:
            cuda.atomic.add(dx, (n, c, h0, w0), g)
