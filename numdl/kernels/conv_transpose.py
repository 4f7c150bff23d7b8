"""2-D transposed convolution (PyTorch's ``nn.ConvTranspose2d``): stride, zero padding, output
padding, dilation, groups, with the bias fused into the pass that writes the output.

Shapes: x (N, C_in, H, W); weight (C_in, C_out / groups, kH, kW) (PyTorch's layout); bias (C_out,)
or empty; out (N, C_out, H_out, W_out) with
H_out = (H - 1) stride_h - 2 pad_h + dil_h (kH - 1) + output_padding_h + 1.

It is the adjoint (the input gradient) of the convolution that maps out-shaped images to x-shaped
ones with the same weight, so the CPU kernels are that convolution's backward and forward: forward
lays x out channel-major in ``xt`` (C_in, N H W), one GEMM per group gives the columns
(C_out kH kW, N H W), and col2im sums them onto the output; backward gathers dout with im2col, and
dweight and dx are one GEMM each per group. The CUDA twins are direct: one thread per output element,
and one per weight / bias / input element in backward (no atomics).
"""

from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type
from numdl.kernels.conv import _col2im, _im2col, conv_output_index
from numdl.kernels.matmul import matmul

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
def conv_transpose2d_forward_cpu(out, xt, cols, x, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                 groups):
    # Overwrites out, xt (C_in, N H W: kept for backward) and cols (C_out kH kW, N H W: scratch).
    n_batch, c_out, h_out, w_out = out.shape
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
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


@cpu_kernel
def conv_transpose2d_backward_cpu(dx, dweight, dbias, dcols, dxt, dout, x, xt, weight, stride_h, stride_w, pad_h,
                                  pad_w, dil_h, dil_w, groups):
    # Overwrites dx (skipped when empty), dweight, dbias (skipped when empty), dcols and dxt (scratch).
    # x is read by the CUDA twin only; here xt (saved by forward) stands for it.
    n_batch, c_out, h_out, w_out = dout.shape
    c_in, h, w = dxt.shape[0], x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
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
