"""The ControlClient port's conformance suite: the same test bodies against the gRPC client and the sim adapter.

``control_harness`` runs ``async def body(h)`` either on the sim runtime (``SimControlClient``:
slb-core in-process over a ``MemoryStore``, as a principal) or on asyncio with a
``GrpcControlClient`` calling a real ``leengine-control`` server over TLS (verified against
the test CA) with a bearer token, over the session's etcd (TLS, client certificate). The
harness sets things up the same way on both, as an admin through slb-core on the same
store (``admin``), gives a client per principal (``h.client("discovery")``, ``"alice"`` is a
``user``) and takes etcd away behind the service (``outage``). A difference between the
adapters (a result, an error type, a field) is a bug in one of them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cni.pools import Pool
from control.auth import Principal, TokenTable
from control.slb_core import SlbCore
from foundation.logic.slb_domain import DomainStatus, host_key, status_key
from foundation.ports import StoreUnavailable
from foundation.ports.control import (
    ControlClient,
    ControlError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StatusReport,
    Unavailable,
)
from sim.adapters.control import SimControlClient
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
PRINCIPALS = {"discovery": Principal("discovery", "discovery"), "alice": Principal("alice", "user")}
TOKENS = {"discovery": "disc-0123456789abcdef", "alice": "alice-0123456789abcdef"}
DOMAIN = "shop.example.com"
_groups = itertools.count()


@dataclass
class ControlHarness:
    kind: str
    admin: SlbCore  # slb-core as the harness's admin, on the store the service uses
    store: Any
    group: str  # a group no other test uses, created with DOMAIN (owner alice) and the pod pool 10.9.0.0/16
    client: Callable[[str], ControlClient]
    outage: Callable[[bool], Awaitable[None]]  # etcd away behind the service (True) and back (False)


async def _prepare(admin: SlbCore, store: Any, group: str) -> None:
    pool = Pool.parse(f"{group}-pool", "10.9.0.0/16", vlan=100, gateway="10.9.255.254")
    await store.put(pool.key, pool.to_bytes())
    await admin.create_group(ADMIN, group)
    await admin.put_domain(ADMIN, {"name": DOMAIN, "group": group, "owner": "alice"})


class _SimRunner:
    kind = "sim"

    def run(self, body: Callable[[ControlHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        server = MemoryStore(runtime)
        store = server.client("control", latency=0.001, timeout=1.0)
        admin = SlbCore(server.client("admin", latency=0.001), runtime)
        group = f"g{next(_groups)}"

        async def outage(down: bool) -> None:
            server.set_available(not down)

        async def main() -> None:
            await _prepare(admin, admin.store, group)
            core = SlbCore(store, runtime)
            await body(ControlHarness("sim", admin, admin.store, group,
                                      lambda who: SimControlClient(core, PRINCIPALS[who]), outage))

        runtime.run_until_complete(main(), limit=3600)


class _GrpcRunner:
    kind = "grpc"

    def __init__(self, etcd_server) -> None:
        self.etcd = etcd_server

    def run(self, body: Callable[[ControlHarness], Awaitable[None]]) -> None:
        from foundation.adapters.asyncio_runtime import AsyncioRuntime
        from foundation.adapters.grpc_control import GrpcControlClient
        from leengine.control_server import load_server_tls, start
        from leengine.etcd_options import open_store

        etcd = self.etcd
        certs = etcd.certs
        table = TokenTable.from_entries([(TOKENS[name], p.name, p.role) for name, p in PRINCIPALS.items()])

        async def main() -> None:
            store = await open_store(etcd.endpoint, etcd.client_tls, timeout=1.0)
            admin = SlbCore(store, AsyncioRuntime(seed=1))
            group = f"ctl{os.getpid()}-{next(_groups)}"
            server = await start(store, table, tls=load_server_tls(certs.server_cert, certs.server_key, None))
            clients: list[GrpcControlClient] = []

            def client(who: str) -> ControlClient:
                made = GrpcControlClient(f"127.0.0.1:{server.port}", TOKENS[who], ca=certs.ca_cert.read_bytes(),
                                         timeout=5.0)
                clients.append(made)
                return made

            async def outage(down: bool) -> None:
                if down:
                    etcd.pause()
                    return
                etcd.resume()
                for _ in range(50):  # a channel broken by the pause reconnects: wait until etcd answers again
                    try:
                        await store.get("/")
                        return
                    except StoreUnavailable:
                        await asyncio.sleep(0.2)

            try:
                await _prepare(admin, store, group)
                await asyncio.wait_for(body(ControlHarness("grpc", admin, store, group, client, outage)), 120)
            finally:
                etcd.resume()
                for made in clients:
                    await made.close()
                await store.delete(f"/slb/{group}/", prefix=True)
                await store.delete(f"/control/slb/groups/{group}")
                await store.delete(f"/ipam/pools/{group}-pool")
                await server.stop(0)
                await store.close()

        asyncio.run(main())


@pytest.fixture(params=["sim", "grpc"])
def control_harness(request):
    if request.param == "sim":
        return _SimRunner()
    return _GrpcRunner(request.getfixturevalue("etcd_server"))


# ---------------------------------------------------------------------------- bodies


def test_set_upstreams_returns_the_revision_get_domain_reads_back_and_the_same_servers_write_nothing(
        control_harness):
    async def body(h: ControlHarness) -> None:
        control = h.client("discovery")
        revision = await control.set_upstreams(h.group, DOMAIN, ["10.9.0.7:8080", "10.9.0.5:8080"])
        stored = await control.get_domain(h.group, DOMAIN)
        assert stored.revision == revision > 0
        assert [str(u) for u in stored.domain.upstreams] == ["10.9.0.5:8080", "10.9.0.7:8080"]
        assert (stored.domain.name, stored.domain.group, stored.domain.owner) == (DOMAIN, h.group, "alice")
        assert await control.set_upstreams(h.group, DOMAIN, ("10.9.0.5:8080", "10.9.0.7:8080")) == revision
        emptied = await control.set_upstreams(h.group, DOMAIN, [])
        assert emptied > revision and (await control.get_domain(h.group, DOMAIN)).domain.upstreams == ()

    control_harness.run(body)


def test_a_missing_domain_is_not_found_for_reads_and_writes(control_harness):
    async def body(h: ControlHarness) -> None:
        control = h.client("discovery")
        with pytest.raises(NotFound):
            await control.get_domain(h.group, "nope.example.com")
        with pytest.raises(NotFound):
            await control.set_upstreams(h.group, "nope.example.com", ["10.9.0.5:8080"])
        with pytest.raises(NotFound):
            await control.get_status(h.group, "nope.example.com")

    control_harness.run(body)


def test_bad_servers_are_invalid_argument_naming_the_field_and_nothing_is_written(control_harness):
    async def body(h: ControlHarness) -> None:
        control = h.client("discovery")
        before = (await control.get_domain(h.group, DOMAIN)).revision
        for servers in (["not-an-address"], ["10.9.0.5"], ["192.168.1.1:2379"]):  # the last is no pod address
            with pytest.raises(InvalidArgument) as refused:
                await control.set_upstreams(h.group, DOMAIN, servers)
            assert refused.value.field == "servers" and refused.value.code == "INVALID_ARGUMENT"
        with pytest.raises(InvalidArgument) as bad_group:
            await control.get_domain("Not A Group", DOMAIN)
        assert bad_group.value.field == "group"
        assert (await control.get_domain(h.group, DOMAIN)).revision == before

    control_harness.run(body)


def test_a_user_may_read_but_not_set_the_upstreams_discovery_sets(control_harness):
    """The least-privilege rule, the same through both adapters: alice owns the domain, but its
    upstreams are discovery's (upstreams_by: discovery)."""
    async def body(h: ControlHarness) -> None:
        alice = h.client("alice")
        before = await alice.get_domain(h.group, DOMAIN)
        with pytest.raises(PermissionDenied) as refused:
            await alice.set_upstreams(h.group, DOMAIN, ["10.9.0.5:8080"])
        assert "discovery" in str(refused.value) and refused.value.code == "PERMISSION_DENIED"
        assert (await alice.get_domain(h.group, DOMAIN)) == before

    control_harness.run(body)


