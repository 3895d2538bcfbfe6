"""The Cluster port: one Cell's Kubernetes API, as much of it as the agents read.

Pods (namespace, name, UID, node, pod IP, phase, readiness) and nodes, which is what
``cnictl check`` and ``gc`` need to tell a live allocation from a leaked one; and the
**endpoints** of each Service (ready and not-ready addresses), listed and watched,
which is what discovery feeds the load balancers from. In LeEngine an app is a
namespace with one Service; its versions are replication controllers under it.
Real adapter: the official ``kubernetes`` client against an API server; sim
adapter: the simulated cell. It must not know which one is behind it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ClusterUnavailable(Exception):
    """The API server did not answer; ``endpoint`` says which one."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"Kubernetes API at {endpoint} unavailable: {reason}")
        self.endpoint = endpoint
        self.reason = reason


class ResourceExpired(ClusterUnavailable):
    """A watch asked for changes after a resource version the API server no longer has (HTTP 410 Gone).

    Nothing is lost if the consumer lists again and watches from the listing's version,
    which is what it does on any ``ClusterUnavailable``; ``resource_version`` is the one
    that expired.
    """

    def __init__(self, endpoint: str, resource_version: str, reason: str) -> None:
        super().__init__(endpoint, f"resource version {resource_version} expired (410 Gone): {reason}")
        self.resource_version = resource_version


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    node: str
    ip: str  # "" until the runtime reported it
    phase: str = "Running"
    ready: bool = False


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A Service's endpoints: pods that pass their readiness probe, and those that do not yet.

    ``ready_versions``: the app version each ready pod runs (its controller ``{app}-{version}``),
    parallel to ``ready`` (same length; ``""``: not known for that pod), or empty when no
    version is known for any: what discovery tags each upstream with (gray releases).
    """

    namespace: str
    service: str
    ready: tuple[str, ...] = ()  # pod IPs, sorted by ip_order
    not_ready: tuple[str, ...] = ()
    ready_versions: tuple[str, ...] = ()  # parallel to ready, or () = unknown for all

    def versions(self) -> dict[str, str]:
        """Ready IP -> its version, for the ready pods whose version is known ({} when the lengths differ)."""
        if len(self.ready_versions) != len(self.ready):
            return {}
        return {ip: version for ip, version in zip(self.ready, self.ready_versions, strict=True) if version}


def sorted_ready(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(ready, ready_versions)`` of (IP, version) pairs: unique IPs sorted by ``ip_order``, each with its
    version (a known one wins over ``""`` when an IP comes twice); versions ``()`` when none is known."""
    version_of: dict[str, str] = {}
    for ip, version in pairs:
        if version or ip not in version_of:
            version_of[ip] = version
    ready = tuple(sorted(version_of, key=ip_order))
    versions = tuple(version_of[ip] for ip in ready)
    return ready, versions if any(versions) else ()


@functools.lru_cache(maxsize=1 << 18)  # the sim sorts the same pod IPs again at every change
def ip_order(ip: str) -> tuple[int, int, str]:
    """The order of pod IPs in ``Endpoints`` (and of discovery's servers): IPv4 before IPv6,
    by numeric value; a string that is no address goes last, by its text."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (99, 0, ip)
    return (address.version, int(address), ip)


@dataclass(frozen=True, slots=True)
class EndpointsEvent:
    type: str  # "ADDED", "MODIFIED", "DELETED" (as the Kubernetes watch says)
    endpoints: Endpoints


class EndpointsWatch(Protocol):
    """Events after the listing's version, in order; ``close()`` ends it.

    It ends by itself only through an error: ``ClusterUnavailable`` when the API server
    is out of reach or drops the stream, ``ResourceExpired`` when the version is too old.
    After ``close()`` (idempotent) it yields nothing more.
    """

    def __aiter__(self) -> EndpointsWatch: ...

    async def __anext__(self) -> EndpointsEvent: ...

    async def close(self) -> None: ...


@runtime_checkable
class PodInventory(Protocol):
    """The part of a Cluster that cnictl reads: pods and nodes (a Region's Cells together are one too)."""

    @property
    def endpoint(self) -> str: ...

    async def list_pods(self) -> list[PodInfo]:
        """Every pod of the Cell, all namespaces."""

    async def list_nodes(self) -> list[str]:
        """Names of the Cell's nodes."""


@runtime_checkable
class Cluster(PodInventory, Protocol):
    """One Cell's Kubernetes API: its pods and nodes, and the endpoints discovery follows."""

    async def list_endpoints(self) -> tuple[list[Endpoints], str]:
        """Every Service's endpoints, and the resource version to watch from."""

    def watch_endpoints(self, resource_version: str) -> EndpointsWatch:
        """Changes of endpoints after ``resource_version``."""
