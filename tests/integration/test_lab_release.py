"""A gray release of a bad version on the lab is reverted by the real control service, with the sim's verdicts.

A small Region (2 Cells x 2 nodes, 2 Nginx hosts, the platform app ``shop`` with 3 replicas per
Cell on 100 requests a second) replayed by ``leengine lab run``: v1 deployed through
``leengine app``, v2 deployed at 30 s and released (10, 50, 100 %, 20 s of bake, a check every
4 s) while ``bad-version`` makes it answer 30 % of its requests with 500. The release controller
of ``leengine-control`` reads the Nginx hosts' per-version traffic records and reverts: v2's
share 0 and its controllers gone from both Cells' APIs; at the end the Cells run v1 only and
every platform change has its activity record. The verdicts equal the simulator's for the same
file, and ``lab down`` leaves nothing.

Root only; a missing component fails the test.
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
from sim.runner import run_scenario
from sim.scenario import Scenario, load_scenario
from sim.scenario_lab import lab_scaled

SCENARIO = """\
name: lab-release-revert
seed: 4
duration: 150
topology:
  cells:
    - name: c1
      nodes: 2
      pools:
        - {name: c1-pool, cidr: 10.96.0.0/24, vlan: 196, block_size: 8}
    - name: c2
      nodes: 2
      pools:
        - {name: c2-pool, cidr: 10.97.0.0/24, vlan: 197, block_size: 8}
  groups:
    - {name: web, hosts: 2}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 3, group: web, requests_per_second: 100, platform: true}
platform:
  traffic_every: 1
  releases:
    - app: shop
      at: 30
      steps: [10, 50, 100]
      bake_seconds: 20
      check_seconds: 4
      max_error_increase: 0.05
      max_latency_ratio: 3.0
      bad_checks: 2
      min_requests: 5
faults:
  - kind: bad-version
    at: 10
    app: shop
    version: next
    error_rate: 0.3
checks:
  - kind: release-reverted-within
    within: 40
  - kind: no-orphan-versions
  - kind: activity-consistent
"""


def test_a_bad_version_released_on_the_lab_is_reverted_in_both_cells_as_in_the_sim(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the lab makes network namespaces and OVS bridges: run the integration tier as root")
    path = tmp_path / "lab-release-revert.yaml"
    path.write_text(SCENARIO)
    shutil.copy(Path(__file__).resolve().parents[2] / "scenarios" / "costs.yaml", tmp_path / "costs.yaml")
    scenario = load_scenario(path)
    spec = lab_scaled(scenario.spec)
    directory = Path(tempfile.mkdtemp(prefix="le-rel-"))  # short: unix socket paths live under it
    out = tmp_path / "out"
    try:
        lab, _ = open_lab(scenario, directory)
        lab_id = lab.id
        report = asyncio.run(asyncio.wait_for(run_lab(scenario, spec, lab, out, code_version={}), 600))
    finally:
        down = down_lab(directory)
        shutil.rmtree(directory, ignore_errors=True)
    assert down.clean, down.left
    assert not tagged_pids(lab_id)
    assert not any(leftovers(lab_id, directory).values())

    verdicts = {c["name"]: c["passed"] for c in report["checks"]}
    assert all(verdicts.values()), report["checks"]
    platform = report["lab"]["platform"]
    assert platform["first_error"].keys() == {"shop v2"}, platform
    assert {"shop c1 shop-v2", "shop c2 shop-v2"} <= platform["controllers_gone"].keys(), platform
    states = [state for _, state, _, version in platform["releases"]["shop"] if version == "v2"]
    assert states[-1] == "reverted" and "completed" not in states, states
    assert platform["shares"]["shop"][-1][1] in ({"v1": 100}, {"v1": 100, "v2": 0}), platform["shares"]
    sim = run_scenario(Scenario(spec, scenario.sha256, str(path)))
    assert verdicts == {c["name"]: c["passed"] for c in sim.checks}, (report["checks"], sim.checks)
