"""Training runs are interruptible: SIGKILL mid-epoch, resume, and the final weights are identical;
a diverging run stops with the NaN message and leaves only finite checkpoints; eval and predict."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import write_fashion_like


def _train(*args, cwd):
    env = dict(os.environ, NUMDL_DATA="/nonexistent", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "numdl.cli", "train", "--quiet", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CHAIN = ("model.layers=[{type='flatten'}, {type='linear', out_features=512}, {type='relu'}, {type='dropout', p=0.2}, "
         "{type='linear', out_features=10}]")
# The same with a skip branch joined by concat, a layer used twice and batch norm: a graph model.
GRAPH = ("model.nodes=[{name='flat', type='flatten', inputs=['input']}, {name='h', type='linear', out_features=512}, "
         "{name='bn', type='batchnorm1d'}, {name='act', type='relu'}, {name='drop', type='dropout', p=0.2}, "
         "{name='skip', type='linear', out_features=64, inputs=['flat']}, {name='join', type='concat', "
         "inputs=['drop', 'skip']}, {name='out', type='linear', out_features=10}, {name='out_again', type='shared', "
         "layer='out', inputs=['join']}, {name='sum', type='add', inputs=['out', 'out_again']}]")


# A VAE: images as targets, gaussian_sample's noise stream and its KL term (summed per epoch in the
# checkpoint's fit position) must resume exactly too.
VAE = ("model.layers=[{type='flatten'}, {type='linear', out_features=64}, {type='relu'}, "
       "{type='linear', out_features=16}, {type='gaussian_sample'}, {type='linear', out_features=784}, "
       "{type='reshape', shape=[1, 28, 28]}]")
VAE_DATA = ["--set", "data.target='image'", "--set", "loss.type='bce_with_logits'", "--set",
            "loss.reduction='batchmean'", "--set", "train.monitor='test_loss'"]


def _settings(data, model=CHAIN):
    settings = ["--set", f"data.path='{data}'", "--set", "train.epochs=3", "--set", "train.batch_size=16",
                "--set", "train.checkpoint_every=5", "--set", model,
                "--set", "data.crop_padding=0" if model == VAE else "data.crop_padding=1",
                "--set", "schedule.type='cosine'"]
    return settings + (VAE_DATA if model == VAE else [])


@pytest.mark.parametrize("model", [CHAIN, GRAPH, VAE], ids=["sequential", "graph", "vae"])
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, model):
    data = write_fashion_like(tmp_path / "data", n_train=800, n_test=100)
    reference = _train(*_settings(data, model), "--out", str(tmp_path / "reference"), cwd=tmp_path)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())["weights_sha256"]

    run = tmp_path / "interrupted"
    victim = _train(*_settings(data, model), "--out", str(run), cwd=tmp_path)
    latest = run / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        if (run / "checkpoints" / "epoch-0001.safetensors").exists() and latest.exists():
            from numdl.checkpoint import read_checkpoint

            try:
                position = read_checkpoint(latest)[1]["fit_position"]
            except Exception:
                position = None
            if position and position["epoch"] == 2 and position["step"] >= 10:
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-epoch"
    assert not (run / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "numdl.cli", "train", "--quiet", "--resume", str(run)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 2, step" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights_sha256"] == expected
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    if model == VAE:  # the resumed epoch's reported terms are the uninterrupted run's
        ours = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        theirs = [json.loads(l) for l in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
        for key in ("train_loss", "train_kl", "train_bce_with_logits", "test_kl"):
            assert [e[key] for e in ours] == pytest.approx([e[key] for e in theirs], rel=1e-12), key


def test_divergence_stops_with_the_nan_message_and_finite_checkpoints(tmp_path):
    data = write_fashion_like(tmp_path / "data", n_train=400, n_test=100)
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "numdl.cli", "train", "--quiet", "--set", f"data.path='{data}'",
                             "--set", "train.epochs=5", "--set", "optimizer.type='sgd'", "--set", "optimizer.lr=1e4",
                             "--set", "data.normalize='none'", "--set", "train.checkpoint_every=3",
                             "--set", "train.divergence_factor=0", "--out", str(run)],  # the NaN guard, not the loss one
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "error: training diverged at epoch" in result.stderr
    assert "step" in result.stderr and ("model.layers." in result.stderr or "gradient of" in result.stderr)
    for path in (run / "checkpoints").glob("*.safetensors"):
        for name, array in load_file(str(path)).items():
            assert np.isfinite(array).all(), (path.name, name)


def test_eval_and_predict_from_a_checkpoint(tmp_path):
    from numdl.data import write_idx

    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=100)
    run = tmp_path / "run"
    trained = subprocess.run([sys.executable, "-m", "numdl.cli", "train", "--quiet", "--set", f"data.path='{data}'",
                              "--set", "train.epochs=2", "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((run / "summary.json").read_text())
    best = run / "checkpoints" / "best.safetensors"
    evaluated = subprocess.run([sys.executable, "-m", "numdl.cli", "eval", str(best)], capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"test_acc {summary['test_accuracy']:.4f}" in evaluated.stdout
    from numdl.data import read_idx

    images = read_idx(data / "t10k-images-idx3-ubyte.gz")[:5]
    np.save(tmp_path / "five.npy", images)
    write_idx(tmp_path / "five.idx", images)
    for source in ("five.npy", "five.idx"):
        predicted = subprocess.run([sys.executable, "-m", "numdl.cli", "predict", str(best), str(tmp_path / source)],
                                   capture_output=True, text=True)
        assert predicted.returncode == 0, predicted.stderr
        lines = predicted.stdout.strip().splitlines()
        assert lines[0].startswith("index,class,p0") and len(lines) == 6
        labels = read_idx(data / "t10k-labels-idx1-ubyte.gz")[:5]
        assert [int(l.split(",")[1]) for l in lines[1:]] == labels.tolist()
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)
    refused = subprocess.run([sys.executable, "-m", "numdl.cli", "eval", str(pickled)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "header length" in refused.stderr
