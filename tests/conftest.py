import os

import pytest

# The simulator tests run in their own process (NUMBA_ENABLE_CUDASIM is read when numba.cuda is
# imported); tests/test_cuda_simulator.py starts it. Collect them here only inside that process.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
