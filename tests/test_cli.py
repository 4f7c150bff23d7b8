import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers import write_fashion_like
from numdl.cli import cli


def test_help_texts_are_complete():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0 and "train" in top.output
    train = runner.invoke(cli, ["train", "--help"])
    assert train.exit_code == 0
    for word in ("CONFIG", "--set", "--out", "784-128-64-10"):
        assert word in train.output
    assert runner.invoke(cli, ["--version"]).output.startswith("numdl, version")


def test_tiny_training_run_writes_the_three_files(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=100)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--set", f"data.path='{data}'", "--set", "train.epochs=3",
                                      "--set", "train.batch_size=32", "--set", "data.validation_split=0.1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "epoch 3/3" in result.output and "samples/s" in result.output and "test_acc" in result.output
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "validation_accuracy",
                "epoch_seconds", "samples_per_second"):
        assert key in lines[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9
    assert 0 < summary["first_step_seconds"] < 600 and "first training step done" in result.output
    assert len(summary["report"]["confusion_matrix"]) == 10
    assert set(summary["report"]["per_class"]["Trouser"]) == {"precision", "recall", "f1", "support"}
    assert "train.epochs" not in (out / "config.toml").read_text()
    assert "epochs = 3" in (out / "config.toml").read_text()


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "numdl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, NUMDL_DATA="/nonexistent"))


@pytest.mark.parametrize("args, needle", [
    (["--set", "optimizer.lr=abc"], "optimizer.lr: expected a number"),
    (["--set", "model.layers.0.type=nope"], "unknown layer 'nope'; available:"),
])
def test_config_errors_are_one_line_and_exit_2(args, needle, tmp_path):
    result = _run_cli("train", *args, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr and "Traceback" not in result.stderr


def test_missing_data_is_one_line_and_non_zero(tmp_path):
    result = _run_cli("train", "--set", f"data.path='{tmp_path}'", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Fashion-MNIST files not found") and result.stderr.count("\n") == 1


def test_plugins_command_lists_items_by_kind_with_their_source():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "layers:" and "schedules:" in lines
    assert any(line.split() == ["lstm", "numdl"] for line in lines)


def test_warmup_then_threads_option_runs_single_threaded(tmp_path):
    """`numdl warmup` loads the config's kernels; `numdl --threads 1` sets the thread pools' limits
    before any kernel loads (checked in a fresh process: the BLAS reads them when it loads)."""
    data = write_fashion_like(tmp_path / "data", n_train=64, n_test=32)
    warm = CliRunner().invoke(cli, ["warmup", "--set", f"data.path='{data}'"])
    assert warm.exit_code == 0, warm.output
    assert "kernels of this config are ready in" in warm.output
    code = ("import os, sys; from numdl.cli import cli\n"
            "try:\n    cli(['--threads', '1', 'warmup', '--set', sys.argv[1]])\n"
            "except SystemExit as done:\n    assert done.code in (0, None), done.code\n"
            "from threadpoolctl import threadpool_info\n"
            "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['NUMBA_NUM_THREADS'],\n"
            "      {p['num_threads'] for p in threadpool_info() if p['internal_api'] == 'openblas'})")
    result = subprocess.run([sys.executable, "-c", code, f"data.path='{data}'"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "1 1 {1}"
    bad = CliRunner().invoke(cli, ["--threads", "0", "plugins"])
    assert bad.exit_code == 2 and "0" in bad.output


def test_start_up_counts_from_the_command_when_numdl_was_imported_long_before(monkeypatch):
    """A fresh `numdl` process counts start-up from numdl's import (imports included); a command run
    in a process that imported numdl long before (this test session: CI measured 607 s) from its start."""
    import time

    import numdl
    from numdl.train import seconds_since_start

    now = time.time()
    monkeypatch.setattr(numdl, "IMPORTED_AT", now - 2.0)
    monkeypatch.setattr(numdl, "COMMAND_STARTED_AT", now - 1.5)
    assert 1.9 < seconds_since_start() < 60  # fresh: from the import
    monkeypatch.setattr(numdl, "IMPORTED_AT", now - 1000.0)
    monkeypatch.setattr(numdl, "COMMAND_STARTED_AT", now - 1.0)
    assert 0.9 < seconds_since_start() < 60  # long-lived: from the command
    monkeypatch.setattr(numdl, "COMMAND_STARTED_AT", None)
    assert seconds_since_start() > 999  # no command (a library call): from the import
