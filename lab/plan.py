"""The lab's plan: every name, address and port a one-machine lab of a Region uses, computed from its spec.

``plan_lab(spec, lab_id, lab_dir)`` is a pure function (no I/O): the fabric (lab/fabric.py),
the services (lab/services.py), the container runtime, the run driver and ``lab status``
all read their names from the one ``LabPlan`` it returns, so they agree by construction.

The layout (docs/lab.md; decided in issue 12):

* Management network ``mgmt_cidr`` (default 198.18.0.0/16, RFC 2544's benchmarking range) on
  VLAN ``MGMT_VLAN``; the root netns holds ``root_mgmt_ip`` (.0.1) on the veth ``l<id>mg``,
  the router ``router.mgmt_ip`` (.0.254).
* Bridges (OVS, ``datapath_type=netdev``, ``external_ids:leengine-lab=<id>``): the core
  ``l<id>core``; one fabric per Cell ``l<id>f<i>`` patched to the core by ``l<id>c<i>`` (core
  side) / ``l<id>k<i>`` (fabric side); one bridge per node ``l<id>n<j>`` patched to its Cell's
  fabric by ``l<id>u<j>`` (node side) / ``l<id>d<j>`` (fabric side). Patches are trunks.
* Hosts are netns ``le-<id>-<host>`` with one veth on the management VLAN: ``l<id>h<k>`` on the
  bridge, ``l<id>h<k>n`` in the netns. Nodes are no hosts: their agents run in the root netns.
  The router ``le-<id>-router`` has ``l<id>rm``/``l<id>rmn`` on the management VLAN and one access
  port per pool VLAN ``l<id>r<vlan>``/``l<id>r<vlan>n`` holding the pool's gateway.

Invariants (tests/unit/test_lab_plan.py): every interface and bridge name is at most 15
characters, starts with ``l<id>`` and is unique; every management address is unique and inside
``mgmt_cidr``; every port is unique per address; node, Nginx host and build host names are the
simulator's (``sim.spec.node_name``, ``nginx_host_name``, ``build_host_name``) so a fault selector
picks the same targets in both. A plan that cannot be laid out (too many hosts for the network,
ports beyond 65535, a pool without a usable gateway) is a ``LabPlanError``.

It must not run anything, and must not know how a bridge is made or a process started.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cni.pools import Pool, PoolConfigError
from sim.spec import (
    CellSpec,
    PoolSpec,
    RegionSpec,
    build_host_name,
    nginx_host_name,
    node_name,
)
from sim.targets import node_labels

LAB_ID = re.compile(r"[0-9a-f]{4}")
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?")  # a DNS label: safe in a netns name and a path
IFNAMSIZ = 15  # the kernel's limit on interface names (IFNAMSIZ - 1)

DEFAULT_MGMT_CIDR = "198.18.0.0/16"
MGMT_VLAN = 4000

# Service ports (on the host's own management address).
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
CONTROL_PORT = 50051  # leengine-control's gRPC
CONTROL_HTTP_PORT = 5001  # leengine-control's --http-address (HTTPS: the registry's /token, GitLab's hooks)
API_PORT = 8080  # a Cell's Kubernetes API (plain HTTP inside the lab)
REGISTRY_PORT = 5000  # the registry gate (leengine registry-gate): the address every client uses
REGISTRY_UPSTREAM = "127.0.0.1:5000"  # docker-registry itself, on the registry host's loopback: only the gate calls it
NGINX_PORT = 80  # the Nginx hosts' client-facing port

# Port ranges on the management addresses. Metrics ports are unique over the whole lab (several
# processes share 198.18.0.1, the root's address); links ports are on the root's address.
METRICS_PORT_BASE = 19100
LINKS_PORT_BASE = 21000

# Where each role's management addresses are taken from: (first address as third and fourth octet, how many).
# Inside a /16 every .x.0 and .x.255 is an ordinary host address, so blocks may cross octets.
_ADDRESS_BLOCKS = {
    "etcd-member": ((1, 1), 3),  # .1.1 .. .1.3
    "control": ((1, 21), 1),
    "registry": ((1, 31), 1),
    "api": ((2, 1), 250),  # one per Cell (MAX_CELLS is 100)
    "nginx-host": ((16, 1), 48 * 256),  # .16.1 ..
    "build-host": ((64, 1), 64 * 256),  # .64.1 ..
}

ETCD_MEMBERS = ("etcd1", "etcd2", "etcd3")
CONTROL_HOST = "control"
REGISTRY_HOST = "registry"
ROUTER_HOST = "router"

# The etcd clients of the control host, as leengine-control and leengine-discovery are two
# processes: the sim's control-plane client names map to them (``LabPlan.etcd_client_link``).
CONTROL_LINK_CLIENTS = ("control", "discovery", "cnictl")
_SIM_CONTROL_CLIENT = {"slb-core": "control", "build-scheduler": "control", "discovery": "discovery",
                       "cnictl": "cnictl"}


class LabPlanError(ValueError):
    """The spec cannot be laid out as a lab (names, addresses or ports do not fit)."""


def api_host_name(cell: str) -> str:
    """The host serving a Cell's Kubernetes API."""
    return f"api-{cell}"


