"""Checkpoints: round trips, atomic writes, refusal of crafted files, mismatch reports."""

import json
import os
import pickle
import struct

import numpy as np
import pytest

import numdl
from numdl import checkpoint
from numdl.errors import CheckpointError


def _model(seed=0, hidden=8):
    model = numdl.Sequential([numdl.Flatten(), numdl.Linear(hidden), numdl.BatchNorm1d(), numdl.ReLU(),
                              numdl.Dropout(0.3), numdl.Linear(3)], input_shape=(2, 3), seed=seed)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-2))


def _trained(steps=3):
    model = _model()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        model.train_step(rng.standard_normal((8, 2, 3)).astype(np.float32), rng.integers(0, 3, 8))
    return model


def test_round_trip_restores_weights_state_optimizer_and_random_streams(tmp_path):
    model = _trained()
    path = model.save(tmp_path / "m.safetensors", meta={"epoch": 2})
    clone = _model(seed=5)
    meta = clone.load_weights(path)
    assert meta["epoch"] == 2 and meta["layers"][1] == "linear"
    for (name, a), b in zip(model.named_parameters().items(), clone.parameters()):
        np.testing.assert_array_equal(a.value, b.value, err_msg=name)
    np.testing.assert_array_equal(model.layers[2].state["running_var"], clone.layers[2].state["running_var"])
    assert clone.optimizer.steps == 3 and clone.layers[4].get_rng_state() == model.layers[4].get_rng_state()
    x, y = np.ones((4, 2, 3), np.float32), np.array([0, 1, 2, 0])
    assert model.train_step(x, y)[0] == clone.train_step(x, y)[0]  # continues identically
    np.testing.assert_array_equal(model.parameters()[0].value, clone.parameters()[0].value)


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _trained()
    path = model.save(tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    model.train_step(np.ones((4, 2, 3), np.float32), np.array([0, 1, 2, 0]))
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*m.safetensors: disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no partial temporary left
    _model().load_weights(path)
    model.save(path)  # the next save cleans the stale temporary
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _header(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _rebuild(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("craft, message", [
    (lambda raw: pickle.dumps({"weights": [1, 2, 3]}), "header length .* runs past the end"),
    (lambda raw: raw[:-5], "trailing bytes|lies outside"),
    (lambda raw: struct.pack("<Q", 10**9) + raw[8:], "runs past the end of the file"),
    (lambda raw: raw + b"\x00" * 8, "8 trailing bytes after the last tensor"),
    (lambda raw: b"", "truncated checkpoint"),
])
def test_crafted_files_are_refused(tmp_path, craft, message):
    path = _trained().save(tmp_path / "m.safetensors")
    path.write_bytes(craft(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        _model().load_weights(path)


def test_overlapping_offsets_and_mismatched_shapes_are_refused(tmp_path):
    path = _trained().save(tmp_path / "m.safetensors")
    header, data = _header(path.read_bytes())
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    overlapped = json.loads(json.dumps(header))
    first, second = overlapped[names[0]], overlapped[names[1]]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] +
                              second["data_offsets"][1] - second["data_offsets"][0]]
    path.write_bytes(_rebuild(overlapped, data))
    with pytest.raises(CheckpointError, match="overlaps|unused bytes|lies outside|does not match"):
        _model().load_weights(path)
    reshaped = json.loads(json.dumps(header))
    reshaped[names[0]]["shape"] = [d + 1 for d in reshaped[names[0]]["shape"]]
    path.write_bytes(_rebuild(reshaped, data))
    with pytest.raises(CheckpointError, match="does not match its .* bytes"):
        _model().load_weights(path)


def test_mismatched_model_lists_every_problem(tmp_path):
    path = _trained().save(tmp_path / "m.safetensors")
    other = numdl.Sequential([numdl.Flatten(), numdl.Linear(5), numdl.ReLU(), numdl.Linear(3)], input_shape=(2, 3))
    with pytest.raises(CheckpointError) as info:
        other.load_weights(path)
    text = str(info.value)
    assert "wrong shape: param/1.linear.bias (8,) vs model (5,), param/1.linear.weight (8, 6) vs model (5, 6)" in text
    assert "unexpected:" in text and "state/2.batchnorm1d.running_mean" in text and "missing: param/3.linear.bias" in text


def test_checkpoint_code_has_no_pickle_load_path():
    import numdl as package

    root = os.path.dirname(package.__file__)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name)).read()
                assert "pickle.load" not in text and "allow_pickle=True" not in text, name


def test_checkpoint_metadata_names_the_items_and_their_sources(tmp_path):
    path = _trained().save(tmp_path / "m.safetensors")
    meta = checkpoint.read_checkpoint(path)[1]
    assert meta["format_version"] == checkpoint.FORMAT_VERSION and meta["numdl_version"] == numdl.__version__
    assert meta["registered_by"]["layer"]["batchnorm1d"] == "numdl"
    assert meta["registered_by"]["optimizer"] == {"adam": "numdl"}
