"""CPU backend: NumPy arrays, kernels called directly (they are ``@njit`` functions)."""

import os
import sys

import numpy as np

# The variables the thread pools numdl's kernels may start read when their library loads: OpenBLAS
# (numba's matrix products go through SciPy's), OpenMP, and numba's own.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(count):
    """Use at most ``count`` CPU threads: the BLAS's, OpenMP's and numba's (which the recurrent and
    attention kernels use). Pools not started yet read the environment this sets (``import numdl`` starts
    none); started ones are limited through threadpoolctl and numba. ``"auto"``: every core, or one
    thread when training runs faster so (chosen by timing while it runs: numdl.backend.threads)."""
    from numdl.backend import get_ops

    if count == "auto":
        get_ops("cpu").choose_threads_by_timing()
        return
    if not isinstance(count, int) or count < 1:
        from numdl.errors import ConfigError

        raise ConfigError(f"threads must be >= 1, got {count}")
    numba_pool = sys.modules.get("numba.np.ufunc.parallel")
    numba_started = numba_pool is not None and numba_pool._is_initialized
    for name in THREAD_VARIABLES:
        if not (name == "NUMBA_NUM_THREADS" and numba_started):  # numba refuses a new size once started
            os.environ[name] = str(count)
    from threadpoolctl import threadpool_limits

    threadpool_limits(count)
    if not numba_started and "numba" in sys.modules:  # numba read its config at import: again, now
        from numba.core import config

        config.reload_config()
    from numdl.backend import get_ops

    get_ops("cpu").set_thread_limit(count)  # re-applies the pool in use (the BLAS at one thread, or numba's)


from numdl.backend.base import Ops
from numdl.kernels import tuning

# glibc's malloc hands large blocks back to the system when they are freed (mmap'd blocks, and the
# top of the heap past its trim threshold), so a kernel that allocates tens of megabytes of scratch
# every call page-faults through all of it every call: a convolution's backward over 8x8 images
# took 19 ms instead of 10. Blocks above these sizes still go back to the system.
MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
MALLOC_TRIM_THRESHOLD = 512 << 20


