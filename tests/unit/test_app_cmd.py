"""``leengine app``: the requests each command sends, what it prints (text and --json), one-line errors and exit codes.

The Platform service is replaced at the one seam ``leengine.app_cmd.opener`` by a stub that
records each call and answers canned messages or a gRPC status; the real service behind the
real channel is tests/integration/test_platform_grpc.py's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from control.generated.leengine.control.v1 import platform_pb2 as pb
from leengine import app_cmd, cli
from leengine.command import run_app

TOKEN = "carol-token-0123456789abc"
IMAGE = "registry.local:5000/shop:" + "a" * 40


class FakeStub:
    """Records ``(method, request, metadata, timeout)``; answers ``replies[method]`` (a message, a list of them
    in turn, or an ``AioRpcError`` to raise)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any, float]] = []
        self.replies: dict[str, Any] = {}

    def __getattr__(self, method: str) -> Any:
        async def rpc(request: Any, *, metadata: Any, timeout: float) -> Any:
            self.calls.append((method, request, metadata, timeout))
            reply = self.replies[method]
            if isinstance(reply, list):
                reply = reply.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

        return rpc


def status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.fixture
def stub(monkeypatch) -> FakeStub:
    fake = FakeStub()
    monkeypatch.setattr(app_cmd, "opener", lambda connection: (fake, None))
    return fake


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "carol.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def leengine(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["leengine", *args])
    with pytest.raises(SystemExit) as done:
        run_app(cli.app, "leengine")
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def view(versions: int = 1, pending: dict[str, str] | None = None) -> Any:
    app = pb.App(name="shop", cells=["cell-a", "cell-b"], production=False, created_by="carol", created_at=1.7e9,
                 next_version=versions + 1, state="active", revision=7)
    return pb.AppView(app=app, pending=pending or {}, versions=[
        pb.Version(app="shop", name=f"v{n}", image=IMAGE, replicas={"cell-a": 2, "cell-b": 3},
                   ready={"cell-a": 2}, state="active", generation=1, pending=["cell-b"])
        for n in range(1, versions + 1)])


# --------------------------------------------------------------------------- requests


def test_create_sends_the_cells_the_flag_and_a_fresh_request_id(monkeypatch, capsys, stub, token_file):
    stub.replies["CreateApp"] = view(0)
    code, out, err = leengine(monkeypatch, capsys, "app", "create", "shop", "--cell", "cell-a", "--cell", "cell-b",
                              "--non-production", "--token-file", str(token_file), "--control", "ctl.example:443")
    assert (code, err) == (0, "")
    method, request, metadata, timeout = stub.calls[0]
    assert (method, request.name, list(request.cells), request.production) == (
        "CreateApp", "shop", ["cell-a", "cell-b"], False)
    assert len(request.request_id) == 32 and metadata == (("authorization", f"Bearer {TOKEN}"),) and timeout == 30
    assert out.startswith("app shop: non-production, active, Cells cell-a, cell-b; created by carol") and \
        "no versions" in out
    leengine(monkeypatch, capsys, "app", "create", "shop", "--cell", "a", "--cell", "b", "--token-file",
             str(token_file), "--request-id", "mine-1")
    assert stub.calls[1][1].request_id == "mine-1" and stub.calls[1][1].production is True


def test_deploy_sends_only_what_is_given_the_rest_is_prefilled_by_the_service(monkeypatch, capsys, stub,
                                                                              token_file):
    stub.replies["DeployVersion"] = view(2)
    leengine(monkeypatch, capsys, "app", "deploy", "shop", "--image", IMAGE, "--token-file", str(token_file))
    draft = stub.calls[-1][1].draft
    assert draft.image == IMAGE
    assert [f for f in ("replicas", "cpu_millis", "memory_mib", "port", "env") if draft.HasField(f)] == []
    assert not draft.replicas_per_cell

    code, out, _ = leengine(monkeypatch, capsys, "app", "deploy", "shop", "--replicas-in", "cell-a=2",
                            "--replicas-in", "cell-b=3", "--env", "MODE=prod", "--env", "URL=http://x/?a=b",
                            "--cpu-millis", "250", "--port", "9090", "--token-file", str(token_file))
    draft = stub.calls[-1][1].draft
    assert code == 0 and dict(draft.replicas_per_cell) == {"cell-a": 2, "cell-b": 3}
    assert [(e.name, e.value) for e in draft.env.vars] == [("MODE", "prod"), ("URL", "http://x/?a=b")]
    assert (draft.cpu_millis, draft.port, draft.HasField("memory_mib")) == (250, 9090, False)
    assert "v2" in out and "cell-a=2 cell-b=3" in out and "cell-a=2" in out

    leengine(monkeypatch, capsys, "app", "deploy", "shop", "--clear-env", "--token-file", str(token_file))
    draft = stub.calls[-1][1].draft
    assert draft.HasField("env") and list(draft.env.vars) == []  # set and empty: deploy with no environment


