"""What cnictl does, as pure logic over the Store, Cluster and Runtime ports.

* ``add_pool``: a new pool, refused when its CIDR overlaps an existing pool.
  Concurrent adds cannot both pass the overlap check: each commits only if the
  pool epoch key is unchanged since it read the pools.
* ``pool_usage``: capacity, allocated addresses and claimed blocks per pool and per node.
* ``check_leaks``: allocated addresses whose pod the Cluster no longer has (or
  has with another UID, another address or on another node). A leak is first a
  *suspect*; seen again at least ``grace`` seconds later for the same handle, it
  becomes *certain*. Suspects are kept under ``/ipam/leaks/`` so that checks run
  by cron, minutes apart, build on each other.
* ``release_address``: free one address by a CAS on its block, only once the
  Cluster shows that no pod holds it (no pod has that address, and the handle's
  pod is gone, recreated or elsewhere, as ``check_leaks`` judges) unless forced:
  freeing a live pod's address would hand it to a second pod.
* ``release_certain``: free every certain leak, each by a CAS on the block that
  also checks the address still belongs to the handle the check saw, so an
  address reused meanwhile is never freed.
* ``gc``: delete empty blocks of nodes that left the Cluster and records that
  point at nothing.

Every record read back from the Store is decoded defensively: one that does not
decode (deeply nested JSON, wrong types, ``InvalidRecord`` from ``cni/pools.py``)
is reported in the result (``InvalidKey``) and skipped, never a traceback; what
cannot be judged safely without it is not done (gc removes no stray handle while
a block is unreadable; a pool cannot be added while a pool record is unreadable,
since the overlap check would be blind). Durations (``grace``, ``cooldown``) must be
finite and >= 0.

Metrics (an optional ``metrics``, the Metrics port): ``pool_usage`` sets each pool's size;
``check_leaks`` sets the suspect and certain leaks of every pool it saw (a block, or a
leak record, of that pool; 0 when none); ``release_address`` counts each address it
freed (``release_certain`` frees through it). Nothing more is read for them.

It must not know about the CLI, etcd, Kubernetes client libraries or Prometheus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from cni.pools import (
    BLOCKS,
    HANDLES,
    LEAKS,
    POOL_NAME,
    POOLS,
    Block,
    Handle,
    Pool,
    PoolConfigError,
    block_key,
    handle_key,
    parse_address,
)
from foundation.ports import Compare, DeleteOp, KeyValue, PutOp, Runtime, Store
from foundation.ports.cluster import PodInfo, PodInventory
from foundation.ports.metrics import (
    IPAM_GC_CANDIDATES,
    IPAM_GC_RECLAMATIONS,
    IPAM_IPPOOL_SIZE,
    IPAM_LEAKS_CERTAIN,
    NO_METRICS,
    Metrics,
)
from foundation.ports.store import TxnOp

POOL_EPOCH = "/ipam/pool-epoch"
MAX_DURATION = 7 * 86400.0  # a grace or cool-down longer than a week is a typo, and sleep(inf) never returns


class AdminError(Exception):
    """An operator's request that cannot be carried out; the message says why."""


class ReleaseRefused(AdminError):
    """``release_address`` found the address still in use by a pod (or could not tell) and freed nothing."""


@dataclass(frozen=True)
class InvalidKey:
    """A record that could not be decoded: reported and skipped."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"invalid record {self.key}: {self.reason}"


_REASON_MAX = 200


def _decode(kv: KeyValue, decode: Callable[[bytes], Any], invalid: list[InvalidKey] | None) -> Any:
    """``decode(kv.value)``, or None after noting the key in ``invalid``: any failure is the record's fault."""
    try:
        return decode(kv.value)
    except Exception as exc:  # RecursionError, InvalidRecord, KeyError, TypeError, ... all mean "bad record"
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        if len(reason) > _REASON_MAX:
            reason = reason[:_REASON_MAX] + "..."
        if invalid is not None:
            invalid.append(InvalidKey(kv.key, reason))
        return None


def _leak_record(raw: bytes) -> dict[str, Any]:
    record = json.loads(raw)
    if not isinstance(record, dict) or not isinstance(record.get("handle"), str) \
            or not _is_duration(record.get("first_seen"), limit=float("inf")) or "certain" not in record:
        raise ValueError("not a leak record {handle, first_seen, certain, pool}")
    return record


def _is_duration(value: Any, *, limit: float = MAX_DURATION) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= limit)


