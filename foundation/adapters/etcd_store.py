"""The real Store adapter: an etcd v3 server over gRPC.

aetcd's ``Client`` owns the gRPC channel (creation, closing); every request goes
through its raw stubs and the etcdrpc protobufs it ships, because its high-level
calls drop what the port promises: the response header's revision, the previous
key-values of a put or delete, and the ``compact_revision`` of a cancelled watch.

Invariants:

* Every unary request carries a deadline of ``timeout`` seconds, and so does the
  creation of a watch: a dead, refusing or hung etcd surfaces as
  ``StoreUnavailable`` naming the endpoint within about ``timeout``, never as a
  hang or a raw gRPC error. An open watch has no deadline (it may rightly be idle
  for hours); HTTP/2 keepalive pings find a dead peer under it instead.
* etcd's own answers are passed through, not re-implemented: revisions, compare
  semantics (a value compare on a missing key is false, other targets compare it
  as 0), minimum lease TTLs and the revision a watch delete event carries all
  come from the server.
* Errors are typed: "lease not found" -> ``LeaseNotFound``, compacted history ->
  ``CompactedError`` with the revision history now starts at, everything else
  -> ``StoreError`` carrying etcd's message.

TLS: ``EtcdStore(endpoint, tls=EtcdTls(ca, cert, key))`` (PEM bytes) talks TLS with a
client certificate, as an etcd started with ``--client-cert-auth`` demands; aetcd only
opens plaintext channels, so ``_TlsClient`` opens a ``grpc.aio.secure_channel`` in its
place. The endpoint may be ``https://host:port`` (TLS; without ``tls`` the system's
roots verify the server) or ``host:port`` (TLS exactly when ``tls`` is given);
``http://`` with ``tls`` is a contradiction and refused. The server's certificate is
always verified against the target host (an IP endpoint needs an IP SAN).

It must not know who uses it or what the keys mean: no key schema, no retries
(callers decide whether an unavailable store is worth waiting for), no caching.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aetcd
import grpc
from aetcd import rpc

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
    prefix_range_end,
)

T = TypeVar("T")

# Port compare target -> (etcd enum, the Compare protobuf field holding the operand).
_TARGETS = {
    "value": (rpc.Compare.VALUE, "value"),
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_OPS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}

# range(): keys per etcd request (halved while an answer exceeds gRPC's receive limit),
# and how often a read restarts when history is compacted between its pages.
_RANGE_PAGE = 512
_RANGE_RESTARTS = 3

# Codes meaning "the server did not answer", as opposed to "it answered no".
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _channel_options(timeout: float) -> dict[str, int]:
    return {
        # Ping under open streams so a watch on a dead or hung etcd fails instead of
        # idling forever. Not faster than every 10 s: etcd answers pings closer than
        # --grpc-keepalive-min-time (5 s by default) with GOAWAY "too_many_pings".
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": max(1000, int(timeout * 1000)),
        "grpc.http2.max_pings_without_data": 0,  # an idle watch sends no data; keep pinging
        # A keepalive waits behind any ping already in flight (gRPC's flow-control
        # probes ping too), and an unanswered ping otherwise times out after 60 s.
        "grpc.http2.ping_timeout_ms": max(1000, int(timeout * 1000)),
        # After etcd comes back, reconnect within about two seconds instead of after
        # gRPC's default backoff of up to two minutes. "min_reconnect_backoff" is also
        # how long one connection attempt may take (gRPC's default: 20 s).
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.min_reconnect_backoff_ms": 1000,
        "grpc.max_reconnect_backoff_ms": 2000,
    }


# --------------------------------------------------------------------------- conversions


def _key(key: str) -> bytes:
    # surrogateescape round-trips keys some other etcd client wrote as non-UTF-8 bytes.
    return key.encode("utf-8", "surrogateescape")


def _span(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` selecting every key under ``prefix``."""
    # etcd rejects an empty key; "\0" up to range_end "\0" is its spelling of "all keys".
    return _key(prefix) or b"\0", prefix_range_end(prefix)


def _kv(pb: Any) -> KeyValue:
    return KeyValue(
        key=pb.key.decode("utf-8", "surrogateescape"),
        value=pb.value,
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
        lease=pb.lease,
    )


def _compare(c: Compare) -> Any:
    target, field = _TARGETS[c.target]
    return rpc.Compare(key=_key(c.key), target=target, result=_OPS[c.op], **{field: c.operand})


def _range_request(key: str, *, prefix: bool, limit: int = 0) -> Any:
    # sort_order NONE still yields keys in key order (etcd reads its B-tree index in
    # order) and, unlike an explicit sort, lets etcd stop at `limit`.
    start, end = _span(key) if prefix else (_key(key), b"")
    return rpc.RangeRequest(key=start, range_end=end, limit=limit)


