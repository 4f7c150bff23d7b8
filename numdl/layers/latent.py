"""Layers of latent-variable models: GaussianSample, the reparameterisation of a variational
autoencoder, which also adds its KL term to the model's loss."""

import numpy as np

from numdl.errors import ConfigError, ShapeError
from numdl.layers.base import Layer


class GaussianSample(Layer):
    """(batch, 2 L) -> (batch, L): each row's first L values are the means, the last L the
    log-variances of a diagonal Gaussian; in training the output is a sample mean + exp(log_var / 2)
    * eps (eps ~ N(0, 1)), in evaluation the mean itself (reconstructions and the test loss are
    then deterministic).

    The layer adds ``beta`` times the KL divergence of that Gaussian from N(0, 1) (summed over the
    L dimensions, averaged over the batch) to the model's loss, in training and evaluation alike,
    and reports it per epoch as ``<set>_kl``. With a reconstruction loss summed over each sample's
    elements (``reduction = "batchmean"``) and beta = 1 the loss is the negative ELBO per sample;
    beta > 1 is the beta-VAE.

    The noise comes from the counter-based stream dropout uses (seed, offset): identical on CPU and
    CUDA, checkpointed with the model, so a resumed run draws what the uninterrupted one would.
    ``seed`` defaults to one drawn from the model's seed.
    """

    name = "gaussian_sample"
    added_loss_name = "kl"
    check_input_shape = (6,)  # numdl check: 3 means, 3 log-variances

    def __init__(self, beta: float = 1.0, seed: int = -1):
        super().__init__()
        if not (np.isfinite(beta) and beta >= 0):
            raise ConfigError(f"gaussian_sample: beta must be a number >= 0, got {beta}")
        self.beta, self.seed = float(beta), seed
        self.offset = 0
        self.added_loss = None  # the last forward pass's KL term (mean over its samples), unweighted
        self._noise = None

    @property
    def added_loss_weight(self):
        return self.beta

    def hyperparameters(self):
        return {"beta": self.beta, "seed": self.seed}

    def setup(self, input_shape, rng):
        if len(input_shape) != 1 or input_shape[0] % 2 or input_shape[0] == 0:
            raise ShapeError(f"gaussian_sample: expects (batch, 2 L) inputs, the L means then the L log-variances; "
                             f"got per-sample shape {tuple(input_shape)}")
        if self.seed < 0:
            self.seed = int(rng.integers(0, 2**63 - 1))
        return (input_shape[0] // 2,)

    def forward(self, x, training=False):
        self.check_input(x)
        self._x = x
        out = self.buffer("out", (x.shape[0],) + self.output_shape)
        self._noise = self.buffer("noise", out.shape)
        kl = self.buffer("kl", (x.shape[0],))
        self.ops.gaussian_sample_forward(out, self._noise, kl, x, training, self.seed, self.offset)
        if training:
            self.offset += 2 * out.size  # two uniforms per normal draw
        self.added_loss = float(self.ops.to_numpy(kl).astype(np.float64).sum()) / x.shape[0]
        return out

    def backward(self, dout):
        dx = self.buffer("dx", self._x.shape)
        self.ops.gaussian_sample_backward(dx, dout, self._x, self._noise, self.beta / self._x.shape[0])
        return dx

    def get_rng_state(self):
        return {"seed": self.seed, "offset": self.offset}

    def set_rng_state(self, state):
        self.seed, self.offset = int(state["seed"]), int(state["offset"])
