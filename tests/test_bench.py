"""numdl bench: the table, JSON output and the regression comparison (on a tiny plan)."""

import json

from click.testing import CliRunner

from numdl import bench
from numdl.cli import cli


def test_bench_runs_saves_and_flags_regressions(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "cases", lambda suites, quick: [("mlp", "train", 32, 128), ("mlp", "predict", 64, 128)])
    out = tmp_path / "now.json"
    result = CliRunner().invoke(cli, ["bench", "--quick", "--json", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "mlp train b32" in result.output and "ratio" in result.output
    report = json.loads(out.read_text())
    assert {r["case"] for r in report["results"]} == {"mlp train b32", "mlp predict b64"}
    faster = json.loads(out.read_text())
    for r in faster["results"]:
        r["numdl"] *= 10  # a baseline ten times faster: today's run is a regression
    (tmp_path / "base.json").write_text(json.dumps(faster))
    result = CliRunner().invoke(cli, ["bench", "--quick", "--compare", str(tmp_path / "base.json"), "--threads", "1"])
    assert result.exit_code == 1 and "regression: mlp train b32" in result.output


def test_compare_tolerates_small_noise():
    now = {"results": [{"case": "a", "numdl": 95.0}]}
    assert bench.compare(now, {"results": [{"case": "a", "numdl": 100.0}]}, 0.2) == []
    assert bench.compare(now, {"results": [{"case": "a", "numdl": 200.0}]}, 0.2) == [("a", 95.0, 200.0)]
