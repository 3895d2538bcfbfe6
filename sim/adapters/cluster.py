"""The sim Cluster adapter: a Cell's pods and nodes as plain records the sim world edits.

The world (or a test) adds and removes pods and nodes; agents read them through
the Cluster port exactly as they read a real API server. ``cut_off()`` /
``reconnect()`` take the API server away and back (``available`` says which). As a
real API server read through the real adapter, it lists
endpoints sorted by (namespace, service), keeps each address list sorted and unique,
and a replacement that changes nothing is no change (no version, no event).
It must not know any agent.
"""

from __future__ import annotations

from foundation.ports.cluster import (
    ClusterUnavailable,
    Endpoints,
    EndpointsEvent,
    PodInfo,
    ip_order,
    sorted_ready,
)
from foundation.ports.runtime import Queue, Runtime


def _ips(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """Unique and sorted by address, as the port's ``Endpoints`` promises."""
    return tuple(sorted(set(addresses), key=ip_order))


class _SimEndpointsWatch:
    def __init__(self, cluster: SimCluster, after: int) -> None:
        self._cluster = cluster
        if cluster.runtime is None:
            raise RuntimeError(f"SimCluster {cluster.name} has no runtime: it cannot be watched")
        # events, a ClusterUnavailable that ends the watch, or None once closed
        self._queue: Queue[EndpointsEvent | BaseException | None] = cluster.runtime.queue()
        self._closed = False
        if not cluster.available:  # nothing to replay from a server that does not answer
            self._queue.put_nowait(ClusterUnavailable(cluster.endpoint, "API server down"))
            return
        for version, event in cluster._history:
            if version > after:
                self._queue.put_nowait(event)
        cluster._watches.append(self)

    def __aiter__(self) -> _SimEndpointsWatch:
        return self

    async def __anext__(self) -> EndpointsEvent:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self in self._cluster._watches:  # a cut-off already dropped it
                self._cluster._watches.remove(self)
            self._queue.put_nowait(None)


class SimCluster:
    def __init__(self, name: str = "cell", runtime: Runtime | None = None) -> None:
        self.name = name
        self.runtime = runtime  # needed for watches only
        self.pods: dict[tuple[str, str], PodInfo] = {}
        self.nodes: dict[str, None] = {}  # ordered set
        self.endpoints: dict[tuple[str, str], Endpoints] = {}
        self.version = 0
        self._history: list[tuple[int, EndpointsEvent]] = []
        self._watches: list[_SimEndpointsWatch] = []
        self.available = True

    @property
    def endpoint(self) -> str:
        return f"sim:{self.name}/apiserver"

    def put_pod(self, pod: PodInfo) -> None:
        self.pods[(pod.namespace, pod.name)] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def add_node(self, name: str) -> None:
        self.nodes[name] = None

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def _check(self) -> None:
        if not self.available:
            raise ClusterUnavailable(self.endpoint, "API server down")

    async def list_pods(self) -> list[PodInfo]:
        self._check()
        return list(self.pods.values())

    async def list_nodes(self) -> list[str]:
        self._check()
        return list(self.nodes)

    # ---- endpoints
    def set_endpoints(self, endpoints: Endpoints) -> None:
        key = (endpoints.namespace, endpoints.service)
        # Sorted and unique as the port promises; each ready IP keeps the version it was given with.
        given = endpoints.ready_versions
        pairs = zip(endpoints.ready, given if len(given) == len(endpoints.ready) else ("",) * len(endpoints.ready),
                    strict=True)
        ready, versions = sorted_ready(pairs)
        endpoints = Endpoints(endpoints.namespace, endpoints.service, ready, _ips(endpoints.not_ready), versions)
        if self.endpoints.get(key) == endpoints:
            return  # a no-op update: no new version, no event
        kind = "MODIFIED" if key in self.endpoints else "ADDED"
        self.endpoints[key] = endpoints
        self._publish(EndpointsEvent(kind, endpoints))

    def delete_endpoints(self, namespace: str, service: str) -> None:
        gone = self.endpoints.pop((namespace, service), None)
        if gone is not None:
            self._publish(EndpointsEvent("DELETED", gone))

    def _publish(self, event: EndpointsEvent) -> None:
        self.version += 1
        self._history.append((self.version, event))
        del self._history[:-1000]  # the API server's watch cache is bounded too
        for watch in self._watches:
            watch._queue.put_nowait(event)

    def cut_off(self) -> None:
        """The API server goes away: every watch breaks, every call fails until ``available`` again."""
        self.available = False
        for watch in list(self._watches):
            watch._queue.put_nowait(ClusterUnavailable(self.endpoint, "API server down"))
            self._watches.remove(watch)

    def reconnect(self) -> None:
        """The API server answers again; watches are opened anew by their owners (they broke at the cut)."""
        self.available = True

    async def list_endpoints(self) -> tuple[list[Endpoints], str]:
        self._check()
        return [self.endpoints[key] for key in sorted(self.endpoints)], str(self.version)

    def watch_endpoints(self, resource_version: str) -> _SimEndpointsWatch:
        assert self.runtime is not None, "SimCluster needs a runtime for watches"
        return _SimEndpointsWatch(self, int(resource_version or 0))


class RegionCluster:
    """The pods and nodes of every Cell of a Region, as cnictl sees them (one etcd serves them all).

    A Cell whose API server is out of reach makes the listing fail: judging its
    allocations without its pods would accuse every one of them. It serves what
    cnictl reads (pods and nodes); endpoints are per Cell (``SimCluster``), and
    discovery follows each Cell on its own.
    """

    def __init__(self, cells: list[SimCluster]) -> None:
        self._cells = cells

    @property
    def endpoint(self) -> str:
        return "sim:region/apiservers"

    async def list_pods(self) -> list[PodInfo]:
        pods: list[PodInfo] = []
        for cell in self._cells:
            pods.extend(await cell.list_pods())
        return pods

    async def list_nodes(self) -> list[str]:
        nodes: list[str] = []
        for cell in self._cells:
            nodes.extend(await cell.list_nodes())
        return nodes
