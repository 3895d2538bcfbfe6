"""Image groups on the sim Store: create (creator its Owner, activity recorded), read, visibility (Master and above),
delete (Owner; memberships and robots go in the same transaction), the reads of the token endpoint (visibility,
effective_role, access), and hostile records that never crash and never grant anything."""

from __future__ import annotations

import json

import pytest

from control import image_groups as ig
from control import members as m
from control.activity import ACTIVITY
from control.auth import Principal
from control.registry_policy import Caller, parse_scope
from control.robots import Robots, robot_key
from foundation.ports import PutOp
from foundation.ports import control as port
from tests.unit.test_members import World as MembersWorld

ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")
CAROL = Principal("carol", "user")
ROLES = ["guest", "reporter", "developer", "master", "owner"]


class World(MembersWorld):
    def __init__(self) -> None:
        super().__init__()
        self.groups = ig.ImageGroups(self.store, self.rt)
        self.robots = Robots(self.store, self.rt)
        self.ids = 0

    def rid(self) -> str:
        self.ids += 1
        return f"r{self.ids}"

    def keys(self, prefix: str) -> list[str]:
        return [kv.key for kv in self.server._range(prefix, True).kvs]


def test_any_user_creates_a_private_group_and_becomes_its_owner_with_an_activity_record():
    world = World()
    view = world.run(world.groups.create(ALICE, "grp", request_id=world.rid()))
    assert (view.group.name, view.group.visibility, view.group.by, view.role) == ("grp", "private", "alice",
                                                                                m.Role.OWNER)
    stored = world.run(world.store.get("/platform/image_groups/grp"))
    assert json.loads(stored.value) == {"visibility": "private", "by": "alice", "at": view.group.at}
    assert world.run(m.load_memberships(world.store, m.Resource("image_group", "grp"))).owners() == ["alice"]
    records = [json.loads(kv.value) for kv in world.server._range(ACTIVITY, True).kvs]
    assert [(r["who"], r["action"], r["kind"], r["name"], r["result"]) for r in records] == [
        ("alice", "image_group.create", "image_group", "grp", "create private")]
    assert world.run(ig.visibility(world.store, "grp")) == "private"
    world.run(world.groups.create(BOB, "pub", public=True, request_id=world.rid()))
    assert world.run(ig.visibility(world.store, "pub")) == "public"


def test_create_refuses_a_taken_name_bad_input_and_discovery_writing_nothing():
    world = World()
    world.run(world.groups.create(ALICE, "grp", request_id=world.rid()))
    assert "already exists" in str(world.refused(m.AlreadyExists, world.groups.create(BOB, "grp",
                                                                                       request_id=world.rid())))
    for bad in ("GRP", "a/b", "-x", "", "x" * 64, 7, None):
        world.refused(m.InvalidArgument, world.groups.create(ALICE, bad, request_id=world.rid()))
    world.refused(m.InvalidArgument, world.groups.create(ALICE, "g2", public="yes", request_id=world.rid()))
    world.refused(port.InvalidArgument, world.groups.create(ALICE, "g2", request_id="bad id!"))
    world.refused(m.PermissionDenied, world.groups.create(DISCOVERY, "g2", request_id=world.rid()))


def test_get_public_to_any_user_private_to_members_only():
    world = World()
    world.run(world.groups.create(ALICE, "priv", request_id=world.rid()))
    world.run(world.groups.create(ALICE, "pub", public=True, request_id=world.rid()))
    assert world.run(world.groups.get(BOB, "pub")).group.visibility == "public"
    assert str(world.refused(m.NotFound, world.groups.get(BOB, "priv"))) == "image_group priv does not exist"
    assert str(world.refused(m.NotFound, world.groups.get(BOB, "nothere"))) == "image_group nothere does not exist"
    world.give(m.Resource("image_group", "priv"), "bob", "guest")
    assert world.run(world.groups.get(BOB, "priv")).role == m.Role.GUEST
    assert world.run(world.groups.get(ADMIN, "priv")).group.name == "priv"
    world.refused(m.PermissionDenied, world.groups.get(DISCOVERY, "pub"))


@pytest.mark.parametrize("role", ROLES)
def test_visibility_needs_master_and_is_recorded(role):
    world = World()
    world.run(world.groups.create(CAROL, "grp", request_id=world.rid()))
    world.give(m.Resource("image_group", "grp"), "alice", role)
    if m.Role.parse(role) < m.Role.MASTER:
        error = world.refused(m.PermissionDenied, world.groups.set_visibility(ALICE, "grp", "public",
                                                                              request_id=world.rid()))
        assert "needs master or above" in str(error)
        return
    view = world.run(world.groups.set_visibility(ALICE, "grp", "public", request_id=world.rid()))
    assert view.group.visibility == "public"
    assert world.run(ig.visibility(world.store, "grp")) == "public"
    before = world.snapshot()  # already public: no write, no record
    assert world.run(world.groups.set_visibility(ALICE, "grp", "public", request_id=world.rid())).group.by == "alice"
    assert world.snapshot() == before
    records = [json.loads(kv.value)["result"] for kv in world.server._range(ACTIVITY + "image_group/grp/", True).kvs]
    assert records[0] == "visibility private->public"


