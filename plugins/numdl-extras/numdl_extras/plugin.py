"""The items numdl-extras registers, and the hook implementations that register them."""

import numpy as np

import numdl
from numdl.errors import ConfigError
from numdl.layers import Layer
from numdl.losses import Loss, validate_labels
from numdl.optim import Optimizer
from numdl.backend import ops_for

from numdl_extras import kernels


class Swish(Layer):
    """Swish / SiLU with a learnable slope: x * sigmoid(beta x) (beta = 1 is SiLU)."""

    name = "swish"

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.initial_beta = beta

    def hyperparameters(self):
        return {"beta": self.initial_beta}

    def setup(self, input_shape, rng):
        self.add_param("beta", np.array([self.initial_beta]))
        return input_shape

    def forward(self, x, training=False):
        self._x = x
        out = self.buffer("out", x.shape)
        self.ops.run_kernels(kernels.swish_forward_cpu, kernels.swish_forward_cuda, x.size, self.ops.flat(out),
                             self.ops.flat(x), self.params["beta"].value)
        return out

    def backward(self, dout):
        dx = self.buffer("dx", dout.shape)
        beta = self.params["beta"]
        self.ops.zero_(beta.grad)  # the CUDA twin accumulates
        self.ops.run_kernels(kernels.swish_backward_cpu, kernels.swish_backward_cuda, dout.size, self.ops.flat(dx),
                             beta.grad, self.ops.flat(dout), self.ops.flat(self._x), beta.value)
        return dx


class Lion(Optimizer):
    """Lion (EvoLved Sign Momentum): sign updates from an interpolated momentum; use a learning rate
    3-10x smaller than AdamW's."""

    name = "lion"
    state_names = ("exp_avg",)

    def __init__(self, lr: float = 1e-4, betas: list[float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(lr)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"lion: betas must be two numbers in [0, 1), got {list(betas)}")
        self.betas, self.weight_decay = tuple(betas), weight_decay

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "weight_decay": self.weight_decay}

    def update(self, param, state):
        ops = ops_for(param.value)
        d = param.value.dtype.type
        ops.run_kernels(kernels.lion_step_cpu, kernels.lion_step_cuda, param.value.size, ops.flat(param.value),
                        ops.flat(state["exp_avg"]), ops.flat(param.grad), d(self.lr), d(self.betas[0]),
                        d(self.betas[1]), d(self.weight_decay))


class FocalLoss(Loss):
    """Focal loss for imbalanced classes (Lin et al. 2017) on raw logits:
    -alpha (1 - p_y)^gamma log p_y, averaged over the batch (or summed). gamma = 0 is cross-entropy."""

    name = "focal"
    target_kind = "labels"

    def __init__(self, gamma: float = 2.0, alpha: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if gamma < 0 or alpha <= 0:
            raise ConfigError("focal: gamma must be >= 0 and alpha > 0")
        self.gamma, self.alpha = gamma, alpha

    def hyperparameters(self):
        return {"gamma": self.gamma, "alpha": self.alpha, "reduction": self.reduction}

    def forward(self, logits, labels):
        self.ops = ops_for(logits)
        n, classes = logits.shape
        self._labels = self.ops.asarray(validate_labels(labels, n, classes))
        d = logits.dtype.type
        sample_loss = self.buffer("sample_loss", (n,), logits.dtype)
        self._probs = self.buffer("probs", (n, classes), logits.dtype)
        self.ops.run_kernels(kernels.focal_loss_forward_cpu, kernels.focal_loss_forward_cuda, n, sample_loss,
                             self._probs, logits, self._labels, d(self.alpha), d(self.gamma))
        self._scale = 1.0 / n if self.reduction == "mean" else 1.0
        return self.ops.sum(sample_loss) * self._scale

    def backward(self):
        dlogits = self.buffer("dlogits", self._probs.shape, self._probs.dtype)
        d = self._probs.dtype.type
        self.ops.run_kernels(kernels.focal_loss_backward_cpu, kernels.focal_loss_backward_cuda,
                             self._probs.shape[0], dlogits, self._probs, self._labels, d(self.alpha), d(self.gamma),
                             d(self._scale))
        return dlogits


@numdl.hookimpl
def numdl_register_layers():
    return [Swish]


@numdl.hookimpl
def numdl_register_losses():
    return [FocalLoss]


@numdl.hookimpl
def numdl_register_optimizers():
    return [Lion]
