import os

import pytest

# The simulator tests run in their own process (NUMBA_ENABLE_CUDASIM is read when numba.cuda is
# imported); tests/test_cuda_simulator.py starts it. Collect them here only inside that process.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]

# `numdl` commands run in-process here: a fixed thread count (every core, as before --threads auto
# became the default) keeps their numbers independent of timing. Tests of auto pass it explicitly.
os.environ.setdefault("NUMDL_THREADS", str(os.cpu_count() or 1))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def thread_pools():
    """Tests call kernels directly: set up the thread pools as the backend's first call does (matmul
    asks numba's pool for its size, and that read crashes before the pool has started)."""
    from numdl.backend import get_ops

    get_ops("cpu").use_threads()
