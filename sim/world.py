"""A simulated Region built from a ``RegionSpec``: Cells of nodes, apps, Nginx groups, clients, faults, checks.

The real agent code runs here on the sim adapters: every node has a ``CniAgent`` over
its own ``Ipam`` (etcd client with the spec's latency) and a ``SimDataplane``; every
Nginx host runs an ``SlbAgent`` on a ``SimProxy``; ``SlbCore`` owns groups and domains;
one ``Discovery`` follows every Cell's endpoints; an operator cron runs cnictl's
``check_leaks`` + ``release_certain``. The world itself plays Kubernetes (a controller
per app and Cell, a kubelet coroutine per pod start, a node controller) and the
clients. It is light on purpose: a node is a few objects and no task, so 10 Cells of
600 nodes fit.

Models (kept simple; say so in reports):
* **Requests** are counted in batches, one per virtual second and app: the app's
  requests are split round-robin over its group's Nginx hosts that are not lost. A
  host's batch succeeds when the domain is live there and at least one upstream it
  serves is a pod that is alive, ready and reachable (Nginx tries the next upstream
  when one fails: ``proxy_next_upstream``); otherwise the whole batch fails (502).
  Keep-alive clients lose ``reload_failure_fraction`` of a host's requests in a second
  per reload that host did in it (requests racing the close of idle connections by
  the old workers that ``SimProxy`` keeps lingering).
* **Host crash**: the host's dataplane loses everything, its pods die without CNI DEL;
  the node controller removes the node and its pods from the Cell API ``node_grace``
  seconds later (or at once when the host comes back first); leaked addresses remain
  in etcd until cnictl finds and releases them.
* **Cell outage**: the Cell's API server is cut off, its nodes lose etcd, its pods are
  unreachable from Nginx (they keep running and serve again when it ends).

The duplicate-address audit lives in ``sim/audit.py``, the build farm (build hosts,
registry, scheduler) in ``sim/farm.py``.

Determinism: every choice draws from ``runtime.random``; collections are ordered.
It must not import real adapters (import-linter contract).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cni import admin
from cni.admin import AdminError, add_pool
from cni.ipam import Ipam, IpamError
from cni.pools import Pool
from cni.request import CniError, CniRequest
from control.auth import Principal
from control.discovery import Binding, Discovery
from control.slb_core import SlbCore, SlbError
from foundation.ports import Cancelled, StoreError
from foundation.ports.cluster import ClusterUnavailable, Endpoints, PodInfo
from node.cni_agent import CniAgent, NodeConfig
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.cluster import SimCluster
from sim.adapters.dataplane import SimDataplane
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime, SimTask
from sim.adapters.store import MemoryStore, SimStoreClient
from sim.audit import Auditor
from sim.farm import Farm
from sim.spec import (
    AppSpec,
    CellSpec,
    FaultSpec,
    RegionSpec,
    Selector,
    matches,
    nginx_host_name,
    node_name,
    target_universe,
)

ADMIN = Principal("sim-admin", "admin")
IpamFactory = Callable[[SimStoreClient, SimRuntime, str, float], Ipam]


def default_ipam(store: SimStoreClient, runtime: SimRuntime, node: str, cooldown: float) -> Ipam:
    return Ipam(store, runtime, node, cooldown=cooldown)


def _share(count: int, hosts: int, i: int, turn: int) -> int:
    """Host ``i``'s part of ``count`` requests spread over ``hosts``; the remainder rotates with ``turn``."""
    return count // hosts + (1 if (i - turn) % hosts < count % hosts else 0)


# --------------------------------------------------------------------------- the world's nouns


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

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.name}"


@dataclass(eq=False)
class Cell:
    spec: CellSpec
    cluster: SimCluster
    nodes: list[Node]
    network: dict[str, Any]
    out: bool = False  # cut off (cell-outage)


@dataclass(eq=False)
class NginxHost:
    name: str
    group: str
    proxy: SimProxy
    client: SimStoreClient
    task: SimTask | None = None
    lost: bool = False
    last_reloads: int = 0


class _RegionPods:
    """The Cluster port as cnictl sees a Region: the pods of every Cell (one etcd serves them all).

    A Cell whose API server is out of reach makes the listing fail: judging its
    allocations without its pods would accuse every one of them.
    """

    def __init__(self, cells: list[Cell]) -> None:
        self._cells = cells
        self.endpoint = "sim:region/apiservers"

    async def list_pods(self) -> list[PodInfo]:
        pods: list[PodInfo] = []
        for cell in self._cells:
            pods.extend(await cell.cluster.list_pods())
        return pods

    async def list_nodes(self) -> list[str]:
        nodes: list[str] = []
        for cell in self._cells:
            nodes.extend(await cell.cluster.list_nodes())
        return nodes


@dataclass
class Metrics:
    ok: int = 0
    failed: int = 0
    reload_failed: int = 0
    allocations: list[float] = field(default_factory=list)  # ADD latencies, virtual seconds
    add_errors: int = 0
    leaks_found: int = 0  # certain leaks seen by cnictl check
    leaks_released: int = 0
    leak_checks: int = 0
    leak_checks_skipped: int = 0
    pods_started: int = 0
    pods_died: int = 0
    pods_deleted: int = 0
    series: list[dict[str, Any]] = field(default_factory=list)
    max_leaked: int = 0
    serving_violations: int = 0  # host-seconds (see the domains-keep-serving check)
    serving_examples: list[str] = field(default_factory=list)  # the first few, for the report

    def violation(self, text: str) -> None:
        self.serving_violations += 1
        if len(self.serving_examples) < 10:  # a long outage must not grow a list of millions
            self.serving_examples.append(text)


# --------------------------------------------------------------------------- the Region