def test_scale_delete_members_and_counts_requests(monkeypatch, capsys, stub, token_file):
    stub.replies.update(ScaleVersion=view(), DeleteVersion=view(), DeleteApp=view(0),
                        AddMember=pb.MemberChange(member=pb.Member(user="sam", role="guest", on=pb.Resource(
                            kind="image", name="grp/web")), revision=9),
                        RemoveMember=pb.MemberChange(revision=10),
                        GetDailyCounts=pb.GetDailyCountsResponse(counts=[pb.DailyCount(
                            day="2025-01-02", kind="app", action="app.create", count=3)]))
    files = ("--token-file", str(token_file))
    leengine(monkeypatch, capsys, "app", "scale", "shop", "v2", "5", "--cell", "cell-b", *files)
    leengine(monkeypatch, capsys, "app", "delete", "shop", "v1", *files)
    leengine(monkeypatch, capsys, "app", "delete", "shop", *files)
    _, added, _ = leengine(monkeypatch, capsys, "app", "members", "add", "grp/web", "sam", "guest", "--kind", "image",
                           *files)
    _, removed, _ = leengine(monkeypatch, capsys, "app", "members", "remove", "shop", "sam", *files)
    _, counted, _ = leengine(monkeypatch, capsys, "app", "counts", "--day", "2025-01-02", *files)
    sent = [(m, r) for m, r, _, _ in stub.calls]
    assert [m for m, _ in sent] == ["ScaleVersion", "DeleteVersion", "DeleteApp", "AddMember", "RemoveMember",
                                    "GetDailyCounts"]
    assert (sent[0][1].app, sent[0][1].version, sent[0][1].replicas, sent[0][1].cell) == ("shop", "v2", 5, "cell-b")
    assert sent[1][1].version == "v1" and sent[2][1].app == "shop"
    assert (sent[3][1].resource.kind, sent[3][1].resource.name, sent[3][1].user, sent[3][1].role) == (
        "image", "grp/web", "sam", "guest")
    assert sent[5][1].day == "2025-01-02"
    assert added.strip() == "sam is guest of image grp/web" and removed.strip() == "removed (revision 10)"
    assert counted.splitlines()[1].split() == ["2025-01-02", "app", "app.create", "3"]


def test_activity_all_follows_the_page_tokens_into_one_listing(monkeypatch, capsys, stub, token_file):
    def record(n: int) -> Any:
        return pb.ActivityRecord(request_id=f"r{n}", at=1.7e9 + n, who="carol", role="user", action="app.scale",
                                 kind="app", name="shop", result=f"v1 to {n}")

    stub.replies["ListActivity"] = [
        pb.ListActivityResponse(records=[record(3), record(2)], revision=40, next_page_token="t1"),
        pb.ListActivityResponse(records=[record(1)], revision=40, next_page_token="")]
    code, out, _ = leengine(monkeypatch, capsys, "app", "activity", "shop", "--all", "--page-size", "2", "--json",
                            "--token-file", str(token_file))
    assert code == 0
    listing = json.loads(out)
    assert [r["request_id"] for r in listing["records"]] == ["r3", "r2", "r1"]
    assert listing["next_page_token"] == "" and listing["revision"] == "40"  # int64 is a string in proto JSON
    assert [c[1].page_token for c in stub.calls] == ["", "t1"]
    assert all(c[1].page_size == 2 for c in stub.calls)


def test_json_keeps_the_protos_field_names_and_zero_values(monkeypatch, capsys, stub, token_file):
    stub.replies["GetApp"] = view(1)
    code, out, _ = leengine(monkeypatch, capsys, "app", "show", "shop", "--json", "--token-file", str(token_file))
    shown = json.loads(out)
    assert code == 0 and shown["app"]["production"] is False and shown["app"]["created_by"] == "carol"
    assert shown["versions"][0]["replicas"] == {"cell-a": 2, "cell-b": 3}
    assert shown["versions"][0]["pending"] == ["cell-b"] and shown["pending"] == {}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("code", "exit_code"), [(grpc.StatusCode.NOT_FOUND, 1), (grpc.StatusCode.PERMISSION_DENIED, 1),
                                                 (grpc.StatusCode.FAILED_PRECONDITION, 1),
                                                 (grpc.StatusCode.INVALID_ARGUMENT, 2)])
