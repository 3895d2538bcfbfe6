"""The sim Store adapter's server: an in-memory MVCC store with etcd v3 semantics.

``MemoryStore`` is the server: one revision counter, a sorted key index, the
history of events since the last compaction (for watches that start in the past),
leases that expire on the runtime's clock. ``MemoryStore.client(name)`` returns a
``SimStoreClient`` (sim/adapters/store_client.py), the object agents get as their
``Store``; each client has its own latency, slowness, deadline and partitions, so one
node can lose etcd while the others keep it. ``set_available`` takes the whole server
down and back. Faults raise the same typed errors as the etcd adapter.

Invariants (checked by tests/conformance against real etcd too): revision +1 per
write transaction; a txn is atomic (it runs between two awaits, so nothing
interleaves); watch events arrive in revision order with their revision; a watch
from a compacted revision raises ``CompactedError``; an expired lease deletes its
keys in one revision. A request that times out may still have been applied, as
with a real server: callers must not assume otherwise.

It must not know any agent or scenario; it uses only the Runtime port for time.
"""

from __future__ import annotations

import bisect
import heapq
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedDict

from foundation.ports.runtime import Cancelled, Queue, Runtime, Task
from foundation.ports.store import (
    CompactedError,
    Compare,
    DeleteOp,
    DeleteResult,
    GetOp,
    KeyValue,
    Lease,
    LeaseNotFound,
    OpResult,
    PutOp,
    PutResult,
    RangeResult,
    StoreError,
    StoreUnavailable,
    TxnOp,
    TxnResult,
    WatchEvent,
)
from sim.adapters.store_client import CLOSED, SimStoreClient

__all__ = ["MemoryStore", "SimStoreClient"]

_COMPARE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}
_TARGET_FIELD = {"version": "version", "create": "create_revision", "mod": "mod_revision", "lease": "lease"}


@dataclass
class _LeaseState:
    id: int
    ttl: int
    deadline: float
    keys: dict[str, None] = field(default_factory=dict)  # ordered set: deterministic deletion order


class _Watcher:
    """Server side of one watch: matching events go into the client's queue.

    Queue items are (event, time it reaches the client): delivery latency is stamped
    when the event is committed, so a burst arrives together instead of piling up.
    """

    __slots__ = ("client", "closed", "min_revision", "prefix", "queue")

    def __init__(self, client: SimStoreClient, prefix: str, min_revision: int) -> None:
        self.client = client
        self.prefix = prefix
        self.min_revision = min_revision  # etcd sends nothing older than the start revision
        # (event, arrival time), a StoreUnavailable that breaks the watch, or CLOSED
        self.queue: Queue[object] = client._runtime.queue()
        self.closed = False

    def offer(self, event: WatchEvent) -> None:
        if event.revision >= self.min_revision and event.kv.key.startswith(self.prefix):
            runtime = self.client._runtime
            self.queue.put_nowait((event, runtime.now() + self.client._one_way_delay()))


