"""Scenario files: every bad input is one error naming file, line and field; every shipped scenario loads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sim.scenario import COSTS_FILE, ScenarioError, load_scenario
from sim.spec import MAX_NODES_PER_CELL, Selector

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "scenarios").glob("*.yaml") if p.name != COSTS_FILE)  # costs: no scenario

BASE = """\
name: t
seed: 1
duration: 300
topology:
  cells:
    - name: c1
      nodes: 4
      racks: 2
      labels: {room: a}
      pools:
        - {name: p1, cidr: 10.1.0.0/24, vlan: 101}
    - name: c2
      nodes: 4
      pools:
        - {name: p2, cidr: 10.2.0.0/24, vlan: 102}
  groups:
    - {name: web, hosts: 2}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 2, group: web}
faults:
  - kind: host-crash
    at: 60
    target: {names: [c1-n001]}
checks:
  - kind: no-duplicate-address
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def bad(tmp_path: Path, old: str, new: str, *, at: str | None = None) -> tuple[ScenarioError, int, Path]:
    assert old in BASE, old
    text = BASE.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value, line_of(text, (at or new.strip().splitlines()[0]).split("#")[0]), path


CASES = [
    # (id, old, new, field, words in the message, line marker if not the new text's first line)
    ("unknown-top-key", "seed: 1\n", "seed: 1\nsede: 2\n", "sede", "unknown key", "sede: 2"),
    ("unknown-cell-key", "      racks: 2\n", "      racks: 2\n      rooms: 3\n", "topology.cells[0].rooms",
     "unknown key", "rooms: 3"),
    ("unknown-pool-key", "vlan: 101}", "vlan: 101, mtu: 9000}", "topology.cells[0].pools[0].mtu", "unknown key", None),
    ("wrong-type-nodes", "nodes: 4\n      racks", "nodes: four\n      racks", "topology.cells[0].nodes",
     "must be an integer", None),
    ("wrong-type-duration", "duration: 300", "duration: [300]", "duration", "must be a single value", None),
    ("bool-is-not-int", "seed: 1", "seed: true", "seed", "must be an integer", None),
    ("wrong-type-cells", "cells: [c1, c2]", "cells: c1", "workload.apps[0].cells", "must be a list", None),
    ("unknown-fault-kind", "kind: host-crash", "kind: meteor", "faults[0].kind", "unknown fault kind", None),
    ("unknown-check-kind", "kind: no-duplicate-address", "kind: vibes", "checks[0].kind", "unknown check kind", None),
    ("selector-unknown-name", "names: [c1-n001]", "names: [c9-n001]", "faults[0].target.names[0]", "no node named",
     None),
    ("selector-unknown-label-key", "names: [c1-n001]", "labels: {zone: z1}", "faults[0].target.labels.zone",
     "no label 'zone'", None),
    ("selector-unknown-label-value", "names: [c1-n001]", "labels: {rack: r7}", "faults[0].target.labels.rack",
     "rack='r7'", None),
    ("selector-labels-match-nothing-together", "names: [c1-n001]", "labels: {room: a, cell: c2}",
     "faults[0].target.labels", "matches all", None),
    ("selector-count-too-large", "{names: [c1-n001]}", "{labels: {cell: c1}, count: 5}", "faults[0].target.count",
     "at most 4", None),
    ("overlapping-cidrs", "cidr: 10.2.0.0/24", "cidr: 10.1.0.128/25", "topology.cells[1].pools[0].cidr",
     "overlaps 10.1.0.0/24", None),
    ("bad-cidr", "cidr: 10.2.0.0/24", "cidr: 10.2.0.1/24", "topology.cells[1].pools[0].cidr", "CIDR", None),
    ("vlan-too-high", "vlan: 102", "vlan: 4095", "topology.cells[1].pools[0].vlan", "at most 4094", None),
    ("vlan-zero", "vlan: 102", "vlan: 0", "topology.cells[1].pools[0].vlan", "at least 1", None),
    ("default-block-larger-than-pool", "cidr: 10.2.0.0/24", "cidr: 10.2.0.0/29",
     "topology.cells[1].pools[0].cidr", "block size 16 is larger than the pool", None),
    ("pool-too-small-for-pods", "cidr: 10.2.0.0/24", "cidr: 10.2.0.0/31", "topology.cells[1].pools[0].cidr",
     "too small", None),
    ("negative-duration", "duration: 300", "duration: -5", "duration", "greater than 0", None),
    ("negative-fault-time", "at: 60", "at: -1", "faults[0].at", "must not be negative", None),
    ("negative-fault-duration", "at: 60\n", "at: 60\n    duration: -10\n", "faults[0].duration", "greater than 0",
     "duration: -10"),
    ("fault-at-end", "at: 60", "at: 300", "faults[0].at", "not before the end", None),
    ("fault-after-end", "at: 60", "at: 301.5", "faults[0].at", "not before the end", None),
    ("too-many-nodes", "nodes: 4\n      racks", f"nodes: {MAX_NODES_PER_CELL + 1}\n      racks",
     "topology.cells[0].nodes", f"the {MAX_NODES_PER_CELL}", None),
    ("app-in-unknown-cell", "cells: [c1, c2]", "cells: [c1, c3]", "workload.apps[0].cells[1]", "no Cell named 'c3'",
     None),
    ("app-in-unknown-group", "group: web}", "group: api}", "workload.apps[0].group", "no Nginx group named 'api'",
     None),
    ("fault-unknown-group", "kind: host-crash\n    at: 60\n    target: {names: [c1-n001]}\n",
     "kind: nginx-host-loss\n    at: 60\n    group: api\n", "faults[0].group", "no Nginx group", "group: api"),
    ("missing-required", "seed: 1\n", "", "seed", "required key is missing", "name: t"),
    ("duplicate-cell", "    - name: c2\n", "    - name: c1\n", "topology.cells[1].name", "duplicate Cell",
     "- name: c1#2"),
]


