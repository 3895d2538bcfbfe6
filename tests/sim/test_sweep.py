"""Seed sweeps on a Dask LocalCluster: every seed once, the same traces as serial runs, failures grouped, shrinking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from leengine.sweep_cmd import DaskEngine, SerialEngine
from sim.runner import run_scenario
from sim.scenario import load_scenario, parse_scenario
from sim.shrink import ShrinkError, _plain, dump, normalised, shrink, size
from sim.sweep import SweepJob, parse_seeds, run_sweep, signature, summarize, summary_text, write_sweep

ROOT = Path(__file__).resolve().parents[2]
# The test IPAM of test_world that drops its compare-and-swap on blocks: nodes overwrite each other's blocks.
BROKEN_IPAM = "tests.sim.test_world:NoCasIpam"

SMALL = """\
name: sweep-small
seed: 1
duration: 120
topology:
  cells:
    - name: c1
      nodes: 5
      racks: 2
      pools: [{name: p1, cidr: 10.1.0.0/26, vlan: 101}]
    - name: c2
      nodes: 5
      pools: [{name: p2, cidr: 10.2.0.0/26, vlan: 102}]
  groups: [{name: public, hosts: 2}]
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 3, group: public, requests_per_second: 50}
    - {name: blog, cells: [c1, c2], replicas: 2, group: public, requests_per_second: 20}
    - {name: api, cells: [c1], replicas: 2, group: public, requests_per_second: 30}
faults:
  - {kind: host-crash, at: 60, duration: 30, target: {count: 1}}
  - {kind: etcd-slow, at: 20, duration: 10, factor: 5}
checks:
  - kind: no-duplicate-address
  - kind: max-reloads
    limit: 1000
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def engine():
    with DaskEngine(workers=2) as dask_engine:
        yield dask_engine


def test_a_local_cluster_reports_every_seed_once_with_the_serial_runs_traces(engine, scenario_file):
    loaded = load_scenario(scenario_file)
    seeds = list(range(1, 13))
    seen: list[int] = []
    sweep = run_sweep(engine, SweepJob(loaded.spec), seeds, lambda result, _sweep: seen.append(result["seed"]))
    assert sorted(seen) == seeds and len(sweep.results) == 12 and not sweep.missing() and sweep.duplicates == 0
    assert engine.describe()["workers"] == 2
    assert len({r["worker"] for r in sweep.results.values()}) == 2  # both processes ran seeds
    for seed in seeds:
        serial = run_scenario(load_scenario(scenario_file, seed=seed))  # what `leengine sim run --seed N` runs
        result = sweep.results[seed]
        assert result["trace_sha256"] == serial.trace_sha256, seed
        assert result["passed"] == serial.passed and result["checks"] == {c["name"]: c["passed"] for c in serial.checks}
        assert result["wall_seconds"] > 0 and result["code"]
    assert len({r["trace_sha256"] for r in sweep.results.values()}) == 12  # other seeds, other runs


def test_a_sweep_with_a_broken_ipam_finds_failing_seeds_groups_them_and_shrink_makes_one_smaller(
        engine, scenario_file, tmp_path):
    loaded = load_scenario(scenario_file)
    seeds = list(range(1, 11))
    sweep = run_sweep(engine, SweepJob(loaded.spec, hook=BROKEN_IPAM), seeds)
    report = summarize(sweep, scenario={"file": str(scenario_file), "name": "sweep-small", "sha256": loaded.sha256},
                       code={"describe": "test"}, engine=engine.describe(), seeds_text="1-10", wall_seconds=1.0)
    failing = sorted(s for s, r in sweep.results.items() if not r["passed"])
    assert len(failing) >= 3, failing  # the bug shows on most seeds of this Region (17 of 20 when written)
    assert report["totals"]["failed"] == len(failing) and report["failures_by_check"] == {
        "no-duplicate-address": len(failing)}
    (group,) = report["groups"]  # one cause: blocks passed on without a release
    assert group["check"] == "no-duplicate-address" and group["seeds"] == failing
    assert "passed from sandbox-N/ethN to sandbox-N/ethN without a release" in group["signature"]
    assert group["replay"] == f"leengine sim run {scenario_file} --seed {failing[0]}"
    files = write_sweep(report, tmp_path / "sweep")
    assert files == ["sweep.json", "summary.txt", "failures-by-check.png", "wall-time.png"]
    on_disk = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["seed"] for r in on_disk["results"]] == seeds and on_disk["groups"][0]["seeds"] == failing
    assert f"seeds {', '.join(map(str, failing))}" in summary_text(report)
    assert (tmp_path / "sweep" / "wall-time.png").read_bytes()[:4] == b"\x89PNG"

    # The same agent unbroken: the same seeds pass.
    assert all(r["passed"] for r in run_sweep(engine, SweepJob(loaded.spec), failing[:3]).results.values())

    seed = failing[0]
    outcome = shrink(engine, load_scenario(scenario_file, seed=seed), seed=seed, hook=BROKEN_IPAM, max_runs=150)
    before, after = outcome.before, outcome.after
    assert outcome.check == "no-duplicate-address" and outcome.signature == group["signature"]
    assert after["faults"] == 0 and after["checks"] == 1  # neither fault nor the other check is needed
    assert after["nodes"] < before["nodes"] and after["duration"] < before["duration"]
    assert sum(after.values()) < sum(before.values())
    small = tmp_path / "shrunk.yaml"
    small.write_text(outcome.yaml_text)
    rerun = load_scenario(small)  # a scenario file as any other: validated, and it still fails, alone
    assert size(rerun.spec) == after and rerun.spec.seed == seed
    (result,) = SerialEngine().run([(SweepJob(rerun.spec, hook=BROKEN_IPAM), seed)])
    assert [f["check"] for f in result[1]["failures"]] == ["no-duplicate-address"]
    assert outcome.yaml_text.startswith("# Shrunk by `leengine sim shrink`")
    with pytest.raises(ShrinkError, match="passes every check"):  # with the real IPAM there is nothing to shrink
        shrink(SerialEngine(), load_scenario(scenario_file, seed=seed), seed=seed)


