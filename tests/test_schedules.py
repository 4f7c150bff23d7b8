"""Learning-rate schedules against torch.optim.lr_scheduler, early stopping, gradient clipping."""

import numpy as np
import pytest

import numdl
from numdl import schedules

torch = pytest.importorskip("torch")
STEPS_PER_EPOCH, EPOCHS, BASE = 4, 6, 0.1


def _ours(schedule):
    return [schedule.lr_at(step, STEPS_PER_EPOCH, STEPS_PER_EPOCH * EPOCHS, BASE)
            for step in range(STEPS_PER_EPOCH * EPOCHS)]


def _theirs(make, per_step):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    scheduler = make(opt)
    lrs = []
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step or (step + 1) % STEPS_PER_EPOCH == 0:
            scheduler.step()
    return lrs


@pytest.mark.parametrize("ours, make, per_step", [
    (schedules.StepDecay(2, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5), False),
    (schedules.MultiStepDecay([1, 4], 0.3), lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 4], 0.3), False),
    (schedules.ExponentialDecay(0.8), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8), False),
    (schedules.Cosine(), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, STEPS_PER_EPOCH * EPOCHS), True),
    (schedules.OneCycle(1.0), lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1.0, total_steps=STEPS_PER_EPOCH * EPOCHS),
     True),
], ids=["step", "multistep", "exponential", "cosine", "one_cycle"])
def test_schedule_matches_torch(ours, make, per_step):
    np.testing.assert_allclose(_ours(ours), _theirs(make, per_step), rtol=1e-9, atol=1e-12)


def test_cosine_warmup_rises_linearly_then_decays():
    lrs = _ours(schedules.Cosine(warmup_epochs=1))
    np.testing.assert_allclose(lrs[:4], [0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_reduce_on_plateau_matches_torch_and_round_trips_its_state():
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7, 0.8, 0.9]
    ours = schedules.ReduceOnPlateau(monitor="test_loss", factor=0.5, patience=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2, threshold=0)
    for value in losses:
        ours.epoch_end({"test_loss": value})
        theirs.step(value)
        assert ours.lr_at(0, 1, 1, BASE) == pytest.approx(opt.param_groups[0]["lr"])
    clone = schedules.ReduceOnPlateau(monitor="test_loss", factor=0.5, patience=2)
    clone.load_state(ours.state())
    assert clone.lr_at(0, 1, 1, BASE) == ours.lr_at(0, 1, 1, BASE)


def test_clip_gradients_matches_torch():
    model = numdl.Sequential([numdl.Linear(4), numdl.Tanh(), numdl.Linear(2)], input_shape=(3,), dtype="float64")
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape) * 10
    tensors = [torch.nn.Parameter(torch.zeros(p.grad.shape, dtype=torch.float64)) for p in model.parameters()]
    for t, p in zip(tensors, model.parameters()):
        t.grad = torch.tensor(p.grad.copy())
    expected = torch.nn.utils.clip_grad_norm_(tensors, 1.0).item()
    assert model.clip_gradients(1.0) == pytest.approx(expected)
    for t, p in zip(tensors, model.parameters()):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_early_stopping_and_schedule_from_a_config(tmp_path):
    from helpers import write_fashion_like
    from numdl import config, train

    data = write_fashion_like(tmp_path / "data", n_train=200, n_test=50)
    lines = []
    resolved = config.resolve(None, [f"data.path='{data}'", "train.epochs=30", "train.early_stopping_patience=2",
                                     "train.monitor='test_loss'", "schedule.type='exponential'", "schedule.gamma=0.5"])
    summary = train.run(resolved, tmp_path / "run", on_line=lines.append)
    assert summary["epochs"] < 30 and any(line.startswith("early stopping: test_loss") for line in lines)
    import json

    rates = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rates[:3] == pytest.approx([1e-3, 5e-4, 2.5e-4])  # each epoch's rate is recorded with its metrics


def test_unknown_schedule_lists_the_available_ones():
    from numdl import config

    with pytest.raises(numdl.RegistryError, match="schedule.type: unknown schedule 'linear'; available: constant, cosine"):
        config.resolve(None, ["schedule.type='linear'"])