def check_lab_id(lab_id: str) -> str:
    """``lab_id`` if it is 4 lowercase hex characters, else ``LabPlanError``."""
    if not isinstance(lab_id, str) or not LAB_ID.fullmatch(lab_id):
        raise LabPlanError(f"lab id {str(lab_id)[:20]!r} is not 4 lowercase hex characters")
    return lab_id


def lab_netns(lab_id: str, host: str) -> str:
    """The netns of a host (or a pod: ``host = "p-<pod>"``) of lab ``lab_id``."""
    return f"le-{check_lab_id(lab_id)}-{host}"


def netns_prefix(lab_id: str) -> str:
    """Every netns of the lab starts with this; nothing else does."""
    return f"le-{check_lab_id(lab_id)}-"


def ifname_prefix(lab_id: str) -> str:
    """Every interface and bridge of the lab starts with this."""
    return f"l{check_lab_id(lab_id)}"


@dataclass(frozen=True)
class HostPlan:
    """A host: a netns with one port on the management VLAN."""

    name: str
    role: str  # etcd-member | control | api | nginx-host | registry | build-host
    netns: str
    mgmt_ip: str
    cell: str | None  # the Cell of an API host; None for the Region's hosts
    bridge: str  # the bridge its veth is an access port of (core, or its Cell's fabric)
    veth: str  # the bridge side, in the root netns
    veth_peer: str  # the netns side, holding mgmt_ip
    group: str | None = None  # an Nginx host's group


@dataclass(frozen=True)
class NodePlan:
    """A node: its bridge (patched to its Cell's fabric); its agent and runtime run in the root netns."""

    name: str
    cell: str
    bridge: str
    index: int  # global, from 0
    labels: tuple[tuple[str, str], ...]  # as the sim's node_labels: cell, rack, the Cell's labels
    uplink: str  # patch port on the node bridge
    downlink: str  # its peer on the fabric


@dataclass(frozen=True)
class CellPlan:
    name: str
    index: int
    fabric: str  # the Cell's fabric bridge
    core_patch: str  # patch port on the core bridge (removing the pair cuts the Cell off)
    fabric_patch: str  # its peer on the fabric
    api_host: str
    api_url: str
    nodes: tuple[str, ...]
    pools: tuple[str, ...]


@dataclass(frozen=True)
class RouterPort:
    """One access port of the router: a pool's VLAN with the pool's gateway, or the management VLAN."""

    vlan: int
    veth: str
    veth_peer: str
    address: str  # "ip/prefixlen"
    pool: str | None  # None: the management port


@dataclass(frozen=True)
class RouterPlan:
    netns: str
    mgmt_ip: str
    ports: tuple[RouterPort, ...]


