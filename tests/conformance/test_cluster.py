"""The Cluster port's conformance suite: the same test bodies against the real adapter and the sim cell.

``cluster_harness`` runs ``async def body(h)`` either on the sim runtime with a
``SimCluster`` or on asyncio with a ``KubeCluster`` (the official ``kubernetes`` client)
against a ``KubeApiMock`` on loopback. The harness edits the cell the same way on both
(``put_pod``, ``add_node``, ``set_endpoints``, ``delete_endpoints``) and switches the API
server off and on (``cut_off``, ``restore``). A difference between the adapters is a bug
in one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.k8s_cluster import KubeCluster
from foundation.ports.cluster import ClusterUnavailable, Endpoints, EndpointsEvent, PodInfo
from lab.kube_mock import KubeApiMock
from sim.adapters.cluster import SimCluster
from sim.adapters.runtime import SimRuntime

TIMEOUT = 2.0


@dataclass
class ClusterHarness:
    """What a body gets: the cluster under test, a runtime, and the cell's controls."""

    kind: str
    cluster: object
    runtime: object
    put_pod: Callable[[PodInfo], None]
    add_node: Callable[[str], None]
    set_endpoints: Callable[..., None]  # (namespace, service, ready=(...), not_ready=(...))
    delete_endpoints: Callable[[str, str], None]
    cut_off: Callable[[], None]
    restore: Callable[[], None]
    # (namespace, app, [(pod name, ip, version)]): more ready pods of replication controllers {app}-{version}, whose
    # endpoints the Cell computes (the sim's kube from its pods' versions, the API's endpoints controller with
    # each address's targetRef); version "" for a pod of no controller
    run_pods: Callable[[str, str, list[tuple[str, str, str]]], None] = lambda ns, app, pods: None
    timeout: float = TIMEOUT

    async def next_event(self, watch, limit: float = 5.0) -> EndpointsEvent:
        return await self.runtime.wait_for(anext(watch), limit)


