"""The build calls of the control service over the wire: real etcd, the real gRPC server, a real client.

Each refusal is checked to have written nothing; a task on a build agent whose lease expires is
moved by the server's own reassigner; a build agent (on asyncio, with a builder that finishes at
once: the real one is tested in test_build_e2e.py) finishes it and the result reads back.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from control.auth import TokenTable
from control.generated.leengine.control.v1 import builds_pb2 as pb
from control.generated.leengine.control.v1 import builds_pb2_grpc
from control.members import Membership, Resource, Role
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.logic.build_task import BUILD, agent_key, id_key, rank_hosts, result_key
from foundation.ports import DeleteOp
from foundation.ports.builder import BuildOutcome, StepTiming
from leengine.control_server import FIELD_METADATA, load_server_tls, start
from leengine.etcd_options import open_store
from node.build_agent import BuildAgent, BuildAgentConfig

C1 = "5d41402abc4b2a76b9719d911017c592aabbccdd"  # builds name full commit ids, never refs
CORRUPT = "7f2a9c0d1e4b5a6978877665544332211009988a"
TOKENS = {"ops": "admin-0123456789abcdef", "alice": "alice-0123456789abcdef"}
READER = Membership(Resource("app", "shop"), "alice", Role.REPORTER, "ops", 1.7e9)
TABLE = TokenTable.from_entries([(TOKENS["ops"], "ops", "admin"), (TOKENS["alice"], "alice", "user")])


def auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


class InstantBuilder:
    host = "build-b"

    async def build(self, request, log):
        log("clone: 0.00s")
        return BuildOutcome(f"registry.test/{request.app}:{request.commit}",
                            tuple(StepTiming(s, 0.01) for s in ("clone", "compile", "image", "push")), False)


def test_submit_get_and_list_builds_with_every_refusal_writing_nothing(etcd_server):
    async def main() -> None:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=2.0)
        await store.txn([], [DeleteOp(BUILD, prefix=True)])
        certs = etcd_server.certs  # the service serves TLS with the test CA's server certificate
        server = await start(store, TABLE, tls=load_server_tls(certs.server_cert, certs.server_key, None))
        channel = grpc.aio.secure_channel(f"127.0.0.1:{server.port}",
                                          grpc.ssl_channel_credentials(certs.ca_cert.read_bytes()))
        stub = builds_pb2_grpc.BuildsStub(channel)

        async def refused(code, call, field=None):
            before = await store.range("/")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == code, caught.value.details()
            if field is not None:
                assert (FIELD_METADATA, field) in tuple(caught.value.trailing_metadata() or ())
            after = await store.range("/")
            assert (after.revision, after.kvs) == (before.revision, before.kvs), f"{code.name} wrote something"
            return caught.value

        try:
            await refused(grpc.StatusCode.UNAVAILABLE, stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=C1),
                                                                        metadata=auth("ops")))
            # Two agents; the one the repo ranks first holds a short lease that the test lets expire.
            home, heir = rank_hosts("shop", ["build-a", "build-b"])
            lease = await store.grant(2)
            await store.put(agent_key(home), b"{}", lease=lease.id)
            await store.put(agent_key(heir), b"{}")
            # alice reads the app's builds (Reporter: build.read) but may not queue one (build.trigger: Developer).
            await store.put(READER.key, READER.to_bytes())
            await refused(grpc.StatusCode.PERMISSION_DENIED,
                          stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=C1), metadata=auth("alice")))
            await refused(grpc.StatusCode.INVALID_ARGUMENT,
                          stub.SubmitBuild(pb.SubmitBuildRequest(app="Shop;rm", commit=C1), metadata=auth("ops")),
                          field="app")
            await refused(grpc.StatusCode.INVALID_ARGUMENT,
                          stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=C1, repo="../etc"),
                                           metadata=auth("ops")), field="repo")
            for ref in ("HEAD", "main", "v1", C1[:7], f"{C1}..HEAD", C1.upper(), "HEAD@{1}"):  # refs move: refused
                refusal = await refused(grpc.StatusCode.INVALID_ARGUMENT,
                                        stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=ref),
                                                         metadata=auth("ops")), field="commit")
                assert "full commit id" in refusal.details()
                await refused(grpc.StatusCode.INVALID_ARGUMENT,
                              stub.GetBuild(pb.GetBuildRequest(app="shop", commit=ref), metadata=auth("alice")),
                              field="commit")
            # A result record nobody could have written (nested past the decoder's stack): INTERNAL for that
            # build, and the service goes on answering.
            await store.put(id_key(f"shop@{CORRUPT}"), b"build-a")
            await store.put(result_key(f"shop@{CORRUPT}"), b"[" * 100000)
            corrupt = await refused(grpc.StatusCode.INTERNAL,
                                    stub.GetBuild(pb.GetBuildRequest(app="shop", commit=CORRUPT),
                                                  metadata=auth("alice")))
            assert "unreadable" in corrupt.details() and len(corrupt.details()) < 500
            await refused(grpc.StatusCode.NOT_FOUND, stub.GetBuild(pb.GetBuildRequest(app="shop", commit=C1),
                                                                   metadata=auth("alice")))
            await refused(grpc.StatusCode.UNAUTHENTICATED,
                          stub.GetBuild(pb.GetBuildRequest(app="shop", commit=C1)))

            queued = await stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=C1), metadata=auth("ops"))
            assert (queued.task, queued.state, queued.host, queued.attempt) == (f"shop@{C1}", "queued", home, 1)
            again = await stub.SubmitBuild(pb.SubmitBuildRequest(app="shop", commit=C1), metadata=auth("ops"))
            assert (again.task, again.host) == (f"shop@{C1}", home)  # a commit is queued once
            agents = await stub.ListBuildAgents(pb.ListBuildAgentsRequest(), metadata=auth("alice"))
            assert list(agents.hosts) == sorted([home, heir])

            # The home agent never sends a keepalive: its lease expires, the server moves the task.
            for _ in range(100):
                moved = await stub.GetBuild(pb.GetBuildRequest(app="shop", commit=C1), metadata=auth("alice"))
                if moved.host == heir:
                    break
                await asyncio.sleep(0.1)
            assert (moved.state, moved.host, moved.attempt) == ("queued", heir, 2)

            builder = InstantBuilder()
            builder.host = heir
            agent = BuildAgent(store, builder, AsyncioRuntime(), BuildAgentConfig(heir, ttl=5))
            task = asyncio.create_task(agent.run())
            try:
                for _ in range(100):
                    done = await stub.GetBuild(pb.GetBuildRequest(app="shop", commit=C1), metadata=auth("alice"))
                    if done.state == "done":
                        break
                    await asyncio.sleep(0.1)
            finally:
                task.cancel()
            assert (done.state, done.host, done.attempt, done.image) == ("done", heir, 2, f"registry.test/shop:{C1}")
            assert [s.name for s in done.steps] == ["clone", "compile", "image", "push"] and list(done.log)
        finally:
            await channel.close()
            await server.stop(0)
            await store.txn([], [DeleteOp(BUILD, prefix=True), DeleteOp(READER.key)])
            await store.close()

    asyncio.run(asyncio.wait_for(main(), 90))
