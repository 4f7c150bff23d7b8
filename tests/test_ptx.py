"""Every CUDA kernel compiled to PTX for a real GPU target (no GPU needed), at float32 and float64;
float32 kernels must be free of double-precision instructions."""

import importlib

import numpy as np
import pytest

from kernel_cases import CASES
from numdl.testing import compile_ptx, float64_instructions

pytest.importorskip("numba.cuda")


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: d.__name__)
@pytest.mark.parametrize("family, op", sorted(CASES), ids=[f"{f}.{o}" for f, o in sorted(CASES)])
def test_cuda_kernel_compiles_to_ptx(family, op, dtype):
    kernel = getattr(importlib.import_module(f"numdl.kernels.{family}"), f"{op}_cuda")
    args, _, _ = CASES[(family, op)](dtype, np.random.default_rng(0))
    ptx = compile_ptx(kernel, args)
    assert ".entry" in ptx
    if dtype is np.float32:
        assert float64_instructions(ptx) == [], f"{family}.{op}: f64 instructions in the float32 kernel"


def test_f64_detector_sees_double_precision():
    from numba import cuda

    def doubles(out, x):
        i = cuda.grid(1)
        if i < x.size:
            out[i] = x[i] * 0.1  # a float64 literal promotes the product to f64

    ptx = compile_ptx(doubles, [np.zeros(4, np.float32), np.zeros(4, np.float32)])
    assert float64_instructions(ptx)


def test_cuda_compiles_after_the_cpu_kernels_compiled_in_the_same_process(tmp_path):
    """A CPU kernel compiled (not loaded from cache) before its CUDA twin must not break the twin:
    IR-inlined helpers once leaked CPU IR into later CUDA compiles."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np\n"
              "from numdl.kernels import activation\n"
              "from numdl.testing import compile_ptx\n"
              "x = np.random.randn(10); o = np.empty(10)\n"
              "activation.gelu_forward_cpu(o, x)\n"
              "compile_ptx(activation.gelu_forward_cuda, [o, x])\n"
              "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)))  # an empty cache: a real compile
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
