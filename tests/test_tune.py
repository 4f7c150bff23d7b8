"""numdl tune (issue 14): Optuna searches over ordinary numdl train runs: grid, random and Bayesian
sampling, pruning through the epoch reports, a ranked table, best.toml, resumed studies, and
worker processes sharing one SQLite study."""

import sqlite3

import pytest

pytest.importorskip("optuna")

from helpers import invoke_cli, write_fashion_like  # noqa: E402
from numdl import tune  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("tune") / "data", n_train=400, n_test=100)


_cli = invoke_cli  # the numdl command, in-process


def test_a_grid_search_ranks_every_combination_writes_best_toml_and_resumes(data, tmp_path):
    folder = tmp_path / "study"
    common = ["tune", "--set", f"data.path='{data}'", "--set", "train.epochs=2",
              "--param", "optimizer.lr=choice(1e-3, 1e-9)", "--param", "model.layers.1.out_features=choice(16, 32)",
              "--method", "grid", "--pruner", "none", "--out", folder]
    result = _cli(*common, "--trials", 4)
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:2] == ["rank", "trial"])
    rows = [line.split() for line in table[header + 1:header + 5]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert all("optimizer.lr=0.001" in " ".join(r) for r in rows[:2])  # the good rate ranks first
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-000{i}" for i in range(4)]
    best = folder / "best.toml"
    assert "lr = 0.001" in best.read_text()
    trained = _cli("train", "--quiet", best, "--set", "train.epochs=1", "--out", tmp_path / "best-run")
    assert trained.exit_code == 0, trained.output
    again = _cli("tune", *common[1:], "--trials", 4)  # a finished study: nothing more to run
    assert again.exit_code == 0 and "trial 4:" not in again.stdout


def test_pruning_stops_a_bad_trial_from_its_epoch_reports(data, tmp_path):
    import optuna

    params = [tune.parse_param("optimizer.lr=choice(1e-3, 1e-9)")]
    study = tune.run_search(None, [f"data.path='{data}'", "train.epochs=3"], params, tmp_path / "s", 2,
                            method="grid", pruner=optuna.pruners.ThresholdPruner(lower=0.5), on_line=lambda l: None)
    states = {t.params["optimizer.lr"]: t.state.name for t in study.trials}
    assert states == {1e-3: "COMPLETE", 1e-9: "PRUNED"}
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert list(pruned.intermediate_values) == [1]  # stopped after its first epoch


def test_random_search_resumes_to_more_trials(data, tmp_path):
    common = ["tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", "--param",
              "optimizer.lr=loguniform(1e-4, 1e-2)", "--method", "random", "--out", tmp_path / "s"]
    assert _cli(*common, "--trials", 2).exit_code == 0
    resumed = _cli(*common, "--trials", 3)
    assert resumed.exit_code == 0 and "trial 2:" in resumed.stdout and "trial 0:" not in resumed.stdout


def test_two_workers_share_one_sqlite_study_without_losing_or_duplicating_trials(data, tmp_path):
    folder = tmp_path / "study"
    result = _cli("tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", "--param",
                  "optimizer.lr=loguniform(1e-4, 1e-2)", "--method", "random", "--pruner", "none", "--trials", 4,
                  "--workers", 2, "--out", folder)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(folder / "study.db") as db:
        trials = db.execute("select number, state from trials").fetchall()
    numbers = [n for n, _ in trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # each worker may finish one more
    assert {state for _, state in trials} == {"COMPLETE"}
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{n:04d}" for n in sorted(numbers)]
    values = {round(v, 12) for (v,) in sqlite3.connect(folder / "study.db").execute(
        "select param_value from trial_params")}
    assert len(values) == len(numbers)  # the two workers drew different values (seeds differ)


@pytest.mark.parametrize("args, needle", [
    (["--param", "optimizer.lr"], "expected KEY=SPACE"),
    (["--param", "optimizer.lr=normal(0, 1)"], "unknown space 'normal'"),
    (["--param", "optimizer.lr=loguniform(0, 1)"], "low > 0"),
    (["--param", "optimizer.lr=loguniform(1e-4, 1e-2)", "--method", "grid"], "every --param must be choice"),
    (["--param", "optimizer.nope=choice(1, 2)"], "optimizer.nope: unknown parameter"),
])
def test_bad_searches_are_one_line_exit_2(data, tmp_path, args, needle):
    result = _cli("tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", *args, "--trials", 1,
                  "--out", tmp_path / "s")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


def test_workers_share_a_postgresql_study(data, tmp_path):
    """Against a real PostgreSQL server: .ci/run installs and starts Debian's postgresql and exports
    NUMDL_TEST_POSTGRES; elsewhere this is skipped, saying why."""
    import os
    import uuid

    import optuna

    url = os.environ.get("NUMDL_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set NUMDL_TEST_POSTGRES=postgresql://user:password@host/db (.ci/run does)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed")
    name = f"numdl-test-{uuid.uuid4().hex[:8]}"
    result = _cli("tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", "--param",
                  "optimizer.lr=loguniform(1e-4, 1e-2)", "--method", "random", "--pruner", "none", "--trials", 4,
                  "--workers", 2, "--storage", url, "--study", name, "--out", tmp_path / "study")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=name, storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(p.name for p in (tmp_path / "study").glob("trial-*")) == [f"trial-{n:04d}" for n in sorted(numbers)]
    optuna.delete_study(study_name=name, storage=url)


def test_the_gaussian_process_sampler_searches_continuous_parameters(data, tmp_path):
    pytest.importorskip("torch")
    result = _cli("tune", "--set", f"data.path='{data}'", "--set", "train.epochs=1", "--param",
                  "optimizer.lr=loguniform(1e-4, 1e-2)", "--param", "model.layers.3.out_features=int(16, 64)",
                  "--method", "gp", "--pruner", "none", "--trials", 6, "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("complete") == 6
