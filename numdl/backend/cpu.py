"""CPU backend: NumPy arrays, kernels called directly (they are ``@njit`` functions)."""

import os
import sys

import numpy as np

# The variables the thread pools numdl's kernels may start read when their library loads: OpenBLAS
# (numba's matrix products go through SciPy's), OpenMP, and numba's own.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(count):
    """Use at most ``count`` CPU threads: the BLAS's, OpenMP's and numba's (which the recurrent
    kernels use). Pools not started yet read the environment this sets (``import numdl`` starts
    none); started ones are limited through threadpoolctl and numba."""
    if count < 1:
        from numdl.errors import ConfigError

        raise ConfigError(f"threads must be >= 1, got {count}")
    numba_pool = sys.modules.get("numba.np.ufunc.parallel")
    numba_started = numba_pool is not None and numba_pool._is_initialized
    for name in THREAD_VARIABLES:
        if not (name == "NUMBA_NUM_THREADS" and numba_started):  # numba refuses a new size once started
            os.environ[name] = str(count)
    from threadpoolctl import threadpool_limits

    threadpool_limits(count)
    if numba_started:
        import numba

        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    elif "numba" in sys.modules:  # imported: its config was read already; its pool will read it again
        from numba.core import config

        config.reload_config()


from numdl.backend.base import Ops


class CPUOps(Ops):
    name = "cpu"
    uses_im2col = True

    def __init__(self):
        super().__init__()
        self._blas_libraries = None  # threadpoolctl controllers, found at the first threaded kernel

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def asarray(self, array, dtype=None):
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def _call(self, kernel, work_items, args, per_sample):
        if getattr(kernel, "runs_numba_threads", False):
            self._call_on_numba_threads(kernel, args)
        else:
            kernel(*args)

    def _call_on_numba_threads(self, kernel, args):
        # One pool at a time: the kernel's threads each call the BLAS, which must not start threads
        # of its own meanwhile (two pools on two cores ran many times slower).
        libraries = self._blas_libraries
        if libraries is None:
            from numba.np.ufunc.parallel import _launch_threads
            from threadpoolctl import ThreadpoolController

            _launch_threads()  # numba's pool, before a cached parallel kernel links against it
            import scipy.linalg.cython_blas  # noqa: F401  (numba's products call SciPy's BLAS)

            libraries = self._blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        before = [library.num_threads for library in libraries]
        for library in libraries:
            library.set_num_threads(1)
        try:
            kernel(*args)
        finally:
            for library, threads in zip(libraries, before):
                library.set_num_threads(threads)

    def zero_(self, array):
        array[...] = 0


def load_kernel_runtime():
    """Import numba and set up its CPU target by running one small cached kernel: what the first
    kernel call of a run would otherwise do (about half a second), started early so that a caller
    can overlap it with other work."""
    from numdl.kernels.elementwise import add_forward_cpu

    one = np.zeros(1, np.float32)
    add_forward_cpu(one, one, one)