def _delete_request(key: str, *, prefix: bool, prev_kv: bool = False) -> Any:
    start, end = _span(key) if prefix else (_key(key), b"")
    return rpc.DeleteRangeRequest(key=start, range_end=end, prev_kv=prev_kv)


def _request_op(op: TxnOp) -> Any:
    if isinstance(op, PutOp):
        request = rpc.PutRequest(key=_key(op.key), value=op.value, lease=op.lease, prev_kv=op.prev_kv)
        return rpc.RequestOp(request_put=request)
    if isinstance(op, DeleteOp):
        return rpc.RequestOp(request_delete_range=_delete_request(op.key, prefix=op.prefix, prev_kv=op.prev_kv))
    if isinstance(op, GetOp):
        return rpc.RequestOp(request_range=_range_request(op.key, prefix=op.prefix))
    raise TypeError(f"not a transaction operation: {op!r}")


def _op_result(resp: Any, revision: int) -> OpResult:
    # Every result of a transaction is stamped with the transaction's revision, the one
    # its writes got. etcd's inner headers differ op by op (a read before the first
    # write shows the revision before the transaction), which no caller should need.
    kind = resp.WhichOneof("response")
    if kind == "response_put":
        put = resp.response_put
        return PutResult(revision, _kv(put.prev_kv) if put.HasField("prev_kv") else None)
    if kind == "response_delete_range":
        dele = resp.response_delete_range
        return DeleteResult(dele.deleted, revision, tuple(_kv(kv) for kv in dele.prev_kvs))
    if kind == "response_range":
        return RangeResult(tuple(_kv(kv) for kv in resp.response_range.kvs), revision)
    raise StoreError(f"etcd sent an unexpected transaction response {kind!r}")


# --------------------------------------------------------------------------- the adapter