def check_duration(name: str, value: Any) -> float:
    """``value`` as seconds, or ``AdminError`` naming ``name``: finite, >= 0, at most a week."""
    if not _is_duration(value):
        raise AdminError(f"{name} must be a number of seconds from 0 to {MAX_DURATION:g}, got {value!r}")
    return float(value)


# ------------------------------------------------------------------ pools


async def add_pool(store: Store, pool: Pool) -> int:
    """Create ``pool``; return the revision. ``PoolConfigError`` on a clash."""
    for _ in range(16):
        epoch = await store.get(POOL_EPOCH)
        existing = await store.range(POOLS)
        for kv in existing.kvs:
            bad: list[InvalidKey] = []
            other = _decode(kv, Pool.from_bytes, bad)
            if other is None:
                # Its CIDR and VLAN are unknown: adding now could overlap it.
                raise AdminError(f"{bad[0]}; cannot check the new pool against it: fix or delete that record first")
            if other.name == pool.name:
                raise PoolConfigError("pool name", f"pool {pool.name} already exists ({other.cidr})")
            if other.overlaps(pool):
                raise PoolConfigError("cidr", f"{pool.cidr} overlaps pool {other.name} ({other.cidr})")
            if other.vlan == pool.vlan:
                # One VLAN per pool keeps each pool its own broadcast domain, as the platform wants.
                raise PoolConfigError("vlan", f"VLAN {pool.vlan} is already used by pool {other.name}")
        result = await store.txn(
            [Compare.mod_is(POOL_EPOCH, epoch.mod_revision if epoch else 0), Compare.missing(pool.key)],
            [PutOp(pool.key, pool.to_bytes()), PutOp(POOL_EPOCH, pool.name.encode())],
        )
        if result.succeeded:
            return result.revision
    raise AdminError("pools kept changing while adding; try again")


async def list_pools(store: Store, invalid: list[InvalidKey] | None = None) -> list[Pool]:
    """Every pool whose record decodes; the others are appended to ``invalid``."""
    decoded = (_decode(kv, Pool.from_bytes, invalid) for kv in (await store.range(POOLS)).kvs)
    return [pool for pool in decoded if pool is not None]


@dataclass
class NodeUsage:
    blocks: int = 0
    allocated: int = 0


@dataclass
class PoolUsage:
    pool: Pool
    capacity: int
    allocated: int = 0
    blocks_claimed: int = 0
    nodes: dict[str, NodeUsage] = field(default_factory=dict)

    @property
    def blocks_total(self) -> int:
        return self.pool.block_count

    @property
    def utilisation(self) -> float:
        return self.allocated / self.capacity if self.capacity else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.name, "cidr": str(self.pool.cidr), "vlan": self.pool.vlan,
                "gateway": str(self.pool.gateway), "block_size": self.pool.block_size,
                "capacity": self.capacity, "allocated": self.allocated, "utilisation": round(self.utilisation, 4),
                "blocks_claimed": self.blocks_claimed, "blocks_total": self.blocks_total,
                "nodes": {n: {"blocks": u.blocks, "allocated": u.allocated} for n, u in sorted(self.nodes.items())}}


async def pool_usage(store: Store, invalid: list[InvalidKey] | None = None, *,
                     metrics: Metrics = NO_METRICS) -> list[PoolUsage]:
    """Usage of every pool; records that do not decode are appended to ``invalid`` and not counted."""
    pools = await list_pools(store, invalid)
    for pool in pools:
        metrics.set(IPAM_IPPOOL_SIZE, pool.capacity(), pool=pool.name)
    usage = {p.name: PoolUsage(p, p.capacity()) for p in pools}
    for kv in (await store.range(BLOCKS)).kvs:
        block = _decode(kv, Block.from_bytes, invalid)
        if block is None:
            continue
        entry = usage.get(block.pool)
        if entry is None:
            continue
        node = entry.nodes.setdefault(block.node, NodeUsage())
        node.blocks += 1
        node.allocated += len(block.allocations)
        entry.blocks_claimed += 1
        entry.allocated += len(block.allocations)
    return list(usage.values())


# ------------------------------------------------------------------ leaks


@dataclass(frozen=True)
class Leak:
    address: str
    pool: str
    node: str  # the node the address was given on (not necessarily the owner of its block)
    handle: str
    pod: str
    reason: str
    first_seen: float
    certain: bool

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "pool": self.pool, "node": self.node, "handle": self.handle,
                "pod": self.pod, "reason": self.reason, "first_seen": self.first_seen,
                "state": "certain" if self.certain else "suspect"}


