"""Dropout with a counter-based random stream: the keep/drop decision for element i of a call is a
hash of (seed, offset + i). CPU and CUDA draw the very same mask, and the stream's whole state is two
integers (easy to checkpoint and resume exactly).
"""

from numba import float32, prange, uint64

from numdl.kernels.common import (
    cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, scalar_math, thread_share, worth_splitting,
)

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def uniform_from_counter(seed, counter):
    # splitmix64 finaliser of seed-mixed counter -> float32 in [0, 1) from its top 24 bits.
    z = seed * uint64(0x9E3779B97F4A7C15) + counter
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z = z ^ (z >> uint64(31))
    return float32(z >> uint64(40)) * float32(5.9604644775390625e-08)


@scalar_math
def dropout_element(out, mask, x, p, scale, seed, offset, i):
    keep = uniform_from_counter(seed, offset + uint64(i)) >= p
    m = scale if keep else scale - scale
    mask[i] = m
    out[i] = x[i] * m


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def dropout_forward_cpu(out, mask, x, p, scale, seed, offset):
    # out, mask, x: (size,); mask gets 0 or 1/(1-p); seed, offset: uint64; overwrites. Split over
    # numba's threads when they have the cores: element i's draw depends on offset + i alone, so
    # every split draws the same mask.
    if worth_splitting(x.size):
        _dropout_forward_split(out, mask, x, p, scale, seed, offset)
    else:
        _dropout_forward_range(out, mask, x, p, scale, seed, offset)


@cpu_kernel
def _dropout_forward_range(out, mask, x, p, scale, seed, offset):
    for i in range(x.size):
        dropout_element(out, mask, x, p, scale, seed, offset, i)


@cpu_parallel_kernel
def _dropout_forward_split(out, mask, x, p, scale, seed, offset):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(x.size, part, parts)
        _dropout_forward_range(out[lo:hi], mask[lo:hi], x[lo:hi], p, scale, seed, offset + uint64(lo))


@cpu_kernel
def dropout_backward_cpu(dx, dout, mask):
    if worth_splitting(dout.size):
        _dropout_backward_split(dx, dout, mask)
    else:
        _dropout_backward_range(dx, dout, mask)


@cpu_kernel
def _dropout_backward_range(dx, dout, mask):
    for i in range(dout.size):
        dx[i] = dout[i] * mask[i]


@cpu_parallel_kernel
def _dropout_backward_split(dx, dout, mask):
    parts = numba_threads()
    for part in prange(parts):
        lo, hi = thread_share(dout.size, part, parts)
        _dropout_backward_range(dx[lo:hi], dout[lo:hi], mask[lo:hi])


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def dropout_forward_cuda(out, mask, x, p, scale, seed, offset):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dropout_element(out, mask, x, p, scale, seed, offset, i)


@cuda_kernel
def dropout_backward_cuda(dx, dout, mask):
    for i in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        dx[i] = dout[i] * mask[i]
