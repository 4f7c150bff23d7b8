"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam, AdamW (amsgrad, maximize), RMSprop,
Adagrad, Adamax, NAdam, RAdam, with PyTorch's formulas.

An optimizer holds hyper-parameters (what a config names) and, once ``step(params)`` first sees a
list of parameters, one set of state buffers per parameter on the parameters' device.
"""

import fnmatch

import numpy as np

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

    def __init__(self, lr: float, param_groups=None, decay_biases_and_norms: bool = True):
        if not lr > 0:
            raise ConfigError(f"{self.name}: lr must be > 0, got {lr}")
        self.lr = lr
        self.steps = 0
        self.state = None
        self._flat = None  # (Parameter over the bank's flat buffers, flat state) when packed
        self.param_groups = _checked_groups(self.name, param_groups, lr)
        self.decay_biases_and_norms = bool(decay_biases_and_norms)
        self._settings = None  # per parameter: (lr scale, weight decay or None for the optimizer's)

    @property
    def grouped(self):
        """Whether some parameters train with their own learning rate or weight decay."""
        return bool(self.param_groups) or not self.decay_biases_and_norms

    def step(self, params):
        """Update every parameter in place from its gradient."""
        self.ensure_state(params)
        self.steps += 1
        if self._flat is not None:
            self.update(*self._flat)
            return
        if not self.grouped:
            for param, state in zip(params, self.state):
                self.update(param, state)
            return
        # Per-parameter settings: the update methods read self.lr and self.weight_decay, which take
        # each parameter's values for its call (lr scaled with the optimizer's, so schedules apply).
        lr = self.lr
        decay = getattr(self, "weight_decay", None)
        try:
            for param, state, (scale, own_decay) in zip(params, self.state, self._settings):
                self.lr = lr * scale
                if own_decay is not None:
                    self.weight_decay = own_decay
                self.update(param, state)
                if own_decay is not None:
                    self.weight_decay = decay
        finally:
            self.lr = lr
            if decay is not None:
                self.weight_decay = decay

    def ensure_state(self, params):
        """Create zeroed state buffers for ``params`` unless they exist; ``self.state`` is always one
        dict per parameter (what checkpoints save), views of flat buffers when the model is packed."""
        if self.state is not None and len(self.state) == len(params):
            if self.grouped and (self._settings is None or len(self._settings) != len(params)):
                self._settings = self._group_settings(params)
            return
        if self.grouped:  # one update per parameter, each with its own settings
            self._flat = None
            self._settings = self._group_settings(params)
            self.state = [self.new_state(p.value) for p in params]
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
        return {"lr": self.lr, **self.group_hyperparameters()}

    def group_hyperparameters(self):
        """The parameter-group options, for a config or checkpoint (none when unused)."""
        options = {}
        if self.param_groups:
            options["param_groups"] = [dict(g) for g in self.param_groups]
        if not self.decay_biases_and_norms:
            options["decay_biases_and_norms"] = False
        return options

    def _group_settings(self, params):
        """(lr scale, weight decay or None) for each parameter: the first group whose ``params``
        pattern matches its name (``Parameter.path``, as checkpoints name it) sets them; with
        ``decay_biases_and_norms`` false, biases and 1-D parameters (norm scales and shifts) get no
        weight decay unless their group sets one. A pattern that matches nothing is an error."""
        if not hasattr(self, "weight_decay") and (not self.decay_biases_and_norms or any(
                "weight_decay" in g for g in self.param_groups)):
            raise ConfigError(f"{self.name}: has no weight_decay for parameter groups to set")
        names = [p.path or p.name for p in params]
        used = [False] * len(self.param_groups)
        settings = []
        for param, name in zip(params, names):
            scale, decay = 1.0, None
            if not self.decay_biases_and_norms and (len(param.value.shape) <= 1 or name.split(".")[-1] == "bias"):
                decay = 0.0
            for index, group in enumerate(self.param_groups):
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in group["params"]):
                    used[index] = True
                    scale = group.get("lr_scale", 1.0)
                    decay = group.get("weight_decay", decay)
                    break
            settings.append((scale, decay))
        for index, hit in enumerate(used):
            if not hit:
                shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                raise ConfigError(f"{self.name}: param_groups.{index}.params {self.param_groups[index]['params']} "
                                  f"match no parameter (names: {shown})")
        return settings


class SGD(Optimizer):
    name = "sgd"
    state_names = ("momentum_buffer",)
    elementwise = True

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ConfigError("sgd: nesterov needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def update(self, param, state):
        ops_for(param.value).sgd_step(param.value, state["momentum_buffer"], param.grad, self.lr, self.momentum,
                                self.dampening, self.weight_decay, self.nesterov, self.steps == 1)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov, **self.group_hyperparameters()}


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (PyTorch's ``torch.optim.Adam``): ``amsgrad``
    divides by the largest second moment so far, ``maximize`` climbs the objective."""

    name = "adam"
    elementwise = True
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"{self.name}: betas must be two numbers in [0, 1), got {list(betas)}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.amsgrad, self.maximize = bool(amsgrad), bool(maximize)
        # amsgrad's running maximum only when asked for (plain Adam's checkpoints hold two buffers)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def update(self, param, state):
        beta1, beta2 = self.betas
        ops_for(param.value).adam_step(param.value, state["exp_avg"], state["exp_avg_sq"], param.grad, self.lr,
                                 beta1, beta2, self.eps, self.weight_decay, self.decoupled,
                                 1.0 - beta1 ** self.steps, 1.0 - beta2 ** self.steps,
                                 state.get("max_exp_avg_sq"), self.maximize)

    def kernel_step(self, params, values):
        """What a kernel needs to take this optimizer's next step itself over ``values``, the flat
        buffer of ``params`` (a dense chain's train_step does, kernels/dense_chain): (exp_avg, exp_avg_sq,
        constants, decoupled, maximize), constants (lr, beta1, beta2, eps, weight_decay and the next
        step's two bias corrections) in the parameters' dtype; None when the step is not a plain one
        over flat buffers (amsgrad, parameter groups, unpacked parameters, a subclass's own update).
        The caller adds one to ``steps`` when the kernel took the step."""
        if self.amsgrad or self.grouped or type(self).update is not Adam.update:
            return None
        self.ensure_state(params)
        if self._flat is None or self._flat[0].value is not values:
            return None
        flat, state = self._flat
        beta1, beta2 = self.betas
        step = self.steps + 1
        constants = np.array([self.lr, beta1, beta2, self.eps, self.weight_decay, 1.0 - beta1 ** step,
                              1.0 - beta2 ** step], flat.value.dtype)
        return state["exp_avg"], state["exp_avg_sq"], constants, self.decoupled, self.maximize

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad, "maximize": self.maximize, **self.group_hyperparameters()}


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's ``torch.optim.AdamW``; default decay 0.01)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, maximize: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, param_groups, decay_biases_and_norms)


