"""Fault targets: every target a fault kind can select, its labels, and selectors matched against them.

``target_universe`` lists a kind's targets in a stable order (the world draws from it:
sim/faults.py); ``TargetIndex`` answers what validating a selector asks (is this a
target, its labels, how many carry these labels) without listing the targets, so a
selector costs the same for 10 nodes as for 10,000 (sim/scenario_faults.py). The two must
agree: a property test (tests/unit/test_scenario_props.py) holds them together. What each
kind selects is ``sim.spec.FAULT_TARGETS``; the names are ``sim.spec``'s ``*_name``.
It must not run anything.
"""

from __future__ import annotations

import re
from collections import Counter

from sim.spec import (
    BUILD_SCHEDULER,
    CONTROL_CLIENTS,
    FAULT_TARGETS,
    AppSpec,
    CellSpec,
    GroupSpec,
    Labels,
    Selector,
    build_host_name,
    nginx_host_name,
    node_name,
)


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
