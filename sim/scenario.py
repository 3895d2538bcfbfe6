"""Scenario files: YAML in, a validated ``RegionSpec`` out, or one error naming file, line and field.

The format is documented field by field in docs/sim.md. Parsing goes through
``yaml.compose`` so every value keeps its node and therefore its line: each error is
a ``ScenarioError`` whose ``str`` is one line ``FILE:LINE: FIELD: message``.

What is checked: unknown keys, duplicate keys, wrong types, missing required keys,
unknown fault and check kinds, numbers out of range (VLAN 1..4094, negative times,
a Cell above ``MAX_NODES_PER_CELL`` nodes), malformed or overlapping pool CIDRs
(region-wide: pod addresses must be unique wherever Nginx reaches them), duplicate
names, apps in unknown Cells or groups, faults at or after the end of the run, and
fault selectors that match nothing in the topology.

Fault targets (what each kind's ``target`` selects):

* **nodes** (hosts) — ``host-crash``, ``runtime-death``: names ``{cell}-n{i:03d}``
  (i = 1..nodes, e.g. ``c1-n007``); labels ``cell``, ``rack`` (``r1..rN``, node i on rack
  ``r{(i-1) % racks + 1}``) and the Cell's ``labels``.
* **etcd clients** — ``etcd-slow``, ``etcd-unavailable``: the nodes as above plus label
  ``role: node``, the Nginx hosts (``role: nginx``, ``group``) and the control plane's
  ``slb-core``, ``discovery``, ``cnictl`` and, with a build farm, ``build-scheduler``
  (``role: control``), and the build hosts (``role: build``).
* **Cells** — ``cell-outage``: names are Cell names; labels are the Cell's ``labels``.
* **Nginx hosts** — ``nginx-host-loss``: names ``{group}-nginx-{i}``; label ``group``
  (restricted to the fault's ``group`` when it is given).
* **apps** (their domains) — ``reload-storm``: app names; labels ``group`` and
  ``cell`` (an app carries ``cell`` for each of its Cells).
* **build hosts** — ``builder-crash``: names ``build-{i}`` (i = 1..``topology.build_hosts``).
* nothing — ``pool-exhaustion`` names its ``pool``; a ``target`` there is an error.

An empty target selects every target of the kind.

It must not run anything: ``sim/world.py`` builds and runs the Region.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cni.pools import Pool, PoolConfigError
from sim.spec import (
    FAULT_TARGETS,
    MAX_NODES_PER_CELL,
    AppSpec,
    CellSpec,
    CheckKind,
    CheckSpec,
    ChurnSpec,
    FaultKind,
    FaultSpec,
    GroupSpec,
    Labels,
    PoolSpec,
    RegionSpec,
    Selector,
    target_universe,
)

FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
CHECK_KINDS: tuple[str, ...] = get_args(CheckKind)

class ScenarioError(ValueError):
    """A scenario file that cannot be run: where, which field, and why."""

    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        super().__init__(f"{file}:{line}: {field}: {message}")


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: the spec, and the SHA-256 of the file's bytes (for reports and replays)."""

    spec: RegionSpec
    sha256: str
    path: str


