"""Endpoints over HTTP: the real Cluster adapter against the Kubernetes API mock, then discovery end to end.

The adapter lists and watches endpoints through the official client: ready and not-ready
addresses, events in order from the listing's version, 410 Gone as ``ResourceExpired``,
an API server cut off as ``ClusterUnavailable`` within the timeout, a prompt ``close()``.
Then ``control.discovery.Discovery`` follows two mock API servers (two Cells) and sets the
domain's upstreams through a real control service (``leengine-control``'s gRPC server over TLS,
verified against the test CA, with discovery's token; the ControlClient port's gRPC adapter)
over a real etcd, on the asyncio runtime; the ``leengine-discovery`` daemon does the same as a
process, and with a ``user`` token it is refused (PERMISSION_DENIED), says so and pushes
nothing. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time

import pytest

from cni.pools import Pool
from control.auth import Principal, TokenTable
from control.discovery import Binding, Discovery, drain_key
from control.slb_core import SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.grpc_control import GrpcControlClient
from foundation.adapters.k8s_cluster import KubeCluster
from foundation.logic.slb_domain import DomainStatus, Upstream, domains_prefix, hosts_prefix, status_key
from foundation.ports.cluster import ClusterUnavailable, Endpoints, EndpointsEvent, ResourceExpired
from lab.kube_mock import KubeApiMock
from leengine.control_server import load_server_tls, start
from leengine.etcd_options import open_store

TIMEOUT = 2.0
ADMIN = Principal("ops", "admin")
TOKENS = {"discovery": "disc-0123456789abcdef", "alice": "alice-0123456789abcdef"}
TABLE = TokenTable.from_entries([(TOKENS["discovery"], "discovery", "discovery"), (TOKENS["alice"], "alice", "user")])
_groups = itertools.count()


async def control_service(etcd_server, store):
    """``leengine-control``'s server on loopback over TLS (the test CA's certificate), on ``store``."""
    certs = etcd_server.certs
    return await start(store, TABLE, tls=load_server_tls(certs.server_cert, certs.server_key, None))


def control_client(etcd_server, server, who: str = "discovery") -> GrpcControlClient:
    return GrpcControlClient(f"127.0.0.1:{server.port}", TOKENS[who], ca=etcd_server.certs.ca_cert.read_bytes())


@pytest.fixture
def kube():
    with KubeApiMock() as mock:
        yield mock


def run(coro, limit: float = 60):
    return asyncio.run(asyncio.wait_for(coro, limit))


async def next_event(watch, limit: float = 5.0) -> EndpointsEvent:
    return await asyncio.wait_for(anext(watch), limit)


# ---------------------------------------------------------------------------- the adapter


def test_list_returns_ready_and_not_ready_addresses_sorted_and_unique(kube):
    kube.set_endpoints("shop", "shop", ready=["10.1.0.10", "10.1.0.9", "10.1.0.10"], not_ready=["10.1.0.7"])
    kube.set_endpoints("blog", "blog", not_ready=["10.2.0.5"], port=9000)
    kube.set_endpoints("empty", "empty")

    async def main():
        cluster = KubeCluster(host=kube.url, timeout=TIMEOUT)
        try:
            return await cluster.list_endpoints()
        finally:
            await cluster.close()

    listing, version = run(main())
    assert listing == [
        Endpoints("blog", "blog", ready=(), not_ready=("10.2.0.5",)),
        Endpoints("empty", "empty"),
        Endpoints("shop", "shop", ready=("10.1.0.9", "10.1.0.10"), not_ready=("10.1.0.7",)),
    ]
    assert version == kube.resource_version


def test_a_watch_from_the_listing_version_sees_every_later_change_in_order(kube):
    kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])

    async def main():
        cluster = KubeCluster(host=kube.url, timeout=TIMEOUT, watch_timeout=1)
        _, version = await cluster.list_endpoints()
        # Changes made after the listing but before the watch opens must not be lost.
        kube.set_endpoints("shop", "shop", ready=["10.1.0.5"], not_ready=["10.1.0.6"])
        watch = cluster.watch_endpoints(version)
        events = [await next_event(watch)]
        kube.set_endpoints("blog", "blog", ready=["10.2.0.1"])
        events.append(await next_event(watch))
        await asyncio.sleep(1.5)  # the server ends the stream (timeoutSeconds=1): the watch resumes, unseen
        kube.set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])
        kube.delete_endpoints("blog", "blog")
        events += [await next_event(watch), await next_event(watch)]
        await watch.close()
        await cluster.close()
        return events

    events = run(main())
    assert [(e.type, e.endpoints) for e in events] == [
        ("MODIFIED", Endpoints("shop", "shop", ready=("10.1.0.5",), not_ready=("10.1.0.6",))),
        ("ADDED", Endpoints("blog", "blog", ready=("10.2.0.1",))),
        ("MODIFIED", Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6"))),
        ("DELETED", Endpoints("blog", "blog", ready=("10.2.0.1",))),
    ]


def test_a_version_older_than_the_history_raises_resource_expired():
    with KubeApiMock(history=3) as kube:
        kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])

        async def main():
            cluster = KubeCluster(host=kube.url, timeout=TIMEOUT)
            _, version = await cluster.list_endpoints()
            for i in range(5):  # the history keeps three of these: the listing's version is gone
                kube.set_endpoints("shop", "shop", ready=[f"10.1.0.{10 + i}"])
            watch = cluster.watch_endpoints(version)
            with pytest.raises(ResourceExpired) as expired:
                await next_event(watch)
            with pytest.raises(StopAsyncIteration):  # an ended watch stays ended
                await next_event(watch)
            await watch.close()
            # What the consumer does on it: list again, watch from there.
            listing, fresh = await cluster.list_endpoints()
            watch = cluster.watch_endpoints(fresh)
            kube.set_endpoints("shop", "shop", ready=["10.1.0.99"])
            event = await next_event(watch)
            await watch.close()
            await cluster.close()
            return expired.value, version, listing, event

        error, version, listing, event = run(main())
        url = kube.url
    assert isinstance(error, ClusterUnavailable)  # discovery's relist covers it
    assert error.endpoint == url and error.resource_version == version and "410" in str(error)
    assert listing == [Endpoints("shop", "shop", ready=("10.1.0.14",))]
    assert event == EndpointsEvent("MODIFIED", Endpoints("shop", "shop", ready=("10.1.0.99",)))


def test_an_api_server_cut_off_breaks_the_watch_and_fails_calls_within_the_timeout(kube):
    kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])

    async def main():
        cluster = KubeCluster(host=kube.url, timeout=TIMEOUT)
        _, version = await cluster.list_endpoints()
        watch = cluster.watch_endpoints(version)
        reader = asyncio.ensure_future(next_event(watch, limit=3 * TIMEOUT))
        await asyncio.sleep(0.3)  # the stream is open and idle
        started = time.monotonic()
        await asyncio.to_thread(kube.cut_off)
        with pytest.raises(ClusterUnavailable) as broken:
            await reader
        watch_took = time.monotonic() - started
        await watch.close()
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable) as refused:
            await cluster.list_endpoints()
        with pytest.raises(ClusterUnavailable) as refused_watch:
            await next_event(cluster.watch_endpoints(version), limit=3 * TIMEOUT)
        calls_took = time.monotonic() - started
        kube.restore()
        listing, _ = await cluster.list_endpoints()  # same port, same state
        await cluster.close()
        return broken.value, watch_took, refused.value, refused_watch.value, calls_took, listing

    broken, watch_took, refused, refused_watch, calls_took, listing = run(main())
    assert type(broken) is ClusterUnavailable and broken.endpoint == kube.url and "broke" in broken.reason
    assert type(refused) is ClusterUnavailable and refused.endpoint == kube.url
    assert type(refused_watch) is ClusterUnavailable
    assert watch_took < TIMEOUT and calls_took < 2 * TIMEOUT
    assert listing == [Endpoints("shop", "shop", ready=("10.1.0.5",))]


def test_close_ends_a_blocked_watch_promptly_and_twice_is_harmless(kube):
    async def main():
        cluster = KubeCluster(host=kube.url, timeout=TIMEOUT)
        _, version = await cluster.list_endpoints()
        watch = cluster.watch_endpoints(version)
        reader = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.3)  # the worker thread is blocked reading an idle stream
        started = time.monotonic()
        await watch.close()
        took = time.monotonic() - started
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 1)
        await watch.close()
        kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])
        with pytest.raises(StopAsyncIteration):  # a closed watch yields nothing more
            await next_event(watch)
        await cluster.close()
        return took, watch._thread

    took, thread = run(main())
    assert took < 0.5
    assert thread is not None and not thread.is_alive()


# ---------------------------------------------------------------------------- discovery end to end


async def add_pools(store, tag: str) -> list[str]:
    """The Cells' pod pools (an upstream must be a pod address): 10.1.0.0/24 and 10.2.0.0/24."""
    keys = []
    for cell, cidr in (("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")):
        pool = Pool.parse(f"{tag}-{cell}", cidr, vlan=100, gateway=cidr.replace("0/24", "254"))
        await store.put(pool.key, pool.to_bytes())
        keys.append(pool.key)
    return keys


