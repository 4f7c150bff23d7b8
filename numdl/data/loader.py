"""Splitting and batching with a seeded generator."""

import numpy as np

from numdl.errors import ConfigError


def train_validation_split(x, y, fraction, seed=0):
    """Hold out a seeded random ``fraction`` of (x, y); returns (x_train, y_train, x_val, y_val)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.validation_split must be in [0, 1), got {fraction}")
    n = len(x)
    held = int(round(n * fraction))
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:held], order[held:]
    return x[train], y[train], x[val], y[val]


def batches(x, y, batch_size, shuffle=False, rng=None):
    """Yield (x_batch, y_batch) in order, or in a seeded shuffled order (the last may be smaller)."""
    order = (rng or np.random.default_rng()).permutation(len(x)) if shuffle else None
    for begin in range(0, len(x), batch_size):
        index = slice(begin, begin + batch_size) if order is None else order[begin:begin + batch_size]
        yield x[index], y[index]