@dataclass(frozen=True)
class CheckReport:
    checked: int  # allocations looked at
    leaks: tuple[Leak, ...]
    at: float
    invalid: tuple[InvalidKey, ...] = ()  # records skipped: their allocations were not judged

    @property
    def certain(self) -> tuple[Leak, ...]:
        return tuple(leak for leak in self.leaks if leak.certain)


def _why_leaked(handle: Handle | None, address: IPv4Address, pods: dict[tuple[str, str], PodInfo]) -> str | None:
    """Why this allocation has no live pod, or None when it does."""
    if handle is None:
        return None  # allocated after we read the handles: block and handle change together, so it is new
    if not handle.pod.name:
        return None  # not given to a Kubernetes pod (no K8S_POD_NAME): not ours to judge
    pod = pods.get((handle.pod.namespace, handle.pod.name))
    if pod is None:
        return f"pod {handle.pod} no longer exists"
    if handle.pod.uid and pod.uid and pod.uid != handle.pod.uid:
        return f"pod {handle.pod} was recreated (uid {pod.uid})"
    if handle.ifname == "eth0" and pod.ip and pod.ip != str(address):
        # The API shows the primary interface's address only: other interfaces cannot be judged by it.
        return f"pod {handle.pod} now has address {pod.ip}"
    if pod.node and pod.node != handle.node:
        return f"pod {handle.pod} now runs on {pod.node}"
    return None


def _leak_key(address: str) -> str:
    return f"{LEAKS}{address}"


async def check_leaks(store: Store, cluster: PodInventory, runtime: Runtime, *, grace: float,
                      metrics: Metrics = NO_METRICS) -> CheckReport:
    """Find leaked addresses; a leak seen again ``grace`` seconds later is certain.

    An allocation whose handle record does not decode is not judged (as if the handle were
    new): accusing it could free a live pod's address. Unreadable leak records are
    cnictl's own scratch data: they are reported and replaced.
    """
    grace = check_duration("grace", grace)
    invalid: list[InvalidKey] = []
    # Handles, then blocks, then pods: an allocation made between two reads is skipped (its
    # handle is missing) rather than misjudged, and the pod list is the freshest of the three.
    handles: dict[str, Handle] = {}
    for kv in (await store.range(HANDLES)).kvs:
        decoded = _decode(kv, Handle.from_bytes, invalid)
        if decoded is not None:
            handles[kv.key.removeprefix(HANDLES)] = decoded
    blocks = (await store.range(BLOCKS)).kvs
    previous: dict[str, dict[str, Any]] = {}
    unreadable_leaks: list[str] = []
    for kv in (await store.range(LEAKS)).kvs:
        record = _decode(kv, _leak_record, invalid)
        if record is None:
            unreadable_leaks.append(kv.key.removeprefix(LEAKS))
        else:
            previous[kv.key.removeprefix(LEAKS)] = record
    pods = {(p.namespace, p.name): p for p in await cluster.list_pods()}
    if not pods and handles:
        # An API server that answers with no pods at all is far likelier broken (or the wrong
        # cluster) than a Cell whose every pod died: refuse to accuse every allocation.
        raise AdminError(f"the Kubernetes API at {cluster.endpoint} lists no pods while {len(handles)} addresses "
                         f"are allocated: refusing to judge (wrong --kube-api or kubeconfig?)")
    now = runtime.wall_time()
    unjudged = {i.key.removeprefix(HANDLES) for i in invalid if i.key.startswith(HANDLES)}
    leaks, checked = [], 0
    # Pools of the last check's leaks too (their gauges go to 0 when their blocks went): only
    # names a pool may have, since a label read back from etcd is trusted no more than input.
    seen_pools = {record["pool"]: None for record in previous.values()
                  if isinstance(record.get("pool"), str) and POOL_NAME.fullmatch(record["pool"])}
    for kv in blocks:
        block = _decode(kv, Block.from_bytes, invalid)
        if block is None:
            continue
        seen_pools[block.pool] = None
        for offset, handle_name in sorted(block.allocations.items()):
            checked += 1
            address = block.address(offset)
            handle = handles.get(handle_name)
            reason = None if handle_name in unjudged else _why_leaked(handle, address, pods)
            if reason is None:
                continue
            seen = previous.get(str(address))
            first_seen = seen["first_seen"] if seen and seen.get("handle") == handle_name else now
            leaks.append(Leak(str(address), block.pool, handle.node if handle else block.node, handle_name,
                              str(handle.pod) if handle else "-", reason, first_seen, now - first_seen >= grace))
    # Record what we saw for the next check; forget suspects that are no longer leaked.
    current = {leak.address for leak in leaks}
    ops: list[TxnOp] = [DeleteOp(_leak_key(a)) for a in [*previous, *unreadable_leaks] if a not in current]
    for leak in leaks:
        record = {"handle": leak.handle, "first_seen": leak.first_seen, "certain": leak.certain, "pool": leak.pool}
        ops.append(PutOp(_leak_key(leak.address), json.dumps(record, sort_keys=True).encode()))
    for start in range(0, len(ops), 64):  # etcd limits operations per transaction (128 by default)
        await store.txn([], ops[start : start + 64])
    for pool in sorted(seen_pools):  # once recorded, so that the gauges never run ahead of the Store
        suspects = sum(1 for leak in leaks if leak.pool == pool and not leak.certain)
        certain = sum(1 for leak in leaks if leak.pool == pool and leak.certain)
        metrics.set(IPAM_GC_CANDIDATES, suspects, pool=pool)
        metrics.set(IPAM_LEAKS_CERTAIN, certain, pool=pool)
    return CheckReport(checked, tuple(leaks), now, tuple(invalid))


