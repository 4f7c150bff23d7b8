"""CUDA backend: numba device arrays, kernels launched grid-stride through ``kernels.common.launch``.

Imported only when a model asks for ``device = "cuda"``: ``import numdl`` never touches the GPU.
Under ``NUMBA_ENABLE_CUDASIM=1`` the same code runs on Numba's simulator (that is how CI tests it).
"""

import numpy as np
from numba import cuda

from numdl.backend.base import Ops
from numdl.errors import DeviceError
from numdl.kernels.common import launch, launch_per_sample


class CUDAOps(Ops):
    name = "cuda"

    def __init__(self):
        super().__init__()
        if not cuda.is_available():
            raise DeviceError("device 'cuda' requested but no CUDA GPU is available (use device = 'cpu')")

    def empty(self, shape, dtype):
        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return cuda.to_device(np.zeros(shape, dtype=dtype))

    def asarray(self, array, dtype=None):
        if _on_device(array) and (dtype is None or np.dtype(dtype) == array.dtype):
            return array
        return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))

    def to_numpy(self, array):
        if _on_device(array):
            return array.copy_to_host()
        return np.asarray(array)

    def _call(self, kernel, work_items, args, per_sample):
        if per_sample:
            launch_per_sample(kernel, work_items, *args)
        else:
            launch(kernel, work_items, *args)

    def zero_(self, array):
        array.copy_to_device(np.zeros(array.shape, dtype=array.dtype))


def _on_device(array):
    # Device arrays (real or simulated) expose copy_to_host; NumPy arrays do not.
    return hasattr(array, "copy_to_host")
