"""`leengine lab run` end to end: one small scenario with a host crash, on a live lab, against the sim.

2 Cells x 2 nodes, one Nginx host, one app in both Cells; at t=20 s node c1-n001 crashes (its CNI
agent, runtime and pods SIGKILLed, no CNI DEL: its pods' addresses leak) and returns at t=35 s.
What must hold:

* the run writes OUT/report.json in the sim's shape (every key of a simulated report, ``scale: lab``),
  with real measurements: requests served through Nginx, pods started, CNI ADD samples, the fault
  applied and undone, and the leaks cnictl's cron found and released;
* its verdicts equal those of the same scaled scenario and seed run in the simulator;
* afterwards ``lab down`` leaves no netns, bridge, interface or process of the lab.

Root only (netns, OVS, etcd cluster, nginx); a missing component fails the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from lab.fabric import leftovers
from lab.lab import down_lab
from lab.record import tagged_pids
from lab.run import open_lab, run_lab
from sim.runner import build_report, run_scenario
from sim.scenario import Scenario, load_scenario
from sim.scenario_lab import lab_scaled

SCENARIO = """\
name: lab-run-host-crash
seed: 3
duration: 80
leak_check_every: 10
leak_grace: 10
cooldown: 5
topology:
  cells:
    - name: c1
      nodes: 2
      pools:
        - {name: c1-pool, cidr: 10.91.0.0/24, vlan: 191, block_size: 8}
    - name: c2
      nodes: 2
      pools:
        - {name: c2-pool, cidr: 10.92.0.0/24, vlan: 192, block_size: 8}
  groups:
    - {name: web, hosts: 1}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 2, group: web, requests_per_second: 5,
       start_seconds: 0.5, readiness_seconds: 0.5}
faults:
  - kind: host-crash
    at: 20
    duration: 15
    target: {names: [c1-n001]}
checks:
  - kind: no-duplicate-address
  - kind: leaks-found-and-released
    within: 40
  - kind: domains-keep-serving
  - kind: apps-serve-again
    within: 30
"""


def test_a_host_crash_scenario_runs_on_the_lab_with_the_sims_verdicts_and_leaves_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the lab makes network namespaces and OVS bridges: run the integration tier as root")
    path = tmp_path / "host-crash.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    spec = lab_scaled(scenario.spec)
    # Short: the Nginx hosts' admin sockets live under it (a unix socket path has 107 bytes).
    directory = Path(tempfile.mkdtemp(prefix="le-run-"))
    out = tmp_path / "out"
    try:  # the directory goes even when lab up fails
        lab, made = open_lab(scenario, directory)
        lab_id = lab.id
        assert made
        report = asyncio.run(asyncio.wait_for(run_lab(scenario, spec, lab, out, code_version={}), 300))
    finally:
        down = down_lab(directory)
        shutil.rmtree(directory, ignore_errors=True)
    # nothing of the lab is left
    assert down.clean, down.left
    assert not tagged_pids(lab_id)
    left = leftovers(lab_id, directory)
    assert not any(left.values()), left

    sim = run_scenario(Scenario(spec, scenario.sha256, str(path)))
    sim_report = build_report(sim, code_version={})
    assert set(sim_report) <= set(report), set(sim_report) - set(report)
    assert (out / "report.json").is_file()
    assert report["scale"] == "lab"
    verdicts = {c["name"]: c["passed"] for c in report["checks"]}
    assert verdicts == {c["name"]: c["passed"] for c in sim.checks}, (report["checks"], sim.checks)

    m, counts = report["metrics"], report["counts"]
    assert m["requests_ok"] > 100  # 5 requests a second served through Nginx for most of 80 s
    assert counts["pods_started"] >= 4 and counts["pods_died"] >= 1
    assert m["allocations"] >= 4 and report["samples"]["cni_add_seconds"]
    assert [(f["kind"], f["what"]) for f in report["lab"]["faults"]] == [("host-crash", "apply"),
                                                                        ("host-crash", "undo")]
    assert m["leaks_found"] >= 1 and m["leaks_released"] == m["leaks_found"]
    assert Path(out / "metrics").is_dir()
    # the agents' own spans, one sample per observation (their /metrics), and the end-to-end check
    assert report["samples"]["propagation_seconds"], report["lab"]["samples_from"]
    assert all(0 <= v < 30 for v in report["samples"]["propagation_seconds"] + report["samples"]["reload_seconds"])
    assert report["lab"]["served_after_ready_seconds"]
    puts, gets = report["samples"]["etcd_put_seconds"], report["samples"]["etcd_get_seconds"]  # what lab fit
    assert len(puts) >= 40 and len(gets) >= 40 and all(0 < t < 5 for t in puts + gets)  # sets the store to
    rates = report["lab"]["reference_rates"]  # the machine's speed just before and after: what the seconds are of
    assert all(rates[when][name] > 0 for when in ("before", "after")
               for name in ("fork_exec_per_second", "sha256_mib_per_second"))
    load = report["lab"]["machine_load"]  # what lab fit and compare weigh the run's timings by
    assert load["cpus"] == os.cpu_count() and load["samples"] >= 3
    assert 0 <= load["load1_min"] <= load["load1_median"] <= load["load1_max"]
