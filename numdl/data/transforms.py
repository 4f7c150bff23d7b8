"""Normalisation fitted on training data only, then applied unchanged to validation and test data."""

import numpy as np

from numdl.errors import ConfigError

NORMALIZATIONS = ("standardize", "scale", "none")


class Normalizer:
    """``standardize``: (x - mean) / std with one mean and std over the training set (what
    ``transforms.Normalize((0.2860,), (0.3530,))`` does for Fashion-MNIST); ``scale``: x / max of the
    training set (x / 255 for images); ``none``: unchanged. Output dtype is ``dtype``."""

    def __init__(self, method="standardize", dtype="float32"):
        if method not in NORMALIZATIONS:
            raise ConfigError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")
        self.method, self.dtype = method, np.dtype(dtype)
        self.shift, self.divisor = 0.0, 1.0
        #: [min, max] of the raw training input: predict checks new input against it (0-1 scaled
        #: images given to a model trained on 0-255 pixels predicted garbage without a word).
        self.input_range = None

    def fit(self, x):
        # No float64 copy of the whole set (for Fashion-MNIST that was 376 MB and 2 s of start-up):
        # 8-bit data is counted by value, anything else is summed in float64 blocks.
        x = np.asarray(x)
        if x.size:
            self.input_range = [float(x.min()), float(x.max())]
        if self.method == "standardize":
            self.shift, self.divisor = _mean_std(x)
            self.divisor = self.divisor or 1.0
        elif self.method == "scale":
            self.shift, self.divisor = 0.0, float(np.abs(x).max()) or 1.0
        return self

    def transform(self, x):
        out = np.array(x, dtype=self.dtype, order="C")  # the one copy; the arithmetic is in place
        if self.method != "none":
            out -= self.dtype.type(self.shift)
            out /= self.dtype.type(self.divisor)
        return out

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    @classmethod
    def from_state(cls, state, dtype="float32"):
        normalizer = cls(state["method"], dtype)
        normalizer.shift, normalizer.divisor = float(state["shift"]), float(state["divisor"])
        normalizer.input_range = state.get("input_range")
        return normalizer

    def state(self):
        state = {"method": self.method, "shift": self.shift, "divisor": self.divisor}
        if self.input_range is not None:
            state["input_range"] = list(self.input_range)
        return state


def _mean_std(x, block=1 << 20):
    """Mean and (population) standard deviation of every element of ``x``, accumulated in float64."""
    if x.size == 0:
        return 0.0, 0.0
    if x.dtype == np.uint8:  # images: 256 counts give exact sums (counted a block at a time:
        values = np.arange(256, dtype=np.float64)  # bincount widens its input to int64)
        flat = x.reshape(-1)
        counts = sum(np.bincount(flat[i:i + block], minlength=256) for i in range(0, flat.size, block))
        counts = counts.astype(np.float64)
        mean = float(counts @ values) / x.size
        return mean, float(np.sqrt(counts @ (values - mean) ** 2 / x.size))
    flat = x.reshape(-1)
    total = sum(float(np.sum(flat[i:i + block], dtype=np.float64)) for i in range(0, flat.size, block))
    mean = total / flat.size
    squares = sum(float(np.sum((flat[i:i + block].astype(np.float64) - mean) ** 2))
                  for i in range(0, flat.size, block))
    return mean, float(np.sqrt(squares / flat.size))