def test_a_refusal_is_one_line_naming_the_status(monkeypatch, capsys, stub, token_file, code, exit_code):
    stub.replies["ScaleVersion"] = status(code, "sam is guest of app shop;\nneeds master or above")
    got, out, err = leengine(monkeypatch, capsys, "app", "scale", "shop", "v1", "2", "--token-file", str(token_file))
    assert (got, out) == (exit_code, "")
    assert err == f"leengine: error: {code.name}: sam is guest of app shop; needs master or above\n"


def test_an_unreachable_service_names_the_address(monkeypatch, capsys, stub, token_file):
    stub.replies["ListApps"] = status(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    got, _, err = leengine(monkeypatch, capsys, "app", "list", "--control", "10.9.9.9:50051", "--token-file",
                           str(token_file))
    assert got == 1 and err == ("leengine: error: UNAVAILABLE: control service at 10.9.9.9:50051: failed to connect "
                                "to all addresses\n")


@pytest.mark.parametrize(("args", "message"), [
    ([], "--token-file: the file holding your bearer token is required (or $LEENGINE_TOKEN_FILE)"),
    (["--token-file", "TOKEN", "--control", "nonsense"], "--control: 'nonsense' is not host:port"),
    (["--token-file", "TOKEN", "--control", "10.0.0.1:50051", "--plaintext"],
     "--plaintext: 10.0.0.1 is not a loopback address: the token would cross the network in clear (use TLS: "
     "--control-ca)"),
    (["--token-file", "TOKEN", "--timeout", "0"], "--timeout: 0.0 is not more than 0 and at most 3600 seconds"),
    (["--token-file", "OPEN"], "is open to its group or others (mode 0644)"),
    (["--token-file", "TOKEN", "--control-ca", "/nonexistent/ca.pem"], "--control-ca"),
])
def test_bad_options_are_one_line_and_exit_2_before_any_call(monkeypatch, capsys, stub, token_file, tmp_path,
                                                             args, message):
    opened = tmp_path / "open.token"
    opened.write_text(TOKEN)
    opened.chmod(0o644)
    args = [str(token_file) if a == "TOKEN" else str(opened) if a == "OPEN" else a for a in args]
    monkeypatch.delenv("LEENGINE_TOKEN_FILE", raising=False)
    got, out, err = leengine(monkeypatch, capsys, "app", "list", *args)
    assert (got, out, stub.calls) == (2, "", [])
    assert err.startswith("leengine: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("args", "message"), [
    (["members", "add", "shop", "sam", "boss"], "ROLE: 'boss' is not one of guest, reporter, developer, master, owner"),
    (["members", "list", "shop", "--kind", "planet"], "--kind: 'planet' is not one of app, image_group, image"),
    (["deploy", "shop", "--replicas", "2", "--replicas-in", "cell-a=2"], "--replicas and --replicas-in: give one"),
    (["deploy", "shop", "--replicas-in", "cell-a"], "--replicas-in: 'cell-a' is not NAME=VALUE"),
    (["deploy", "shop", "--env", "A=1", "--clear-env"], "--env and --clear-env: give one"),
    (["activity", "shop", "--page-size", "501"], "--page-size: 501 is not from 0 to 500"),
])
def test_bad_arguments_are_refused_before_any_call(monkeypatch, capsys, stub, token_file, args, message):
    got, _, err = leengine(monkeypatch, capsys, "app", *args, "--token-file", str(token_file))
    assert (got, stub.calls) == (2, []) and err == f"leengine: error: {message}\n"


def test_the_token_comes_from_the_environment_and_is_never_printed(monkeypatch, capsys, stub, token_file):
    monkeypatch.setenv("LEENGINE_TOKEN_FILE", str(token_file))
    stub.replies["ListApps"] = status(grpc.StatusCode.UNAUTHENTICATED, "unknown token (expected 'Bearer <token>')")
    got, out, err = leengine(monkeypatch, capsys, "app", "list")
    assert got == 1 and TOKEN not in out + err and stub.calls[0][2] == (("authorization", f"Bearer {TOKEN}"),)
    connection = app_cmd.Connection.from_options("127.0.0.1:1", token_file, None, True, 1.0)
    assert TOKEN not in repr(connection)


# --------------------------------------------------------------------------- releases