class _SimRunner:
    kind = "sim"

    def run(self, body: Callable[[ClusterHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        cell = SimCluster("cell-a", runtime)

        def set_endpoints(namespace: str, service: str, *, ready=(), not_ready=()) -> None:
            cell.set_endpoints(Endpoints(namespace, service, tuple(ready), tuple(not_ready)))

        def restore() -> None:
            cell.available = True

        running: dict[tuple[str, str], list[tuple[str, str, str]]] = {}

        def run_pods(namespace: str, app: str, pods: list[tuple[str, str, str]]) -> None:
            # sim/kube.py knows each pod's version and hands the adapter ready IPs with their versions
            every = running.setdefault((namespace, app), [])
            every += pods
            cell.set_endpoints(Endpoints(namespace, app, tuple(ip for _, ip, _ in every), (),
                                         tuple(version for _, _, version in every)))

        harness = ClusterHarness("sim", cell, runtime, cell.put_pod, cell.add_node, set_endpoints,
                                 cell.delete_endpoints, cell.cut_off, restore, run_pods)
        runtime.run_until_complete(body(harness), limit=3600)


class _KubeRunner:
    kind = "kube"

    def run(self, body: Callable[[ClusterHarness], Awaitable[None]]) -> None:
        with KubeApiMock() as mock:
            def put_pod(pod: PodInfo) -> None:
                mock.put_pod(pod.namespace, pod.name, node=pod.node, ip=pod.ip, uid=pod.uid, phase=pod.phase,
                             ready=pod.ready)

            def set_endpoints(namespace: str, service: str, *, ready=(), not_ready=()) -> None:
                mock.set_endpoints(namespace, service, ready=list(ready), not_ready=list(not_ready))

            def run_pods(namespace: str, app: str, pods: list[tuple[str, str, str]]) -> None:
                # the mock's endpoints controller: Ready pods labelled app, on a Ready node, with their targetRef
                mock.add_node("node-1")
                for name, ip, _ in pods:
                    mock.put_pod(namespace, name, node="node-1", ip=ip, labels={"app": app})

            async def main() -> None:
                cluster = KubeCluster(host=mock.url, timeout=TIMEOUT)
                harness = ClusterHarness("kube", cluster, AsyncioRuntime(seed=1), put_pod, mock.add_node,
                                         set_endpoints, mock.delete_endpoints, mock.cut_off, mock.restore,
                                         run_pods)
                try:
                    await asyncio.wait_for(body(harness), 60)
                finally:
                    await cluster.close()

            asyncio.run(main())


@pytest.fixture(params=["sim", "kube"])
def cluster_harness(request):
    return _SimRunner() if request.param == "sim" else _KubeRunner()


# --------------------------------------------------------------------------- bodies


def test_pods_and_nodes_are_listed_with_their_fields(cluster_harness):
    async def body(h):
        running = PodInfo("shop", "shop-v1-a", "uid-1", "node-1", "10.1.0.5", "Running", True)
        starting = PodInfo("shop", "shop-v1-b", "uid-2", "node-2", "", "Pending", False)
        other = PodInfo("blog", "blog-v3-a", "uid-3", "node-1", "10.1.0.9", "Running", False)
        for pod in (running, starting, other):
            h.put_pod(pod)
        for node in ("node-2", "node-1"):
            h.add_node(node)
        key = lambda p: (p.namespace, p.name)  # noqa: E731 - the port promises no order
        assert sorted(await h.cluster.list_pods(), key=key) == sorted([running, starting, other], key=key)
        assert sorted(await h.cluster.list_nodes()) == ["node-1", "node-2"]
        moved = PodInfo("shop", "shop-v1-b", "uid-2", "node-2", "10.1.0.6", "Running", True)
        h.put_pod(moved)  # the same pod, now running: replaced, not added
        assert sorted(await h.cluster.list_pods(), key=key) == sorted([running, moved, other], key=key)

    cluster_harness.run(body)


def test_endpoints_are_listed_sorted_and_unique_with_a_version(cluster_harness):
    async def body(h):
        c = h.cluster
        empty, first = await c.list_endpoints()
        assert empty == [] and isinstance(first, str) and first
        h.set_endpoints("shop", "shop", ready=["10.1.0.10", "10.1.0.9", "10.1.0.10"], not_ready=["10.1.0.7"])
        h.set_endpoints("blog", "blog", not_ready=["10.2.0.5"])
        h.set_endpoints("empty", "empty")
        listed, version = await c.list_endpoints()
        assert sorted(listed, key=lambda e: (e.namespace, e.service)) == [
            Endpoints("blog", "blog", (), ("10.2.0.5",)),
            Endpoints("empty", "empty", (), ()),
            Endpoints("shop", "shop", ("10.1.0.9", "10.1.0.10"), ("10.1.0.7",)),
        ]
        assert version != first
        h.set_endpoints("shop", "shop", ready=["10.1.0.10", "10.1.0.9", "10.1.0.10"], not_ready=["10.1.0.7"])
        assert (await c.list_endpoints())[1] == version  # the very same object again: no change, no new version

    cluster_harness.run(body)


def test_each_ready_address_carries_the_version_of_its_pod(cluster_harness):
    async def body(h):
        c = h.cluster
        _, version = await c.list_endpoints()
        watch = c.watch_endpoints(version)
        try:
            h.run_pods("shop", "shop", [("shop-v12-x7k2p", "10.1.0.9", "v12"), ("shop-v3-ab12c", "10.1.0.10", "v3")])
            while (event := await h.next_event(watch)).endpoints.ready != ("10.1.0.9", "10.1.0.10"):
                pass  # the API's endpoints controller may show the pods one at a time
        finally:
            await watch.close()
        assert event.endpoints.ready_versions == ("v12", "v3")
        assert event.endpoints.versions() == {"10.1.0.9": "v12", "10.1.0.10": "v3"}
        h.run_pods("shop", "shop", [("shop-canary", "10.1.0.4", "")])  # no controller's pod: version unknown
        listed, _ = await c.list_endpoints()
        assert listed == [Endpoints("shop", "shop", ("10.1.0.4", "10.1.0.9", "10.1.0.10"), (), ("", "v12", "v3"))]
        h.set_endpoints("blog", "blog", ready=["10.2.0.1"])  # no pods behind them at all: no versions
        listed, _ = await c.list_endpoints()
        assert [e.ready_versions for e in sorted(listed, key=lambda e: e.namespace)] == [(), ("", "v12", "v3")]

    cluster_harness.run(body)


def test_watch_from_the_listing_version_sees_every_change_in_order(cluster_harness):
    async def body(h):
        c = h.cluster
        h.set_endpoints("blog", "blog", ready=["10.2.0.1"])
        before, version = await c.list_endpoints()
        assert before == [Endpoints("blog", "blog", ("10.2.0.1",))]
        h.set_endpoints("shop", "shop", ready=["10.1.0.5"])  # after the listing, before the watch opens
        watch = c.watch_endpoints(version)
        try:
            first = await h.next_event(watch)
            h.set_endpoints("shop", "shop", ready=["10.1.0.6", "10.1.0.5"], not_ready=["10.1.0.7"])
            h.set_endpoints("shop", "shop", ready=["10.1.0.6", "10.1.0.5"], not_ready=["10.1.0.7"])  # no-op
            h.delete_endpoints("shop", "shop")
            h.delete_endpoints("shop", "shop")  # already gone: nothing
            h.set_endpoints("cart", "cart", not_ready=["10.3.0.1"])
            rest = [await h.next_event(watch) for _ in range(3)]
        finally:
            await watch.close()
        assert [first, *rest] == [
            EndpointsEvent("ADDED", Endpoints("shop", "shop", ("10.1.0.5",))),
            EndpointsEvent("MODIFIED", Endpoints("shop", "shop", ("10.1.0.5", "10.1.0.6"), ("10.1.0.7",))),
            EndpointsEvent("DELETED", Endpoints("shop", "shop", ("10.1.0.5", "10.1.0.6"), ("10.1.0.7",))),
            EndpointsEvent("ADDED", Endpoints("cart", "cart", (), ("10.3.0.1",))),
        ]
        # A closed watch yields nothing more.
        with pytest.raises(StopAsyncIteration):
            await h.next_event(watch)

    cluster_harness.run(body)


def test_api_server_down_raises_cluster_unavailable_naming_the_endpoint(cluster_harness):
    async def body(h):
        c, rt = h.cluster, h.runtime
        h.put_pod(PodInfo("shop", "shop-v1-a", "uid-1", "node-1", "10.1.0.5"))
        h.add_node("node-1")
        h.set_endpoints("shop", "shop", ready=["10.1.0.5"])
        _, version = await c.list_endpoints()
        watch = c.watch_endpoints(version)
        try:
            h.set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])
            assert (await h.next_event(watch)).type == "MODIFIED"  # the stream is open
            h.cut_off()
            with pytest.raises(ClusterUnavailable) as err:
                await h.next_event(watch, h.timeout + 5)  # an open watch breaks
            assert err.value.endpoint == c.endpoint
        finally:
            await watch.close()
        for call in (c.list_endpoints, c.list_pods, c.list_nodes):
            started = rt.now()
            with pytest.raises(ClusterUnavailable) as err:
                await call()
            assert rt.now() - started <= h.timeout + 2.0
            assert err.value.endpoint == c.endpoint and c.endpoint in str(err.value)
        late = c.watch_endpoints(version)  # a watch opened while it is down fails too
        try:
            with pytest.raises(ClusterUnavailable) as err:
                await h.next_event(late, h.timeout + 5)
            assert err.value.endpoint == c.endpoint
        finally:
            await late.close()
        h.restore()  # back with the same state
        listed, _ = await c.list_endpoints()
        assert listed == [Endpoints("shop", "shop", ("10.1.0.5", "10.1.0.6"))]
        assert await c.list_nodes() == ["node-1"]

    cluster_harness.run(body)
