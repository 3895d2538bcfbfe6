"""Kubernetes, played by the world: replication controllers, the scheduler, kubelets, the node controller.

The real agents run unchanged on the sim adapters; this module is what a Region's
Kubernetes clusters (one per Cell) do around them: a replication controller per (app,
Cell) keeps the replica count (one loop every tick, reconciling only what changed), the
scheduler spreads pods (power of two choices), a kubelet coroutine per pod start calls
the node's real ``CniAgent`` (ADD; DEL on a graceful deletion), and publishes the pod
and the app's endpoints in the Cell's ``SimCluster``; a node controller removes a dead
host's node and pods ``node_grace`` seconds after it died.

Platform apps (``AppSpec.platform``) run pods **per version**: their replication
controllers are the platform's (``control.apps`` through the Cell's ``SimWorkloads``, whose
``on_change`` is ``set_versions``), each pod carries its version (named
``{app}-{version}-{cell}-{n}``, running its controller's image), the endpoints carry
``ready_versions``, and every change of a version's ready pods is reported back
(``on_ready``: the controller's status, as a kubelet's readiness reaches the API).
Other apps keep one controller per (app, Cell) of the spec's replicas, pods unversioned.

Faults act through symmetric pairs: ``crash_host`` / ``return_host``, ``kill_runtime`` /
``restore_runtime``, ``cut_cell`` / ``restore_cell``. Whatever changes whether a pod can
serve calls ``on_reachability(*apps)`` (the client traffic looks at those apps again).

Model: a host crash kills its pods without CNI DEL (their addresses leak until cnictl
releases them); a Cell outage cuts its API server and its nodes' etcd clients, its pods
keep running (unreachable from Nginx). Every choice draws from ``runtime.random``.
It must not know the client traffic, the faults or the checks, nor import real adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from cni.request import CniError, CniRequest
from control.discovery import Discovery
from foundation.ports import Cancelled, StoreError
from foundation.ports.cluster import Endpoints, PodInfo, ip_order
from node.cni_agent import CniAgent
from sim.adapters.runtime import SimRuntime
from sim.audit import Auditor
from sim.metrics import Metrics
from sim.spec import AppSpec
from sim.topology import Cell, Node, Pod

Key = tuple[str, str]  # (app, Cell)
OnReady = Callable[[str, str, str, int], None]  # (Cell, app, version, ready pods)


class Kubernetes:
    def __init__(self, runtime: SimRuntime, cells: dict[str, Cell], apps: dict[str, AppSpec], *,
                 metrics: Metrics, auditor: Auditor, discovery: Discovery, pull_seconds: Callable[[str], float],
                 new_agent: Callable[[Node], CniAgent], on_reachability: Callable[..., None],
                 tick: float, node_grace: float, kubelet_retry: float) -> None:
        self.runtime = runtime
        self.cells = cells
        self.apps = apps
        self.metrics = metrics
        self.auditor = auditor
        self.discovery = discovery
        self.pull_seconds = pull_seconds
        self.new_agent = new_agent
        self.on_reachability = on_reachability
        self.tick = tick
        self.node_grace = node_grace
        self.kubelet_retry = kubelet_retry
        self.pods: dict[Key, list[Pod]] = {(a.name, c): [] for a in apps.values() for c in a.cells}
        self.replicas: dict[Key, int] = {(a.name, c): 0 if a.platform else a.replicas
                                         for a in apps.values() for c in a.cells}
        # Platform apps: (app, Cell) -> {version: replicas} as its controllers say, and each version's image.
        self.versions: dict[Key, dict[str, int]] = {(a.name, c): {} for a in apps.values() if a.platform
                                                    for c in a.cells}
        self.version_images: dict[tuple[str, str], str] = {}
        self.on_ready: OnReady | None = None
        self.pod_by_ip: dict[str, Pod] = {}
        self.images: dict[str, str] = {}  # app -> the image its new pods run (the controller's template)
        self._dirty: set[Key] = set(self.pods)  # (app, Cell) the controller must reconcile
        self._dead: dict[Key, float] = {}  # (app, pod) -> when it died: the only leak suspects
        self._pod_counter = 0
        self._leaving: set[str] = set()  # pods a scale-down (set_versions) is deleting
        self._apps_in_cell: dict[str, list[str]] = {}
        for app in apps.values():
            for cell in app.cells:
                self._apps_in_cell.setdefault(cell, []).append(app.name)

    # ------------------------------------------------------------------ replication controller
    def mark_dirty(self, key: Key) -> None:
        """The replica count of (app, Cell) changed: the controller reconciles it at its next tick."""
        self._dirty.add(key)

    def set_versions(self, key: Key, versions: Mapping[str, tuple[int, str]]) -> None:
        """A platform app's replication controllers in the Cell (the ``on_change`` of its ``SimWorkloads``):
        ``{version: (replicas, image)}``, every controller of the app there.

        A version with more replicas gets them at the controller's next tick; with fewer, or
        whose controller is gone, its surplus pods (not-ready first) are drained and deleted.
        """
        if key not in self.versions:
            return
        self.versions[key] = {version: replicas for version, (replicas, _) in versions.items()}
        for version, (_, image) in versions.items():
            self.version_images[(key[0], version)] = image
        self.replicas[key] = sum(self.versions[key].values())
        self.mark_dirty(key)
        staying = [p for p in self.pods[key] if p.in_api and p.name not in self._leaving]
        for version in sorted({p.version for p in staying}):
            mine = [p for p in staying if p.version == version]
            for pod in sorted(mine, key=lambda p: p.ready)[:max(0, len(mine) - self.versions[key].get(version, 0))]:
                self._leaving.add(pod.name)
                self.runtime.spawn(self._scale_down(pod), name=f"scale-down/{pod.name}")

    async def _scale_down(self, pod: Pod) -> None:
        try:
            await self.delete_pod(pod)
        finally:
            self._leaving.discard(pod.name)

    async def controller(self) -> None:
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
                    versions = self.versions.get(key)
                    if versions is not None:  # a platform app: one controller per version
                        for version, replicas in versions.items():
                            have = sum(1 for p in pods if p.version == version and p.name not in self._leaving)
                            for _ in range(replicas - have):
                                pods.append(self.new_pod(self.apps[app_name], cell, version))
                        continue
                    for _ in range(self.replicas[key] - len(pods)):
                        pods.append(self.new_pod(self.apps[app_name], cell))
                self._dirty = keep
            await self.runtime.sleep(self.tick)

    def new_pod(self, app: AppSpec, cell: Cell, version: str = "") -> Pod:
        """A pod of the app (of ``version``, for a platform app) in the Cell, its kubelet start under way
        (the caller lists it under its key)."""
        self._pod_counter += 1
        n = self._pod_counter
        if version:
            pod = Pod(app.name, cell.spec.name, f"{app.name}-{version}-{cell.spec.name}-{n}", f"uid-{n}",
                      f"sandbox-{n:07d}", image=self.version_images.get((app.name, version), ""), version=version)
        else:
            pod = Pod(app.name, cell.spec.name, f"{app.name}-{cell.spec.name}-{n}", f"uid-{n}", f"sandbox-{n:07d}",
                      image=self.images.get(app.name, ""))
        pod.task = self.runtime.spawn(self._kubelet_start(pod, app, cell), name=f"kubelet/{pod.name}")
        return pod

    # ------------------------------------------------------------------ scheduler
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

    # ------------------------------------------------------------------ kubelet
    @staticmethod
    def _cni(command: str, pod: Pod, cell: Cell) -> CniRequest:
        return CniRequest(command, "1.0.0", cell.network, pod.container_id, pod.netns if command == "ADD" else "",
                          "eth0", args={"K8S_POD_NAMESPACE": pod.app, "K8S_POD_NAME": pod.name,
                                        "K8S_POD_UID": pod.uid})

    async def _kubelet_start(self, pod: Pod, app: AppSpec, cell: Cell) -> None:
        rt = self.runtime
        try:
            while pod.node is None:
                picked = self._pick_node(cell)
                if picked is None:
                    await rt.sleep(self.kubelet_retry)
                    continue
                pod.node = picked
                picked.pods[pod.name] = pod
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
                self.on_reachability(previous.app)  # an address of its upstreams changed hands
            self.pod_by_ip[pod.ip] = pod
            cell.cluster.put_pod(PodInfo(app.name, pod.name, pod.uid, node.name, pod.ip))
            self._sync_endpoints(app.name, cell)
            if pod.image and pod.image not in node.images:  # the sandbox is up: pull, then start
                await rt.sleep(self.pull_seconds(pod.image))
                node.images.add(pod.image)
            await rt.sleep(app.start_seconds + app.readiness_seconds)
            pod.ready, pod.ready_at = True, rt.now()
            self.on_reachability(app.name)
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

    def _sync_endpoints(self, app: str, cell: Cell) -> None:
        key = (app, cell.spec.name)
        pods = [p for p in self.pods.get(key, ()) if p.in_api and p.ip]
        if key not in self.versions:
            cell.cluster.set_endpoints(Endpoints(app, app, tuple(p.ip for p in pods if p.ready),
                                                 tuple(p.ip for p in pods if not p.ready)))
            return
        # Sorted and unique by address as the port promises, each ready address with its pod's version.
        ready = {p.ip: p.version for p in sorted(pods, key=lambda p: ip_order(p.ip)) if p.ready}
        cell.cluster.set_endpoints(Endpoints(app, app, tuple(ready), tuple(p.ip for p in pods if not p.ready),
                                             ready_versions=tuple(ready.values())))
        self._report_ready(app, cell.spec.name)

    def _report_ready(self, app: str, cell: str) -> None:
        """Every version's ready pods in the Cell, to ``on_ready`` (a platform app's controllers' status)."""
        key = (app, cell)
        if self.on_ready is None or key not in self.versions:
            return
        pods = [p for p in self.pods.get(key, ()) if p.in_api]
        for version in sorted(set(self.versions[key]) | {p.version for p in pods}):
            self.on_ready(cell, app, version, sum(1 for p in pods if p.version == version and p.ready and p.alive))

    # ------------------------------------------------------------------ pods going away
    def _kill_pod(self, pod: Pod) -> None:
        """The pod's processes die with its host or runtime: no CNI DEL."""
        if pod.task is not None:
            pod.task.cancel()
        if pod.alive:
            pod.alive = False
            self._dead[(pod.app, pod.name)] = self.runtime.now()
            self.auditor.killed.add((pod.app, pod.name))
            self.metrics.pods_died += 1
            self.on_reachability(pod.app)
            self._report_ready(pod.app, pod.cell)

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
        self.on_reachability(pod.app)
        self._remove_from_api(pod)
        if pod.ip:
            self.discovery.forget(pod.app, pod.ip)
        self.metrics.pods_deleted += 1

    def leaked(self) -> int:
        """Addresses allocated to a pod (per the Store) whose pod is not alive."""
        held = self.auditor.pod_handles
        leaked = sum(held.get(pod, 0) for pod in self._dead)
        # A dead pod without a handle for long (no ADD still in flight) is no suspect any more.
        old = self.runtime.now() - 120.0
        for pod in [p for p, died in self._dead.items() if died < old and p not in held]:
            del self._dead[pod]
        return leaked

    # ------------------------------------------------------------------ faults: symmetric pairs
    def crash_host(self, node: Node) -> None:
        """The host dies: its dataplane loses everything, its pods die without CNI DEL."""
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

    def return_host(self, node: Node) -> None:
        """The host is back (with a fresh agent process); the node controller's grace ends at once."""
        if node.alive:
            return
        self._evict(node)  # the kubelet reports its old pods failed: their sandboxes are gone
        node.alive, node.runtime_ok, node.started = True, True, False
        node.agent = self.new_agent(node)  # a fresh agent process
        self.cells[node.cell].cluster.add_node(node.name)

    def kill_runtime(self, node: Node) -> None:
        """The container runtime dies: pods and their netns gone, the host stays."""
        node.runtime_ok = False
        node.dataplane.crash()
        for pod in list(node.pods.values()):
            self._kill_pod(pod)
        self._evict(node)  # the kubelet sees its pods gone at once (PLEG) and reports them failed

    def restore_runtime(self, node: Node) -> None:
        node.runtime_ok = True

    def cut_cell(self, cell: Cell) -> None:
        """The Cell's machine room is cut off: its API server and its nodes' etcd; its pods keep running."""
        cell.out = True
        self.on_reachability(*self._apps_in_cell.get(cell.spec.name, ()))
        cell.cluster.cut_off()
        for node in cell.nodes:
            node.client.partition()

    def restore_cell(self, cell: Cell) -> None:
        cell.out = False
        self.on_reachability(*self._apps_in_cell.get(cell.spec.name, ()))
        cell.cluster.reconnect()
        for node in cell.nodes:
            node.client.heal()
