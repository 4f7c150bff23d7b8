"""Element-wise arithmetic between arrays (residual sums). Flat 1-D views; overwrites ``out``."""

from numba import cuda

from numdl.kernels.common import cpu_kernel, cuda_kernel

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def add_forward_cpu(out, a, b):
    for i in range(out.size):
        out[i] = a[i] + b[i]


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def add_forward_cuda(out, a, b):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]
