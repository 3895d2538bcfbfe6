"""leengine lab fit: the cost models fitted from a (hand-written) lab report, written as a costs file that
the scenarios read back, and a sim run with them that lands within compare's bands of the lab."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.compare import compare
from lab.fit import ROUND_TRIPS_PER_ADD
from leengine.cli import app
from sim.runner import build_report, run_scenario
from sim.scenario import COSTS_FILE, load_scenario
from sim.scenario_lab import lab_scaled

ROOT = Path(__file__).resolve().parents[2]

# A lab report as `leengine lab run` writes it (only what fit reads): ADDs through the real plugin
# ~31 ms, reloads of the lab's Nginx ~0.2 s, tiny-repo builds ~4 s, an etcd round trip of 1.5 ms.
LAB_REPORT = {
    "scenario": {"name": "host-crash-ip-leak"}, "seed": 7, "scale": "lab",
    "checks": [{"name": "no-duplicate-address", "passed": True, "detail": ""}],
    "inputs": {"apps": [{"name": f"svc-{i}", "group": "web"} for i in range(1, 6)]},
    "samples": {"cni_add_seconds": [0.028, 0.030, 0.031, 0.033, 0.045],
                "reload_seconds": [0.18, 0.2, 0.21],
                "build_seconds": [3.5, 4.0, 4.4],
                "etcd_round_trip_seconds": [0.0014, 0.0015, 0.0016]},
}


@pytest.fixture
def fitted(tmp_path: Path) -> Path:
    """scenarios/ copied with costs.yaml rewritten by `leengine lab fit` from the hand-written report."""
    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios", scenarios)
    report = tmp_path / "lab-report.json"
    report.write_text(json.dumps(LAB_REPORT))
    run = CliRunner().invoke(app, ["lab", "fit", str(report), "--out", str(scenarios / COSTS_FILE)])
    assert run.exit_code == 0, run.output
    return scenarios


def test_fit_writes_the_models_the_samples_give(fitted: Path) -> None:
    spec = load_scenario(fitted / "host-crash-ip-leak.yaml").spec
    costs = spec.costs
    assert costs.store.latency == spec.etcd_latency == 0.0015
    assert costs.dataplane.attach_seconds == pytest.approx(0.031 - ROUND_TRIPS_PER_ADD * 0.0015)
    p = costs.proxy  # test + reload of a batch on a host of the 5 domains: the lab's median
    assert p.test_base + p.reload_base + 5 * (p.test_per_domain + p.reload_per_domain) == pytest.approx(0.2, abs=1e-5)
    assert costs.builder.compile_cold == 180  # a Region's builds keep theirs: the lab builds a tiny repo
    b = spec.lab_costs.builder
    assert b.clone_seconds + b.compile_cold + b.image_seconds + b.image_mb / b.registry_mb_per_second == \
        pytest.approx(4.0, rel=1e-4)
    assert spec.lab_costs.dataplane == costs.dataplane  # the lab's costs carry the fitted components
    text = (fitted / COSTS_FILE).read_text()
    assert "lab-report.json" in text and "cni_add_seconds: 5" in text


def test_the_fitted_sim_lands_within_the_add_and_reload_bands_of_the_lab(fitted: Path) -> None:
    loaded = load_scenario(fitted / "host-crash-ip-leak.yaml")
    loaded = dataclasses.replace(loaded, spec=lab_scaled(loaded.spec))
    result = run_scenario(loaded)
    sim = build_report(result, code_version={})
    assert sim["passed"] and sim["scale"] == "lab"
    rows = {r.name: r for r in compare(sim, LAB_REPORT).distributions}
    assert rows["cni_add_seconds"].within, rows["cni_add_seconds"].ratio
    assert rows["reload_seconds"].within, rows["reload_seconds"].ratio


def test_fit_without_samples_or_of_a_full_scale_report_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"checks": [], "samples": {}}))
    full = tmp_path / "full.json"
    full.write_text(json.dumps({**LAB_REPORT, "scale": "full"}))
    for path, words in ((empty, "no samples"), (full, "full-scale")):
        run = CliRunner().invoke(app, ["lab", "fit", str(path), "--out", str(tmp_path / "costs.yaml")])
        assert run.exit_code == 2 and words in run.output and len(run.output.strip().splitlines()) == 1
    assert not (tmp_path / "costs.yaml").exists()
