"""Pieces every kernel file uses: the jit decorators, a typed-constant helper, the CUDA launcher.

Kernels (in the sibling modules) are plain functions over arrays: they write into caller-allocated
outputs and return nothing. Only ``numdl.backend`` calls them.
"""

import inspect

from numba import cuda, njit, types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from numdl.kernels import tuning


def cpu_kernel(func):
    """Compile ``func`` as a CPU kernel with the shared options (cache, safe fastmath)."""
    return njit(**tuning.CPU_JIT_OPTIONS)(func)


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
    overload(func, jit_options={"fastmath": tuning.CPU_FASTMATH})(typer)
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
        overload(func, jit_options={"fastmath": tuning.CPU_FASTMATH})(typer)
        return func

    return register


def cuda_kernel(func):
    """A lazily compiled CUDA kernel: no signature, so nothing compiles (or needs a GPU) at import."""
    return cuda.jit(**tuning.CUDA_JIT_OPTIONS)(func)


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
