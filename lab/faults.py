"""Faults of a live lab: one table, kind -> (apply, undo), the real counterpart of every ``FaultKind``.

The twin of ``sim/faults.py``: the same kinds (``sim.spec.FAULT_KINDS``), the same target
selection (``select``: ``sim.targets.target_universe`` + ``matches``, then the same
``random.sample`` draw for ``count``/``percent``), the same schedule (``occurrences``,
undo at the declared end in absolute time). What differs is how a fault breaks things:
through the lab's processes, bridges and TCP links instead of the sim adapters. Each
entry composes a few primitive operations of ``LabOps`` (implemented by the run driver,
lab/run.py, over lab/services.py, lab/fabric.py, the node runtimes and the Cells' APIs):

=================  ============================================================================
kind               real counterpart (apply / undo)
=================  ============================================================================
host-crash         SIGKILL the node's CNI agent and runtime, SIGKILL its pods' httpd and delete
                   their netns WITHOUT CNI DEL (addresses leak), node NotReady in its Cell's API /
                   OVS ports of the dead pods removed, agent + runtime restarted, node Ready
runtime-death      the runtime kills every pod (no CNI DEL) and is SIGKILLed / runtime restarted
cell-outage        the Cell's fabric patch cut, its API unreachable, its nodes' etcd links cut /
                   all three restored
etcd-slow          the selected clients' etcd links delay ``factor`` x the spec's etcd round trip
                   / links pass
etcd-unavailable   the selected clients' etcd links cut; without a target 2 of the 3 members
                   stopped (no quorum) / links pass, members started
reload-storm       ``changes`` domain changes through the control service within the duration
nginx-host-loss    SIGKILL the host's nginx and SLB agent; clients stop using it (DNS) / both
                   restarted, clients back
pool-exhaustion    a squatter claims all but ``free`` addresses through ``cni.ipam`` under its
                   own node name / gives them back
builder-crash      SIGKILL the build agents / restarted
bad-version        the platform app's version (``v<N>``, or "next": the first one numbered at or above
                   the app's ``next_version`` when the fault begins) answers 500 to ``error_rate``
                   of its requests: its pods' busybox httpd runs a CGI instead of the static page,
                   now and in pods started later (lab/replication.py ``set_errors``) / rate 0.
                   ``latency_factor`` has no lab counterpart (a lab pod answers in about a
                   millisecond: nothing to scale)
webhook-duplicate  none yet: the lab runs no GitLab pushes (a scenario's ``pushes:``); logged and
webhook-receiver-  skipped. tests/integration/test_webhook_e2e.py drives the real receiver with
crash              duplicates and a SIGKILL instead
=================  ============================================================================

Randomness: ``count``/``percent`` targets are drawn, in schedule order, from the run's
fault-target stream ``sim.adapters.runtime.seeded_stream(seed, "fault-targets")``, which
the sim's Region draws its fault targets from too (and nothing else draws from it): the same
scenario and seed pick the same targets in the lab as in the sim.

It must not know the checks or the report, nor how a primitive is carried out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.adapters.runtime import seeded_stream
from sim.faults import STORM_IN_FLIGHT, occurrences, select_targets
from sim.spec import FaultSpec, RegionSpec, Selector

log = logging.getLogger("leengine.lab.faults")

QUORUM_LOSS = 2  # etcd-unavailable without a target stops this many of the 3 members


class LabOps(Protocol):
    """The primitive operations faults compose; the run driver implements them (lab/run.py)."""

    spec: RegionSpec

    # nodes
    def node_alive(self, node: str) -> bool: ...
    def runtime_alive(self, node: str) -> bool: ...
    async def kill_node_processes(self, node: str) -> None: ...  # SIGKILL CNI agent + runtime
    async def kill_pods_hard(self, node: str) -> list[str]: ...  # SIGKILL httpd, delete netns, no CNI DEL
    async def set_node_ready(self, node: str, ready: bool) -> None: ...
    async def remove_dead_ports(self, node: str) -> int: ...
    async def start_node_processes(self, node: str) -> None: ...  # CNI agent + runtime
    async def runtime_kill_all(self, node: str) -> list[str]: ...  # pods killed by the runtime, then it dies
    async def start_runtime(self, node: str) -> None: ...
    def node_down(self, node: str, pods: list[str]) -> None: ...  # the controller: host gone
    def node_up(self, node: str) -> None: ...
    def runtime_down(self, node: str, pods: list[str]) -> None: ...
    def runtime_up(self, node: str) -> None: ...
    # Cells
    def cell_nodes(self, cell: str) -> list[str]: ...
    async def cut_fabric(self, cell: str) -> None: ...
    async def restore_fabric(self, cell: str) -> None: ...
    async def cut_api(self, cell: str) -> None: ...
    async def restore_api(self, cell: str) -> None: ...
    def cell_out(self, cell: str, out: bool) -> None: ...  # the controller stops/resumes reconciling it
    # etcd
    async def set_links(self, clients: list[str], state: str, seconds: float = 0.0) -> None: ...
    def etcd_members(self) -> list[str]: ...
    async def stop_member(self, name: str) -> None: ...
    async def start_member(self, name: str) -> None: ...
    # Nginx, domains
    def host_lost(self, host: str) -> bool: ...
    async def kill_nginx_host(self, host: str) -> None: ...
    async def start_nginx_host(self, host: str) -> None: ...
    def clients_use_host(self, host: str, use: bool) -> None: ...
    async def storm_change(self, app: str, n: int) -> bool: ...
    # pools, builds
    async def squat(self, pool: str, free: int) -> Any: ...
    async def unsquat(self, squatter: Any) -> None: ...
    async def kill_builder(self, host: str) -> None: ...
    async def break_version(self, app: str, version: str, error_rate: float) -> Any: ...  # "next" resolved inside
    async def mend_version(self, broken: Any) -> None: ...
    async def start_builder(self, host: str) -> None: ...


@dataclass(frozen=True)
class LabFault:
    """How a kind of fault breaks the lab, and how its end mends what it broke."""

    apply: Callable[[LabOps, FaultSpec, random.Random], Awaitable[Any]]
    undo: Callable[[LabOps, Any], Awaitable[None]] | None = None


# ------------------------------------------------------------------ targets


def select(spec: RegionSpec, fault: FaultSpec, rnd: random.Random) -> list[str]:
    """The names ``fault.target`` picks: ``sim.faults.select_targets``, the sim's one implementation."""
    return select_targets(spec, fault, rnd)