@pytest.mark.etcd
def test_discovery_writes_ready_endpoints_of_two_cells_into_the_domain_in_etcd(etcd_server):
    group = f"disc-{os.getpid()}-{next(_groups)}"
    domain = "shop.example.com"
    cells = {"cell-a": KubeApiMock(), "cell-b": KubeApiMock()}
    for mock in cells.values():
        mock.start()
    cells["cell-a"].set_endpoints("shop", "shop", ready=["10.1.0.5"], not_ready=["10.1.0.6"])
    cells["cell-b"].set_endpoints("shop", "shop", ready=["10.2.0.7"])

    async def main():
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=TIMEOUT)
        runtime = AsyncioRuntime(seed=1)
        slb = SlbCore(store, runtime)  # the test's admin view
        server = await control_service(etcd_server, store)
        control = control_client(etcd_server, server)
        clusters = {name: KubeCluster(host=mock.url, timeout=TIMEOUT) for name, mock in cells.items()}
        discovery = Discovery(clusters, control, store, runtime, [Binding("shop", "shop", 8080, group, domain)],
                              retry=0.2)
        pools = await add_pools(store, group)
        await slb.create_group(ADMIN, group)
        await slb.put_domain(ADMIN, {"name": domain, "group": group, "owner": "shop"})
        task = runtime.spawn(discovery.run(), name="discovery")

        async def upstreams() -> tuple[Upstream, ...]:
            return (await slb.get_domain(ADMIN, group, domain)).domain.upstreams

        async def settle(*ips: str, limit: float = 10.0) -> tuple[Upstream, ...]:
            """Wait (bounded) until the domain in etcd has exactly these servers; return what it has."""
            want = tuple(Upstream(ip, 8080) for ip in ips)
            deadline = time.monotonic() + limit
            while (have := await upstreams()) != want and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return have

        seen = {}
        try:
            await asyncio.wait_for(discovery.synced.wait(), 10)
            seen["listed"] = await settle("10.1.0.5", "10.2.0.7")
            cells["cell-a"].set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])  # its probe passed
            seen["ready"] = await settle("10.1.0.5", "10.1.0.6", "10.2.0.7")
            cells["cell-b"].set_endpoints("shop", "shop", ready=["10.2.0.7"], not_ready=["10.2.0.8"])
            await asyncio.sleep(0.5)
            seen["not ready"] = await upstreams()
            await asyncio.to_thread(cells["cell-a"].cut_off)  # the machine room's API server is unreachable
            cells["cell-b"].set_endpoints("shop", "shop", ready=["10.2.0.7", "10.2.0.8"])
            seen["cut off"] = await settle("10.1.0.5", "10.1.0.6", "10.2.0.7", "10.2.0.8")
            await asyncio.sleep(0.5)  # a few relist attempts against the refused Cell
            seen["still cut off"] = await upstreams()
            seen["errors"] = discovery.stats.cluster_errors
            cells["cell-a"].delete_endpoints("shop", "shop")  # its Service went away meanwhile
            cells["cell-a"].restore()
            seen["restored"] = await settle("10.2.0.7", "10.2.0.8")
            cells["cell-b"].delete_endpoints("shop", "shop")
            seen["none"] = await settle()
            seen["pushes"], seen["push errors"] = discovery.stats.pushes, discovery.stats.push_errors
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task.join(), 5)
            await slb.delete_domain(ADMIN, group, domain)
            await slb.delete_group(ADMIN, group)
            for key in pools:
                await store.delete(key)
            for cluster in clusters.values():
                await cluster.close()
            await control.close()
            await server.stop(0)
            await store.close()
        return seen

    try:
        seen = run(main(), limit=90)
    finally:
        for mock in cells.values():
            mock.stop()

    def ups(*ips):
        return tuple(Upstream(ip, 8080) for ip in ips)

    assert seen["listed"] == ups("10.1.0.5", "10.2.0.7")
    assert seen["ready"] == ups("10.1.0.5", "10.1.0.6", "10.2.0.7")
    assert seen["not ready"] == ups("10.1.0.5", "10.1.0.6", "10.2.0.7")  # 10.2.0.8 never while not ready
    assert seen["cut off"] == ups("10.1.0.5", "10.1.0.6", "10.2.0.7", "10.2.0.8")  # cell-a's last addresses kept
    assert seen["still cut off"] == seen["cut off"]
    assert seen["errors"] >= 2  # the broken watch, then refused relists
    assert seen["restored"] == ups("10.2.0.7", "10.2.0.8")
    assert seen["none"] == ()
    assert seen["pushes"] >= 5 and seen["push errors"] == 0  # every change went through SetUpstreams