def test_get_status_reports_each_host_applied_revision_and_the_registered_hosts(control_harness):
    async def body(h: ControlHarness) -> None:
        control = h.client("discovery")
        revision = await control.set_upstreams(h.group, DOMAIN, ["10.9.0.5:8080"])
        await h.store.put(host_key(h.group, "nginx-2"), b"up")  # registered, has not reported yet
        await h.store.put(host_key(h.group, "nginx-1"), b"up")
        await h.store.put(status_key(h.group, "nginx-1", DOMAIN),
                          DomainStatus(revision, wanted_revision=revision, at=1700000000.5).to_bytes())
        await h.store.put(status_key(h.group, "nginx-0", DOMAIN),  # gone (no lease), still reports
                          DomainStatus(revision - 1, wanted_revision=revision, error="nginx -t failed").to_bytes())
        report = await control.get_status(h.group, DOMAIN)
        assert isinstance(report, StatusReport)
        assert report.revision == revision
        assert report.registered == ("nginx-1", "nginx-2")
        assert [(s.host, s.applied_revision, s.wanted_revision, s.error) for s in report.hosts] == [
            ("nginx-0", revision - 1, revision, "nginx -t failed"), ("nginx-1", revision, revision, "")]
        assert report.hosts[1].at == 1700000000.5

    control_harness.run(body)


def test_etcd_away_behind_the_service_is_unavailable_and_calls_work_again_after(control_harness):
    async def body(h: ControlHarness) -> None:
        control = h.client("discovery")
        await h.outage(True)
        try:
            for call in (control.get_domain(h.group, DOMAIN), control.set_upstreams(h.group, DOMAIN, []),
                         control.get_status(h.group, DOMAIN)):
                with pytest.raises(Unavailable) as away:
                    await call
                assert isinstance(away.value, ControlError) and away.value.code == "UNAVAILABLE"
        finally:
            await h.outage(False)
        assert (await control.get_domain(h.group, DOMAIN)).domain.name == DOMAIN

    control_harness.run(body)
