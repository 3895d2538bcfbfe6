"""`leengine sim run`: a scenario through the CLI writes a full report, plots and a replayable trace hash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leengine.cli import app
from sim import runner
from sim.scenario import COSTS_FILE, load_scenario
from sim.world import Region

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "scenarios" / "default.yaml"
SHIPPED = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if p.name != COSTS_FILE)  # costs: no scenario


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
    monkeypatch.setattr(Region, "run", lambda self: pytest.fail("nothing may run"))
    result = run_cli(str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml:" in lines[0] and "vlan" in lines[0]
    assert not (tmp_path / "out").exists()


def test_validate_names_the_scenario_and_its_hash():
    result = CliRunner().invoke(app, ["sim", "validate", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    assert "ok: default" in result.output and "sha256" in result.output


# --------------------------------------------------------------------------- hostile scenario files (issue 9)

HOSTILE = [
    ("int-tag", ("seed: 1", "seed: !!int abc"), r"seed: 'abc' is not an integer"),
    ("timestamp", ("duration: 300", "duration: !!timestamp abc"), r"duration: dates and times are not supported"),
    ("merge-key", ("    - {name: web, hosts: 2}", "    - {<<: {hosts: 2}, name: web}"),
     r"topology\.groups\[0\]\.<<: merge keys"),
    ("deep", ("seed: 1", "seed: " + "[" * 1000 + "]" * 1000), r"(seed(\[0\])+: nested deeper|yaml: .*depth)"),
    ("count-1e9", ("{name: blog,", "{name: blog, count: 1000000000,"), r"workload\.apps\[1\]\.count: must be at most"),
    ("name-path", ("name: default", "name: {tmp}/owned"), r":\d+: name: .* is not a scenario name"),
    ("name-escape", ("name: default", 'name: "x\\n\\x1b[2Jy"'), r":\d+: name: "),
]


def run_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # A real process: what a user sees on stderr, and a hang is a failure (timeout), not a stuck test run.
    return subprocess.run([sys.executable, "-m", "leengine.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, pattern: str, cwd: Path) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("leengine: error: "), proc.stderr[-2000:]
    assert re.search(r":\d+: \S+: ", lines[0]) and re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr and proc.stdout == ""
    assert not (cwd / "runs").exists() and not (cwd / "owned-seed1").exists()


@pytest.mark.parametrize(("edit", "pattern"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_scenario_is_one_line_exit_2_and_nothing_is_written(tmp_path, edit, pattern):
    old, new = edit
    text = DEFAULT.read_text()
    assert old in text, old
    path = tmp_path / "hostile.yaml"
    path.write_text(text.replace(old, new.replace("{tmp}", str(tmp_path)), 1))
    proc = run_process(["sim", "run", str(path), "--no-plots"], tmp_path)
    assert_one_line_exit_2(proc, pattern, tmp_path)
    assert str(path) in proc.stderr


def test_a_fifo_or_a_device_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        proc = run_process(["sim", "validate", str(target)], tmp_path)
        assert_one_line_exit_2(proc, rf"^leengine: error: {re.escape(str(target))}:0: file: not a regular file "
                                     rf"\({kind}\)$", tmp_path)


def test_the_default_output_dir_comes_only_from_a_valid_name(tmp_path):
    spec = load_scenario(DEFAULT).spec
    assert runner.output_dir(spec) == Path("runs") / "default-seed1"
    for bad in ("/tmp/x/owned", "../up", "a\nb", ""):
        with pytest.raises(ValueError, match="no output path from it"):
            runner.output_dir(replace(spec, name=bad))
