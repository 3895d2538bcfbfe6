"""Image groups and robots over the wire: real etcd (TLS), the real gRPC server over TLS, bearer tokens.

Each role (Owner, Master, Developer, Reporter, Guest), an admin, a stranger and discovery against
SetImageGroupVisibility, CreateRobot, RevokeRobot and DeleteImageGroup: the exact status code, a refused
call leaves the etcd revision unchanged. A robot's secret from CreateRobot authenticates through
``control.robots.robot_caller`` on the same etcd, and no longer once revoked; the access the token endpoint
would grant (``control.image_groups.access``) follows the group's visibility.
"""

from __future__ import annotations

import grpc
import pytest

from control import image_groups, robots
from control.generated.leengine.control.v1 import platform_pb2 as pb
from control.registry_policy import Caller, parse_scope
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from leengine.control_server import FIELD_METADATA
from tests.integration.test_platform_grpc import ORDER, ROLE_USERS, Platform, auth, fresh, run

pytestmark = pytest.mark.etcd
PRINCIPALS = [*ROLE_USERS, "ops", "sam", "discovery"]


def expected(least: str, who: str) -> grpc.StatusCode:
    if who == "ops":
        return grpc.StatusCode.OK
    if who == "discovery":
        return grpc.StatusCode.PERMISSION_DENIED
    role = ROLE_USERS.get(who)
    if role is None:
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.OK if ORDER.index(role) >= ORDER.index(least) else grpc.StatusCode.PERMISSION_DENIED


async def _group(p: Platform) -> str:
    """A fresh private group owned by carol, every role user a member of it with its role."""
    group = fresh("g")
    await p.stub.CreateImageGroup(pb.CreateImageGroupRequest(name=group), metadata=auth("carol"))
    for user, role in ROLE_USERS.items():
        await p.stub.AddMember(pb.MemberRequest(resource=pb.Resource(kind="image_group", name=group), user=user,
                                                role=role), metadata=auth("carol"))
    return group


async def _check(p: Platform, who: str, least: str, call) -> None:
    want = expected(least, who)
    if want == grpc.StatusCode.OK:
        await call
    else:
        await p.refused(want, call)


def test_the_role_matrix_of_image_groups_and_robots(etcd_server):
    async def body(p: Platform) -> None:
        calls = 0
        for who in PRINCIPALS:
            group = await _group(p)
            await _check(p, who, "master", p.stub.SetImageGroupVisibility(pb.SetImageGroupVisibilityRequest(
                name=group, visibility="public"), metadata=auth(who)))
            await _check(p, who, "master", p.stub.CreateRobot(pb.CreateRobotRequest(
                name=f"r-{group}", scope=pb.Resource(kind="image", name=f"{group}/web"), actions=["pull"]),
                metadata=auth(who)))
            await p.stub.CreateRobot(pb.CreateRobotRequest(name=f"k-{group}", scope=pb.Resource(
                kind="image_group", name=group), actions=["pull", "push"]), metadata=auth("carol"))
            await _check(p, who, "master", p.stub.RevokeRobot(pb.RevokeRobotRequest(name=f"k-{group}"),
                                                              metadata=auth(who)))
            await _check(p, who, "owner", p.stub.DeleteImageGroup(pb.DeleteImageGroupRequest(name=group),
                                                                  metadata=auth(who)))
            calls += 4
        assert calls == 4 * len(PRINCIPALS)

    run(etcd_server, body, with_cells=False)