# ---------------------------------------------------------------------------- idle watches (issue 9, item 11)


@pytest.mark.parametrize("connection_close", [False, True], ids=["kept-alive", "connection-close"])
def test_an_idle_watch_outlives_the_request_timeout_and_a_late_change_arrives_promptly(connection_close):
    """watch_timeout (30 s) longer than timeout (1 s): a quiet stream must stay open, not be reopened.

    Both ways of streaming: kept alive and chunked (a real API server), and ``Connection: close``.
    """
    timeout = 1.0
    with KubeApiMock(connection_close=connection_close) as kube:
        kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])

        async def main():
            cluster = KubeCluster(host=kube.url, timeout=timeout, watch_timeout=30)
            _, version = await cluster.list_endpoints()
            watch = cluster.watch_endpoints(version)
            reader = asyncio.ensure_future(anext(watch))
            try:
                await asyncio.sleep(3.5 * timeout)  # silent for longer than the request timeout
                broke = reader.exception() if reader.done() else None
                started = time.monotonic()
                kube.set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])
                event = await asyncio.wait_for(reader, 2)
                took = time.monotonic() - started
            finally:
                reader.cancel()
                await watch.close()
                await cluster.close()
            return broke, event, took, kube.count("watch"), kube.count("list")

        broke, event, took, watches, lists = run(main())
    assert broke is None
    assert event == EndpointsEvent("MODIFIED", Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
    assert took < 0.5
    assert (watches, lists) == (1, 1)  # the one stream stayed open: no reopen, no relist


# ---------------------------------------------------------------------------- corrupt objects (issue 9, item 3)

CORRUPT = [
    {"metadata": {"namespace": "bad", "name": "subsets"}, "subsets": "not a list"},
    {"metadata": {"namespace": "bad", "name": "address"}, "subsets": [{"addresses": [{"ip": "not-an-ip"}]}]},
    {"metadata": {"namespace": "bad", "name": "item"}, "subsets": [["a list, not an object"]]},
    {"metadata": "not an object"},
    ["not", "an", "object"],
]


def test_corrupt_endpoints_objects_are_skipped_in_listings_and_watches(kube):
    kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])
    for i, obj in enumerate(CORRUPT):
        kube.put_raw_endpoints("bad", f"bad-{i}", obj)

    async def main():
        cluster = KubeCluster(host=kube.url, timeout=TIMEOUT)
        listing, version = await cluster.list_endpoints()
        watch = cluster.watch_endpoints(version)
        try:
            for i, obj in enumerate(CORRUPT):  # a corrupt event is skipped; the stream goes on
                kube.put_raw_endpoints("bad", f"late-{i}", obj)
            kube.set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])
            event = await next_event(watch)
        finally:
            await watch.close()
            await cluster.close()
        return listing, event, kube.count("watch"), kube.count("list")

    listing, event, watches, lists = run(main())
    assert listing == [Endpoints("shop", "shop", ready=("10.1.0.5",))]
    assert event == EndpointsEvent("MODIFIED", Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
    assert (watches, lists) == (1, 1)


class Lab:
    """Discovery on asyncio over real etcd and Kubernetes API mocks, setting upstreams through the real
    control service (gRPC, TLS, discovery's token), with a stand-in Nginx host that confirms every domain
    revision (its status record), as an SLB agent does."""

    def __init__(self, etcd_server, cells: dict[str, KubeApiMock], bindings: list[tuple[str, str]],
                 *, cell_timeout: float = TIMEOUT, **discovery_options) -> None:
        self.etcd = etcd_server
        self.mocks = cells
        self.group = f"disc-{os.getpid()}-{next(_groups)}"
        self.bindings = [Binding(ns, ns, 8080, self.group, domain) for ns, domain in bindings]
        self.cell_timeout = cell_timeout
        self.options = {"retry": 0.2, **discovery_options}
        self.writes: list[tuple[str, tuple[str, ...]]] = []
        self.discovery: Discovery | None = None
        self.task = None
        self.confirming = True

    async def __aenter__(self) -> Lab:
        self.store = await open_store(self.etcd.endpoint, self.etcd.client_tls, timeout=TIMEOUT)
        self.runtime = AsyncioRuntime(seed=1)
        self.slb = SlbCore(self.store, self.runtime)  # the test's admin view
        self.server = await control_service(self.etcd, self.store)
        self.control = control_client(self.etcd, self.server)
        self.pools = await add_pools(self.store, self.group)
        await self.slb.create_group(ADMIN, self.group)
        for domain in sorted({b.domain for b in self.bindings}):
            await self.slb.put_domain(ADMIN, {"name": domain, "group": self.group, "owner": "shop"})
        await self.store.put(f"{hosts_prefix(self.group)}nginx-t", b"up")
        self.helpers = [asyncio.ensure_future(self._host())]
        await asyncio.sleep(0.2)  # the host's watch is open
        return self

    async def _host(self) -> None:
        """The stand-in Nginx host: records every write and confirms it (while ``confirming``)."""
        async with self.store.watch(domains_prefix(self.group)) as watch:
            async for event in watch:
                if event.type != "put":
                    continue
                record = json.loads(event.kv.value)
                self.writes.append((record["name"], tuple(record["upstreams"])))
                if self.confirming:
                    status = DomainStatus(event.kv.mod_revision, wanted_revision=event.kv.mod_revision)
                    await self.store.put(status_key(self.group, "nginx-t", record["name"]), status.to_bytes())

    def start(self) -> Discovery:
        clusters = {name: KubeCluster(host=mock.url, timeout=self.cell_timeout) for name, mock in self.mocks.items()}
        self.discovery = Discovery(clusters, self.control, self.store, self.runtime, self.bindings, **self.options)
        self.task = self.runtime.spawn(self.discovery.run(), name="discovery")
        return self.discovery

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(self.task.join(), 5)
            self.task = None
            for cluster in self.discovery.cells.values():
                await cluster.close()

    async def upstreams(self, domain: str) -> tuple[str, ...]:
        return tuple(str(u) for u in (await self.slb.get_domain(ADMIN, self.group, domain)).domain.upstreams)

    async def settle(self, domain: str, *servers: str, limit: float = 10.0) -> tuple[str, ...]:
        deadline = time.monotonic() + limit
        while (have := await self.upstreams(domain)) != servers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return have

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        for helper in self.helpers:
            helper.cancel()
        await self.store.delete(f"/slb/{self.group}/", prefix=True)
        await self.store.delete(f"/control/slb/groups/{self.group}")
        await self.store.delete("/discovery/drains/", prefix=True)
        for key in self.pools:
            await self.store.delete(key)
        await self.control.close()
        await self.server.stop(0)
        await self.store.close()


@pytest.mark.etcd
def test_a_restart_over_http_with_a_cell_cut_off_keeps_its_addresses_and_idle_cells_are_not_relisted(etcd_server):
    """Item 10 over HTTP (an app whose ready pods are all in the cut-off Cell is never emptied) and item 11
    as discovery lives it: with watch_timeout > timeout, quiet Cells are watched, not relisted."""
    cells = {"cell-a": KubeApiMock(), "cell-b": KubeApiMock()}
    for mock in cells.values():
        mock.start()
    cells["cell-a"].set_endpoints("shop", "shop", ready=["10.1.0.5"])
    cells["cell-a"].set_endpoints("blog", "blog", ready=["10.1.0.20"])
    cells["cell-b"].set_endpoints("shop", "shop", ready=["10.2.0.7"])
    shop, blog = "shop.example.com", "blog.example.com"

    async def main():
        seen = {}
        async with Lab(etcd_server, cells, [("shop", shop), ("blog", blog)], cell_timeout=1.0) as lab:
            first = lab.start()
            await asyncio.wait_for(first.synced.wait(), 10)
            seen["first"] = (await lab.settle(shop, "10.1.0.5:8080", "10.2.0.7:8080"),
                             await lab.settle(blog, "10.1.0.20:8080"))
            lists, watches = cells["cell-b"].count("list"), cells["cell-b"].count("watch")
            await asyncio.sleep(3.5)  # quiet for 3.5 x the Cells' request timeout
            seen["idle"] = (cells["cell-b"].count("list") - lists, cells["cell-b"].count("watch") - watches)
            await lab.stop()
            await asyncio.to_thread(cells["cell-a"].cut_off)
            before = len(lab.writes)
            second = lab.start()  # the restart, while cell-a's API is out of reach
            await asyncio.sleep(1.5)
            cells["cell-b"].set_endpoints("shop", "shop", ready=["10.2.0.7", "10.2.0.8"])
            seen["during"] = await lab.settle(shop, "10.1.0.5:8080", "10.2.0.7:8080", "10.2.0.8:8080")
            seen["blog during"] = await lab.upstreams(blog)
            seen["writes during"] = lab.writes[before:]
            seen["synced during"] = second.synced.is_set()
            cells["cell-a"].set_endpoints("blog", "blog", ready=["10.1.0.21"])  # changed while out of reach
            cells["cell-a"].restore()
            await asyncio.wait_for(second.synced.wait(), 10)
            seen["blog after"] = await lab.settle(blog, "10.1.0.21:8080")
        return seen

    try:
        seen = run(main(), limit=90)
    finally:
        for mock in cells.values():
            mock.stop()
    assert seen["first"] == (("10.1.0.5:8080", "10.2.0.7:8080"), ("10.1.0.20:8080",))
    assert seen["idle"] == (0, 0)
    assert seen["synced during"] is False
    assert seen["during"] == ("10.1.0.5:8080", "10.2.0.7:8080", "10.2.0.8:8080")
    assert seen["blog during"] == ("10.1.0.20:8080",)
    assert seen["writes during"] == [(shop, ("10.1.0.5:8080", "10.2.0.7:8080", "10.2.0.8:8080"))]
    assert seen["blog after"] == ("10.1.0.21:8080",)


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "leengine.discovery_cmd", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.etcd
def test_drain_and_forget_commands_drain_through_the_daemon_and_report(etcd_server, tmp_path):
    cells = {"cell-a": KubeApiMock()}
    cells["cell-a"].start()
    cells["cell-a"].set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])
    shop = "shop.example.com"

    async def main():
        seen = {}
        async with Lab(etcd_server, cells, [("shop", shop)], linger=0.5, resync=0.3) as lab:
            config = tmp_path / "discovery.yaml"
            config.write_text(f'cells:\n  cell-a: {{api: "{cells["cell-a"].url}"}}\nbindings:\n'
                              f"  - {{namespace: shop, service: shop, port: 8080, group: {lab.group}, "
                              f"domain: {shop}}}\n")
            etcd = ["--etcd", etcd_server.endpoint, *etcd_server.client_args]
            lab.start()
            await asyncio.wait_for(lab.discovery.synced.wait(), 10)
            seen["start"] = await lab.settle(shop, "10.1.0.5:8080", "10.1.0.6:8080")
            seen["drain"] = await cli("drain", "--config", str(config), *etcd, "--drain-timeout", "5",
                                      "shop", "10.1.0.6")
            seen["drained"] = await lab.upstreams(shop)
            seen["record"] = json.loads((await lab.store.get(drain_key("shop", "10.1.0.6"))).value)
            lab.confirming = False  # the host stops confirming: the next drain cannot complete
            seen["unconfirmed"] = await cli("drain", "--config", str(config), *etcd, "--drain-timeout", "1",
                                            "shop", "10.1.0.5")
            seen["no binding"] = await cli("drain", "--config", str(config), *etcd, "blog", "10.1.0.9")
            seen["forget"] = await cli("forget", *etcd, "shop", "10.1.0.6", "10.1.0.5", "10.1.0.7")
            seen["records"] = (await lab.store.range("/discovery/drains/")).kvs
            seen["back"] = await lab.settle(shop, "10.1.0.5:8080", "10.1.0.6:8080")  # both still listed ready
        return seen

    try:
        seen = run(main(), limit=120)
    finally:
        cells["cell-a"].stop()
    code, out, err = seen["drain"]
    assert code == 0, err
    assert out.splitlines() == ["10.1.0.6 (shop): drained in " + out.split(" in ", 1)[1].splitlines()[0],
                                f"  domains: {seen['record']['domains'][0]}", "  confirmed: nginx-t",
                                "  unconfirmed: -"]
    assert seen["record"]["state"] == "drained" and seen["record"]["domains"][0].endswith("/shop.example.com")
    assert seen["drained"] == ("10.1.0.5:8080",)
    code, out, _ = seen["unconfirmed"]
    assert code == 1 and out.startswith("10.1.0.5 (shop): NOT drained in") and "unconfirmed: nginx-t" in out
    code, _, err = seen["no binding"]
    assert code == 2 and err.startswith("leengine-discovery: error: NAMESPACE: blog has no binding")
    code, out, _ = seen["forget"]
    assert code == 0 and out.splitlines() == ["10.1.0.6 (shop): drain record deleted",
                                              "10.1.0.5 (shop): drain record deleted",
                                              "10.1.0.7 (shop): no drain record (nothing to forget)"]
    assert seen["records"] == ()
    assert seen["back"] == ("10.1.0.5:8080", "10.1.0.6:8080")


