"""Property tests of the scenario validator (issue 9): hostile text, token soup and hostile structures give a
RegionSpec or a one-line ``FILE:LINE: FIELD: message`` ScenarioError, never another exception, each fast; and
``TargetIndex`` (what validation asks of the fault targets) agrees with ``target_universe`` (what the world draws).
"""

from __future__ import annotations

import re
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.scenario import ScenarioError, parse_scenario
from sim.spec import (
    FAULT_TARGETS,
    AppSpec,
    CellSpec,
    GroupSpec,
    PoolSpec,
    RegionSpec,
    Selector,
)
from sim.targets import matches, target_universe
from tests.unit.test_scenario import BASE

ERROR_LINE = re.compile(r"^h\.yaml:(?P<line>\d+): (?P<field>\S+): (?P<message>.+)$")
PER_EXAMPLE_SECONDS = 1.0
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORST: dict[str, float] = {}

# Pieces of YAML an attacker or a careless user would reach for.
FRAGMENTS = [
    "!!int abc", "!!timestamp abc", "!!float x", "!!bool maybe", "!!binary aGk=", "!!set {a}", "!!omap [a: 1]",
    "!!python/object:os.system", "!custom", "!", "<<: ", "<<: *a", "&a ", "*a", "&b [1]", "[", "]", "{", "}",
    "- ", ": ", ", ", "\n", "  ", "    ", "\t", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "? ",
    "'", '"', "\\", "#", "|\n  ", ">\n  ", "~", "null", "true", "yes", "no", ".inf", "-.inf", ".nan", "1e300",
    "1.0e+300", "0x" + "f" * 80, "0b101", "0o17", "017", "1:30:00", "-0", "9" * 5000, "1" + "0" * 300 + ".0",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "\x00", "\x1b[2J", "\u2028", "\ufeff", "é", "\ud7ff",
    "seed: ", "duration: ", "topology: ", "cells: ", "pools: ", "groups: ", "workload: ", "apps: ", "faults: ",
    "checks: ", "name: ", "nodes: ", "count: ", "replicas: ", "hosts: ", "target: ", "labels: ", "names: ",
    "kind: host-crash", "kind: etcd-slow", "cidr: 10.0.0.0/8", "cidr: ::/0", "vlan: 4095", "1000000000",
    str(10**12), "-1", "0", "1",
]


def check(text: str | bytes, kind: str) -> RegionSpec | ScenarioError:
    started = time.perf_counter()
    try:
        outcome: RegionSpec | ScenarioError = parse_scenario(text, "h.yaml")
    except ScenarioError as exc:
        outcome = exc
    elapsed = time.perf_counter() - started
    WORST[kind] = max(WORST.get(kind, 0.0), elapsed)
    assert elapsed < PER_EXAMPLE_SECONDS, f"{elapsed:.3f} s"
    if isinstance(outcome, ScenarioError):
        message = str(outcome)
        m = ERROR_LINE.match(message)
        assert m is not None and "\n" not in message and "\r" not in message, repr(message)
        assert m["field"] == outcome.field and int(m["line"]) == outcome.line >= 0
        assert len(message) < 1200, len(message)
    else:
        assert isinstance(outcome, RegionSpec) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", outcome.name)
    return outcome


soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=120).map("".join)


@SETTINGS
@given(st.one_of(st.text(max_size=3000), soup))
def test_hostile_text(text):
    check(text, "text")


@SETTINGS
@given(st.binary(max_size=3000))
def test_hostile_bytes(data):
    check(data, "bytes")


@SETTINGS
@given(st.integers(0, len(BASE)), st.integers(0, 40), soup)
def test_the_base_scenario_with_a_slice_replaced(start, length, piece):
    check(BASE[:start] + piece + BASE[start + length:], "splice")


hostile_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**80, 10**80), st.floats(),
              st.text(max_size=60), st.sampled_from(["", "c1", "web", "p1", "c1-n001", "r1", "a" * 5000, "10.1.0.0/24",
                                                     "host-crash", "\x1b[31m", "../../x", "0.0.0.0/0"])),
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children,
                                                                                 max_size=6)),
    max_leaves=25,
)


