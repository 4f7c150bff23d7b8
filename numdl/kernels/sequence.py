"""Sequence reductions and embeddings: last-step and mean pooling over valid steps, and Embedding.

Shapes: x (N, T, F), lengths (N,) int64, out (N, F). ``last_step``: features below ``split`` take the
last valid step (a forward direction), features from ``split`` on take step 0 (a reverse
direction's final state, as PyTorch's h_n of a bidirectional RNN). ``mean``: the mean over valid steps.
Embedding: out (N, T, D) = weight[indices]; its backward sums the rows of repeated indices and
leaves the row ``padding_idx`` (>= 0; -1: none) without gradient; ``embedding_renorm`` scales rows
whose norm exceeds ``max_norm`` (PyTorch's ``max_norm``, applied in place before the lookup).
"""


from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def last_step_position(length, split, f):
    return length - 1 if f < split else 0


@scalar_math
def embedding_renorm_row(weight, row, max_norm, norm_type):
    # torch.embedding_renorm_: scale = max_norm / (norm + 1e-7) when norm > max_norm.
    total = same_type(max_norm, 0.0)
    for d in range(weight.shape[1]):
        total += abs(weight[row, d]) ** norm_type
    norm = total ** (same_type(max_norm, 1.0) / norm_type)
    if norm > max_norm:
        scale = max_norm / (norm + same_type(max_norm, 1e-7))
        for d in range(weight.shape[1]):
            weight[row, d] *= scale


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def last_step_forward_cpu(out, x, lengths, split):
    for n in range(out.shape[0]):
        for f in range(out.shape[1]):
            out[n, f] = x[n, last_step_position(lengths[n], split, f), f]


@cpu_kernel
def last_step_backward_cpu(dx, dout, lengths, split):
    # Overwrites dx: zero except where the forward pass read.
    dx[:] = 0
    for n in range(dout.shape[0]):
        for f in range(dout.shape[1]):
            dx[n, last_step_position(lengths[n], split, f), f] = dout[n, f]


@cpu_kernel
def mean_steps_forward_cpu(out, x, lengths):
    for n in range(out.shape[0]):
        inv = same_type(out[0, 0], 1.0) / same_type(out[0, 0], lengths[n])
        for f in range(out.shape[1]):
            acc = same_type(out[0, 0], 0.0)
            for t in range(lengths[n]):
                acc += x[n, t, f]
            out[n, f] = acc * inv


@cpu_kernel
def mean_steps_backward_cpu(dx, dout, lengths):
    for n in range(dx.shape[0]):
        inv = same_type(dout[0, 0], 1.0) / same_type(dout[0, 0], lengths[n])
        for t in range(dx.shape[1]):
            for f in range(dx.shape[2]):
                dx[n, t, f] = dout[n, f] * inv if t < lengths[n] else same_type(inv, 0.0)


@cpu_kernel
def embedding_forward_cpu(out, indices, weight):
    # out (N, T, D); indices (N, T) int64, validated in range by the layer.
    for n in range(indices.shape[0]):
        for t in range(indices.shape[1]):
            row = indices[n, t]
            for d in range(weight.shape[1]):
                out[n, t, d] = weight[row, d]


@cpu_kernel
def embedding_backward_cpu(dweight, dout, indices, padding_idx):
    # Overwrites dweight; repeated indices add up; the row padding_idx (if >= 0) gets no gradient.
    dweight[:] = 0
    for n in range(indices.shape[0]):
        for t in range(indices.shape[1]):
            row = indices[n, t]
            if row == padding_idx:
                continue
            for d in range(dweight.shape[1]):
                dweight[row, d] += dout[n, t, d]


@cpu_kernel
def embedding_renorm_cpu(weight, rows, max_norm, norm_type):
    # PyTorch's max_norm: each listed row whose norm_type-norm exceeds max_norm is scaled to it, in
    # place (rows: the distinct ids of the batch).
    for k in range(rows.size):
        embedding_renorm_row(weight, rows[k], max_norm, norm_type)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def last_step_forward_cuda(out, x, lengths, split):
    features = out.shape[1]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, f = item // features, item % features
        out[n, f] = x[n, last_step_position(lengths[n], split, f), f]


@cuda_kernel
def last_step_backward_cuda(dx, dout, lengths, split):
    steps, features = dx.shape[1], dx.shape[2]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        f = item % features
        t = (item // features) % steps
        n = item // (features * steps)
        hit = t == last_step_position(lengths[n], split, f)
        dx[n, t, f] = dout[n, f] if hit else same_type(dout[0, 0], 0.0)


@cuda_kernel
def mean_steps_forward_cuda(out, x, lengths):
    features = out.shape[1]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, f = item // features, item % features
        acc = same_type(out[0, 0], 0.0)
        for t in range(lengths[n]):
            acc += x[n, t, f]
        out[n, f] = acc / same_type(acc, lengths[n])


@cuda_kernel
def mean_steps_backward_cuda(dx, dout, lengths):
    steps, features = dx.shape[1], dx.shape[2]
    for item in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        f = item % features
        t = (item // features) % steps
        n = item // (features * steps)
        zero = same_type(dout[0, 0], 0.0)
        dx[n, t, f] = dout[n, f] / same_type(zero, lengths[n]) if t < lengths[n] else zero


@cuda_kernel
def embedding_forward_cuda(out, indices, weight):
    dim = weight.shape[1]
    steps = indices.shape[1]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        d = item % dim
        t = (item // dim) % steps
        n = item // (dim * steps)
        out[n, t, d] = weight[indices[n, t], d]


@cuda_kernel
def embedding_backward_cuda(dweight, dout, indices, padding_idx):
    # Accumulates with atomics (repeated indices collide): the launcher zeroes dweight first.
    dim = dweight.shape[1]
    steps = indices.shape[1]
    for item in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        d = item % dim
        t = (item // dim) % steps
        n = item // (dim * steps)
        if indices[n, t] != padding_idx:
            cuda.atomic.add(dweight, (indices[n, t], d), dout[n, t, d])


@cuda_kernel
def embedding_renorm_cuda(weight, rows, max_norm, norm_type):
    # One thread per distinct row: no two threads touch the same row.
    for k in range(cuda.grid(1), rows.size, cuda.gridsize(1)):
        embedding_renorm_row(weight, rows[k], max_norm, norm_type)
