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

    def fit(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.method == "standardize":
            self.shift, self.divisor = float(x.mean()), float(x.std()) or 1.0
        elif self.method == "scale":
            self.shift, self.divisor = 0.0, float(np.abs(x).max()) or 1.0
        return self

    def transform(self, x):
        out = np.asarray(x, dtype=self.dtype)
        if self.method != "none":
            out = (out - self.dtype.type(self.shift)) / self.dtype.type(self.divisor)
        return np.ascontiguousarray(out, dtype=self.dtype)

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    @classmethod
    def from_state(cls, state, dtype="float32"):
        normalizer = cls(state["method"], dtype)
        normalizer.shift, normalizer.divisor = float(state["shift"]), float(state["divisor"])
        return normalizer

    def state(self):
        return {"method": self.method, "shift": self.shift, "divisor": self.divisor}
