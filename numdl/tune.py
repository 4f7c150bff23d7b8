"""``numdl tune``: hyper-parameter search with Optuna over ordinary ``numdl train`` runs.

Each trial is a normal run of the config with the trial's values set (its own run folder under the
study folder); the objective is the run's monitor (``train.monitor``, else validation accuracy or
loss: a search never selects on the test set, so a config without a validation split gets
``data.validation_split = 0.1``). Every epoch reports the monitor to Optuna, whose pruner may stop a
trial early. The study lives in a storage (an SQLite file in the study folder by default, or any
SQLAlchemy URL, e.g. PostgreSQL, so that workers on several machines share it): running the same
command again resumes it until ``trials`` trials have finished. At the end a ranked table is printed
and the best trial's config is written as ``best.toml``, ready for ``numdl train``.

Search spaces, one ``--param KEY=SPACE`` each: ``loguniform(a,b)``, ``uniform(a,b)``, ``int(a,b)``,
``choice(v1,v2,...)`` (values as TOML: numbers, true/false, quoted strings). Methods: ``grid``
(every combination of choice() parameters), ``random``, ``bayes`` (Optuna's TPE), ``gp`` (Optuna's
Gaussian-process sampler: suits a few continuous parameters; it needs PyTorch).
"""

import os
import re
import time
from pathlib import Path

from numdl.errors import ConfigError

SPACES = ("loguniform", "uniform", "int", "choice")
METHODS = ("grid", "random", "bayes", "gp")
PRUNERS = ("median", "halving", "none")
_SPACE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("numdl tune needs Optuna: pip install 'numdl[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def parse_param(text):
    """``"optimizer.lr=loguniform(1e-4,1e-2)"`` -> ("optimizer.lr", "loguniform", [1e-4, 1e-2])."""
    from numdl.config import parse_value

    key, sep, space = text.partition("=")
    key = key.strip()
    match = _SPACE.match(space)
    if not sep or not key or not match:
        raise ConfigError(f"--param {text!r}: expected KEY=SPACE, e.g. optimizer.lr=loguniform(1e-4,1e-2)")
    kind, raw = match.group(1), [part.strip() for part in match.group(2).split(",") if part.strip()]
    if kind not in SPACES:
        raise ConfigError(f"--param {key}: unknown space {kind!r} (known: {', '.join(SPACES)})")
    values = [parse_value(part) for part in raw]
    if kind == "choice":
        if not values:
            raise ConfigError(f"--param {key}: choice() needs at least one value")
        return key, kind, values
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numeric or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0) \
            or (kind == "int" and not all(isinstance(v, int) for v in values)):
        raise ConfigError(f"--param {key}: {kind}(low,high) needs two {'integers' if kind == 'int' else 'numbers'} "
                          f"low < high{' (low > 0)' if kind == 'loguniform' else ''}")
    return key, kind, values


def _suggest(trial, key, kind, values):
    if kind == "loguniform":
        return trial.suggest_float(key, values[0], values[1], log=True)
    if kind == "uniform":
        return trial.suggest_float(key, values[0], values[1])
    if kind == "int":
        return trial.suggest_int(key, values[0], values[1])
    return trial.suggest_categorical(key, values)


def _assignment(key, value):
    import tomli_w

    return f"{key}={tomli_w.dumps({'v': value}).strip()[4:]}"


def search_config(config_path, overrides):
    """The base config of a search: resolved, with a validation split to select on."""
    from numdl import config as config_module

    resolved = config_module.resolve(config_path, overrides)
    if resolved["data"].get("validation_split", 0.0) <= 0 and not resolved["data"].get("validation_path"):
        resolved["data"]["validation_split"] = 0.1
    return resolved


def objective_of(config):
    """(monitor, direction) of a search over ``config``."""
    from numdl.plugins import registry
    from numdl.train import higher_is_better

    monitor = config["train"].get("monitor") or (
        "validation_accuracy" if registry().get("loss", config["loss"]["type"]).target_kind == "labels"
        else "validation_loss")
    if monitor.startswith("test_"):
        raise ConfigError(f"train.monitor: a search selects on validation data, not {monitor!r}")
    return monitor, ("maximize" if higher_is_better(monitor) else "minimize")


