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
from lab.fit import ROUND_TRIPS_PER_ADD, FitError, fit_files, in_flight_line, in_flight_pairs
from leengine.cli import app
from sim.adapters.dataplane import Machine, SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.runner import build_report, run_scenario
from sim.scenario import COSTS_FILE, load_scenario
from sim.scenario_costs import load_costs
from sim.scenario_lab import lab_scaled

ROOT = Path(__file__).resolve().parents[2]

# A lab report as `leengine lab run` writes it (only what fit reads): ADDs through the real plugin
# ~31 ms, reloads of the lab's Nginx ~0.2 s, tiny-repo builds ~4 s, an etcd get of 1.5 ms and a put of 6 ms.
LAB_REPORT = {
    "scenario": {"name": "host-crash-ip-leak"}, "seed": 7, "scale": "lab",
    "checks": [{"name": "no-duplicate-address", "passed": True, "detail": ""}],
    "inputs": {"apps": [{"name": f"svc-{i}", "group": "web"} for i in range(1, 6)]},
    "samples": {"cni_add_seconds": [0.028, 0.030, 0.031, 0.033, 0.045],
                "reload_seconds": [0.18, 0.2, 0.21],
                "build_seconds": [3.5, 4.0, 4.4],
                "etcd_get_seconds": [0.0014, 0.0015, 0.0016], "etcd_put_seconds": [0.005, 0.006, 0.007]},
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
    assert costs.store.commit_seconds == pytest.approx(0.006 - 0.0015)  # what a put waits for beyond a get
    assert costs.dataplane.attach_seconds == pytest.approx(0.031 - ROUND_TRIPS_PER_ADD * 0.006)
    p = costs.proxy  # test + reload of a batch on a host of the 5 domains: the lab's median
    assert p.test_base + p.reload_base + 5 * (p.test_per_domain + p.reload_per_domain) == pytest.approx(0.2, abs=1e-5)
    assert costs.builder.compile_cold == 180  # a Region's builds keep theirs: the lab builds a tiny repo
    b = spec.lab_costs.builder
    assert b.clone_seconds + b.compile_cold + b.image_seconds + b.image_mb / b.registry_mb_per_second == \
        pytest.approx(4.0, rel=1e-4)
    # the lab's costs carry the fitted components (its slope per ADD in flight is the lab's own)
    assert dataclasses.replace(spec.lab_costs.dataplane, attach_per_in_flight=0.0) == \
        dataclasses.replace(costs.dataplane, attach_per_in_flight=0.0)
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


@pytest.mark.parametrize(("gets", "puts", "latency", "commit"), [
    ([0.004, 0.005, 0.006], [0.003, 0.004], 0.005, 0.0),  # puts faster than gets: no commit below 0
    ([0.004, -1.0, 0.0, 1e300, 0.004], [0.007, float("inf"), 0.007], 0.004, 0.003),  # hostile values: not samples
    ([], [0.007], None, None),  # only one of the two lists: the store keeps its costs (the shipped ones)
])
def test_store_costs_from_gets_and_puts(tmp_path: Path, gets: list[float], puts: list[float], latency: float | None,
                                        commit: float | None) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps({**LAB_REPORT, "samples": {**LAB_REPORT["samples"], "etcd_get_seconds": gets,
                                                            "etcd_put_seconds": puts}}).replace("Infinity", "1e999"))
    out = tmp_path / "costs.yaml"
    shipped = ROOT / "scenarios" / COSTS_FILE
    run = CliRunner().invoke(app, ["lab", "fit", str(report), "--out", str(out), "--base", str(shipped)])
    assert run.exit_code == 0, run.output
    costs, kept = load_costs(out).costs, load_costs(shipped).costs.store
    assert costs.store.latency == pytest.approx(kept.latency if latency is None else latency)
    assert costs.store.commit_seconds == pytest.approx(kept.commit_seconds if commit is None else commit)


def _loaded(median: float, cpus: int = 2) -> dict[str, object]:
    return {**LAB_REPORT, "lab": {"machine_load": {"cpus": cpus, "samples": 30, "load1_min": 0.1,
                                                   "load1_median": median, "load1_max": median + 3}}}


