"""Backends: the only callers of kernels. ``get_ops("cpu" | "cuda")`` returns the shared instance."""

import numpy as np

from numdl.errors import ConfigError

DEVICES = ("cpu", "cuda")
_instances = {}


def get_ops(device="cpu"):
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; available: {', '.join(DEVICES)}")
    if device not in _instances:
        if device == "cpu":
            from numdl.backend.cpu import CPUOps

            _instances[device] = CPUOps()
        else:
            from numdl.backend.cuda import CUDAOps  # imports numba.cuda only now

            _instances[device] = CUDAOps()
    return _instances[device]


def ops_for(array):
    """The backend that owns ``array``: NumPy arrays live on the CPU, anything else on CUDA."""
    return get_ops("cpu" if isinstance(array, np.ndarray) else "cuda")
