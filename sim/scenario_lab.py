"""A scenario's ``lab:`` block: how the scenario shrinks to run on one machine, and ``lab_scaled`` that applies it.

The block (every field optional)::

    lab:
      nodes_per_cell: 4          # cap of every Cell's nodes
      racks_per_cell: 2          # cap of every Cell's racks (never above its nodes)
      hosts_per_group: 2         # cap of every Nginx group's hosts
      build_hosts: 1             # cap of topology.build_hosts
      max_count: 4               # of an app given `count`, keep the first copies only
      max_replicas: 2            # cap of an app's replicas per Cell
      max_requests_per_second: 20  # cap of an app's client load
      time_scale: 0.25           # 0 < x <= 1: the lab runs in real time

``time_scale`` multiplies the run's ``duration``, every fault's ``at``, ``duration`` and
``every``, every check's ``within``, every gray release's ``at``, ``bake_seconds`` and
``check_seconds`` and ``traffic_every`` (the ``platform:`` block), ``leak_check_every``,
``leak_grace`` and ``cooldown``,
and divides the churn rates (``deploys_per_hour``, ``scale_events_per_hour``), so the run
keeps its shape: the same faults in the same order, about the same number of deploys.
It does not touch what a pod or a component really costs (an app's ``start_seconds`` and
``readiness_seconds``, the cost models): the lab's processes take the time they take.
Cells, pools, groups, apps, names, seeds and checks stay; the cost models become
``spec.lab_costs`` (costs.yaml's ``lab_costs:`` on top of the scenario's) when there are any.

``lab_scaled(spec)`` is the identity for a spec without a block; it keeps the block
(``spec.lab``) and marks the result ``scale="lab"``. The scenario's hash stays the file's.
``check_scaled`` (run by the parser on every scenario with a block) makes sure the scaled
spec is still a valid one: every fault's target selects something, a repeated fault's
period stays at least ``MIN_EVERY``, a builder fault still has build hosts.
It must not run anything.
"""

from __future__ import annotations

from dataclasses import replace

from yaml.nodes import Node

from sim.scenario_errors import ScenarioError, show
from sim.scenario_fields import Fields
from sim.spec import (
    FAULT_TARGETS,
    MAX_BUILD_HOSTS,
    MAX_HOSTS_PER_GROUP,
    MAX_NODES_PER_CELL,
    MAX_REPLICAS,
    MAX_REQUESTS_PER_SECOND,
    MIN_EVERY,
    LabSpec,
    RegionSpec,
    Selector,
)
from sim.targets import matches, target_universe

LAB_KEYS = ("nodes_per_cell", "racks_per_cell", "hosts_per_group", "build_hosts", "max_count", "max_replicas",
            "max_requests_per_second", "time_scale")


class LabFields(Fields):
    def lab_block(self, node: Node) -> LabSpec:
        m = self.mapping(node, "lab", set(LAB_KEYS))
        ints = {"nodes_per_cell": (1, MAX_NODES_PER_CELL), "racks_per_cell": (1, MAX_NODES_PER_CELL),
                "hosts_per_group": (1, MAX_HOSTS_PER_GROUP), "build_hosts": (0, MAX_BUILD_HOSTS),
                "max_count": (1, 10_000), "max_replicas": (0, MAX_REPLICAS)}
        kwargs: dict[str, float | int] = {}
        for key, (low, high) in ints.items():
            if key in m:
                kwargs[key] = self.integer(m[key], f"lab.{key}", low=low, high=high)
        if "max_requests_per_second" in m:
            kwargs["max_requests_per_second"] = self.number(m["max_requests_per_second"],
                                                            "lab.max_requests_per_second", low=0,
                                                            high=MAX_REQUESTS_PER_SECOND)
        if "time_scale" in m:
            kwargs["time_scale"] = self.number(m["time_scale"], "lab.time_scale", positive=True, high=1.0)
        return LabSpec(line=node.start_mark.line + 1, **kwargs)  # type: ignore[arg-type]  # each checked above


def _cap(value: int, cap: int | None) -> int:
    return value if cap is None else min(value, cap)