# ------------------------------------------------------------------ the kinds


async def _crash_hosts(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    nodes = [n for n in select(ops.spec, fault, rnd) if ops.node_alive(n)]
    for node in nodes:
        await ops.kill_node_processes(node)
        pods = await ops.kill_pods_hard(node)
        ops.node_down(node, pods)
        await ops.set_node_ready(node, False)
    return nodes


async def _return_hosts(ops: LabOps, nodes: list[str]) -> None:
    for node in nodes:
        await ops.remove_dead_ports(node)
        await ops.start_node_processes(node)
        await ops.set_node_ready(node, True)
        ops.node_up(node)


async def _kill_runtimes(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    nodes = [n for n in select(ops.spec, fault, rnd) if ops.node_alive(n) and ops.runtime_alive(n)]
    for node in nodes:
        pods = await ops.runtime_kill_all(node)
        ops.runtime_down(node, pods)
    return nodes


async def _restore_runtimes(ops: LabOps, nodes: list[str]) -> None:
    for node in nodes:
        await ops.remove_dead_ports(node)
        await ops.start_runtime(node)
        ops.runtime_up(node)


async def _cut_cells(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    cells = select(ops.spec, fault, rnd)
    for cell in cells:
        ops.cell_out(cell, True)
        await ops.cut_fabric(cell)
        await ops.cut_api(cell)
        await ops.set_links(ops.cell_nodes(cell), "cut")
    return cells


async def _restore_cells(ops: LabOps, cells: list[str]) -> None:
    for cell in cells:
        await ops.set_links(ops.cell_nodes(cell), "pass")
        await ops.restore_api(cell)
        await ops.restore_fabric(cell)
        ops.cell_out(cell, False)


async def _slow_etcd(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    # The sim multiplies the client's round trip (spec.etcd_latency) by ``factor``: the links
    # process holds each chunk that long, on top of loopback's own (tens of microseconds).
    clients = select(ops.spec, fault, rnd)
    await ops.set_links(clients, "delay", fault.factor * ops.spec.etcd_latency)
    return clients


async def _speed_etcd(ops: LabOps, clients: list[str]) -> None:
    await ops.set_links(clients, "pass")


@dataclass
class _EtcdCut:
    clients: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


async def _cut_etcd(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> _EtcdCut:
    """Without a target etcd itself goes down (quorum lost: 2 of 3 members stopped); else the clients are cut."""
    if fault.target == Selector():
        members = ops.etcd_members()[-QUORUM_LOSS:]
        for member in members:
            await ops.stop_member(member)
        return _EtcdCut(members=members)
    clients = select(ops.spec, fault, rnd)
    await ops.set_links(clients, "cut")
    return _EtcdCut(clients=clients)


async def _heal_etcd(ops: LabOps, cut: _EtcdCut) -> None:
    for member in cut.members:
        await ops.start_member(member)
    if cut.clients:
        await ops.set_links(cut.clients, "pass")


async def _reload_storm(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> asyncio.Task[int]:
    apps = select(ops.spec, fault, rnd)
    return asyncio.get_running_loop().create_task(storm(ops, fault, apps), name="lab/reload-storm")


async def storm(ops: LabOps, fault: FaultSpec, apps: list[str]) -> int:
    """``changes`` changes to the apps' domains spread evenly over the fault's duration; returns those made.

    Change ``i`` starts at ``i x gap`` whether or not the one before has finished (at most
    ``STORM_IN_FLIGHT`` at once, each a GetDomain + PutDomain of the control service; the sim's
    storm keeps the same schedule). Before, one after the other, a change's two gRPC calls (~0.1 s
    on a loaded machine, above the 0.06 s gap of 500 changes in 30 s) stretched the storm to twice
    its declared duration, and the Nginx hosts, reloading at most once a second, reloaded twice as
    often as the sim's hosts. The header value is ``i + 1`` (the sim counts on across storms).
    """
    if not apps or fault.changes <= 0:
        return 0
    gap = (fault.duration or 60.0) / fault.changes
    loop = asyncio.get_running_loop()
    start = loop.time()
    slots = asyncio.Semaphore(STORM_IN_FLIGHT)

    async def change(i: int) -> bool:
        async with slots:
            return await ops.storm_change(apps[i % len(apps)], i + 1)

    tasks = []
    for i in range(fault.changes):
        await asyncio.sleep(max(0.0, start + i * gap - loop.time()))
        tasks.append(loop.create_task(change(i), name=f"lab/storm-change-{i}"))
    try:
        made = sum(bool(ok) for ok in await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
    log.info("reload storm: %d of %d changes made in %.1f s (declared %.1f s)", made, fault.changes,
             loop.time() - start, fault.duration or 60.0)
    return made


async def _lose_nginx(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    hosts = [h for h in select(ops.spec, fault, rnd) if not ops.host_lost(h)]
    for host in hosts:
        ops.clients_use_host(host, False)
        await ops.kill_nginx_host(host)
    return hosts


async def _return_nginx(ops: LabOps, hosts: list[str]) -> None:
    for host in hosts:
        await ops.start_nginx_host(host)
        ops.clients_use_host(host, True)


async def _exhaust_pool(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> Any:
    return await ops.squat(fault.pool, fault.free)


async def _give_pool_back(ops: LabOps, squatter: Any) -> None:
    await ops.unsquat(squatter)


async def _crash_builders(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> list[str]:
    hosts = select(ops.spec, fault, rnd)
    for host in hosts:
        await ops.kill_builder(host)
    return hosts


async def _return_builders(ops: LabOps, hosts: list[str]) -> None:
    for host in hosts:
        await ops.start_builder(host)


async def _break_version(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> Any:
    return await ops.break_version(fault.app, fault.version, fault.error_rate)


async def _mend_version(ops: LabOps, broken: Any) -> None:
    await ops.mend_version(broken)


async def _no_hooks_in_the_lab(ops: LabOps, fault: FaultSpec, rnd: random.Random) -> None:
    """The lab sends no GitLab hooks yet (a scenario's ``pushes:`` are the sim's only): nothing to break."""
    log.warning("%s has no lab counterpart yet (the lab runs no GitLab pushes): skipped", fault.kind)


FAULTS: dict[str, LabFault] = {
    "host-crash": LabFault(_crash_hosts, _return_hosts),
    "runtime-death": LabFault(_kill_runtimes, _restore_runtimes),
    "cell-outage": LabFault(_cut_cells, _restore_cells),
    "etcd-slow": LabFault(_slow_etcd, _speed_etcd),
    "etcd-unavailable": LabFault(_cut_etcd, _heal_etcd),
    "reload-storm": LabFault(_reload_storm),
    "nginx-host-loss": LabFault(_lose_nginx, _return_nginx),
    "pool-exhaustion": LabFault(_exhaust_pool, _give_pool_back),
    "builder-crash": LabFault(_crash_builders, _return_builders),
    "bad-version": LabFault(_break_version, _mend_version),
    "webhook-duplicate": LabFault(_no_hooks_in_the_lab),  # the sim's only, for now (sim/webhooks.py)
    "webhook-receiver-crash": LabFault(_no_hooks_in_the_lab),
}


# ------------------------------------------------------------------ the schedule


@dataclass(frozen=True)
class FaultEvent:
    """One thing the schedule did, for the report and the checks: a fault applied or undone."""

    at: float  # seconds from the run's start, as measured
    kind: str
    what: str  # "apply" | "undo" | "failed" | "done" (a storm's end)
    detail: str = ""


@dataclass
class Schedule:
    """Runs every fault of a spec on real time (``t0``: the loop time of the run's start)."""

    ops: LabOps
    t0: float
    seed: int
    events: list[FaultEvent] = field(default_factory=list)
    windows: list[tuple[float, float, str]] = field(default_factory=list)  # (start, declared end, kind)

    def __post_init__(self) -> None:
        self.rnd = seeded_stream(self.seed, "fault-targets")  # the sim's very stream: see the docstring
        self._undos: list[asyncio.Task[None]] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def run(self) -> None:
        """Every occurrence of every fault, in time order (ties: the spec's order), undos at their ends."""
        spec = self.ops.spec
        plan = sorted(((at, i, f) for i, f in enumerate(spec.faults) for at in occurrences(f, spec.duration)),
                      key=lambda x: (x[0], x[1]))
        for at, _, fault in plan:
            await asyncio.sleep(max(0.0, at - self.now()))
            end = at + (fault.duration or 0.0)
            self.windows.append((at, end, fault.kind))
            kind = FAULTS[fault.kind]
            try:
                broken = await kind.apply(self.ops, fault, self.rnd)
            except Exception as exc:  # a primitive failed: recorded, the run goes on (the verdicts will show it)
                log.exception("fault %s at %s failed", fault.kind, at)
                self.events.append(FaultEvent(self.now(), fault.kind, "failed", f"{type(exc).__name__}: {exc}"))
                continue
            self.events.append(FaultEvent(self.now(), fault.kind, "apply", describe(broken)))
            if isinstance(broken, asyncio.Task):  # a storm runs on: when it ended and what it made
                broken.add_done_callback(self._on_done(fault.kind))
            if fault.duration is not None and kind.undo is not None:
                self._undos.append(asyncio.get_running_loop().create_task(
                    self._undo_at(fault, kind.undo, broken, end), name=f"lab/undo-{fault.kind}"))

    def _on_done(self, kind: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            detail = ("cancelled" if task.cancelled() else f"{task.exception()!r}" if task.exception() is not None
                      else f"{task.result()} changes made")
            self.events.append(FaultEvent(self.now(), kind, "done", detail))
        return done

    async def _undo_at(self, fault: FaultSpec, undo: Callable[[LabOps, Any], Awaitable[None]], broken: Any,
                       end: float) -> None:
        await asyncio.sleep(max(0.0, end - self.now()))
        try:
            await undo(self.ops, broken)
        except Exception as exc:
            log.exception("undo of %s failed", fault.kind)
            self.events.append(FaultEvent(self.now(), fault.kind, "failed", f"undo: {type(exc).__name__}: {exc}"))
            return
        self.events.append(FaultEvent(self.now(), fault.kind, "undo", describe(broken)))

    async def finish(self) -> None:
        """Cancel the undos not yet due: the run has ended (``lab down`` mends what they would have)."""
        for task in self._undos:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def describe(broken: Any) -> str:
    if isinstance(broken, list):
        return ", ".join(str(b) for b in broken[:10]) + (f" (+{len(broken) - 10})" if len(broken) > 10 else "")
    if isinstance(broken, _EtcdCut):
        return "members " + ", ".join(broken.members) if broken.members else ", ".join(broken.clients)
    return type(broken).__name__


def broken_to_json(broken: Any) -> Any:
    """What a fault broke, as JSON (for a fault applied by hand and undone later: lab/hand.py)."""
    if isinstance(broken, _EtcdCut):
        return {"clients": list(broken.clients), "members": list(broken.members)}
    if isinstance(broken, list) and all(isinstance(b, str) for b in broken):
        return list(broken)
    return None  # nothing an undo needs (a squatter is recorded by its owner)


def broken_from_json(kind: str, data: Any) -> Any:
    """The inverse of ``broken_to_json`` for ``kind``; ``ValueError`` when ``data`` is not what it wrote."""
    if kind == "etcd-unavailable":
        if not isinstance(data, dict):
            raise ValueError("etcd-unavailable: no clients/members recorded")
        clients, members = data.get("clients", []), data.get("members", [])
        if not all(isinstance(x, str) for x in [*clients, *members]):
            raise ValueError("etcd-unavailable: clients and members are names")
        return _EtcdCut(list(clients), list(members))
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError(f"{kind}: the record is not a list of names")
    return list(data)