def test_visibility_refusals():
    world = World()
    world.run(world.groups.create(ALICE, "grp", request_id=world.rid()))
    world.refused(m.InvalidArgument, world.groups.set_visibility(ALICE, "grp", "internal", request_id=world.rid()))
    world.refused(m.NotFound, world.groups.set_visibility(BOB, "grp", "public", request_id=world.rid()))
    world.refused(m.NotFound, world.groups.set_visibility(ADMIN, "nothere", "public", request_id=world.rid()))


def test_delete_needs_owner_and_takes_memberships_image_memberships_and_robots_along():
    world = World()
    world.run(world.groups.create(ALICE, "grp", request_id=world.rid()))
    world.run(world.groups.create(ALICE, "grp2", request_id=world.rid()))
    world.give(m.Resource("image_group", "grp"), "bob", "master")
    world.give(m.Resource("image", "grp/web"), "carol", "developer")
    world.give(m.Resource("image", "grp2/web"), "carol", "developer")
    world.run(world.robots.create(ALICE, "ci", m.Resource("image_group", "grp"), "pull", request_id=world.rid()))
    world.run(world.robots.create(ALICE, "one", m.Resource("image", "grp/web"), "pull,push", request_id=world.rid()))
    world.run(world.robots.create(ALICE, "other", m.Resource("image_group", "grp2"), "pull", request_id=world.rid()))
    assert "needs owner" in str(world.refused(m.PermissionDenied, world.groups.delete(BOB, "grp",
                                                                                       request_id=world.rid())))
    world.refused(m.NotFound, world.groups.delete(CAROL, "grp", request_id=world.rid()))
    world.run(world.groups.delete(ALICE, "grp", request_id=world.rid()))
    assert world.run(world.store.get("/platform/image_groups/grp")) is None
    assert world.keys("/platform/members/image_group/grp/") == []
    assert world.keys("/platform/members/image/grp/") == []
    assert world.keys("/platform/members/image/grp2/") == ["/platform/members/image/grp2/web/carol"]
    assert world.keys("/platform/robots/") == [robot_key("other")]
    world.refused(m.NotFound, world.groups.delete(ALICE, "grp", request_id=world.rid()))
    # the name is free again, and the new group starts private with a new Owner
    assert world.run(world.groups.create(BOB, "grp", request_id=world.rid())).group.visibility == "private"


def test_effective_role_is_the_higher_of_image_and_group_membership():
    world = World()
    assert world.run(ig.effective_role(world.store, "alice", "grp/web")) is None
    world.give(m.Resource("image_group", "grp"), "alice", "reporter")
    assert world.run(ig.effective_role(world.store, "alice", "grp/web")) == m.Role.REPORTER
    world.give(m.Resource("image", "grp/web"), "alice", "master")
    assert world.run(ig.effective_role(world.store, "alice", "grp/web")) == m.Role.MASTER
    assert world.run(ig.effective_role(world.store, "alice", "grp/api")) == m.Role.REPORTER
    assert world.run(ig.effective_role(world.store, "alice", m.Resource("image", "grp/web"))) == m.Role.MASTER
    for user, image in (("alice", "grp"), ("alice", "GRP/web"), ("Alice!", "grp/web"), ("", "grp/web"),
                        ("alice", m.Resource("image_group", "grp"))):
        assert world.run(ig.effective_role(world.store, user, image)) is None


def test_access_applies_the_policy_with_what_the_store_says():
    world = World()
    world.run(world.groups.create(CAROL, "grp", request_id=world.rid()))
    everything = parse_scope("repository:grp/web:*")
    world.give(m.Resource("image", "grp/web"), "alice", "developer")
    assert world.run(ig.access(world.store, Caller("user", "alice"), everything)) == ("pull", "push")
    assert world.run(ig.access(world.store, Caller("user", "carol"), everything)) == ("pull", "push", "delete")
    assert world.run(ig.access(world.store, Caller("user", "bob"), everything)) == ()
    assert world.run(ig.access(world.store, Caller("anonymous"), everything)) == ()
    world.run(world.groups.set_visibility(CAROL, "grp", "public", request_id=world.rid()))
    assert world.run(ig.access(world.store, Caller("anonymous"), everything)) == ("pull",)
    assert world.run(ig.access(world.store, Caller("user", "bob"), everything)) == ("pull",)
    # a robot's role comes from its own grant, not from a user's memberships of the same name
    robot = Caller("robot", "carol", robot_scope=("image", "grp/api"), robot_actions=("pull",))
    assert world.run(ig.access(world.store, robot, everything)) == ("pull",)
    assert world.run(ig.access(world.store, Caller("admin", "ops"), parse_scope("registry:catalog:*"))) == ("*",)
    assert world.run(ig.access(world.store, Caller("user", "carol"), parse_scope("registry:catalog:*"))) == ()