GROUP_KEYS = ("params", "lr", "lr_scale", "weight_decay")


def _checked_groups(name, groups, lr):
    """Parameter groups as [{params: [patterns], lr_scale, weight_decay}]: a group's ``lr`` becomes its
    ratio to the optimizer's (so a schedule moves every group's rate together, as PyTorch's do)."""
    if groups is None:
        return []
    if not isinstance(groups, (list, tuple)):
        raise ConfigError(f"{name}: param_groups must be a list of tables, got {groups!r}")
    checked = []
    for index, group in enumerate(groups):
        where = f"{name}: param_groups.{index}"
        if not isinstance(group, dict) or "params" not in group:
            raise ConfigError(f"{where} must be a table with 'params' (a name pattern or a list of them)")
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (accepts: {', '.join(GROUP_KEYS)})")
        patterns = [group["params"]] if isinstance(group["params"], str) else list(group["params"])
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"{where}.params must be a name pattern or a list of them, e.g. '0.*' or '*.bias'")
        if "lr" in group and "lr_scale" in group:
            raise ConfigError(f"{where}: give lr or lr_scale, not both")
        entry = {"params": patterns}
        for key in ("lr", "lr_scale", "weight_decay"):
            value = group.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0 \
                    or (key != "weight_decay" and value == 0):
                raise ConfigError(f"{where}.{key} must be a finite number {'>= 0' if key == 'weight_decay' else '> 0'}, "
                                  f"got {value!r}")
        if "lr" in group:
            entry["lr_scale"] = float(group["lr"]) / lr
        elif "lr_scale" in group:
            entry["lr_scale"] = float(group["lr_scale"])
        if group.get("weight_decay") is not None:
            entry["weight_decay"] = float(group["weight_decay"])
        checked.append(entry)
    return checked


def _betas(name, betas):
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{name}: betas must be two numbers in [0, 1), got {list(betas)}")
    return tuple(float(b) for b in betas)


class Adagrad(Optimizer):
    """PyTorch's ``torch.optim.Adagrad``: each element's step divided by the root of its summed
    squared gradients (started at ``initial_accumulator_value``), the lr decayed by ``lr_decay``."""

    name = "adagrad"
    state_names = ("sum",)
    elementwise = True

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, maximize: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        if lr_decay < 0 or initial_accumulator_value < 0:
            raise ConfigError("adagrad: lr_decay and initial_accumulator_value must be >= 0")
        self.lr_decay, self.weight_decay, self.eps = lr_decay, weight_decay, eps
        self.initial_accumulator_value, self.maximize = initial_accumulator_value, bool(maximize)

    def new_state(self, like):
        ops = ops_for(like)
        return {"sum": ops.asarray(np.full(like.shape, self.initial_accumulator_value), dtype=like.dtype)}

    def update(self, param, state):
        clr = self.lr / (1 + (self.steps - 1) * self.lr_decay)
        ops_for(param.value).adagrad_step(param.value, state["sum"], param.grad, clr, self.eps, self.weight_decay,
                                          self.maximize)

    def hyperparameters(self):
        return {"lr": self.lr, "lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
                "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps,
                "maximize": self.maximize, **self.group_hyperparameters()}