# ------------------------------------------------------------------ release


@dataclass(frozen=True)
class Released:
    address: str
    handle: str
    pool: str
    node: str = ""  # the node the address was given on (the handle's), else the block's owner
    forced: bool = False  # released without asking the Cluster

    def __str__(self) -> str:
        how = " without checking the cluster (--force)" if self.forced else ""
        return f"released {self.address} (handle {self.handle}, node {self.node or '-'}){how}"


async def _pool_of(store: Store, address: IPv4Address) -> Pool:
    invalid: list[InvalidKey] = []
    for pool in await list_pools(store, invalid):
        if address in pool.cidr:
            return pool
    skipped = f" ({len(invalid)} unreadable pool record(s) skipped: {invalid[0]})" if invalid else ""
    raise AdminError(f"address {address} is outside every pool{skipped}")


def _in_use(address: IPv4Address, holder: str, handle: Handle | None, pods: Sequence[PodInfo]) -> str | None:
    """Why ``address`` must not be freed while these pods run, or None when no pod holds it."""
    for pod in pods:
        if pod.ip == str(address):
            return f"pod {pod.namespace}/{pod.name} still runs it"
    if handle is not None and not handle.pod.name:
        return f"its holder {holder} names no pod, so the cluster cannot tell whether it is gone"
    if handle is not None and _why_leaked(handle, address, {(p.namespace, p.name): p for p in pods}) is None:
        return f"pod {handle.pod} still runs it"
    return None


async def release_address(store: Store, runtime: Runtime, text: str, *, cluster: PodInventory | None = None,
                          force: bool = False, expect_handle: str | None = None,
                          metrics: Metrics = NO_METRICS) -> Released:
    """Free one allocated address by CAS on its block, after the Cluster shows no pod holds it.

    ``ReleaseRefused`` (nothing freed) when a pod still has the address or the handle's pod
    still runs, or when the Cluster lists no pods at all (wrong API?). ``force`` skips the
    Cluster; ``expect_handle`` frees only if that handle still holds the address (what
    ``release_certain`` uses: its check consulted the Cluster, ``grace`` apart).
    """
    if cluster is None and not force and expect_handle is None:
        raise AdminError("releasing an address needs the Kubernetes API to check that its pod is gone "
                         "(or force)")
    address = parse_address(text)
    pool = await _pool_of(store, address)
    key = block_key(pool.name, pool.block_of(address))
    for _ in range(16):
        kv = await store.get(key)
        bad: list[InvalidKey] = []
        block = _decode(kv, Block.from_bytes, bad) if kv else None
        if bad:
            raise AdminError(f"{bad[0]}: {address} not released")
        offset = int(address) - int(pool.block_of(address).network_address)
        holder = block.allocations.get(offset) if block else None
        if holder is None:
            await store.delete(_leak_key(str(address)))
            raise AdminError(f"address {address} is not allocated")
        if expect_handle is not None and holder != expect_handle:
            raise AdminError(f"address {address} now belongs to {holder}, not {expect_handle}: not released")
        assert block is not None and kv is not None
        handle_kv = await store.get(handle_key(holder))
        handle = _decode(handle_kv, Handle.from_bytes, None) if handle_kv else None
        node = handle.node if handle else block.node
        if cluster is not None and not force:
            pods = await cluster.list_pods()
            if not pods:
                raise ReleaseRefused(f"{address}: the Kubernetes API at {cluster.endpoint} lists no pods: "
                                     f"refusing to judge (wrong --kube-api or kubeconfig?)")
            why = _in_use(address, holder, handle, pods)
            if why is not None:
                raise ReleaseRefused(f"{address}: {why} (handle {holder}, node {node}); not released")
        allocations = {o: h for o, h in block.allocations.items() if o != offset}
        updated = Block(block.pool, block.cidr, block.node, allocations,
                        {**block.released, offset: runtime.wall_time()})
        # The block's revision covers the handle too: both always change in one transaction.
        result = await store.txn(
            [Compare.mod_is(key, kv.mod_revision)],
            [PutOp(key, updated.to_bytes()), DeleteOp(handle_key(holder)), DeleteOp(_leak_key(str(address)))],
        )
        if result.succeeded:
            metrics.inc(IPAM_GC_RECLAMATIONS, pool=pool.name)
            return Released(str(address), holder, pool.name, node, forced=force)
    raise AdminError(f"block {key} kept changing; try again")


