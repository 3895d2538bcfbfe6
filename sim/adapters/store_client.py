"""The sim Store's clients: one per agent, each with its own latency, slowness, deadline and partition.

``MemoryStore.client(name)`` (sim/adapters/store.py, the server) returns a
``SimStoreClient``, the object agents get as their ``Store``. A request travels for
half its round trip, is applied atomically at the server at that instant, and travels
back; a write is applied ``commit`` seconds after it arrives (etcd's raft round and the
members' WAL fsync, which a read does not wait for), whatever becomes of its client then.
One whose answer comes after the deadline raises ``StoreUnavailable`` but may have been
applied, as with a real server.
``_SimWatch`` is a watch's client side: it delivers the server's events with the client's
latency.

Faults come in symmetric pairs that stack, because faults overlap in a scenario (a
Cell outage and an etcd-unavailable fault on the same node): ``partition()`` /
``heal()`` (the client reconnects when the last partition is healed; a partition
breaks its open watches as a real stream breaks) and ``slow_down(factor)`` /
``speed_up(factor)`` (the worst slowdown in force applies).

It must not know any agent or scenario; it uses only the Runtime port for time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from foundation.ports.store import (
    CompactedError,
    Compare,
    DeleteOp,
    DeleteResult,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeResult,
    StoreError,
    StoreUnavailable,
    TxnOp,
    TxnResult,
    WatchEvent,
)

if TYPE_CHECKING:
    from sim.adapters.store import MemoryStore, _Watcher

T = TypeVar("T")

CLOSED = object()  # queue marker: the watch was closed


class _SimWatch:
    """Client side of a watch: pulls events, applies the client's delivery latency."""

    def __init__(self, client: SimStoreClient, prefix: str, start_revision: int) -> None:
        self._client = client
        self._watcher: _Watcher | None = None
        self._error: BaseException | None = None
        if client._cut_off():  # a watch that cannot reach the server delivers nothing, not even history
            self._error = StoreUnavailable(client.endpoint, f"watch not created ({client._cut_off_reason()})")
            return
        try:
            self._watcher = client._server._watch(client, prefix, start_revision)
        except CompactedError as exc:
            self._error = exc  # raised by the first __anext__, as the etcd adapter does

    def __aiter__(self) -> _SimWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._error is not None:
            raise self._error
        if self._watcher is None:
            raise StopAsyncIteration
        item = await self._watcher.queue.get()
        if item is CLOSED:
            self._watcher = None
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._watcher = None
            self._error = item
            raise item
        event, arrives = cast(tuple[WatchEvent, float], item)  # the third kind of item: see _Watcher.queue
        runtime = self._client._runtime
        if arrives > runtime.now():
            await runtime.sleep(arrives - runtime.now())
        return event

    async def close(self) -> None:
        if self._watcher is not None:
            self._client._server._unwatch(self._watcher)
            self._watcher = None

    async def __aenter__(self) -> _SimWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SimStoreClient:
    """One agent's connection to the simulated etcd, with its own faults."""

    def __init__(self, server: MemoryStore, name: str, *, latency: float, jitter: float, timeout: float,
                 commit: float = 0.0) -> None:
        self._server = server
        self._runtime = server._runtime
        self.name = name
        self.latency = latency  # round-trip seconds
        self.jitter = jitter  # extra round-trip seconds, uniform in [0, jitter)
        self.commit = commit  # a write's extra seconds at the server before it is applied
        self.timeout = timeout  # the client's deadline per request
        self.slowness = 1.0  # multiplies the round trip (not the commit): a slow link to etcd
        self.partitioned = False
        self.closed = False
        self._partitions = 0  # partitions in force (they stack: see heal)
        self._slowdowns: list[float] = []  # slowdown factors in force

    @property
    def endpoint(self) -> str:
        return f"sim:{self._server.name}/{self.name}"

    # ---- faults
    def partition(self) -> None:
        """Cut this client off from the server: its requests time out, its watches break."""
        self._partitions += 1
        self.partitioned = True
        self._server._break_watches(lambda w: w.client is self, "network partition")

    def heal(self) -> None:
        """End one partition: the client reconnects when the last one in force ends (faults overlap)."""
        self._partitions = max(self._partitions - 1, 0)
        self.partitioned = self._partitions > 0

    def slow_down(self, factor: float) -> None:
        """Round trips take ``factor`` times longer while this slowdown is in force (the worst one applies)."""
        self._slowdowns.append(factor)
        self.slowness = max(self._slowdowns)

    def speed_up(self, factor: float) -> None:
        """End one slowdown of ``factor``; the worst one still in force applies, or none."""
        if factor in self._slowdowns:
            self._slowdowns.remove(factor)
        self.slowness = max(self._slowdowns, default=1.0)

    def _cut_off(self) -> bool:
        return self.partitioned or not self._server.available

    def _cut_off_reason(self) -> str:
        return "network partition" if self.partitioned else "server down"

    def _one_way_delay(self) -> float:
        if not self.latency and not self.jitter:
            return 0.0
        extra = self._runtime.random.random() * self.jitter if self.jitter else 0.0
        return (self.latency + extra) * self.slowness / 2

    async def _call(self, apply: Callable[[], T], *, write: bool = False) -> T:
        """One request: travel there (a write: and commit), apply atomically, travel back, within the deadline."""
        if self.closed:
            raise StoreError(f"store for {self.endpoint} is closed")
        if self._cut_off():
            await self._runtime.sleep(self.timeout)
            raise StoreUnavailable(self.endpoint, f"no answer within {self.timeout} s ({self._cut_off_reason()})")
        there, back = self._one_way_delay(), self._one_way_delay()
        if there >= self.timeout:
            await self._runtime.sleep(self.timeout)
            raise StoreUnavailable(self.endpoint, f"deadline of {self.timeout} s exceeded")
        if there:
            await self._runtime.sleep(there)
        if self._cut_off():  # the partition began while the request was in flight
            await self._runtime.sleep(self.timeout - there)
            raise StoreUnavailable(self.endpoint, f"no answer within {self.timeout} s ({self._cut_off_reason()})")
        commit = self.commit if write else 0.0
        if commit:
            # Arrived: the members commit the write whatever becomes of its client (only etcd going
            # down first loses it). The commit is theirs (raft, fsync): a slowdown is the client's
            # link's, as the lab's etcd-slow fault is a delaying proxy on the link, so it is not stretched.
            if there + commit >= self.timeout:  # committed after the deadline: applied then, never answered
                self._runtime.spawn(self._apply_later(apply, commit), name=f"etcd-commit/{self.name}")
                await self._runtime.sleep(self.timeout - there)
                raise StoreUnavailable(self.endpoint, f"deadline of {self.timeout} s exceeded")
            await self._runtime.sleep(commit)
            if not self._server.available:  # etcd went down before the commit: lost, and no answer
                await self._runtime.sleep(self.timeout - there - commit)
                raise StoreUnavailable(self.endpoint, f"no answer within {self.timeout} s (server down)")
            there += commit
        result = apply()
        if there + back >= self.timeout:  # applied, but the answer comes too late: as ambiguous as in life
            await self._runtime.sleep(self.timeout - there)
            raise StoreUnavailable(self.endpoint, f"deadline of {self.timeout} s exceeded")
        if back:
            await self._runtime.sleep(back)
        return result

    async def _apply_later(self, apply: Callable[[], object], commit: float) -> None:
        """A write whose commit ends after its client gave up: applied then, unless etcd went down."""
        await self._runtime.sleep(commit)
        if self._server.available:
            with contextlib.suppress(StoreError):  # what the client would have been told: nobody listens
                apply()

    # ---- the Store port
    async def get(self, key: str) -> KeyValue | None:
        return (await self._call(lambda: self._server._range(key, False))).first()

    async def range(self, prefix: str, *, limit: int = 0, start_after: str = "", revision: int = 0) -> RangeResult:
        return await self._call(lambda: self._server._range(prefix, True, limit, start_after, revision))

    async def put(self, key: str, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        result = await self._call(lambda: self._server.txn([], [PutOp(key, value, lease, prev_kv)], []), write=True)
        return result.responses[0]  # type: ignore[return-value]  # a lone PutOp answers with a PutResult

    async def delete(self, key: str, *, prefix: bool = False, prev_kv: bool = False) -> DeleteResult:
        result = await self._call(lambda: self._server.txn([], [DeleteOp(key, prefix, prev_kv)], []), write=True)
        return result.responses[0]  # type: ignore[return-value]  # a lone DeleteOp answers with a DeleteResult

    async def txn(self, compares: Sequence[Compare], success: Sequence[TxnOp],
                  failure: Sequence[TxnOp] | None = None) -> TxnResult:
        # etcd serves a txn of reads only without a raft round (a read-only txn); any write commits
        writes = any(isinstance(op, PutOp | DeleteOp) for op in (*success, *(failure or ())))
        return await self._call(lambda: self._server.txn(compares, success, failure or []), write=writes)

    def watch(self, prefix: str, *, start_revision: int = 0) -> _SimWatch:
        return _SimWatch(self, prefix, start_revision)

    async def grant(self, ttl: int) -> Lease:
        return await self._call(lambda: self._server.grant(ttl), write=True)

    async def keepalive(self, lease_id: int) -> int:
        return await self._call(lambda: self._server.keepalive(lease_id))

    async def revoke(self, lease_id: int) -> None:
        await self._call(lambda: self._server.revoke(lease_id), write=True)

    async def compact(self, revision: int) -> None:
        await self._call(lambda: self._server.compact(revision), write=True)

    async def revision(self) -> int:
        return await self._call(lambda: self._server.revision)

    async def close(self) -> None:
        self.closed = True
        for watcher in [w for w in self._server._watchers if w.client is self]:
            self._server._unwatch(watcher)
