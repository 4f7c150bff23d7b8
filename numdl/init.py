"""Parameter initialisers, seeded through a NumPy Generator, with torch.nn.init's formulas.

Each takes (shape, fan_in, fan_out, rng) and returns a float64 host array; layers cast it to their
dtype and move it to their device.
"""

import math

import numpy as np

from numdl.errors import UnknownNameError

RELU_GAIN = math.sqrt(2.0)


def kaiming_uniform(shape, fan_in, fan_out, rng):
    """He uniform for ReLU: U(-b, b), b = sqrt(2) * sqrt(3 / fan_in)."""
    bound = RELU_GAIN * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def kaiming_normal(shape, fan_in, fan_out, rng):
    """He normal for ReLU: N(0, 2 / fan_in)."""
    return rng.normal(0.0, RELU_GAIN / math.sqrt(fan_in), size=shape)


def xavier_uniform(shape, fan_in, fan_out, rng):
    """Glorot uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape, fan_in, fan_out, rng):
    """Glorot normal: N(0, 2 / (fan_in + fan_out))."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def pytorch_default(shape, fan_in, fan_out, rng):
    """What torch.nn.Linear and ConvNd do by default, for weights and biases: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def zeros(shape, fan_in, fan_out, rng):
    return np.zeros(shape)


def ones(shape, fan_in, fan_out, rng):
    return np.ones(shape)


def rare_class_prior(shape, fan_in, fan_out, rng):
    """The bias of a sigmoid classifier of rare positives (RetinaNet's and CenterNet's heatmap heads):
    -log((1 - 0.01) / 0.01), so every output starts at probability 0.01 and the many negatives do not
    swamp the first steps of a focal loss."""
    return np.full(shape, -math.log((1 - 0.01) / 0.01))


INITIALIZERS = {
    f.__name__: f
    for f in (kaiming_uniform, kaiming_normal, xavier_uniform, xavier_normal, pytorch_default, zeros, ones,
              rare_class_prior)
}


def get_initializer(name):
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown initializer {name!r}; available: {', '.join(sorted(INITIALIZERS))}") from None
