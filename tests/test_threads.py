"""--threads auto (numdl.backend.threads.ThreadChooser): the faster count is kept, probes alternate
and recur, a fixed count ends it; the CLI accepts auto and refuses other words in one line."""

import numpy as np
import pytest
from click.testing import CliRunner

from numdl.backend import threads as threads_module
from numdl.backend.threads import ThreadChooser
from numdl.cli import cli


class FakeMachine:
    """A clock (the training time the chooser counts) and a step time per thread count (seconds per
    64-sample step) that a test can change, as load on the machine would."""

    def __init__(self, step_seconds):
        self.now, self.step_seconds, self.count = 0.0, dict(step_seconds), None
        self.applied = []

    def apply(self, count):
        self.count = count
        self.applied.append(count)

    def steps(self, chooser, n):
        """Run n steps at whatever count the chooser set; the per-count step counts."""
        used = {}
        for _ in range(n):
            seconds = self.step_seconds[self.count]
            self.now += seconds
            used[self.count] = used.get(self.count, 0) + 1
            chooser.record(64, seconds)
        return used


def test_an_idle_machine_keeps_every_core_and_probes_less_and_less():
    machine = FakeMachine({2: 0.001, 1: 0.0018})
    chooser = ThreadChooser((2, 1), machine.apply)
    assert machine.applied[0] == 1  # the probe starts with one thread (see PROBE_ORDER)
    used = machine.steps(chooser, 200_000)  # 200 s at two threads
    assert chooser.count == 2 and all(count == 2 for _, count in chooser.history)
    assert used[1] / sum(used.values()) < 0.01  # the one-thread probes: under 1% of the steps
    gaps = np.diff([t for t, _ in chooser.history])
    assert gaps[-1] >= threads_module.MAX_HOLD_SECONDS > gaps[0]  # holds lengthened while 2 kept winning



def test_holds_count_the_recorded_steps_seconds_not_the_time_between_them():
    # Time between steps (an evaluation, a checkpoint, the bench's other runs) does not end a hold:
    # the chooser's clock is the sum of the seconds it was told about.
    machine = FakeMachine({2: 0.001, 1: 0.0018})
    chooser = ThreadChooser((2, 1), machine.apply)
    while not chooser.history:
        machine.steps(chooser, 1)
    hold_left = chooser._hold_until - chooser.trained
    assert hold_left >= threads_module.HOLD_SECONDS and chooser.trained == pytest.approx(machine.now)
    applied = len(machine.applied)
    steps = int(hold_left / 0.001) - 1  # just short of the hold, at the held count
    machine.steps(chooser, steps)
    assert len(machine.applied) == applied  # no probe yet
    machine.steps(chooser, 3)
    assert len(machine.applied) > applied  # the hold's training time is up: a probe switched counts


def test_a_clearly_slower_count_ends_the_probe_after_one_step():
    """Loaded: every core runs a step 20 times slower; the probe takes one such step, not a slot."""
    machine = FakeMachine({2: 0.03, 1: 0.0015})
    chooser = ThreadChooser((2, 1), machine.apply)
    used = {}
    while not chooser.history:
        for count, n in machine.steps(chooser, 1).items():
            used[count] = used.get(count, 0) + n
    assert chooser.count == 1 and used[2] == 1


def test_load_arriving_switches_to_one_thread_and_leaving_switches_back():
    machine = FakeMachine({2: 0.001, 1: 0.0018})
    chooser = ThreadChooser((2, 1), machine.apply)
    machine.steps(chooser, 30_000)
    assert chooser.count == 2
    machine.step_seconds = {2: 0.0045, 1: 0.002}  # a busy process arrives: two threads collapse
    start = machine.now
    used = machine.steps(chooser, 20_000)
    assert chooser.count == 1
    switched = next(t for t, count in chooser.history if t > start and count == 1)
    assert switched - start <= threads_module.MAX_HOLD_SECONDS + 1  # within one hold and a probe
    assert used[1] > 0.8 * sum(used.values())
    machine.step_seconds = {2: 0.001, 1: 0.0018}  # it leaves
    machine.steps(chooser, 40_000)
    assert chooser.count == 2