async def release_certain(store: Store, runtime: Runtime, *,
                          metrics: Metrics = NO_METRICS) -> tuple[list[Released], list[str]]:
    """Release every leak the last check marked certain. Returns (released, skipped with reasons)."""
    released, skipped = [], []
    for kv in (await store.range(LEAKS)).kvs:
        bad: list[InvalidKey] = []
        record = _decode(kv, _leak_record, bad)
        if record is None:
            skipped.append(str(bad[0]))
            continue
        address = kv.key.removeprefix(LEAKS)
        if record.get("certain") is not True:
            continue
        try:
            released.append(await release_address(store, runtime, address, expect_handle=record["handle"],
                                                  metrics=metrics))
        except AdminError as exc:
            skipped.append(str(exc))
    return released, skipped


# ------------------------------------------------------------------ gc


@dataclass
class GcReport:
    blocks_freed: list[str] = field(default_factory=list)
    stray_handles: list[str] = field(default_factory=list)
    stale_leak_records: list[str] = field(default_factory=list)
    invalid: list[InvalidKey] = field(default_factory=list)  # unreadable blocks: kept, and no handle removed


async def gc(store: Store, cluster: PodInventory, runtime: Runtime, *, cooldown: float) -> GcReport:
    """Free empty blocks of departed nodes, stray handle records and leak records of free addresses.

    A block whose addresses were released less than ``cooldown`` seconds ago is kept:
    deleting it would forget the release times, and the next claimer would hand those
    addresses out at once.
    """
    cooldown = check_duration("cooldown", cooldown)
    report = GcReport()
    now = runtime.wall_time()
    nodes = set(await cluster.list_nodes())
    # Handles before blocks: a handle created after this read is not looked at, and one
    # released meanwhile fails its CAS below. (Blocks first could delete a new live handle.)
    handles = (await store.range(HANDLES)).kvs
    blocks = {kv.key: kv for kv in (await store.range(BLOCKS)).kvs}
    allocated: dict[str, str] = {}  # handle -> address
    for key, kv in blocks.items():
        block = _decode(kv, Block.from_bytes, report.invalid)
        if block is None:
            continue
        for offset, handle in block.allocations.items():
            allocated[handle] = str(block.address(offset))
        cooling = any(now - released_at < cooldown for released_at in block.released.values())
        if block.node not in nodes and not block.allocations and not cooling:
            result = await store.txn([Compare.mod_is(key, kv.mod_revision)], [DeleteOp(key)])
            if result.succeeded:
                report.blocks_freed.append(key)
    if report.invalid:
        # An unreadable block may hold any handle or address: removing "stray" records now could
        # delete a live pod's handle. The blocks above were judged one by one and are safe.
        return report
    for kv in handles:
        handle = kv.key.removeprefix(HANDLES)
        if handle not in allocated:
            result = await store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [DeleteOp(kv.key)])
            if result.succeeded:
                report.stray_handles.append(handle)
    addresses = set(allocated.values())
    for kv in (await store.range(LEAKS)).kvs:
        if kv.key.removeprefix(LEAKS) not in addresses:
            result = await store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [DeleteOp(kv.key)])
            if result.succeeded:
                report.stale_leak_records.append(kv.key.removeprefix(LEAKS))
    return report

