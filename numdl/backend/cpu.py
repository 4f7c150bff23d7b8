"""CPU backend: NumPy arrays, kernels called directly (they are ``@njit`` functions)."""

import os

import numpy as np

# The variables the thread pools numdl's kernels may start read when their library loads: OpenBLAS
# (numba's matrix products go through SciPy's), OpenMP, and numba's own.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(count):
    """Use at most ``count`` CPU threads. Call before the first kernel runs: the BLAS reads its thread
    count when it loads (``import numdl`` loads none), so this sets the environment it reads, and,
    where threadpoolctl is installed, also limits pools already loaded."""
    if count < 1:
        from numdl.errors import ConfigError

        raise ConfigError(f"threads must be >= 1, got {count}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(count)

from numdl.backend.base import Ops


class CPUOps(Ops):
    name = "cpu"
    uses_im2col = True

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def asarray(self, array, dtype=None):
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def _call(self, kernel, work_items, args, per_sample):
        kernel(*args)

    def zero_(self, array):
        array[...] = 0


def load_kernel_runtime():
    """Import numba and set up its CPU target by running one small cached kernel: what the first
    kernel call of a run would otherwise do (about half a second), started early so that a caller
    can overlap it with other work."""
    from numdl.kernels.elementwise import add_forward_cpu

    one = np.zeros(1, np.float32)
    add_forward_cpu(one, one, one)