class _PruningReport:
    """fit callback: reports the monitor to the trial after every epoch; the pruner may stop it."""

    def __init__(self, trial, monitor):
        self.trial, self.monitor = trial, monitor

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.monitor} {value:.4f})")


def make_study(folder, storage=None, method="bayes", params=(), pruner="median", seed=0, direction="maximize",
               name="numdl"):
    optuna = _optuna()
    if method not in METHODS:
        raise ConfigError(f"--method: must be one of {', '.join(METHODS)}, got {method!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{folder / 'study.db'}"
    if url.startswith("sqlite"):  # several worker processes share the file: wait for its lock
        storage_object = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    else:
        storage_object = url
    if method == "grid":
        if not params or any(kind != "choice" for _, kind, _ in params):
            raise ConfigError("--method grid: every --param must be choice(...)")
        sampler = optuna.samplers.GridSampler({key: values for key, _, values in params}, seed=seed)
    elif method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif method == "gp":
        try:
            import torch  # noqa: F401  (Optuna's GPSampler computes with it)
        except ImportError:
            raise ConfigError("--method gp: Optuna's Gaussian-process sampler needs PyTorch (pip install torch)") \
                from None
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if isinstance(pruner, str):
        if pruner not in PRUNERS:
            raise ConfigError(f"--pruner: must be one of {', '.join(PRUNERS)}, got {pruner!r}")
        pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                  "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
                  "none": lambda: optuna.pruners.NopPruner()}[pruner]()
    try:
        return optuna.create_study(study_name=name, storage=storage_object, sampler=sampler, pruner=pruner,
                                   direction=direction, load_if_exists=True)
    except ValueError as error:  # an existing study with another direction, say
        raise ConfigError(f"--storage {url}: {error}") from None


def finished_trials(study):
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in states]


def run_search(config_path, overrides, params, folder, trials, method="bayes", storage=None, pruner="median",
               seed=0, on_line=print, name="numdl"):
    """Run trials until the study has ``trials`` finished ones (shared with other workers of the
    same storage); returns the study."""
    optuna = _optuna()
    from numdl import train

    base = search_config(config_path, overrides)
    monitor, direction = objective_of(base)
    study = make_study(folder, storage, method, params, pruner, seed, direction, name)

    def objective(trial):
        assignments = [_assignment(key, _suggest(trial, key, kind, values)) for key, kind, values in params]
        config = search_config(config_path, [*overrides, *assignments])
        run_folder = Path(folder) / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_folder", str(run_folder))
        trial.set_user_attr("assignments", assignments)
        start = time.perf_counter()
        try:
            summary = train.run(config, run_folder, on_line=lambda line: None,
                                callbacks=[_PruningReport(trial, monitor)], data_parallel=False)
        except optuna.TrialPruned:
            on_line(f"trial {trial.number}: pruned  {'  '.join(assignments)}")
            raise
        value = summary["final"].get(monitor)
        if value is None:
            raise ConfigError(f"train.monitor: the runs do not report {monitor!r}")
        on_line(f"trial {trial.number}: {monitor} {value:.4f}  {'  '.join(assignments)}  "
                f"({time.perf_counter() - start:.1f}s)")
        return float(value)

    done = len(finished_trials(study))
    if done < trials:
        stop = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED))
        study.optimize(objective, n_trials=trials - done, callbacks=[stop], catch=())
    return study


def ranked(study):
    """[(rank, number, value or None, state, assignments, run folder)] best first, then pruned."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: t.value, reverse=reverse)
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.PRUNED]
    rows = []
    for rank, t in enumerate(complete + pruned, 1):
        rows.append((rank, t.number, t.value, t.state.name.lower(), t.user_attrs.get("assignments", []),
                     t.user_attrs.get("run_folder", "")))
    return rows


def write_best(study, folder):
    """best.toml: the best complete trial's resolved config; returns its path (None without one)."""
    rows = [row for row in ranked(study) if row[3] == "complete"]
    if not rows:
        return None
    source = Path(rows[0][5]) / "config.toml"
    target = Path(folder) / "best.toml"
    target.write_text(f"# numdl tune: trial {rows[0][1]}, {rows[0][2]:.6g}\n" + source.read_text())
    return target


def worker_threads(workers):
    """Threads per worker process when ``workers`` share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
