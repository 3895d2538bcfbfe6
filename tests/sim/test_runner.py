"""`leengine sim run`: a scenario through the CLI writes a full report, plots and a replayable trace hash.

If ``sim/world.py`` is not there yet, these tests run the runner on a tiny stand-in
Region (below) that honours the same contract: ``Region(spec, runtime)``, ``async
run()`` until ``spec.duration``, ``report()`` with checks, metrics and counts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leengine.cli import app
from sim import runner

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "scenarios" / "default.yaml"
HAVE_WORLD = importlib.util.find_spec("sim.world") is not None


class StandInRegion:
    """Stand-in for sim.world.Region: a random walk of a few metrics, traced through the runtime."""

    def __init__(self, spec, runtime):
        self.spec, self.runtime = spec, runtime
        self.metrics = {name: [] for name in runner.KEY_METRICS}
        self.ticks = 0

    async def run(self):
        rt, used, leaked = self.runtime, 0, 0
        while rt.now() < self.spec.duration:
            used = max(0, used + rt.random.randint(-3, 5))
            leaked = max(0, leaked + rt.random.choice((-1, 0, 0, 1)))
            self.ticks += 1
            rt.trace("tick", used=used, leaked=leaked)
            t = rt.now()
            for name, value in zip(runner.KEY_METRICS, (leaked, used, rt.random.random() / 100, 0, self.ticks // 10),
                                   strict=True):
                self.metrics[name].append([t, value])
            await rt.sleep(min(5.0, self.spec.duration - t) or 5.0)

    def report(self):
        checks = [{"name": c.kind, "passed": True, "detail": "stand-in"} for c in self.spec.checks]
        return {"checks": checks, "metrics": self.metrics, "counts": {"ticks": self.ticks}}


@pytest.fixture(autouse=True)
def _region(monkeypatch):
    if not HAVE_WORLD:
        monkeypatch.setattr(runner, "region_class", lambda: StandInRegion)


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


def test_a_failed_check_exits_1(tmp_path, monkeypatch):
    base = runner.region_class()

    class Failing(base):
        def report(self):
            rep = super().report()
            rep["checks"] = [*rep["checks"], {"name": "max-reloads", "passed": False, "detail": "9 > 2"}]
            return rep

    monkeypatch.setattr(runner, "region_class", lambda: Failing)
    result = run_cli(str(DEFAULT), "--out", str(tmp_path), "--no-plots")
    assert result.exit_code == 1
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is False


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