def test_fit_refuses_a_report_of_a_loaded_machine_and_names_it(tmp_path: Path) -> None:
    quiet, loaded = tmp_path / "quiet.json", tmp_path / "loaded.json"
    quiet.write_text(json.dumps(_loaded(1.2)))
    loaded.write_text(json.dumps(_loaded(6.5)))
    costs = tmp_path / "costs.yaml"
    shutil.copy(ROOT / "scenarios" / COSTS_FILE, costs)
    before = costs.read_bytes()
    run = CliRunner().invoke(app, ["lab", "fit", str(quiet), str(loaded), "--out", str(costs)])
    assert run.exit_code == 2 and len(run.output.strip().splitlines()) == 1
    assert "loaded.json" in run.output and "3.25 per CPU > --max-load 2" in run.output
    assert costs.read_bytes() == before  # nothing half-written
    run = CliRunner().invoke(app, ["lab", "fit", str(quiet), str(loaded), "--out", str(costs), "--max-load", "4"])
    assert run.exit_code == 0, run.output
    assert "1-minute load 0.1-9.5 (median 6.5) on 2 CPUs" in costs.read_text()  # each report's load, in the file
    rates = {"fork_exec_per_second": 1000.0, "sha256_mib_per_second": 1500.0}
    quiet.write_text(json.dumps({**_loaded(1.2), "lab": {**_loaded(1.2)["lab"],  # type: ignore[dict-item]
                                                         "reference_rates": {"before": rates, "after": rates}}}))
    run = CliRunner().invoke(app, ["lab", "fit", str(quiet), "--out", str(costs)])
    assert run.exit_code == 0, run.output
    assert "on 2 CPUs; fork+exec 1,000 -> 1,000/s, sha256 1,500 -> 1,500 MiB/s" in costs.read_text()
    run = CliRunner().invoke(app, ["lab", "fit", str(quiet), "--out", str(costs), "--max-load", "nan"])
    assert run.exit_code == 2 and "max-load" in run.output
    with pytest.raises(FitError, match="--max-load nan is not a load per CPU"):
        fit_files([quiet], costs, max_load=float("nan"))


@pytest.mark.parametrize("record", [{"cpus": "2", "load1_min": 0, "load1_median": 1, "load1_max": 2},
                                    {"cpus": 2, "load1_min": 3, "load1_median": 1, "load1_max": 2},
                                    {"cpus": 2, "load1_min": 0, "load1_median": float("nan"), "load1_max": 2},
                                    {"cpus": True, "load1_min": 0, "load1_median": 1, "load1_max": 2},
                                    {"cpus": 2, "load1_min": 0, "load1_median": 1, "load1_max": 10 ** 400}, "high"])
def test_a_corrupt_load_record_counts_as_not_recorded(tmp_path: Path, record: object) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps({**LAB_REPORT, "lab": {"machine_load": record}}))
    run = CliRunner().invoke(app, ["lab", "fit", str(report), "--out", str(tmp_path / "costs.yaml"),
                                   "--base", str(ROOT / "scenarios" / COSTS_FILE)])
    assert run.exit_code == 0, run.output
    assert "machine load not recorded" in (tmp_path / "costs.yaml").read_text()


# ------------------------------------------------------------------ ADDs in flight


def _line_report(a: float, b: float, counts: list[int], name: str) -> dict[str, object]:
    """A lab report whose ADDs took exactly a + b x (in flight - 1), plus one slow outlier at 1 in flight."""
    seconds = [round(a + b * (n - 1), 6) for n in counts] + [3.0]
    return {**LAB_REPORT, "scenario": {"name": name},
            "samples": {**LAB_REPORT["samples"], "cni_add_seconds": seconds, "cni_add_in_flight": [*counts, 1]}}