class MemoryStore:
    """The simulated etcd server."""

    def __init__(self, runtime: Runtime, *, name: str = "etcd", trace: bool = True) -> None:
        self._runtime = runtime
        self.name = name
        self._trace = trace
        self._revision = 1  # etcd's revision on an empty store; the first write makes it 2
        self._compact_revision = 0
        self._keys: SortedDict[str, KeyValue] = SortedDict()
        self._history: list[WatchEvent] = []
        self._history_revs: list[int] = []  # parallel to _history, for bisect
        self._history_prev: list[KeyValue | None] = []  # parallel: the key before each event (reads in the past)
        self._watchers: list[_Watcher] = []
        self._leases: dict[int, _LeaseState] = {}
        self._lease_heap: list[tuple[float, int]] = []
        self._next_lease_id = 0x1000
        self._reaper: Task[None] | None = None
        self._reaper_wakes_at = float("inf")
        self.available = True
        self.writes = 0  # write transactions committed, for reports

    # ------------------------------------------------------------------ clients
    def client(self, name: str, *, latency: float = 0.0, jitter: float = 0.0, commit: float = 0.0,
               timeout: float = 5.0) -> SimStoreClient:
        return SimStoreClient(self, name, latency=latency, jitter=jitter, commit=commit, timeout=timeout)

    def set_available(self, available: bool) -> None:
        """Take the whole server down (every client times out) or bring it back."""
        self.available = available
        if not available:
            self._break_watches(lambda w: True, "server down")
        else:
            # A restarted etcd gives every lease a full TTL again: clients could not keep
            # them alive while it was down, and it must not punish them for that.
            now = self._runtime.now()
            for lease in self._leases.values():
                lease.deadline = now + lease.ttl
                heapq.heappush(self._lease_heap, (lease.deadline, lease.id))

    def _break_watches(self, which: Callable[[_Watcher], bool], reason: str) -> None:
        for watcher in [w for w in self._watchers if which(w)]:
            watcher.queue.put_nowait(StoreUnavailable(watcher.client.endpoint, reason))
            self._unwatch(watcher)

    # ------------------------------------------------------------------ reads
    @property
    def revision(self) -> int:
        return self._revision

    def history(self) -> tuple[WatchEvent, ...]:
        """Every event since the last compaction, in revision order (for reports and checks)."""
        return tuple(self._history)

    def _range(self, key: str, prefix: bool, limit: int = 0, start_after: str = "", revision: int = 0) -> RangeResult:
        if not prefix:
            kv = self._keys.get(key)
            return RangeResult((kv,) if kv else (), self._revision)
        if revision and revision != self._revision:
            return self._range_at(key, limit, start_after, revision)
        kvs = []
        for k in self._keys.irange(minimum=max(key, start_after)):
            if not k.startswith(key):
                break
            if k == start_after:
                continue
            kvs.append(self._keys[k])
            if limit and len(kvs) >= limit:
                break
        return RangeResult(tuple(kvs), self._revision)

    def _range_at(self, prefix: str, limit: int, start_after: str, revision: int) -> RangeResult:
        """The keys under ``prefix`` as they were at ``revision``: today's, with later events undone."""
        if revision < self._compact_revision:
            raise CompactedError(revision, self._compact_revision)
        if revision > self._revision:
            raise StoreError(f"mvcc: required revision {revision} is a future revision (current {self._revision})")
        state = {k: self._keys[k] for k in self._keys.irange(minimum=prefix) if k.startswith(prefix)} \
            if prefix else dict(self._keys)
        for i in range(len(self._history) - 1, bisect.bisect_right(self._history_revs, revision) - 1, -1):
            k = self._history[i].kv.key
            if k.startswith(prefix):
                before = self._history_prev[i]
                if before is None:
                    state.pop(k, None)
                else:
                    state[k] = before
        kvs = [state[k] for k in sorted(state) if k > start_after]
        return RangeResult(tuple(kvs[:limit] if limit else kvs), revision)

    # ------------------------------------------------------------------ writes
    def _compare(self, c: Compare) -> bool:
        kv = self._keys.get(c.key)
        if c.target == "value":
            return kv is not None and _COMPARE_OPS[c.op](kv.value, c.operand)
        actual = getattr(kv, _TARGET_FIELD[c.target]) if kv is not None else 0
        return _COMPARE_OPS[c.op](actual, c.operand)

    def _check_ops(self, ops: Sequence[TxnOp]) -> None:
        puts = [op.key for op in ops if isinstance(op, PutOp)]
        if len(set(puts)) != len(puts):
            raise StoreError("etcdserver: duplicate key given in txn request")
        for op in ops:
            if isinstance(op, DeleteOp) and any(
                (k.startswith(op.key) if op.prefix else k == op.key) for k in puts
            ):
                raise StoreError("etcdserver: duplicate key given in txn request")
            if isinstance(op, PutOp) and op.lease and op.lease not in self._leases:
                raise LeaseNotFound(op.lease)

    def txn(self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]) -> TxnResult:
        """Apply a transaction atomically: all at this instant of virtual time."""
        # etcd refuses a request with a duplicate key in either branch, before evaluating it.
        self._check_ops(success)
        self._check_ops(failure)
        succeeded = all(self._compare(c) for c in compares)
        ops = success if succeeded else failure
        rev = self._revision + 1
        wrote = False
        events: list[WatchEvent] = []
        prevs: list[KeyValue | None] = []  # parallel to events
        results: list[OpResult] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._range(op.key, op.prefix))
            elif isinstance(op, PutOp):
                prev = self._keys.get(op.key)
                kv = KeyValue(
                    op.key,
                    op.value,
                    create_revision=prev.create_revision if prev else rev,
                    mod_revision=rev,
                    version=prev.version + 1 if prev else 1,
                    lease=op.lease,
                )
                self._keys[op.key] = kv
                if prev and prev.lease and prev.lease != op.lease:
                    self._leases[prev.lease].keys.pop(op.key, None)
                if op.lease:
                    self._leases[op.lease].keys[op.key] = None
                events.append(WatchEvent("put", kv, rev))
                prevs.append(prev)
                results.append(PutResult(rev, prev if op.prev_kv else None))
                wrote = True
            else:
                removed = self._range(op.key, op.prefix).kvs
                for prev in removed:
                    del self._keys[prev.key]
                    if prev.lease and prev.lease in self._leases:
                        self._leases[prev.lease].keys.pop(prev.key, None)
                    events.append(WatchEvent("delete", KeyValue(prev.key, b"", 0, rev, 0), rev))
                    prevs.append(prev)
                results.append(DeleteResult(len(removed), rev if removed else self._revision,
                                            tuple(removed) if op.prev_kv else ()))
                wrote = wrote or bool(removed)
        if wrote:
            self._commit(rev, events, prevs)
        # Every result carries the transaction's revision, as the etcd adapter stamps them.
        return TxnResult(succeeded, self._revision, tuple(_at_revision(r, self._revision) for r in results))

    def _commit(self, rev: int, events: list[WatchEvent], prevs: list[KeyValue | None]) -> None:
        self._revision = rev
        self.writes += 1
        for event, prev in zip(events, prevs, strict=True):
            self._history.append(event)
            self._history_revs.append(rev)
            self._history_prev.append(prev)
            if self._trace:
                self._runtime.trace(
                    f"store-{event.type}", rev=rev, key=event.kv.key, value_crc=zlib.crc32(event.kv.value)
                )
            for watcher in self._watchers:
                watcher.offer(event)

    # ------------------------------------------------------------------ watches
    def _watch(self, client: SimStoreClient, prefix: str, start_revision: int) -> _Watcher:
        if start_revision and start_revision < self._compact_revision:
            raise CompactedError(start_revision, self._compact_revision)
        watcher = _Watcher(client, prefix, start_revision or self._revision + 1)
        if start_revision and start_revision <= self._revision:
            for i in range(bisect.bisect_left(self._history_revs, start_revision), len(self._history)):
                watcher.offer(self._history[i])
        self._watchers.append(watcher)
        return watcher

    def _unwatch(self, watcher: _Watcher) -> None:
        if not watcher.closed:
            watcher.closed = True
            self._watchers.remove(watcher)
            watcher.queue.put_nowait(CLOSED)  # wakes a reader blocked in __anext__: its iteration ends

    def compact(self, revision: int) -> None:
        if revision <= self._compact_revision:
            raise CompactedError(revision, self._compact_revision)
        if revision > self._revision:
            raise StoreError(f"mvcc: required revision {revision} is a future revision (current {self._revision})")
        cut = bisect.bisect_left(self._history_revs, revision)
        del self._history[:cut]
        del self._history_revs[:cut]
        del self._history_prev[:cut]
        self._compact_revision = revision

    # ------------------------------------------------------------------ leases
    def grant(self, ttl: int) -> Lease:
        if ttl <= 0:
            raise StoreError(f"lease TTL must be positive, got {ttl}")
        self._next_lease_id += 1
        lease = _LeaseState(self._next_lease_id, ttl, self._runtime.now() + ttl)
        self._leases[lease.id] = lease
        self._schedule_expiry(lease)
        return Lease(lease.id, ttl)

    def keepalive(self, lease_id: int) -> int:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound(lease_id)
        lease.deadline = self._runtime.now() + lease.ttl
        heapq.heappush(self._lease_heap, (lease.deadline, lease.id))
        return lease.ttl

    def revoke(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise LeaseNotFound(lease_id)
        if lease.keys:
            self.txn([], [DeleteOp(k) for k in sorted(lease.keys)], [])  # etcd deletes them in key order

    def _schedule_expiry(self, lease: _LeaseState) -> None:
        heapq.heappush(self._lease_heap, (lease.deadline, lease.id))
        if lease.deadline < self._reaper_wakes_at:
            if self._reaper is not None:
                self._reaper.cancel()
            self._reaper = self._runtime.spawn(self._reap(), name=f"{self.name}/lease-reaper")

    async def _reap(self) -> None:
        """Expire leases when their deadline passes; one task for all leases."""
        try:
            while self._lease_heap:
                deadline, lease_id = self._lease_heap[0]
                lease = self._leases.get(lease_id)
                if lease is None or lease.deadline != deadline:  # stale heap entry
                    heapq.heappop(self._lease_heap)
                    continue
                now = self._runtime.now()
                if not self.available:  # a server that is down expires nothing; see set_available
                    self._reaper_wakes_at = now + 1.0
                    await self._runtime.sleep(1.0)
                    continue
                if deadline > now:
                    self._reaper_wakes_at = deadline
                    await self._runtime.sleep(deadline - now)
                    continue
                heapq.heappop(self._lease_heap)
                if self._trace:
                    self._runtime.trace("lease-expired", lease=lease_id, keys=len(lease.keys))
                self.revoke(lease_id)
        except Cancelled:
            return
        finally:
            self._reaper_wakes_at = float("inf")
        self._reaper = None



def _at_revision(result: OpResult, revision: int) -> OpResult:
    if isinstance(result, RangeResult):
        return RangeResult(result.kvs, revision)
    if isinstance(result, DeleteResult):
        return DeleteResult(result.deleted, revision, result.prev)
    return PutResult(revision, result.prev)

