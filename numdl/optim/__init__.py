"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam, AdamW, RMSprop, with PyTorch's formulas.

An optimizer holds hyper-parameters (what a config names) and, once ``step(params)`` first sees a
list of parameters, one set of state buffers per parameter on the parameters' device.
"""

from numdl.backend import ops_for
from numdl.errors import ConfigError
from numdl.layers.base import Parameter, ParameterBank


class Optimizer:
    #: The name a config uses (``[optimizer] type = "..."``).
    name = None
    #: Names of the per-parameter state buffers, created zeroed like the parameter.
    state_names = ()
    #: True when ``update`` treats every element on its own (no per-tensor norms): then the
    #: parameters of a packed model (a ParameterBank) are updated by one ``update`` call over the
    #: flat buffers. Plugins opt in; the default, per-parameter calls, is always correct.
    elementwise = False

    def __init__(self, lr: float):
        if not lr > 0:
            raise ConfigError(f"{self.name}: lr must be > 0, got {lr}")
        self.lr = lr
        self.steps = 0
        self.state = None
        self._flat = None  # (Parameter over the bank's flat buffers, flat state) when packed

    def step(self, params):
        """Update every parameter in place from its gradient."""
        self.ensure_state(params)
        self.steps += 1
        if self._flat is not None:
            self.update(*self._flat)
            return
        for param, state in zip(params, self.state):
            self.update(param, state)

    def ensure_state(self, params):
        """Create zeroed state buffers for ``params`` unless they exist; ``self.state`` is always one
        dict per parameter (what checkpoints save), views of flat buffers when the model is packed."""
        if self.state is not None and len(self.state) == len(params):
            return
        bank = ParameterBank.of(params) if self.elementwise else None
        if bank is None:
            self._flat = None
            self.state = [self.new_state(p.value) for p in params]
            return
        flat_state = self.new_state(bank.values)
        self._flat = (Parameter("all", bank.values, bank.grads), flat_state)
        self.state = [{name: bank.view(buffer, p) for name, buffer in flat_state.items()} for p in params]

    def new_state(self, like):
        """{name: buffer} for one parameter (or the model's flat bank), shaped like ``like``: zeros
        by default. An optimizer whose state must start elsewhere (Adagrad's initial accumulator)
        overrides this, filling the buffers on ``ops_for(like)``'s device."""
        ops = ops_for(like)
        return {name: ops.zeros(like.shape, like.dtype) for name in self.state_names}

    def update(self, param, state):
        raise NotImplementedError

    def hyperparameters(self):
        return {"lr": self.lr}


class SGD(Optimizer):
    name = "sgd"
    state_names = ("momentum_buffer",)
    elementwise = True

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError("sgd: nesterov needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def update(self, param, state):
        ops_for(param.value).sgd_step(param.value, state["momentum_buffer"], param.grad, self.lr, self.momentum,
                                self.dampening, self.weight_decay, self.nesterov, self.steps == 1)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (PyTorch's ``torch.optim.Adam``)."""

    name = "adam"
    state_names = ("exp_avg", "exp_avg_sq")
    elementwise = True
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"{self.name}: betas must be two numbers in [0, 1), got {list(betas)}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def update(self, param, state):
        beta1, beta2 = self.betas
        ops_for(param.value).adam_step(param.value, state["exp_avg"], state["exp_avg_sq"], param.grad, self.lr,
                                 beta1, beta2, self.eps, self.weight_decay, self.decoupled,
                                 1.0 - beta1 ** self.steps, 1.0 - beta2 ** self.steps)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's ``torch.optim.AdamW``; default decay 0.01)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    name = "rmsprop"
    state_names = ("square_avg", "grad_avg", "momentum_buffer")
    elementwise = True

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(lr)
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered

    def update(self, param, state):
        ops_for(param.value).rmsprop_step(param.value, state["square_avg"], state["grad_avg"],
                                    state["momentum_buffer"], param.grad, self.lr, self.alpha, self.eps,
                                    self.weight_decay, self.momentum, self.centered)

    def hyperparameters(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}


BUILTIN_OPTIMIZERS = (SGD, Adam, AdamW, RMSprop)