def test_alternating_probes_see_a_change_of_load_within_a_probe_on_both_sides():
    machine = FakeMachine({2: 0.001, 1: 0.0018})
    chooser = ThreadChooser((2, 1), machine.apply)
    order = []
    while not chooser.history:
        order.append(machine.count)
        machine.steps(chooser, 1)
    switches = [count for i, count in enumerate(order) if i == 0 or order[i - 1] != count]
    assert switches == [1, 2, 1, 2]


def test_a_fixed_count_ends_auto_and_auto_needs_more_than_one_core(monkeypatch):
    import numba

    from numdl.backend import get_ops
    from numdl.backend.cpu import limit_threads

    ops = get_ops("cpu")
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    limit_threads("auto")
    assert ops.thread_chooser is None  # one core: nothing to choose
    monkeypatch.undo()
    try:
        limit_threads("auto")
        if numba.config.NUMBA_NUM_THREADS > 1:
            assert ops.thread_chooser is not None and ops.thread_chooser.counts == (numba.config.NUMBA_NUM_THREADS, 1)
    finally:
        limit_threads(numba.config.NUMBA_NUM_THREADS)
    assert ops.thread_chooser is None


def test_training_under_auto_records_its_steps(monkeypatch):
    import numba

    import numdl
    from numdl.backend import get_ops, threads
    from numdl.backend.cpu import limit_threads

    # probe slots of 1 ms of training time: at the usual 30 ms, four slots took most of this run's
    # ~5,000 steps of ~25 us, and a run whose steps went faster finished none (a failure for no fault)
    monkeypatch.setattr(threads, "PROBE_SECONDS", 0.001)

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: auto has nothing to choose")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2048, 20)).astype(np.float32), rng.integers(0, 3, 2048)
    model = numdl.Sequential([numdl.Linear(64), numdl.ReLU(), numdl.Linear(3)], input_shape=(20,), seed=0)
    model.compile(numdl.CrossEntropy(), numdl.Adam())
    limit_threads("auto")
    try:
        chooser = get_ops("cpu").thread_chooser
        model.fit(x, y, epochs=20, batch_size=8, verbose=0)
        assert chooser.history, "a probe finished within 5120 steps"
        assert chooser.count in chooser.counts
    finally:
        limit_threads(numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_a_bad_thread_count_is_one_line(value):
    result = CliRunner().invoke(cli, ["--threads", value, "train", "--help"])
    assert result.exit_code == 2 and "expected a thread count >= 1 or 'auto'" in result.output
    assert "Traceback" not in result.output


def test_auto_is_accepted_on_the_command_line_and_in_the_environment():
    from numdl.backend import get_ops

    try:
        for args, env in ((["--threads", "auto"], {}), ([], {"NUMDL_THREADS": "auto"})):
            result = CliRunner().invoke(cli, [*args, "train", "--help"], env=env)
            assert result.exit_code == 0, result.output
    finally:
        import numba

        from numdl.backend.cpu import limit_threads

        limit_threads(numba.config.NUMBA_NUM_THREADS)
    assert get_ops("cpu").thread_chooser is None


def test_one_thread_and_every_core_train_to_the_same_bits():
    # --threads auto moves between one thread and every core mid-run, so a step must compute the same
    # bits on either: the embedded default's MLP (its step in one kernel call, Adam split over the
    # threads in whole vector chunks) after 50 steps. Shares that ignored the vector chunks moved a
    # bias's last bit at step 30 of this run.
    import numba

    from numdl import config
    from numdl.backend.cpu import limit_threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: nothing to compare")
    rng = np.random.default_rng(0)
    x, y = rng.random((64 * 50, 28, 28), dtype=np.float32), rng.integers(0, 10, 64 * 50)
    trained = []
    try:
        for count in (1, numba.config.NUMBA_NUM_THREADS):
            limit_threads(count)
            model = config.build_model(config.resolve(None, []), (28, 28))
            for step in range(50):
                model.train_step(x[step * 64:(step + 1) * 64], y[step * 64:(step + 1) * 64])
            trained.append(np.concatenate([p.value.reshape(-1) for p in model.parameters()]))
    finally:
        limit_threads(numba.config.NUMBA_NUM_THREADS)
    assert trained[0].size == 109_386  # odd: a half share is not a whole number of vectors
    np.testing.assert_array_equal(trained[0], trained[1])