def release_view(state: str = "running", step: int = 1) -> Any:
    return pb.ReleaseView(release=pb.Release(
        app="shop", old="v1", new="v2", group="web", domain="shop.example.com", steps=[1, 10, 50, 100],
        bake_seconds=60, check_seconds=10, max_error_increase=0.01, max_latency_ratio=1.5, bad_checks=3,
        min_requests=20, state=state, step=step, percent=[1, 10, 50, 100][step], baked=20, bad=1, checks=8,
        reason="1% baked 60 s", started_by="carol", started_at=1.7e9, revision=90, hosts=2,
        last_old=pb.ReleaseCounts(requests=900, errors=9, seconds=9.0),
        last_new=pb.ReleaseCounts(requests=100, errors=3, seconds=2.0)), shares={"v1": 90, "v2": 10})


def test_create_with_a_domain_sends_group_and_domain(monkeypatch, capsys, stub, token_file):
    stub.replies["CreateApp"] = view(0)
    code, _, _ = leengine(monkeypatch, capsys, "app", "create", "shop", "--cell", "cell-a", "--cell", "cell-b",
                          "--domain", "web/shop.example.com", "--token-file", str(token_file))
    assert code == 0 and (stub.calls[0][1].group, stub.calls[0][1].domain) == ("web", "shop.example.com")
    code, _, err = leengine(monkeypatch, capsys, "app", "create", "shop", "--cell", "cell-a", "--domain",
                            "shop.example.com", "--token-file", str(token_file))
    assert code == 2 and err == "leengine: error: --domain: 'shop.example.com' is not GROUP/DOMAIN\n"
    assert len(stub.calls) == 1


def test_release_sends_only_the_options_given_and_prints_the_steps(monkeypatch, capsys, stub, token_file):
    stub.replies["StartRelease"] = release_view()
    code, out, _ = leengine(monkeypatch, capsys, "app", "release", "shop", "v2", "--steps", "5,50,100", "--bake",
                            "60", "--bad-checks", "2", "--token-file", str(token_file))
    sent = stub.calls[0][1]
    assert code == 0 and (sent.app, sent.version, list(sent.steps)) == ("shop", "v2", [5, 50, 100])
    assert sent.bake_seconds == 60 and sent.bad_checks == 2
    assert not sent.HasField("check_seconds") and not sent.HasField("max_latency_ratio") and sent.request_id
    assert "release of v2 over v1: running, step 1% [10%] 50% 100%, baked 20/60 s, 1/3 bad" in out
    assert "last interval: v2 100 requests, 3.0% errors, 20 ms mean; v1 900 requests, 1.0% errors, 10 ms mean" in out
    assert "shares now: v1 90%, v2 10%" in out
    code, _, err = leengine(monkeypatch, capsys, "app", "release", "shop", "v2", "--steps", "1,ten,100",
                            "--token-file", str(token_file))
    assert code == 2 and "--steps: '1,ten,100' is not a list of percents" in err and len(stub.calls) == 1
    code, _, err = leengine(monkeypatch, capsys, "app", "release", "shop", "v2", "--min-requests", str(2**31),
                            "--token-file", str(token_file))
    assert code == 2 and err.startswith("leengine: error: --min-requests 2147483648 is out of range")
    assert err.count("\n") == 1 and len(stub.calls) == 1  # one line, nothing sent


def test_revert_and_show_print_the_release(monkeypatch, capsys, stub, token_file):
    stub.replies["RevertRelease"] = release_view("reverted")
    code, out, _ = leengine(monkeypatch, capsys, "app", "revert", "shop", "--json", "--token-file", str(token_file))
    assert code == 0 and json.loads(out)["release"]["state"] == "reverted"
    with_domain = view(2)
    with_domain.app.group, with_domain.app.domain = "web", "shop.example.com"
    stub.replies["GetApp"] = [with_domain, with_domain, with_domain]
    stub.replies["GetRelease"] = [release_view(), release_view(), status(grpc.StatusCode.NOT_FOUND, "no release")]
    code, out, _ = leengine(monkeypatch, capsys, "app", "show", "shop", "--token-file", str(token_file))
    assert code == 0 and "domain shop.example.com (Nginx group web)" in out and "release of v2 over v1" in out
    code, out, _ = leengine(monkeypatch, capsys, "app", "show", "shop", "--json", "--token-file", str(token_file))
    assert json.loads(out)["release"]["release"]["percent"] == 10 and json.loads(out)["app"]["domain"]
    code, out, _ = leengine(monkeypatch, capsys, "app", "show", "shop", "--token-file", str(token_file))
    assert code == 0 and "release" not in out  # none yet: the app alone