def scenario_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_scenario(path: str | Path, *, seed: int | None = None) -> Scenario:
    """Read, parse and validate a scenario file; ``seed`` overrides the file's seed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(str(path), 0, "file", exc.strerror or str(exc)) from exc
    spec = parse_scenario(data, str(path))
    if seed is not None:
        spec = replace(spec, seed=seed)
    return Scenario(spec=spec, sha256=scenario_hash(data), path=str(path))


def parse_scenario(data: bytes | str, file: str = "<scenario>") -> RegionSpec:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise ScenarioError(file, line, "yaml", f"{exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(file, 0, "yaml", str(exc).splitlines()[0]) from None
    if root is None:
        raise ScenarioError(file, 1, "scenario", "the file is empty")
    return _Parser(file).region(root)


# ------------------------------------------------------------------ the parser


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.constructor = SafeConstructor()
        self.build_hosts = 0  # topology.build_hosts, once read: builder-crash targets depend on it

    # ---- primitives
    def error(self, node: Node, field: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, node.start_mark.line + 1, field, message)

    def mapping(self, node: Node, field: str, keys: set[str], required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"must be a mapping, got {self.describe(node)}")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, field, f"keys must be strings, got {self.describe(key_node)}")
            sub = f"{field}.{key}" if field else key
            if key not in keys:
                raise self.error(key_node, sub, f"unknown key (expected one of: {', '.join(sorted(keys))})")
            if key in out:
                raise self.error(key_node, sub, "duplicate key")
            out[key] = value_node
        for key in required:
            if key not in out:
                raise self.error(node, f"{field}.{key}" if field else key, "required key is missing")
        return out

    def sequence(self, node: Node, field: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, field, f"must be a list, got {self.describe(node)}")
        return list(node.value)

    def scalar(self, node: Node, field: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(node, field, f"must be a single value, got {self.describe(node)}")
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(node, field, f"bad value: {exc}") from None

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        value = self.constructor.construct_object(node, deep=True)
        if value is None:
            return "nothing (null)"
        return f"{type(value).__name__} {node.value!r}"

    def string(self, node: Node, field: str, *, empty: bool = False) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str):
            raise self.error(node, field, f"must be a string, got {self.describe(node)}")
        if not empty and not value.strip():
            raise self.error(node, field, "must not be empty")
        return value

    def integer(self, node: Node, field: str, *, low: int | None = None, high: int | None = None) -> int:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, field, f"must be an integer, got {self.describe(node)}")
        self.bounds(node, field, value, low, high)
        return value

    def number(self, node: Node, field: str, *, low: float | None = None, high: float | None = None,
               positive: bool = False) -> float:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, field, f"must be a number, got {self.describe(node)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(node, field, "must be a finite number")
        if positive and value <= 0:
            raise self.error(node, field, f"must be greater than 0, got {value:g}")
        self.bounds(node, field, value, low, high)
        return value

    def bounds(self, node: Node, field: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            what = "must not be negative" if low == 0 else f"must be at least {low:g}"
            raise self.error(node, field, f"{what}, got {value:g}")
        if high is not None and value > high:
            raise self.error(node, field, f"must be at most {high:g}, got {value:g}")

    def names(self, node: Node, field: str) -> list[tuple[str, Node]]:
        return [(self.string(n, f"{field}[{i}]"), n) for i, n in enumerate(self.sequence(node, field))]

    def labels(self, node: Node, field: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"must be a mapping of label to value, got {self.describe(node)}")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, field)
            sub = f"{field}.{key}"
            if key in out:
                raise self.error(key_node, sub, "duplicate label")
            value = self.scalar(value_node, sub)
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise self.error(value_node, sub, f"label values are strings, got {self.describe(value_node)}")
            out[key] = str(value)
        return tuple(out.items())

    def unique(self, seen: dict[str, Node], name: str, node: Node, field: str, what: str) -> None:
        if name in seen:
            first = seen[name].start_mark.line + 1
            raise self.error(node, field, f"duplicate {what} name {name!r} (first at line {first})")
        seen[name] = node

    # ---- the document
    def region(self, root: Node) -> RegionSpec:
        keys = {"name", "seed", "duration", "topology", "workload", "faults", "checks", "etcd_latency", "cooldown",
                "leak_check_every", "leak_grace", "description"}
        m = self.mapping(root, "", keys, required=("seed", "duration", "topology"))
        seed = self.integer(m["seed"], "seed", low=0)
        duration = self.number(m["duration"], "duration", positive=True)
        name = self.string(m["name"], "name") if "name" in m else Path(self.file).stem
        if "description" in m:
            self.string(m["description"], "description", empty=True)
        cells, groups = self.topology(m["topology"])
        apps, churn = self.workload(m["workload"], cells, groups) if "workload" in m else ((), ChurnSpec())
        faults = self.faults(m["faults"], duration, cells, groups, apps) if "faults" in m else ()
        checks = self.checks(m["checks"]) if "checks" in m else ()
        optional: dict[str, float] = {}
        for key, positive in (("etcd_latency", False), ("cooldown", False), ("leak_check_every", True),
                              ("leak_grace", False)):
            if key in m:
                optional[key] = self.number(m[key], key, low=0, positive=positive)
        return RegionSpec(name=name, seed=seed, duration=duration, cells=cells, groups=groups, apps=apps,
                          faults=faults, checks=checks, churn=churn, build_hosts=self.build_hosts, source=self.file,
                          **optional)

    def topology(self, node: Node) -> tuple[tuple[CellSpec, ...], tuple[GroupSpec, ...]]:
        m = self.mapping(node, "topology", {"cells", "groups", "build_hosts"}, required=("cells",))
        self.build_hosts = self.integer(m["build_hosts"], "topology.build_hosts", low=0, high=1000) \
            if "build_hosts" in m else 0
        cells: list[CellSpec] = []
        seen: dict[str, Node] = {}
        pools_seen: dict[str, Node] = {}
        networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, Node, str]] = []
        cell_nodes = self.sequence(m["cells"], "topology.cells")
        if not cell_nodes:
            raise self.error(m["cells"], "topology.cells", "at least one Cell is needed")
        for i, cn in enumerate(cell_nodes):
            f = f"topology.cells[{i}]"
            c = self.mapping(cn, f, {"name", "nodes", "racks", "labels", "pools"}, required=("name", "nodes", "pools"))
            name = self.string(c["name"], f"{f}.name")
            self.unique(seen, name, c["name"], f"{f}.name", "Cell")
            nodes = self.integer(c["nodes"], f"{f}.nodes", low=1)
            if nodes > MAX_NODES_PER_CELL:
                raise self.error(c["nodes"], f"{f}.nodes",
                                 f"{nodes} nodes exceed the {MAX_NODES_PER_CELL} a Cell "
                                 "(one Kubernetes cluster) may have")
            racks = self.integer(c["racks"], f"{f}.racks", low=1, high=nodes) if "racks" in c else 1
            labels = self.labels(c["labels"], f"{f}.labels") if "labels" in c else ()
            for key, _ in labels:
                if key in ("cell", "rack", "role"):
                    raise self.error(c["labels"], f"{f}.labels.{key}", f"{key!r} is set by the topology itself")
            pools: list[PoolSpec] = []
            pool_nodes = self.sequence(c["pools"], f"{f}.pools")
            if not pool_nodes:
                raise self.error(c["pools"], f"{f}.pools", "a Cell needs at least one pool")
            for j, pn in enumerate(pool_nodes):
                pools.append(self.pool(pn, f"{f}.pools[{j}]", pools_seen, networks))
            cells.append(CellSpec(name=name, nodes=nodes, pools=tuple(pools), node_labels=labels, racks=racks))
        groups: list[GroupSpec] = []
        gseen: dict[str, Node] = {}
        for i, gn in enumerate(self.sequence(m["groups"], "topology.groups") if "groups" in m else []):
            f = f"topology.groups[{i}]"
            g = self.mapping(gn, f, {"name", "hosts"}, required=("name", "hosts"))
            name = self.string(g["name"], f"{f}.name")
            self.unique(gseen, name, g["name"], f"{f}.name", "group")
            groups.append(GroupSpec(name=name, hosts=self.integer(g["hosts"], f"{f}.hosts", low=1)))
        return tuple(cells), tuple(groups)

    def pool(self, node: Node, f: str, seen: dict[str, Node], networks: list) -> PoolSpec:
        p = self.mapping(node, f, {"name", "cidr", "vlan", "block_size"}, required=("name", "cidr", "vlan"))
        name = self.string(p["name"], f"{f}.name")
        self.unique(seen, name, p["name"], f"{f}.name", "pool")
        cidr = self.string(p["cidr"], f"{f}.cidr")
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise self.error(p["cidr"], f"{f}.cidr", f"not a network in CIDR notation: {exc}") from None
        for other, other_name, other_node, other_field in networks:
            if net.version == other.version and net.overlaps(other):
                raise self.error(p["cidr"], f"{f}.cidr",
                                 f"{net} overlaps {other} of pool {other_name!r} ({other_field}, line "
                                 f"{other_node.start_mark.line + 1})")
        networks.append((net, name, p["cidr"], f"{f}.cidr"))
        vlan = self.integer(p["vlan"], f"{f}.vlan", low=1, high=4094)
        block = self.integer(p["block_size"], f"{f}.block_size", low=1) if "block_size" in p else 16
        # The agents' own rules decide (cni/pools.py: IPv4, at most /30, a power-of-two block
        # that fits, ...), so a scenario that validates is one the IPAM accepts.
        try:
            Pool.parse(name, str(net), vlan, None, (), block)
        except PoolConfigError as exc:
            on_block = exc.field == "block_size" and "block_size" in p  # else the pool is too small for it
            where = p["block_size"] if on_block else p["cidr"]
            field = f"{f}.block_size" if on_block else f"{f}.cidr"
            raise self.error(where, field, str(exc)) from None
        return PoolSpec(name=name, cidr=str(net), vlan=vlan, block_size=block)

    def workload(self, node: Node, cells: tuple[CellSpec, ...],
                 groups: tuple[GroupSpec, ...]) -> tuple[tuple[AppSpec, ...], ChurnSpec]:
        m = self.mapping(node, "workload", {"apps", "churn"})
        cell_names = [c.name for c in cells]
        group_names = [g.name for g in groups]
        apps: list[AppSpec] = []
        seen: dict[str, Node] = {}
        for i, an in enumerate(self.sequence(m["apps"], "workload.apps") if "apps" in m else []):
            apps.extend(self.app(an, f"workload.apps[{i}]", cell_names, group_names, seen))
        churn = ChurnSpec()
        if "churn" in m:
            c = self.mapping(m["churn"], "workload.churn", {"deploys_per_hour", "scale_events_per_hour"})
            churn = ChurnSpec(**{k: self.number(v, f"workload.churn.{k}", low=0) for k, v in c.items()})
        return tuple(apps), churn

    def app(self, node: Node, f: str, cell_names: list[str], group_names: list[str],
            seen: dict[str, Node]) -> list[AppSpec]:
        keys = {"name", "count", "cells", "replicas", "group", "domain", "port", "start_seconds", "readiness_seconds",
                "requests_per_second"}
        a = self.mapping(node, f, keys, required=("name", "cells", "replicas", "group"))
        name = self.string(a["name"], f"{f}.name")
        cells = self.names(a["cells"], f"{f}.cells")
        if not cells:
            raise self.error(a["cells"], f"{f}.cells", "an app runs in at least one Cell")
        for j, (cell, cn) in enumerate(cells):
            if cell not in cell_names:
                raise self.error(cn, f"{f}.cells[{j}]", f"no Cell named {cell!r} (Cells: {', '.join(cell_names)})")
            if [c for c, _ in cells].count(cell) > 1:
                raise self.error(cn, f"{f}.cells[{j}]", f"Cell {cell!r} listed twice")
        group = self.string(a["group"], f"{f}.group")
        if group not in group_names:
            known = ", ".join(group_names) or "none defined in topology.groups"
            raise self.error(a["group"], f"{f}.group", f"no Nginx group named {group!r} (groups: {known})")
        kwargs: dict[str, Any] = {}
        if "domain" in a:
            kwargs["domain"] = self.string(a["domain"], f"{f}.domain")
        if "port" in a:
            kwargs["port"] = self.integer(a["port"], f"{f}.port", low=1, high=65535)
        for key in ("start_seconds", "readiness_seconds", "requests_per_second"):
            if key in a:
                kwargs[key] = self.number(a[key], f"{f}.{key}", low=0)
        replicas = self.integer(a["replicas"], f"{f}.replicas", low=0)
        count = self.integer(a["count"], f"{f}.count", low=1) if "count" in a else 0
        if count and "domain" in kwargs:
            raise self.error(a["domain"], f"{f}.domain", "an app with `count` gets one domain per copy: omit domain")
        names = [f"{name}-{k}" for k in range(1, count + 1)] if count else [name]
        out = []
        for n in names:
            self.unique(seen, n, a["name"], f"{f}.name", "app")
            out.append(AppSpec(name=n, cells=tuple(c for c, _ in cells), replicas=replicas, group=group, **kwargs))
        return out

    def faults(self, node: Node, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
               apps: tuple[AppSpec, ...]) -> tuple[FaultSpec, ...]:
        out = []
        for i, fn in enumerate(self.sequence(node, "faults")):
            out.append(self.fault(fn, f"faults[{i}]", duration, cells, groups, apps))
        return tuple(out)

    def fault(self, node: Node, f: str, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
              apps: tuple[AppSpec, ...]) -> FaultSpec:
        keys = {"kind", "at", "duration", "target", "every", "factor", "changes", "free", "pool", "group"}
        m = self.mapping(node, f, keys, required=("kind", "at"))
        kind = self.string(m["kind"], f"{f}.kind")
        if kind not in FAULT_KINDS:
            raise self.error(m["kind"], f"{f}.kind", f"unknown fault kind {kind!r} (kinds: {', '.join(FAULT_KINDS)})")
        at = self.number(m["at"], f"{f}.at", low=0)
        if at >= duration:
            raise self.error(m["at"], f"{f}.at", f"at {at:g} s is not before the end of the run ({duration:g} s)")
        kwargs: dict[str, Any] = {}
        if "duration" in m:
            kwargs["duration"] = self.number(m["duration"], f"{f}.duration", positive=True)
        if "every" in m:
            kwargs["every"] = self.number(m["every"], f"{f}.every", positive=True)
            if "duration" in kwargs and kwargs["duration"] >= kwargs["every"]:
                raise self.error(m["every"], f"{f}.every",
                                 f"a repeated fault must end before it repeats (duration {kwargs['duration']:g} s)")
        allowed = {
            "factor": ("etcd-slow",), "changes": ("reload-storm",), "free": ("pool-exhaustion",),
            "pool": ("pool-exhaustion",), "group": ("reload-storm", "nginx-host-loss"),
        }
        for key, kinds in allowed.items():
            if key in m and kind not in kinds:
                raise self.error(m[key], f"{f}.{key}", f"only for fault kinds {', '.join(kinds)}, not {kind}")
        group_names = [g.name for g in groups]
        if "factor" in m:
            kwargs["factor"] = self.number(m["factor"], f"{f}.factor", low=1)
        if "changes" in m:
            kwargs["changes"] = self.integer(m["changes"], f"{f}.changes", low=1)
        if "group" in m:
            group = self.string(m["group"], f"{f}.group")
            if group not in group_names:
                raise self.error(m["group"], f"{f}.group",
                                 f"no Nginx group named {group!r} (groups: {', '.join(group_names) or 'none'})")
            kwargs["group"] = group
        elif kind == "reload-storm":
            raise self.error(node, f"{f}.group", "required for reload-storm")
        if kind == "pool-exhaustion":
            if "pool" not in m:
                raise self.error(node, f"{f}.pool", "required for pool-exhaustion")
            pool_name = self.string(m["pool"], f"{f}.pool")
            pools = {p.name: p for c in cells for p in c.pools}
            if pool_name not in pools:
                raise self.error(m["pool"], f"{f}.pool", f"no pool named {pool_name!r} (pools: {', '.join(pools)})")
            kwargs["pool"] = pool_name
            if "free" in m:
                size = ipaddress.ip_network(pools[pool_name].cidr).num_addresses
                kwargs["free"] = self.integer(m["free"], f"{f}.free", low=0, high=size - 1)
            if "target" in m:
                raise self.error(m["target"], f"{f}.target",
                                 "pool-exhaustion selects its pool with `pool`, not a target")
        if kind == "builder-crash" and not self.build_hosts:
            raise self.error(m["kind"], f"{f}.kind", "builder-crash needs build hosts (topology.build_hosts)")
        if "target" in m:
            universe = target_universe(kind, cells, groups, apps, kwargs.get("group", ""), self.build_hosts)
            kwargs["target"] = self.selector(m["target"], f"{f}.target", kind, universe)
        return FaultSpec(kind=kind, at=at, line=node.start_mark.line + 1, **kwargs)  # type: ignore[arg-type]

    def selector(self, node: Node, f: str, kind: str, universe: list[tuple[str, Labels]]) -> Selector:
        m = self.mapping(node, f, {"names", "labels", "count", "percent"})
        what = FAULT_TARGETS[kind]
        if not universe:
            raise self.error(node, f, f"{kind} selects {what}, and there are none")
        candidates = universe
        names: tuple[str, ...] = ()
        if "names" in m:
            known = {n for n, _ in universe}
            listed = self.names(m["names"], f"{f}.names")
            for j, (n, nn) in enumerate(listed):
                if n not in known:
                    sample = ", ".join(sorted(known)[:5]) + (", …" if len(known) > 5 else "")
                    raise self.error(nn, f"{f}.names[{j}]", f"{kind} selects {what}: no {what[:-1]} named {n!r} "
                                                             f"(e.g. {sample})")
            names = tuple(n for n, _ in listed)
            candidates = [t for t in candidates if t[0] in names]
        labels: tuple[tuple[str, str], ...] = ()
        if "labels" in m:
            labels = self.labels(m["labels"], f"{f}.labels")
            keys = sorted({k for _, ls in universe for k in ls})
            for key, value in labels:
                if key not in keys:
                    raise self.error(m["labels"], f"{f}.labels.{key}",
                                     f"{what} carry no label {key!r} (labels: {', '.join(keys)})")
                values = sorted({v for _, ls in universe for v in ls.get(key, ())})
                if value not in values:
                    raise self.error(m["labels"], f"{f}.labels.{key}",
                                     f"no {what[:-1]} has {key}={value!r} (values: {', '.join(values[:10])})")
            candidates = [t for t in candidates if all(v in t[1].get(k, ()) for k, v in labels)]
            if not candidates:
                raise self.error(m["labels"], f"{f}.labels", f"no {what[:-1]} matches all of these names and labels")
        count = None
        if "count" in m:
            count = self.integer(m["count"], f"{f}.count", low=1, high=len(candidates))
        percent = None
        if "percent" in m:
            if count is not None:
                raise self.error(m["percent"], f"{f}.percent", "give count or percent, not both")
            percent = self.number(m["percent"], f"{f}.percent", positive=True, high=100)
        return Selector(names=names, labels=labels, count=count, percent=percent)

    def checks(self, node: Node) -> tuple[CheckSpec, ...]:
        out = []
        for i, cn in enumerate(self.sequence(node, "checks")):
            f = f"checks[{i}]"
            m = self.mapping(cn, f, {"kind", "within", "limit"}, required=("kind",))
            kind = self.string(m["kind"], f"{f}.kind")
            if kind not in CHECK_KINDS:
                raise self.error(m["kind"], f"{f}.kind",
                                 f"unknown check kind {kind!r} (kinds: {', '.join(CHECK_KINDS)})")
            if kind == "builds-finish" and not self.build_hosts:
                raise self.error(m["kind"], f"{f}.kind", "builds-finish needs build hosts (topology.build_hosts)")
            kwargs: dict[str, float] = {}
            for key in ("within", "limit"):
                if key in m:
                    kwargs[key] = self.number(m[key], f"{f}.{key}", low=0)
            out.append(CheckSpec(kind=kind, **kwargs))  # type: ignore[arg-type]
        return tuple(out)
