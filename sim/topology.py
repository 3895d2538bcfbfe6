"""The simulated Region's nouns: nodes, pods, Cells and Nginx hosts, and how a spec's Cells are built.

A node is a few objects and no task (its CNI agent runs only while a kubelet calls it),
so 10 Cells of 600 nodes fit. These are plain records: the Kubernetes emulation
(sim/kube.py), the client traffic (sim/traffic.py) and the faults (sim/faults.py) change
them; the real agents never see them, only the sim adapters each one holds.

It must not run anything (no task is spawned here) and must not import real adapters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cni.ipam import Ipam
from cni.pools import Pool
from control.auth import Principal
from node.cni_agent import CniAgent
from sim.adapters.cluster import SimCluster
from sim.adapters.dataplane import Machine, SimDataplane
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime, SimTask
from sim.adapters.store import SimStoreClient
from sim.spec import CellSpec, DataplaneCosts, node_name

ADMIN = Principal("sim-admin", "admin")  # who the world acts as when it sets the Region up or storms it
IpamFactory = Callable[[SimStoreClient, SimRuntime, str, float], Ipam]


def default_ipam(store: SimStoreClient, runtime: SimRuntime, node: str, cooldown: float) -> Ipam:
    return Ipam(store, runtime, node, cooldown=cooldown)


@dataclass(eq=False)
class Node:
    name: str
    cell: str
    dataplane: SimDataplane
    client: SimStoreClient
    agent: CniAgent
    started: bool = False  # the agent loaded its blocks (lazily, on the first ADD)
    starting: SimTask | None = None  # that load, while it runs
    alive: bool = True  # the host runs
    runtime_ok: bool = True  # its container runtime runs
    pods: dict[str, Pod] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)  # pulled from the registry (on disk: survive crashes)

    @property
    def schedulable(self) -> bool:
        return self.alive and self.runtime_ok


@dataclass(eq=False)
class Pod:
    app: str
    cell: str
    name: str
    uid: str
    container_id: str
    node: Node | None = None
    ip: str = ""
    alive: bool = True  # its processes run (False: died with its host or runtime)
    ready: bool = False
    in_api: bool = True  # the Cell API still lists it
    ready_at: float = math.inf
    task: SimTask | None = None  # its kubelet start coroutine while it runs
    image: str = ""  # "" : the app's first image, on every node from the start
    version: str = ""  # a platform app's version (v<N>) whose controller made the pod; "": not a platform app

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.name}"


@dataclass(eq=False)
class Cell:
    spec: CellSpec
    cluster: SimCluster
    nodes: list[Node]
    network: dict[str, Any]  # the CNI network configuration its kubelets pass
    out: bool = False  # cut off (cell-outage)


@dataclass(eq=False)
class NginxHost:
    name: str
    group: str
    proxy: SimProxy
    client: SimStoreClient
    task: SimTask | None = None  # its SLB agent
    lost: bool = False
    last_reloads: int = 0

    def lose(self) -> None:
        """The host dies: its SLB agent stops, clients stop reaching it."""
        self.lost = True
        if self.task is not None:
            self.task.cancel()

    def restore(self) -> None:
        """The host is back: Nginx serves its saved files again (the caller starts a fresh SLB agent)."""
        self.proxy.restart()
        self.lost = False


def build_cell(spec: CellSpec, runtime: SimRuntime, pools: dict[str, Pool], client: Callable[[str], SimStoreClient],
               agent: Callable[[SimStoreClient, SimDataplane, str], CniAgent],
               costs: DataplaneCosts | None = None, machine: Machine | None = None) -> Cell:
    """A Cell of ``spec``: its pools (added to ``pools``), its API server and its nodes, each with its etcd client
    and a dataplane charging ``costs``; every node on ``machine`` (sharing its attaches in flight: the lab's one
    machine) if given, else each node its own machine."""
    costs = costs or DataplaneCosts()
    cluster = SimCluster(spec.name, runtime)
    for p in spec.pools:
        pools[p.name] = Pool.parse(p.name, p.cidr, p.vlan, block_size=p.block_size)
    network = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int",
               "pools": [p.name for p in spec.pools]}
    nodes = []
    for i in range(spec.nodes):
        name = node_name(spec.name, i + 1)
        node_client = client(name)
        dataplane = SimDataplane(name, runtime, attach_seconds=costs.attach_seconds,
                                 detach_seconds=costs.detach_seconds,
                                 attach_per_in_flight=costs.attach_per_in_flight, machine=machine)
        nodes.append(Node(name, spec.name, dataplane, node_client, agent(node_client, dataplane, name)))
        cluster.add_node(name)
    return Cell(spec, cluster, nodes, network)