def test_a_robot_secret_authenticates_until_revoked_and_access_follows_visibility(etcd_server):
    async def body(p: Platform) -> None:
        runtime = AsyncioRuntime()
        group = fresh("g")
        made = await p.stub.CreateImageGroup(pb.CreateImageGroupRequest(name=group), metadata=auth("carol"))
        assert (made.visibility, made.role) == ("private", "owner")
        reply = await p.stub.CreateRobot(pb.CreateRobotRequest(
            name=f"ci-{group}", scope=pb.Resource(kind="image_group", name=group), actions=["pull"],
            ttl_seconds=600), metadata=auth("carol"))
        assert reply.robot.username == f"robot$ci-{group}" and len(reply.secret) == 64
        assert reply.robot.expires > reply.robot.at
        listed = await p.stub.ListRobots(pb.ListRobotsRequest(), metadata=auth("carol"))
        assert [r.name for r in listed.robots if r.name == f"ci-{group}"] == [f"ci-{group}"]
        assert not any(r.name == f"ci-{group}" for r in (await p.stub.ListRobots(
            pb.ListRobotsRequest(), metadata=auth("sam"))).robots)
        assert all(not r.HasField("scope") or r.scope.name for r in listed.robots)
        caller = await robots.robot_caller(p.store, runtime, reply.robot.username, reply.secret)
        assert caller is not None and caller.robot_actions == ("pull",)
        scope = parse_scope(f"repository:{group}/web:pull,push")
        assert await image_groups.access(p.store, caller, scope) == ("pull",)
        assert await image_groups.access(p.store, Caller("anonymous"), scope) == ()
        await p.stub.SetImageGroupVisibility(pb.SetImageGroupVisibilityRequest(name=group, visibility="public"),
                                             metadata=auth("carol"))
        assert await image_groups.access(p.store, Caller("anonymous"), scope) == ("pull",)
        assert (await p.stub.GetImageGroup(pb.GetImageGroupRequest(name=group), metadata=auth("sam"))).visibility \
            == "public"
        assert await robots.robot_caller(p.store, runtime, reply.robot.username, "0" * 64) is None
        await p.stub.RevokeRobot(pb.RevokeRobotRequest(name=f"ci-{group}"), metadata=auth("carol"))
        assert await robots.robot_caller(p.store, runtime, reply.robot.username, reply.secret) is None
        records = await p.records("image_group", group)
        assert [r["action"] for r in records] == ["robot.manage", "image_group.visibility", "robot.manage",
                                                  "image_group.create"]
        assert all(reply.secret not in str(r) for r in records)

    run(etcd_server, body, with_cells=False)


def test_bad_input_is_invalid_argument_naming_the_field(etcd_server):
    async def body(p: Platform) -> None:
        group = fresh("g")
        await p.stub.CreateImageGroup(pb.CreateImageGroupRequest(name=group), metadata=auth("carol"))
        for call, field in (
            (p.stub.CreateImageGroup(pb.CreateImageGroupRequest(name="Bad_Name"), metadata=auth("carol")), "group"),
            (p.stub.SetImageGroupVisibility(pb.SetImageGroupVisibilityRequest(name=group, visibility="internal"),
                                            metadata=auth("carol")), "visibility"),
            (p.stub.CreateRobot(pb.CreateRobotRequest(name="x", scope=pb.Resource(kind="image_group", name=group),
                                                      actions=["delete"]), metadata=auth("carol")), "actions"),
            (p.stub.CreateRobot(pb.CreateRobotRequest(name="x", scope=pb.Resource(kind="image_group", name=group),
                                                      actions=["pull"], ttl_seconds=-1), metadata=auth("carol")),
             "ttl"),
            (p.stub.CreateRobot(pb.CreateRobotRequest(name="x", scope=pb.Resource(kind="app", name=group),
                                                      actions=["pull"]), metadata=auth("carol")), "scope"),
        ):
            error = await p.refused(grpc.StatusCode.INVALID_ARGUMENT, call)
            assert dict(error.trailing_metadata() or ()).get(FIELD_METADATA) == field, error.details()
        await p.refused(grpc.StatusCode.ALREADY_EXISTS, p.stub.CreateImageGroup(
            pb.CreateImageGroupRequest(name=group), metadata=auth("sam")))

    run(etcd_server, body, with_cells=False)