def keep_freed_memory():
    """Have glibc's malloc keep freed blocks below MALLOC_MMAP_THRESHOLD / MALLOC_TRIM_THRESHOLD for
    reuse (as PyTorch's caching allocator keeps its own); a no-op off glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return
    mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    mallopt(-1, MALLOC_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


class CPUOps(Ops):
    name = "cpu"
    uses_im2col = True

    def __init__(self):
        super().__init__()
        keep_freed_memory()
        #: Which pool has the cores (see numdl.kernels.matmul): None before the first kernel, then
        #: "blas" (the BLAS's threads; numba's pool at one thread), or "numba" for good once a kernel
        #: that runs numba threads (the recurrent and attention ones) has been called.
        self.thread_pool = None
        self._thread_limit = None  # numdl --threads / limit_threads; None: every core
        self._active_threads = None  # the count a ThreadChooser applied (--threads auto), or None
        self._chooser = None
        self._blas_libraries = None
        self._chain_partials = {}  # dense_chain_partials' buffers by (threads - 1, size, dtype)
        self._numba_thread_count = None  # the started pool's own getter (set with the pool)

    def use_threads(self, pool="blas"):
        """Set up the thread pools as the first kernel call would (for code that calls kernels or
        numdl.kernels.matmul directly): ``pool`` "numba" as a kernel marked runs_numba_threads would
        (for good, as that kernel's call), "blas" only where no kernel has run yet."""
        if pool == "numba" and self.thread_pool != "numba":
            self._use_thread_pool("numba")
        elif self.thread_pool is None:
            self._use_thread_pool("blas")

    def set_thread_limit(self, count):
        self._thread_limit = count
        self._chooser = self._active_threads = None  # a fixed count ends --threads auto
        if self.thread_pool is not None:
            self._use_thread_pool(self.thread_pool)

    def choose_threads_by_timing(self):
        """``--threads auto``: from now on training steps (``step_finished``) time every core against
        one thread and keep the faster (numdl.backend.threads). A no-op on one core."""
        import numba

        from numdl.backend.threads import ThreadChooser

        self._thread_limit = None
        cores = numba.config.NUMBA_NUM_THREADS
        self._chooser = ThreadChooser((cores, 1), self._set_active_threads) if cores > 1 else None

    def resume_thread_chooser(self, chooser):
        """Go back to ``--threads auto`` with an earlier ThreadChooser and what it learned (the bench
        interleaves one run's epochs with fixed-count ones)."""
        self._thread_limit = None
        self._chooser = chooser
        self._set_active_threads(chooser.count)

    def _set_active_threads(self, count):
        self._active_threads = count
        if self.thread_pool is not None:
            self._use_thread_pool(self.thread_pool)

    @property
    def thread_chooser(self):
        """The ThreadChooser of --threads auto, or None."""
        return self._chooser

    def step_finished(self, samples, seconds):
        if self._chooser is not None:
            self._chooser.record(samples, seconds)

    def dense_chain_partials(self, grads, samples):
        if samples < tuning.CHAIN_SPLIT_MIN_SAMPLES or self.thread_pool != "numba":
            return self.nothing(grads.dtype, 2)
        others = self._numba_thread_count() - 1
        key = (others, grads.size, grads.dtype)
        buffer = self._chain_partials.get(key)
        if buffer is None:  # one per thread count (--threads auto's probes switch back and forth), one model's
            if any(other[1:] != key[1:] for other in self._chain_partials):
                self._chain_partials.clear()  # another model's: not kept (a search trains many)
            fits = 0 < others and others * grads.nbytes <= tuning.CHAIN_PARTIALS_MAX_BYTES
            buffer = self._chain_partials[key] = (np.empty((others, grads.size), grads.dtype) if fits
                                                  else self.nothing(grads.dtype, 2))
        return buffer

    def _use_thread_pool(self, pool):
        import numba
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # numba's pool, before a cached parallel kernel links against it
        # the started pool's count for this thread (numba.get_num_threads() checks the start again on
        # every call: 0.9 us against 0.2, on a training step's path)
        self._numba_thread_count = parallel._get_num_threads
        wanted = self._active_threads or self._thread_limit or numba.config.NUMBA_NUM_THREADS
        limit = min(wanted, numba.config.NUMBA_NUM_THREADS)
        if pool == "numba":
            for library in self._blas():
                library.set_num_threads(1)
            numba.set_num_threads(limit)
        else:
            numba.set_num_threads(1)
            if self._active_threads is not None:  # --threads auto's count (a fixed one was set by limit_threads)
                for library in self._blas():
                    library.set_num_threads(limit)
        self.thread_pool = pool

    def _blas(self):
        if self._blas_libraries is None:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's products call, loaded)
            from threadpoolctl import ThreadpoolController

            self._blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        return self._blas_libraries

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def asarray(self, array, dtype=None):
        return np.ascontiguousarray(array, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def _call(self, kernel, work_items, args, per_sample):
        if self.thread_pool != "numba":
            wants_numba = getattr(kernel, "runs_numba_threads", False)
            if wants_numba or self.thread_pool is None:
                self._use_thread_pool("numba" if wants_numba else "blas")
        kernel(*args)

    def zero_(self, array):
        array[...] = 0

    def recurrent_gate_gradient_rows(self, kind, batch, steps):
        # the LSTM kernel sums its gate gradients step by step (kernels/recurrent.py): no dproj rows
        return 0 if kind == "lstm" else batch * steps


def load_kernel_runtime():
    """Import numba and set up its CPU target by running one small cached kernel: what the first
    kernel call of a run would otherwise do (about half a second), started early so that a caller
    can overlap it with other work."""
    from numdl.kernels.elementwise import add_forward_cpu

    one = np.zeros(1, np.float32)
    add_forward_cpu(one, one, one)
