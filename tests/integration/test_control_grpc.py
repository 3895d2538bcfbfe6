"""The control service over the wire: real etcd, the real gRPC server on loopback, a real client.

Both links are TLS as in a deployment: the session's etcd demands our client certificate, the
service serves TLS and every client verifies it against the test CA (tests/integration/test_tls.py
checks the refusals).

Every status code a client can meet is reached through the network, and each refused
call is checked to have written nothing (the etcd revision and every key unchanged).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cni.pools import Pool
from control.auth import TokenTable
from control.generated.leengine.control.v1 import slb_pb2 as pb
from control.generated.leengine.control.v1 import slb_pb2_grpc
from foundation.adapters.etcd_store import EtcdStore
from foundation.logic.slb_domain import DomainStatus, domain_key, status_key
from foundation.ports import StoreUnavailable
from leengine.control_server import FIELD_METADATA, SERVICE, ServerLimits, load_server_tls, start
from leengine.etcd_options import open_store

pytestmark = pytest.mark.etcd

TOKENS = {"ops": "admin-0123456789abcdef", "discovery": "disc-0123456789abcdef", "alice": "alice-0123456789abcdef",
          "bob": "bob-0123456789abcdef0"}
TABLE = TokenTable.from_entries([(TOKENS["ops"], "ops", "admin"), (TOKENS["discovery"], "discovery", "discovery"),
                                 (TOKENS["alice"], "alice", "user"), (TOKENS["bob"], "bob", "user")])
_groups = itertools.count()


def auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


@dataclass
class Service:
    stub: slb_pb2_grpc.SlbCoreStub
    channel: grpc.aio.Channel
    store: EtcdStore
    group: str  # a group name no other test uses

    async def snapshot(self) -> tuple[int, tuple]:
        everything = await self.store.range("/")
        return everything.revision, everything.kvs

    async def refused(self, code: grpc.StatusCode, call: Awaitable) -> grpc.aio.AioRpcError:
        """Await ``call``, expect ``code``, and check that etcd did not change at all."""
        before = await self.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code, caught.value.details()
        assert await self.snapshot() == before, f"{code.name} must write nothing"
        return caught.value

    def domain(self, name: str = "shop.example.com", **fields) -> pb.Domain:
        fields.setdefault("locations", [pb.Location(path="/", set_headers={"X-Env": "prod"})])
        return pb.Domain(name=name, group=self.group, **fields)


def run(etcd_server, body: Callable[[Service], Awaitable[None]], limits: ServerLimits | None = None) -> None:
    async def main() -> None:
        certs = etcd_server.certs
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=2.0)
        server = await start(store, TABLE, tls=load_server_tls(certs.server_cert, certs.server_key, None),
                             limits=limits)
        channel = grpc.aio.secure_channel(f"127.0.0.1:{server.port}",
                                          grpc.ssl_channel_credentials(certs.ca_cert.read_bytes()))
        try:
            await body(Service(slb_pb2_grpc.SlbCoreStub(channel), channel, store, f"g{os.getpid()}-{next(_groups)}"))
        finally:
            await channel.close()
            await server.stop(0)
            await store.close()

    asyncio.run(asyncio.wait_for(main(), 90))


def test_full_flow_create_group_put_domain_set_upstreams_read_back(etcd_server):
    async def body(s: Service) -> None:
        group = await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group, description="public"),
                                         metadata=auth("ops"))
        assert (group.name, group.created_by, group.revision > 0) == (s.group, "ops", True)
        put = await s.stub.PutDomain(pb.PutDomainRequest(domain=s.domain(listen=8080), expected_revision=0),
                                     metadata=auth("alice"))
        assert put.owner == "alice" and put.revision > group.revision
        pool = Pool.parse(f"{s.group}-pods", "10.1.0.0/24", 100, "10.1.0.254")  # upstreams must be pod addresses
        await s.store.put(pool.key, pool.to_bytes())
        revision = (await s.stub.SetUpstreams(pb.SetUpstreamsRequest(
            group=s.group, domain="shop.example.com", servers=["10.1.0.3:8080", "10.1.0.2:8080"]),
            metadata=auth("discovery"))).revision
        assert revision > put.revision

        got = await s.stub.GetDomain(pb.GetDomainRequest(group=s.group, name="shop.example.com"), metadata=auth("bob"))
        assert got.revision == revision
        assert list(got.upstreams) == ["10.1.0.2:8080", "10.1.0.3:8080"]
        assert (got.owner, got.listen, got.locations[0].path, dict(got.locations[0].set_headers),
                got.locations[0].read_timeout) == ("alice", 8080, "/", {"X-Env": "prod"}, 60)
        kv = await s.store.get(domain_key(s.group, "shop.example.com"))
        assert kv is not None and kv.mod_revision == revision  # the revision is etcd's mod_revision

        listed = await s.stub.ListDomains(pb.ListDomainsRequest(group=s.group), metadata=auth("discovery"))
        assert [d.name for d in listed.domains] == ["shop.example.com"] and listed.revision >= revision
        groups = await s.stub.ListGroups(pb.ListGroupsRequest(), metadata=auth("alice"))
        assert s.group in [g.name for g in groups.groups]

        # An Nginx host's agent reports what it applied; GetStatus shows it next to the wanted revision.
        await s.store.put(status_key(s.group, "nginx-1", "shop.example.com"),
                          DomainStatus(put.revision, "", revision, 1.5).to_bytes())
        status = await s.stub.GetStatus(pb.GetStatusRequest(group=s.group, domain="shop.example.com"),
                                        metadata=auth("alice"))
        assert status.revision == revision
        assert [(h.host, h.applied_revision, h.wanted_revision, h.error) for h in status.hosts] == [
            ("nginx-1", put.revision, revision, "")]

        await s.stub.DeleteDomain(pb.DeleteDomainRequest(group=s.group, name="shop.example.com",
                                                         expected_revision=revision), metadata=auth("alice"))
        deleted = await s.stub.DeleteGroup(pb.DeleteGroupRequest(name=s.group), metadata=auth("ops"))
        assert deleted.revision > revision
        assert (await s.store.range(f"/slb/{s.group}/")).kvs == ()
        await s.store.delete(pool.key)

    run(etcd_server, body)


def test_every_error_code_reaches_the_client_and_nothing_is_written(etcd_server):
    async def body(s: Service) -> None:
        stub, code = s.stub, grpc.StatusCode
        await stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        current = await stub.PutDomain(pb.PutDomainRequest(domain=s.domain()), metadata=auth("alice"))

        # UNAUTHENTICATED: no token, an unknown token, another scheme.
        for metadata in ((), (("authorization", "Bearer not-a-known-token-at-all"),),
                         (("authorization", f"Basic {TOKENS['ops']}"),)):
            err = await s.refused(code.UNAUTHENTICATED, stub.CreateGroup(
                pb.CreateGroupRequest(name=f"{s.group}-x"), metadata=metadata))
            assert "Bearer" in err.details()

        # PERMISSION_DENIED: a user making groups, discovery writing domains, a user setting
        # admin-only settings, a user touching another's domain.
        await s.refused(code.PERMISSION_DENIED, stub.CreateGroup(pb.CreateGroupRequest(name=f"{s.group}-x"),
                                                                 metadata=auth("alice")))
        await s.refused(code.PERMISSION_DENIED, stub.PutDomain(pb.PutDomainRequest(domain=s.domain("d.example.com")),
                                                               metadata=auth("discovery")))
        err = await s.refused(code.PERMISSION_DENIED, stub.PutDomain(pb.PutDomainRequest(
            domain=s.domain(settings={"client_max_body_size": "10m"})), metadata=auth("alice")))
        assert "settings" in err.details()
        err = await s.refused(code.PERMISSION_DENIED, stub.DeleteDomain(
            pb.DeleteDomainRequest(group=s.group, name="shop.example.com"), metadata=auth("bob")))
        assert "alice" in err.details()

        # INVALID_ARGUMENT names the field, in the details and as trailing metadata.
        for domain, field in (
            (s.domain(locations=[pb.Location(path="/", set_headers={"X-A": "a;b"})]), "locations.set_headers"),
            (s.domain(locations=[pb.Location(path="/", set_headers={"X-A": 'say "hi"'})]), "locations.set_headers"),
            (s.domain(locations=[pb.Location(path="/", set_headers={"X-A": "$host"})]), "locations.set_headers"),
            (s.domain("Bad_Name.example.com"), "name"),
            (s.domain(settings={"worker_processes": "4"}), "settings"),
        ):
            err = await s.refused(code.INVALID_ARGUMENT, stub.PutDomain(pb.PutDomainRequest(domain=domain),
                                                                        metadata=auth("ops")))
            assert err.details().startswith(f"{field}: ")
            assert (FIELD_METADATA, field) in tuple(err.trailing_metadata())
        err = await s.refused(code.INVALID_ARGUMENT, stub.SetUpstreams(pb.SetUpstreamsRequest(
            group=s.group, domain="shop.example.com", servers=["10.0.0.1"]), metadata=auth("discovery")))
        assert err.details().startswith("servers: ")

        # NOT_FOUND
        await s.refused(code.NOT_FOUND, stub.GetDomain(pb.GetDomainRequest(group=s.group, name="no.example.com"),
                                                       metadata=auth("bob")))
        await s.refused(code.NOT_FOUND, stub.PutDomain(pb.PutDomainRequest(
            domain=pb.Domain(name="a.example.com", group=f"{s.group}-missing")), metadata=auth("ops")))

        # ALREADY_EXISTS
        await s.refused(code.ALREADY_EXISTS, stub.CreateGroup(pb.CreateGroupRequest(name=s.group),
                                                              metadata=auth("ops")))
        await s.refused(code.ALREADY_EXISTS, stub.PutDomain(pb.PutDomainRequest(domain=s.domain(), expected_revision=0),
                                                            metadata=auth("alice")))

        # ABORTED: a stale revision.
        newer = await stub.PutDomain(pb.PutDomainRequest(domain=s.domain(listen=81),
                                                         expected_revision=current.revision), metadata=auth("alice"))
        err = await s.refused(code.ABORTED, stub.PutDomain(pb.PutDomainRequest(
            domain=s.domain(listen=82), expected_revision=current.revision), metadata=auth("alice")))
        assert str(newer.revision) in err.details()

        # FAILED_PRECONDITION: the group still has a domain.
        await s.refused(code.FAILED_PRECONDITION, stub.DeleteGroup(pb.DeleteGroupRequest(name=s.group),
                                                                   metadata=auth("ops")))

    run(etcd_server, body)


def test_etcd_down_is_unavailable_and_the_service_recovers(etcd_server):
    async def body(s: Service) -> None:
        await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        before = await s.snapshot()
        await asyncio.to_thread(etcd_server.stop)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await s.stub.PutDomain(pb.PutDomainRequest(domain=s.domain()), metadata=auth("alice"), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert etcd_server.endpoint in caught.value.details()
        finally:
            await asyncio.to_thread(etcd_server.start)
        for _ in range(100):  # the etcd channel reconnects on its own, after a back-off
            try:
                after = await s.snapshot()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
        assert after == before
        for _ in range(50):
            try:
                put = await s.stub.PutDomain(pb.PutDomainRequest(domain=s.domain()), metadata=auth("alice"))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.2)
        assert put.revision == (await s.store.get(domain_key(s.group, "shop.example.com"))).mod_revision

    run(etcd_server, body)


def test_health_is_serving_and_reflection_lists_the_service(etcd_server):
    async def body(s: Service) -> None:
        health = health_pb2_grpc.HealthStub(s.channel)
        for service in ("", SERVICE):  # no token needed: probes carry none
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflect = reflection_pb2_grpc.ServerReflectionStub(s.channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
        replies = [reply async for reply in reflect.ServerReflectionInfo(iter(requests))]
        names = {svc.name for svc in replies[0].list_services_response.service}
        assert {"leengine.control.v1.SlbCore", "leengine.control.v1.Builds", "grpc.health.v1.Health"} <= names
        from google.protobuf import descriptor_pb2

        raw = replies[1].file_descriptor_response.file_descriptor_proto[0]
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        assert proto.name == "leengine/control/v1/slb.proto"
        assert [m.name for m in proto.service[0].method] == [
            "CreateGroup", "ListGroups", "DeleteGroup", "PutDomain", "GetDomain", "ListDomains", "DeleteDomain",
            "SetUpstreams", "GetStatus"]

    run(etcd_server, body)


# ------------------------------------------------------------------ the console script


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command() -> list[str]:
    script = Path(sys.executable).parent / "leengine-control"
    return [str(script)] if script.exists() else [sys.executable, "-m", "leengine.control_server"]


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_console_script_refuses_a_tokens_file_open_to_others(tmp_path, etcd_server, mode):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['ops']} ops admin\n")
    tokens.chmod(mode)
    done = subprocess.run([*_command(), "--tokens", str(tokens), "--etcd", etcd_server.endpoint,
                           *etcd_server.client_args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"leengine-control: error: tokens file {tokens} is open to its group or others "
                                   f"(mode {mode:04o}): the tokens are secrets; run chmod 600 {tokens}")


def test_console_script_checks_its_limits_and_quotas(tmp_path, etcd_server):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['ops']} ops admin\n")
    tokens.chmod(0o600)
    for flags, message in ((["--max-send-bytes", "1000"], "--max-send-bytes must be a whole number from"),
                           (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs must be"),
                           (["--user-quota", "domains=many"], "--user-quota/--admin-quota: quota domains=many")):
        done = subprocess.run([*_command(), "--tokens", str(tokens), "--etcd", etcd_server.endpoint,
                               *etcd_server.client_args, *flags],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"leengine-control: error: {message}"), done.stderr


def test_console_script_serves_until_sigterm(tmp_path, etcd_server):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['ops']} ops admin\n")
    tokens.chmod(0o600)
    port = _free_port()
    certs = etcd_server.certs
    proc = subprocess.Popen([*_command(), "--tokens", str(tokens), "--etcd", etcd_server.endpoint,
                             *etcd_server.client_args, "--listen", f"127.0.0.1:{port}",
                             "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def client() -> list[str]:
        credentials = grpc.ssl_channel_credentials(certs.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    break
                except grpc.aio.AioRpcError:
                    assert proc.poll() is None and time.monotonic() < deadline, "leengine-control did not come up"
                    await asyncio.sleep(0.1)
            groups = await slb_pb2_grpc.SlbCoreStub(channel).ListGroups(pb.ListGroupsRequest(), metadata=auth("ops"))
            return [g.name for g in groups.groups]

    try:
        assert isinstance(asyncio.run(client()), list)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert (f"serving leengine.control.v1.SlbCore and leengine.control.v1.Builds on 127.0.0.1:{port} "
            "(TLS, 1 principals)") in output


# ------------------------------------------------------------------ limits and quotas (issue 9)


def test_a_group_larger_than_a_grpc_message_is_listed_completely_in_pages(etcd_server):
    """70 domains x 4,096 upstreams (~5.6 MB, over gRPC's 4 MiB): every client still reads the whole group."""
    async def body(s: Service) -> None:
        await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        servers = ",".join(f'"10.{i // 250}.{i % 250}.1:8080"' for i in range(4096))
        for i in range(70):  # written as slb-core writes them (a quota now keeps users from doing this)
            name = f"big{i:02d}.example.com"
            record = (f'{{"group":"{s.group}","listen":80,"locations":[{{"path":"/","read_timeout":60,'
                      f'"set_headers":{{}}}}],"name":"{name}","owner":"alice","settings":{{}},'
                      f'"upstreams":[{servers}]}}')
            await s.store.put(domain_key(s.group, name), record.encode())
        assert sum(len(kv.value) for kv in (await s.store.range(f"/slb/{s.group}/domains/")).kvs) > 4 << 20
        names, token, revisions = [], "", set()
        while True:
            page = await s.stub.ListDomains(pb.ListDomainsRequest(group=s.group, page_size=1000, page_token=token),
                                            metadata=auth("discovery"))
            assert page.ByteSize() < 2 << 20
            revisions.add(page.revision)
            names.extend(d.name for d in page.domains)
            assert all(len(d.upstreams) == 4096 for d in page.domains)
            token = page.next_page_token
            if not token:
                break
        assert names == [f"big{i:02d}.example.com" for i in range(70)] and len(revisions) == 1
        err = await s.refused(grpc.StatusCode.INVALID_ARGUMENT, s.stub.ListDomains(
            pb.ListDomainsRequest(group=s.group, page_token="not-a-token"), metadata=auth("alice")))
        assert dict(err.trailing_metadata())[FIELD_METADATA] == "page_token"
        for i in range(70):  # 5 MB less for the session's other tests (one by one: a prefix delete returns them)
            await s.store.delete(domain_key(s.group, f"big{i:02d}.example.com"))

    run(etcd_server, body)


def test_a_quota_breach_is_resource_exhausted_and_writes_nothing(etcd_server):
    from control.slb_core import Limits, Quotas

    async def body(s: Service) -> None:
        await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        await s.stub.PutDomain(pb.PutDomainRequest(domain=s.domain("a.example.com")), metadata=auth("bob"))
        err = await s.refused(grpc.StatusCode.RESOURCE_EXHAUSTED, s.stub.PutDomain(
            pb.PutDomainRequest(domain=s.domain("b.example.com")), metadata=auth("bob")))
        assert err.details().startswith("quota domains_per_owner exceeded: bob already holds 1 domains")
        headers = {f"X-H{i}": "v" * 40 for i in range(16)}  # ~900 bytes: over the user's 512
        big = s.domain("c.example.com", locations=[pb.Location(path="/", set_headers=headers)])
        err = await s.refused(grpc.StatusCode.RESOURCE_EXHAUSTED, s.stub.PutDomain(
            pb.PutDomainRequest(domain=big), metadata=auth("alice")))
        assert "quota record_bytes exceeded" in err.details()

    run(etcd_server, body, ServerLimits(quotas=Quotas(user=Limits(1, 8, 512))))


def test_huge_fields_are_invalid_argument_with_short_details_and_log_lines(etcd_server, caplog):
    async def body(s: Service) -> None:
        await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        with caplog.at_level("INFO", logger="leengine.control"):
            for domain in (pb.Domain(name="x" * 1_000_000, group=s.group),
                           pb.Domain(name="a.example.com", group=s.group, owner="o" * 1_000_000),
                           s.domain("a.example.com", locations=[pb.Location(path="/" + "p" * 1_000_000)])):
                err = await s.refused(grpc.StatusCode.INVALID_ARGUMENT, s.stub.PutDomain(
                    pb.PutDomainRequest(domain=domain), metadata=auth("ops")))
                assert len(err.details()) <= 1100
            err = await s.refused(grpc.StatusCode.INVALID_ARGUMENT, s.stub.SetUpstreams(pb.SetUpstreamsRequest(
                group=s.group, domain="a.example.com", servers=["1" * 1_000_000]), metadata=auth("ops")))
            assert len(err.details()) <= 1100
            # A failed authentication is logged too (without the token).
            await s.refused(grpc.StatusCode.UNAUTHENTICATED, s.stub.ListGroups(
                pb.ListGroupsRequest(), metadata=(("authorization", "Bearer guessed-token-0123456789"),)))
        lines = [r.getMessage() for r in caplog.records if r.name == "leengine.control"]
        assert lines and all(len(line) < 1300 for line in lines)
        assert any("ListGroups from" in line and "UNAUTHENTICATED (unknown token" in line for line in lines)
        assert not any("guessed-token" in line for line in lines)

    run(etcd_server, body)


def test_a_request_over_the_receive_limit_is_refused_before_the_service(etcd_server):
    async def body(s: Service) -> None:
        await s.stub.CreateGroup(pb.CreateGroupRequest(name=s.group), metadata=auth("ops"))
        await s.refused(grpc.StatusCode.RESOURCE_EXHAUSTED, s.stub.PutDomain(pb.PutDomainRequest(
            domain=s.domain(locations=[pb.Location(path="/", set_headers={"X-A": "v" * 100_000})])),
            metadata=auth("ops")))
        # Below the limit the same call is served.
        await s.stub.PutDomain(pb.PutDomainRequest(domain=s.domain()), metadata=auth("ops"))

    run(etcd_server, body, ServerLimits(max_receive_bytes=64 << 10))
