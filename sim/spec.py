"""What a simulated Region is made of: the plain, validated description a scenario file turns into.

``sim/scenario.py`` parses a YAML scenario into these frozen dataclasses (naming file,
line and field on any error); ``sim/world.py`` builds and runs a Region from them.
Nothing here runs anything: it is the contract between the two.

Times are virtual seconds from the start of the run. A **selector** picks fault
targets by name, label, count or percentage: ``{"names": [...]}``,
``{"labels": {"rack": "r1"}}``, ``{"count": 5}`` or ``{"percent": 10}`` (count and
percent draw from the run's seeded random source, among the targets the other
selector fields leave).

The ``MAX_*`` bounds below are the largest Region a scenario may describe (docs/sim.md
states each next to its field): they keep a validated spec one the world can build in
bounded memory and time, and they are checked *before* anything is expanded (an app's
``count``, a Cell's nodes). ``TargetIndex`` answers what validating a selector asks (is
this a target, its labels, how many carry these labels) without listing the targets,
so a selector costs the same for 10 nodes as for 10,000; it must agree with
``target_universe`` (a property test holds the two together).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Labels = dict[str, frozenset[str]]  # a target's labels: name -> values (an app has one `cell` per Cell)

MAX_NODES_PER_CELL = 600  # LeEngine's rule: one Kubernetes cluster, at most ~600 nodes

# Upper bounds of a scenario (docs/sim.md, next to each field). The bench's largest Region
# (bench/sim_scale.py: 10 Cells x 600 nodes, 100,000 pods, /12 pools, 24 h) fits within them.
MAX_SEED = 2**63 - 1
MAX_SECONDS = 7 * 24 * 3600.0  # a run, a fault, a period, a deadline: at most one virtual week
MAX_ETCD_LATENCY = 10.0  # seconds of etcd round trip
MAX_CELLS = 100
MAX_REGION_NODES = 10_000  # nodes over all Cells
MAX_POOLS_PER_CELL = 16
MIN_POOL_PREFIX = 12  # a pool is at most a /12 (1,048,576 addresses)
MAX_LABELS = 32  # labels of a Cell, labels of a selector
MAX_GROUPS = 64
MAX_HOSTS_PER_GROUP = 100
MAX_BUILD_HOSTS = 1000
MAX_APPS = 10_000  # after `count` is expanded
MAX_REPLICAS = 10_000  # pods per app and Cell
MAX_PODS = 200_000  # replicas x Cells, summed over the apps
MAX_REQUESTS_PER_SECOND = 1_000_000.0  # per app
MAX_EVENTS_PER_HOUR = 36_000.0  # churn: deploys, scale events (10 a second)
MAX_FAULTS = 200
MAX_FACTOR = 1000.0  # etcd-slow
MAX_CHANGES = 100_000  # reload-storm
MIN_EVERY = 1.0  # a repeated fault's period, seconds: at most one repetition a second
MAX_CHECKS = 100
MAX_LIMIT = 1e12  # the bound of a max-* check

FaultKind = Literal[
    "host-crash",  # hosts die: their pods die with them, no CNI DEL (leaked addresses); optional return
    "runtime-death",  # the container runtime of hosts dies: pods and their netns gone, the host stays
    "cell-outage",  # a whole Cell (machine room) is cut off: its nodes and API server unreachable
    "etcd-slow",  # etcd answers `factor` times slower for the selected clients
    "etcd-unavailable",  # the selected clients (or everyone) cannot reach etcd
    "reload-storm",  # `changes` config changes to domains of a group within the duration
    "nginx-host-loss",  # Nginx hosts of a group die (their share of the load fails over)
    "pool-exhaustion",  # a pool is shrunk to `free` remaining addresses (others taken by a squatter)
    "builder-crash",  # build hosts die (mid-build): their leases expire, their tasks move to other hosts
]


@dataclass(frozen=True)
class Selector:
    names: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    count: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class PoolSpec:
    name: str
    cidr: str
    vlan: int
    block_size: int = 16


@dataclass(frozen=True)
class CellSpec:
    name: str
    nodes: int
    pools: tuple[PoolSpec, ...]
    node_labels: tuple[tuple[str, str], ...] = ()  # labels every node of the Cell carries (e.g. room)
    racks: int = 1  # nodes are spread over racks: label rack=r1..rN


@dataclass(frozen=True)
class GroupSpec:
    """An Nginx cluster of the Region."""

    name: str
    hosts: int


@dataclass(frozen=True)
class AppSpec:
    name: str  # the app's namespace
    cells: tuple[str, ...]
    replicas: int  # per Cell
    group: str  # the Nginx group serving its domain
    domain: str = ""  # default: "{name}.example.com"
    port: int = 8080
    start_seconds: float = 2.0  # container start after the sandbox has its address
    readiness_seconds: float = 3.0  # until the readiness probe passes
    requests_per_second: float = 10.0  # client load on its domain


@dataclass(frozen=True)
class FaultSpec:
    kind: FaultKind
    at: float
    duration: float | None = None  # None: permanent (or until the run ends)
    target: Selector = field(default_factory=Selector)
    every: float | None = None  # repeat on this schedule (seconds) until the run ends
    # kind-specific parameters
    factor: float = 10.0  # etcd-slow
    changes: int = 100  # reload-storm
    free: int = 0  # pool-exhaustion
    pool: str = ""  # pool-exhaustion
    group: str = ""  # reload-storm, nginx-host-loss
    line: int = 0  # where it stands in the scenario file, for messages


@dataclass(frozen=True)
class ChurnSpec:
    """Background changes while the Region runs: deploys (rolling replacement) and scaling."""

    deploys_per_hour: float = 0.0
    scale_events_per_hour: float = 0.0


CheckKind = Literal[
    "no-duplicate-address",  # safety: never two owners of an address (audited from the Store's history)
    "domains-keep-serving",  # safety: never a domain without a ready upstream while one exists in another Cell
    "leaks-found-and-released",  # liveness: after faults end, cnictl check finds every leak and release frees it
    "apps-serve-again",  # liveness: after faults end, every app serves again within `within` seconds
    "max-failed-requests",  # at most `limit` failed requests over the run
    "max-reloads",  # at most `limit` reloads per Nginx host
    "builds-finish",  # liveness: after faults end, every build submitted has finished within `within` seconds
]


@dataclass(frozen=True)
class CheckSpec:
    kind: CheckKind
    within: float = 120.0  # liveness deadline after the last fault ends
    limit: float = 0.0


@dataclass(frozen=True)
class RegionSpec:
    name: str
    seed: int
    duration: float
    cells: tuple[CellSpec, ...]
    groups: tuple[GroupSpec, ...]
    apps: tuple[AppSpec, ...]
    faults: tuple[FaultSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    etcd_latency: float = 0.002  # round trip, seconds
    cooldown: float = 30.0  # IPAM cool-down of released addresses
    leak_check_every: float = 60.0  # cnictl check run by an operator cron
    leak_grace: float = 60.0
    build_hosts: int = 0  # the Region's build farm (0: deploys roll out without building)
    source: str = ""  # the scenario file, for reports


# --------------------------------------------------------------------------- fault targets
# One definition of what each fault kind's ``target`` selects, its names and labels: the
# validator checks selectors against it and the world draws targets from it, so both agree.

FAULT_TARGETS: dict[str, str] = {
    "host-crash": "nodes",
    "runtime-death": "nodes",
    "etcd-slow": "etcd clients",
    "etcd-unavailable": "etcd clients",
    "cell-outage": "cells",
    "nginx-host-loss": "nginx hosts",
    "reload-storm": "apps",
    "pool-exhaustion": "none",
    "builder-crash": "build hosts",
}

CONTROL_CLIENTS = ("slb-core", "discovery", "cnictl")  # the control plane's own etcd clients
BUILD_SCHEDULER = "build-scheduler"  # the control plane's build scheduler, when there is a build farm


def node_name(cell: str, i: int) -> str:
    """The name of node ``i`` (1-based) of a Cell, as selectors and the world use it."""
    return f"{cell}-n{i:03d}"


def build_host_name(i: int) -> str:
    """The name of build host ``i`` (1-based)."""
    return f"build-{i}"


def nginx_host_name(group: str, i: int) -> str:
    """The name of Nginx host ``i`` (1-based) of a group."""
    return f"{group}-nginx-{i}"


def node_labels(cell: CellSpec, i: int) -> Labels:
    labels = {"cell": frozenset({cell.name}), "rack": frozenset({f"r{(i - 1) % max(cell.racks, 1) + 1}"})}
    labels.update({k: frozenset({v}) for k, v in cell.node_labels})
    return labels


def target_universe(kind: str, spec_cells: tuple[CellSpec, ...], spec_groups: tuple[GroupSpec, ...],
                    spec_apps: tuple[AppSpec, ...], group: str = "", build_hosts: int = 0) -> list[tuple[str, Labels]]:
    """Every target a fault of ``kind`` can select, in a stable order: (name, labels).

    ``group`` restricts Nginx hosts and apps to one group (the fault's ``group`` field).
    """
    what = FAULT_TARGETS[kind]
    out: list[tuple[str, Labels]] = []
    if what in ("nodes", "etcd clients"):
        role = {"role": frozenset({"node"})} if what == "etcd clients" else {}
        for c in spec_cells:
            out.extend((node_name(c.name, i), {**node_labels(c, i), **role}) for i in range(1, c.nodes + 1))
    if what == "etcd clients":
        for g in spec_groups:
            out.extend((nginx_host_name(g.name, i), {"group": frozenset({g.name}), "role": frozenset({"nginx"})})
                       for i in range(1, g.hosts + 1))
        out.extend((build_host_name(i), {"role": frozenset({"build"})}) for i in range(1, build_hosts + 1))
        controls = CONTROL_CLIENTS + ((BUILD_SCHEDULER,) if build_hosts else ())
        out.extend((name, {"role": frozenset({"control"})}) for name in controls)
    elif what == "cells":
        out.extend((c.name, {k: frozenset({v}) for k, v in c.node_labels}) for c in spec_cells)
    elif what == "nginx hosts":
        for g in spec_groups:
            if not group or g.name == group:
                out.extend((nginx_host_name(g.name, i), {"group": frozenset({g.name})}) for i in range(1, g.hosts + 1))
    elif what == "build hosts":
        out.extend((build_host_name(i), {}) for i in range(1, build_hosts + 1))
    elif what == "apps":
        out.extend((a.name, {"group": frozenset({a.group}), "cell": frozenset(a.cells)})
                   for a in spec_apps if not group or a.group == group)
    return out


def matches(selector: Selector, name: str, labels: Labels) -> bool:
    """Whether a target passes the selector's names and labels (count and percent draw afterwards)."""
    return (not selector.names or name in selector.names) and all(v in labels.get(k, ()) for k, v in selector.labels)


_RACK = re.compile(r"r([1-9][0-9]{0,8})")
_NODE = re.compile(r"(.+)-n([0-9]{3})")
_NGINX_HOST = re.compile(r"(.+)-nginx-([1-9][0-9]{0,8})")
_BUILD_HOST = re.compile(r"build-([1-9][0-9]{0,8})")


class TargetIndex:
    """The targets of every fault kind, answered without listing them (what validation asks, per fault).

    For a kind (and the fault's ``group``): ``labels_of(name)`` is the target's labels or
    ``None``, ``values()`` every label's values, ``count(labels)`` how many targets carry
    all the labels, and ``sample()`` a few names, all equal to what ``target_universe``
    lists (a property test holds them together), at a cost of O(Cells + groups) per call
    instead of O(targets): nodes are found by parsing their names and counted per Cell
    (a rack is an arithmetic progression of node numbers), apps from counters built once.
    """

    def __init__(self, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...], apps: tuple[AppSpec, ...],
                 build_hosts: int = 0) -> None:
        self.cells, self.groups, self.apps, self.build_hosts = cells, groups, apps, build_hosts
        self.cell_by_name = {c.name: c for c in cells}
        self.group_by_name = {g.name: g for g in groups}
        self.app_by_name = {a.name: a for a in apps}
        self.cell_items = [frozenset(c.node_labels) for c in cells]  # a Cell's labels as (key, value) pairs
        self._cell_frozen = {c.name: {k: frozenset({v}) for k, v in c.node_labels} for c in cells}
        self._app_counts: tuple[Counter[str], Counter[str], Counter[tuple[str, str]]] | None = None
        self._values: dict[tuple[str, str], dict[str, set[str]]] = {}

    def controls(self) -> tuple[str, ...]:
        return CONTROL_CLIENTS + ((BUILD_SCHEDULER,) if self.build_hosts else ())

    # ---- names
    def labels_of(self, kind: str, name: str, group: str = "") -> Labels | None:
        what = FAULT_TARGETS[kind]
        if what in ("nodes", "etcd clients"):
            m = _NODE.fullmatch(name)
            cell = self.cell_by_name.get(m[1]) if m else None
            if m and cell is not None and 1 <= int(m[2]) <= cell.nodes and node_name(cell.name, int(m[2])) == name:
                rack = f"r{(int(m[2]) - 1) % max(cell.racks, 1) + 1}"  # as node_labels(), with the Cell's part once
                labels = {"cell": frozenset({cell.name}), "rack": frozenset({rack}), **self._cell_frozen[cell.name]}
                return {**labels, "role": frozenset({"node"})} if what == "etcd clients" else labels
        if what == "etcd clients":
            if name in self.controls():
                return {"role": frozenset({"control"})}
            m = _BUILD_HOST.fullmatch(name)
            if m and int(m[1]) <= self.build_hosts:
                return {"role": frozenset({"build"})}
        if what in ("etcd clients", "nginx hosts"):
            m = _NGINX_HOST.fullmatch(name)
            g = self.group_by_name.get(m[1]) if m else None
            in_group = g is not None and (what == "etcd clients" or not group or g.name == group)
            if m and g is not None and in_group and int(m[2]) <= g.hosts:
                labels = {"group": frozenset({g.name})}
                return {**labels, "role": frozenset({"nginx"})} if what == "etcd clients" else labels
        elif what == "cells":
            cell = self.cell_by_name.get(name)
            return None if cell is None else {k: frozenset({v}) for k, v in cell.node_labels}
        elif what == "build hosts":
            m = _BUILD_HOST.fullmatch(name)
            return {} if m and int(m[1]) <= self.build_hosts else None
        elif what == "apps":
            app = self.app_by_name.get(name)
            if app is not None and (not group or app.group == group):
                return {"group": frozenset({app.group}), "cell": frozenset(app.cells)}
        return None

    def sample(self, kind: str, group: str = "", n: int = 5) -> list[str]:
        """The first ``n`` target names, in ``target_universe``'s order (for messages)."""
        what = FAULT_TARGETS[kind]
        if what in ("nodes", "etcd clients"):
            names = [node_name(c.name, i) for c in self.cells for i in range(1, min(c.nodes, n) + 1)][:n]
            if what == "nodes":
                return names
            names += [nginx_host_name(g.name, i) for g in self.groups for i in range(1, min(g.hosts, n) + 1)][:n]
            names += [build_host_name(i) for i in range(1, min(self.build_hosts, n) + 1)]
            return (names + list(self.controls()))[:n]
        if what == "cells":
            return [c.name for c in self.cells[:n]]
        if what == "nginx hosts":
            return [nginx_host_name(g.name, i) for g in self.groups if not group or g.name == group
                    for i in range(1, min(g.hosts, n) + 1)][:n]
        if what == "build hosts":
            return [build_host_name(i) for i in range(1, min(self.build_hosts, n) + 1)]
        if what == "apps":
            return [a.name for a in self.apps if not group or a.group == group][:n]
        return []

    # ---- labels
    def values(self, kind: str, group: str = "") -> dict[str, set[str]]:
        """Every label key the kind's targets carry, with every value it takes (computed once per kind and group)."""
        what = FAULT_TARGETS[kind]
        key = (what, group if what in ("nginx hosts", "apps") else "")
        if what == "nginx hosts" and group:
            return {"group": {group}} if group in self.group_by_name else {}
        if key not in self._values:
            if what == "apps":  # one pass over the apps for every group at once
                self._values.update(self._app_values())
            else:
                self._values[key] = self._label_values(what)
        return self._values.get(key, {})

    def _app_values(self) -> dict[tuple[str, str], dict[str, set[str]]]:
        out: dict[tuple[str, str], dict[str, set[str]]] = {("apps", ""): {}}
        for a in self.apps:
            for key in (("apps", ""), ("apps", a.group)):
                values = out.setdefault(key, {})
                values.setdefault("group", set()).add(a.group)
                values.setdefault("cell", set()).update(a.cells)
        return out

    def _label_values(self, what: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}

        def add(k: str, *vs: str) -> None:
            out.setdefault(k, set()).update(vs)

        if what in ("nodes", "etcd clients", "cells"):
            for c in self.cells:
                if what != "cells":
                    add("cell", c.name)
                    add("rack", *(f"r{r}" for r in range(1, min(max(c.racks, 1), c.nodes) + 1)))
                for k, v in c.node_labels:
                    add(k, v)
        if what == "etcd clients":
            add("role", "node", "control")
            for g in self.groups:
                add("group", g.name)
                add("role", "nginx")
            if self.build_hosts:
                add("role", "build")
        elif what == "nginx hosts":  # all groups: values() narrows to the fault's group
            for g in self.groups:
                add("group", g.name)
        return out

    def count(self, kind: str, labels: tuple[tuple[str, str], ...] = (), group: str = "") -> int:
        want = dict(labels)
        what = FAULT_TARGETS[kind]
        total = 0
        if what in ("nodes", "etcd clients"):
            role = want.get("role")
            if role is None or (what == "etcd clients" and role == "node"):
                # A node carries its Cell's labels, `cell`, `rack` and (an etcd client) `role`.
                per_cell = frozenset((k, v) for k, v in want.items() if k not in ("cell", "rack", "role"))
                for cell, items in zip(self.cells, self.cell_items, strict=True):
                    if per_cell <= items and want.get("cell", cell.name) == cell.name:
                        total += self._on_rack(cell, want.get("rack"))
        if what == "etcd clients":
            total += sum(g.hosts for g in self.groups if _only(want, group=g.name, role="nginx"))
            if _only(want, role="build"):
                total += self.build_hosts
            if _only(want, role="control"):
                total += len(self.controls())
        elif what == "cells":
            total += sum(1 for items in self.cell_items if frozenset(want.items()) <= items)
        elif what == "nginx hosts":
            total += sum(g.hosts for g in self.groups if (not group or g.name == group) and _only(want, group=g.name))
        elif what == "build hosts":
            total += self.build_hosts if not want else 0
        elif what == "apps":
            total += self._apps(want, group)
        return total

    @staticmethod
    def _on_rack(cell: CellSpec, rack: str | None) -> int:
        """Nodes of a Cell on a rack (all of them without one): node i is on rack (i-1) % racks + 1."""
        if rack is None:
            return cell.nodes
        m = _RACK.fullmatch(rack)
        racks = max(cell.racks, 1)
        if m is None or int(m[1]) > min(racks, cell.nodes):
            return 0
        return (cell.nodes - int(m[1])) // racks + 1

    def _apps(self, want: dict[str, str], group: str) -> int:
        if set(want) - {"group", "cell"}:
            return 0
        g = want.get("group", group)
        if group and g != group:
            return 0
        if self._app_counts is None:
            self._app_counts = (Counter(a.group for a in self.apps),
                                Counter(c for a in self.apps for c in set(a.cells)),
                                Counter((a.group, c) for a in self.apps for c in set(a.cells)))
        by_group, by_cell, by_pair = self._app_counts
        cell = want.get("cell")
        if g and cell is not None:
            return by_pair[(g, cell)]
        if g:
            return by_group[g]
        if cell is not None:
            return by_cell[cell]
        return len(self.apps)


def _only(want: dict[str, str], **have: str) -> bool:
    """Whether a target carrying exactly the labels ``have`` (one value each) has every wanted label."""
    return all(have.get(k) == v for k, v in want.items())