def test_the_command_writes_the_sweep_and_says_which_seeds_failed(scenario_file, tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "leengine.cli", "sim", "sweep", str(scenario_file), "--seeds", "3-5,9",
                          "--workers", "1", "--out", str(out), "--no-plots"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "sweep.json").read_text())
    assert [r["seed"] for r in report["results"]] == [3, 4, 5, 9] and report["totals"]["passed"] == 4
    assert report["engine"]["kind"] == "local-cluster" and report["seeds"] == {"spec": "3-5,9", "count": 4}
    assert "4 reported: 4 passed, 0 failed" in run.stdout
    hooked = subprocess.run(["leengine", "sim", "sweep", str(scenario_file), "--seeds", "1-2", "--workers", "1",
                             "--out", str(tmp_path / "hooked"), "--no-plots", "--ipam-hook", BROKEN_IPAM],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert hooked.returncode == 1, hooked.stderr  # the broken IPAM: both seeds fail (seen in the sweep above)
    assert "2 reported: 0 passed, 2 failed" in hooked.stdout
    assert f"replay: leengine sim sweep {scenario_file} --seeds 1 --ipam-hook {BROKEN_IPAM}" in hooked.stdout
    bad = subprocess.run([sys.executable, "-m", "leengine.cli", "sim", "sweep", str(scenario_file), "--seeds", "9-3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "leengine: error: --seeds: '9-3': the range ends before it starts"


def test_seed_lists():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("7, 1-3,2") == [7, 1, 2, 3]
    for bad in ("", "a", "5-1", "1-", "-3", "1;2", f"1-{2**63}"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="more than 1,000,000"):
        parse_seeds("1-1000001")


def test_a_signature_keeps_the_shape_of_a_failure_and_drops_what_varies_by_seed():
    a = signature("3 duplicate owner(s); first: rev 16: 10.2.0.2 in /ipam/blocks/p2/10.2.0.0-28 passed")
    b = signature("1 duplicate owner(s); first: rev 907: 10.1.0.37 in /ipam/blocks/p1/10.1.0.32-28 passed")
    assert a == b == "N duplicate owner(s); first: rev N: N in /ipam/blocks/pN/N-N passed"
    assert signature("at t=420: not serving: svc-1, svc-7, svc-12") == signature("at t=300: not serving: svc-4")
    assert signature("x" * 500) == "x" * 160


def test_a_result_delivered_twice_is_kept_once():
    class Twice:
        def run(self, tasks):
            for index, (_job, seed) in enumerate(tasks):
                result = {"seed": seed, "passed": True, "failures": []}
                yield index, result
                yield index, dict(result)  # a retried task whose first run also came back

    seen = []
    sweep = run_sweep(Twice(), None, [4, 5, 6], lambda r, _s: seen.append(r["seed"]))
    assert seen == [4, 5, 6] and sweep.duplicates == 3 and sweep.passed == 3


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if p.name != "costs.yaml"),
                         ids=lambda p: p.stem)
def test_every_shipped_scenario_reads_back_the_same_once_shrink_rewrites_it(path):
    # What shrink writes is a YAML dump of the document with the costs written in: it must mean the same
    # spec (less the file's name, its lab block and source lines), or a shrunk scenario would be another one.
    loaded = load_scenario(path)
    text = dump(normalised(loaded, 42))
    assert _plain(parse_scenario(text, "rewritten.yaml")) == _plain(replace(loaded.spec, seed=42))
