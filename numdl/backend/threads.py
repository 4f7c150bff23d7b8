"""``--threads auto`` (numdl train's default): the thread count chosen by timing, while training runs.

On an idle machine every core is fastest; with another busy process on the cores, a split product
waits for its slowest thread (one that shares a core) and the BLAS's idle threads spin, so one
thread is faster (measured here: numdl's MLP at two threads fell to a third of its idle speed while
one thread kept most of it). Which holds can change at any moment, so ``ThreadChooser`` probes:
it runs a few training steps at each candidate count in turn (alternating, so that a change of
load during a probe hits both), keeps the count with the higher throughput for a while, and probes
again. Holds lengthen while the same count keeps winning, so that an unchanging machine spends
little time probing. Time here is training time, the sum of the recorded steps' seconds: an
evaluation, a checkpoint or another program's turn between steps does not end a hold (the bench's
contention suite interleaves auto epochs with PyTorch's and JAX's; on the wall clock every auto
epoch began with a probe, whose every-core steps under load cost ~20 ordinary ones each).

A switch changes how some products split their sums, so a run under ``auto`` can differ from the
same run again in the last bits of its weights; ``--threads N`` keeps a run bit for bit repeatable.
"""

#: Each probe slot lasts at least this long and MIN_PROBE_STEPS steps, after one discarded step
#: (the first step after a switch wakes or parks threads).
PROBE_SECONDS = 0.03
MIN_PROBE_STEPS = 3
#: Between probes the chosen count runs alone for HOLD_SECONDS, doubled each time the same count
#: wins again up to MAX_HOLD_SECONDS, and never less than HOLD_PER_PROBE times the last probe's time.
HOLD_SECONDS = 1.0
MAX_HOLD_SECONDS = 16.0
HOLD_PER_PROBE = 20
#: The candidates' order in one probe (indexes into counts): one thread first, so that on a loaded
#: machine the every-core slot has a rate to fall short of after a single step (CLEARLY_SLOWER).
PROBE_ORDER = (1, 0, 1, 0)
#: A slot whose throughput so far is below this fraction of the other candidate's ends the probe at
#: once: on a loaded machine the spinning count runs a step several times slower, and each of its
#: probe steps costs that.
CLEARLY_SLOWER = 0.5


class ThreadChooser:
    """Picks one of ``counts`` (e.g. (cores, 1)) by measured throughput; ``apply(count)`` sets a
    count. Call ``record(samples, seconds)`` after every training step."""

    def __init__(self, counts, apply):
        self.counts, self.apply = tuple(counts), apply
        self.trained = 0.0  # seconds of training steps recorded: the chooser's clock
        self.chosen = 0  # index into counts
        self.hold = HOLD_SECONDS
        self.history = []  # (training time, the chosen count) after each probe: what tests and reports read
        self._start_probe()

    @property
    def count(self):
        """The count in use now."""
        return self.counts[self._current]

    def _start_probe(self):
        self._slot = 0
        self._rates = [[0.0, 0.0] for _ in self.counts]  # samples and seconds per candidate
        self._probe_started = self.trained
        self._enter_slot()

    def _enter_slot(self):
        self._current = PROBE_ORDER[self._slot]
        self._skip, self._steps, self._samples, self._seconds = 1, 0, 0, 0.0
        self.apply(self.counts[self._current])

    def record(self, samples, seconds):
        self.trained += seconds
        if self._slot is None:  # holding
            if self.trained >= self._hold_until:
                self._start_probe()
            return
        if self._skip:  # not counted, but a step this slow (even waking threads) decides at once
            self._skip -= 1
            if self._clearly_slower(samples, seconds):
                self._finish_probe(1 - self._current)
            return
        self._steps += 1
        self._samples += samples
        self._seconds += seconds
        if self._clearly_slower(self._samples, self._seconds):
            self._finish_probe(1 - self._current)
            return
        if self._steps < MIN_PROBE_STEPS or self._seconds < PROBE_SECONDS:
            return
        totals = self._rates[self._current]
        totals[0] += self._samples
        totals[1] += self._seconds
        self._slot += 1
        if self._slot < len(PROBE_ORDER):
            self._enter_slot()
            return
        rates = [samples / seconds if seconds > 0 else 0.0 for samples, seconds in self._rates]
        self._finish_probe(max(range(len(self.counts)), key=lambda i: rates[i]))

    def _clearly_slower(self, samples, seconds):
        """Whether ``samples`` in ``seconds`` at the current count fall far below the other
        candidate's rate in this probe (two candidates)."""
        other_samples, other_seconds = self._rates[1 - self._current]
        return other_seconds > 0 and samples * other_seconds < CLEARLY_SLOWER * other_samples * seconds

    def _finish_probe(self, best):
        self.hold = min(self.hold * 2, MAX_HOLD_SECONDS) if best == self.chosen else HOLD_SECONDS
        now = self.trained
        self.hold = max(self.hold, HOLD_PER_PROBE * (now - self._probe_started))
        self.chosen = best
        self._slot = None
        self._current = best
        self._hold_until = now + self.hold
        self.history.append((now, self.counts[best]))
        self.apply(self.counts[best])
