"""Faults of a simulated Region: one table, kind -> (apply, undo), and the schedule that runs them.

``FAULTS[kind].apply(region, fault)`` selects the fault's targets (``select``: the
spec's selector over ``sim.targets.target_universe``, count and percent drawn from
``runtime.random``), breaks them through the symmetric pairs of the sim adapters and the
Kubernetes emulation (``partition``/``heal``, ``slow_down``/``speed_up``,
``crash_host``/``return_host``, ``cut_cell``/``restore_cell``, ``lose``/``restore``,
``crash``/``come_back``) and returns what it broke; ``undo(region, that)`` mends exactly
that, at the fault's declared end. A kind without an undo (``reload-storm``: a burst of
changes) just ends. Adding a fault kind is one entry here plus its line in sim/spec.py
(``FaultKind``, ``FAULT_TARGETS``, ``FAULT_PARAMS``); tests/sim/test_world_tables.py
holds the table and the spec to one set of kinds.

Overlapping faults stack in the adapters (a client reconnects when the last partition
that cut it ends). ``pool-exhaustion`` brings a squatter: an ``Ipam`` of its own that
takes every free address of the pool but ``free``, and gives them back at the end.
``bad-version`` makes a platform app's version (``version``, or "next": the first one
deployed after the fault begins) answer ``error_rate`` of its requests with 5xx, and
``latency_factor`` times slower, until its end (``sim.traffic.BadVersion``).
``webhook-duplicate`` and ``webhook-receiver-crash`` switch GitLab's duplicates and the hook
receiver's deaths on and off in ``sim.webhooks.Webhooks`` (a Region with pushes).
It must not know the checks or the report, nor import real adapters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cni.ipam import Ipam, IpamError
from control.slb_core import SlbError
from foundation.ports import StoreError
from sim.adapters.store import SimStoreClient
from sim.spec import AppSpec, FaultSpec, RegionSpec, Selector
from sim.targets import matches, target_universe
from sim.topology import ADMIN, Cell, NginxHost, Node
from sim.traffic import BadVersion

if TYPE_CHECKING:
    from sim.world import Region


@dataclass(frozen=True)
class Fault:
    """How a kind of fault breaks the Region, and how its end mends what it broke."""

    apply: Callable[[Region, FaultSpec], Awaitable[Any]]  # returns what it broke, for undo
    undo: Callable[[Region, Any], Awaitable[None]] | None = None


# ------------------------------------------------------------------ targets


class Sampler(Protocol):
    """What target selection draws from: ``random.Random.sample``."""

    def sample(self, population: Sequence[str], k: int) -> list[str]: ...


def select(region: Region, fault: FaultSpec) -> list[str]:
    """The names ``fault.target`` picks among its kind's targets (see ``sim.targets.target_universe``).

    Drawn from the Region's own fault-target stream (``sim.adapters.runtime.seeded_stream``), which the
    lab's driver draws from too: the same scenario and seed pick the same targets in both.
    """
    return select_targets(region.spec, fault, region.fault_targets)


def select_targets(spec: RegionSpec, fault: FaultSpec, rnd: Sampler) -> list[str]:
    """``select`` for any spec and random stream (the sim's and the lab's one implementation)."""
    selector = fault.target
    universe = target_universe(fault.kind, spec.cells, spec.groups, spec.apps, fault.group, spec.build_hosts)
    names = [name for name, labels in universe if matches(selector, name, labels)]
    k = len(names)
    if selector.count is not None:
        k = min(k, selector.count)
    if selector.percent is not None:
        k = min(k, math.ceil(len(names) * selector.percent / 100.0))
    if k < len(names):
        chosen = set(rnd.sample(names, k))
        names = [n for n in names if n in chosen]
    return names


def _clients(region: Region, fault: FaultSpec) -> list[SimStoreClient]:
    """The etcd clients a fault selects: nodes' CNI agents, Nginx hosts' SLB agents, the control plane's.
    Without a target: every client (a squatter's too)."""
    if fault.target == Selector():
        return list(region.clients.values())
    return [region.clients[name] for name in select(region, fault)]


# ------------------------------------------------------------------ the kinds


async def _crash_hosts(region: Region, fault: FaultSpec) -> list[Node]:
    nodes = [n for n in (region.nodes[name] for name in select(region, fault)) if n.alive]
    for node in nodes:
        region.kube.crash_host(node)
    return nodes


async def _return_hosts(region: Region, nodes: list[Node]) -> None:
    for node in nodes:
        region.kube.return_host(node)


async def _kill_runtimes(region: Region, fault: FaultSpec) -> list[Node]:
    nodes = [n for n in (region.nodes[name] for name in select(region, fault)) if n.alive and n.runtime_ok]
    for node in nodes:
        region.kube.kill_runtime(node)
    return nodes


async def _restore_runtimes(region: Region, nodes: list[Node]) -> None:
    for node in nodes:
        region.kube.restore_runtime(node)


async def _cut_cells(region: Region, fault: FaultSpec) -> list[Cell]:
    cells = [region.cells[name] for name in select(region, fault)]
    for cell in cells:
        region.kube.cut_cell(cell)
    return cells


async def _restore_cells(region: Region, cells: list[Cell]) -> None:
    for cell in cells:
        region.kube.restore_cell(cell)


async def _slow_etcd(region: Region, fault: FaultSpec) -> tuple[float, list[SimStoreClient]]:
    clients = _clients(region, fault)
    for client in clients:
        client.slow_down(fault.factor)
    return fault.factor, clients


async def _speed_etcd(region: Region, slowed: tuple[float, list[SimStoreClient]]) -> None:
    factor, clients = slowed
    for client in clients:
        client.speed_up(factor)


async def _cut_etcd(region: Region, fault: FaultSpec) -> list[SimStoreClient] | None:
    """Without a target the server itself goes down (``None``); else the selected clients are partitioned."""
    if fault.target == Selector():
        region.store.set_available(False)
        return None
    clients = _clients(region, fault)
    for client in clients:
        client.partition()
    return clients


async def _heal_etcd(region: Region, cut: list[SimStoreClient] | None) -> None:
    if cut is None:
        region.store.set_available(True)
        return
    for client in cut:
        client.heal()


async def _reload_storm(region: Region, fault: FaultSpec) -> None:
    region.runtime.spawn(_storm(region, fault), name="region/reload-storm")


STORM_IN_FLIGHT = 16  # a storm's changes in flight at once, here and in the lab (lab/faults.py)


async def _storm(region: Region, fault: FaultSpec) -> None:
    """``changes`` header changes to the selected apps' domains, spread evenly over the fault's duration.

    Change ``i`` starts at ``i x gap`` whether or not the one before has finished (at most
    ``STORM_IN_FLIGHT`` at once): the lab's storm's schedule. Before, one after the other, the
    storm's changes each waited for the one before's round trips to slb-core and etcd, so a
    slower store stretched the storm past its declared end and the hosts reloaded more (with the
    lab's measured 4 ms reads and 6 ms writes the sim's storm made 100 reloads, the lab's 84-90).
    The schedule holds while a change takes under 16 gaps (the 16 slots are then never all busy).
    """
    chosen = set(select(region, fault))
    apps = [a for a in region.spec.apps if a.name in chosen]
    if not apps or fault.changes <= 0:
        return
    gap = (fault.duration or 60.0) / fault.changes
    runtime = region.runtime
    start = runtime.now()
    slots = runtime.queue()  # a semaphore of STORM_IN_FLIGHT tokens
    for _ in range(STORM_IN_FLIGHT):
        slots.put_nowait(None)

    async def change(app: AppSpec, number: int) -> None:
        await slots.get()
        try:
            stored = await region.slb.get_domain(ADMIN, app.group, region.domains[app.name])
            data = stored.domain.to_json()
            data["locations"][0]["set_headers"] = {"X-Sim-Storm": str(number)}
            await region.slb.put_domain(ADMIN, data, expected_revision=stored.revision)
        except (SlbError, StoreError) as exc:  # a lost race with discovery: that change is skipped
            runtime.trace("storm-change-skipped", error=type(exc).__name__)
        finally:
            slots.put_nowait(None)

    for i in range(fault.changes):
        await runtime.sleep(max(0.0, start + i * gap - runtime.now()))
        region.storm_changes += 1
        runtime.spawn(change(apps[i % len(apps)], region.storm_changes), name=f"region/storm-change-{i}")


async def _lose_nginx(region: Region, fault: FaultSpec) -> list[NginxHost]:
    hosts = [h for h in (region.hosts[name] for name in select(region, fault)) if not h.lost]
    for host in hosts:
        host.lose()
        region.traffic.touch_group(host.group)
    return hosts


async def _return_nginx(region: Region, hosts: list[NginxHost]) -> None:
    for host in hosts:
        host.restore()
        region.traffic.touch_group(host.group)
        region.start_slb_agent(host)


@dataclass
class _Squatter:
    ipam: Ipam
    taken: list[str]  # its containers, in the order it took their addresses


async def _exhaust_pool(region: Region, fault: FaultSpec) -> _Squatter:
    """A squatter takes every free address of the pool but ``free`` (handles without a pod)."""
    pool = region.pools[fault.pool]
    region.squatters += 1
    n_squatter = region.squatters
    squatter = _Squatter(Ipam(region.client(f"squatter-{n_squatter}"), region.runtime, f"squatter-{n_squatter}",
                              cooldown=region.spec.cooldown, metrics=region.agent_metrics), [])

    async def take(container: str) -> None:
        try:
            await squatter.ipam.allocate(container, "eth0", pools=[pool.name])
            squatter.taken.append(container)
        except (IpamError, StoreError):
            pass

    want = pool.capacity() - region.auditor.allocated.get(pool.name, 0) - fault.free
    n = 0
    while want > 0:
        chunk = min(want, 256)
        tasks = [region.runtime.spawn(take(f"squat-{n_squatter}-{n + i}"), name="squatter") for i in range(chunk)]
        for task in tasks:
            await task.join()
        n += chunk
        want -= chunk
    return squatter


async def _give_pool_back(region: Region, squatter: _Squatter) -> None:
    async def give_back(container: str) -> None:
        with contextlib.suppress(IpamError, StoreError):
            await squatter.ipam.release(container, "eth0")

    taken = squatter.taken
    for start in range(0, len(taken), 256):  # as the squatter took them: batches in parallel
        tasks = [region.runtime.spawn(give_back(c), name="squatter") for c in taken[start:start + 256]]
        for task in tasks:
            await task.join()


async def _crash_builders(region: Region, fault: FaultSpec) -> list[Any]:
    return region.farm.crash(select(region, fault))


async def _return_builders(region: Region, crashed: list[Any]) -> None:
    region.farm.come_back(crashed)


async def _break_version(region: Region, fault: FaultSpec) -> BadVersion:
    bad = BadVersion(fault.app, fault.version, fault.error_rate, fault.latency_factor)
    region.traffic.set_bad(bad)
    region.runtime.trace("bad-version", app=fault.app, version=fault.version, error_rate=fault.error_rate)
    return bad


async def _mend_version(region: Region, bad: BadVersion) -> None:
    region.traffic.clear_bad(bad)


async def _duplicate_hooks(region: Region, fault: FaultSpec) -> Any:
    if region.webhooks is None:  # no pushes: no hook to duplicate (the parser refuses such a scenario)
        return None
    return region.webhooks.duplicate(select(region, fault), fault.deliveries)


async def _single_hooks(region: Region, dup: Any) -> None:
    if region.webhooks is not None and dup is not None:
        region.webhooks.stop_duplicating(dup)


async def _crash_receiver(region: Region, fault: FaultSpec) -> Any:
    return region.webhooks.crash_receiver(fault) if region.webhooks is not None else None


async def _restart_receiver(region: Region, crash: Any) -> None:
    if region.webhooks is not None and crash is not None:
        region.webhooks.mend_receiver(crash)


FAULTS: dict[str, Fault] = {
    "host-crash": Fault(_crash_hosts, _return_hosts),
    "runtime-death": Fault(_kill_runtimes, _restore_runtimes),
    "cell-outage": Fault(_cut_cells, _restore_cells),
    "etcd-slow": Fault(_slow_etcd, _speed_etcd),
    "etcd-unavailable": Fault(_cut_etcd, _heal_etcd),
    "reload-storm": Fault(_reload_storm),
    "nginx-host-loss": Fault(_lose_nginx, _return_nginx),
    "pool-exhaustion": Fault(_exhaust_pool, _give_pool_back),
    "builder-crash": Fault(_crash_builders, _return_builders),
    "bad-version": Fault(_break_version, _mend_version),
    "webhook-duplicate": Fault(_duplicate_hooks, _single_hooks),  # sim/webhooks.py
    "webhook-receiver-crash": Fault(_crash_receiver, _restart_receiver),
}


# ------------------------------------------------------------------ the schedule


def occurrences(fault: FaultSpec, duration: float) -> list[float]:
    """When a fault starts within a run of ``duration`` (once, or every ``every`` seconds)."""
    if fault.every is None or fault.every <= 0:
        return [fault.at] if fault.at < duration else []
    return [fault.at + k * fault.every for k in range(int((duration - fault.at) // fault.every) + 1)
            if fault.at + k * fault.every < duration]


def last_fault_end(faults: tuple[FaultSpec, ...], duration: float) -> float:
    """The declared end of the last fault (0 without faults): the liveness deadlines count from it."""
    ends = [at + (f.duration or 0.0) for f in faults for at in occurrences(f, duration)]
    return max(ends, default=0.0)


async def run_fault(region: Region, fault: FaultSpec) -> None:
    """Apply the fault at its time (and every ``every`` seconds), each time with its undo at the declared end."""
    rt = region.runtime
    kind = FAULTS[fault.kind]
    at = fault.at
    while at < region.spec.duration:
        await rt.sleep(max(0.0, at - rt.now()))
        end = at + (fault.duration or 0.0)
        region.fault_windows.append((at, end, fault.kind))
        broken = await kind.apply(region, fault)
        rt.trace("fault", kind=fault.kind, at=at, duration=fault.duration)
        if fault.duration is not None and kind.undo is not None:
            rt.spawn(_undo_at(region, fault, kind.undo, broken, end), name=f"region/undo-{fault.kind}")
        if fault.every is None:
            return
        at += fault.every


async def _undo_at(region: Region, fault: FaultSpec, undo: Callable[[Region, Any], Awaitable[None]], broken: Any,
                   end: float) -> None:
    # Until the declared end in absolute time: applying a fault may itself take time
    # (a squatter filling a pool), and the liveness deadlines count from the declared end.
    await region.runtime.sleep(max(0.0, end - region.runtime.now()))
    await undo(region, broken)
    region.runtime.trace("fault-ended", kind=fault.kind)
