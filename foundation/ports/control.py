"""The ControlClient port: what a client of the control service (discovery) calls on slb-core.

Discovery sets the upstream servers of the domains it feeds, reads a domain back (its
servers, for the restart rule; its revision, for a drain) and reads what every Nginx host
of the group applied (for a drain). It does so as **a client like any other**: under its
own principal, checked by the service's authorisation, never by writing etcd itself.
Real adapter: ``foundation/adapters/grpc_control.py`` (gRPC over TLS with a bearer token);
sim adapter: ``sim/adapters/control.py`` (slb-core's logic in-process, with the same
principal and the same authorisation). The principal is the adapter's business (a token,
or a principal given to the sim adapter); a call here never names it.

The records (``StoredDomain``, ``HostStatus``, ``StatusReport``) and the **typed errors**
are defined here, once: slb-core returns and raises these very types, the gRPC server maps
each error's ``code`` to the status of that name, and the gRPC adapter maps a status back
to the class of that ``code``. So a caller handles one set of errors whichever adapter is
behind the port. It must not know gRPC, etcd or which adapter is behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from foundation.ports.proxy_domain import Domain

# --------------------------------------------------------------------------- errors


class ControlError(Exception):
    """A call the control service refused or could not answer; ``code`` names its gRPC status."""

    code: ClassVar[str] = "INTERNAL"


class InvalidArgument(ControlError):
    """A request field is invalid; ``field`` names it (e.g. ``servers``)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message if message.startswith(f"{field_name}:") else f"{field_name}: {message}")
        self.field = field_name


class NotFound(ControlError):
    code = "NOT_FOUND"


class AlreadyExists(ControlError):
    code = "ALREADY_EXISTS"


class PermissionDenied(ControlError):
    """The caller's principal may not do this (e.g. a ``user`` token setting discovery's upstreams)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(ControlError):
    """The service knows no such token."""

    code = "UNAUTHENTICATED"


class Conflict(ControlError):
    """The record is not at the revision expected (or kept changing): read it again."""

    code = "ABORTED"


class FailedPrecondition(ControlError):
    code = "FAILED_PRECONDITION"


class QuotaExceeded(ControlError):
    code = "RESOURCE_EXHAUSTED"


class CorruptRecord(ControlError):
    """A stored record does not decode (not the caller's fault)."""

    code = "INTERNAL"


class Unavailable(ControlError):
    """The service (or its etcd) cannot be reached, or did not answer in time: try again later."""

    code = "UNAVAILABLE"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class StoredDomain:
    domain: Domain
    revision: int  # mod_revision of the domain record


@dataclass(frozen=True)
class HostStatus:
    host: str
    applied_revision: int  # the domain revision in force on this host
    wanted_revision: int
    error: str
    at: float  # Unix time of the report


@dataclass(frozen=True)
class StatusReport:
    revision: int  # the domain's current revision; 0 when it was deleted and hosts still report it
    hosts: tuple[HostStatus, ...]  # every host that reports the domain, sorted
    registered: tuple[str, ...] = ()  # the group's Nginx hosts registered now (under a lease), sorted


# --------------------------------------------------------------------------- the port


@runtime_checkable
class ControlClient(Protocol):
    """slb-core's calls, as its caller's principal. Every method raises ``ControlError`` subclasses only."""

    async def get_domain(self, group: str, name: str) -> StoredDomain:
        """The domain's record and revision; ``NotFound`` when it does not exist."""
        ...

    async def set_upstreams(self, group: str, domain: str, servers: Sequence[str]) -> int:
        """Replace the domain's upstream servers ("IPv4:port"); the domain's revision after it
        (unchanged, and nothing written, when the servers already are those)."""
        ...

    async def get_status(self, group: str, domain: str) -> StatusReport:
        """What each Nginx host of the group applied for the domain, and which hosts are registered now."""
        ...

    async def close(self) -> None:
        """Release the connection (idempotent)."""
        ...
