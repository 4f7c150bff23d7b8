"""Element-wise arithmetic between arrays (residual sums). Flat 1-D views; overwrites ``out``."""


from numba import prange

from numdl.kernels.common import (
    cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, thread_share, worth_splitting,
)

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def add_forward_cpu(out, a, b):
    # Split over numba's threads when they have the cores (a Transformer's residual sums).
    if worth_splitting(out.size):
        _add_forward_split(out, a, b)
    else:
        _add_forward_range(out, a, b)


@cpu_kernel
def _add_forward_range(out, a, b):
    for i in range(out.size):
        out[i] = a[i] + b[i]


@cpu_parallel_kernel
def _add_forward_split(out, a, b):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(out.size, part, parts)
        _add_forward_range(out[lo:hi], a[lo:hi], b[lo:hi])


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def add_forward_cuda(out, a, b):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


# ------------------------------------------------------------------------- broadcasting and layout
# x viewed as (N, R), table (R,): out[n, r] = x[n, r] + table[r]; the backward sums over N.
# swap_last_axes: x (N, A, B) -> out (N, B, A); its own inverse, so backward reuses it.


@cpu_kernel
def broadcast_add_forward_cpu(out, x, table):
    for n in range(x.shape[0]):
        for r in range(x.shape[1]):
            out[n, r] = x[n, r] + table[r]


@cpu_kernel
def broadcast_add_backward_cpu(dtable, dout):
    # Overwrites dtable with the column sums of dout.
    for r in range(dtable.size):
        dtable[r] = 0
    for n in range(dout.shape[0]):
        for r in range(dout.shape[1]):
            dtable[r] += dout[n, r]


@cpu_kernel
def swap_last_axes_forward_cpu(out, x):
    # Samples split over numba's threads when they have the cores.
    if worth_splitting(x.size):
        _swap_last_axes_split(out, x)
    else:
        _swap_last_axes_samples(out, x, 0, x.shape[0])


@cpu_kernel
def _swap_last_axes_samples(out, x, lo, hi):
    for n in range(lo, hi):
        for a in range(x.shape[1]):
            for b in range(x.shape[2]):
                out[n, b, a] = x[n, a, b]


@cpu_parallel_kernel
def _swap_last_axes_split(out, x):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.shape[0], part, parts)
        _swap_last_axes_samples(out, x, lo, hi)


@cuda_kernel
def broadcast_add_forward_cuda(out, x, table):
    width = x.shape[1]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        n, r = item // width, item % width
        out[n, r] = x[n, r] + table[r]


@cuda_kernel
def broadcast_add_backward_cuda(dtable, dout):
    for r in range(cuda.grid(1), dtable.size, cuda.gridsize(1)):
        acc = dout[0, r] - dout[0, r]
        for n in range(dout.shape[0]):
            acc += dout[n, r]
        dtable[r] = acc


@cuda_kernel
def swap_last_axes_forward_cuda(out, x):
    a_size, b_size = x.shape[1], x.shape[2]
    for item in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b = item % b_size
        a = (item // b_size) % a_size
        n = item // (b_size * a_size)
        out[n, b, a] = x[n, a, b]


# ----------------------------------------------------------------------------------- products
# multiply: out = a * b (flat views, overwrites out). Its backward writes da = dout * b and
# db = dout * a (either skipped when empty: an input that needs no gradient).
# scale: out = a * factor (a loss weight applied to a gradient).


@cpu_kernel
def multiply_forward_cpu(out, a, b):
    for i in range(out.size):
        out[i] = a[i] * b[i]


@cpu_kernel
def multiply_backward_cpu(da, db, dout, a, b):
    if da.size > 0:
        for i in range(dout.size):
            da[i] = dout[i] * b[i]
    if db.size > 0:
        for i in range(dout.size):
            db[i] = dout[i] * a[i]


@cpu_kernel
def scale_forward_cpu(out, a, factor):
    for i in range(out.size):
        out[i] = a[i] * factor


@cuda_kernel
def multiply_forward_cuda(out, a, b):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@cuda_kernel
def multiply_backward_cuda(da, db, dout, a, b):
    for i in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        if da.size > 0:
            da[i] = dout[i] * b[i]
        if db.size > 0:
            db[i] = dout[i] * a[i]


@cuda_kernel
def scale_forward_cuda(out, a, factor):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] * factor