@pytest.mark.parametrize(("old", "new", "field", "words", "at"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_file_line_and_field(tmp_path, old, new, field, words, at):
    err, line, path = bad(tmp_path, old, new, at=at)
    if at and "#" in at:  # "needle#n": the n-th line holding the needle
        needle, n = at.split("#")
        line = [i for i, ln in enumerate(BASE.replace(old, new, 1).splitlines(), 1) if needle in ln][int(n) - 1]
    assert (err.file, err.line, err.field) == (str(path), line, field), str(err)
    assert words in err.message
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: {field}: ")


def test_fault_selectors_resolve_by_kind(tmp_path):
    faults = """\
faults:
  - {kind: cell-outage, at: 10, duration: 30, target: {labels: {room: a}}}
  - {kind: nginx-host-loss, at: 10, group: web, target: {names: [web-nginx-2]}}
  - {kind: reload-storm, at: 20, group: web, changes: 50, target: {names: [shop]}}
  - {kind: etcd-slow, at: 20, factor: 5, target: {labels: {cell: c2}, percent: 50}}
  - {kind: pool-exhaustion, at: 30, pool: p2, free: 3}
"""
    text = BASE.split("faults:")[0] + faults + "checks:\n  - {kind: max-reloads, limit: 3}\n"
    spec = load_scenario(write(tmp_path, text)).spec
    outage, loss, storm, slow, exhaust = spec.faults
    assert outage.target == Selector(labels=(("room", "a"),)) and outage.duration == 30
    assert loss.target.names == ("web-nginx-2",) and loss.group == "web"
    assert storm.changes == 50 and storm.target.names == ("shop",)
    assert slow.factor == 5 and slow.target.percent == 50
    assert exhaust.pool == "p2" and exhaust.free == 3
    assert [f.line for f in spec.faults] == [line_of(text, k) for k in ("cell-outage", "nginx-host", "reload-storm",
                                                                          "etcd-slow", "pool-exhaustion")]
    # The same names in the wrong kind's universe are errors: a Cell is not a node, a node is not an Nginx host.
    for wrong, field in (("{kind: host-crash, at: 10, target: {names: [web-nginx-1]}}", "faults[0].target.names[0]"),
                         ("{kind: host-crash, at: 10, target: {labels: {role: nginx}}}",
                          "faults[0].target.labels.role"),
                         ("{kind: etcd-slow, at: 10, target: {names: [c1]}}", "faults[0].target.names[0]"),
                         ("{kind: reload-storm, at: 10, group: web, target: {names: [c1-n001]}}",
                          "faults[0].target.names[0]"),
                         ("{kind: cell-outage, at: 10, target: {names: [c1-n001]}}", "faults[0].target.names[0]"),
                         ("{kind: nginx-host-loss, at: 10, target: {names: [c1-n001]}}", "faults[0].target.names[0]"),
                         ("{kind: pool-exhaustion, at: 10, pool: p9}", "faults[0].pool"),
                         ("{kind: etcd-slow, at: 10, changes: 3}", "faults[0].changes")):
        text = BASE.split("faults:")[0] + f"faults:\n  - {wrong}\n"
        with pytest.raises(ScenarioError) as info:
            load_scenario(write(tmp_path, text))
        assert info.value.field == field and info.value.line == line_of(text, wrong[:20]), str(info.value)


def test_etcd_faults_select_any_etcd_client_by_name_or_role(tmp_path):
    faults = """\
faults:
  - {kind: etcd-unavailable, at: 10, duration: 5, target: {labels: {role: nginx}}}
  - {kind: etcd-slow, at: 10, factor: 3, target: {names: [discovery, c2-n004, web-nginx-2]}}
  - {kind: etcd-slow, at: 20, target: {labels: {role: node, cell: c1}, count: 2}}
"""
    spec = load_scenario(write(tmp_path, BASE.split("faults:")[0] + faults)).spec
    cut, slow, nodes = spec.faults
    assert cut.target.labels == (("role", "nginx"),)
    assert slow.target.names == ("discovery", "c2-n004", "web-nginx-2")
    assert nodes.target.count == 2
    text = BASE.replace("labels: {room: a}", "labels: {role: db}")
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    assert info.value.field == "topology.cells[0].labels.role" and "set by the topology" in info.value.message


def test_yaml_syntax_error_and_empty_file_and_missing_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, "seed: 1\ntopology: [\n"))
    assert info.value.field == "yaml" and info.value.line >= 2
    with pytest.raises(ScenarioError, match=r"s\.yaml:1: \(top\): the file is empty"):
        load_scenario(write(tmp_path, ""))
    with pytest.raises(ScenarioError, match=r"nope\.yaml:0: file:"):
        load_scenario(tmp_path / "nope.yaml")


