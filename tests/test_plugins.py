"""Plugins: an item registered through the plugin manager is usable by name in a config and trains;
entry points are discovered; duplicate names and unknown names are clear errors."""

import sys
import textwrap
import types

import numpy as np
import pytest

import numdl
from helpers import write_fashion_like
from numdl import config, plugins, train
from numdl.errors import RegistryError
from numdl.layers import Layer


def _scaled_tanh_plugin():
    """A plugin module with its own @njit kernel pair, as a third-party package would ship it."""
    from numba import njit

    @njit(cache=False)
    def scaled_tanh_forward_cpu(out, x, scale):
        for i in range(x.size):
            out[i] = scale * np.tanh(x[i])

    @njit(cache=False)
    def scaled_tanh_backward_cpu(dx, dout, out, scale):
        for i in range(out.size):
            t = out[i] / scale
            dx[i] = dout[i] * scale * (1.0 - t * t)

    class ScaledTanh(Layer):
        name = "scaled_tanh"

        def __init__(self, scale: float = 1.7159):
            super().__init__()
            self.scale = scale

        def forward(self, x, training=False):
            self._out = self.buffer("out", x.shape)
            scaled_tanh_forward_cpu(self._out.reshape(-1), x.reshape(-1), self.scale)
            return self._out

        def backward(self, dout):
            dx = self.buffer("dx", dout.shape)
            scaled_tanh_backward_cpu(dx.reshape(-1), dout.reshape(-1), self._out.reshape(-1), self.scale)
            return dx

    module = types.ModuleType("scaled_tanh_plugin")

    @numdl.hookimpl
    def numdl_register_layers():
        return [ScaledTanh]

    module.numdl_register_layers = numdl_register_layers
    module.ScaledTanh = ScaledTanh
    return module


@pytest.fixture
def scaled_tanh():
    module = _scaled_tanh_plugin()
    plugins.register(module, name="scaled-tanh-plugin")
    yield module
    plugins.unregister(module)


def test_plugin_layer_is_named_in_a_config_and_trains(scaled_tanh, tmp_path):
    from numdl.testing import check_layer_gradients

    check_layer_gradients(scaled_tanh.ScaledTanh(), (5,))
    data = write_fashion_like(tmp_path / "data", n_train=300, n_test=100)
    resolved = config.resolve(None, [f"data.path='{data}'", "train.epochs=2", "train.batch_size=32",
                                     "model.layers.2.type='scaled_tanh'", "model.layers.2.scale=1.5"])
    summary = train.run(resolved, tmp_path / "run", on_line=lambda line: None)
    assert summary["test_accuracy"] > 0.9
    assert "scaled_tanh" in (tmp_path / "run" / "config.toml").read_text()
    assert plugins.registry().items["layer"]["scaled_tanh"].source == "scaled-tanh-plugin"


def test_plugin_parameters_are_type_checked(scaled_tanh):
    with pytest.raises(numdl.ConfigError, match="model.layers.2.scale: expected a number, got 'big'"):
        config.resolve(None, ["model.layers.2.type='scaled_tanh'", "model.layers.2.scale=big"])


def test_unregistered_plugin_name_is_unknown_again():
    module = _scaled_tanh_plugin()
    plugins.register(module)
    plugins.unregister(module)
    with pytest.raises(RegistryError, match="unknown layer 'scaled_tanh'"):
        plugins.registry().get("layer", "scaled_tanh")


def test_duplicate_name_is_an_error_naming_both_sources():
    class FakeRelu(Layer):
        name = "relu"

    module = types.ModuleType("clash")
    module.numdl_register_layers = numdl.hookimpl(lambda: [FakeRelu])
    with pytest.raises(RegistryError, match=r"duplicate layer name 'relu': registered by numdl and by clash-plugin"):
        plugins.register(module, name="clash-plugin")
    assert plugins.registry().get("layer", "relu") is numdl.ReLU  # the failed registration was rolled back


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "ep_numdl_plugin.py").write_text(textwrap.dedent('''
        import numdl
        from numdl.losses import MSE

        class HalfMSE(MSE):
            name = "half_mse"

            def forward(self, pred, target):
                return 0.5 * super().forward(pred, target)

        @numdl.hookimpl
        def numdl_register_losses():
            return [HalfMSE]
    '''))
    dist = tmp_path / "ep_numdl_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-numdl-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[numdl]\nhalf = ep_numdl_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = plugins.build_registry(plugins.create_plugin_manager())
        entry = registry.items["loss"]["half_mse"]
        assert entry.source == "half (ep-numdl-plugin 1.2.3)"
        assert registry.get("loss", "cross_entropy") is numdl.CrossEntropy
    finally:
        sys.modules.pop("ep_numdl_plugin", None)


