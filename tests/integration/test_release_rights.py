"""The release RPCs' role matrix over the wire: real etcd (TLS), the real gRPC server over TLS, tokens.

The same principals as the platform's role matrix (tests/integration/test_platform_grpc.py:
Owner, Master, Developer, Reporter, Guest, an admin, a stranger, discovery) × StartRelease,
GetRelease, RevertRelease × a production and a non-production app × an app of their own and
a foreign one: 96 cases, each on a fresh app served by a fresh domain carol owns in slb-core,
with two versions (and, for GetRelease and RevertRelease, a release carol started). Each
asserts the exact status code, that a refused call (and every read) left the etcd revision
unchanged, and that a call that succeeded wrote its activity record (principal and action).
The expected codes come from the rule written here: a release needs Master on a production
app and Developer on a non-production one; reading it needs Guest.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest

from control.auth import Principal
from control.generated.leengine.control.v1 import platform_pb2 as pb
from control.slb_core import SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from tests.integration.test_platform_grpc import (
    CELLS,
    IMAGE,
    IMAGE2,
    ORDER,
    PRINCIPALS,
    ROLE_USERS,
    Platform,
    auth,
    run,
)
from tests.integration.test_platform_grpc import fresh as platform_fresh

pytestmark = pytest.mark.etcd

GROUP = f"rel{os.getpid() % 100000}"


def fresh(prefix: str = "m") -> str:
    """A name no other test of the session used. pytest imports test_platform_grpc as ``test_platform_grpc``,
    this module imports it again as ``tests.integration.test_platform_grpc``: two name counters over one etcd,
    so the names made here carry a prefix of their own (two ``m3931-100`` apps collided once)."""
    return platform_fresh("r" + prefix)


@dataclass(frozen=True)
class Case:
    rpc: str
    reading: bool  # GetRelease: app.read; the others: version.release / version.deploy
    started: bool  # carol starts a release first
    call: Callable[[Platform, str, str], Awaitable[object]]
    action: str = ""


CASES = [
    Case("StartRelease", False, False, lambda p, a, w: p.stub.StartRelease(pb.StartReleaseRequest(
        app=a, version="v2", bake_seconds=3600, request_id=f"r-{a}"), metadata=auth(w)), "release.start"),
    Case("GetRelease", True, True, lambda p, a, w: p.stub.GetRelease(pb.GetReleaseRequest(app=a),
                                                                    metadata=auth(w))),
    Case("RevertRelease", False, True, lambda p, a, w: p.stub.RevertRelease(pb.RevertReleaseRequest(
        app=a, request_id=f"r-{a}"), metadata=auth(w)), "release.revert"),
]


def least(case: Case, production: bool) -> str:
    return "guest" if case.reading else ("master" if production else "developer")


def expected(case: Case, production: bool, who: str, own: bool) -> grpc.StatusCode:
    if who == "ops":
        return grpc.StatusCode.OK
    if who == "discovery":
        return grpc.StatusCode.PERMISSION_DENIED
    role = ROLE_USERS.get(who)
    if role is None or not own:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.OK if ORDER.index(role) >= ORDER.index(least(case, production)) \
        else grpc.StatusCode.PERMISSION_DENIED


def test_the_release_rpcs_role_matrix_every_principal_production_and_not_own_and_foreign(etcd_server):
    async def body(p: Platform) -> None:
        core = SlbCore(p.store, AsyncioRuntime())
        await core.create_group(Principal("ops", "admin"), GROUP)
        seen: dict[tuple[str, bool, str, bool], str] = {}
        for case, production, who, own in itertools.product(CASES, (True, False), PRINCIPALS, (True, False)):
            app = fresh("rel")
            domain = f"{app}.example.com"
            await core.put_domain(Principal("ops", "admin"), {"name": domain, "group": GROUP, "owner": "carol",
                                                              "locations": [{"path": "/"}]})
            await p.stub.CreateApp(pb.CreateAppRequest(name=app, cells=list(CELLS), production=production,
                                                       group=GROUP, domain=domain), metadata=auth("carol"))
            await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(
                image=IMAGE, replicas=1)), metadata=auth("carol"))
            await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(image=IMAGE2)),
                                       metadata=auth("carol"))
            if case.started:
                await p.stub.StartRelease(pb.StartReleaseRequest(app=app, version="v2", bake_seconds=3600),
                                          metadata=auth("carol"))
            if own and who in (*ROLE_USERS, "discovery"):
                await p.stub.AddMember(pb.MemberRequest(resource=pb.Resource(kind="app", name=app), user=who,
                                                        role=ROLE_USERS.get(who, "owner")), metadata=auth("carol"))
            want = expected(case, production, who, own)
            where = f"{case.rpc} by {who} on {'own' if own else 'foreign'} {'production' if production else 'other'}"
            if want != grpc.StatusCode.OK:
                error = await p.refused(want, case.call(p, app, who))
                if want == grpc.StatusCode.PERMISSION_DENIED and who != "discovery":
                    assert f"needs {least(case, production)} or above" in error.details(), (where, error.details())
                if want == grpc.StatusCode.NOT_FOUND:
                    assert "does not exist" in error.details(), (where, error.details())
                seen[(case.rpc, production, who, own)] = want.name
                continue
            before = await p.revision()
            answer = await case.call(p, app, who)
            after = await p.revision()
            if case.reading:
                assert after == before, f"{where}: a read wrote"
                assert answer.release.state == "running" and answer.release.started_by == "carol"
            else:
                assert after > before, f"{where}: nothing written"
                mine = [r for r in await p.records("app", app) if r["id"] == f"r-{app}"]
                assert [(r["who"], r["action"]) for r in mine] == [(who, case.action)], (where, mine)
                assert answer.release.state == ("running" if case.rpc == "StartRelease" else "reverted"), where
            seen[(case.rpc, production, who, own)] = "OK"
        assert len(seen) == 96
        outcomes = sorted(seen.values())
        # per (RPC, production): ops + the roles at or above the least, on their own app
        assert {o: outcomes.count(o) for o in set(outcomes)} == {"OK": 32, "PERMISSION_DENIED": 22,
                                                                 "NOT_FOUND": 42}
        assert seen[("StartRelease", False, "dave", True)] == "OK"  # a Developer, non-production
        assert seen[("StartRelease", True, "dave", True)] == "PERMISSION_DENIED"
        assert seen[("GetRelease", True, "gina", True)] == "OK"
        assert seen[("RevertRelease", True, "mara", True)] == "OK"

    run(etcd_server, body)


def test_an_app_is_served_only_by_a_domain_its_creator_may_steer(etcd_server):
    async def body(p: Platform) -> None:
        code = grpc.StatusCode
        core = SlbCore(p.store, AsyncioRuntime())
        group = f"{GROUP}d"
        await core.create_group(Principal("ops", "admin"), group)
        domain = f"{fresh('dom')}.example.com"
        await core.put_domain(Principal("ops", "admin"), {"name": domain, "group": group, "owner": "carol",
                                                          "locations": [{"path": "/"}]})
        error = await p.refused(code.PERMISSION_DENIED, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=list(CELLS), group=group, domain=domain), metadata=auth("sam")))
        assert "belongs to carol" in error.details()
        await p.refused(code.NOT_FOUND, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=list(CELLS), group=group, domain="nowhere.example.com"), metadata=auth("carol")))
        error = await p.refused(code.INVALID_ARGUMENT, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=list(CELLS), group=group), metadata=auth("carol")))  # a group without a domain
        app = fresh()
        view = await p.stub.CreateApp(pb.CreateAppRequest(name=app, cells=list(CELLS), group=group, domain=domain),
                                      metadata=auth("ops"))  # an admin may serve any domain
        assert (view.app.group, view.app.domain) == (group, domain)
        await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(image=IMAGE, replicas=1)),
                                   metadata=auth("ops"))
        assert await core.get_shares(Principal("ops", "admin"), group, domain) == {"v1": 100}
        # without a domain there is nothing to release
        plain = fresh()
        await p.stub.CreateApp(pb.CreateAppRequest(name=plain, cells=list(CELLS)), metadata=auth("carol"))
        await p.refused(code.FAILED_PRECONDITION, p.stub.StartRelease(pb.StartReleaseRequest(
            app=plain, version="v1"), metadata=auth("carol")))

    run(etcd_server, body)
