"""CPU backend: NumPy arrays, kernels called directly (they are ``@njit`` functions)."""

import numpy as np

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
