"""numdl check: passes numdl-extras, fails a plugin with a wrong backward naming the item and the
parameter, and reports a plugin without CUDA kernels as CPU-only."""

import sys

import pytest
from click.testing import CliRunner

from numdl import plugins
from numdl.cli import cli

BROKEN = '''
import numpy as np
from numba import njit
import numdl
from numdl.layers import Layer

@njit(cache=True)
def scale_forward_cpu(out, x, weight):
    for i in range(x.size):
        out[i] = x[i] * weight[0]

class BrokenScale(Layer):
    name = "broken_scale"

    def setup(self, input_shape, rng):
        self.add_param("weight", np.array([1.5]))
        return input_shape

    def forward(self, x, training=False):
        self._x, out = x, self.buffer("out", x.shape)
        self.ops.run_kernels(scale_forward_cpu, None, x.size, out.reshape(-1), x.reshape(-1),
                             self.params["weight"].value)
        return out

    def backward(self, dout):
        self.params["weight"].grad[0] = float((dout * self._x).sum()) * 2.0  # wrong: twice the gradient
        return dout * self.params["weight"].value[0]

@numdl.hookimpl
def numdl_register_layers():
    return [BrokenScale]
'''


# A per-feature scale whose CUDA twin reads weight[0] for every feature: with the layer's constant
# initial weights the twins agree; only random parameters tell them apart.
WRONG_TWIN = '''
import numpy as np
from numba import njit
import numdl
from numdl.kernels.common import cuda, cuda_kernel
from numdl.layers import Layer

@njit(cache=True)
def feature_scale_forward_cpu(out, x, weight):
    for i in range(x.size):
        out[i] = x[i] * weight[i % weight.size]

@cuda_kernel
def feature_scale_forward_cuda(out, x, weight):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = x[i] * weight[0]

class FeatureScale(Layer):
    name = "feature_scale"

    def setup(self, input_shape, rng):
        self.add_param("weight", np.ones(input_shape[-1]))
        return input_shape

    def forward(self, x, training=False):
        out = self.buffer("out", x.shape)
        self.ops.run_kernels(feature_scale_forward_cpu, feature_scale_forward_cuda, x.size, self.ops.flat(out),
                             self.ops.flat(x), self.params["weight"].value)
        return out

    def backward(self, dout):
        return dout

@numdl.hookimpl
def numdl_register_layers():
    return [FeatureScale]
'''


def _install(tmp_path, monkeypatch, module, source, package):
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[numdl]\nplugin = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(plugins, "_manager", None)
    monkeypatch.setattr(plugins, "_registry", None)


def test_the_cuda_twin_is_compared_on_random_parameters(tmp_path, monkeypatch):
    pytest.importorskip("numba_cuda")
    from numdl import check

    _install(tmp_path, monkeypatch, "wrong_twin_plugin", WRONG_TWIN, "wrong-twin-plugin")
    try:
        entry = plugins.registry().items["layer"]["feature_scale"]
        with pytest.raises(AssertionError, match="CUDA differs from CPU in: out"):
            check.twin_check("layer", entry)
    finally:
        sys.modules.pop("wrong_twin_plugin", None)


def test_cuda_checks_are_skipped_with_a_reason_without_numba_cuda(monkeypatch):
    pytest.importorskip("numdl_extras")
    from numdl import check

    monkeypatch.setattr(check, "cuda_checks_available", lambda: False)
    rows = check.run_checks({"numdl-extras"})
    for _, _, _, results in rows:
        for label in ("cuda twin", "ptx"):
            assert results[label] == (True, check.CUDA_SKIP)


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    (tmp_path / "broken_numdl_plugin.py").write_text(BROKEN)
    dist = tmp_path / "broken_numdl_plugin-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-numdl-plugin\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[numdl]\nbroken = broken_numdl_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(plugins, "_manager", None)
    monkeypatch.setattr(plugins, "_registry", None)
    yield
    sys.modules.pop("broken_numdl_plugin", None)


def test_check_fails_a_wrong_backward_naming_item_and_parameter(broken_plugin):
    result = CliRunner().invoke(cli, ["check", "broken-numdl-plugin"])
    assert result.exit_code == 1, result.output
    assert "layer broken_scale  [broken (broken-numdl-plugin 0.0.1)]" in result.output
    gradients = next(line for line in result.output.splitlines() if "gradients" in line)
    assert "FAIL" in gradients and "parameter 'weight'" in gradients
    assert "CPU-only" in next(line for line in result.output.splitlines() if "cuda twin" in line)
    assert "CPU-only" in next(line for line in result.output.splitlines() if "ptx" in line)
    assert result.output.strip().endswith("numdl check: FAILED")


def test_check_passes_numdl_extras():
    pytest.importorskip("numdl_extras")
    result = CliRunner().invoke(cli, ["check", "numdl-extras"])
    assert result.exit_code == 0, result.output
    for item in ("layer swish", "loss focal", "optimizer lion"):
        assert item in result.output
    assert "FAIL" not in result.output and "numdl check: all checks passed" in result.output


def test_check_with_nothing_selected_is_an_error():
    result = CliRunner().invoke(cli, ["check", "no-such-package"])
    assert result.exit_code == 2 and "nothing to check for no-such-package" in result.output


def test_plugins_lists_the_three_extras_items_with_their_package():
    pytest.importorskip("numdl_extras")
    result = CliRunner().invoke(cli, ["plugins"])
    listed = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    for name in ("swish", "focal", "lion"):
        assert "numdl-extras 0.1.0" in listed[name]


def test_check_runs_merge_layers_and_losses_with_their_own_target_kinds():
    """A layer joining several tensors is checked inside a graph model (check_input_shape a list of
    shapes); a loss over (N, C, H, W) logits or boxes declares its prediction shape and targets."""
    from numdl import check

    rows = {name: results for _, name, _, results in check.run_checks(["concat", "crop2d", "centernet",
                                                                           "pixel_cross_entropy"])}
    assert set(rows) == {"concat", "crop2d", "centernet", "pixel_cross_entropy"}
    for name, results in rows.items():
        failed = {label: text for label, (passed, text) in results.items()
                  if not passed and not text.startswith("skipped")}
        assert not failed, (name, failed)