def test_builtins_come_through_the_hooks():
    items = plugins.registry().items

    def builtin(kind):
        return sorted(name for name, entry in items[kind].items() if entry.source == "numdl")

    assert builtin("optimizer") == ["adagrad", "adam", "adamax", "adamw", "nadam", "radam", "rmsprop", "sgd"]
    assert builtin("loss") == ["bce_with_logits", "centernet", "cross_entropy", "huber", "kl_div", "mae", "mse", "nll",
                               "pixel_cross_entropy"]
    assert builtin("dataset") == ["fashion_mnist", "fashion_scenes", "table"]
    assert set(builtin("layer")) == {cls.name for cls in numdl.layers.BUILTIN_LAYERS}


def test_plugin_optimizer_is_named_in_a_config_and_steps():
    from numdl.optim import Optimizer

    class SignSGD(Optimizer):
        name = "sign_sgd"

        def __init__(self, lr: float = 0.01):
            super().__init__(lr)

        def update(self, param, state):
            param.value -= self.lr * np.sign(param.grad)

    module = types.ModuleType("sign_sgd_plugin")
    module.numdl_register_optimizers = numdl.hookimpl(lambda: [SignSGD])
    plugins.register(module)
    try:
        resolved = config.resolve(None, ["optimizer.type='sign_sgd'", "optimizer.lr=0.5"])
        assert resolved["optimizer"] == {"type": "sign_sgd", "lr": 0.5}
        model = config.build_model(resolved, (28, 28))
        before = model.parameters()[0].value.copy()
        model.train_step(np.ones((2, 28, 28), np.float32), np.array([1, 2]))
        changed = np.abs(model.parameters()[0].value - before)
        assert np.allclose(changed[changed > 0], 0.5)
    finally:
        plugins.unregister(module)


