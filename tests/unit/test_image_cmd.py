"""``leengine image-group`` and ``leengine robot``: the requests each command sends, what it prints, one-line errors.

The Platform service is replaced at the seam ``leengine.app_cmd.opener`` (as in test_app_cmd.py)."""

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
SECRET = "ab" * 32


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.replies: dict[str, Any] = {}

    def __getattr__(self, method: str) -> Any:
        async def rpc(request: Any, *, metadata: Any, timeout: float) -> Any:
            assert ("authorization", f"Bearer {TOKEN}") in metadata
            self.calls.append((method, request))
            reply = self.replies[method]
            if isinstance(reply, Exception):
                raise reply
            return reply

        return rpc


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


def leengine(monkeypatch, capsys, token_file: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["leengine", *args, "--token-file", str(token_file), "--plaintext"])
    with pytest.raises(SystemExit) as done:
        run_app(cli.app, "leengine")
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


GROUP = pb.ImageGroup(name="grp", visibility="public", by="carol", at=1.7e9, revision=5, role="owner")
ROBOT = pb.Robot(name="ci", username="robot$ci", scope=pb.Resource(kind="image_group", name="grp"),
                 actions=["pull", "push"], expires=0, by="carol", at=1.7e9, revision=9)


def test_image_group_create_show_visibility_delete(monkeypatch, capsys, stub, token_file):
    stub.replies = {"CreateImageGroup": GROUP, "GetImageGroup": GROUP, "SetImageGroupVisibility": GROUP,
                    "DeleteImageGroup": pb.DeleteImageGroupResponse(revision=12)}
    code, out, _ = leengine(monkeypatch, capsys, token_file, "image-group", "create", "grp", "--public")
    assert code == 0 and out.startswith("image group grp: public; you are owner")
    method, request = stub.calls[-1]
    assert (method, request.name, request.public) == ("CreateImageGroup", "grp", True) and request.request_id
    code, out, _ = leengine(monkeypatch, capsys, token_file, "image-group", "show", "grp", "--json")
    assert code == 0 and json.loads(out)["visibility"] == "public"
    code, _, _ = leengine(monkeypatch, capsys, token_file, "image-group", "visibility", "grp", "private")
    assert code == 0 and stub.calls[-1][1].visibility == "private"
    code, out, _ = leengine(monkeypatch, capsys, token_file, "image-group", "delete", "grp")
    assert code == 0 and out.strip() == "image group grp deleted (revision 12)"


def test_robot_create_prints_the_secret_once_and_sends_the_scope(monkeypatch, capsys, stub, token_file):
    stub.replies = {"CreateRobot": pb.CreateRobotResponse(robot=ROBOT, secret=SECRET)}
    code, out, _ = leengine(monkeypatch, capsys, token_file, "robot", "create", "ci", "--group", "grp",
                            "--actions", "pull,push", "--ttl", "3600")
    assert code == 0
    assert "registry login: robot$ci" in out and out.count(SECRET) == 1
    _, request = stub.calls[-1]
    assert (request.name, request.scope.kind, request.scope.name, list(request.actions), request.ttl_seconds) == \
        ("ci", "image_group", "grp", ["pull", "push"], 3600.0)
    leengine(monkeypatch, capsys, token_file, "robot", "create", "one", "--image", "grp/web")
    _, request = stub.calls[-1]
    assert (request.scope.kind, request.scope.name, list(request.actions), request.ttl_seconds) == \
        ("image", "grp/web", ["pull"], 0.0)


def test_robot_list_and_revoke(monkeypatch, capsys, stub, token_file):
    stub.replies = {"ListRobots": pb.ListRobotsResponse(robots=[ROBOT], skipped=1),
                    "RevokeRobot": pb.RevokeRobotResponse(revision=20)}
    code, out, _ = leengine(monkeypatch, capsys, token_file, "robot", "list")
    assert code == 0 and "robot$ci" in out and "image_group grp" in out and "never" in out
    assert "1 corrupt robot record(s) skipped" in out
    code, out, _ = leengine(monkeypatch, capsys, token_file, "robot", "revoke", "ci")
    assert code == 0 and out.strip() == "robot ci revoked (revision 20)"


@pytest.mark.parametrize(("args", "message"), [
    (["robot", "create", "ci"], "--group or --image: give exactly one"),
    (["robot", "create", "ci", "--group", "g", "--image", "g/n"], "--group or --image: give exactly one"),
    (["robot", "create", "ci", "--group", "g", "--actions", "delete"], "--actions: 'delete' is not pull or pull,push"),
    (["robot", "create", "ci", "--group", "g", "--actions", "pull,pull"], "is not pull or pull,push"),
    (["robot", "create", "ci", "--group", "g", "--ttl", "-5"], "--ttl: -5.0 is not a number of seconds"),
    (["image-group", "visibility", "grp", "internal"], "visibility: 'internal' is not public or private"),
])
def test_bad_input_is_one_line_and_exit_2_without_a_call(monkeypatch, capsys, stub, token_file, args, message):
    code, _, err = leengine(monkeypatch, capsys, token_file, *args)
    assert code == 2 and message in err and err.count("\n") == 1
    assert stub.calls == []


def test_a_service_refusal_is_one_line(monkeypatch, capsys, stub, token_file):
    stub.replies = {"SetImageGroupVisibility": grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details="bob is developer of image_group grp; image_group.visibility needs master or above")}
    code, _, err = leengine(monkeypatch, capsys, token_file, "image-group", "visibility", "grp", "public")
    assert code == 1 and err.count("\n") == 1
    assert "PERMISSION_DENIED: bob is developer of image_group grp; image_group.visibility needs master" in err
