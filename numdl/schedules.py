"""Learning-rate schedules, PyTorch's formulas, evaluated from the optimizer's step count.

A schedule maps (steps done, steps per epoch, total steps, the configured lr) to the lr of the next
step, so it needs no state of its own to resume exactly; ``reduce_on_plateau`` also reacts to the
epoch metrics and keeps a small state dict that checkpoints carry. The training loop applies the
schedule after every step (``ScheduleCallback``).
"""

import math

from numdl.errors import ConfigError


class Schedule:
    #: The name a config uses (``[schedule] type = "..."``).
    name = None

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        raise NotImplementedError

    def epoch_end(self, logs):
        """React to an epoch's metrics (only plateau schedules do)."""

    def state(self):
        return {}

    def load_state(self, state):
        pass

    def hyperparameters(self):
        return {}


class Constant(Schedule):
    name = "constant"

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        return base_lr


class StepDecay(Schedule):
    """lr * gamma ** (epoch // step_size) (torch's StepLR, stepped per epoch)."""

    name = "step"

    def __init__(self, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ConfigError("step: step_size must be >= 1 (epochs)")
        self.step_size, self.gamma = step_size, gamma

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        return base_lr * self.gamma ** ((step // steps_per_epoch) // self.step_size)


class MultiStepDecay(Schedule):
    """lr * gamma ** (number of milestones passed) (torch's MultiStepLR, milestones in epochs)."""

    name = "multistep"

    def __init__(self, milestones: list[int], gamma: float = 0.1):
        self.milestones, self.gamma = sorted(milestones), gamma

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        epoch = step // steps_per_epoch
        return base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)


class ExponentialDecay(Schedule):
    """lr * gamma ** epoch (torch's ExponentialLR)."""

    name = "exponential"

    def __init__(self, gamma: float):
        self.gamma = gamma

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        return base_lr * self.gamma ** (step // steps_per_epoch)


class Cosine(Schedule):
    """A linear warm-up over ``warmup_epochs``, then a half cosine from lr to ``min_lr`` over the
    remaining steps, updated every step (torch's CosineAnnealingLR with T_max = all steps)."""

    name = "cosine"

    def __init__(self, warmup_epochs: float = 0.0, min_lr: float = 0.0):
        self.warmup_epochs, self.min_lr = warmup_epochs, min_lr

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        warmup = int(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return base_lr * (step + 1) / warmup
        span = max(1, total_steps - warmup)
        progress = min(step - warmup, span) / span
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


class OneCycle(Schedule):
    """torch's OneCycleLR (cosine annealing): from max_lr / div_factor up to max_lr over
    ``pct_start`` of the run, then down to max_lr / (div_factor * final_div_factor)."""

    name = "one_cycle"

    def __init__(self, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        if not 0 < pct_start < 1:
            raise ConfigError("one_cycle: pct_start must be in (0, 1)")
        self.max_lr, self.pct_start = max_lr, pct_start
        self.div_factor, self.final_div_factor = div_factor, final_div_factor

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        up = float(self.pct_start * total_steps) - 1
        down = float(total_steps - 1)

        def anneal(start, end, fraction):
            return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)

        if step <= up:
            return anneal(initial, self.max_lr, step / up if up > 0 else 1.0)
        return anneal(self.max_lr, final, min(1.0, (step - up) / max(down - up, 1e-12)))


class ReduceOnPlateau(Schedule):
    """Multiply the lr by ``factor`` when ``monitor`` has not improved for ``patience`` epochs
    (torch's ReduceLROnPlateau; losses improve downwards, accuracies upwards)."""

    name = "reduce_on_plateau"

    def __init__(self, monitor: str = "test_loss", factor: float = 0.1, patience: int = 5, min_lr: float = 0.0):
        if not 0 < factor < 1:
            raise ConfigError("reduce_on_plateau: factor must be in (0, 1)")
        self.monitor, self.factor, self.patience, self.min_lr = monitor, factor, patience, min_lr
        self.best, self.bad_epochs, self.scale = None, 0, 1.0

    def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
        return max(self.min_lr, base_lr * self.scale)

    def epoch_end(self, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise ConfigError(f"reduce_on_plateau: the run reports no {self.monitor!r}; "
                              f"available: {', '.join(k for k in logs if isinstance(logs[k], float))}")
        better = value > self.best if "accuracy" in self.monitor and self.best is not None else \
            (self.best is None or value < self.best)
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0

    def state(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}

    def load_state(self, state):
        self.best, self.bad_epochs, self.scale = state["best"], int(state["bad_epochs"]), float(state["scale"])


BUILTIN_SCHEDULES = (Constant, StepDecay, MultiStepDecay, ExponentialDecay, Cosine, OneCycle, ReduceOnPlateau)


class ScheduleCallback:
    """fit callback: sets the optimizer's lr from ``schedule`` after every step and epoch."""

    def __init__(self, schedule, optimizer, base_lr, steps_per_epoch, total_steps):
        self.schedule, self.optimizer, self.base_lr = schedule, optimizer, base_lr
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def _apply(self):
        self.optimizer.lr = self.schedule.lr_at(self.optimizer.steps, self.steps_per_epoch, self.total_steps,
                                                self.base_lr)

    def on_epoch_begin(self, epoch, model):
        self._apply()
        self.epoch_lr = self.optimizer.lr

    def on_batch_end(self, batch, logs):
        self._apply()

    def on_epoch_end(self, epoch, logs):
        logs["lr"] = self.epoch_lr  # the rate the epoch's first step used (metrics.jsonl records it)
        self.schedule.epoch_end(logs)
        self._apply()