def test_plugin_schedule_is_named_in_a_config():
    from numdl.schedules import Schedule

    class Halving(Schedule):
        name = "halving"

        def __init__(self, every: int = 10):
            self.every = every

        def lr_at(self, step, steps_per_epoch, total_steps, base_lr):
            return base_lr * 0.5 ** (step // self.every)

    module = types.ModuleType("halving_plugin")
    module.numdl_register_schedules = numdl.hookimpl(lambda: [Halving])
    plugins.register(module)
    try:
        resolved = config.resolve(None, ["schedule.type='halving'", "schedule.every=2"])
        schedule = config.build_item("schedule", resolved["schedule"], "schedule")
        assert [schedule.lr_at(s, 1, 10, 1.0) for s in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
        with pytest.raises(numdl.ConfigError, match="schedule.every: expected an integer"):
            config.resolve(None, ["schedule.type='halving'", "schedule.every=fast"])
    finally:
        plugins.unregister(module)


def test_every_hookspec_is_exercised_by_a_test():
    """A new hook needs a test here: each hookspec name must appear in this file."""
    from pathlib import Path

    from numdl.hookspecs import NumdlHookSpecs

    source = Path(__file__).read_text()
    for name in vars(NumdlHookSpecs):
        if name.startswith("numdl_"):
            assert name in source, f"hook {name} has no plugin test in tests/test_plugins.py"
            assert getattr(NumdlHookSpecs, name).__doc__, f"hook {name} has no docstring"


def test_plugin_dataset_metric_callback_and_training_events(tmp_path):
    from helpers import separable_images
    from numdl.extensions import Callback, Dataset, Metric

    class Stripes(Dataset):
        name = "stripes"

        def load(self, path):
            x_train, y_train = separable_images(300, 0)
            x_test, y_test = separable_images(100, 1)
            return x_train, y_train, x_test, y_test

    class ErrorRate(Metric):
        name = "error_rate"
        higher_is_better = False

        def compute(self, y_true, y_pred, scores, num_classes):
            return float((y_true != y_pred).mean())

    class Top2Accuracy(Metric):  # needs the scores, not only the predicted classes
        name = "top2_accuracy"

        def compute(self, y_true, y_pred, scores, num_classes):
            top2 = np.argsort(scores, axis=1)[:, -2:]
            return float((top2 == y_true[:, None]).any(axis=1).mean())

    class CountEpochs(Callback):
        name = "count_epochs"
        seen = []

        def __init__(self, label: str = "run"):
            self.label = label

        def on_epoch_end(self, epoch, logs):
            CountEpochs.seen.append((self.label, epoch))

    events = []
    module = types.ModuleType("everything_plugin")
    module.numdl_register_datasets = numdl.hookimpl(lambda: [Stripes])
    module.numdl_register_metrics = numdl.hookimpl(lambda: [ErrorRate, Top2Accuracy])
    module.numdl_register_callbacks = numdl.hookimpl(lambda: [CountEpochs])
    module.numdl_on_epoch_end = numdl.hookimpl(
        lambda epoch, logs, run_folder: events.append(("epoch", epoch, logs["test_error_rate"])))
    module.numdl_on_train_end = numdl.hookimpl(lambda summary, run_folder: events.append(("end", run_folder)))
    plugins.register(module)
    try:
        resolved = config.resolve(None, ["data.name='stripes'", "train.epochs=2",
                                         "train.metrics=['error_rate', 'macro_f1', 'top2_accuracy']",
                                         "train.monitor='test_error_rate'", "train.early_stopping_patience=5",
                                         "train.callbacks=[{type='count_epochs', label='x'}, {type='csv_logger'}]"])
        summary = train.run(resolved, tmp_path / "run", on_line=lambda line: None)
        assert CountEpochs.seen == [("x", 1), ("x", 2)]
        assert [e[:2] for e in events] == [("epoch", 1), ("epoch", 2), ("end", str(tmp_path / "run"))]
        assert events[1][2] == pytest.approx(1 - summary["test_accuracy"])
        assert "test_macro_f1" in summary["final"] and (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3
        assert summary["test_accuracy"] <= summary["final"]["test_top2_accuracy"] <= 1.0
        assert not train.higher_is_better("test_error_rate")  # the metric's own direction
        model = numdl.Sequential([numdl.Flatten(), numdl.Linear(4)], input_shape=(28, 28)).compile("cross_entropy", "sgd")
        x, y = separable_images(50, 2)
        scores = model.evaluate(x, y % 4, scores=True)["scores"]
        y4 = y % 4
        expected = np.mean([label in np.argsort(row)[-2:] for row, label in zip(scores, y4)])
        assert Top2Accuracy()(y4, scores.argmax(1), 4, scores) == pytest.approx(expected)

        class NoCompute(Metric):
            name = "no_compute"

        plugins.unregister(module)
        module.numdl_register_metrics = numdl.hookimpl(lambda: [ErrorRate, Top2Accuracy, NoCompute])
        plugins.register(module)
        with pytest.raises(numdl.ConfigError, match="metric 'no_compute' implements no compute"):
            train.run(config.resolve(None, ["data.name='stripes'", "train.epochs=1", "train.metrics=['no_compute']"]),
                      tmp_path / "run2", on_line=lambda line: None)
        with pytest.raises(numdl.RegistryError, match="train.metrics.0: unknown metric 'nope'"):
            config.resolve(None, ["train.metrics=['nope']"])
    finally:
        plugins.unregister(module)
    with pytest.raises(numdl.RegistryError, match="data.name: unknown dataset 'stripes'; available: fashion_mnist"):
        config.resolve(None, ["data.name='stripes'"])


def test_plugin_commands_are_added_and_may_not_shadow_numdl_ones(capsys):
    import click
    from click.testing import CliRunner

    from numdl import cli as cli_module

    @click.command(name="hello")
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")

    module = types.ModuleType("command_plugin")
    module.numdl_register_commands = numdl.hookimpl(lambda cli: cli.add_command(hello))
    plugins.register(module)
    try:
        guarded = cli_module._GuardedGroup(cli_module.cli, set(cli_module.cli.commands))
        plugins.plugin_manager().hook.numdl_register_commands(cli=guarded)
        assert CliRunner().invoke(cli_module.cli, ["hello"]).output == "hello from a plugin\n"
        with pytest.raises(numdl.RegistryError, match="command 'train', which numdl itself already has"):
            guarded.add_command(click.Command("train"))
        # through numdl's own start-up path the offending plugin is named, in one line, exit 2
        clash = types.ModuleType("clash_plugin")
        clash.numdl_register_commands = numdl.hookimpl(lambda cli: cli.add_command(click.Command("train")))
        plugins.register(clash, name="clash_plugin")
        try:
            cli_module.cli.commands.pop("hello", None)
            with pytest.raises(SystemExit) as stop:
                cli_module.add_plugin_commands(cli_module.cli)
            assert stop.value.code == 2
            assert capsys.readouterr().err == ("error: plugin clash_plugin tried to add the command 'train', which "
                                               "numdl itself already has\n")
        finally:
            plugins.unregister(clash)
    finally:
        plugins.unregister(module)
        cli_module.cli.commands.pop("hello", None)


def test_every_hookspec_has_a_documentation_entry():
    from pathlib import Path

    from numdl.hookspecs import NumdlHookSpecs

    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in vars(NumdlHookSpecs):
        if name.startswith("numdl_"):
            assert f"`{name}(" in guide, f"hook {name} is missing from docs/plugins.md"


def test_the_guide_plugin_example_works(tmp_path):
    """The complete minimal plugin of docs/plugins.md, assembled from its code blocks, passes."""
    import importlib
    import re
    from pathlib import Path

    from numdl.testing import check_layer_gradients

    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    package = tmp_path / "my_numdl_plugin"
    package.mkdir()
    (package / "kernels.py").write_text(blocks[0])
    (package / "__init__.py").write_text(blocks[1])
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("my_numdl_plugin")
        plugins.register(module)
        try:
            layer = plugins.registry().get("layer", "square")()
            check_layer_gradients(layer, (2, 5))
        finally:
            plugins.unregister(module)
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("my_numdl_plugin", "my_numdl_plugin.kernels"):
            sys.modules.pop(name, None)
