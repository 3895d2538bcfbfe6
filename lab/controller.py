"""The lab's Kubernetes control loop: apps -> pods on nodes (replication controller, scheduler, churn).

The twin of ``sim/kube.py`` + ``sim/churn.py`` for a live lab: a replication controller
per (app, Cell) keeps the replica count (one loop every ``tick``), the scheduler spreads
pods by the power of two choices over the Cell's schedulable nodes, a start task per pod
asks the node's lab container runtime to run it (the runtime executes the CNI plugin and
reports the pod to its Cell's API) and retries every ``kubelet_retry`` seconds while the
ADD fails; a node controller evicts a dead host's pods ``node_grace`` seconds after it died
(the sim's Region default, 40 s), so that is when they are replaced. Deploys are rolling
replacements (surge 1: a new pod ready, then the old one drained and stopped), after a
build of the app's next commit on the farm when ``release`` is set (as sim/churn.py), scale
events move one (app, Cell) by one replica between half and twice the spec's count,
both at seeded Poisson times.

Two ways to run it, one code path: ``leengine lab run`` makes one in-process and tells it of
each fault (``node_down``, ``runtime_down``, ``cell_out`` ...), as the sim's world does; the lab's
persistent controller (``python -m lab.controller --dir DIR``, role ``kube-controller``, started
by ``lab up``) ``adopt``s the pods the runtimes hold (not the platform's: pods labelled ``version`` are
lab/replication.py's, which it runs beside the scenario's apps), and ``heal`` looks at the runtimes instead
of being told (see ``heal``), with cnictl's cron beside it, so a lab left up keeps serving while
someone breaks it by hand (``leengine lab fault``).

Randomness: ``placement`` is a ``random.Random`` of the run's seed, used by placement only,
reproducible per seed as long as the same pods are placed in the same order (a pod that
dies a second later in one run can reorder later draws). Churn draws from the sim's own
streams (``sim.churn.ChurnDraws``: one per kind, four draws per event in a fixed order), so
a lab run and a simulated run of one scenario and seed play the same deploys and scale
events of the same (app, Cell) pairs at the same times.

It acts only through ``PodActions`` (the driver, lab/run.py: runtime sockets, Cell APIs,
discovery drains) and must not know the faults, the load or the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.churn import ChurnDraws, ChurnEvent
from sim.spec import AppSpec, RegionSpec, node_name

log = logging.getLogger("leengine.lab.controller")

Key = tuple[str, str]  # (app, Cell)


class StartFailed(Exception):
    """The runtime could not start a pod (CNI ADD failed: e.g. the pool is exhausted); the kubelet retries."""


@dataclass
class LabPod:
    app: str
    cell: str
    name: str
    uid: str
    container_id: str
    node: str = ""
    port: int = 80  # the app's port: its pod's server listens there, discovery binds it
    ip: str = ""
    created: float = 0.0
    alive: bool = True  # its processes run (False: died with its host or runtime, or stopped)
    ready: bool = False
    in_api: bool = True
    ready_at: float = math.inf
    died_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Started:
    """What a runtime answers when a pod runs: its address and the CNI ADD's duration."""

    ip: str
    add_seconds: float
    add_in_flight: int = 0  # the machine's CNI ADDs in flight as it began, itself included (0: not told)
    existing: bool = False  # the runtime already ran it (a retried run after a lost answer): no ADD was made now


class PodActions(Protocol):
    """What the controller asks of the lab (implemented by the run driver)."""

    async def run_pod(self, node: str, pod: LabPod, ready_after: float) -> Started: ...  # raises StartFailed
    async def stop_pod(self, node: str, pod: LabPod) -> None: ...  # CNI DEL, kill, netns deleted, out of the API
    async def forget_pod(self, pod: LabPod) -> None: ...  # a dead pod leaves its Cell's API (no CNI DEL)
    async def drain(self, pod: LabPod) -> float: ...  # out of every Nginx host's upstreams; seconds it took
    async def undrain(self, pod: LabPod) -> None: ...  # the address may come back (discovery's forget)