def test_in_flight_line_recovers_the_lab_line_and_weighs_every_report_alike() -> None:
    boot = _line_report(0.06, 0.03, [1, 1, 1, 2, 3, 4, 5, 6, 7, 8], "boot")  # ADDs at once
    churn = _line_report(0.06, 0.03, [1] * 60 + [2] * 4, "churn")  # one at a time, mostly
    a, b = in_flight_line([in_flight_pairs(boot), in_flight_pairs(churn)])
    assert a == pytest.approx(0.06, abs=1e-6) and b == pytest.approx(0.03, abs=1e-6)  # the outlier moves nothing
    # unpaired lists (an older report, or lengths that differ) give no pairs
    assert in_flight_pairs(LAB_REPORT) == []
    assert in_flight_pairs({"samples": {"cni_add_seconds": [0.1, 0.2], "cni_add_in_flight": [1]}}) == []
    # a slope below 0 is none: contention never makes an ADD faster
    assert in_flight_line([[(1, 0.2), (2, 0.1)]])[1] == 0.0


def test_fit_puts_the_slope_in_the_lab_costs_only(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios", scenarios)
    paths = []
    for name, counts in (("boot", [1, 1, 2, 3, 4, 5, 6]), ("churn", [1] * 30 + [2] * 3)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**_line_report(0.08, 0.05, counts, name), "samples": {
            **_line_report(0.08, 0.05, counts, name)["samples"],
            "etcd_get_seconds": [0.002], "etcd_put_seconds": [0.002]}}))
        paths.append(str(path))
    run = CliRunner().invoke(app, ["lab", "fit", *paths, "--out", str(scenarios / COSTS_FILE)])
    assert run.exit_code == 0, run.output
    spec = load_scenario(scenarios / "host-crash-ip-leak.yaml").spec
    assert spec.costs.dataplane.attach_seconds == pytest.approx(0.08 - ROUND_TRIPS_PER_ADD * 0.002)
    assert spec.costs.dataplane.attach_per_in_flight == 0.0  # a Region's node is its own machine
    assert spec.lab_costs.dataplane.attach_per_in_flight == pytest.approx(0.05)
    assert spec.lab_costs.dataplane.attach_seconds == spec.costs.dataplane.attach_seconds
    assert "ADDs in flight" in (scenarios / COSTS_FILE).read_text()


def test_an_attach_pays_for_the_attaches_in_flight_on_its_machine() -> None:
    """Three attaches begun at once on one machine take base, base + 1 x slope, base + 2 x slope; on machines of
    their own, base each."""
    from foundation.ports.dataplane import Attachment

    def took(shared: bool) -> list[float]:
        runtime = SimRuntime()
        machine = Machine() if shared else None
        ends: list[float] = []

        async def attach(i: int) -> None:
            dp = SimDataplane(f"n{i}", runtime, attach_seconds=0.1, attach_per_in_flight=0.05, machine=machine)
            dp.add_netns(f"/var/run/netns/p{i}")
            await dp.attach(Attachment(container_id=f"{i + 1:064x}", netns=f"/var/run/netns/p{i}", ifname="eth0",
                                       bridge="br-int", vlan=10, address="10.0.0.2/24", gateway="10.0.0.1"))
            ends.append(runtime.now())

        for i in range(3):
            runtime.spawn(attach(i), name=f"attach-{i}")
        runtime.run()
        assert machine is None or machine.attaching == 0
        return sorted(ends)

    assert took(shared=True) == pytest.approx([0.1, 0.15, 0.2])
    assert took(shared=False) == pytest.approx([0.1, 0.1, 0.1])


def test_the_lab_kubelet_counts_the_adds_in_flight_of_live_runtimes_only(tmp_path: Path) -> None:
    """What fit reads is what the runtimes count: marks of live runtimes (this process, and pid 1 for another
    runtime's), not a SIGKILLed runtime's leftover (a pid that is no more), which the count removes."""
    import os
    import subprocess
    import sys

    from lab.container_runtime import ContainerRuntime

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / f"{dead}-7").touch()  # a killed runtime's mark
    (tmp_path / "1-3").touch()  # another live runtime's ADD
    runtime = object.__new__(ContainerRuntime)
    runtime.in_flight_dir, runtime.in_flight_seq = tmp_path, 0
    first, n1 = runtime._mark_in_flight()
    second, n2 = runtime._mark_in_flight()
    assert (n1, n2) == (2, 3)  # itself included
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["1-3", first.name, second.name])
    assert first.name == f"{os.getpid()}-1"
