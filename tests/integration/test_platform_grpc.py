"""The platform's API over the wire: real etcd (TLS, client certificates), the real gRPC server over TLS, tokens.

* **The role matrix** (issue 13's "Done when"; 240 cases, 698 calls): every principal (Owner, Master, Developer,
  Reporter, Guest, an admin, a stranger, discovery) × every reading and mutating RPC × an
  app it is a member of and a foreign one, each case on fresh apps: the exact status code,
  a refused call (and every read) leaves the etcd revision unchanged, and a call that
  succeeds wrote its activity record. The expected codes come from a table written here,
  independently of ``control.members.RIGHTS``.
* The apps flow: create in two Cells, deploy (the second version prefilled), scale, delete,
  activity pages newest first, daily counts equal to a recount; without Cells the apps RPCs
  are FAILED_PRECONDITION naming ``--cells``.
* The console scripts: ``leengine-control --cells FILE`` against two Kubernetes API mocks
  (the real Workloads adapter), driven by ``leengine app`` commands.

The matrix runs the Cells in memory (``SimWorkloads``: the Workloads port's conformance suite
holds it to the real adapter) so the matrix takes seconds; the console-script test uses the
real adapter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from control.activity import ACTIVITY, recount
from control.auth import TokenTable
from control.generated.leengine.control.v1 import platform_pb2 as pb
from control.generated.leengine.control.v1 import platform_pb2_grpc
from foundation.adapters.etcd_store import EtcdStore
from foundation.adapters.k8s_workloads import KubeWorkloads
from lab.etcd import running_etcd
from lab.kube_mock import KubeApiMock
from leengine.control_server import FIELD_METADATA, load_server_tls, start
from leengine.etcd_options import open_store
from sim.adapters.cluster import SimCluster
from sim.adapters.workloads import SimWorkloads

pytestmark = pytest.mark.etcd

ROLE_USERS = {"olga": "owner", "mara": "master", "dave": "developer", "rita": "reporter", "gina": "guest"}
USERS = [*ROLE_USERS, "carol", "sam", "tess"]  # carol owns the foreign apps; sam is a stranger; tess is managed
TOKENS = {"ops": "ops-token-0123456789", "discovery": "discovery-token-0123", **{u: f"{u}-token-0123456789abc"
                                                                                for u in USERS}}
TABLE = TokenTable.from_entries([(TOKENS["ops"], "ops", "admin"), (TOKENS["discovery"], "discovery", "discovery"),
                                 *((TOKENS[u], u, "user") for u in USERS)])
IMAGE = "registry.local:5000/shop:" + "a" * 40
IMAGE2 = "registry.local:5000/shop:" + "b" * 40
CELLS = ("cell-a", "cell-b")
ORDER = ["guest", "reporter", "developer", "master", "owner"]
_names = itertools.count()


def auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


def fresh(prefix: str = "m") -> str:
    return f"{prefix}{os.getpid() % 10000}-{next(_names)}"


@dataclass
class Platform:
    stub: platform_pb2_grpc.PlatformStub
    store: EtcdStore
    cells: dict[str, SimWorkloads] = field(default_factory=dict)

    async def revision(self) -> int:
        return (await self.store.range("/platform/", limit=1)).revision

    async def records(self, kind: str, name: str) -> list[dict]:
        return [json.loads(kv.value) for kv in (await self.store.range(f"{ACTIVITY}{kind}/{name}/")).kvs]

    async def refused(self, code: grpc.StatusCode, call: Awaitable) -> grpc.aio.AioRpcError:
        before = await self.revision()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code, caught.value.details()
        assert await self.revision() == before, f"{code.name} must write nothing"
        return caught.value


def run(etcd_server, body: Callable[[Platform], Awaitable[None]], *, with_cells: bool = True) -> None:
    async def main() -> None:
        certs = etcd_server.certs
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=5.0)
        cells = {name: SimWorkloads(SimCluster(name)) for name in CELLS} if with_cells else None
        server = await start(store, TABLE, tls=load_server_tls(certs.server_cert, certs.server_key, None),
                             cells=cells, reconcile_period=None)  # no background writes: the test counts them
        channel = grpc.aio.secure_channel(f"127.0.0.1:{server.port}",
                                          grpc.ssl_channel_credentials(certs.ca_cert.read_bytes()))
        try:
            await body(Platform(platform_pb2_grpc.PlatformStub(channel), store, cells or {}))
        finally:
            await channel.close()
            await server.stop(0)
            await store.close()

    asyncio.run(asyncio.wait_for(main(), 300))


# --------------------------------------------------------------------------- the role matrix


@dataclass(frozen=True)
class Case:
    """One RPC of the matrix: the least role it needs, what its app needs first, and the call itself."""

    rpc: str
    least: str
    mutating: bool
    call: Callable[[Platform, str, str], Awaitable[object]]  # (platform, app, caller) -> the answer
    version: bool = False  # the app gets a version v1 first
    production: bool = False
    member: str = ""  # tess gets this role first
    action: str = ""  # the activity record's action (mutating calls)


def _resource(app: str) -> pb.Resource:
    return pb.Resource(kind="app", name=app)


CASES = [
    Case("GetApp", "guest", False, lambda p, a, w: p.stub.GetApp(pb.GetAppRequest(app=a), metadata=auth(w))),
    Case("GetPrefill", "guest", False, lambda p, a, w: p.stub.GetPrefill(pb.GetPrefillRequest(app=a),
                                                                         metadata=auth(w)), version=True),
    Case("ListMembers", "guest", False, lambda p, a, w: p.stub.ListMembers(
        pb.ListMembersRequest(resource=_resource(a)), metadata=auth(w))),
    Case("ListActivity", "guest", False, lambda p, a, w: p.stub.ListActivity(
        pb.ListActivityRequest(resource=_resource(a)), metadata=auth(w))),
    Case("DeployVersion", "developer", True, lambda p, a, w: p.stub.DeployVersion(pb.DeployVersionRequest(
        app=a, draft=pb.VersionDraft(image=IMAGE2), request_id=f"r-{a}"), metadata=auth(w)), version=True,
        action="version.deploy"),
    Case("DeployVersion(production)", "master", True, lambda p, a, w: p.stub.DeployVersion(pb.DeployVersionRequest(
        app=a, draft=pb.VersionDraft(image=IMAGE, replicas=1), request_id=f"r-{a}"), metadata=auth(w)),
        production=True, action="version.deploy"),
    Case("ScaleVersion", "master", True, lambda p, a, w: p.stub.ScaleVersion(pb.ScaleVersionRequest(
        app=a, version="v1", replicas=4, request_id=f"r-{a}"), metadata=auth(w)), version=True, action="app.scale"),
    Case("DeleteVersion", "developer", True, lambda p, a, w: p.stub.DeleteVersion(pb.DeleteVersionRequest(
        app=a, version="v1", request_id=f"r-{a}"), metadata=auth(w)), version=True, action="version.delete"),
    Case("DeleteApp", "owner", True, lambda p, a, w: p.stub.DeleteApp(pb.DeleteAppRequest(
        app=a, request_id=f"r-{a}"), metadata=auth(w)), action="app.delete"),
    Case("AddMember(developer)", "master", True, lambda p, a, w: p.stub.AddMember(pb.MemberRequest(
        resource=_resource(a), user="tess", role="developer", request_id=f"r-{a}"), metadata=auth(w)),
        action="member.manage_developers"),
    Case("AddMember(master)", "owner", True, lambda p, a, w: p.stub.AddMember(pb.MemberRequest(
        resource=_resource(a), user="tess", role="master", request_id=f"r-{a}"), metadata=auth(w)),
        action="member.manage"),
    Case("ChangeMember(guest->reporter)", "master", True, lambda p, a, w: p.stub.ChangeMember(pb.MemberRequest(
        resource=_resource(a), user="tess", role="reporter", request_id=f"r-{a}"), metadata=auth(w)),
        member="guest", action="member.manage_developers"),
    Case("ChangeMember(developer->owner)", "owner", True, lambda p, a, w: p.stub.ChangeMember(pb.MemberRequest(
        resource=_resource(a), user="tess", role="owner", request_id=f"r-{a}"), metadata=auth(w)),
        member="developer", action="member.manage"),
    Case("RemoveMember(developer)", "master", True, lambda p, a, w: p.stub.RemoveMember(pb.RemoveMemberRequest(
        resource=_resource(a), user="tess", request_id=f"r-{a}"), metadata=auth(w)),
        member="developer", action="member.manage_developers"),
    Case("RemoveMember(master)", "owner", True, lambda p, a, w: p.stub.RemoveMember(pb.RemoveMemberRequest(
        resource=_resource(a), user="tess", request_id=f"r-{a}"), metadata=auth(w)),
        member="master", action="member.manage"),
]
PRINCIPALS = [*ROLE_USERS, "ops", "sam", "discovery"]


def expected(case: Case, who: str, own: bool) -> grpc.StatusCode:
    if who == "ops":
        return grpc.StatusCode.OK
    if who == "discovery":
        return grpc.StatusCode.PERMISSION_DENIED
    role = ROLE_USERS.get(who)
    if role is None or not own:
        return grpc.StatusCode.NOT_FOUND  # outsiders learn nothing about the app
    return grpc.StatusCode.OK if ORDER.index(role) >= ORDER.index(case.least) else grpc.StatusCode.PERMISSION_DENIED


async def _prepare(p: Platform, case: Case, who: str, own: bool) -> tuple[str, int]:
    """A fresh app owned by carol; ``who`` its member with its role when ``own`` (discovery an Owner).
    Returns the app and the number of calls made."""
    app = fresh()
    calls = 1
    await p.stub.CreateApp(pb.CreateAppRequest(name=app, cells=list(CELLS), production=case.production,
                                               request_id=f"c-{app}"), metadata=auth("carol"))
    if case.version:
        calls += 1
        await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(
            image=IMAGE, replicas=2, env=pb.Env(vars=[pb.EnvVar(name="MODE", value="prod")]))),
            metadata=auth("carol"))
    if case.member:
        calls += 1
        await p.stub.AddMember(pb.MemberRequest(resource=_resource(app), user="tess", role=case.member),
                               metadata=auth("carol"))
    if own and who in (*ROLE_USERS, "discovery"):
        role = ROLE_USERS.get(who, "owner")
        calls += 1
        await p.stub.AddMember(pb.MemberRequest(resource=_resource(app), user=who, role=role),
                               metadata=auth("carol"))
    return app, calls


def test_the_role_matrix_every_principal_every_rpc_own_and_foreign(etcd_server):
    async def body(p: Platform) -> None:
        seen: dict[tuple[str, str, bool], str] = {}
        calls = 0
        for case, who, own in itertools.product(CASES, PRINCIPALS, (True, False)):
            app, made = await _prepare(p, case, who, own)
            calls += made + 1
            want = expected(case, who, own)
            where = f"{case.rpc} by {who} on {'own' if own else 'foreign'} app"
            if want != grpc.StatusCode.OK:
                error = await p.refused(want, case.call(p, app, who))
                if want == grpc.StatusCode.PERMISSION_DENIED and who != "discovery":
                    assert f"needs {case.least} or above" in error.details(), (where, error.details())
                if want == grpc.StatusCode.NOT_FOUND:
                    assert "does not exist" in error.details(), (where, error.details())
                seen[(case.rpc, who, own)] = want.name
                continue
            before = await p.revision()
            await case.call(p, app, who)
            after = await p.revision()
            if not case.mutating:
                assert after == before, f"{where}: a read wrote"
            else:
                assert after > before, f"{where}: nothing written"
                mine = [r for r in await p.records("app", app) if r["id"] == f"r-{app}"]
                assert [(r["who"], r["action"]) for r in mine] == [(who, case.action)], (where, mine)
            seen[(case.rpc, who, own)] = "OK"
        assert len(seen) == len(CASES) * len(PRINCIPALS) * 2 == 240
        outcomes = sorted(seen.values())
        assert {o: outcomes.count(o) for o in set(outcomes)} == {"OK": 70, "PERMISSION_DENIED": 65, "NOT_FOUND": 105}
        assert calls == 698, calls  # the matrix and its set-up: every call over the wire, on fresh apps
        # Spot checks of the table itself, in words: a Developer deploys to non-production but not production.
        assert seen[("DeployVersion", "dave", True)] == "OK"
        assert seen[("DeployVersion(production)", "dave", True)] == "PERMISSION_DENIED"
        assert seen[("AddMember(master)", "mara", True)] == "PERMISSION_DENIED"
        assert seen[("GetApp", "gina", False)] == "NOT_FOUND"

    run(etcd_server, body)


def test_create_list_counts_and_tokens_by_principal(etcd_server):
    async def body(p: Platform) -> None:
        code = grpc.StatusCode
        mine, theirs = fresh("own"), fresh("their")
        # Any user creates an app and becomes its Owner; discovery may not; a name is taken once.
        await p.stub.CreateApp(pb.CreateAppRequest(name=mine, cells=list(CELLS)), metadata=auth("sam"))
        await p.stub.CreateApp(pb.CreateAppRequest(name=theirs, cells=list(CELLS)), metadata=auth("carol"))
        await p.refused(code.PERMISSION_DENIED, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=list(CELLS)), metadata=auth("discovery")))
        await p.refused(code.ALREADY_EXISTS, p.stub.CreateApp(pb.CreateAppRequest(
            name=mine, cells=list(CELLS)), metadata=auth("olga")))
        error = await p.refused(code.INVALID_ARGUMENT, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=["cell-a"]), metadata=auth("sam")))
        assert dict(error.trailing_metadata())[FIELD_METADATA] == "cells"
        error = await p.refused(code.INVALID_ARGUMENT, p.stub.CreateApp(pb.CreateAppRequest(
            name=fresh(), cells=["cell-a", "cell-zz"]), metadata=auth("sam")))
        assert "cell-zz" in error.details() and dict(error.trailing_metadata())[FIELD_METADATA] == "cells"
        members = await p.stub.ListMembers(pb.ListMembersRequest(resource=_resource(mine)), metadata=auth("sam"))
        assert [(m.user, m.role, m.by) for m in members.members] == [("sam", "owner", "sam")]

        # ListApps: a user sees the apps it is a member of, an admin every app, discovery nothing.
        listed = await p.stub.ListApps(pb.ListAppsRequest(), metadata=auth("sam"))
        assert mine in [a.name for a in listed.apps] and theirs not in [a.name for a in listed.apps]
        everything = await p.stub.ListApps(pb.ListAppsRequest(), metadata=auth("ops"))
        assert {mine, theirs} <= {a.name for a in everything.apps}

        # Daily counts: admins only; they equal a recount of the activity log.
        await p.refused(code.PERMISSION_DENIED, p.stub.GetDailyCounts(pb.GetDailyCountsRequest(), metadata=auth("sam")))
        await p.refused(code.INVALID_ARGUMENT, p.stub.GetDailyCounts(pb.GetDailyCountsRequest(day="yesterday"),
                                                                    metadata=auth("ops")))
        counts = await p.stub.GetDailyCounts(pb.GetDailyCountsRequest(), metadata=auth("ops"))
        check = await recount(p.store)
        assert check.equal and {(c.day, c.kind, c.action): c.count for c in counts.counts} == check.kept
        assert any(c.action == "app.create" and c.count >= 2 for c in counts.counts)

        # Tokens: none, unknown, another scheme are UNAUTHENTICATED before anything else.
        for metadata in ((), (("authorization", "Bearer not-a-known-token-at-all"),),
                         (("authorization", f"Basic {TOKENS['ops']}"),)):
            await p.refused(code.UNAUTHENTICATED, p.stub.GetApp(pb.GetAppRequest(app=mine), metadata=metadata))
            await p.refused(code.UNAUTHENTICATED, p.stub.DeleteApp(pb.DeleteAppRequest(app=mine), metadata=metadata))

    run(etcd_server, body)


def test_deploy_prefill_scale_delete_and_activity_pages(etcd_server):
    async def body(p: Platform) -> None:
        code = grpc.StatusCode
        app = fresh("shop")
        view = await p.stub.CreateApp(pb.CreateAppRequest(name=app, cells=list(CELLS), production=False),
                                      metadata=auth("carol"))
        assert (view.app.name, list(view.app.cells), view.app.production, view.app.created_by) == (
            app, list(CELLS), False, "carol")
        assert all(app in w.namespaces for w in p.cells.values())
        await p.refused(code.INVALID_ARGUMENT, p.stub.DeployVersion(pb.DeployVersionRequest(
            app=app, draft=pb.VersionDraft(replicas=2)), metadata=auth("carol")))  # the first version needs an image
        v1 = await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(
            image=IMAGE, replicas=2, cpu_millis=250, env=pb.Env(vars=[pb.EnvVar(name="MODE", value="prod")]))),
            metadata=auth("carol"))
        assert [(v.name, dict(v.replicas), v.cpu_millis, list(v.pending)) for v in v1.versions] == [
            ("v1", {"cell-a": 2, "cell-b": 2}, 250, [])]
        assert all(w.controllers[(app, f"{app}-v1")].spec.replicas == 2 for w in p.cells.values())

        # The next version is prefilled from v1: only the image differs.
        prefill = await p.stub.GetPrefill(pb.GetPrefillRequest(app=app), metadata=auth("carol"))
        assert (prefill.image, dict(prefill.replicas_per_cell), prefill.cpu_millis,
                [(e.name, e.value) for e in prefill.env.vars]) == (IMAGE, {"cell-a": 2, "cell-b": 2}, 250,
                                                                   [("MODE", "prod")])
        v2 = await p.stub.DeployVersion(pb.DeployVersionRequest(app=app, draft=pb.VersionDraft(image=IMAGE2)),
                                        metadata=auth("carol"))
        second = v2.versions[1]
        assert (second.name, second.image, dict(second.replicas), second.cpu_millis,
                [(e.name, e.value) for e in second.env]) == ("v2", IMAGE2, {"cell-a": 2, "cell-b": 2}, 250,
                                                             [("MODE", "prod")])

        scaled = await p.stub.ScaleVersion(pb.ScaleVersionRequest(app=app, version="v2", replicas=5, cell="cell-b"),
                                           metadata=auth("carol"))
        assert dict(scaled.versions[1].replicas) == {"cell-a": 2, "cell-b": 5}
        assert p.cells["cell-b"].controllers[(app, f"{app}-v2")].spec.replicas == 5
        await p.refused(code.INVALID_ARGUMENT, p.stub.ScaleVersion(pb.ScaleVersionRequest(
            app=app, version="v2", replicas=5, cell="cell-q"), metadata=auth("carol")))
        await p.refused(code.NOT_FOUND, p.stub.ScaleVersion(pb.ScaleVersionRequest(
            app=app, version="v9", replicas=1), metadata=auth("carol")))
        await p.refused(code.FAILED_PRECONDITION, p.stub.DeleteApp(pb.DeleteAppRequest(app=app),
                                                                   metadata=auth("carol")))
        gone = await p.stub.DeleteVersion(pb.DeleteVersionRequest(app=app, version="v1"), metadata=auth("carol"))
        assert [v.name for v in gone.versions] == ["v2"]
        assert all((app, f"{app}-v1") not in w.controllers for w in p.cells.values())

        # Activity: newest first, in pages of 2, one snapshot; the page token of another listing is refused.
        pages, token = [], ""
        while True:
            page = await p.stub.ListActivity(pb.ListActivityRequest(resource=_resource(app), page_size=2,
                                                                    page_token=token), metadata=auth("carol"))
            pages.append([(r.action, r.who) for r in page.records])
            token = page.next_page_token
            if not token:
                break
        assert [a for page in pages for a, _ in page] == ["version.delete", "app.scale", "version.deploy",
                                                          "version.deploy", "app.create"]
        assert [len(page) for page in pages] == [2, 2, 1]
        await p.refused(code.INVALID_ARGUMENT, p.stub.ListActivity(pb.ListActivityRequest(
            resource=_resource(app), page_token="bm90LWEtdG9rZW4"), metadata=auth("carol")))
        await p.refused(code.INVALID_ARGUMENT, p.stub.ListActivity(pb.ListActivityRequest(
            resource=pb.Resource(kind="planet", name=app)), metadata=auth("carol")))

        await p.stub.DeleteVersion(pb.DeleteVersionRequest(app=app, version="v2"), metadata=auth("carol"))
        await p.stub.DeleteApp(pb.DeleteAppRequest(app=app), metadata=auth("carol"))
        assert all(app not in w.namespaces for w in p.cells.values())
        assert await p.store.get(f"/platform/apps/{app}") is None
        await p.refused(code.NOT_FOUND, p.stub.GetApp(pb.GetAppRequest(app=app), metadata=auth("carol")))
        assert (await recount(p.store)).equal

    run(etcd_server, body)


def test_without_cells_apps_are_failed_precondition_and_members_still_work(etcd_server):
    async def body(p: Platform) -> None:
        code = grpc.StatusCode
        for call in (p.stub.CreateApp(pb.CreateAppRequest(name=fresh(), cells=list(CELLS)), metadata=auth("sam")),
                     p.stub.ListApps(pb.ListAppsRequest(), metadata=auth("ops")),
                     p.stub.GetApp(pb.GetAppRequest(app="shop"), metadata=auth("ops"))):
            error = await p.refused(code.FAILED_PRECONDITION, call)
            assert "--cells FILE" in error.details()
        await p.refused(code.UNAUTHENTICATED, p.stub.ListApps(pb.ListAppsRequest()))  # who, before what
        group = pb.Resource(kind="image_group", name=fresh("grp"))
        added = await p.stub.AddMember(pb.MemberRequest(resource=group, user="olga", role="owner"),
                                       metadata=auth("ops"))
        assert (added.member.user, added.member.role, added.member.by) == ("olga", "owner", "ops")
        image = pb.Resource(kind="image", name=f"{group.name}/web")
        listed = await p.stub.ListMembers(pb.ListMembersRequest(resource=image), metadata=auth("olga"))
        assert (list(listed.members), [(m.user, m.on.kind) for m in listed.inherited]) == (
            [], [("olga", "image_group")])
        error = await p.refused(code.FAILED_PRECONDITION, p.stub.RemoveMember(pb.RemoveMemberRequest(
            resource=group, user="olga"), metadata=auth("olga")))
        assert "last Owner" in error.details()
        await p.refused(code.INVALID_ARGUMENT, p.stub.AddMember(pb.MemberRequest(
            resource=group, user="tess", role="boss"), metadata=auth("olga")))
        records = await p.stub.ListActivity(pb.ListActivityRequest(resource=group), metadata=auth("olga"))
        assert [(r.who, r.action, r.result) for r in records.records] == [("ops", "member.manage", "add olga owner")]

    run(etcd_server, body, with_cells=False)


# --------------------------------------------------------------------------- the console scripts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def test_console_scripts_control_with_cells_file_and_the_app_cli(tmp_path, tls_certs):
    """leengine-control --cells FILE on two Kubernetes API mocks; leengine app drives it as a person would.

    Its own etcd: the service reconciles every app in etcd, and the session's holds the matrix's hundreds."""
    certs = tls_certs
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{TOKENS[n]} {n} {'admin' if n == 'ops' else 'user'}\n" for n in ("ops", "carol",
                                                                                                  "sam")))
    tokens.chmod(0o600)
    for name in ("carol", "sam", "ops"):
        (tmp_path / f"{name}.token").write_text(TOKENS[name] + "\n")
        (tmp_path / f"{name}.token").chmod(0o600)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cells: {cell-a: {api: 'ftp://x'}}\n")
    done = subprocess.run([*_script("leengine-control", "leengine.control_server"), "--tokens", str(tokens),
                           "--cells", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"leengine-control: error: --cells: {bad}: cells.cell-a.api: 'ftp://x' is not an http(s) URL"), done.stderr

    app = fresh("cli")
    with running_etcd(certs=certs) as etcd_server, KubeApiMock() as cell_a, KubeApiMock() as cell_b:
        cells = tmp_path / "cells.yaml"
        cells.write_text(f"cells:\n  cell-a: {{api: '{cell_a.url}'}}\n  cell-b: {{api: '{cell_b.url}'}}\n")
        port = _free_port()
        proc = subprocess.Popen([*_script("leengine-control", "leengine.control_server"), "--tokens", str(tokens),
                                 "--etcd", etcd_server.endpoint, *etcd_server.client_args,
                                 "--listen", f"127.0.0.1:{port}", "--tls-cert", str(certs.server_cert),
                                 "--tls-key", str(certs.server_key), "--cells", str(cells),
                                 "--reconcile-seconds", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def leengine(user: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
            done = subprocess.run([*_script("leengine", "leengine.cli"), "app", *args,
                                   "--control", f"127.0.0.1:{port}", "--token-file", str(tmp_path / f"{user}.token"),
                                   "--control-ca", str(certs.ca_cert)],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
            return done

        try:
            deadline = time.monotonic() + 60
            while True:  # until the service answers
                probe = subprocess.run([*_script("leengine", "leengine.cli"), "app", "list", "--control",
                                        f"127.0.0.1:{port}", "--token-file", str(tmp_path / "carol.token"),
                                        "--control-ca", str(certs.ca_cert), "--timeout", "2"],
                                       capture_output=True, text=True, timeout=60, check=False)
                if probe.returncode == 0:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, (probe.stderr, proc.poll())
                time.sleep(0.3)

            created = json.loads(leengine("carol", "create", app, "--cell", "cell-a", "--cell", "cell-b",
                                          "--non-production", "--json").stdout)
            assert (created["app"]["name"], created["app"]["cells"]) == (app, ["cell-a", "cell-b"])
            out = leengine("carol", "deploy", app, "--image", IMAGE, "--replicas", "2", "--env", "MODE=prod").stdout
            assert "v1" in out and "cell-a=2 cell-b=2" in out
            leengine("carol", "deploy", app, "--image", IMAGE2)  # prefilled: replicas, env from v1
            leengine("carol", "scale", app, "v2", "3", "--cell", "cell-b")

            async def controllers() -> dict[str, dict[str, tuple[str, int, tuple]]]:
                found = {}
                for name, mock in (("cell-a", cell_a), ("cell-b", cell_b)):
                    workloads = KubeWorkloads(host=mock.url, timeout=5)
                    try:
                        found[name] = {c.name: (c.spec.image, c.spec.replicas, c.spec.env)
                                       for c in await workloads.list_controllers(app)}
                    finally:
                        await workloads.close()
                return found

            assert asyncio.run(controllers()) == {
                "cell-a": {f"{app}-v1": (IMAGE, 2, (("MODE", "prod"),)), f"{app}-v2": (IMAGE2, 2, (("MODE", "prod"),))},
                "cell-b": {f"{app}-v1": (IMAGE, 2, (("MODE", "prod"),)), f"{app}-v2": (IMAGE2, 3, (("MODE", "prod"),))}}

            # Errors are one line with the status; a stranger sees NOT_FOUND, a bad role is bad input (exit 2).
            refused = leengine("sam", "show", app, ok=False)
            assert refused.returncode == 1 and refused.stderr.strip() == (
                f"leengine: error: NOT_FOUND: app {app} does not exist")
            bad_role = leengine("carol", "members", "add", app, "sam", "boss", ok=False)
            assert bad_role.returncode == 2 and len(bad_role.stderr.strip().splitlines()) == 1
            leengine("carol", "members", "add", app, "sam", "guest")
            assert "sam" in leengine("carol", "members", "list", app).stdout
            shown = leengine("sam", "show", app).stdout
            assert f"app {app}: non-production" in shown
            denied = leengine("sam", "scale", app, "v2", "1", ok=False)
            assert denied.stderr.startswith("leengine: error: PERMISSION_DENIED: sam is guest of app"), denied.stderr

            activity = json.loads(leengine("carol", "activity", app, "--json", "--page-size", "2", "--all").stdout)
            assert [r["action"] for r in activity["records"]] == [
                "member.manage_developers", "app.scale", "version.deploy", "version.deploy", "app.create"]
            counts = leengine("ops", "counts").stdout
            assert "app.create" in counts
            assert leengine("carol", "counts", ok=False).stderr.startswith("leengine: error: PERMISSION_DENIED")

            # A controller deleted by hand in one Cell comes back by the service's periodic reconcile.
            async def delete_by_hand() -> None:
                workloads = KubeWorkloads(host=cell_a.url, timeout=5)
                try:
                    assert await workloads.delete_controller(app, f"{app}-v1")
                finally:
                    await workloads.close()

            asyncio.run(delete_by_hand())
            deadline = time.monotonic() + 20
            while f"{app}-v1" not in asyncio.run(controllers())["cell-a"]:
                assert time.monotonic() < deadline, "the reconcile did not put the controller back"
                time.sleep(0.3)

            for version in ("v1", "v2"):
                leengine("carol", "delete", app, version)
            leengine("carol", "delete", app)

            async def namespaces() -> list[list[str]]:
                found = []
                for mock in (cell_a, cell_b):
                    workloads = KubeWorkloads(host=mock.url, timeout=5)
                    try:
                        found.append(await workloads.list_namespaces())
                    finally:
                        await workloads.close()
                return found

            assert all(app not in names for names in asyncio.run(namespaces()))
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, output
        assert "serving leengine.control.v1.Platform (Cells cell-a, cell-b)" in output