@dataclass
class NodeState:
    name: str
    cell: str
    alive: bool = True
    runtime_ok: bool = True
    pods: dict[str, LabPod] = field(default_factory=dict)

    @property
    def schedulable(self) -> bool:
        return self.alive and self.runtime_ok


@dataclass
class Counts:
    pods_started: int = 0
    pods_died: int = 0
    pods_deleted: int = 0
    add_errors: int = 0
    deploys: int = 0
    scale_events: int = 0
    add_seconds: list[float] = field(default_factory=list)
    add_in_flight: list[int] = field(default_factory=list)  # of each add_seconds, in its order (lab/fit.py)
    drain_seconds: list[float] = field(default_factory=list)


def _pod_number(name: str) -> int:
    """The ``n`` of a pod named ``{app}-{cell}-{n}`` (0 when it has none)."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() and len(tail) < 10 else 0


def pick_node(nodes: list[NodeState], rnd: random.Random) -> NodeState | None:
    """Power of two choices (sim/kube.py's rule): the emptier of two schedulable nodes drawn at random."""
    a, b = _draw(nodes, rnd), _draw(nodes, rnd)
    if a is None or b is None:
        return None
    return b if len(b.pods) < len(a.pods) else a


def _draw(nodes: list[NodeState], rnd: random.Random) -> NodeState | None:
    for _ in range(8):
        node = nodes[rnd.randrange(len(nodes))]
        if node.schedulable:
            return node
    live = [n for n in nodes if n.schedulable]
    return rnd.choice(live) if live else None


class Controller:
    def __init__(self, spec: RegionSpec, actions: PodActions, clock: Callable[[], float], *, seed: int,
                 tick: float = 1.0, node_grace: float = 40.0, kubelet_retry: float = 2.0,
                 deploy_timeout: float = 120.0) -> None:
        self.spec = spec
        self.actions = actions
        self.clock = clock
        self.tick = tick
        self.node_grace = node_grace
        self.kubelet_retry = kubelet_retry
        self.deploy_timeout = deploy_timeout
        self.placement = random.Random(seed)
        self.seed = seed  # churn draws from sim.churn.ChurnDraws(seed, kind): the sim's very streams
        # A platform app (``platform: true``) is deployed through the control service, its pods made by
        # lab/replication.py from its versions' replication controllers: not this controller's.
        self.apps: dict[str, AppSpec] = {a.name: a for a in spec.apps if not getattr(a, "platform", False)}
        self.nodes: dict[str, NodeState] = {}
        self.cell_nodes: dict[str, list[NodeState]] = {}
        for cell in spec.cells:
            states = [NodeState(node_name(cell.name, i), cell.name) for i in range(1, cell.nodes + 1)]
            self.cell_nodes[cell.name] = states
            self.nodes.update((n.name, n) for n in states)
        self.pods: dict[Key, list[LabPod]] = {(a.name, c): [] for a in self.apps.values() for c in a.cells}
        self.replicas: dict[Key, int] = {(a.name, c): a.replicas for a in self.apps.values() for c in a.cells}
        self.by_name: dict[str, LabPod] = {}
        self.out: set[str] = set()  # Cells cut off: not reconciled until back
        self.dead: dict[tuple[str, str], float] = {}  # (app, pod) -> when it died: the leak suspects
        self.killed: set[tuple[str, str]] = set()  # pods that died without CNI DEL
        self.counts = Counts()
        self.rolling: set[Key] = set()
        # A deploy's build (the lab's farm, lab/farm.py): the image to roll out, or None (nothing rolls).
        self.release: Callable[[str], Awaitable[str | None]] | None = None
        self.images: dict[str, str] = {}  # app -> the image its pods run (the controller's template)
        self._counter = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ what it shows
    def ready_pods(self, app: str) -> list[LabPod]:
        if app not in self.apps:  # a platform app: its pods are lab/replication.py's
            return []
        return [p for c in self.apps[app].cells for p in self.pods[(app, c)] if p.alive and p.ready]

    def ready_elsewhere(self, app: str, now: float, grace: float = 2.0) -> bool:
        """A pod of the app alive, ready (for ``grace`` seconds: it had time to propagate) and in a reachable Cell."""
        return any(now - p.ready_at >= grace and p.cell not in self.out
                   and self.nodes[p.node].alive for p in self.ready_pods(app))

    def live_pods(self) -> list[LabPod]:
        return [p for pods in self.pods.values() for p in pods if p.alive and p.ip]

    # ------------------------------------------------------------------ replication controller
    async def run(self) -> None:
        while True:
            self.reconcile()
            await asyncio.sleep(self.tick)

    def reconcile(self) -> list[LabPod]:
        """One pass: drop pods that left the API, create what is missing; returns the pods created."""
        made = []
        for key in sorted(self.pods):
            app, cell = key
            if cell in self.out:
                continue
            pods = self.pods[key]
            pods[:] = [p for p in pods if p.in_api]
            for _ in range(self.replicas[key] - len(pods)):
                pod = self.new_pod(self.apps[app], cell)
                pods.append(pod)
                made.append(pod)
        return made

    def new_pod(self, app: AppSpec, cell: str) -> LabPod:
        self._counter += 1
        n = self._counter
        pod = LabPod(app.name, cell, f"{app.name}-{cell}-{n}", f"uid-{n}", f"sandbox-{n:07d}", port=app.port,
                     created=self.clock())
        self.by_name[pod.name] = pod
        pod.task = self._spawn(self._start(pod, app), f"kubelet/{pod.name}")
        return pod

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(self, pod: LabPod, app: AppSpec) -> None:
        try:
            while not pod.node:
                picked = pick_node(self.cell_nodes[pod.cell], self.placement)
                if picked is None:
                    await asyncio.sleep(self.kubelet_retry)
                    continue
                pod.node = picked.name
                picked.pods[pod.name] = pod
            ready_after = app.start_seconds + app.readiness_seconds
            while True:
                try:
                    started = await self.actions.run_pod(pod.node, pod, ready_after)
                    break
                except StartFailed as exc:
                    self.counts.add_errors += 1
                    log.info("pod %s on %s: %s; retrying", pod.name, pod.node, exc)
                    await asyncio.sleep(self.kubelet_retry)
            pod.ip = started.ip
            if not started.existing:  # a retry answered from the running pod made no ADD: not an ADD's latency
                self.counts.add_seconds.append(started.add_seconds)
                self.counts.add_in_flight.append(started.add_in_flight)
            await asyncio.sleep(ready_after)  # the runtime reports Ready after the same delay
            if pod.alive:
                pod.ready, pod.ready_at = True, self.clock()
                self.counts.pods_started += 1
        except asyncio.CancelledError:
            return
        finally:
            pod.task = None

    # ------------------------------------------------------------------ pods going away
    def _kill(self, pod: LabPod) -> None:
        if pod.task is not None:
            pod.task.cancel()
        if pod.alive:
            pod.alive, pod.ready = False, False
            pod.died_at = self.clock()
            self.dead[(pod.app, pod.name)] = pod.died_at
            self.killed.add((pod.app, pod.name))
            self.counts.pods_died += 1

    async def _evict(self, pod: LabPod) -> None:
        if not pod.in_api:
            return
        pod.in_api = False
        if pod.node:
            self.nodes[pod.node].pods.pop(pod.name, None)
        with contextlib.suppress(Exception):  # its Cell's API away: the record goes when the pod list is read
            await self.actions.forget_pod(pod)

    async def delete_pod(self, pod: LabPod) -> None:
        """A graceful deletion: stop its start, drain it from every Nginx host, stop it (CNI DEL), forget it."""
        if pod.task is not None:
            task = pod.task
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pod.ip and pod.alive:
            with contextlib.suppress(Exception):
                self.counts.drain_seconds.append(await self.actions.drain(pod))
        node = self.nodes.get(pod.node)
        if node is not None and node.schedulable and pod.alive:
            with contextlib.suppress(Exception):
                await self.actions.stop_pod(pod.node, pod)
        if pod.alive:
            self.dead[(pod.app, pod.name)] = self.clock()
        pod.alive, pod.ready = False, False
        pod.in_api = False
        if node is not None:
            node.pods.pop(pod.name, None)
        if pod.ip:
            with contextlib.suppress(Exception):
                await self.actions.undrain(pod)
        self.counts.pods_deleted += 1

    # ------------------------------------------------------------------ what faults tell it
    def node_down(self, node: str, pods: list[str]) -> None:
        """The host died with its pods (no CNI DEL); the node controller evicts them after ``node_grace``."""
        state = self.nodes[node]
        state.alive = False
        for pod in list(state.pods.values()):
            self._kill(pod)
        self._spawn(self._node_controller(state), f"node-controller/{node}")

    async def _node_controller(self, node: NodeState) -> None:
        await asyncio.sleep(self.node_grace)
        if not node.alive:
            await self._evict_dead(node)

    async def _evict_dead(self, node: NodeState) -> None:
        for pod in [p for p in node.pods.values() if not p.alive]:
            await self._evict(pod)

    def node_up(self, node: str) -> None:
        state = self.nodes[node]
        if state.alive:
            return
        self._spawn(self._evict_dead(state), f"kubelet-report/{node}")  # its old sandboxes are gone
        state.alive, state.runtime_ok = True, True

    def runtime_down(self, node: str, pods: list[str]) -> None:
        state = self.nodes[node]
        state.runtime_ok = False
        for pod in list(state.pods.values()):
            self._kill(pod)
        self._spawn(self._evict_dead(state), f"kubelet-report/{node}")  # PLEG: reported failed at once

    def runtime_up(self, node: str) -> None:
        self.nodes[node].runtime_ok = True

    def cell_out(self, cell: str, out: bool) -> None:
        (self.out.add if out else self.out.discard)(cell)

    # ------------------------------------------------------------------ churn
    async def run_churn(self, per_hour: float, kind: str) -> None:
        """Events at exponential gaps (Poisson), each on a seeded (app, Cell); ``kind``: "deploy" or "scale"."""
        keys = [k for k in sorted(self.pods) if self.apps[k[0]].replicas > 0]
        if not keys or per_hour <= 0:
            return
        draws = ChurnDraws(self.seed, kind)
        while True:
            event = draws.next(per_hour, len(keys))
            await asyncio.sleep(event.gap)
            key = keys[event.pick]
            if key in self.rolling or key[1] in self.out:
                continue
            self.rolling.add(key)
            action = self.deploy(key) if kind == "deploy" else self.scale(key, event)
            self._spawn(self._one(action, key), f"churn/{kind}/{key[0]}/{key[1]}")

    async def _one(self, coro: Coroutine[Any, Any, None], key: Key) -> None:
        try:
            await coro
        finally:
            self.rolling.discard(key)

    async def deploy(self, key: Key) -> None:
        """Rolling replacement, surge 1: a new pod ready, then one old pod drained and deleted."""
        self.counts.deploys += 1
        app = self.apps[key[0]]
        if self.release is not None:  # as sim/churn.py: build the app's next commit on the farm first
            image = await self.release(app.name)
            if image is None:
                return  # nothing to roll out: the build failed or never ran
            self.images[app.name] = image
        for victim in [p for p in self.pods[key] if p.in_api]:
            if not victim.in_api:
                continue
            new = self.new_pod(app, key[1])
            self.pods[key].append(new)
            deadline = self.clock() + self.deploy_timeout
            while not new.ready and new.in_api and self.clock() < deadline:
                await asyncio.sleep(self.tick)
            if not new.ready:
                return  # the new version does not come up: stop rolling
            await self.delete_pod(victim)

    async def scale(self, key: Key, event: ChurnEvent) -> None:
        self.counts.scale_events += 1
        base = self.apps[key[0]].replicas
        now = self.replicas[key]
        low, high = max(1, base // 2), max(1, base * 2)
        up = event.up
        if (up and now >= high) or (not up and now <= low):
            up = not up
        self.replicas[key] = now + (1 if up else -1)
        if up:
            return
        pods = [p for p in self.pods[key] if p.in_api]
        if len(pods) <= self.replicas[key]:
            return
        ready = [p for p in pods if p.ready] or pods
        await self.delete_pod(event.choose(ready))

    # ------------------------------------------------------------------ a persistent controller (lab up)
    def adopt(self, node: str, pods: list[dict[str, Any]]) -> list[LabPod]:
        """Pods a node's runtime already runs (``list``): kept as ready replicas instead of being started again.

        Only live pods with an address, of an app that runs in the node's Cell; their number
        (``{app}-{cell}-{n}``) moves the counter past it, so a new pod never takes an old name.
        """
        state = self.nodes.get(node)
        adopted: list[LabPod] = []
        if state is None:
            return adopted
        for info in pods:
            name, app, ip = str(info.get("name", "")), str(info.get("app", "")), str(info.get("ip", ""))
            key = (app, state.cell)
            if key not in self.pods or name in self.by_name or not ip or not info.get("alive", True):
                continue
            if info.get("version"):  # a platform version's pod: lab/replication.py's, not a scenario replica
                continue
            self._counter = max(self._counter, _pod_number(name))
            now = self.clock()
            port = info.get("port", self.apps[app].port)
            pod = LabPod(app, state.cell, name, str(info.get("uid", "")), str(info.get("container_id", "")),
                         node=node, port=port if isinstance(port, int) else self.apps[app].port, ip=ip,
                         created=now, ready=True, ready_at=now)
            self.pods[key].append(pod)
            self.by_name[name] = pod
            state.pods[name] = pod
            adopted.append(pod)
        return adopted

    async def heal(self, list_pods: Callable[[str], Awaitable[list[dict[str, Any]] | None]], *,
                   every: float = 2.0, unreachable_after: float = 10.0) -> None:
        """The persistent controller's eyes: nobody tells it of faults, so it looks (not used by ``lab run``).

        Every ``every`` seconds each node's runtime is listed. A runtime silent for
        ``unreachable_after`` seconds is a lost host (``node_down``: its pods dead without CNI
        DEL, evicted after ``node_grace``, their addresses left to cnictl); one that answers
        again brings its node back (``node_up``). A pod that its live runtime reports dead (its
        server gone) or no longer holds died alone: its sandbox is torn down with CNI DEL and the
        replication controller replaces it, as a kubelet and a ReplicaSet would.
        """
        silent_since: dict[str, float] = {}
        while True:
            for name, node in self.nodes.items():
                listing = await list_pods(name)
                now = self.clock()
                if listing is None:
                    since = silent_since.setdefault(name, now)
                    if node.alive and now - since >= unreachable_after:
                        log.warning("runtime of %s silent for %.0fs: node lost", name, now - since)
                        self.node_down(name, [])
                    continue
                silent_since.pop(name, None)
                if not node.alive:
                    log.info("runtime of %s answers again: node back", name)
                    self.node_up(name)
                    continue
                held = {str(p.get("name")): p for p in listing}
                for pod in list(node.pods.values()):
                    if not pod.alive or not pod.ip or pod.task is not None:
                        continue  # gone already, or still starting (its start task owns it)
                    info = held.get(pod.name)
                    if info is None or not info.get("alive", True):
                        self._spawn(self._died_alone(pod), f"kubelet-teardown/{pod.name}")
            await asyncio.sleep(every)

    async def _died_alone(self, pod: LabPod) -> None:
        """A pod dead on a live node: counted dead, its sandbox torn down (CNI DEL), out of the API."""
        if not pod.alive:
            return
        log.info("pod %s on %s died: tearing its sandbox down", pod.name, pod.node)
        pod.alive, pod.ready = False, False
        pod.died_at = self.clock()
        self.dead[(pod.app, pod.name)] = pod.died_at
        self.counts.pods_died += 1
        with contextlib.suppress(Exception):  # the runtime may not hold it any more: nothing to DEL there
            await self.actions.stop_pod(pod.node, pod)
        await self._evict(pod)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# ------------------------------------------------------------------ python -m lab.controller --dir DIR


async def serve(directory: str, *, heal_every: float = 2.0, tick: float = 1.0) -> None:
    """The persistent controller of the lab in ``directory`` until SIGTERM/SIGINT: adopt, keep, heal, clean leaks.

    The same ``Controller`` as ``leengine lab run`` (placement, replication, eviction, deploys'
    rolling code), started on the pods the runtimes already hold, with ``heal`` as its eyes and
    the operator's cnictl cron (check + release of certain leaks every ``leak_check_every``).
    """
    import signal
    from pathlib import Path

    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.k8s_cluster import KubeCluster
    from lab import services
    from lab.lab import Lab
    from lab.observe import LeakCron, RegionPods
    from lab.pod_actions import RuntimePods
    from lab.replication import replication_of
    from leengine.etcd_options import EtcdClientTls, open_store

    lab = Lab.load(Path(directory))
    spec = services.lab_spec(lab)
    certs = services.files(lab).certs
    tls = EtcdClientTls(Path(certs.ca_cert), Path(certs.client_cert), Path(certs.client_key))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while True:  # etcd first (through the links, as the operator's cnictl)
        try:
            store = await open_store(services.etcd_endpoint(lab.plan, "cnictl"), tls, timeout=5.0)
            break
        except Exception as exc:  # StoreUnavailable, a handshake refused: retry until stopped
            log.warning("etcd not reachable yet: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
                return
            except TimeoutError:
                continue
    await _domains(lab, spec, stop)
    cells = [KubeCluster(host=cell.api_url, timeout=5.0) for cell in lab.plan.cells.values()]
    t0 = loop.time()
    actions = RuntimePods(lab.plan, store, requested_by="lab controller")
    controller = Controller(spec, actions, lambda: loop.time() - t0, seed=spec.seed, tick=tick)
    for node in controller.nodes:
        adopted = controller.adopt(node, await actions.list_pods(node) or [])
        if adopted:
            log.info("%s: adopted %d pod(s)", node, len(adopted))
    cron = LeakCron(store, RegionPods(cells), AsyncioRuntime(spec.seed), every=spec.leak_check_every,
                    grace=spec.leak_grace)
    replication = replication_of(lab.plan, seed=spec.seed, node_grace=controller.node_grace)
    tasks = [loop.create_task(controller.run(), name="controller/replication"),
             loop.create_task(replication.run(), name="controller/replication-controllers"),
             loop.create_task(controller.heal(actions.list_pods, every=heal_every), name="controller/heal"),
             loop.create_task(cron.run(), name="controller/cnictl-cron")]
    log.info("lab controller of %s: %d apps, %d nodes", lab.plan.id, len(spec.apps), len(controller.nodes))
    try:
        waiter = loop.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # a loop that failed: raised, so the process exits non-zero with its traceback
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await controller.stop()
        for cell in cells:
            with contextlib.suppress(Exception):
                await cell.close()
        await store.close()


async def _domains(lab: Any, spec: RegionSpec, stop: asyncio.Event) -> None:
    """One SLB domain per app (as ``lab run`` and the sim's boot make them), retried until control answers."""
    from lab import services
    from lab.run import ControlAdmin

    certs = services.files(lab).certs
    while not stop.is_set():
        control = ControlAdmin(lab.plan.control_address, services.admin_token(lab), certs.ca_cert.read_bytes())
        try:
            await control.set_up(spec)
            return
        except Exception as exc:  # the control service not answering yet: the pods can wait for it
            log.warning("domains not set up yet: %s", exc)
        finally:
            await control.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.controller",
                                     description="The lab's persistent Kubernetes controller (keeps and heals pods)")
    parser.add_argument("--dir", required=True, help="the lab directory")
    parser.add_argument("--heal-every", type=float, default=2.0, help="seconds between looks at the runtimes")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.dir, heal_every=args.heal_every))
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: lab.pod_actions raises lab.controller.StartFailed, which
    # __main__'s own StartFailed class would not catch (a failed ADD then ended the pod's start for good).
    from lab.controller import main as _main

    raise SystemExit(_main())
