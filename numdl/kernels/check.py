"""Checks over whole arrays: how many elements are not finite (the NaN guard's test of each step's
gradients, in one pass and without the boolean temporary that ``np.isfinite(a).all()`` allocates).
"""

import math

from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type

# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def non_finite_count(values):
    # The elements of values (1-D, not empty) that are inf or NaN, in values' dtype (exact to 2**24 in
    # float32; callers only ask whether it is zero). |x| < inf is false for inf and NaN, and stays a
    # comparison under numdl's fastmath flags (x - x == 0 would be folded to true). Counting in the
    # values' dtype, without a branch, keeps the loop in wide vector lanes.
    zero = same_type(values[0], 0.0)
    one = same_type(values[0], 1.0)
    infinity = same_type(values[0], math.inf)
    total = zero
    for i in range(values.size):
        total += zero if abs(values[i]) < infinity else one
    return total


@cpu_kernel
def count_non_finite_forward_cpu(count, values):
    # count (1,) of values' dtype, overwritten: non_finite_count of values (1-D).
    count[0] = non_finite_count(values) if values.size > 0 else same_type(count[0], 0.0)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def count_non_finite_forward_cuda(count, values):
    # Accumulates into count (the backend zeroes it first): one atomic add per thread that found any.
    found = same_type(count[0], 0.0)
    for i in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        if not abs(values[i]) < same_type(values[i], math.inf):
            found += same_type(found, 1.0)
    if found > same_type(found, 0.0):
        cuda.atomic.add(count, 0, found)
