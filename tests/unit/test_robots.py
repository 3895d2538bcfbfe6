"""Robot accounts on the sim Store: created by Masters of their scope (secret shown once, stored as its SHA-256),
authenticated by robot_caller (unknown, revoked, expired, wrong secret, corrupt record -> None), listed to those who
manage them, revoked; hostile records never crash and never authenticate."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control import image_groups as ig
from control import members as m
from control import robots as rb
from control.activity import ACTIVITY
from control.auth import Principal
from control.registry_policy import Caller, parse_scope
from foundation.ports import KeyValue
from foundation.ports import control as port
from tests.unit.test_members import World as MembersWorld

ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")
CAROL = Principal("carol", "user")
GROUP = m.Resource("image_group", "grp")
IMAGE = m.Resource("image", "grp/web")


class World(MembersWorld):
    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.groups = ig.ImageGroups(self.store, self.rt)
        self.robots = rb.Robots(self.store, self.rt)
        self.ids = 0
        self.run(self.groups.create(ALICE, "grp", request_id=self.rid()))

    def rid(self) -> str:
        self.ids += 1
        return f"r{self.ids}"

    def create(self, who=ALICE, name="ci", scope=GROUP, actions="pull,push", ttl=None):
        return self.run(self.robots.create(who, name, scope, actions, ttl=ttl, request_id=self.rid()))

    def login(self, username: str, password: str) -> Caller | None:
        return self.run(rb.robot_caller(self.store, self.rt, username, password))


def test_create_returns_the_secret_once_and_stores_only_its_digest():
    world = World()
    robot, secret = world.create()
    assert len(secret) == 64 and int(secret, 16) >= 0
    stored = world.run(world.store.get("/platform/robots/ci"))
    data = json.loads(stored.value)
    assert data == {"secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
                    "scope": {"kind": "image_group", "name": "grp"}, "actions": ["pull", "push"], "expires": None,
                    "by": "alice", "at": robot.at}
    assert secret not in stored.value.decode()
    records = [json.loads(kv.value) for kv in world.server._range(ACTIVITY + "image_group/grp/", True).kvs]
    assert records[0]["action"] == "robot.manage" and records[0]["result"] == "create robot ci pull,push"
    assert secret not in json.dumps(records)
    caller = world.login("robot$ci", secret)
    assert caller == Caller("robot", "ci", robot_scope=("image_group", "grp"), robot_actions=("pull", "push"))
    _, other = world.create(name="ci2")
    assert other != secret


def test_a_robot_gets_its_actions_in_its_scope_only_through_the_policy():
    world = World()
    world.run(world.groups.create(BOB, "else", request_id=world.rid()))
    _, secret = world.create(name="puller", scope=IMAGE, actions=["pull"])
    caller = world.login("robot$puller", secret)
    assert world.run(ig.access(world.store, caller, parse_scope("repository:grp/web:*"))) == ("pull",)
    assert world.run(ig.access(world.store, caller, parse_scope("repository:grp/api:pull"))) == ()
    assert world.run(ig.access(world.store, caller, parse_scope("repository:else/web:pull"))) == ()


@pytest.mark.parametrize("role", ["guest", "reporter", "developer", "master", "owner"])
def test_creating_needs_master_of_the_scope(role):
    world = World()
    world.give(GROUP, "bob", role)
    for scope in (GROUP, IMAGE):
        if m.Role.parse(role) >= m.Role.MASTER:
            world.create(who=BOB, name=f"r-{scope.kind.replace('_', '-')}", scope=scope)
        else:
            error = world.refused(m.PermissionDenied, world.robots.create(BOB, "x", scope, "pull",
                                                                          request_id=world.rid()))
            assert "needs master or above" in str(error)


def test_create_refusals_write_nothing():
    world = World()
    world.create()
    refused = world.refused
    refused(m.NotFound, world.robots.create(CAROL, "x", GROUP, "pull", request_id=world.rid()))
    refused(m.PermissionDenied, world.robots.create(DISCOVERY, "x", GROUP, "pull", request_id=world.rid()))
    assert "already exists" in str(refused(m.AlreadyExists, world.robots.create(ALICE, "ci", GROUP, "pull",
                                                                                 request_id=world.rid())))
    for name in ("CI", "robot$ci", "", "a" * 64, None, "a/b"):
        refused(m.InvalidArgument, world.robots.create(ALICE, name, GROUP, "pull", request_id=world.rid()))
    for actions in ("", "delete", "pull,delete", "pull,pull", "*", ["pull", "push", "pull"], 7, b"pull", [], None):
        error = refused(m.InvalidArgument, world.robots.create(ALICE, "x", GROUP, actions, request_id=world.rid()))
        assert str(error).startswith("actions:")
    for scope in (m.Resource("app", "grp"), "grp", None):
        refused(m.InvalidArgument, world.robots.create(ALICE, "x", scope, "pull", request_id=world.rid()))
    for ttl in (0, -1, True, "60", 1e12, float("nan")):
        refused(m.InvalidArgument, world.robots.create(ALICE, "x", GROUP, "pull", ttl=ttl, request_id=world.rid()))
    refused(port.InvalidArgument, world.robots.create(ALICE, "x", GROUP, "pull", request_id="no spaces"))
    # a group with memberships but no record: robots need the group to exist
    world.give(m.Resource("image_group", "ghost"), "alice", "owner")
    refused(m.NotFound, world.robots.create(ALICE, "x", m.Resource("image_group", "ghost"), "pull",
                                            request_id=world.rid()))


def test_robot_caller_refuses_unknown_wrong_expired_and_malformed_logins():
    world = World()
    _, secret = world.create(ttl=60)
    assert world.login("robot$ci", secret) is not None
    for username, password in (("robot$ci", secret[:-1] + ("0" if secret[-1] != "0" else "1")), ("robot$ci", ""),
                               ("robot$ci", secret + "x"), ("ci", secret), ("robot$nobody", secret),
                               ("robot$CI", secret), ("robot$ci/x", secret), ("robot$", secret),
                               ("robot$ci", "x" * 10_000), (None, secret), ("robot$ci", None),
                               ("build$ci", secret), ("robot$../ci", secret)):
        assert world.login(username, password) is None, (username, password)
    world.run(world.rt.sleep(61))
    assert world.login("robot$ci", secret) is None  # expired


def test_revoke_makes_the_next_login_fail_and_needs_master_of_the_scope():
    world = World()
    _, secret = world.create()
    world.give(GROUP, "bob", "developer")
    world.refused(m.PermissionDenied, world.robots.revoke(BOB, "ci", request_id=world.rid()))
    assert str(world.refused(m.NotFound, world.robots.revoke(CAROL, "ci", request_id=world.rid()))) == \
        "robot ci does not exist"  # an outsider learns nothing more than for a robot that does not exist
    world.refused(m.NotFound, world.robots.revoke(ALICE, "nobody", request_id=world.rid()))
    world.run(world.robots.revoke(ALICE, "ci", request_id=world.rid()))
    assert world.login("robot$ci", secret) is None
    records = [json.loads(kv.value)["result"] for kv in world.server._range(ACTIVITY + "image_group/grp/", True).kvs]
    assert records[0] == "revoke robot ci"
    _, again = world.create()  # the name is free again, with a new secret
    assert again != secret and world.login("robot$ci", secret) is None and world.login("robot$ci", again)


def test_list_shows_the_robots_the_caller_manages():
    world = World()
    world.run(world.groups.create(BOB, "bobs", request_id=world.rid()))
    world.create(name="a")
    world.create(name="b", scope=IMAGE)
    world.create(who=BOB, name="c", scope=m.Resource("image_group", "bobs"))
    world.run(world.store.put("/platform/robots/broken", b"{}"))
    assert [r.name for r in world.run(world.robots.list(ALICE)).robots] == ["a", "b"]
    assert [r.name for r in world.run(world.robots.list(BOB)).robots] == ["c"]
    assert [r.name for r in world.run(world.robots.list(CAROL)).robots] == []
    world.give(IMAGE, "carol", "master")
    assert [r.name for r in world.run(world.robots.list(CAROL)).robots] == ["b"]
    everything = world.run(world.robots.list(ADMIN))
    assert [r.name for r in everything.robots] == ["a", "b", "c"]
    assert everything.invalid == ("/platform/robots/broken",)
    assert world.run(world.robots.list(DISCOVERY)).robots == ()


def _good(secret: str) -> dict:
    return {"secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), "scope": {"kind": "image_group",
                                                                                   "name": "grp"},
            "actions": ["pull"], "expires": None, "by": "alice", "at": 1.7e9}


def _hostile(secret: str):
    good = _good(secret)
    yield json.dumps(good).encode()  # the control: this one authenticates
    for key, value in (("secret_sha256", good["secret_sha256"].upper()), ("secret_sha256", ""),
                       ("secret_sha256", None), ("scope", {"kind": "app", "name": "grp"}),
                       ("scope", {"kind": "image", "name": "grp"}), ("scope", {"kind": "image_group", "name": "G"}),
                       ("scope", ["image_group", "grp"]), ("scope", {"kind": "image_group", "name": "grp", "x": 1}),
                       ("actions", []), ("actions", ["delete"]), ("actions", ["pull", "pull"]), ("actions", "pull"),
                       ("actions", ["*"]), ("expires", "never"), ("expires", True), ("expires", -1), ("by", "A B"),
                       ("at", None), ("at", 1e300)):
        yield json.dumps({**good, key: value}).encode()
    yield json.dumps({k: v for k, v in good.items() if k != "expires"}).encode()
    yield json.dumps({**good, "admin": True}).encode()
    yield from (b"", b"null", b"[]", b"\xff", b"{" * 50_000, b'"' + b"a" * 100_000)


def test_hostile_records_never_crash_and_never_authenticate():
    world = World()
    secret = "s" * 64
    outcomes = []
    for value in _hostile(secret):
        world.run(world.store.put("/platform/robots/evil", value))
        outcomes.append(world.login("robot$evil", secret) is not None)
        try:
            rb.decode(world.run(world.store.get("/platform/robots/evil")))
            decodes = True
        except rb.InvalidRobot:
            decodes = False
        assert decodes == outcomes[-1]
        if not decodes:
            world.refused(m.CorruptRecord, world.robots.revoke(ALICE, "evil", request_id=world.rid()))
    assert outcomes[0] is True and not any(outcomes[1:])
    assert world.run(rb.robot_caller(world.store, world.rt, "robot$evil", secret)) is None  # the last one


def test_a_group_deleted_while_a_robot_is_created_takes_the_robot_along():
    world = World()
    real_txn = world.store.txn
    raced = []

    # the delete has read the robots; a robot lands before the delete's own transaction
    async def racing_delete_txn(compares, success, failure=None):
        if not raced and any(type(op).__name__ == "DeleteOp" and op.key == "/platform/image_groups/grp"
                             for op in success):
            raced.append(True)
            await world.robots.create(ALICE, "sneaky", GROUP, "pull", request_id="race-1")
        return await real_txn(compares, success, failure)

    world.store.txn = racing_delete_txn  # type: ignore[method-assign]
    world.run(world.groups.delete(ALICE, "grp", request_id=world.rid()))
    assert raced
    assert not world.server._range("/platform/robots/", True).kvs  # the retry read it and deleted it too
    assert world.run(world.store.get("/platform/image_groups/grp")) is None


def test_secrets_follow_the_runtime_seed_in_the_sim():
    first, second = World(seed=7), World(seed=7)
    assert first.create()[1] == second.create()[1]


# --------------------------------------------------------------------------- properties: hostile records

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=6), max_leaves=20)
near_good = st.builds(lambda key, value: {**_good("s" * 64), key: value},
                      st.sampled_from(["secret_sha256", "scope", "actions", "expires", "by", "at", "extra"]),
                      json_values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_good).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200),
       st.sampled_from(["/platform/robots/evil", "/platform/robots/EVIL", "/platform/robots/", "/other/evil"]))
def test_decoding_anything_is_a_robot_or_invalid_robot(value, key):
    try:
        robot = rb.decode(KeyValue(key, value, 1, 1, 1))
    except rb.InvalidRobot:
        return
    assert robot.actions and set(robot.actions) <= {"pull", "push"}
    assert robot.scope.kind in ("image_group", "image") and len(robot.secret_sha256) == 64
    assert json.loads(robot.to_bytes()) == json.loads(value)  # a record that decodes is exactly a good one


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.builds(lambda k, v: {**{"visibility": "public", "by": "ops", "at": 1}, k: v},
                                        st.sampled_from(["visibility", "by", "at", "x"]), json_values))
       .map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_decoding_anything_is_an_image_group_or_invalid(value):
    try:
        group = ig.decode(KeyValue("/platform/image_groups/grp", value, 1, 1, 1))
    except ig.InvalidImageGroup:
        return
    assert group.visibility in ("public", "private")
    assert json.loads(group.to_bytes()) == json.loads(value)


def test_a_group_holds_a_bounded_number_of_robots_so_its_delete_stays_one_transaction(monkeypatch):
    monkeypatch.setattr(rb, "MAX_ROBOTS_PER_GROUP", 3)
    world = World()
    world.create(name="a")
    world.create(name="b", scope=IMAGE)
    world.create(name="c")
    error = world.refused(m.FailedPrecondition, world.robots.create(ALICE, "d", IMAGE, "pull", request_id=world.rid()))
    assert "already has 3 robots" in str(error)
    world.run(world.robots.revoke(ALICE, "a", request_id=world.rid()))
    world.create(name="d")
