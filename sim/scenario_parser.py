"""The scenario parser: the document, its topology (Cells, pools, groups) and its workload (apps, churn).

``Parser(file).region(root)`` turns the composed tree into a ``RegionSpec`` or raises one
``ScenarioError``. Totals (nodes, apps after ``count``, pods) are checked before anything
is expanded; pool overlaps are found by sorting once; a pool is checked by the agents'
own rules (``cni.pools.Pool.parse``), so a scenario that validates is one the IPAM
accepts. Faults and checks are read by ``FaultFields`` (sim/scenario_faults.py).
It must not run anything.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from yaml.nodes import Node

from cni.pools import Pool, PoolConfigError
from sim.scenario_costs import CostFields, CostsFile, apply_overrides
from sim.scenario_errors import MAX_DOMAIN_CHARS, MAX_SCALAR_CHARS, NAME, show, some
from sim.scenario_faults import FaultFields
from sim.scenario_lab import LabFields, check_scaled
from sim.scenario_platform import PlatformFields
from sim.scenario_pushes import PushFields
from sim.spec import (
    MAX_APPS,
    MAX_BUILD_HOSTS,
    MAX_CELLS,
    MAX_ETCD_LATENCY,
    MAX_EVENTS_PER_HOUR,
    MAX_GROUPS,
    MAX_HOSTS_PER_GROUP,
    MAX_NODES_PER_CELL,
    MAX_PODS,
    MAX_POOLS_PER_CELL,
    MAX_REGION_NODES,
    MAX_REPLICAS,
    MAX_REQUESTS_PER_SECOND,
    MAX_SECONDS,
    MAX_SEED,
    MIN_POOL_PREFIX,
    AppSpec,
    CellSpec,
    ChurnSpec,
    GroupSpec,
    PoolSpec,
    RegionSpec,
)


def default_name(file: str) -> str:
    """A scenario without ``name``: its file name, made a valid name (lower case, other characters as '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", Path(file).stem.lower()).strip("-")[:63].strip("-")
    return name or "scenario"



class Parser(FaultFields, CostFields, LabFields, PlatformFields, PushFields):
    def __init__(self, file: str, costs: CostsFile | None = None) -> None:
        super().__init__(file)
        self.base_costs = costs or CostsFile()  # the cost models this scenario runs with (sim/scenario_costs.py)

    # ---- the document
    def region(self, root: Node) -> RegionSpec:
        keys = {"name", "seed", "duration", "topology", "workload", "faults", "checks", "etcd_latency", "cooldown",
                "leak_check_every", "leak_grace", "description", "costs", "lab", "platform", "pushes"}
        m = self.mapping(root, "", keys, required=("seed", "duration", "topology"))
        seed = self.integer(m["seed"], "seed", low=0, high=MAX_SEED)
        duration = self.number(m["duration"], "duration", positive=True, high=MAX_SECONDS)
        if "name" in m:
            name = self.string(m["name"], "name", limit=MAX_SCALAR_CHARS, control=True)
            if not NAME.fullmatch(name):
                raise self.error(m["name"], "name", f"{show(name)} is not a scenario name: lower-case letters, "
                                                    "digits and '-', starting with a letter or digit, at most 63")
        else:
            name = default_name(self.file)
        if "description" in m:
            self.string(m["description"], "description", empty=True, limit=MAX_SCALAR_CHARS, control=True)
        cells, groups = self.topology(m["topology"])
        apps, churn = self.workload(m["workload"], cells, groups) if "workload" in m else ((), ChurnSpec())
        pushes = self.pushes(m["pushes"], duration, apps) if "pushes" in m else ()  # before faults: webhook kinds
        faults = self.faults(m["faults"], duration, cells, groups, apps) if "faults" in m else ()
        checks = self.checks(m["checks"]) if "checks" in m else ()
        releases = self.platform(m["platform"], duration, apps) if "platform" in m else ()
        self.check_platform(m, apps, churn, checks)
        optional: dict[str, Any] = {}  # the times and latency the file gives (floats)
        for key, positive, high in (("etcd_latency", False, MAX_ETCD_LATENCY), ("cooldown", False, MAX_SECONDS),
                                    ("leak_check_every", True, MAX_SECONDS), ("leak_grace", False, MAX_SECONDS)):
            if key in m:
                optional[key] = self.number(m[key], key, low=0, positive=positive, high=high)
        # Cost models: costs.yaml, then the scenario's `costs:`, then a top-level etcd_latency.
        overrides = self.cost_overrides(m["costs"], "costs") if "costs" in m else ()
        costs = apply_overrides(self.base_costs.costs, overrides)
        if "etcd_latency" in optional:
            costs = apply_overrides(costs, (("store", "latency", optional["etcd_latency"]),))
        optional["etcd_latency"] = costs.store.latency
        lab_costs = apply_overrides(costs, self.base_costs.lab_overrides) if self.base_costs.lab_overrides else None
        lab = self.lab_block(m["lab"]) if "lab" in m else None
        spec = RegionSpec(name=name, seed=seed, duration=duration, cells=cells, groups=groups, apps=apps,
                          faults=faults, checks=checks, releases=releases, pushes=pushes, churn=churn,
                          build_hosts=self.build_hosts,
                          source=self.file, costs=costs, lab=lab, lab_costs=lab_costs,
                          traffic_every=self.platform_traffic_every(apps), **optional)
        check_scaled(spec)  # a `lab:` block must leave a scenario the world can run as written
        return spec

    def topology(self, node: Node) -> tuple[tuple[CellSpec, ...], tuple[GroupSpec, ...]]:
        m = self.mapping(node, "topology", {"cells", "groups", "build_hosts"}, required=("cells",))
        self.build_hosts = self.integer(m["build_hosts"], "topology.build_hosts", low=0, high=MAX_BUILD_HOSTS) \
            if "build_hosts" in m else 0
        cells: list[CellSpec] = []
        seen: dict[str, Node] = {}
        pools_seen: dict[str, Node] = {}
        networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, Node, str]] = []
        cell_nodes = self.sequence(m["cells"], "topology.cells", MAX_CELLS, "Cells")
        if not cell_nodes:
            raise self.error(m["cells"], "topology.cells", "at least one Cell is needed")
        region_nodes = 0
        for i, cn in enumerate(cell_nodes):
            f = f"topology.cells[{i}]"
            c = self.mapping(cn, f, {"name", "nodes", "racks", "labels", "pools"}, required=("name", "nodes", "pools"))
            name = self.label(c["name"], f"{f}.name", "Cell")
            self.unique(seen, name, c["name"], f"{f}.name", "Cell")
            nodes = self.integer(c["nodes"], f"{f}.nodes", low=1)
            if nodes > MAX_NODES_PER_CELL:
                raise self.error(c["nodes"], f"{f}.nodes",
                                 f"{nodes:,} nodes exceed the {MAX_NODES_PER_CELL} a Cell "
                                 "(one Kubernetes cluster) may have")
            region_nodes += nodes
            if region_nodes > MAX_REGION_NODES:
                raise self.error(c["nodes"], f"{f}.nodes",
                                 f"{region_nodes:,} nodes over the Cells so far exceed the {MAX_REGION_NODES:,} "
                                 "of a Region (the limit)")
            racks = self.integer(c["racks"], f"{f}.racks", low=1, high=nodes) if "racks" in c else 1
            labels = self.labels(c["labels"], f"{f}.labels") if "labels" in c else ()
            for key, _ in labels:
                if key in ("cell", "rack", "role"):
                    raise self.error(c["labels"], f"{f}.labels.{key}", f"{key!r} is set by the topology itself")
            pools: list[PoolSpec] = []
            pool_nodes = self.sequence(c["pools"], f"{f}.pools", MAX_POOLS_PER_CELL, "pools in a Cell")
            if not pool_nodes:
                raise self.error(c["pools"], f"{f}.pools", "a Cell needs at least one pool")
            for j, pn in enumerate(pool_nodes):
                pools.append(self.pool(pn, f"{f}.pools[{j}]", pools_seen, networks))
            cells.append(CellSpec(name=name, nodes=nodes, pools=tuple(pools), node_labels=labels, racks=racks))
        self.overlaps(networks)
        groups: list[GroupSpec] = []
        gseen: dict[str, Node] = {}
        group_nodes = self.sequence(m["groups"], "topology.groups", MAX_GROUPS, "groups") if "groups" in m else []
        for i, gn in enumerate(group_nodes):
            f = f"topology.groups[{i}]"
            g = self.mapping(gn, f, {"name", "hosts"}, required=("name", "hosts"))
            name = self.label(g["name"], f"{f}.name", "group")
            self.unique(gseen, name, g["name"], f"{f}.name", "group")
            groups.append(GroupSpec(name=name, hosts=self.integer(g["hosts"], f"{f}.hosts", low=1,
                                                                  high=MAX_HOSTS_PER_GROUP)))
        return tuple(cells), tuple(groups)

    def pool(self, node: Node, f: str, seen: dict[str, Node],
             networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, Node, str]]) -> PoolSpec:
        p = self.mapping(node, f, {"name", "cidr", "vlan", "block_size"}, required=("name", "cidr", "vlan"))
        name = self.label(p["name"], f"{f}.name", "pool")
        self.unique(seen, name, p["name"], f"{f}.name", "pool")
        cidr = self.string(p["cidr"], f"{f}.cidr")
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise self.error(p["cidr"], f"{f}.cidr", f"not a network in CIDR notation: {exc}") from None
        vlan = self.integer(p["vlan"], f"{f}.vlan", low=1, high=4094)
        block = self.integer(p["block_size"], f"{f}.block_size", low=1, high=1 << (32 - MIN_POOL_PREFIX)) \
            if "block_size" in p else 16
        # The agents' own rules decide (cni/pools.py: IPv4, at most /30, a power-of-two block
        # that fits, ...), so a scenario that validates is one the IPAM accepts.
        try:
            Pool.parse(name, str(net), vlan, None, (), block)
        except PoolConfigError as exc:
            on_block = exc.field == "block_size" and "block_size" in p  # else the pool is too small for it
            where = p["block_size"] if on_block else p["cidr"]
            field = f"{f}.block_size" if on_block else f"{f}.cidr"
            raise self.error(where, field, str(exc)) from None
        if net.prefixlen < MIN_POOL_PREFIX:
            raise self.error(p["cidr"], f"{f}.cidr", f"{net} is larger than a /{MIN_POOL_PREFIX} (the limit of a pool)")
        networks.append((net, name, p["cidr"], f"{f}.cidr"))
        return PoolSpec(name=name, cidr=str(net), vlan=vlan, block_size=block)

    def overlaps(self, networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, Node, str]]) -> None:
        """Pools overlap iff, sorted by first address, one starts before a previous one ends: one sort, one pass.

        Of the overlapping pairs the sweep meets, the error names the one whose later pool
        (in file order) comes first, at that later pool.
        """
        order = sorted(range(len(networks)), key=lambda k: int(networks[k][0].network_address))
        found: tuple[int, int] | None = None  # (later, earlier) in file order
        reach = -1  # the widest pool so far (by last address)
        for k in order:
            net = networks[k][0]
            if reach >= 0 and int(net.network_address) <= int(networks[reach][0].broadcast_address):
                pair = (max(k, reach), min(k, reach))
                if found is None or pair < found:
                    found = pair
            if reach < 0 or int(net.broadcast_address) > int(networks[reach][0].broadcast_address):
                reach = k
        if found is not None:
            net, _, node, field = networks[found[0]]
            other, other_name, other_node, other_field = networks[found[1]]
            raise self.error(node, field, f"{net} overlaps {other} of pool {other_name!r} ({other_field}, line "
                                          f"{other_node.start_mark.line + 1})")

    def workload(self, node: Node, cells: tuple[CellSpec, ...],
                 groups: tuple[GroupSpec, ...]) -> tuple[tuple[AppSpec, ...], ChurnSpec]:
        m = self.mapping(node, "workload", {"apps", "churn"})
        cell_names = {c.name: None for c in cells}  # ordered, for messages
        group_names = {g.name: None for g in groups}
        apps: list[AppSpec] = []
        seen: dict[str, Node] = {}
        app_nodes = self.sequence(m["apps"], "workload.apps", MAX_APPS, "apps") if "apps" in m else []
        for i, an in enumerate(app_nodes):
            apps.extend(self.app(an, f"workload.apps[{i}]", cell_names, group_names, seen, len(apps)))
        churn = ChurnSpec()
        if "churn" in m:
            c = self.mapping(m["churn"], "workload.churn", {"deploys_per_hour", "scale_events_per_hour"})
            churn = ChurnSpec(**{k: self.number(v, f"workload.churn.{k}", low=0, high=MAX_EVENTS_PER_HOUR)
                                 for k, v in c.items()})
        return tuple(apps), churn

    def app(self, node: Node, f: str, cell_names: dict[str, None], group_names: dict[str, None],
            seen: dict[str, Node], before: int) -> list[AppSpec]:
        keys = {"name", "count", "cells", "replicas", "group", "domain", "port", "start_seconds", "readiness_seconds",
                "requests_per_second", "platform"}
        a = self.mapping(node, f, keys, required=("name", "cells", "replicas", "group"))
        name = self.label(a["name"], f"{f}.name", "app")
        cells = self.names(a["cells"], f"{f}.cells", len(cell_names), "Cells (each at most once)")
        if not cells:
            raise self.error(a["cells"], f"{f}.cells", "an app runs in at least one Cell")
        listed: set[str] = set()
        for j, (cell, cn) in enumerate(cells):
            if cell not in cell_names:
                raise self.error(cn, f"{f}.cells[{j}]",
                                 f"no Cell named {show(cell)} (Cells: {some(cell_names)})")
            if cell in listed:
                raise self.error(cn, f"{f}.cells[{j}]", f"Cell {show(cell)} listed twice")
            listed.add(cell)
        group = self.string(a["group"], f"{f}.group")
        if group not in group_names:
            known = some(group_names) or "none defined in topology.groups"
            raise self.error(a["group"], f"{f}.group", f"no Nginx group named {show(group)} (groups: {known})")
        kwargs: dict[str, Any] = {}
        if "domain" in a:
            kwargs["domain"] = self.string(a["domain"], f"{f}.domain", limit=MAX_DOMAIN_CHARS)
        if "port" in a:
            kwargs["port"] = self.integer(a["port"], f"{f}.port", low=1, high=65535)
        for key in ("start_seconds", "readiness_seconds"):
            if key in a:
                kwargs[key] = self.number(a[key], f"{f}.{key}", low=0, high=MAX_SECONDS)
        if "requests_per_second" in a:
            kwargs["requests_per_second"] = self.number(a["requests_per_second"], f"{f}.requests_per_second", low=0,
                                                        high=MAX_REQUESTS_PER_SECOND)
        if "platform" in a:
            kwargs["platform"] = self.platform_app(a, f, name, cells)
        replicas = self.integer(a["replicas"], f"{f}.replicas", low=0, high=MAX_REPLICAS)
        count = self.integer(a["count"], f"{f}.count", low=1, high=MAX_APPS) if "count" in a else 0
        if count and "domain" in kwargs:
            raise self.error(a["domain"], f"{f}.domain", "an app with `count` gets one domain per copy: omit domain")
        # Bounds before expansion: `count` copies are made only once they are known to fit.
        if before + max(count, 1) > MAX_APPS:
            where, field = (a["count"], f"{f}.count") if count else (a["name"], f"{f}.name")
            raise self.error(where, field, f"{before + max(count, 1):,} apps exceed the {MAX_APPS:,} of a scenario "
                                           "(the limit, `count` copies included)")
        self.pods += replicas * len(cells) * max(count, 1)
        if self.pods > MAX_PODS:
            raise self.error(a["replicas"], f"{f}.replicas", f"{self.pods:,} pods (replicas x Cells, over the apps so "
                                                             f"far) exceed the {MAX_PODS:,} of a scenario (the limit)")
        names = [f"{name}-{k}" for k in range(1, count + 1)] if count else [name]
        out: list[AppSpec] = []
        cell_tuple = tuple(c for c, _ in cells)
        for n in names:
            self.unique(seen, n, a["name"], f"{f}.name", "app")
            out.append(AppSpec(name=n, cells=cell_tuple, replicas=replicas, group=group,
                               count_index=len(out) + 1 if count else 0, **kwargs))
        return out
