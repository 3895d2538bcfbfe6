"""Shared fixtures: the Store under test, behind one harness for both runtimes; a private OVS.

A conformance test is ``async def body(h)`` where ``h`` is a ``StoreHarness``;
``store_harness.run(body)`` runs it on the sim runtime with the in-memory store, or
on asyncio with a real etcd started for the session. Each test gets its own key
prefix so tests never see each other's keys on the shared etcd.

``etcd_server`` (the session's etcd) runs with TLS and client-certificate auth, as a
real deployment does: ``tls_certs`` is its throwaway CA (``lab/certs.py``),
and every client passes ``etcd_server.client_tls`` (``open_store``) or
``etcd_server.client_args`` (a command's ``--etcd-ca/--etcd-cert/--etcd-key``).

``ovs_server`` runs ``lab.ovs.running_ovs()`` for the session (integration
tests and the Dataplane conformance suite share it): its own ovsdb-server and
ovs-vswitchd in a temporary directory, never the system's. It needs root and Debian's
openvswitch-switch; without them the tests fail with the reason, they never skip.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.etcd_store import EtcdStore
from lab.etcd import running_etcd
from lab.ovs import running_ovs
from leengine.etcd_options import open_store
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

_test_ids = itertools.count()


@dataclass
class StoreHarness:
    """What a conformance test body gets: a store, a runtime, a prefix and fault switches."""

    kind: str
    store: object
    runtime: object
    prefix: str
    cut_off: Callable[[], Awaitable[None]]
    heal: Callable[[], Awaitable[None]]
    timeout: float
    new_client: Callable[[str], Awaitable[object]]
    outage: Callable[[bool], Awaitable[None]]  # outage(True): the server is down for everyone; False: back

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """A throwaway CA with a server (127.0.0.1, localhost) and a client certificate, for the session."""
    from lab.certs import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def etcd_server(tls_certs):
    with running_etcd(certs=tls_certs) as server:
        yield server


@pytest.fixture(scope="session")
def ovs_server():
    with running_ovs() as server:
        yield server


class _SimRunner:
    kind = "sim"
    timeout = 2.0

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def run(self, body: Callable[[StoreHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        server = MemoryStore(runtime)
        client = server.client("test", timeout=self.timeout)

        async def cut_off() -> None:
            client.partition()

        async def heal() -> None:
            client.heal()

        async def new_client(name: str) -> object:
            return server.client(name, timeout=self.timeout)

        async def outage(down: bool) -> None:
            server.set_available(not down)

        harness = StoreHarness("sim", client, runtime, self.prefix, cut_off, heal, self.timeout, new_client, outage)
        runtime.run_until_complete(body(harness), limit=3600)


class _EtcdRunner:
    kind = "etcd"
    timeout = 2.0

    def __init__(self, server, prefix: str) -> None:
        self.server = server
        self.prefix = prefix

    def run(self, body: Callable[[StoreHarness], Awaitable[None]]) -> None:
        server = self.server

        async def main() -> None:
            store = await open_store(server.endpoint, server.client_tls, timeout=self.timeout)
            extra: list[EtcdStore] = []

            async def cut_off() -> None:
                server.pause()

            async def heal() -> None:
                server.resume()

            async def new_client(name: str) -> object:
                client = await open_store(server.endpoint, server.client_tls, timeout=self.timeout)
                extra.append(client)
                return client

            async def outage(down: bool) -> None:
                await asyncio.to_thread(server.stop if down else server.start)

            harness = StoreHarness("etcd", store, AsyncioRuntime(seed=1), self.prefix, cut_off, heal, self.timeout,
                                   new_client, outage)
            try:
                await asyncio.wait_for(body(harness), 120)
            finally:
                server.resume()
                server.start()  # no-op when running
                for client in [store, *extra]:
                    await client.close()

        asyncio.run(main())


@pytest.fixture(params=["sim", "etcd"])
def store_harness(request):
    prefix = f"/conformance/{os.getpid()}-{next(_test_ids)}/"
    if request.param == "sim":
        return _SimRunner(prefix)
    return _EtcdRunner(request.getfixturevalue("etcd_server"), prefix)