class Region:
    def __init__(self, spec: RegionSpec, runtime: SimRuntime, *, ipam_factory: IpamFactory = default_ipam,
                 tick: float = 1.0, metrics_every: float = 10.0, node_grace: float = 40.0,
                 kubelet_retry: float = 2.0, reload_failure_fraction: float = 0.02,
                 propagation_grace: float = 2.0, publish_grace: float = 60.0) -> None:
        self.spec = spec
        self.runtime = runtime
        self.ipam_factory = ipam_factory
        self.tick = tick
        self.metrics_every = metrics_every
        self.node_grace = node_grace
        self.kubelet_retry = kubelet_retry
        self.reload_failure_fraction = reload_failure_fraction
        self.propagation_grace = propagation_grace
        self.publish_grace = publish_grace  # a new domain's first propagation (boot: thousands at once)
        self.store = MemoryStore(runtime)
        self.clients: dict[str, SimStoreClient] = {}
        self.metrics = Metrics()
        self.auditor = Auditor()
        self.pools: dict[str, Pool] = {}
        self.cells: dict[str, Cell] = {}
        self.nodes: dict[str, Node] = {}
        for cell_spec in spec.cells:
            self._build_cell(cell_spec)
        self.apps: dict[str, AppSpec] = {app.name: app for app in spec.apps}
        self.domains = {app.name: app.domain or f"{app.name}.example.com" for app in spec.apps}
        self.pods: dict[tuple[str, str], list[Pod]] = {(a.name, c): [] for a in spec.apps for c in a.cells}
        self.replicas: dict[tuple[str, str], int] = {(a.name, c): a.replicas for a in spec.apps for c in a.cells}
        self._dirty: set[tuple[str, str]] = set(self.pods)  # (app, Cell) the controller must reconcile
        self._rolling: set[tuple[str, str]] = set()  # (app, Cell) a deploy or scale-down is working on
        self._dead: dict[tuple[str, str], float] = {}  # (app, pod) -> when it died: the only leak suspects
        self.pod_by_ip: dict[str, Pod] = {}
        self._pod_counter = 0
        self.hosts: dict[str, NginxHost] = {}
        for group in spec.groups:
            for i in range(group.hosts):
                name = nginx_host_name(group.name, i + 1)
                self.hosts[name] = NginxHost(name, group.name, SimProxy(runtime, name), self._client(name))
        self.slb = SlbCore(self._client("slb-core"), runtime)
        self.cnictl = self._client("cnictl")
        self.farm = Farm(runtime, self.store, spec.build_hosts, self._client, tick=tick)  # sim/farm.py
        self._images: dict[str, str] = {}  # app -> the image its new pods run
        bindings = [Binding(a.name, a.name, a.port, a.group, self.domains[a.name]) for a in spec.apps]
        self.discovery = Discovery({n: c.cluster for n, c in self.cells.items()},
                                   SlbCore(self._client("discovery"), runtime), runtime, bindings)
        self.fault_windows: list[tuple[float, float, str]] = []
        self._epoch = 0  # bumps whenever a pod's reachability changes: request results are cached per epoch
        self._cuts: dict[str, int] = {}  # etcd client -> faults cutting it off now
        self._slowdowns: dict[str, list[float]] = {}  # etcd client -> slowdown factors in force
        self._serve_cache: dict[tuple[str, str], tuple[tuple, int, bool]] = {}
        self._probes: dict[float, tuple[float, Any]] = {}
        self._storm_counter = 0
        self._squatters = 0
        self.finished = False
        # Client accounting (see _touch): apps looked at every tick, apps settled, per-group sums.
        self._published: set[str] = set()
        self._watch: set[str] = set(self.apps)
        self._settled: set[str] = set()
        self._settled_rate: dict[str, float] = {}
        self._settled_dirty: set[str] = set()
        self._owed_loss = {name: 0.0 for name in self.hosts}
        self._apps_of_domain: dict[str, list[str]] = {}
        for app, domain in self.domains.items():
            self._apps_of_domain.setdefault(domain, []).append(app)
        self._apps_in_group: dict[str, list[str]] = {}
        self._apps_in_cell: dict[str, list[str]] = {}
        for app in spec.apps:
            self._apps_in_group.setdefault(app.group, []).append(app.name)
            for cell in app.cells:
                self._apps_in_cell.setdefault(cell, []).append(app.name)
        for host in self.hosts.values():
            host.proxy.on_change = self._touch_domain

    # ------------------------------------------------------------------ construction
    def _client(self, name: str) -> SimStoreClient:
        client = self.store.client(name, latency=self.spec.etcd_latency, timeout=5.0)
        self.clients[name] = client
        return client

    def _build_cell(self, spec: CellSpec) -> None:
        cluster = SimCluster(spec.name, self.runtime)
        for p in spec.pools:
            self.pools[p.name] = Pool.parse(p.name, p.cidr, p.vlan, block_size=p.block_size)
        network = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int",
                   "pools": [p.name for p in spec.pools]}
        nodes = []
        for i in range(spec.nodes):
            name = node_name(spec.name, i + 1)
            client = self._client(name)
            dataplane = SimDataplane(name)
            node = Node(name, spec.name, dataplane, client, self._agent(client, dataplane, name))
            nodes.append(node)
            self.nodes[name] = node
            cluster.add_node(name)
        self.cells[spec.name] = Cell(spec, cluster, nodes, network)

    def _agent(self, client: SimStoreClient, dataplane: SimDataplane, node: str) -> CniAgent:
        ipam = self.ipam_factory(client, self.runtime, node, self.spec.cooldown)
        return CniAgent(ipam, dataplane, self.runtime, NodeConfig(node))

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Run the Region until ``spec.duration`` virtual seconds."""
        self.runtime.spawn(self._boot(), name="region/boot")
        self.runtime.run(until=self.spec.duration)
        self.finished = True
        # The verdicts and counters end the trace: two runs with one trace_sha256 also agree on
        # what they measured, not only on what they did.
        for name, passed, detail in self.checks():
            self.runtime.trace("check", name=name, passed=passed, detail=detail)
        m = self.metrics
        self.runtime.trace("totals", ok=m.ok, failed=m.failed, leaks_found=m.leaks_found,
                           leaks_released=m.leaks_released, allocations=len(m.allocations))

    async def _boot(self) -> None:
        rt = self.runtime
        rt.spawn(self._audit(), name="region/auditor")
        for pool in self.pools.values():
            await add_pool(self.cnictl, pool)
        for group in self.spec.groups:
            await self.slb.create_group(ADMIN, group.name)
        for app in self.spec.apps:
            await self.slb.put_domain(ADMIN, {"name": self.domains[app.name], "group": app.group, "owner": app.name})
        for host in self.hosts.values():
            self._start_slb_agent(host)
        rt.spawn(self.discovery.run(), name="discovery")
        rt.spawn(self._controller(), name="region/controller")
        rt.spawn(self._clients(), name="region/clients")
        rt.spawn(self._leak_cron(), name="region/cnictl-cron")
        self.farm.start()
        rt.spawn(self._metrics(), name="region/metrics")
        if self.spec.churn.deploys_per_hour > 0:
            rt.spawn(self._churn(self.spec.churn.deploys_per_hour, self._deploy), name="region/churn-deploys")
        if self.spec.churn.scale_events_per_hour > 0:
            rt.spawn(self._churn(self.spec.churn.scale_events_per_hour, self._scale), name="region/churn-scale")
        for i, fault in enumerate(self.spec.faults):
            rt.spawn(self._fault(fault), name=f"region/fault-{i}-{fault.kind}")
        for deadline in self._liveness_deadlines():
            rt.spawn(self._probe_at(deadline), name="region/liveness-probe")

    def _start_slb_agent(self, host: NginxHost) -> None:
        agent = SlbAgent(host.client, host.proxy, self.runtime, SlbAgentConfig(host.group, host.name))
        host.task = self.runtime.spawn(agent.run(), name=f"slb-agent/{host.name}")

    async def _audit(self) -> None:
        """The auditor is an observer, not part of the system: no fault selects its client, and a
        watch broken by an etcd outage resumes just after the last revision it saw."""
        client = self.store.client("auditor", latency=0.0)
        after = 0
        while True:
            try:
                async with client.watch("/ipam/", start_revision=after + 1) as watch:
                    async for event in watch:
                        self.auditor.on_event(event)
                        after = event.revision
            except StoreError:
                pass
            await self.runtime.sleep(self.tick)

    # ------------------------------------------------------------------ Kubernetes, played by the world
    async def _controller(self) -> None:
        """Replication controllers of every app in every reachable Cell (one loop, every tick).

        Only (app, Cell) pairs marked dirty (a pod left the API, the replica count changed)
        are reconciled: a tick costs what changed, not the size of the Region. A Cell that is
        cut off stays dirty until it is back.
        """
        while True:
            if self._dirty:
                keep = set()
                for key in sorted(self._dirty):
                    app_name, cell_name = key
                    cell = self.cells[cell_name]
                    if cell.out:
                        keep.add(key)
                        continue
                    pods = self.pods[key]
                    pods[:] = [p for p in pods if p.in_api]
                    for _ in range(self.replicas[key] - len(pods)):
                        pods.append(self._new_pod(self.apps[app_name], cell))
                self._dirty = keep
            await self.runtime.sleep(self.tick)

    def _new_pod(self, app: AppSpec, cell: Cell) -> Pod:
        self._pod_counter += 1
        n = self._pod_counter
        pod = Pod(app.name, cell.spec.name, f"{app.name}-{cell.spec.name}-{n}", f"uid-{n}", f"sandbox-{n:07d}",
                  image=self._images.get(app.name, ""))
        pod.task = self.runtime.spawn(self._kubelet_start(pod, app, cell), name=f"kubelet/{pod.name}")
        return pod

    def _pick_node(self, cell: Cell) -> Node | None:
        """Spread: the emptier of two schedulable nodes drawn at random (power of two choices)."""
        a, b = self._draw_node(cell), self._draw_node(cell)
        if a is None or b is None:
            return None
        return b if len(b.pods) < len(a.pods) else a

    def _draw_node(self, cell: Cell) -> Node | None:
        # Most nodes are schedulable: a few blind draws find one without listing the Cell's 600.
        rnd = self.runtime.random
        for _ in range(8):
            node = cell.nodes[rnd.randrange(len(cell.nodes))]
            if node.schedulable:
                return node
        live = [n for n in cell.nodes if n.schedulable]
        return rnd.choice(live) if live else None

    def _cni(self, command: str, pod: Pod, cell: Cell) -> CniRequest:
        return CniRequest(command, "1.0.0", cell.network, pod.container_id, pod.netns if command == "ADD" else "",
                          "eth0", args={"K8S_POD_NAMESPACE": pod.app, "K8S_POD_NAME": pod.name,
                                        "K8S_POD_UID": pod.uid})

    async def _kubelet_start(self, pod: Pod, app: AppSpec, cell: Cell) -> None:
        rt = self.runtime
        try:
            while pod.node is None:
                node = self._pick_node(cell)
                if node is None:
                    await rt.sleep(self.kubelet_retry)
                    continue
                pod.node = node
                node.pods[pod.name] = pod
            node = pod.node
            cell.cluster.put_pod(PodInfo(app.name, pod.name, pod.uid, node.name, ""))
            node.dataplane.add_netns(pod.netns)
            while True:
                if not node.started:
                    # One start per agent process, however many pods wait for it.
                    if node.starting is None or node.starting.done():
                        node.starting = rt.spawn(self._start_agent(node, node.agent), name=f"cni-agent/{node.name}")
                    await node.starting.join()
                    if not node.started:
                        await rt.sleep(self.kubelet_retry)
                    continue
                began = rt.now()
                try:
                    result = await node.agent.add(self._cni("ADD", pod, cell))
                except CniError as exc:
                    self.metrics.add_errors += 1
                    rt.trace("kubelet-add-failed", pod=pod.name, code=exc.code)
                    await rt.sleep(self.kubelet_retry)
                    continue
                self.metrics.allocations.append(rt.now() - began)
                break
            pod.ip = result["ips"][0]["address"].split("/")[0]
            previous = self.pod_by_ip.get(pod.ip)
            if previous is not None:
                self._reachability_changed(previous.app)  # an address of its upstreams changed hands
            self.pod_by_ip[pod.ip] = pod
            cell.cluster.put_pod(PodInfo(app.name, pod.name, pod.uid, node.name, pod.ip))
            self._sync_endpoints(app.name, cell)
            if pod.image and pod.image not in node.images:  # the sandbox is up: pull, then start
                await rt.sleep(self.farm.registry.pull_seconds(pod.image))
                node.images.add(pod.image)
            await rt.sleep(app.start_seconds + app.readiness_seconds)
            pod.ready, pod.ready_at = True, rt.now()
            self._reachability_changed(app.name)
            cell.cluster.put_pod(PodInfo(app.name, pod.name, pod.uid, node.name, pod.ip, ready=True))
            self._sync_endpoints(app.name, cell)
            self.metrics.pods_started += 1
            rt.trace("pod-ready", pod=pod.name, node=node.name, ip=pod.ip)
        except Cancelled:
            return  # its host or runtime died under it
        finally:
            pod.task = None

    async def _start_agent(self, node: Node, agent: CniAgent) -> None:
        """Load the agent's pools and blocks; a failure (etcd away) leaves it to the next kubelet to retry."""
        try:
            await agent.start()
        except StoreError:
            return
        if node.agent is agent:  # not replaced meanwhile by a host return
            node.started = True

    def _reachability_changed(self, *apps: str) -> None:
        """Whether some pods can serve changed: cached request results are stale, these apps get looked at."""
        self._epoch += 1
        for app in apps:
            self._touch(app)

    def _sync_endpoints(self, app: str, cell: Cell) -> None:
        pods = [p for p in self.pods.get((app, cell.spec.name), ()) if p.in_api and p.ip]
        cell.cluster.set_endpoints(Endpoints(app, app, tuple(p.ip for p in pods if p.ready),
                                             tuple(p.ip for p in pods if not p.ready)))

    def _kill_pod(self, pod: Pod) -> None:
        """The pod's processes die with its host or runtime: no CNI DEL."""
        if pod.task is not None:
            pod.task.cancel()
        if pod.alive:
            pod.alive = False
            self._dead[(pod.app, pod.name)] = self.runtime.now()
            self.auditor.killed.add((pod.app, pod.name))
            self.metrics.pods_died += 1
            self._reachability_changed(pod.app)

    def _remove_from_api(self, pod: Pod) -> None:
        if not pod.in_api:
            return
        pod.in_api = False
        cell = self.cells[pod.cell]
        cell.cluster.remove_pod(pod.app, pod.name)
        if pod.node is not None:
            pod.node.pods.pop(pod.name, None)
        if self.pod_by_ip.get(pod.ip) is pod:
            del self.pod_by_ip[pod.ip]
        self._dirty.add((pod.app, pod.cell))
        self._sync_endpoints(pod.app, cell)

    async def delete_pod(self, pod: Pod) -> None:
        """A graceful deletion: drain from every Nginx host, then CNI DEL, then remove.

        A pod still starting has its kubelet start stopped first (its DEL then releases
        whatever the interrupted ADD took: DEL is idempotent)."""
        cell = self.cells[pod.cell]
        if pod.task is not None:
            task = pod.task
            task.cancel()
            with contextlib.suppress(Cancelled):
                await task.join()
        if pod.ip:
            await self.discovery.drain(pod.app, pod.ip)
        if pod.node is not None and pod.node.schedulable:
            try:
                await pod.node.agent.delete(self._cni("DEL", pod, cell))
            except CniError as exc:
                self.runtime.trace("kubelet-del-failed", pod=pod.name, code=exc.code)
            pod.node.dataplane.remove_netns(pod.netns)
        if pod.alive:
            self._dead[(pod.app, pod.name)] = self.runtime.now()
        pod.alive = False
        self._reachability_changed(pod.app)
        self._remove_from_api(pod)
        if pod.ip:
            self.discovery.forget(pod.app, pod.ip)
        self.metrics.pods_deleted += 1

    # ------------------------------------------------------------------ churn: deploys and scaling
    async def _churn(self, per_hour: float, action: Callable[[tuple[str, str]], Any]) -> None:
        """Events at exponential gaps (a Poisson process of ``per_hour``), each on a seeded (app, Cell)."""
        rt = self.runtime
        keys = [k for k in sorted(self.pods) if self.apps[k[0]].replicas > 0]
        if not keys:
            return
        while True:
            await rt.sleep(rt.random.expovariate(per_hour / 3600.0))
            key = rt.random.choice(keys)
            if key in self._rolling or self.cells[key[1]].out:
                rt.trace("churn-skipped", app=key[0], cell=key[1])
                continue
            self._rolling.add(key)
            rt.spawn(self._churn_one(action, key), name=f"churn/{key[0]}/{key[1]}")

    async def _churn_one(self, action: Callable[[tuple[str, str]], Any], key: tuple[str, str]) -> None:
        try:
            await action(key)
        finally:
            self._rolling.discard(key)

    async def _deploy(self, key: tuple[str, str], *, timeout: float = 120.0) -> None:
        """A rolling replacement: one new pod at a time (surge 1); when it is ready, drain and delete an old one."""
        rt = self.runtime
        app, cell = self.apps[key[0]], self.cells[key[1]]
        if self.farm.enabled:
            image = await self.farm.release(app.name)
            if image is None:
                return  # nothing to roll out: the build failed or never ran
            self._images[app.name] = image  # the controller's template: replacements run it too
        old = [p for p in self.pods[key] if p.in_api]
        rt.trace("deploy", app=app.name, cell=cell.spec.name, pods=len(old))
        for victim in old:
            if not victim.in_api:
                continue  # died and was evicted meanwhile: the controller replaced it already
            new = self._new_pod(app, cell)
            self.pods[key].append(new)
            deadline = rt.now() + timeout
            while not new.ready and new.in_api and rt.now() < deadline:
                await rt.sleep(self.tick)
            if not new.ready:
                rt.trace("deploy-stalled", app=app.name, cell=cell.spec.name)
                return  # the new version does not come up: stop rolling (the controller keeps the count)
            await self.delete_pod(victim)

    async def _scale(self, key: tuple[str, str]) -> None:
        """One replica more or fewer (between half and twice the spec's count, at least one);
        a scale-down drains the removed pod before deleting it."""
        rt = self.runtime
        base = self.apps[key[0]].replicas
        now = self.replicas[key]
        low, high = max(1, base // 2), max(1, base * 2)
        up = rt.random.random() < 0.5
        if (up and now >= high) or (not up and now <= low):
            up = not up
        self.replicas[key] = now + (1 if up else -1)
        rt.trace("scale", app=key[0], cell=key[1], replicas=self.replicas[key])
        if up:
            self._dirty.add(key)
            return
        pods = [p for p in self.pods[key] if p.in_api]
        if len(pods) <= self.replicas[key]:
            return
        ready = [p for p in pods if p.ready] or pods
        await self.delete_pod(rt.random.choice(ready))

    # ------------------------------------------------------------------ clients
    def _good(self, pod: Pod | None) -> bool:
        return (pod is not None and pod.alive and pod.ready and not self.cells[pod.cell].out
                and pod.node is not None and pod.node.alive)

    def _serves(self, host: NginxHost, domain: str) -> bool:
        upstreams = host.proxy.serving(domain)
        cached = self._serve_cache.get((host.name, domain))
        if cached is not None and cached[0] is upstreams and cached[1] == self._epoch:
            return cached[2]
        # A good pod of one of the domain's apps: an address handed on to another app's pod
        # (the domain not yet updated) does not serve this domain.
        apps = self._apps_of_domain.get(domain, ())
        result = any(self._good(pod) and pod.app in apps
                     for pod in (self.pod_by_ip.get(u.host) for u in upstreams))
        self._serve_cache[(host.name, domain)] = (upstreams, self._epoch, result)
        return result

    async def _sleep_to_next(self, interval: float) -> None:
        """Sleep to the next multiple of ``interval``: samples fall on round virtual times."""
        now = self.runtime.now()
        await self.runtime.sleep((math.floor(now / interval + 1e-9) + 1) * interval - now)

    def _live_hosts(self, group: str) -> list[NginxHost]:
        return [h for h in self.hosts.values() if h.group == group and not h.lost]

    # Request accounting is event-driven: an app that serves on every live host of its group is
    # "settled" and its requests count as one sum per group and tick; only apps touched by a
    # change (a pod's state, an address changing hands, a host's config, a lost Nginx host)
    # are looked at one by one, every tick, until they serve everywhere again. A quiet Region
    # of 2,000 apps then costs a few operations per virtual second, not 2,000 evaluations.
    def _touch(self, app: str) -> None:
        if app in self._settled:
            self._settled.discard(app)
            self._settled_dirty.add(self.apps[app].group)
        self._watch.add(app)

    def _touch_domain(self, domain: str) -> None:
        for app in self._apps_of_domain.get(domain, ()):
            self._touch(app)

    def _touch_group(self, group: str) -> None:
        for app in self._apps_in_group.get(group, ()):
            self._touch(app)

    def _settled_rates(self) -> dict[str, float]:
        """Requests per second of the settled apps of each group (recomputed only where that set changed)."""
        for group in self._settled_dirty:
            self._settled_rate[group] = math.fsum(self.apps[a].requests_per_second
                                                  for a in self._apps_in_group.get(group, ()) if a in self._settled)
        self._settled_dirty.clear()
        return self._settled_rate

    def _served(self, host: NginxHost, reloads: int, share: int) -> None:
        """``share`` requests reached ``host``, which serves them; keep-alive clients lose some per reload."""
        # Fractions carry over: a small share times a small fraction must not round to zero forever.
        self._owed_loss[host.name] += share * self.reload_failure_fraction * reloads
        lost = min(share, int(self._owed_loss[host.name]))
        self._owed_loss[host.name] -= lost
        self.metrics.reload_failed += lost
        self.metrics.failed += lost
        self.metrics.ok += share - lost

    async def _clients(self) -> None:
        owed = {name: 0.0 for name in self.apps}
        owed_group = {group.name: 0.0 for group in self.spec.groups}
        turn = 0
        while True:
            await self._sleep_to_next(self.tick)
            now = self.runtime.now()
            reloads = {}
            for host in self.hosts.values():
                reloads[host.name] = host.proxy.reload_count - host.last_reloads
                host.last_reloads = host.proxy.reload_count
            turn += 1

            for group, rate in sorted(self._settled_rates().items()):
                if rate <= 0.0:
                    continue
                hosts = self._live_hosts(group)  # not empty: losing a host unsettles its group's apps
                owed_group[group] += rate * self.tick
                count = int(owed_group[group])
                owed_group[group] -= count
                for i, host in enumerate(hosts):
                    self._served(host, reloads[host.name], _share(count, len(hosts), i, turn))

            for name in sorted(self._watch):
                app = self.apps[name]
                hosts = self._live_hosts(app.group)
                domain = self.domains[name]
                if name not in self._published:
                    # As on LeEngine, clients find an app only once its domain is published in DNS,
                    # which operators do after it first serves: start-up is not an outage ...
                    if not any(self._serves(host, domain) for host in hosts):
                        if hosts and self._ready_elsewhere(name, now, self.publish_grace):
                            # ... but an app with a pod ready for a while that no Nginx host serves is one
                            # (publish_grace: a Region booting thousands of domains takes time to push them all).
                            self.metrics.violation(f"t={now:g}: no host serves {domain} while a ready pod exists")
                        continue
                    self._published.add(name)
                owed[name] += app.requests_per_second * self.tick
                count = int(owed[name])
                owed[name] -= count
                if not hosts:
                    self.metrics.failed += count
                    continue
                everywhere = True
                for i, host in enumerate(hosts):
                    share = _share(count, len(hosts), i, turn)
                    if not self._serves(host, domain):
                        everywhere = False
                        self.metrics.failed += share
                        if self._ready_elsewhere(name, now):
                            self.metrics.violation(f"t={now:g}: {host.name} has no live upstream for {domain} "
                                                   "while a ready pod exists")
                        continue
                    self._served(host, reloads[host.name], share)
                if everywhere:
                    self._watch.discard(name)
                    self._settled.add(name)
                    self._settled_dirty.add(app.group)

    def _ready_elsewhere(self, app: str, now: float, grace: float | None = None) -> bool:
        """Some pod of the app is serving-capable, and has been long enough to have propagated."""
        grace = self.propagation_grace if grace is None else grace
        return any(self._good(p) and now - p.ready_at >= grace
                   for cell in self.apps[app].cells for p in self.pods.get((app, cell), ()))

    # ------------------------------------------------------------------ operator cron: cnictl check + release
    async def _leak_cron(self) -> None:
        self._leaks_seen: set[tuple[str, str]] = set()
        self._released_by_cnictl: set[str] = set()
        view = _RegionPods(list(self.cells.values()))
        while True:
            await self.runtime.sleep(self.spec.leak_check_every)
            try:
                report = await admin.check_leaks(self.cnictl, view, self.runtime, grace=self.spec.leak_grace)
                released, _ = await admin.release_certain(self.cnictl, self.runtime)
            except (ClusterUnavailable, AdminError, StoreError) as exc:
                self.metrics.leak_checks_skipped += 1
                self.runtime.trace("leak-check-skipped", error=type(exc).__name__)
                continue
            self.metrics.leak_checks += 1
            self._leaks_seen.update((leak.address, leak.handle) for leak in report.certain)
            self.metrics.leaks_found = len(self._leaks_seen)  # distinct: a leak seen by two checks is one
            self.metrics.leaks_released += len(released)
            self._released_by_cnictl.update(r.handle for r in released)
            self.runtime.trace("leak-check", suspects=len(report.leaks), certain=len(report.certain),
                               released=len(released))

    # ------------------------------------------------------------------ metrics
    def leaked(self) -> int:
        """Addresses allocated to a pod (per the Store) whose pod is not alive."""
        held = self.auditor.pod_handles
        leaked = sum(held.get(pod, 0) for pod in self._dead)
        # A dead pod without a handle for long (no ADD still in flight) is no suspect any more.
        old = self.runtime.now() - 120.0
        for pod in [p for p, died in self._dead.items() if died < old and p not in held]:
            del self._dead[pod]
        return leaked

    def pool_use(self) -> dict[str, float]:
        return {name: round(100.0 * self.auditor.allocated.get(name, 0) / pool.capacity(), 2)
                for name, pool in sorted(self.pools.items())}

    async def _metrics(self) -> None:
        last = {"ok": 0, "failed": 0, "allocs": 0, "reloads": 0}
        while True:
            await self._sleep_to_next(self.metrics_every)
            m = self.metrics
            reloads = sum(h.proxy.reload_count for h in self.hosts.values())
            allocs = m.allocations[last["allocs"]:]
            leaked = self.leaked()
            m.max_leaked = max(m.max_leaked, leaked)
            m.series.append({"t": self.runtime.now(), "ok": m.ok - last["ok"], "failed": m.failed - last["failed"],
                             "leaked": leaked, "pool_use": self.pool_use(), "allocations": len(allocs),
                             "alloc_max": round(max(allocs), 6) if allocs else 0.0,
                             "reloads": reloads - last["reloads"]})
            last = {"ok": m.ok, "failed": m.failed, "allocs": len(m.allocations), "reloads": reloads}

    # ------------------------------------------------------------------ faults
    def _select(self, fault: FaultSpec) -> list[str]:
        """The names ``fault.target`` picks among its kind's targets (see ``sim.spec.target_universe``)."""
        selector = fault.target
        universe = target_universe(fault.kind, self.spec.cells, self.spec.groups, self.spec.apps, fault.group,
                                   self.spec.build_hosts)
        names = [name for name, labels in universe if matches(selector, name, labels)]
        k = len(names)
        if selector.count is not None:
            k = min(k, selector.count)
        if selector.percent is not None:
            k = min(k, math.ceil(len(names) * selector.percent / 100.0))
        if k < len(names):
            chosen = set(self.runtime.random.sample(names, k))
            names = [n for n in names if n in chosen]
        return names

    def _node_targets(self, fault: FaultSpec) -> list[Node]:
        return [self.nodes[n] for n in self._select(fault)]

    async def _fault(self, fault: FaultSpec) -> None:
        rt = self.runtime
        at = fault.at
        while at < self.spec.duration:
            await rt.sleep(max(0.0, at - rt.now()))
            end = at + (fault.duration or 0.0)
            self.fault_windows.append((at, end, fault.kind))
            undo = await self._apply_fault(fault)
            rt.trace("fault", kind=fault.kind, at=at, duration=fault.duration)
            if fault.duration is not None and undo is not None:
                rt.spawn(self._undo_later(fault, undo, end), name=f"region/undo-{fault.kind}")
            if fault.every is None:
                return
            at += fault.every

    async def _undo_later(self, fault: FaultSpec, undo: Callable[[], Any], end: float) -> None:
        # Until the declared end in absolute time: applying a fault may itself take time
        # (a squatter filling a pool), and the liveness deadlines count from the declared end.
        await self.runtime.sleep(max(0.0, end - self.runtime.now()))
        outcome = undo()
        if hasattr(outcome, "__await__"):
            await outcome
        self.runtime.trace("fault-ended", kind=fault.kind)

    async def _apply_fault(self, fault: FaultSpec) -> Callable[[], Any] | None:
        kind = fault.kind
        if kind == "host-crash":
            nodes = [n for n in self._node_targets(fault) if n.alive]
            for node in nodes:
                self._crash_host(node)
            return lambda: [self._return_host(n) for n in nodes]
        if kind == "runtime-death":
            nodes = [n for n in self._node_targets(fault) if n.alive and n.runtime_ok]
            for node in nodes:
                self._runtime_death(node)
            return lambda: [setattr(n, "runtime_ok", True) for n in nodes]
        if kind == "cell-outage":
            cells = self._select(fault)
            for name in cells:
                self._cut_cell(self.cells[name], True)
            return lambda: [self._cut_cell(self.cells[c], False) for c in cells]
        if kind == "etcd-slow":
            clients = self._fault_clients(fault)
            for client in clients:
                self._slow_client(client, fault.factor, True)
            return lambda: [self._slow_client(c, fault.factor, False) for c in clients]
        if kind == "etcd-unavailable":
            if fault.target == Selector():
                self.store.set_available(False)
                return lambda: self.store.set_available(True)
            clients = self._fault_clients(fault)
            for client in clients:
                self._cut_client(client, True)
            return lambda: [self._cut_client(c, False) for c in clients]
        if kind == "reload-storm":
            self.runtime.spawn(self._reload_storm(fault), name="region/reload-storm")
            return None
        if kind == "nginx-host-loss":
            hosts = [h for h in self._group_hosts(fault) if not h.lost]
            for host in hosts:
                self._lose_host(host)
            return lambda: [self._return_nginx(h) for h in hosts]
        if kind == "pool-exhaustion":
            return await self._exhaust_pool(fault)
        if kind == "builder-crash":
            crashed = self.farm.crash(self._select(fault))
            return lambda: self.farm.come_back(crashed)
        raise ValueError(f"unknown fault kind {kind!r}")

    def _cut_client(self, client: SimStoreClient, cut: bool) -> None:
        """Overlapping faults stack: a client reconnects only when the last fault cutting it ends."""
        count = self._cuts.get(client.name, 0) + (1 if cut else -1)
        self._cuts[client.name] = max(count, 0)
        client.partition(count > 0)

    def _slow_client(self, client: SimStoreClient, factor: float, on: bool) -> None:
        """Overlapping slowdowns stack as the worst one in force, and end one by one."""
        factors = self._slowdowns.setdefault(client.name, [])
        if on:
            factors.append(factor)
        elif factor in factors:
            factors.remove(factor)
        client.slowness = max(factors, default=1.0)

    def _fault_clients(self, fault: FaultSpec) -> list[SimStoreClient]:
        """The etcd clients a fault selects: nodes' CNI agents, Nginx hosts' SLB agents, the control plane's.
        Without a target: every client (a squatter's too)."""
        if fault.target == Selector():
            return list(self.clients.values())
        return [self.clients[name] for name in self._select(fault)]

    def _group_hosts(self, fault: FaultSpec) -> list[NginxHost]:
        return [self.hosts[name] for name in self._select(fault)]

    def _crash_host(self, node: Node) -> None:
        node.alive = False
        node.dataplane.crash()
        for pod in list(node.pods.values()):
            self._kill_pod(pod)
        self.runtime.spawn(self._node_controller(node), name=f"node-controller/{node.name}")

    async def _node_controller(self, node: Node) -> None:
        await self.runtime.sleep(self.node_grace)
        if not node.alive:
            self.cells[node.cell].cluster.remove_node(node.name)
            self._evict(node)

    def _evict(self, node: Node) -> None:
        for pod in list(node.pods.values()):
            if not pod.alive:
                self._remove_from_api(pod)

    def _return_host(self, node: Node) -> None:
        if node.alive:
            return
        self._evict(node)  # the kubelet reports its old pods failed: their sandboxes are gone
        node.alive, node.runtime_ok, node.started = True, True, False
        node.agent = self._agent(node.client, node.dataplane, node.name)  # a fresh agent process
        self.cells[node.cell].cluster.add_node(node.name)

    def _runtime_death(self, node: Node) -> None:
        node.runtime_ok = False
        node.dataplane.crash()
        for pod in list(node.pods.values()):
            self._kill_pod(pod)
        self._evict(node)  # the kubelet sees its pods gone at once (PLEG) and reports them failed

    def _cut_cell(self, cell: Cell, out: bool) -> None:
        cell.out = out
        self._reachability_changed(*self._apps_in_cell.get(cell.spec.name, ()))
        if out:
            cell.cluster.cut_off()
        else:
            cell.cluster.available = True
        for node in cell.nodes:
            self._cut_client(node.client, out)

    def _lose_host(self, host: NginxHost) -> None:
        host.lost = True
        self._touch_group(host.group)
        if host.task is not None:
            host.task.cancel()

    def _return_nginx(self, host: NginxHost) -> None:
        host.proxy.restart()
        host.lost = False
        self._touch_group(host.group)
        self._start_slb_agent(host)

    async def _reload_storm(self, fault: FaultSpec) -> None:
        """``changes`` header changes to the selected apps' domains, spread evenly over the fault's duration."""
        chosen = set(self._select(fault))
        apps = [a for a in self.spec.apps if a.name in chosen]
        if not apps or fault.changes <= 0:
            return
        gap = (fault.duration or 60.0) / fault.changes
        for i in range(fault.changes):
            app = apps[i % len(apps)]
            self._storm_counter += 1
            try:
                stored = await self.slb.get_domain(ADMIN, app.group, self.domains[app.name])
                data = stored.domain.to_json()
                data["locations"][0]["set_headers"] = {"X-Sim-Storm": str(self._storm_counter)}
                await self.slb.put_domain(ADMIN, data, expected_revision=stored.revision)
            except (SlbError, StoreError) as exc:  # a lost race with discovery: that change is skipped
                self.runtime.trace("storm-change-skipped", error=type(exc).__name__)
            await self.runtime.sleep(gap)

    async def _exhaust_pool(self, fault: FaultSpec) -> Callable[[], Any]:
        """A squatter takes every free address of the pool but ``free`` (handles without a pod)."""
        pool = self.pools[fault.pool]
        self._squatters += 1
        squatter = Ipam(self._client(f"squatter-{self._squatters}"), self.runtime, f"squatter-{self._squatters}",
                        cooldown=self.spec.cooldown)
        taken: list[str] = []

        async def take(container: str) -> None:
            try:
                await squatter.allocate(container, "eth0", pools=[pool.name])
                taken.append(container)
            except (IpamError, StoreError):
                pass

        want = pool.capacity() - self.auditor.allocated.get(pool.name, 0) - fault.free
        n = 0
        while want > 0:
            chunk = min(want, 256)
            tasks = [self.runtime.spawn(take(f"squat-{self._squatters}-{n + i}"), name="squatter")
                     for i in range(chunk)]
            for task in tasks:
                await task.join()
            n += chunk
            want -= chunk

        async def give_back(container: str) -> None:
            with contextlib.suppress(IpamError, StoreError):
                await squatter.release(container, "eth0")

        async def release() -> None:
            for start in range(0, len(taken), 256):  # as the squatter took them: batches in parallel
                tasks = [self.runtime.spawn(give_back(c), name="squatter") for c in taken[start:start + 256]]
                for task in tasks:
                    await task.join()

        return release

    # ------------------------------------------------------------------ checks
    def _last_fault_end(self) -> float:
        ends = [at + (f.duration or 0.0) for f in self.spec.faults for at in self._occurrences(f)]
        return max(ends, default=0.0)

    def _occurrences(self, fault: FaultSpec) -> list[float]:
        if fault.every is None or fault.every <= 0:
            return [fault.at] if fault.at < self.spec.duration else []
        return [fault.at + k * fault.every for k in range(int((self.spec.duration - fault.at) // fault.every) + 1)
                if fault.at + k * fault.every < self.spec.duration]

    def _liveness_deadlines(self) -> list[float]:
        end = self._last_fault_end()
        return sorted({end + c.within for c in self.spec.checks
                       if c.kind in ("leaks-found-and-released", "apps-serve-again", "builds-finish")
                       and end + c.within <= self.spec.duration})

    async def _probe_at(self, deadline: float) -> None:
        """At the liveness deadline: which apps serve on every live host, and how many addresses leak."""
        await self.runtime.sleep(max(0.0, deadline - self.runtime.now()))
        not_serving = self._not_serving_now()
        end = self._last_fault_end()
        unfinished = self.farm.unfinished(submitted_by=end)
        self._probes[deadline] = (self.runtime.now(), {"not_serving": not_serving, "leaked": self.leaked(),
                                                       "unfinished_builds": unfinished})

    def checks(self) -> list[tuple[str, bool, str]]:
        out = []
        for check in self.spec.checks:
            kind = check.kind
            if kind == "no-duplicate-address":
                v = self.auditor.violations
                out.append((kind, not v, f"{len(v)} duplicate owner(s)" + (f"; first: {v[0]}" if v else "")))
            elif kind == "domains-keep-serving":
                n, examples = self.metrics.serving_violations, self.metrics.serving_examples
                out.append((kind, not n, f"{n} host-second(s) without a live upstream while one was ready"
                            + (f"; first: {examples[0]}" if examples else "")))
            elif kind in ("leaks-found-and-released", "apps-serve-again", "builds-finish"):
                deadline = self._last_fault_end() + check.within
                if deadline not in self._probes:
                    out.append((kind, False, f"the run ends at {self.spec.duration:g} s, before the deadline "
                                              f"{deadline:g} s (last fault ends + {check.within:g} s)"))
                    continue
                at, state = self._probes[deadline]
                if kind == "leaks-found-and-released":
                    # Gone, and gone through cnictl: every address a dead pod held was released by
                    # `cnictl release` (no other path frees a leak; a bug that did would show here).
                    leaked = state["leaked"]
                    gone = self.auditor.leaks_gone
                    elsewhere = sorted(gone[h] for h in gone if h not in self._released_by_cnictl)
                    out.append((kind, leaked == 0 and not elsewhere,
                                f"at t={at:g}: {leaked} address(es) without a live pod; cnictl found "
                                f"{self.metrics.leaks_found} certain leak(s), released {self.metrics.leaks_released}"
                                + (f"; {len(elsewhere)} freed by something else: {', '.join(elsewhere[:5])}"
                                   if elsewhere else "")))
                elif kind == "builds-finish":
                    unfinished = state["unfinished_builds"]
                    submitted = self.farm.submitted(by=self._last_fault_end())
                    out.append((kind, not unfinished, f"at t={at:g}: {submitted - len(unfinished)} of {submitted} "
                                                      "build(s) submitted before the faults ended have finished"
                                + (f"; unfinished: {', '.join(unfinished[:5])}" if unfinished else "")))
                else:
                    bad = state["not_serving"]
                    out.append((kind, not bad, f"at t={at:g}: " + (f"not serving: {', '.join(bad)}" if bad
                                                                   else "every app serves on every live host")))
            elif kind == "max-failed-requests":
                failed = self.metrics.failed
                out.append((kind, failed <= check.limit, f"{failed} failed of {failed + self.metrics.ok} "
                                                         f"(limit {check.limit:g})"))
            elif kind == "max-reloads":
                worst = max(self.hosts.values(), key=lambda h: h.proxy.reload_count, default=None)
                count = worst.proxy.reload_count if worst else 0
                out.append((kind, count <= check.limit, f"at most {count} reloads per host"
                            + (f" ({worst.name})" if worst else "") + f" (limit {check.limit:g})"))
        return out

    def _not_serving_now(self) -> list[str]:
        return [f"{name} on {h.name}" for name, app in sorted(self.apps.items())
                for h in self._live_hosts(app.group) if not self._serves(h, self.domains[name])]

    # ------------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        m = self.metrics
        lat = sorted(m.allocations)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 6) if lat else 0.0

        checks = [{"name": n, "passed": p, "detail": d} for n, p, d in self.checks()]
        all_pods = [p for pods in self.pods.values() for p in pods]
        return {
            "region": self.spec.name,
            "seed": self.spec.seed,
            "duration": self.spec.duration,
            "virtual_seconds": self.runtime.now(),
            "passed": all(c["passed"] for c in checks),
            "checks": checks,
            "metrics": {
                "requests_ok": m.ok, "requests_failed": m.failed, "requests_failed_by_reloads": m.reload_failed,
                "allocations": len(lat), "alloc_p50": pct(0.5), "alloc_p99": pct(0.99),
                "alloc_max": round(lat[-1], 6) if lat else 0.0, "add_errors": m.add_errors,
                "leaked_max": m.max_leaked, "leaked_now": self.leaked(), "leaks_found": m.leaks_found,
                "leaks_released": m.leaks_released, "leak_checks": m.leak_checks,
                "leak_checks_skipped": m.leak_checks_skipped, "pool_use": self.pool_use(),
                "reloads": sum(h.proxy.reload_count for h in self.hosts.values()),
                "reloads_max_per_host": max((h.proxy.reload_count for h in self.hosts.values()), default=0),
                "discovery_pushes": self.discovery.stats.pushes,
                **self.farm.metrics(),
            },
            "counts": {
                "cells": len(self.cells), "nodes": len(self.nodes), "nginx_hosts": len(self.hosts),
                "build_hosts": len(self.farm.hosts), "registry_images": len(self.farm.registry.images),
                "apps": len(self.apps), "pods_started": m.pods_started, "pods_died": m.pods_died,
                "pods_deleted": m.pods_deleted, "pods_alive": sum(1 for p in all_pods if p.alive),
                "faults": len(self.fault_windows), "store_writes": self.store.writes,
                "store_revision": self.store.revision,
            },
            "series": m.series,
            "trace_events": self.runtime.trace_log.count,
            "trace_sha256": self.runtime.trace_log.sha256,
        }


def run_region(spec: RegionSpec, **options: Any) -> tuple[dict[str, Any], Region]:
    """Build a Region on a fresh runtime seeded by ``spec.seed``, run it, return (report, region)."""
    region = Region(spec, SimRuntime(spec.seed), **options)
    region.run()
    return region.report(), region


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, indent=2)