def lab_scaled(spec: RegionSpec) -> RegionSpec:
    """The spec as its ``lab:`` block scales it (module docstring); the identity without a block."""
    lab = spec.lab
    if lab is None or spec.scale == "lab":
        return spec
    s = lab.time_scale
    cells = []
    for cell in spec.cells:
        nodes = _cap(cell.nodes, lab.nodes_per_cell)
        cells.append(replace(cell, nodes=nodes, racks=min(_cap(cell.racks, lab.racks_per_cell), nodes)))
    groups = tuple(replace(g, hosts=_cap(g.hosts, lab.hosts_per_group)) for g in spec.groups)
    apps = []
    for app in spec.apps:
        if lab.max_count is not None and app.count_index > lab.max_count:
            continue
        rps = app.requests_per_second if lab.max_requests_per_second is None else \
            min(app.requests_per_second, lab.max_requests_per_second)
        apps.append(replace(app, replicas=_cap(app.replicas, lab.max_replicas), requests_per_second=rps))
    faults = tuple(replace(f, at=f.at * s, duration=None if f.duration is None else f.duration * s,
                           every=None if f.every is None else f.every * s,
                           at_range=None if f.at_range is None else (f.at_range[0] * s, f.at_range[1] * s),
                           duration_range=None if f.duration_range is None else
                           (f.duration_range[0] * s, f.duration_range[1] * s)) for f in spec.faults)
    checks = tuple(replace(c, within=c.within * s) for c in spec.checks)
    releases = tuple(replace(r, at=r.at * s, bake_seconds=r.bake_seconds * s, check_seconds=r.check_seconds * s)
                     for r in spec.releases)
    kept = {a.name for a in apps}
    pushes = tuple(replace(p, at=p.at * s, every=None if p.every is None else p.every * s)
                   for p in spec.pushes if p.app in kept)
    faults = tuple(replace(f, redeliver_after=f.redeliver_after * s) for f in faults)
    churn = replace(spec.churn, deploys_per_hour=spec.churn.deploys_per_hour / s,
                    scale_events_per_hour=spec.churn.scale_events_per_hour / s)
    return replace(spec, duration=spec.duration * s, cells=tuple(cells), groups=groups, apps=tuple(apps),
                   faults=faults, checks=checks, releases=releases, pushes=pushes, churn=churn,
                   leak_check_every=spec.leak_check_every * s, traffic_every=spec.traffic_every * s,
                   leak_grace=spec.leak_grace * s, cooldown=spec.cooldown * s,
                   build_hosts=_cap(spec.build_hosts, lab.build_hosts),
                   costs=spec.lab_costs or spec.costs, scale="lab")


def check_scaled(spec: RegionSpec) -> None:
    """Raise a ``ScenarioError`` at the ``lab:`` block if the scaled spec is not one the world can run as written."""
    if spec.lab is None:
        return
    scaled = lab_scaled(spec)
    line = spec.lab.line

    def error(field: str, message: str) -> ScenarioError:
        return ScenarioError(spec.source, line, field, message)

    if not scaled.apps and spec.apps:
        raise error("lab", "the scaled scenario keeps no app")
    for push in scaled.pushes:
        if push.every is not None and push.every < MIN_EVERY:
            raise error("lab.time_scale", f"scales the period of the push at line {push.line} to {push.every:g} s, "
                                          f"below the {MIN_EVERY:g} s a repeated push may have")
    if scaled.pushes and not scaled.build_hosts:
        raise error("lab.build_hosts", "the scenario pushes commits and the scaled scenario has no build host")
    for i, fault in enumerate(scaled.faults):
        where = f"faults[{i}] (line {fault.line})"
        if fault.every is not None and fault.every < MIN_EVERY:
            raise error("lab.time_scale", f"scales the period of {where} to {fault.every:g} s, below the "
                                          f"{MIN_EVERY:g} s a repeated fault may have")
        if fault.kind == "builder-crash" and not scaled.build_hosts:
            raise error("lab.build_hosts", f"{where} crashes build hosts and the scaled scenario has none")
        if FAULT_TARGETS[fault.kind] == "none" or fault.target == Selector():
            continue
        universe = target_universe(fault.kind, scaled.cells, scaled.groups, scaled.apps, fault.group,
                                   scaled.build_hosts)
        known = {name for name, _ in universe}
        for name in fault.target.names:
            if name not in known:
                raise error("lab", f"the scaled scenario has no {show(name)}, which {where} selects "
                                   f"({FAULT_TARGETS[fault.kind]}: {', '.join(sorted(known)[:6])}, …)")
        if not any(matches(fault.target, name, labels) for name, labels in universe):
            raise error("lab", f"{where}'s target selects nothing in the scaled scenario")


__all__ = ["LAB_KEYS", "LabFields", "check_scaled", "lab_scaled"]