@dataclass(frozen=True, repr=False)
class EtcdTls:
    """PEM bytes of a TLS channel to etcd: the CA that signed etcd's certificate (None:
    the system's roots) and this client's certificate and key (both or neither)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key and a key its certificate: give both or neither")

    def __repr__(self) -> str:  # never print a private key into a log
        return f"EtcdTls(ca={self.ca is not None}, cert={self.cert is not None}, key={'***' if self.key else None})"

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints: its Client is Any
    """aetcd's Client on a TLS channel: aetcd's own ``connect`` only opens plaintext ones."""

    def __init__(self, *, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        # The same attributes aetcd's connect sets (minus its password auth, unused here);
        # no I/O happens until the first request, which does the TLS handshake.
        if self._connected.is_set():
            return
        self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._credentials,
                                               options=list(self._options.items()))
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._connected.set()


class EtcdStore:
    """The Store port on a real etcd v3 server.

    ``store = await EtcdStore.open("127.0.0.1:2379")`` or
    ``async with EtcdStore(endpoint) as store:``; both check that etcd answers.
    With ``tls=EtcdTls(...)`` (or an ``https://`` endpoint) the channel is TLS.
    """

    def __init__(self, endpoint: str = "127.0.0.1:2379", *, timeout: float = 5.0, tls: EtcdTls | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._endpoint = endpoint
        self.timeout = timeout
        scheme, sep, rest = endpoint.partition("://")
        if not sep:
            scheme, rest = "", endpoint
        if scheme not in ("", "http", "https"):
            raise ValueError(f"etcd endpoint must be host:port or http(s)://host:port, got {endpoint!r}")
        if scheme == "http" and tls is not None:
            raise ValueError(f"etcd endpoint {endpoint!r} is plaintext (http://) but TLS files were given")
        if scheme == "https" and tls is None:
            tls = EtcdTls()  # verify the server against the system's roots
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint must look like host:port (port 1-65535), got {endpoint!r}")
        self.tls = tls
        options = _channel_options(timeout)
        if tls is None:
            self._client = aetcd.Client(host=host, port=int(port), timeout=timeout, options=options)
        else:
            self._client = _TlsClient(credentials=tls.credentials(), host=host, port=int(port), timeout=timeout,
                                      options=options)
        self._closed = False

    @classmethod
    async def open(cls, endpoint: str = "127.0.0.1:2379", *, timeout: float = 5.0,
                   tls: EtcdTls | None = None) -> EtcdStore:
        store = cls(endpoint, timeout=timeout, tls=tls)
        await store.connect()
        return store

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def connect(self) -> EtcdStore:
        """Open the channel and make one request, so an unreachable etcd fails here."""
        if self._closed:
            raise StoreError(f"store for {self._endpoint} is closed")
        try:
            await self._client.connect()  # creates the channel and stubs; no I/O yet
        except aetcd.ClientError as exc:
            raise StoreUnavailable(self._endpoint, str(exc)) from None
        try:
            await self.revision()
        except StoreError:
            await self._client.close()
            raise
        return self

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def __aenter__(self) -> EtcdStore:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def _live(self) -> aetcd.Client:
        if self._closed:
            raise StoreError(f"store for {self._endpoint} is closed")
        if self._client.channel is None:
            raise StoreError(f"store for {self._endpoint} is not connected: await connect() first")
        return self._client

    def _error(self, exc: grpc.aio.AioRpcError, *, lease_id: int | None = None) -> StoreError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnavailable(self._endpoint, f"no answer within {self.timeout:g}s")
        if code in _UNREACHABLE:
            return StoreUnavailable(self._endpoint, details or code.name)
        if lease_id is not None and code == grpc.StatusCode.NOT_FOUND:
            return LeaseNotFound(lease_id)
        return StoreError(f"etcd at {self._endpoint} refused the request: {details} ({code.name})")

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any, *, lease_id: int | None = None) -> T:
        """One unary RPC with the deadline, gRPC errors turned into the port's."""
        try:
            return await method(request, timeout=self.timeout, metadata=self._client.metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, lease_id=lease_id) from None

    # ------------------------------------------------------------------ key-value

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call(self._live.kvstub.Range, _range_request(key, prefix=False))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str, *, limit: int = 0, start_after: str = "", revision: int = 0) -> RangeResult:
        """Read in pages of at most ``_RANGE_PAGE`` keys, all at one revision (one snapshot).

        One etcd answer must fit gRPC's receive limit (4 MiB): a prefix of many large
        values in one response fails with RESOURCE_EXHAUSTED, so a page that does is
        asked again at half the size (one key fits: etcd's --max-request-bytes is
        smaller). History compacted between two pages of a read at "now" restarts it.
        """
        for _ in range(_RANGE_RESTARTS):
            try:
                return await self._range_pages(prefix, limit, start_after, revision)
            except CompactedError:
                if revision:
                    raise  # the caller asked for that revision: it is gone
        raise StoreError(f"etcd at {self._endpoint}: history kept being compacted while reading {prefix!r}")

    async def _range_pages(self, prefix: str, limit: int, start_after: str, revision: int) -> RangeResult:
        start, end = _span(prefix)
        if start_after:
            start = max(start, _key(start_after) + b"\0")  # the next possible key after it
        kvs: list[KeyValue] = []
        at, page = revision, _RANGE_PAGE
        while True:
            want = min(page, limit - len(kvs)) if limit else page
            request = rpc.RangeRequest(key=start, range_end=end, limit=want, revision=at)
            try:
                resp = await self._live.kvstub.Range(request, timeout=self.timeout, metadata=self._client.metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and page > 1:
                    page //= 2
                    continue
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or ""):
                    raise CompactedError(at, await self._compact_revision()) from None
                raise self._error(exc) from None
            at = at or resp.header.revision  # the first page fixes the snapshot
            kvs.extend(_kv(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs or (limit and len(kvs) >= limit):
                return RangeResult(tuple(kvs), at)
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: str, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> PutResult:
        request = rpc.PutRequest(key=_key(key), value=value, lease=lease, prev_kv=prev_kv)
        # A put with an unknown lease is refused with NOT_FOUND "requested lease not found".
        resp = await self._call(self._live.kvstub.Put, request, lease_id=lease or None)
        return PutResult(resp.header.revision, _kv(resp.prev_kv) if resp.HasField("prev_kv") else None)

    async def delete(self, key: str, *, prefix: bool = False, prev_kv: bool = False) -> DeleteResult:
        resp = await self._call(self._live.kvstub.DeleteRange, _delete_request(key, prefix=prefix, prev_kv=prev_kv))
        return DeleteResult(resp.deleted, resp.header.revision, tuple(_kv(kv) for kv in resp.prev_kvs))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] | None = None,
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure or ()],
        )
        # A put inside the txn may name an unknown lease; report the first one named.
        leases = [op.lease for op in (*success, *(failure or ())) if isinstance(op, PutOp) and op.lease]
        resp = await self._call(self._live.kvstub.Txn, request, lease_id=leases[0] if leases else None)
        revision = resp.header.revision
        return TxnResult(resp.succeeded, revision, tuple(_op_result(r, revision) for r in resp.responses))

    async def revision(self) -> int:
        # The cheapest request that returns a header: count one key, fetch nothing.
        resp = await self._call(self._live.kvstub.Range, rpc.RangeRequest(key=b"\0", count_only=True))
        return int(resp.header.revision)  # the stubs are untyped: say what etcd's proto says

    async def compact(self, revision: int) -> None:
        try:
            await self._call(self._live.kvstub.Compact, rpc.CompactionRequest(revision=revision, physical=False))
        except StoreError as exc:
            if "compacted" not in str(exc) or isinstance(exc, StoreUnavailable):
                raise
            raise CompactedError(revision, await self._compact_revision()) from None

    async def _compact_revision(self) -> int:
        # etcd's "required revision has been compacted" does not say where history now
        # starts; a watch from revision 1 is answered with exactly that number.
        probe = _EtcdWatch(self, "\0", 1)
        try:
            await asyncio.wait_for(anext(probe), self.timeout)
        except CompactedError as exc:
            return exc.compact_revision
        except TimeoutError:
            pass
        finally:
            await probe.close()
        raise StoreError(f"etcd at {self._endpoint} reported a compaction but did not say its revision")

    # ------------------------------------------------------------------ watch

    def watch(self, prefix: str, *, start_revision: int = 0) -> _EtcdWatch:
        return _EtcdWatch(self, prefix, start_revision)

    # ------------------------------------------------------------------ leases

    async def grant(self, ttl: int) -> Lease:
        resp = await self._call(self._live.leasestub.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise StoreError(f"etcd at {self._endpoint} refused a lease of {ttl}s: {resp.error}")
        return Lease(resp.ID, resp.TTL)  # etcd raises a too-small TTL to its minimum

    async def keepalive(self, lease_id: int) -> int:
        # Keepalive is a bidirectional stream in etcd; one request, one answer, hang up.
        call = self._live.leasestub.LeaseKeepAlive(timeout=self.timeout, metadata=self._client.metadata)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, lease_id=lease_id) from None
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise StoreUnavailable(self._endpoint, "etcd closed the keepalive stream without answering")
        if resp.TTL <= 0:  # etcd's way of saying the lease is gone
            raise LeaseNotFound(lease_id)
        return int(resp.TTL)

    async def revoke(self, lease_id: int) -> None:
        await self._call(self._live.leasestub.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), lease_id=lease_id)


