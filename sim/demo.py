"""The spine's demo world: simulated nodes claiming and releasing keys through the sim Store.

Fifty nodes (by default) each join under a lease, then claim and release slots
by compare-and-swap (``foundation.logic.claims``).
Some nodes crash: they stop without releasing anything, and their claims vanish
only when their lease expires. Some nodes lose etcd for a while: their requests
time out with ``StoreUnavailable``, and if the partition outlasts the lease they
rejoin with a new one. An auditor watches every slot and counts a safety
violation whenever a slot gains a second owner while the first still holds it.

It exercises the runtime bridge, the MVCC store, watches, leases, faults and the
trace; the simulated-Region issue replaces it as the main job with scenario
replays. It must not know any real adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from foundation.logic.claims import LeasedMembership, claim, release
from foundation.ports import LeaseNotFound, Runtime, Store, StoreUnavailable
from sim.adapters.runtime import SimRuntime, SimTask
from sim.adapters.store import MemoryStore, SimStoreClient

SLOTS = "/demo/slots/"
NODES = "/demo/nodes/"


@dataclass(frozen=True)
class DemoConfig:
    nodes: int = 50
    slots: int = 200
    duration: float = 600.0  # virtual seconds
    seed: int = 1
    lease_ttl: int = 10
    latency: float = 0.002  # etcd round trip, seconds
    jitter: float = 0.002
    crashes: int = 5  # nodes that die without releasing their claims
    partitions: int = 5  # nodes that lose etcd for `partition_length` seconds
    partition_length: float = 30.0

    def __post_init__(self) -> None:
        for name in ("nodes", "slots", "lease_ttl"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("duration", "latency", "jitter", "partition_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.crashes + self.partitions > self.nodes:
            raise ValueError(f"crashes + partitions ({self.crashes + self.partitions}) exceed nodes ({self.nodes})")


@dataclass
class DemoStats:
    attempts: int = 0
    wins: int = 0
    conflicts: int = 0
    releases: int = 0
    unavailable_errors: int = 0
    rejoins: int = 0
    crashed_nodes: int = 0
    claims_freed_by_lease_expiry: int = 0
    watch_events: int = 0
    max_slots_held: int = 0
    safety_violations: int = 0
    violations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DemoReport:
    config: DemoConfig
    stats: DemoStats
    virtual_seconds: float
    final_revision: int
    store_writes: int
    trace_events: int
    trace_sha256: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stats"].pop("violations")
        return data


async def claiming_node(name: str, store: Store, runtime: Runtime, slots: int, ttl: int, stats: DemoStats) -> None:
    """One node: join under a lease, then claim and release slots until cancelled (crash)."""
    owner = name.encode()
    membership = LeasedMembership(store, runtime, f"{NODES}{name}", b"up", ttl=ttl)
    while True:
        try:
            await membership.join()
            break
        except StoreUnavailable:
            stats.unavailable_errors += 1
    keeper = runtime.spawn(membership.keep_alive(), name=f"{name}/keepalive")
    held: list[str] = []
    try:
        while True:
            await runtime.sleep(runtime.random.expovariate(1.0))
            if membership.lost.is_set():
                # Our lease expired while etcd was out of reach: our claims are gone with it.
                held.clear()
                membership = LeasedMembership(store, runtime, f"{NODES}{name}", b"up", ttl=ttl)
                try:
                    await membership.join()
                except StoreUnavailable:
                    stats.unavailable_errors += 1
                    membership.lost.set()
                    continue
                stats.rejoins += 1
                keeper = runtime.spawn(membership.keep_alive(), name=f"{name}/keepalive")
            try:
                if held and runtime.random.random() < 0.5:
                    key = held.pop(runtime.random.randrange(len(held)))
                    if await release(store, key, owner):
                        stats.releases += 1
                else:
                    key = f"{SLOTS}{runtime.random.randrange(slots):05d}"
                    stats.attempts += 1
                    if await claim(store, key, owner, lease=membership.lease_id):
                        stats.wins += 1
                        held.append(key)
                    else:
                        stats.conflicts += 1
            except StoreUnavailable:
                stats.unavailable_errors += 1
            except LeaseNotFound:
                # The lease expired before our keepalive noticed (a partition just shorter
                # than the keepalive's patience): treat it as lost, rejoin next round.
                membership.lost.set()
    finally:
        keeper.cancel()


async def auditor(store: Store, runtime: Runtime, stats: DemoStats) -> None:
    """Watch every slot; a put on a slot that already has an owner is a safety violation."""
    owners: dict[str, bytes] = {}
    async with store.watch(SLOTS, start_revision=1) as watch:
        async for event in watch:
            stats.watch_events += 1
            key = event.kv.key
            if event.type == "put":
                if key in owners:
                    stats.safety_violations += 1
                    stats.violations.append(f"rev {event.revision}: {key} owned by {owners[key]!r}, "
                                            f"claimed by {event.kv.value!r}")
                owners[key] = event.kv.value
                stats.max_slots_held = max(stats.max_slots_held, len(owners))
            else:
                owners.pop(key, None)


async def _fault_schedule(config: DemoConfig, runtime: SimRuntime, nodes: list[SimTask], clients: list[SimStoreClient],
                          stats: DemoStats) -> None:
    """Crash some nodes and partition others at seeded random times."""
    order = list(range(config.nodes))
    runtime.random.shuffle(order)
    crash = order[: config.crashes]
    cut = order[config.crashes : config.crashes + config.partitions]
    events = [(runtime.random.uniform(0.1, 0.8) * config.duration, "crash", i) for i in crash]
    events += [(runtime.random.uniform(0.1, 0.6) * config.duration, "partition", i) for i in cut]
    for at, kind, i in sorted(events):
        await runtime.sleep(max(0.0, at - runtime.now()))
        runtime.trace("fault", kind=kind, node=i)
        if kind == "crash":
            nodes[i].cancel()
            stats.crashed_nodes += 1
        else:
            clients[i].partition()
            runtime.spawn(_heal_later(runtime, clients[i], config.partition_length), name=f"heal-{i}")


async def _heal_later(runtime: SimRuntime, client: SimStoreClient, after: float) -> None:
    await runtime.sleep(after)
    client.heal()
    runtime.trace("fault-healed", client=client.name)


def run_demo(config: DemoConfig, *, keep_trace_lines: bool = False) -> tuple[DemoReport, SimRuntime]:
    runtime = SimRuntime(config.seed, keep_trace_lines=keep_trace_lines)
    server = MemoryStore(runtime)
    stats = DemoStats()
    clients = [server.client(f"node-{i:03d}", latency=config.latency, jitter=config.jitter, timeout=2.0)
               for i in range(config.nodes)]
    runtime.spawn(auditor(server.client("auditor"), runtime, stats), name="auditor")
    nodes = [
        runtime.spawn(claiming_node(c.name, c, runtime, config.slots, config.lease_ttl, stats), name=c.name)
        for c in clients
    ]
    runtime.spawn(_fault_schedule(config, runtime, nodes, clients, stats), name="faults")

    runtime.run(until=config.duration)
    # Claims freed by lease expiry = slots deleted without a release: count from the store's own history.
    stats.claims_freed_by_lease_expiry = sum(
        1 for e in server.history() if e.type == "delete" and e.kv.key.startswith(SLOTS)
    ) - stats.releases
    report = DemoReport(
        config=config,
        stats=stats,
        virtual_seconds=runtime.now(),
        final_revision=server.revision,
        store_writes=server.writes,
        trace_events=runtime.trace_log.count,
        trace_sha256=runtime.trace_log.sha256,
    )
    return report, runtime