class Adamax(Optimizer):
    """PyTorch's ``torch.optim.Adamax``: Adam with the infinity norm in place of the second moment."""

    name = "adamax"
    state_names = ("exp_avg", "exp_inf")
    elementwise = True

    def __init__(self, lr: float = 2e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, maximize: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        self.betas, self.eps, self.weight_decay, self.maximize = _betas(self.name, betas), eps, weight_decay, bool(maximize)

    def update(self, param, state):
        beta1, beta2 = self.betas
        clr = self.lr / (1 - beta1 ** self.steps)
        ops_for(param.value).adamax_step(param.value, state["exp_avg"], state["exp_inf"], param.grad, clr, beta1,
                                         beta2, self.eps, self.weight_decay, self.maximize)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "maximize": self.maximize, **self.group_hyperparameters()}


class NAdam(Optimizer):
    """PyTorch's ``torch.optim.NAdam``: Adam with Nesterov momentum and its momentum schedule
    mu_t = beta1 (1 - 0.5 0.96^(t momentum_decay)); ``decoupled_weight_decay`` as AdamW."""

    name = "nadam"
    state_names = ("exp_avg", "exp_avg_sq")
    elementwise = True

    def __init__(self, lr: float = 2e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
                 maximize: bool = False, param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        self.betas, self.eps, self.weight_decay = _betas(self.name, betas), eps, weight_decay
        self.momentum_decay, self.decoupled_weight_decay = momentum_decay, bool(decoupled_weight_decay)
        self.maximize = bool(maximize)

    def _mu(self, step):
        return self.betas[0] * (1.0 - 0.5 * 0.96 ** (step * self.momentum_decay))

    def update(self, param, state):
        beta1, beta2 = self.betas
        t = self.steps
        # the product of every mu so far: recomputed from the step count (a resumed run needs no
        # extra state), the same for every parameter; in float32, as PyTorch keeps it (a float32
        # tensor under its default dtype), so trajectories agree to the last bits
        product = np.float32(1.0)
        for step in range(1, t + 1):
            product = np.float32(product * np.float32(self._mu(step)))
        product = float(product)
        mu, mu_next = self._mu(t), self._mu(t + 1)
        grad_coefficient = self.lr * (1.0 - mu) / (1.0 - product)
        momentum_coefficient = self.lr * mu_next / (1.0 - product * mu_next)
        ops_for(param.value).nadam_step(param.value, state["exp_avg"], state["exp_avg_sq"], param.grad, self.lr,
                                        beta1, beta2, self.eps, self.weight_decay, self.decoupled_weight_decay,
                                        1.0 - beta2 ** t, grad_coefficient, momentum_coefficient, self.maximize)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum_decay": self.momentum_decay, "decoupled_weight_decay": self.decoupled_weight_decay,
                "maximize": self.maximize, **self.group_hyperparameters()}


class RAdam(Optimizer):
    """PyTorch's ``torch.optim.RAdam``: Adam whose adaptive step is switched on, and scaled by the
    rectification term, once the second moment's variance is tractable (rho_t > 5); momentum SGD
    before that. ``decoupled_weight_decay`` as AdamW."""

    name = "radam"
    state_names = ("exp_avg", "exp_avg_sq")
    elementwise = True

    def __init__(self, lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, maximize: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        self.betas, self.eps, self.weight_decay = _betas(self.name, betas), eps, weight_decay
        self.decoupled_weight_decay, self.maximize = bool(decoupled_weight_decay), bool(maximize)

    def update(self, param, state):
        beta1, beta2 = self.betas
        t = self.steps
        bias_correction1, bias_correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2 ** t / bias_correction2
        rectified = rho_t > 5.0
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified \
            else 0.0
        ops_for(param.value).radam_step(param.value, state["exp_avg"], state["exp_avg_sq"], param.grad, self.lr,
                                        beta1, beta2, self.eps, self.weight_decay, self.decoupled_weight_decay,
                                        bias_correction1, bias_correction2, rect, rectified, self.maximize)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "decoupled_weight_decay": self.decoupled_weight_decay, "maximize": self.maximize,
                **self.group_hyperparameters()}


class RMSprop(Optimizer):
    name = "rmsprop"
    state_names = ("square_avg", "grad_avg", "momentum_buffer")
    elementwise = True

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False,
                 param_groups: list[dict] | None = None, decay_biases_and_norms: bool = True):
        super().__init__(lr, param_groups, decay_biases_and_norms)
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered

    def update(self, param, state):
        ops_for(param.value).rmsprop_step(param.value, state["square_avg"], state["grad_avg"],
                                    state["momentum_buffer"], param.grad, self.lr, self.alpha, self.eps,
                                    self.weight_decay, self.momentum, self.centered)

    def hyperparameters(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered, **self.group_hyperparameters()}


BUILTIN_OPTIMIZERS = (SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam)