class _EtcdWatch:
    """One etcd watch stream, as the port's ``Watch``.

    The stream opens on ``async with`` entry or on the first ``__anext__``, and
    ``start_revision=0`` means "from when it opened": to miss nothing, enter it
    before making the changes it should see, or pass an explicit revision.
    """

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next_revision = start_revision  # what we need next, should etcd say it is compacted
        self._call: Any = None
        self._events: deque[WatchEvent] = deque()
        self._closed = False

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __aenter__(self) -> _EtcdWatch:
        if self._call is None and not self._closed:
            await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._events.clear()  # a closed watch yields nothing more, not even what it buffered
        if self._call is not None:
            self._call.cancel()  # etcd drops the watcher when its stream goes away

    async def __anext__(self) -> WatchEvent:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                await self._open()
                continue
            try:
                resp = await self._read()
            except asyncio.CancelledError:
                # close() from another task cancels the call under our read: that is the
                # end of the iteration, not a cancellation of this task.
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise StopAsyncIteration from None
                raise
            for ev in resp.events:
                kind: Literal["put", "delete"] = "delete" if ev.type == rpc.Event.DELETE else "put"
                self._events.append(WatchEvent(kind, _kv(ev.kv), ev.kv.mod_revision))
        event = self._events.popleft()
        self._next_revision = event.revision + 1
        return event

    async def _open(self) -> None:
        store = self._store
        key, range_end = _span(self._prefix)
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=self._next_revision)
        # No deadline on the call itself: the stream lives as long as the watch.
        self._call = rpc.WatchStub(store._live.channel).Watch(metadata=store._client.metadata)
        try:
            async with asyncio.timeout(store.timeout):
                await self._call.write(rpc.WatchRequest(create_request=create))
                while not (await self._read()).created:
                    pass
        except TimeoutError:
            await self.close()
            raise StoreUnavailable(store.endpoint, f"watch not created within {store.timeout:g}s") from None
        except grpc.aio.AioRpcError as exc:  # from write(); _read() converts its own
            await self.close()
            raise store._error(exc) from None
        except BaseException:
            await self.close()
            raise

    async def _read(self) -> Any:
        """The next response of the stream; etcd's refusals raised as the port's errors."""
        store = self._store
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            await self.close()
            raise store._error(exc) from None
        if resp is grpc.aio.EOF:
            await self.close()
            raise StoreUnavailable(store.endpoint, "etcd ended the watch stream")
        if resp.compact_revision:
            # Sent when the start revision is compacted, and to a watcher so slow that
            # the history it still needs was compacted under it; etcd then cancels it.
            await self.close()
            raise CompactedError(self._next_revision, resp.compact_revision)
        if resp.canceled:
            await self.close()
            raise StoreError(f"etcd at {store.endpoint} cancelled the watch on {self._prefix!r}: {resp.cancel_reason}")
        return resp
