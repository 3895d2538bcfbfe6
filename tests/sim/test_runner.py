"""`leengine sim run`: a scenario through the CLI writes a full report, plots and a replayable trace hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leengine.cli import app
from sim import runner

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "scenarios" / "default.yaml"
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))


def run_cli(*args: str):
    result = CliRunner().invoke(app, ["sim", "run", *args])
    return result


def test_default_scenario_writes_report_and_plots(tmp_path):
    out = tmp_path / "run"
    result = run_cli(str(DEFAULT), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for key in ("scenario", "seed", "code_version", "inputs", "checks", "metrics_summary", "trace_sha256", "passed",
                "counts", "replay"):
        assert key in report, key
    assert report["scenario"]["sha256"] == __import__("hashlib").sha256(DEFAULT.read_bytes()).hexdigest()
    assert report["seed"] == 1 and report["inputs"]["seed"] == 1
    assert report["inputs"]["duration"] == 300
    assert len(report["checks"]) == 4 and all({"name", "passed", "detail"} <= set(c) for c in report["checks"])
    assert report["passed"] is True
    assert len(report["trace_sha256"]) == 64
    assert report["metrics_summary"], "the world reported no metrics"
    assert (out / "metrics.png").stat().st_size > 1000
    assert report["plots"] and all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["plots"])
    assert "trace_sha256" in result.output


def test_same_seed_same_trace_other_seed_other_trace(tmp_path):
    hashes = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        result = run_cli(str(DEFAULT), "--seed", seed, "--out", str(tmp_path / name), "--no-plots")
        assert result.exit_code == 0, result.output
        hashes.append(json.loads((tmp_path / name / "report.json").read_text())["trace_sha256"])
    assert hashes[0] == hashes[1]
    assert hashes[2] != hashes[0]


def test_a_failed_check_exits_1(tmp_path):
    # A liveness deadline past the end of the run is a real failed verdict, not a crash.
    failing = tmp_path / "late.yaml"
    failing.write_text(DEFAULT.read_text().replace("  - kind: apps-serve-again\n    within: 90",
                                                   "  - kind: apps-serve-again\n    within: 1000"))
    result = run_cli(str(failing), "--out", str(tmp_path / "out"), "--no-plots")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] is False
    verdict = {c["name"]: c for c in report["checks"]}["apps-serve-again"]
    assert not verdict["passed"] and "before the deadline" in verdict["detail"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_passes_its_checks(path, tmp_path):
    result = run_cli(str(path), "--out", str(tmp_path), "--no-plots")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["checks"] and report["counts"]["pods_started"] > 0


def test_a_bad_scenario_is_one_line_and_exit_2_and_nothing_runs(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT.read_text().replace("vlan: 101", "vlan: 5000"))
    monkeypatch.setattr(runner, "region_class", lambda: pytest.fail("nothing may run"))
    result = run_cli(str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml:" in lines[0] and "vlan" in lines[0]
    assert not (tmp_path / "out").exists()


def test_validate_names_the_scenario_and_its_hash():
    result = CliRunner().invoke(app, ["sim", "validate", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    assert "ok: default" in result.output and "sha256" in result.output