@dataclass(frozen=True)
class MetricsEndpoint:
    process: str
    host: str | None  # the netns host it runs in; None: the root netns
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    @property
    def listen(self) -> str:
        """The ``--metrics-address`` value."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class LinkPlan:
    """One listener of the links process: ``client``'s connections to etcd member ``member``."""

    client: str
    member: str
    listen_address: str
    listen_port: int
    target_address: str
    target_port: int


@dataclass(frozen=True)
class LabPorts:
    metrics: dict[str, MetricsEndpoint]  # process name -> endpoint
    links: tuple[LinkPlan, ...]

    def links_of(self, client: str) -> tuple[LinkPlan, ...]:
        return tuple(link for link in self.links if link.client == client)

    def etcd_endpoints(self, client: str) -> str:
        """The ``--etcd`` value of a client: its links listeners, comma separated, in member order."""
        links = self.links_of(client)
        if not links:
            raise KeyError(f"no etcd links for client {client!r}")
        return ",".join(f"{link.listen_address}:{link.listen_port}" for link in links)


@dataclass(frozen=True)
class LabPlan:
    id: str
    dir: Path
    name: str  # the scenario's name
    hosts: dict[str, HostPlan]
    nodes: dict[str, NodePlan]
    cells: dict[str, CellPlan]
    pools: list[PoolSpec]
    groups: dict[str, tuple[str, ...]]  # Nginx group -> its hosts
    build_hosts: tuple[str, ...]
    bridges: tuple[str, ...]  # every bridge: core, fabrics, node bridges
    core_bridge: str
    router: RouterPlan
    mgmt_cidr: str
    mgmt_vlan: int
    root_mgmt_ip: str
    root_veth: str  # holds root_mgmt_ip in the root netns
    root_veth_peer: str  # its bridge side on the core
    etcd_members: list[str]
    ports: LabPorts
    pool_gateways: dict[str, str] = field(default_factory=dict)  # pool -> gateway address

    # ---- names derived from the id
    def netns(self, host: str) -> str:
        return lab_netns(self.id, host)

    def pod_netns(self, pod: str) -> str:
        return lab_netns(self.id, f"p-{pod}")

    @property
    def netns_prefix(self) -> str:
        return netns_prefix(self.id)

    @property
    def ifname_prefix(self) -> str:
        return ifname_prefix(self.id)

    # ---- the lab directory
    @property
    def ovs_dir(self) -> Path:
        return self.dir / "ovs"

    @property
    def ovs_db(self) -> str:
        """The lab's private OVSDB endpoint (``ovs-vsctl --db=``, the Dataplane adapter's ``db``)."""
        return f"unix:{self.ovs_dir / 'db.sock'}"

    def pidfile(self, process: str) -> Path:
        return self.dir / "pids" / f"{process}.pid"

    def logfile(self, process: str) -> Path:
        return self.dir / "logs" / f"{process}.log"

    @property
    def links_socket(self) -> Path:
        return self.dir / "links.sock"

    def runtime_socket(self, node: str) -> Path:
        return self.dir / "run" / f"{node}.sock"

    # ---- services
    def etcd_member_urls(self) -> dict[str, str]:
        """member -> its client URL on the management network (the links process targets these)."""
        return {m: f"http://{self.hosts[m].mgmt_ip}:{ETCD_CLIENT_PORT}" for m in self.etcd_members}

    def etcd_initial_cluster(self) -> str:
        """etcd's ``--initial-cluster``: ``etcd1=http://ip:2380,...``."""
        return ",".join(f"{m}=http://{self.hosts[m].mgmt_ip}:{ETCD_PEER_PORT}" for m in self.etcd_members)

    @property
    def control_address(self) -> str:
        return f"{self.hosts[CONTROL_HOST].mgmt_ip}:{CONTROL_PORT}"

    @property
    def registry_address(self) -> str:
        """The registry as its clients call it: the gate in front of docker-registry."""
        return f"{self.hosts[REGISTRY_HOST].mgmt_ip}:{REGISTRY_PORT}"

    @property
    def control_http_address(self) -> str:
        """leengine-control's ``--http-address`` (TLS, the lab's server certificate)."""
        return f"{self.hosts[CONTROL_HOST].mgmt_ip}:{CONTROL_HTTP_PORT}"

    @property
    def token_realm(self) -> str:
        """The registry's ``auth.token.realm``: where clients get registry tokens (docs/registry.md)."""
        return f"https://{self.control_http_address}/token"

    def etcd_client_link(self, sim_client: str) -> str:
        """The links client that carries a sim etcd-client target's traffic (``slb-core`` -> ``control``)."""
        return _SIM_CONTROL_CLIENT.get(sim_client, sim_client)

    def summary(self) -> dict[str, object]:
        """What lab.json keeps of the plan (names and counts a reader needs without recomputing it)."""
        return {
            "name": self.name,
            "cells": {c.name: {"fabric": c.fabric, "nodes": list(c.nodes), "api": c.api_host} for c in
                      self.cells.values()},
            "hosts": {h.name: {"role": h.role, "netns": h.netns, "mgmt_ip": h.mgmt_ip} for h in self.hosts.values()},
            "groups": {g: list(hosts) for g, hosts in self.groups.items()},
            "build_hosts": list(self.build_hosts),
            "pools": [{"name": p.name, "cidr": p.cidr, "vlan": p.vlan, "gateway": self.pool_gateways[p.name]}
                      for p in self.pools],
            "bridges": list(self.bridges),
            "mgmt_cidr": self.mgmt_cidr,
            "root_mgmt_ip": self.root_mgmt_ip,
            "ovs_db": self.ovs_db,
        }


