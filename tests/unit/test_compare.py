"""leengine compare: verdicts side by side (exit 1 when they differ), exact counts, distributions in bands,
the PNG/HTML overlay, and one line on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lab.compare import compare
from leengine.cli import app


def report(passed: dict[str, bool], add: list[float], reload: list[float], **counts: int) -> dict[str, Any]:
    return {"scenario": {"name": "host-crash-ip-leak"}, "seed": 7,
            "checks": [{"name": n, "passed": p, "detail": ""} for n, p in passed.items()],
            "metrics": {"leaks_found": counts.get("leaks", 6), "leaks_released": counts.get("leaks", 6),
                        "reloads": counts.get("reloads", 2)},
            "counts": {"pods_started": 31, "pods_died": 6},
            "samples": {"cni_add_seconds": add, "reload_seconds": reload, "propagation_seconds": [],
                        "drain_seconds": [], "build_seconds": []}}


CHECKS = {"no-duplicate-address": True, "leaks-found-and-released": True}
SIM = report(CHECKS, [0.020] * 10, [0.13, 0.14])


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_median_p90_ratio_and_band_of_each_distribution() -> None:
    lab = report(CHECKS, [0.01 * i for i in range(1, 11)], [0.2, 0.3])
    result = compare(SIM, lab)
    add = next(r for r in result.distributions if r.name == "cni_add_seconds")
    assert (add.median("lab"), add.p90("lab"), add.median("sim")) == (0.06, 0.1, 0.02)
    assert add.ratio == pytest.approx(3.0) and add.within is False and add.band == 0.25
    reload = next(r for r in result.distributions if r.name == "reload_seconds")
    assert reload.within is False  # 0.3 / 0.14
    assert next(r for r in result.distributions if r.name == "build_seconds").within is None  # none on both sides
    assert result.verdicts_equal and result.counts_equal and not result.within_bands
    close = compare(SIM, report(CHECKS, [0.024] * 3, [0.15, 0.16]))
    assert close.within_bands  # 1.2 and 1.14: inside 25 %


def test_different_verdicts_exit_1_and_write_the_overlay(tmp_path: Path) -> None:
    lab = report({**CHECKS, "leaks-found-and-released": False}, [0.02] * 5, [0.13], leaks=5)
    out = tmp_path / "cmp"
    run = CliRunner().invoke(app, ["compare", str(write(tmp_path, "sim.json", SIM)),
                                   str(write(tmp_path, "lab.json", lab)), "--out", str(out)])
    assert run.exit_code == 1, run.output
    assert "DIFFERENT" in run.output and "different" in run.output
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "compare.html").read_text()
    assert "VERDICTS DIFFER" in page and "data:image/png;base64," in page
    data = json.loads((out / "compare.json").read_text())
    assert data["verdicts_equal"] is False
    assert {r["name"]: r["equal"] for r in data["counts"]}["leaks_found"] is False


def test_equal_verdicts_exit_0_unless_strict_and_a_band_is_missed(tmp_path: Path) -> None:
    sim, lab = write(tmp_path, "sim.json", SIM), write(tmp_path, "lab.json", report(CHECKS, [0.2] * 5, [0.13]))
    assert CliRunner().invoke(app, ["compare", str(sim), str(lab)]).exit_code == 0
    assert CliRunner().invoke(app, ["compare", str(sim), str(lab), "--strict"]).exit_code == 1


@pytest.mark.parametrize(("content", "words"), [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a run report"),
    ('{"checks": [{"name": 1}]}', "checks[0]"),
    ('{"checks": [], "samples": []}', '"samples" is not a mapping'),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, content: str | None, words: str) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    run = CliRunner().invoke(app, ["compare", str(bad), str(write(tmp_path, "lab.json", SIM))])
    assert run.exit_code == 2
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in run.output


def test_the_lab_runs_machine_load_is_printed_beside_the_bands(tmp_path: Path) -> None:
    lab = {**report(CHECKS, [0.02] * 5, [0.13]),
           "lab": {"machine_load": {"cpus": 2, "samples": 30, "load1_min": 0.4, "load1_median": 1.5,
                                    "load1_max": 4.8}}}
    run = CliRunner().invoke(app, ["compare", str(write(tmp_path, "sim.json", SIM)),
                                   str(write(tmp_path, "lab.json", lab)), "--json"])
    assert json.loads(run.stdout)["lab_machine_load"] == {"cpus": 2, "low": 0.4, "median": 1.5, "high": 4.8}
    run = CliRunner().invoke(app, ["compare", str(tmp_path / "sim.json"), str(tmp_path / "lab.json")])
    assert "lab run's machine: 1-minute load 0.4-4.8 (median 1.5) on 2 CPUs" in run.output
    assert compare(SIM, SIM).lab_load is None  # a sim report has none


RATES = {"before": {"fork_exec_per_second": 1210.4, "sha256_mib_per_second": 1480.0},
         "after": {"fork_exec_per_second": 980.0, "sha256_mib_per_second": 1502.5}}


def test_the_lab_runs_reference_rates_are_printed_and_a_hostile_record_is_not_recorded(tmp_path: Path) -> None:
    lab = {**report(CHECKS, [0.02] * 5, [0.13]), "lab": {"reference_rates": RATES}}
    run = CliRunner().invoke(app, ["compare", str(write(tmp_path, "sim.json", SIM)),
                                   str(write(tmp_path, "lab.json", lab))])
    assert run.exit_code == 0, run.output
    assert "lab run's reference rates: fork+exec 1,210 -> 980/s, sha256 1,480 -> 1,502 MiB/s" in run.output
    run = CliRunner().invoke(app, ["compare", str(tmp_path / "sim.json"), str(tmp_path / "lab.json"), "--json"])
    assert json.loads(run.stdout)["lab_reference_rates"] == [RATES]
    for hostile in ({"before": RATES["before"]}, {**RATES, "after": {"fork_exec_per_second": -1.0,
                                                                      "sha256_mib_per_second": 1.0}},
                    {**RATES, "before": {"fork_exec_per_second": "1e3", "sha256_mib_per_second": 1.0}},
                    {**RATES, "before": {"fork_exec_per_second": 10 ** 400, "sha256_mib_per_second": 1.0}},
                    {**RATES, "before": {"fork_exec_per_second": True, "sha256_mib_per_second": 1.0}}, [1, 2]):
        got = compare(SIM, {**lab, "lab": {"reference_rates": hostile}})
        assert got.lab_rates == (None,)
    assert compare(SIM, SIM).lab_rates == (None,)  # a sim report has none


def test_several_lab_runs_pool_their_samples_and_each_verdict_and_count_must_equal(tmp_path: Path) -> None:
    sim = report(CHECKS, [0.020] * 10, [0.20, 0.20])
    runs = [report(CHECKS, [0.021] * 5, [0.13, 0.14], reloads=2),  # alone: 0.14 / 0.2 = 0.7, outside
            report(CHECKS, [0.019] * 5, [0.22, 0.24], reloads=3),
            report(CHECKS, [0.020] * 5, [0.20, 0.21], reloads=2)]
    alone = compare(sim, runs[0])
    assert next(r for r in alone.distributions if r.name == "reload_seconds").within is False
    pooled = compare(sim, runs)
    reload = next(r for r in pooled.distributions if r.name == "reload_seconds")
    assert reload.lab == (0.13, 0.14, 0.2, 0.21, 0.22, 0.24) and reload.within is True  # median 0.21
    assert len(next(r for r in pooled.distributions if r.name == "cni_add_seconds").lab) == 15
    reloads = next(r for r in pooled.counts if r.name == "reloads")
    assert reloads.lab_runs == (2, 3, 2) and reloads.lab is None and not reloads.equal
    assert pooled.verdicts_equal and pooled.lab_name == "host-crash-ip-leak seed 7 (3 runs)"
    one_failed = compare(sim, [*runs, report({**CHECKS, "no-duplicate-address": False}, [0.02], [0.2])])
    assert not one_failed.verdicts_equal  # a verdict must be the sim's in every run
    paths = [str(write(tmp_path, f"lab{i}.json", r)) for i, r in enumerate(runs)]
    run = CliRunner().invoke(app, ["compare", str(write(tmp_path, "sim.json", sim)), *paths])
    assert run.exit_code == 0, run.output
    assert "2; 3; 2" in run.output and "(3 runs)" in run.output
    other = write(tmp_path, "other.json", {**runs[0], "seed": [1, 2]})
    run = CliRunner().invoke(app, ["compare", str(tmp_path / "sim.json"), paths[0], str(other)])
    assert run.exit_code == 2 and "not runs of one scenario and seed" in run.output
    assert len(run.output.strip().splitlines()) == 1