# ---------------------------------------------------------------------------- the daemon, a control service client


def token_file(tmp_path, who: str, mode: int = 0o600):
    path = tmp_path / f"{who}.token"
    path.write_text(TOKENS[who] + "\n")
    path.chmod(mode)
    return path


@pytest.mark.etcd
@pytest.mark.parametrize("who", ["discovery", "alice"])
def test_the_daemon_sets_upstreams_through_the_control_service_and_a_user_token_is_refused(etcd_server, tmp_path,
                                                                                           who):
    """``leengine-discovery`` as a process: TLS to the control service, verified against --control-ca, its
    token from a mode-600 file. With discovery's token the ready pod becomes the upstream; with alice's
    (role user; she owns the domain, but its upstreams are discovery's) every push is PERMISSION_DENIED:
    the daemon logs it as an error, once, keeps running, and the domain keeps no servers."""
    kube = KubeApiMock()
    kube.start()
    kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])
    shop = "shop.example.com"

    async def main():
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=TIMEOUT)
        slb = SlbCore(store, AsyncioRuntime(seed=1))
        server = await control_service(etcd_server, store)
        group = f"disc-{os.getpid()}-{next(_groups)}"
        pools = await add_pools(store, group)
        await slb.create_group(ADMIN, group)
        await slb.put_domain(ADMIN, {"name": shop, "group": group, "owner": "alice"})
        config = tmp_path / "discovery.yaml"
        config.write_text(f'cells:\n  cell-a: {{api: "{kube.url}"}}\nbindings:\n'
                          f"  - {{namespace: shop, service: shop, port: 8080, group: {group}, domain: {shop}}}\n"
                          "resync_seconds: 0.5\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "leengine.discovery_cmd", "--config", str(config),
            "--control", f"127.0.0.1:{server.port}", "--control-token-file", str(token_file(tmp_path, who)),
            "--control-ca", str(etcd_server.certs.ca_cert), "--etcd", etcd_server.endpoint,
            *etcd_server.client_args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        lines: list[str] = []

        async def read_stderr() -> None:
            async for line in proc.stderr:
                lines.append(line.decode(errors="replace").rstrip("\n"))

        reader = asyncio.ensure_future(read_stderr())

        async def upstreams() -> tuple[str, ...]:
            return tuple(str(u) for u in (await slb.get_domain(ADMIN, group, shop)).domain.upstreams)

        seen = {}
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.returncode is None:
                if who == "discovery" and await upstreams() == ("10.1.0.5:8080",):
                    break
                if who == "alice" and any("refused to set its upstreams" in line for line in lines):
                    await asyncio.sleep(1.5)  # three more resyncs: still refused, logged once
                    break
                await asyncio.sleep(0.1)
            seen["upstreams"] = await upstreams()
            seen["running"] = proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            seen["code"] = await asyncio.wait_for(proc.wait(), 15)
            await asyncio.wait_for(reader, 5)
            seen["lines"] = lines
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await store.delete(f"/slb/{group}/", prefix=True)
            await store.delete(f"/control/slb/groups/{group}")
            for key in pools:
                await store.delete(key)
            await server.stop(0)
            await store.close()
        return seen

    try:
        seen = run(main(), limit=90)
    finally:
        kube.stop()
    assert seen["running"] and seen["code"] == 0, seen["lines"]
    refused = [line for line in seen["lines"] if "refused to set its upstreams" in line]
    if who == "discovery":
        assert seen["upstreams"] == ("10.1.0.5:8080",)
        assert refused == [] and not any("Traceback" in line for line in seen["lines"])
    else:
        assert seen["upstreams"] == ()
        assert len(refused) == 1, seen["lines"]
        assert " ERROR " in refused[0] and "PERMISSION_DENIED" in refused[0] and "role discovery" in refused[0]
        assert TOKENS["alice"] not in "\n".join(seen["lines"])  # the token never reaches a log


@pytest.mark.parametrize("case", ["no control", "open token file", "no token file", "bad ca"])
def test_the_daemon_refuses_unusable_control_options_in_one_line_exit_2(tmp_path, case):
    config = tmp_path / "discovery.yaml"
    config.write_text('cells:\n  cell-a: {api: "http://127.0.0.1:1"}\nbindings: []\n')
    options = {"--control": "127.0.0.1:50051", "--control-token-file": str(token_file(tmp_path, "discovery"))}
    if case == "no control":
        del options["--control"]
    elif case == "open token file":
        options["--control-token-file"] = str(token_file(tmp_path, "alice", mode=0o644))
    elif case == "no token file":
        options["--control-token-file"] = str(tmp_path / "missing.token")
    else:
        (tmp_path / "ca.crt").write_text("not a certificate\n")
        options["--control-ca"] = str(tmp_path / "ca.crt")
    code, out, err = run(cli("--config", str(config), *(x for kv in options.items() for x in kv)))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    expected = {"no control": "--control:", "open token file": "chmod 600", "no token file": "--control-token-file",
                "bad ca": "--control-ca"}[case]
    assert err.startswith("leengine-discovery: error: ") and expected in err