# --------------------------------------------------------------------------- planning


class _Addresses:
    def __init__(self, cidr: str) -> None:
        try:
            self.net = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise LabPlanError(f"management network {cidr!r}: {exc}") from None
        if self.net.prefixlen > 16:
            raise LabPlanError(f"management network {cidr} must be a /16 or larger")
        self.used: set[str] = set()

    def at(self, third: int, fourth: int) -> str:
        ip = str(self.net.network_address + third * 256 + fourth)
        if ipaddress.IPv4Address(ip) not in self.net or ip in self.used:
            raise LabPlanError(f"management address {ip} is outside {self.net} or taken twice")
        self.used.add(ip)
        return ip

    def role(self, role: str, k: int) -> str:
        """The ``k``-th (from 0) address of a role's block."""
        (third, fourth), count = _ADDRESS_BLOCKS[role]
        if k >= count:
            raise LabPlanError(f"too many {role} hosts for the lab's management network ({k + 1} > {count})")
        offset = third * 256 + fourth + k
        return self.at(offset // 256, offset % 256)


def _check_name(kind: str, name: str) -> str:
    if not HOST_NAME.fullmatch(name):
        raise LabPlanError(f"{kind} name {name[:70]!r} is not a DNS label a lab can use as a netns name")
    return name


def _ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise LabPlanError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name


def plan_lab(spec: RegionSpec, lab_id: str, lab_dir: Path, mgmt_cidr: str = DEFAULT_MGMT_CIDR) -> LabPlan:
    """The lab of ``spec`` with id ``lab_id`` in directory ``lab_dir`` (pure; ``LabPlanError`` if it cannot be)."""
    lid = check_lab_id(lab_id)
    pre = ifname_prefix(lid)
    addrs = _Addresses(mgmt_cidr)
    root_ip = addrs.at(0, 1)
    router_ip = addrs.at(0, 254)
    prefixlen = addrs.net.prefixlen
    core = _ifname(f"{pre}core")

    hosts: dict[str, HostPlan] = {}

    def add_host(name: str, role: str, ip: str, bridge: str, cell: str | None = None, group: str | None = None) -> None:
        _check_name(role, name)
        if name in hosts or name == ROUTER_HOST:
            raise LabPlanError(f"two lab hosts are named {name!r}")
        k = len(hosts)
        hosts[name] = HostPlan(name, role, lab_netns(lid, name), ip, cell, bridge, _ifname(f"{pre}h{k}"),
                               _ifname(f"{pre}h{k}n"), group)

    for k, member in enumerate(ETCD_MEMBERS):
        add_host(member, "etcd-member", addrs.role("etcd-member", k), core)
    add_host(CONTROL_HOST, "control", addrs.role("control", 0), core)
    add_host(REGISTRY_HOST, "registry", addrs.role("registry", 0), core)

    cells: dict[str, CellPlan] = {}
    nodes: dict[str, NodePlan] = {}
    pools: list[PoolSpec] = []
    gateways: dict[str, str] = {}
    bridges = [core]
    node_bridges: list[str] = []
    for i, cell in enumerate(spec.cells):
        _check_name("Cell", cell.name)
        fabric = _ifname(f"{pre}f{i}")
        bridges.append(fabric)
        api = api_host_name(cell.name)
        add_host(api, "api", addrs.role("api", i), fabric, cell=cell.name)
        names = _plan_nodes(cell, pre, fabric, nodes)
        node_bridges.extend(nodes[n].bridge for n in names)
        for p in cell.pools:
            pools.append(p)
            gateways[p.name] = _gateway(p)
        cells[cell.name] = CellPlan(cell.name, i, fabric, _ifname(f"{pre}c{i}"), _ifname(f"{pre}k{i}"), api,
                                    f"http://{hosts[api].mgmt_ip}:{API_PORT}", names,
                                    tuple(p.name for p in cell.pools))
    bridges.extend(node_bridges)

    groups: dict[str, tuple[str, ...]] = {}
    k = 0
    for g in spec.groups:
        members = []
        for j in range(1, g.hosts + 1):
            name = nginx_host_name(g.name, j)
            add_host(name, "nginx-host", addrs.role("nginx-host", k), core, group=g.name)
            members.append(name)
            k += 1
        groups[g.name] = tuple(members)
    build_hosts = []
    for j in range(1, spec.build_hosts + 1):
        name = build_host_name(j)
        add_host(name, "build-host", addrs.role("build-host", j - 1), core)
        build_hosts.append(name)

    _check_pools(pools, addrs.net)
    router = RouterPlan(
        lab_netns(lid, ROUTER_HOST), router_ip,
        (RouterPort(MGMT_VLAN, _ifname(f"{pre}rm"), _ifname(f"{pre}rmn"), f"{router_ip}/{prefixlen}", None),
         *(RouterPort(p.vlan, _ifname(f"{pre}r{p.vlan}"), _ifname(f"{pre}r{p.vlan}n"),
                      f"{gateways[p.name]}/{ipaddress.IPv4Network(p.cidr).prefixlen}", p.name) for p in pools)))

    plan = LabPlan(
        id=lid, dir=Path(lab_dir), name=spec.name, hosts=hosts, nodes=nodes, cells=cells, pools=pools, groups=groups,
        build_hosts=tuple(build_hosts), bridges=tuple(bridges), core_bridge=core, router=router,
        mgmt_cidr=str(addrs.net), mgmt_vlan=MGMT_VLAN, root_mgmt_ip=root_ip, root_veth=_ifname(f"{pre}mg"),
        root_veth_peer=_ifname(f"{pre}mgb"), etcd_members=list(ETCD_MEMBERS),
        ports=_plan_ports(hosts, nodes, root_ip), pool_gateways=gateways)
    _check_unique_ifnames(plan)
    return plan


def _plan_nodes(cell: CellSpec, pre: str, fabric: str, nodes: dict[str, NodePlan]) -> tuple[str, ...]:
    names = []
    for i in range(1, cell.nodes + 1):
        name = node_name(cell.name, i)
        j = len(nodes)
        labels = tuple(sorted((k, v) for k, values in node_labels(cell, i).items() for v in values))
        nodes[name] = NodePlan(name, cell.name, _ifname(f"{pre}n{j}"), j, labels, _ifname(f"{pre}u{j}"),
                               _ifname(f"{pre}d{j}"))
        names.append(name)
    return tuple(names)


def _gateway(pool: PoolSpec) -> str:
    _check_name("pool", pool.name)
    try:
        return str(Pool.parse(pool.name, pool.cidr, pool.vlan, block_size=pool.block_size).gateway)
    except PoolConfigError as exc:
        raise LabPlanError(f"pool {pool.name}: {exc}") from None


def _check_pools(pools: list[PoolSpec], mgmt: ipaddress.IPv4Network) -> None:
    """Pool VLANs are distinct from each other and from the management VLAN (the fabrics share one core, so a
    VLAN spans the Region); CIDRs overlap neither each other nor the management network."""
    seen: dict[int, str] = {}
    nets: list[tuple[str, ipaddress.IPv4Network]] = [("the management network", mgmt)]
    for p in pools:
        if p.vlan == MGMT_VLAN or p.vlan in seen:
            other = seen.get(p.vlan, "the management network")
            raise LabPlanError(f"pool {p.name}: VLAN {p.vlan} is also {other}'s")
        seen[p.vlan] = p.name
        net = ipaddress.IPv4Network(p.cidr)
        for name, other_net in nets:
            if net.overlaps(other_net):
                raise LabPlanError(f"pool {p.name}: {net} overlaps {name} ({other_net})")
        nets.append((f"pool {p.name}", net))


def _plan_ports(hosts: dict[str, HostPlan], nodes: dict[str, NodePlan], root_ip: str) -> LabPorts:
    """Metrics endpoints of every process and the links listeners of every etcd client."""
    metrics: dict[str, MetricsEndpoint] = {}

    def add(process: str, host: str | None, address: str) -> None:
        port = METRICS_PORT_BASE + len(metrics)
        if port >= LINKS_PORT_BASE:
            raise LabPlanError(f"too many lab processes for the metrics port range ({len(metrics) + 1})")
        metrics[process] = MetricsEndpoint(process, host, address, port)

    for h in hosts.values():
        if h.role == "etcd-member":
            add(h.name, h.name, h.mgmt_ip)
        elif h.role == "control":
            add("control", h.name, h.mgmt_ip)
            add("discovery", h.name, h.mgmt_ip)
        elif h.role == "api":
            add(h.name, h.name, h.mgmt_ip)
        elif h.role == "nginx-host":
            add(f"slb-{h.name}", h.name, h.mgmt_ip)
        elif h.role == "build-host":
            add(f"build-agent-{h.name}", h.name, h.mgmt_ip)
        elif h.role == "registry":
            add("registry", h.name, h.mgmt_ip)
    add("links", None, root_ip)
    for n in nodes:
        add(f"cni-{n}", None, root_ip)
        add(f"runtime-{n}", None, root_ip)

    clients = [*CONTROL_LINK_CLIENTS, *nodes, *(h.name for h in hosts.values() if h.role in ("nginx-host",
                                                                                               "build-host"))]
    members = [h for h in hosts.values() if h.role == "etcd-member"]
    links = []
    for c, client in enumerate(clients):
        for m, member in enumerate(members):
            port = LINKS_PORT_BASE + c * len(members) + m
            if port > 65535:
                raise LabPlanError(f"too many etcd clients for the links port range ({len(clients)})")
            links.append(LinkPlan(client, member.name, root_ip, port, member.mgmt_ip, ETCD_CLIENT_PORT))
    return LabPorts(metrics, tuple(links))


def _check_unique_ifnames(plan: LabPlan) -> None:
    counts = Counter(interface_names(plan))
    dupes = sorted(n for n, c in counts.items() if c > 1)
    if dupes:
        raise LabPlanError(f"interface names used twice: {', '.join(dupes[:5])}")


def interface_names(plan: LabPlan) -> list[str]:
    """Every OVS port, bridge and kernel interface name the plan uses (for tests and the leak scan)."""
    names = [*plan.bridges, plan.root_veth, plan.root_veth_peer]
    for h in plan.hosts.values():
        names += [h.veth, h.veth_peer]
    for n in plan.nodes.values():
        names += [n.uplink, n.downlink]
    for c in plan.cells.values():
        names += [c.core_patch, c.fabric_patch]
    for p in plan.router.ports:
        names += [p.veth, p.veth_peer]
    return names
