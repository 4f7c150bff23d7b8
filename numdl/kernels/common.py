"""Pieces every kernel file uses: the jit decorators, a typed-constant helper, the CUDA launcher.

Kernels (in the sibling modules) are plain functions over arrays: they write into caller-allocated
outputs and return nothing. Only ``numdl.backend`` calls them.
"""

import inspect

import importlib

from numba import njit, types
from numba.extending import overload, register_jitable
# numba.get_num_threads() in a compiled function goes through a ctypes pointer, which makes its
# callers uncacheable; this intrinsic (what numba uses itself) calls the same linked symbol.
from numba.np.ufunc.parallel import _iget_num_threads
from numba.np.numpy_support import as_dtype

from numdl.kernels import tuning


def cpu_kernel(func):
    """Compile ``func`` as a CPU kernel with the shared options (cache, safe fastmath)."""
    return njit(**tuning.CPU_JIT_OPTIONS)(func)


def cpu_parallel_kernel(func):
    """Compile ``func`` as a CPU helper whose ``prange`` loops run on numba's threads. The kernel
    that calls it is marked with ``runs_numba_threads`` so that the backend gives it the cores."""
    return njit(parallel=True, **tuning.CPU_JIT_OPTIONS)(func)


def runs_numba_threads(kernel):
    """Mark a CPU kernel that runs numba threads inside: the backend's first call of one hands the
    cores to numba's pool for the rest of the process (the BLAS then runs on one thread: one pool at
    a time, see numdl.kernels.matmul)."""
    kernel.runs_numba_threads = True
    return kernel


@register_jitable
def numba_threads():
    # The calling thread's numba thread count (what numba.get_num_threads() returns).
    return _iget_num_threads()


