"""Seeded image augmentation for training batches: random crop with zero padding, horizontal flip.

Works on (n, H, W) or (n, C, H, W) batches of already normalised images; ``fill`` is the normalised
value of a black pixel, so padding looks like torchvision's RandomCrop(padding=p) done before
normalisation. Each call draws from the generator it is given, so a seeded run is reproducible.
"""

import numpy as np

from numdl.errors import ConfigError


class Augmenter:
    def __init__(self, crop_padding=0, horizontal_flip=False, fill=0.0):
        if crop_padding < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {crop_padding}")
        self.crop_padding, self.horizontal_flip, self.fill = crop_padding, horizontal_flip, fill

    @property
    def active(self):
        return self.crop_padding > 0 or self.horizontal_flip

    def __call__(self, batch, rng):
        out = np.array(batch, copy=True)
        n, h, w = out.shape[0], out.shape[-2], out.shape[-1]
        p = self.crop_padding
        if p:
            padded = np.full(out.shape[:-2] + (h + 2 * p, w + 2 * p), self.fill, dtype=out.dtype)
            padded[..., p:p + h, p:p + w] = out
            offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
            for i, (dy, dx) in enumerate(offsets):
                out[i] = padded[i, ..., dy:dy + h, dx:dx + w]
        if self.horizontal_flip:
            flip = rng.random(n) < 0.5
            out[flip] = out[flip][..., ::-1]
        return out
