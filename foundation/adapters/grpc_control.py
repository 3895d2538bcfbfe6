"""The real ControlClient adapter: slb-core's gRPC API (control/protos/.../slb.proto) as one token's principal.

``GrpcControlClient("control.example:50051", token, ca=pem)`` calls ``leengine-control``
over **TLS only**, verifying the server's certificate against ``ca`` (PEM bytes; None: the
system's roots) and the target's host (an IP target needs an IP SAN). Every call carries
``authorization: Bearer <token>`` and a deadline of ``timeout`` seconds; the channel is
opened on the first call (in the running loop) and HTTP/2 keepalive pings find a dead peer.

Errors are the port's (``foundation/ports/control.py``): a status becomes the error class
whose ``code`` is its name (INVALID_ARGUMENT carries the field from the trailing metadata
``leengine-field``); UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED (a refused TLS handshake,
a server that is down or slow, etcd away behind it) are ``Unavailable``; any other status is
a ``ControlError``. What the server sends back is validated again (a domain record is parsed
as if read from etcd): a malformed answer is ``CorruptRecord``, never an exception of
another type.

It takes the token itself (the command reads it from a mode-600 file: ``leengine/secret_files.py``)
and must not know who calls it or what the upstreams mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from control.auth import TOKEN
from foundation.ports.control import (
    AlreadyExists,
    Conflict,
    ControlError,
    CorruptRecord,
    FailedPrecondition,
    HostStatus,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    StatusReport,
    StoredDomain,
    Unauthenticated,
    Unavailable,
)
from foundation.ports.proxy_domain import Domain

try:
    from control.generated.leengine.control.v1 import slb_pb2, slb_pb2_grpc
except ImportError as exc:  # pragma: no cover - a set-up error, reported plainly
    raise ImportError(f"the generated gRPC code is missing ({exc}): run scripts/build-protos.sh") from exc

FIELD_METADATA = "leengine-field"  # the server's trailing metadata naming an invalid field
MAX_SHOWN = 300  # characters of the server's details kept in an error message
KEEPALIVE = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]

# A status's name -> the port's error of that code (UNAVAILABLE's neighbours are handled apart).
_ERRORS: dict[str, type[ControlError]] = {cls.code: cls for cls in (
    NotFound, AlreadyExists, PermissionDenied, Unauthenticated, Conflict, FailedPrecondition, QuotaExceeded,
    Unavailable)}
_UNAVAILABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}


def domain_from_proto(msg: Any) -> StoredDomain:
    """A ``Domain`` message, parsed as a record read back (proto3 zero values mean the defaults)."""
    data: dict[str, Any] = {"name": msg.name, "group": msg.group, "owner": msg.owner,
                            "settings": dict(msg.settings), "upstreams": list(msg.upstreams)}
    if msg.listen:
        data["listen"] = msg.listen
    if msg.upstreams_by:
        data["upstreams_by"] = msg.upstreams_by
    if msg.locations:
        data["locations"] = [{"path": loc.path or "/", "set_headers": dict(loc.set_headers),
                              **({"read_timeout": loc.read_timeout} if loc.read_timeout else {})}
                             for loc in msg.locations]
    try:
        return StoredDomain(Domain.parse(data), int(msg.revision))
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptRecord(f"the control service sent domain {str(msg.name)[:80]!r} that does not parse: "
                            f"{str(exc)[:MAX_SHOWN]}") from None


class GrpcControlClient:
    """The ControlClient port on ``leengine-control``: ``await client.close()`` when done."""

    def __init__(self, target: str, token: str, *, ca: bytes | None = None, timeout: float = 5.0) -> None:
        if not TOKEN.fullmatch(token):
            raise ValueError("token: expected 16-512 characters of [A-Za-z0-9._~+/=-]")
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        self._channel: Any = None
        self._stub: Any = None

    def __repr__(self) -> str:  # never print the token into a log
        return f"GrpcControlClient({self.target!r}, token=***)"

    def _slb(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=KEEPALIVE)
            self._stub = slb_pb2_grpc.SlbCoreStub(self._channel)
        return self._stub

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._slb(), method)(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(method, exc) from None

    def _error(self, method: str, exc: grpc.aio.AioRpcError) -> ControlError:
        name = exc.code().name
        details = f"control service at {self.target}: {method}: {name}: {(exc.details() or '')[:MAX_SHOWN]}"
        if name == "INVALID_ARGUMENT":
            fields = [str(v) for k, v in (exc.trailing_metadata() or ()) if k == FIELD_METADATA]
            return InvalidArgument(fields[0] if fields else "request", details)
        if name in _UNAVAILABLE:
            return Unavailable(details)
        return _ERRORS.get(name, ControlError)(details)

    async def get_domain(self, group: str, name: str) -> StoredDomain:
        return domain_from_proto(await self._call("GetDomain", slb_pb2.GetDomainRequest(group=group, name=name)))

    async def set_upstreams(self, group: str, domain: str, servers: Sequence[str]) -> int:
        reply = await self._call("SetUpstreams", slb_pb2.SetUpstreamsRequest(group=group, domain=domain,
                                                                           servers=list(servers)))
        return int(reply.revision)

    async def get_status(self, group: str, domain: str) -> StatusReport:
        reply = await self._call("GetStatus", slb_pb2.GetStatusRequest(group=group, domain=domain))
        return StatusReport(int(reply.revision),
                            tuple(HostStatus(h.host, int(h.applied_revision), int(h.wanted_revision), h.error,
                                             float(h.at)) for h in reply.hosts),
                            tuple(reply.registered_hosts))

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