@register_jitable
def sample_block(samples):
    # Samples per thread for kernels that split a batch over numba's threads: an even share, and at
    # least tuning.MIN_SAMPLES_PER_THREAD (smaller blocks cost more to start than they save).
    threads = numba_threads()
    return max((samples + threads - 1) // threads, tuning.MIN_SAMPLES_PER_THREAD)


@register_jitable
def worth_splitting(size):
    # Whether a pass over ``size`` elements is split over numba's threads: only where numba has the
    # cores (a process that ran a kernel marked runs_numba_threads, such as a convolution; elsewhere
    # numba's pool has one thread and the BLAS the rest) and the pass is long enough to pay for the
    # threads' start. Kernels that split this way are not marked: they never move the cores.
    return numba_threads() > 1 and size >= tuning.SPLIT_MIN_ELEMENTS


@register_jitable
def thread_share(total, part, parts):
    # [lo, hi): part ``part`` of ``parts`` near-equal shares of range(total).
    step = (total + parts - 1) // parts
    return min(part * step, total), min((part + 1) * step, total)


@register_jitable
def vector_share(total, part, parts):
    # thread_share in whole chunks of tuning.SPLIT_ALIGN_ELEMENTS: every part but the last is a whole
    # number of vector iterations, and the last ends where one loop over range(total) would, so each
    # element meets the same code (vector body or remainder) as with one thread.
    align = tuning.SPLIT_ALIGN_ELEMENTS
    lo, hi = thread_share((total + align - 1) // align, part, parts)
    return min(lo * align, total), min(hi * align, total)


# Scalar helpers compile with the kernels' fastmath flags and numpy's error model: with Python's,
# a division raises on zero, and the helper is then kept as an out-of-line call that blocks
# vectorisation of the loop that calls it (the float32 tanh ran 100x slower).
SCALAR_JIT_OPTIONS = {"fastmath": tuning.CPU_FASTMATH, "error_model": "numpy"}


def scalar_math(func):
    """Make ``func`` a helper that CPU kernels, CUDA kernels and the CUDA simulator can all call.

    ``func`` stays a plain Python function (which is what the simulator, running kernels as Python,
    needs: it cannot pass its fake device arrays to a compiled function), and a numba overload makes
    compiled callers of either target compile ``func`` itself. So one definition of the math serves
    both targets, and the twins stay numerically identical.
    """

    def typer(*args):
        return func

    typer.__signature__ = inspect.signature(func)
    # No IR inlining (inline="always"): its cache of inlined IR is shared between targets, so a
    # helper inlined into a CPU kernel poisoned later CUDA compiles of the same helper. LLVM inlines
    # these small functions on its own.
    overload(func, jit_options=SCALAR_JIT_OPTIONS)(typer)
    return func


def scalar_math_float32(float32_version):
    """Like ``scalar_math``, but compiled callers whose arguments are all float32 get
    ``float32_version`` (a faster approximation, accurate to float32) instead of ``func``.

    ``func`` (exact) is what float64 kernels compile and what the CUDA simulator runs.
    """

    def register(func):
        def typer(*args):
            return float32_version if all(arg == types.float32 for arg in args) else func

        typer.__signature__ = inspect.signature(func)
        overload(func, jit_options=SCALAR_JIT_OPTIONS)(typer)
        return func

    return register


def cpu_float32_variant(float32_version):
    """Make ``func`` (a plain Python function) a CPU helper whose compiled callers get
    ``float32_version`` (same parameters) when the first argument is a float32 array and every array
    argument is C-contiguous (numdl.kernels.simd reads flat views), and ``func`` itself otherwise: a
    float32 kernel written with 16-lane vectors beside the one that serves float64 and strided
    views. Both compile with the kernels' fastmath flags."""

    def register(func):
        def typer(first, *rest):
            arrays = [arg for arg in (first,) + rest if isinstance(arg, types.Array)]
            vector = getattr(first, "dtype", None) == types.float32 and all(a.layout == "C" for a in arrays)
            return float32_version if vector else func

        typer.__signature__ = inspect.signature(func)
        overload(func, jit_options=SCALAR_JIT_OPTIONS)(typer)
        return func

    return register


class _LazyCudaModule:
    """Stands for ``numba.cuda`` in the kernel modules until a CUDA kernel is first used.

    Importing numba.cuda (numba-cuda) takes ~0.4 s, a quarter of a CPU run's start-up; CPU runs never
    need it. A kernel module says ``from numdl.kernels.common import cuda``; the first use of one of
    its CUDA kernels (a launch, PTX, ``py_func``) puts the real module in its place (see _realize).
    """

    def __getattr__(self, name):
        return getattr(importlib.import_module("numba.cuda"), name)


cuda = _LazyCudaModule()


class _LazyCudaFunction:
    """A ``cuda.jit`` kernel or device function, made on first use; see _LazyCudaModule."""

    def __init__(self, func, options):
        self.py_function, self._options, self._dispatcher = func, options, None
        self.__name__, self.__doc__, self.__module__ = func.__name__, func.__doc__, func.__module__

    @property
    def dispatcher(self):
        if self._dispatcher is None:
            _realize(self.py_function.__globals__)
        return self._dispatcher

    def __getitem__(self, launch_config):
        return self.dispatcher[launch_config]

    def __getattr__(self, name):  # py_func, targetoptions, ...: the real dispatcher's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dispatcher, name)


def _realize(namespace):
    """Put the real numba.cuda, and real dispatchers, in place of the stand-ins in a module's
    namespace (the globals numba-cuda resolves when it compiles a kernel there)."""
    real = importlib.import_module("numba.cuda")
    for name, value in list(namespace.items()):
        if isinstance(value, _LazyCudaModule):
            namespace[name] = real
    for name, value in list(namespace.items()):
        if isinstance(value, _LazyCudaFunction):
            if value._dispatcher is None:
                value._dispatcher = real.jit(**value._options)(value.py_function)
            namespace[name] = value._dispatcher  # what kernels calling a device function must find


def cuda_kernel(func):
    """A lazily compiled CUDA kernel: nothing compiles (or needs a GPU) at import, and numba.cuda
    itself loads on first use."""
    return _LazyCudaFunction(func, tuning.CUDA_JIT_OPTIONS)


def cuda_device_function(func):
    """A CUDA device function that CUDA kernels of the same module call (lazy like cuda_kernel)."""
    return _LazyCudaFunction(func, {"device": True})


def same_type(x, value):
    """``value`` as a constant of ``x``'s type.

    A bare literal such as ``0.5`` is float64 in numba, and ``float32 * float64`` is float64: in a
    float32 CUDA kernel that emits slow f64 instructions. ``same_type(x, 0.5)`` folds to a float32
    constant in float32 kernels and stays exact in float64 ones.
    """
    return type(x)(value)


@overload(same_type)
def _same_type_overload(x, value):
    np_type = as_dtype(x).type

    def impl(x, value):
        return np_type(value)

    return impl


def launch(kernel, work_items, *args):
    """Launch a grid-stride CUDA ``kernel`` sized for ``work_items`` independent items."""
    threads = tuning.CUDA_THREADS_PER_BLOCK
    blocks = max(1, min(tuning.CUDA_MAX_BLOCKS, (int(work_items) + threads - 1) // threads))
    kernel[blocks, threads](*args)



def launch_per_sample(kernel, samples, *args):
    """Launch ``kernel`` with one block per sample (grid-stride beyond the cap) and the recurrent
    thread count: kernels that step through time synchronise the threads of one sample's block."""
    blocks = max(1, min(tuning.CUDA_MAX_BLOCKS, int(samples)))
    kernel[blocks, tuning.CUDA_RECURRENT_THREADS](*args)
