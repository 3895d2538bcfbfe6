"""The Store port: a key-value store with etcd v3 semantics.

What holds for every adapter (the conformance suite in tests/conformance checks it
against real etcd and the in-memory sim store alike):

* One store-wide revision. It starts at 1 on an empty store and grows by exactly
  one per write transaction (a put, a delete that removed something, a txn whose
  taken branch wrote something, a lease revoke/expiry that removed keys), however
  many keys that transaction touched.
* Every key carries ``create_revision``, ``mod_revision``, ``version`` (1 on
  create, +1 per put) and the lease it is attached to (0 when none).
* ``txn`` evaluates all compares atomically and runs the success or the failure
  branch. A ``value`` compare on a missing key is false whatever the operator (as
  in etcd); the other targets compare a missing key as 0.
* ``watch(prefix, start_revision)`` yields every change under the prefix in
  revision order, each event stamped with its revision; a start revision older
  than the last compaction raises ``CompactedError``.
* A lease that is neither kept alive nor revoked expires after its TTL; its keys
  are deleted in one revision and watchers see delete events.

Keys are ``str`` (UTF-8 on the wire), values are ``bytes``. Errors are typed:
``StoreUnavailable`` always names the endpoint that failed, so an operator knows
where to look. This module knows no adapter and does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of every error a Store adapter raises."""


class StoreUnavailable(StoreError):
    """The store could not be reached or did not answer within the deadline."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"etcd at {endpoint} unavailable: {reason}")
        self.endpoint = endpoint
        self.reason = reason


class CompactedError(StoreError):
    """A watch (or read) asked for a revision that compaction has already removed."""

    def __init__(self, requested_revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested_revision} has been compacted; "
            f"the oldest revision still available is {compact_revision}"
        )
        self.requested_revision = requested_revision
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease was never granted, was revoked, or has expired."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:#x} not found (expired or revoked)")
        self.lease_id = lease_id


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Keys found (sorted by key) and the store revision the read was served at."""

    kvs: tuple[KeyValue, ...]
    revision: int

    def first(self) -> KeyValue | None:
        return self.kvs[0] if self.kvs else None


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    revision: int
    prev: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int


CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, e.g. ``Compare("k", "mod", "==", 7)``."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int

    def __post_init__(self) -> None:
        if self.target not in ("value", "version", "create", "mod", "lease"):
            raise ValueError(f"unknown compare target {self.target!r}")
        if self.op not in ("==", "!=", "<", ">"):
            raise ValueError(f"unknown compare operator {self.op!r}")
        if (self.target == "value") != isinstance(self.operand, bytes):
            raise TypeError(f"compare on {self.target} needs a {'bytes' if self.target == 'value' else 'int'} operand")

    # Convenience constructors read like the etcd documentation.
    @staticmethod
    def missing(key: str) -> Compare:
        """True when ``key`` does not exist (create_revision == 0)."""
        return Compare(key, "create", "==", 0)

    @staticmethod
    def mod_is(key: str, revision: int) -> Compare:
        return Compare(key, "mod", "==", revision)

    @staticmethod
    def value_is(key: str, value: bytes) -> Compare:
        return Compare(key, "value", "==", value)


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes
    lease: int = 0
    prev_kv: bool = False  # return the previous key-value in PutResult.prev (costs a little)


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str
    prefix: bool = False
    # Return the deleted key-values in DeleteResult.prev. Off by default, as in etcd: a prefix
    # delete answering with every deleted value can pass gRPC's message limit after etcd has
    # already deleted them, leaving the caller unable to tell whether it happened.
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class GetOp:
    key: str
    prefix: bool = False


TxnOp = PutOp | DeleteOp | GetOp
OpResult = PutResult | DeleteResult | RangeResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[OpResult, ...] = field(default=())

    def read(self, index: int) -> RangeResult:
        """The answer of the ``GetOp`` at ``index`` of the branch that ran (``TypeError`` if it was no read)."""
        response = self.responses[index]
        if not isinstance(response, RangeResult):
            raise TypeError(f"response {index} is a {type(response).__name__}, not the RangeResult of a GetOp")
        return response


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key, an empty value and mod_revision = the delete's revision
    revision: int


# --------------------------------------------------------------------------- the port


class Watch(Protocol):
    """An open watch: iterate it for events; ``close()`` ends it (idempotent)."""

    def __aiter__(self) -> Watch: ...

    async def __anext__(self) -> WatchEvent: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Watch: ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class Store(Protocol):
    """etcd v3 key-value semantics. See the module docstring for the invariants."""

    @property
    def endpoint(self) -> str:
        """Where this store lives, for error messages (e.g. ``127.0.0.1:2379`` or ``sim:client-7``)."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str, *, limit: int = 0, start_after: str = "", revision: int = 0) -> RangeResult:
        """All keys starting with ``prefix``, sorted; ``limit`` 0 means no limit.

        ``start_after``: only keys after this one (exclusive), to read a prefix in
        pages. ``revision``: read the keys as they were at that store revision (0:
        now), so the pages of one listing are one snapshot; a revision older than the
        last compaction raises ``CompactedError``, a future one ``StoreError``. The
        result's ``revision`` is the revision read at. However many keys match, the
        whole answer comes back (adapters page internally as their transport needs).
        """

    async def put(self, key: str, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        """Write ``key``; with ``prev_kv`` the result carries the value it replaced."""

    async def delete(self, key: str, *, prefix: bool = False, prev_kv: bool = False) -> DeleteResult:
        """Delete ``key`` (or every key under it); with ``prev_kv`` the result carries what was deleted."""

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] | None = None,
    ) -> TxnResult:
        """If every compare holds, do ``success``, else ``failure``; atomically, at one revision.

        Sequences, not lists: a caller's ``list[PutOp]`` is a ``Sequence[TxnOp]`` (a list is invariant).
        """

    def watch(self, prefix: str, *, start_revision: int = 0) -> Watch:
        """Watch keys under ``prefix`` from ``start_revision``.

        With ``start_revision`` 0 the watch starts "now", which for a real etcd means
        when the stream opens: on ``async with`` entry or the first ``__anext__``.
        Code that must not miss a write passes an explicit revision instead.
        """

    async def grant(self, ttl: int) -> Lease: ...

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; return its TTL. Raise ``LeaseNotFound`` if it is gone."""

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys. Raise ``LeaseNotFound`` if it is gone."""

    async def compact(self, revision: int) -> None:
        """Forget history older than ``revision``; later watches before it raise ``CompactedError``."""

    async def revision(self) -> int:
        """The store's current revision."""

    async def close(self) -> None: ...


def prefix_range_end(prefix: str) -> bytes:
    """The etcd ``range_end`` that selects every key starting with ``prefix``.

    etcd expresses "all keys with this prefix" as the half-open range
    [prefix, prefix with its last byte incremented); an empty prefix means all keys.
    """
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"
