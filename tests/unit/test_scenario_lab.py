"""The scenario's `lab:` and `costs:` blocks and costs.yaml: parsed, bounded, applied by lab_scaled."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.scenario import COSTS_FILE, ScenarioError, load_scenario, parse_scenario
from sim.scenario_costs import parse_costs
from sim.scenario_lab import lab_scaled

ROOT = Path(__file__).resolve().parents[2]
LAB_SCENARIOS = ("host-crash-ip-leak", "cell-outage", "nginx-reload-storm", "pool-exhaustion", "builder-crash")

BASE = """\
name: t
seed: 1
duration: 1000
topology:
  build_hosts: 3
  cells:
    - {name: c1, nodes: 10, racks: 4, pools: [{name: p1, cidr: 10.1.0.0/22, vlan: 101}]}
    - {name: c2, nodes: 10, pools: [{name: p2, cidr: 10.2.0.0/22, vlan: 102}]}
  groups: [{name: web, hosts: 3}]
workload:
  apps:
    - {name: svc, count: 6, cells: [c1, c2], replicas: 5, group: web, requests_per_second: 50}
  churn: {deploys_per_hour: 10}
faults:
  - {kind: host-crash, at: 100, duration: 50, target: {labels: {cell: c1, rack: r3}}}
  - {kind: builder-crash, at: 200, every: 100, duration: 20}
checks:
  - {kind: apps-serve-again, within: 200}
"""


def test_a_spec_without_a_lab_block_is_left_as_it_is() -> None:
    spec = parse_scenario(BASE.replace("rack: r3", "rack: r1"))
    assert spec.lab is None and lab_scaled(spec) is spec


def test_the_lab_block_caps_the_topology_and_scales_every_time() -> None:
    text = BASE + ("lab: {nodes_per_cell: 4, racks_per_cell: 3, hosts_per_group: 2, build_hosts: 1, max_count: 2,\n"
                   "      max_replicas: 2, max_requests_per_second: 20, time_scale: 0.25}\n")
    spec = parse_scenario(text)
    scaled = lab_scaled(spec)
    assert scaled.scale == "lab" and scaled.lab == spec.lab and lab_scaled(scaled) is scaled
    assert [(c.nodes, c.racks) for c in scaled.cells] == [(4, 3), (4, 1)]
    assert [g.hosts for g in scaled.groups] == [2] and scaled.build_hosts == 1
    assert [a.name for a in scaled.apps] == ["svc-1", "svc-2"]
    assert {(a.replicas, a.requests_per_second) for a in scaled.apps} == {(2, 20.0)}
    assert scaled.duration == 250
    assert [(f.at, f.duration, f.every) for f in scaled.faults] == [(25, 12.5, None), (50, 5, 25)]
    assert scaled.checks[0].within == 50
    assert scaled.leak_check_every == 15 and scaled.leak_grace == 15 and scaled.cooldown == 7.5
    assert scaled.churn.deploys_per_hour == 40  # the same deploys in a quarter of the time
    assert spec.duration == 1000  # the original is untouched


@pytest.mark.parametrize(("block", "field", "words"), [
    ("lab: {time_scale: 0}", "lab.time_scale", "greater than 0"),
    ("lab: {time_scale: 1.5}", "lab.time_scale", "at most 1"),
    ("lab: {nodes_per_cell: 0}", "lab.nodes_per_cell", "at least 1"),
    ("lab: {cells: 2}", "lab.cells", "unknown key"),
    ("lab: {racks_per_cell: 2}", "lab", "selects nothing"),  # rack r3 is gone
    ("lab: {build_hosts: 0}", "lab.build_hosts", "has none"),
    ("lab: {time_scale: 0.005}", "lab.time_scale", "below"),  # builder-crash every 100 s -> 0.5 s
])
def test_a_lab_block_that_leaves_no_runnable_scenario_is_one_line_at_the_block(block: str, field: str,
                                                                                words: str) -> None:
    text = BASE + block + "\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.yaml")
    line = text.count("\n")  # the block is the last line
    assert (info.value.line, info.value.field) == (line, field) and words in info.value.message
    assert "\n" not in str(info.value)


def test_costs_come_from_the_file_beside_the_scenario_then_its_costs_block_then_etcd_latency(tmp_path: Path) -> None:
    (tmp_path / COSTS_FILE).write_text("costs:\n  dataplane: {attach_seconds: 0.02}\n  store: {latency: 0.004}\n"
                                       "lab_costs:\n  builder: {compile_cold: 2}\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(BASE.replace("rack: r3", "rack: r1") + "costs:\n  proxy: {reload_base: 0.2}\n")
    spec = load_scenario(scenario).spec
    assert spec.costs.dataplane.attach_seconds == 0.02 and spec.costs.proxy.reload_base == 0.2
    assert spec.etcd_latency == spec.costs.store.latency == 0.004
    assert spec.costs.builder.compile_cold == 180  # the code's default: lab_costs are for the lab only
    assert lab_scaled(spec).costs == spec.costs  # no lab block: identity
    assert spec.lab_costs is not None and spec.lab_costs.builder.compile_cold == 2
    assert spec.lab_costs.dataplane.attach_seconds == 0.02
    scenario.write_text(BASE.replace("rack: r3", "rack: r1") + "etcd_latency: 0.01\n")
    assert load_scenario(scenario).spec.costs.store.latency == 0.01


@pytest.mark.parametrize(("text", "line", "field"), [
    ("costs:\n  dataplane: {attach_seconds: -1}\n", 2, "costs.dataplane.attach_seconds"),
    ("costs:\n  proxy:\n    reload_bse: 0.1\n", 3, "costs.proxy.reload_bse"),
    ("costs:\n  builder: {registry_mb_per_second: 0}\n", 2, "costs.builder.registry_mb_per_second"),
    ("lab_costs: {store: {latency: .nan}}\n", 1, "lab_costs.store.latency"),
    ("fitted: {reports: [ok.json, {a: b}]}\n", 1, "fitted.reports[1]"),
    ("costs: [1]\n", 1, "costs"),
])
def test_a_bad_costs_file_is_one_line_naming_file_line_and_field(text: str, line: int, field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_costs(text.encode(), "costs.yaml")
    assert (info.value.file, info.value.line, info.value.field) == ("costs.yaml", line, field)


@pytest.mark.parametrize("name", LAB_SCENARIOS)
def test_the_lab_scenarios_fit_one_machine(name: str) -> None:
    spec = lab_scaled(load_scenario(ROOT / "scenarios" / f"{name}.yaml").spec)
    pods = sum(a.replicas * len(a.cells) for a in spec.apps)
    assert spec.scale == "lab" and len(spec.cells) <= 3 and all(c.nodes <= 4 for c in spec.cells)
    assert all(g.hosts <= 2 for g in spec.groups) and spec.build_hosts <= 2 and pods <= 40
    assert 120 <= spec.duration <= 300.01