HOSTILE_GROUPS = [
    b"", b"null", b"[]", b"{}", b"not json", b"\xff\xfe", b'{"visibility":"public"}',
    b'{"visibility":"PUBLIC","by":"ops","at":1}', b'{"visibility":"public","by":"ops","at":"1"}',
    b'{"visibility":"public","by":"ops","at":1e300}', b'{"visibility":"public","by":"Ops!","at":1}',
    b'{"visibility":"public","by":"ops","at":1,"extra":1}', b'{"visibility":["public"],"by":"ops","at":1}',
    b'{"visibility":"public","by":"ops","at":true}', b"[" * 100_000,
]


@pytest.mark.parametrize("value", HOSTILE_GROUPS)
def test_a_hostile_group_record_is_private_and_never_crashes(value):
    world = World()
    world.run(world.store.put("/platform/image_groups/grp", value))
    assert world.run(ig.visibility(world.store, "grp")) == "private"
    assert world.run(ig.access(world.store, Caller("anonymous"), parse_scope("repository:grp/web:pull"))) == ()
    with pytest.raises(ig.InvalidImageGroup):
        ig.decode(world.run(world.store.get("/platform/image_groups/grp")))
    world.give(m.Resource("image_group", "grp"), "alice", "owner")
    world.refused(m.CorruptRecord, world.groups.get(ALICE, "grp"))
    world.refused(m.CorruptRecord, world.groups.set_visibility(ALICE, "grp", "public", request_id=world.rid()))
    world.refused(m.CorruptRecord, world.robots.create(ALICE, "ci", m.Resource("image_group", "grp"), "pull",
                                                       request_id=world.rid()))
    world.run(world.groups.delete(ALICE, "grp", request_id=world.rid()))  # the Owner can still clear it away
    assert world.run(world.store.get("/platform/image_groups/grp")) is None


def test_the_good_record_decodes_and_a_bad_key_does_not():
    world = World()
    record = ig.ImageGroup("grp", "public", "ops", 1.7e9)
    world.run(world.store.txn([], [PutOp(record.key, record.to_bytes()),
                                   PutOp("/platform/image_groups/BAD", record.to_bytes())]))
    assert ig.decode(world.run(world.store.get(record.key))).visibility == "public"
    with pytest.raises(ig.InvalidImageGroup):
        ig.decode(world.run(world.store.get("/platform/image_groups/BAD")))
    assert world.run(ig.visibility(world.store, "BAD")) == "private"
    assert world.run(ig.visibility(world.store, 3)) == "private"  # type: ignore[arg-type]


def test_create_ops_join_another_creating_transaction():
    world = World()
    compares, puts = ig.create_ops("shop", "alice", 1.7e9)
    assert world.run(world.store.txn(compares, puts)).succeeded
    assert not world.run(world.store.txn(compares, puts)).succeeded
    assert world.run(ig.visibility(world.store, "shop")) == "private"
    assert world.run(m.load_memberships(world.store, m.Resource("image_group", "shop"))).owners() == ["alice"]


def test_a_membership_removed_between_check_and_write_makes_the_write_retry_and_fail():
    world = World()
    world.run(world.groups.create(CAROL, "grp", request_id=world.rid()))
    world.give(m.Resource("image_group", "grp"), "alice", "master")
    real_txn = world.store.txn
    removed = []

    async def racing_txn(compares, success, failure=None):
        if not removed and any(getattr(op, "key", "").startswith("/platform/image_groups/") for op in success):
            removed.append(True)
            await world.store.delete(m.member_key(m.Resource("image_group", "grp"), "alice"))
        return await real_txn(compares, success, failure)

    world.store.txn = racing_txn  # type: ignore[method-assign]
    with pytest.raises(m.NotFound):
        world.run(world.groups.set_visibility(ALICE, "grp", "public", request_id=world.rid()))
    assert world.run(ig.visibility(world.store, "grp")) == "private"


def test_memberships_without_a_record_are_not_taken_over_by_a_creator():
    world = World()
    world.give(m.Resource("image_group", "held"), "bob", "developer")  # an admin gave bob a role; no record
    world.give(m.Resource("image_group", "owned"), "alice", "owner")
    assert "already exists" in str(world.refused(m.AlreadyExists, world.groups.create(CAROL, "held",
                                                                                       request_id=world.rid())))
    world.refused(m.AlreadyExists, world.groups.create(BOB, "held", request_id=world.rid()))  # not its Owner
    view = world.run(world.groups.create(ALICE, "owned", public=True, request_id=world.rid()))
    assert (view.group.visibility, view.role) == ("public", m.Role.OWNER)
    assert world.run(m.load_memberships(world.store, m.Resource("image_group", "owned"))).owners() == ["alice"]
    world.run(world.groups.create(ADMIN, "held", request_id=world.rid()))  # an admin may; it becomes an Owner
    found = world.run(m.load_memberships(world.store, m.Resource("image_group", "held")))
    assert (found.role_of("bob"), found.role_of("ops")) == (m.Role.DEVELOPER, m.Role.OWNER)