@SETTINGS
@given(st.data())
def test_hostile_structures(data):
    """Replace one value anywhere in the base scenario (or add a key) with a generated hostile value."""
    doc: Any = yaml.safe_load(BASE)
    node, path = doc, []
    while isinstance(node, dict | list) and node and data.draw(st.booleans(), "descend"):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))), "key")
        path.append(key)
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        node = node[key]
    value = data.draw(hostile_values, "value")
    if isinstance(node, dict) and data.draw(st.booleans(), "new key"):
        node[data.draw(st.text(max_size=12), "new key name")] = value
    elif path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    else:
        doc = value
    try:
        text = yaml.safe_dump(doc, allow_unicode=True, width=200)
    except yaml.YAMLError:
        return  # not every generated value is representable; the text tests cover the rest
    check(text, "structure")


def test_the_worst_example_was_fast():
    # The property tests above assert each example < 1 s; this records the worst for the report.
    if WORST:
        print("worst seconds per example:", {k: round(v, 4) for k, v in WORST.items()})
        assert max(WORST.values()) < PER_EXAMPLE_SECONDS


# --------------------------------------------------------------------------- TargetIndex == target_universe

NAMES = ["c1", "c2", "web", "api", "x", "c1-n", "web-nginx", "build"]


@st.composite
def regions(draw) -> tuple[tuple[CellSpec, ...], tuple[GroupSpec, ...], tuple[AppSpec, ...], int]:
    cell_names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    label_keys = st.sampled_from(["room", "row", "group", "zone"])
    cells = []
    for i, name in enumerate(cell_names):
        nodes = draw(st.integers(1, 30))
        labels = draw(st.dictionaries(label_keys, st.sampled_from(["a", "b", "web"]), max_size=3))
        cells.append(CellSpec(name, nodes, (PoolSpec(f"p{i}", f"10.{i}.0.0/24", 1),), tuple(labels.items()),
                              racks=draw(st.integers(1, nodes))))
    group_names = draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True))
    groups = tuple(GroupSpec(g, draw(st.integers(1, 12))) for g in group_names)
    apps = []
    if groups:
        for k in range(draw(st.integers(0, 6))):
            app_cells = draw(st.lists(st.sampled_from(cell_names), min_size=1, unique=True))
            apps.append(AppSpec(f"{draw(st.sampled_from(NAMES))}-{k}", tuple(app_cells), 1,
                                draw(st.sampled_from(group_names))))
    return tuple(cells), groups, tuple(apps), draw(st.integers(0, 12))


@settings(max_examples=200, deadline=None)
@given(regions(), st.data())
def test_target_index_agrees_with_target_universe(region, data):
    from sim.targets import TargetIndex  # new with the bounded validator (imported here: the tests above run alone)

    cells, groups, apps, build_hosts = region
    index = TargetIndex(cells, groups, apps, build_hosts)
    for kind in FAULT_TARGETS:
        if kind == "pool-exhaustion":
            continue
        for group in ("", *(g.name for g in groups), "nope"):
            universe = target_universe(kind, cells, groups, apps, group, build_hosts)
            names = {n for n, _ in universe}
            assert index.count(kind, (), group) == len(universe), (kind, group)
            assert index.sample(kind, group) == [n for n, _ in universe][:5]
            for name, labels in universe:
                assert index.labels_of(kind, name, group) == labels, (kind, group, name)
            for bogus in ("c1-n000", "c1-n031", "c1-n1", "web-nginx-0", "web-nginx-13", "web-nginx-01", "build-0",
                          "build-13", "slb-core", "build-scheduler", "x-0", "x-9", "c1", "c1-n001-n001"):
                if bogus not in names:
                    assert index.labels_of(kind, bogus, group) is None, (kind, group, bogus)
            values: dict[str, set[str]] = {}
            for _, labels in universe:
                for k, vs in labels.items():
                    values.setdefault(k, set()).update(vs)
            if FAULT_TARGETS[kind] not in ("nginx hosts", "apps") or group != "nope":
                assert index.values(kind, group) == values, (kind, group)
            keys = [*sorted(values), "cell", "rack", "role", "nope"]
            for _ in range(5):
                want = data.draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(
                    [*sorted({v for vs in values.values() for v in vs}), "r1", "r7", "r99", "node", "zz"]),
                    max_size=3), "labels")
                labels = tuple(want.items())
                brute = sum(1 for n, ls in universe if matches(Selector(labels=labels), n, ls))
                assert index.count(kind, labels, group) == brute, (kind, group, labels)