def test_base_loads_with_defaults_hash_and_seed_override(tmp_path):
    path = write(tmp_path, BASE)
    loaded = load_scenario(path, seed=9)
    spec = loaded.spec
    assert loaded.sha256 == hashlib.sha256(BASE.encode()).hexdigest()
    assert spec.seed == 9 and spec.duration == 300.0 and spec.source == str(path)
    assert [c.name for c in spec.cells] == ["c1", "c2"] and spec.cells[0].node_labels == (("room", "a"),)
    assert spec.cells[0].pools[0].block_size == 16 and spec.apps[0].port == 8080
    assert spec.faults[0].target.names == ("c1-n001",) and spec.faults[0].line == line_of(BASE, "kind: host-crash")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_scenario_validates(path):
    spec = load_scenario(path).spec
    assert spec.checks and spec.apps
    # Every shipped scenario injects faults, but steady-state (churn alone, over which no alert may fire) and
    # the lab's scale bench Regions (bench/lab_scale.py: how fast it comes up and serves, nothing broken).
    assert bool(spec.faults) == (path.name not in ("steady-state.yaml", "lab-scale.yaml", "lab-burst-1000.yaml"))
    assert all(c.nodes <= MAX_NODES_PER_CELL for c in spec.cells)


def test_the_shipped_set_is_complete():
    names = {p.name for p in SHIPPED}
    assert {"default.yaml", "host-crash-ip-leak.yaml", "nginx-reload-storm.yaml", "cell-outage.yaml",
            "ipam-burst-1000.yaml", "pool-exhaustion.yaml", "builder-crash.yaml"} <= names
    burst = load_scenario(ROOT / "scenarios" / "ipam-burst-1000.yaml").spec
    assert len(burst.apps) == 100 and {a.replicas for a in burst.apps} == {10}


def test_build_farm_fields_and_builder_crash_targets(tmp_path):
    farm = BASE.replace("topology:\n", "topology:\n  build_hosts: 3\n")
    faults = """\
faults:
  - {kind: builder-crash, at: 10, duration: 30, target: {names: [build-2]}}
  - {kind: etcd-slow, at: 10, target: {labels: {role: build}}}
  - {kind: etcd-unavailable, at: 10, target: {names: [build-scheduler]}}
"""
    spec = load_scenario(write(tmp_path, farm.split("faults:")[0] + faults)).spec
    assert spec.build_hosts == 3 and spec.faults[0].target.names == ("build-2",)
    for text, field in (
        (BASE.split("faults:")[0] + "faults:\n  - {kind: builder-crash, at: 10}\n", "faults[0].kind"),
        (farm.split("faults:")[0] + "faults:\n  - {kind: builder-crash, at: 10, target: {names: [build-9]}}\n",
         "faults[0].target.names[0]"),
        (BASE.split("faults:")[0] + "faults:\n  - {kind: etcd-slow, at: 10, target: {names: [build-scheduler]}}\n",
         "faults[0].target.names[0]"),  # no farm, no scheduler
        (BASE.replace("topology:\n", "topology:\n  build_hosts: -1\n"), "topology.build_hosts"),
    ):
        with pytest.raises(ScenarioError) as info:
            load_scenario(write(tmp_path, text))
        assert info.value.field == field, str(info.value)
