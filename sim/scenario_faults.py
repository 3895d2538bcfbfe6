"""The scenario parser's faults, their selectors, and the checks.

A fault's kind must be one of ``sim.spec.FAULT_KINDS``; its kind-specific parameters are
accepted only for the kinds ``sim.spec.FAULT_PARAMS`` names; its selector is checked
against ``sim.targets.TargetIndex`` (names parsed, labels counted per Cell), never by
listing every target, and must match something. A check's kind must be one of
``sim.spec.CHECK_KINDS``. A kind that needs build hosts needs ``topology.build_hosts``.
A fault's ``at`` and ``duration`` may be ranges drawn per seed, ``{uniform: [low, high]}``
(sim/fault_times.py draws them): both ends within the field's bounds, low below high, and
the high end of ``at`` before the end of the run.
It must not run anything.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from yaml.nodes import MappingNode, Node

from control.apps import VERSION
from sim.scenario_errors import MAX_VALUES, field_name, show, some
from sim.scenario_fields import Fields
from sim.spec import (
    CHECK_KINDS,
    CRASH_POINTS,
    FAULT_KINDS,
    FAULT_PARAMS,
    FAULT_TARGETS,
    MAX_CHANGES,
    MAX_CHECKS,
    MAX_DELIVERIES,
    MAX_FACTOR,
    MAX_FAULTS,
    MAX_LIMIT,
    MAX_SECONDS,
    MIN_EVERY,
    AppSpec,
    CellSpec,
    CheckSpec,
    FaultSpec,
    GroupSpec,
    Labels,
    PoolSpec,
    Selector,
)
from sim.targets import TargetIndex


class FaultFields(Fields):
    pushes_given: bool = False  # the file has pushes (sim/scenario_pushes.py, read before the faults)

    def faults(self, node: Node, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
               apps: tuple[AppSpec, ...]) -> tuple[FaultSpec, ...]:
        out = []
        self.targets = TargetIndex(cells, groups, apps, self.build_hosts)
        pools = {p.name: p for c in cells for p in c.pools}
        for i, fn in enumerate(self.sequence(node, "faults", MAX_FAULTS, "faults")):
            out.append(self.fault(fn, f"faults[{i}]", duration, cells, groups, apps, pools))
        return tuple(out)

    def fault(self, node: Node, f: str, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
              apps: tuple[AppSpec, ...], pools: dict[str, PoolSpec]) -> FaultSpec:
        keys = {"kind", "at", "duration", "target", "every", "factor", "changes", "free", "pool", "group", "app",
                "version", "error_rate", "latency_factor", "deliveries", "crash_point", "redeliver_after"}
        m = self.mapping(node, f, keys, required=("kind", "at"))
        kind = self.string(m["kind"], f"{f}.kind")
        if kind not in FAULT_KINDS:
            raise self.error(m["kind"], f"{f}.kind",
                             f"unknown fault kind {show(kind)} (kinds: {', '.join(FAULT_KINDS)})")
        at, at_range = self.time(m["at"], f"{f}.at", low=0)
        if at_range is not None:
            at = at_range[0]  # until a seed draws it (sim/fault_times.py)
        latest = at if at_range is None else at_range[1]
        if latest >= duration:
            what = "at" if at_range is None else "the range's high end"
            raise self.error(m["at"], f"{f}.at", f"{what} {latest:g} s is not before the end of the run "
                                                 f"({duration:g} s)")
        kwargs: dict[str, Any] = {}
        if at_range is not None:
            kwargs["at_range"] = at_range
        if "duration" in m:
            kwargs["duration"], duration_range = self.time(m["duration"], f"{f}.duration", positive=True,
                                                           high=MAX_SECONDS)
            if duration_range is not None:
                kwargs["duration"] = duration_range[1]  # the longest, until a seed draws it
                kwargs["duration_range"] = duration_range
        if "every" in m:
            kwargs["every"] = self.number(m["every"], f"{f}.every", low=MIN_EVERY, high=MAX_SECONDS)
            if "duration" in kwargs and kwargs["duration"] >= kwargs["every"]:
                raise self.error(m["every"], f"{f}.every",
                                 f"a repeated fault must end before it repeats (duration "
                                 f"{'up to ' if 'duration_range' in kwargs else ''}{kwargs['duration']:g} s)")
        for key, kinds in FAULT_PARAMS.items():
            if key in m and kind not in kinds:
                raise self.error(m[key], f"{f}.{key}", f"only for fault kinds {', '.join(kinds)}, not {kind}")
        group_names = [g.name for g in groups]
        if "factor" in m:
            kwargs["factor"] = self.number(m["factor"], f"{f}.factor", low=1, high=MAX_FACTOR)
        if "changes" in m:
            kwargs["changes"] = self.integer(m["changes"], f"{f}.changes", low=1, high=MAX_CHANGES)
        if "group" in m:
            group = self.string(m["group"], f"{f}.group")
            if group not in group_names:
                raise self.error(m["group"], f"{f}.group",
                                 f"no Nginx group named {show(group)} (groups: {some(group_names) or 'none'})")
            kwargs["group"] = group
        elif kind == "reload-storm":
            raise self.error(node, f"{f}.group", "required for reload-storm")
        if kind == "pool-exhaustion":
            if "pool" not in m:
                raise self.error(node, f"{f}.pool", "required for pool-exhaustion")
            pool_name = self.string(m["pool"], f"{f}.pool")
            if pool_name not in pools:
                raise self.error(m["pool"], f"{f}.pool", f"no pool named {show(pool_name)} (pools: {some(pools)})")
            kwargs["pool"] = pool_name
            if "free" in m:
                size = ipaddress.ip_network(pools[pool_name].cidr).num_addresses
                kwargs["free"] = self.integer(m["free"], f"{f}.free", low=0, high=size - 1)
            if "target" in m:
                raise self.error(m["target"], f"{f}.target",
                                 "pool-exhaustion selects its pool with `pool`, not a target")
        if kind == "bad-version":
            kwargs.update(self.bad_version(node, m, f, apps))
        if kind in ("webhook-duplicate", "webhook-receiver-crash"):
            kwargs.update(self.webhook_fault(m, f, kind))
        if kind == "builder-crash" and not self.build_hosts:
            raise self.error(m["kind"], f"{f}.kind", "builder-crash needs build hosts (topology.build_hosts)")
        if "target" in m:
            kwargs["target"] = self.selector(m["target"], f"{f}.target", kind, kwargs.get("group", ""))
        # kwargs holds the fields this kind takes, each checked above: mypy sees one value type for them all
        return FaultSpec(kind=kind, at=at, line=node.start_mark.line + 1, **kwargs)  # type: ignore[arg-type]

    def time(self, node: Node, field: str, *, low: float | None = None, high: float | None = None,
             positive: bool = False) -> tuple[float, tuple[float, float] | None]:
        """A fault's ``at`` or ``duration``: a number (``(value, None)``), or ``{uniform: [low, high]}``, a range
        drawn per seed (``(low, (low, high))``; sim/fault_times.py): both ends within the bounds, low < high."""
        if not isinstance(node, MappingNode):
            return self.number(node, field, low=low, high=high, positive=positive), None
        m = self.mapping(node, field, {"uniform"}, required=("uniform",))
        sub = f"{field}.uniform"
        ends = self.sequence(m["uniform"], sub)
        if len(ends) != 2:
            raise self.error(m["uniform"], sub, f"must be [low, high]: two numbers, got {len(ends)} value(s)")
        first = self.number(ends[0], f"{sub}[0]", low=low, high=high, positive=positive)
        last = self.number(ends[1], f"{sub}[1]", low=low, high=high, positive=positive)
        if first >= last:
            raise self.error(m["uniform"], sub, f"the low end {first:g} must be below the high end {last:g} "
                                                "(a fixed time is a plain number)")
        return first, (first, last)

    def webhook_fault(self, m: dict[str, Node], f: str, kind: str) -> dict[str, Any]:
        """A webhook fault's own fields; both kinds need the ``pushes:`` block (there is no hook without a push)."""
        if not self.pushes_given:
            raise self.error(m["kind"], f"{f}.kind", f"{kind} needs pushes (the `pushes:` block): no hook is sent "
                                                     "without one")
        out: dict[str, Any] = {}
        if "deliveries" in m:
            out["deliveries"] = self.integer(m["deliveries"], f"{f}.deliveries", low=2, high=MAX_DELIVERIES)
        if kind == "webhook-receiver-crash":
            if "target" in m:
                raise self.error(m["target"], f"{f}.target", "webhook-receiver-crash crashes the one hook receiver: "
                                                             "no target")
            if "crash_point" in m:
                point = self.string(m["crash_point"], f"{f}.crash_point")
                if point not in CRASH_POINTS:
                    raise self.error(m["crash_point"], f"{f}.crash_point",
                                     f"{show(point)} is not one of {', '.join(CRASH_POINTS)}")
                out["crash_point"] = point
            if "redeliver_after" in m:
                out["redeliver_after"] = self.number(m["redeliver_after"], f"{f}.redeliver_after", positive=True,
                                                     high=MAX_SECONDS)
        return out

    def bad_version(self, node: Node, m: dict[str, Node], f: str, apps: tuple[AppSpec, ...]) -> dict[str, Any]:
        """A bad-version fault's own fields: a platform app, its version ("next" or v<N>), the error rate."""
        if "app" not in m:
            raise self.error(node, f"{f}.app", "required for bad-version")
        if "target" in m:
            raise self.error(m["target"], f"{f}.target", "bad-version selects its app with `app`, not a target")
        app = self.string(m["app"], f"{f}.app")
        platform = [a.name for a in apps if a.platform]
        if app not in platform:
            raise self.error(m["app"], f"{f}.app", f"{show(app)} is no platform app (platform apps: "
                                                   f"{some(platform) or 'none: give an app `platform: true`'})")
        out: dict[str, Any] = {"app": app}
        if "version" in m:
            version = self.string(m["version"], f"{f}.version")
            if version != "next" and not VERSION.fullmatch(version):
                raise self.error(m["version"], f"{f}.version", f"{show(version)} is not v<N> or next")
            out["version"] = version
        if "error_rate" not in m:
            raise self.error(node, f"{f}.error_rate", "required for bad-version (0 to 1)")
        out["error_rate"] = self.number(m["error_rate"], f"{f}.error_rate", low=0, high=1)
        if "latency_factor" in m:
            out["latency_factor"] = self.number(m["latency_factor"], f"{f}.latency_factor", low=1, high=MAX_FACTOR)
        return out

    def selector(self, node: Node, f: str, kind: str, group: str) -> Selector:
        targets = self.targets
        assert targets is not None
        m = self.mapping(node, f, {"names", "labels", "count", "percent"})
        what = FAULT_TARGETS[kind]
        if not targets.count(kind, (), group):
            raise self.error(node, f, f"{kind} selects {what}, and there are none")
        names: tuple[str, ...] = ()
        found: dict[str, Labels] = {}
        if "names" in m:
            listed = self.names(m["names"], f"{f}.names", MAX_VALUES, "names")
            for j, (n, nn) in enumerate(listed):
                labels_of = targets.labels_of(kind, n, group)
                if labels_of is None:
                    sample = targets.sample(kind, group)
                    raise self.error(nn, f"{f}.names[{j}]", f"{kind} selects {what}: no {what[:-1]} named "
                                                             f"{show(n)} (e.g. {', '.join(sample)}, …)")
                found[n] = labels_of
            names = tuple(n for n, _ in listed)
        labels: tuple[tuple[str, str], ...] = ()
        if "labels" in m:
            labels = self.labels(m["labels"], f"{f}.labels")
            values = targets.values(kind, group)
            for key, value in labels:
                if key not in values:
                    raise self.error(m["labels"], f"{f}.labels.{field_name(key)}",
                                     f"{what} carry no label {show(key)} (labels: {some(sorted(values))})")
                if value not in values[key]:
                    raise self.error(m["labels"], f"{f}.labels.{field_name(key)}",
                                     f"no {what[:-1]} has {key}={show(value)} "
                                     f"(values: {some(sorted(values[key]))})")
        if names:  # the names given, filtered by the labels
            matching = sum(1 for ls in found.values() if all(v in ls.get(k, ()) for k, v in labels))
        else:
            matching = targets.count(kind, labels, group)
        if labels and not matching:
            raise self.error(m["labels"], f"{f}.labels", f"no {what[:-1]} matches all of these names and labels")
        count = None
        if "count" in m:
            count = self.integer(m["count"], f"{f}.count", low=1, high=matching)
        percent = None
        if "percent" in m:
            if count is not None:
                raise self.error(m["percent"], f"{f}.percent", "give count or percent, not both")
            percent = self.number(m["percent"], f"{f}.percent", positive=True, high=100)
        return Selector(names=names, labels=labels, count=count, percent=percent)

    def checks(self, node: Node) -> tuple[CheckSpec, ...]:
        out = []
        for i, cn in enumerate(self.sequence(node, "checks", MAX_CHECKS, "checks")):
            f = f"checks[{i}]"
            m = self.mapping(cn, f, {"kind", "within", "limit"}, required=("kind",))
            kind = self.string(m["kind"], f"{f}.kind")
            if kind not in CHECK_KINDS:
                raise self.error(m["kind"], f"{f}.kind",
                                 f"unknown check kind {show(kind)} (kinds: {', '.join(CHECK_KINDS)})")
            if kind in ("builds-finish", "one-build-per-commit") and not self.build_hosts:
                raise self.error(m["kind"], f"{f}.kind", f"{kind} needs build hosts (topology.build_hosts)")
            kwargs: dict[str, float] = {}
            if "within" in m:
                kwargs["within"] = self.number(m["within"], f"{f}.within", low=0, high=MAX_SECONDS)
            if "limit" in m:
                kwargs["limit"] = self.number(m["limit"], f"{f}.limit", low=0, high=MAX_LIMIT)
            out.append(CheckSpec(kind=kind, **kwargs))  # type: ignore[arg-type]  # kind: one of CHECK_KINDS, checked
        return tuple(out)
