"""The Cluster port: one Cell's Kubernetes API, as much of it as the agents read.

Today: list pods (namespace, name, UID, node, pod IP, phase, readiness) and list
nodes, which is what ``cnictl check`` and ``gc`` need to tell a live allocation
from a leaked one. The load-balancing issue adds endpoints and watches.
Real adapter: the official ``kubernetes`` client against an API server; sim
adapter: the simulated cell. It must not know which one is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ClusterUnavailable(Exception):
    """The API server did not answer; ``endpoint`` says which one."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"Kubernetes API at {endpoint} unavailable: {reason}")
        self.endpoint = endpoint
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    node: str
    ip: str  # "" until the runtime reported it
    phase: str = "Running"
    ready: bool = False


class Cluster(Protocol):
    @property
    def endpoint(self) -> str: ...

    async def list_pods(self) -> list[PodInfo]:
        """Every pod of the Cell, all namespaces."""

    async def list_nodes(self) -> list[str]:
        """Names of the Cell's nodes."""
