"""The plugin manual: every hook numdl calls, with its contract.

A plugin is a module (or object) with functions marked ``@numdl.hookimpl`` and named after these
specs. Installed packages are found through the ``numdl`` entry-point group::

    [project.entry-points.numdl]
    my_plugin = "my_package.plugin"

numdl registers its own layers, losses and optimizers through these very hooks (``numdl.builtin``).
Every name must be unique across all plugins: a duplicate is an error at start-up naming both
sources. Configs and checkpoints refer to items only by these names, never by import path.
"""

import pluggy

hookspec = pluggy.HookspecMarker("numdl")
hookimpl = pluggy.HookimplMarker("numdl")


class NumdlHookSpecs:
    @hookspec
    def numdl_register_layers(self):
        """Return an iterable of ``numdl.layers.Layer`` subclasses.

        Each class sets a unique ``name`` (what ``[[model.layers]] type = "..."`` names). Its
        ``__init__`` takes the hyper-parameters as annotated keyword arguments with defaults (the
        config is checked against the annotations); ``setup`` creates parameters with
        ``add_param``; ``forward``/``backward`` compute through ``self.ops`` or the plugin's own
        kernels. Check it with ``numdl.testing.check_layer_gradients``.
        """

    @hookspec
    def numdl_register_losses(self):
        """Return an iterable of ``numdl.losses.Loss`` subclasses, each with a unique ``name``.

        ``forward(pred, target)`` returns a float and keeps what ``backward()`` (the gradient with
        respect to ``pred``) needs. Check it with ``numdl.testing.check_loss_gradients``.
        """

    @hookspec
    def numdl_register_optimizers(self):
        """Return an iterable of ``numdl.optim.Optimizer`` subclasses, each with a unique ``name``.

        ``update(param, state)`` changes ``param.value`` in place from ``param.grad``; the
        per-parameter buffers named in ``state_names`` are created zeroed for it.
        """

    @hookspec
    def numdl_register_schedules(self):
        """Return an iterable of ``numdl.schedules.Schedule`` subclasses, each with a unique ``name``
        (what ``[schedule] type = "..."`` names).

        ``lr_at(step, steps_per_epoch, total_steps, base_lr)`` gives the learning rate of the step
        after ``step`` steps; a schedule that reacts to metrics implements ``epoch_end(logs)`` and
        keeps what it learns in ``state()`` / ``load_state()`` so checkpoints resume it.
        """

    @hookspec
    def numdl_register_datasets(self):
        """Return an iterable of ``numdl.extensions.Dataset`` subclasses, each with a unique ``name``
        (what ``data.name`` names). ``load(path)`` returns (x_train, y_train, x_test, y_test)."""

    @hookspec
    def numdl_register_metrics(self):
        """Return an iterable of ``numdl.extensions.Metric`` subclasses, each with a unique ``name``
        (listed in ``train.metrics``). A metric implements ``compute(y_true, y_pred, scores,
        num_classes)`` returning a float that every epoch reports per evaluation set as
        ``<set>_<name>``: the labels, the predicted classes and the class probabilities (N,
        num_classes), so top-k accuracy, AUC and log-loss can be metrics. Set ``higher_is_better =
        False`` on a loss-like metric (``train.monitor`` and early stopping follow it)."""

    @hookspec
    def numdl_register_callbacks(self):
        """Return an iterable of ``numdl.extensions.Callback`` subclasses, each with a unique
        ``name`` (configured as ``train.callbacks = [{type = "...", ...}]``)."""

    @hookspec
    def numdl_register_commands(self, cli):
        """Add commands to the ``numdl`` command line: ``cli`` is its click group; call
        ``cli.add_command(...)``. A command name already taken is a start-up error."""

    @hookspec
    def numdl_on_epoch_end(self, epoch, logs, run_folder):
        """Called by ``numdl train`` after every epoch with the epoch's metrics (the dict written to
        metrics.jsonl) and the run folder: for loggers and dashboards. Return value ignored."""

    @hookspec
    def numdl_on_train_end(self, summary, run_folder):
        """Called by ``numdl train`` when a run finishes, with the summary written to summary.json."""
