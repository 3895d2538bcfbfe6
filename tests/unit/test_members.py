"""Members and roles on the sim Store: the whole role matrix, member management, the last Owner, races, corrupt
records, and docs/roles.md rendered from the code's one table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from control import members as m
from control.activity import ACTIVITY, COUNTS, recount
from control.auth import Principal
from foundation.ports import PutOp
from foundation.ports import control as port
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
ALICE = Principal("alice", "user")
CAROL = Principal("carol", "user")

# The rights of a GitLab-like platform, written out here independently of control.members.RIGHTS: the least role
# each action needs ("any": any user, on a resource being created).
EXPECTED = {
    "app.read": "guest", "app.create": "any", "app.delete": "owner", "app.scale": "master",
    "version.deploy": "developer", "version.deploy_production": "master",
    "version.release": "master",
    "image_group.create": "any", "image_group.delete": "owner", "image_group.visibility": "master",
    "image.read": "guest", "image.pull": "reporter", "image.push": "developer", "image.delete": "master",
    "robot.manage": "master",
    "build.trigger": "developer", "build.read": "reporter", "hook.manage": "master",
    "member.read": "guest", "member.manage": "owner", "member.manage_developers": "master",
    "activity.read": "guest",
}
ORDER = ["guest", "reporter", "developer", "master", "owner"]


class World:
    """A control-service store on the sim: run calls, seed memberships, and check a refusal writes nothing
    (tests/unit/test_image_groups.py and test_robots.py build on it)."""

    def __init__(self, seed: int = 1) -> None:
        self.rt = SimRuntime(seed=seed)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)
        self.members = m.Members(self.store, self.rt)

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def give(self, resource: m.Resource, user: str, role: str) -> None:
        record = m.Membership(resource, user, m.Role.parse(role), "ops", 1.7e9)
        self.run(self.store.put(record.key, record.to_bytes()))

    def snapshot(self):
        return self.server.revision, [(kv.key, kv.value, kv.mod_revision) for kv in self.server._range("/", True).kvs]

    def refused(self, error: type[Exception], coro) -> Exception:
        before = self.snapshot()
        with pytest.raises(error) as caught:
            self.run(coro)
        assert self.snapshot() == before, "a refused call must write nothing"
        return caught.value


def _resources(world: World, role: str) -> dict[tuple[str, bool], m.Resource]:
    """For each kind, an own resource (alice has ``role``, for images through the group) and a foreign one."""
    own_app, foreign_app = m.Resource("app", "own"), m.Resource("app", "foreign")
    own_group, foreign_group = m.Resource("image_group", "grp"), m.Resource("image_group", "other")
    world.give(own_app, "alice", role)
    world.give(own_group, "alice", role)
    for foreign in (foreign_app, foreign_group):
        world.give(foreign, "carol", "owner")
    return {("app", True): own_app, ("app", False): foreign_app,
            ("image_group", True): own_group, ("image_group", False): foreign_group,
            ("image", True): m.Resource("image", "grp/web"), ("image", False): m.Resource("image", "other/web")}


def test_the_code_has_exactly_the_expected_actions_and_rights():
    assert {a.value for a in m.Action} == set(EXPECTED)
    for action, (least, _) in m.RIGHTS.items():
        if EXPECTED[action] == "any":
            assert action in m.CREATE_ACTIONS
        else:
            assert str(least) == EXPECTED[action], action
    assert [str(r) for r in sorted(m.Role)] == ORDER


@pytest.mark.parametrize("role", ORDER)
def test_the_whole_matrix_for_a_member_on_its_own_and_a_foreign_resource(role):
    world = World()
    resources = _resources(world, role)
    outcomes = {}
    for action, (kind, own) in itertools.product(m.Action, resources):
        resource = resources[kind, own]
        found = world.run(m.load_memberships(world.store, resource))
        before = world.snapshot()
        try:
            m.authorize(ALICE, action, resource, found)
            outcome = "allowed"
        except m.InvalidArgument:
            outcome = "invalid"
        except m.NotFound as exc:
            assert str(exc) == f"{resource} does not exist"  # exactly what a missing resource answers
            outcome = "not found"
        except m.PermissionDenied as exc:
            assert f"needs {EXPECTED[action]} or above" in str(exc)
            outcome = "denied"
        assert world.snapshot() == before
        outcomes[action.value, kind, own] = outcome
    for (action, kind, own), outcome in outcomes.items():
        applies = kind in m.RIGHTS[m.Action(action)][1]
        need = EXPECTED[action]
        if not applies:
            want = "invalid"
        elif need == "any":
            want = "allowed"
        elif not own:
            want = "not found"
        else:
            want = "allowed" if ORDER.index(role) >= ORDER.index(need) else "denied"
        assert outcome == want, (role, action, kind, own)
    assert len(outcomes) == len(m.Action) * 6


@pytest.mark.parametrize("principal,want", [(ADMIN, None), (DISCOVERY, m.PermissionDenied),
                                            (Principal("nobody", "user"), m.NotFound)])
def test_admins_may_do_everything_discovery_nothing_and_outsiders_see_nothing(principal, want):
    world = World()
    resources = _resources(world, "owner")
    for action, resource in itertools.product(m.Action, resources.values()):
        if resource.kind not in m.RIGHTS[action][1]:
            continue
        found = world.run(m.load_memberships(world.store, resource))
        expected = None if principal.role == "user" and action in m.CREATE_ACTIONS else want
        if expected is None:
            m.authorize(principal, action, resource, found)
        else:
            with pytest.raises(expected):
                m.authorize(principal, action, resource, found)


def test_an_image_takes_the_higher_of_its_direct_and_its_group_role():
    world = World()
    group, image = m.Resource("image_group", "grp"), m.Resource("image", "grp/web")
    world.give(group, "alice", "reporter")
    found = world.run(m.load_memberships(world.store, image))
    assert found.role_of("alice") == m.Role.REPORTER
    m.authorize(ALICE, m.Action.IMAGE_PULL, image, found)
    with pytest.raises(m.PermissionDenied):
        m.authorize(ALICE, m.Action.IMAGE_PUSH, image, found)
    world.give(image, "alice", "developer")
    found = world.run(m.load_memberships(world.store, image))
    m.authorize(ALICE, m.Action.IMAGE_PUSH, image, found)
    world.give(image, "alice", "guest")  # a lower direct role does not take the group's away
    assert world.run(m.load_memberships(world.store, image)).role_of("alice") == m.Role.REPORTER
    # A sibling group's members have nothing on this image.
    world.give(m.Resource("image_group", "grp2"), "carol", "owner")
    assert world.run(m.load_memberships(world.store, image)).role_of("carol") is None


# --------------------------------------------------------------------------- member management

MANAGERS = ["guest", "reporter", "developer", "master", "owner", "admin", "outsider", "discovery"]


def _principal(kind: str) -> Principal:
    return {"admin": ADMIN, "discovery": DISCOVERY, "outsider": Principal("nobody", "user")}.get(
        kind, Principal("boss", "user"))


@pytest.mark.parametrize("manager", MANAGERS)
def test_who_may_add_change_and_remove_whom(manager):
    """Every manager × every old role (or none) × every new role (or removal): the outcome and, when refused,
    nothing written; when done, the membership and its activity record written together."""
    for old, new in itertools.product([None, *ORDER], [None, *ORDER]):
        if old is None and new is None:
            continue
        world = World()
        app = m.Resource("app", "shop")
        world.give(app, "owner1", "owner")
        world.give(app, "owner2", "owner")
        if manager not in ("admin", "outsider", "discovery"):
            world.give(app, "boss", manager)
        if old is not None:
            world.give(app, "dev", old)
        who = _principal(manager)
        if old is None:
            call = world.members.add(who, app, "dev", new, request_id="r1")
        elif new is None:
            call = world.members.remove(who, app, "dev", request_id="r1")
        else:
            call = world.members.change(who, app, "dev", new, request_id="r1")
        if manager == "discovery":
            want: type[Exception] | None = m.PermissionDenied
        elif manager == "outsider":
            want = m.NotFound
        elif manager == "admin":
            want = None
        else:
            highest = max(ORDER.index(r) for r in (old, new) if r is not None)
            need = "owner" if highest > ORDER.index("developer") else "master"
            want = None if ORDER.index(manager) >= ORDER.index(need) else m.PermissionDenied
        if want is not None:
            world.refused(want, call)
            continue
        before = world.snapshot()
        change = world.run(call)
        stored = world.run(m.load_memberships(world.store, app)).direct.get("dev")
        assert (stored.role if stored else None) == (m.Role.parse(new) if new else None)
        if old == new:
            assert world.snapshot() == before  # already so: nothing written, no record
            continue
        records = world.server._range(ACTIVITY, True).kvs
        assert len(records) == 1 and records[0].mod_revision == change.revision
        body = json.loads(records[0].value)
        assert (body["who"], body["action"]) == (who.name, str(m.member_action(
            m.Role.parse(old) if old else None, m.Role.parse(new) if new else None)))
        assert world.run(recount(world.store)).equal


def test_add_existing_and_change_missing_are_refused_and_write_nothing():
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    world.give(app, "bob", "guest")
    world.refused(m.AlreadyExists, world.members.add(ALICE, app, "bob", "reporter", request_id="r1"))
    world.refused(m.NotFound, world.members.change(ALICE, app, "zed", "reporter", request_id="r2"))
    world.refused(m.NotFound, world.members.remove(ALICE, app, "zed", request_id="r3"))
    world.refused(m.InvalidArgument, world.members.add(ALICE, app, "Bad Name", "guest", request_id="r4"))
    world.refused(m.InvalidArgument, world.members.add(ALICE, app, "zed", "king", request_id="r5"))
    world.refused(port.InvalidArgument, world.members.add(ALICE, app, "zed", "guest", request_id="bad id"))


def test_the_last_owner_cannot_be_removed_or_demoted():
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    world.refused(m.FailedPrecondition, world.members.remove(ALICE, app, "alice", request_id="r1"))
    world.refused(m.FailedPrecondition, world.members.change(ADMIN, app, "alice", "master", request_id="r2"))
    world.run(world.members.add(ALICE, app, "bob", "owner", request_id="r3"))
    world.run(world.members.remove(ALICE, app, "alice", request_id="r4"))  # bob remains
    assert world.run(m.load_memberships(world.store, app)).owners() == ["bob"]
    # An image may rely on its group's Owner.
    group, image = m.Resource("image_group", "grp"), m.Resource("image", "grp/web")
    world.give(group, "carol", "owner")
    world.give(image, "dave", "owner")
    world.run(world.members.remove(CAROL, image, "dave", request_id="r5"))


def test_two_owners_removing_each_other_at_once_leave_one():
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    world.give(app, "carol", "owner")

    async def both():
        one = world.rt.spawn(world.members.remove(ALICE, app, "carol", request_id="r1"), name="a")
        two = world.rt.spawn(world.members.remove(CAROL, app, "alice", request_id="r2"), name="c")
        outcomes = []
        for task in (one, two):
            try:
                await task.join()
                outcomes.append("done")
            except m.MembersError as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    outcomes = world.run(both())
    assert sorted(outcomes) in (["NotFound", "done"], ["FailedPrecondition", "done"])
    assert len(world.run(m.load_memberships(world.store, app)).owners()) == 1


def test_a_right_removed_between_the_check_and_the_write_fails_the_write():
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    world.give(app, "boss", "master")
    boss = Principal("boss", "user")
    found = world.run(m.load_memberships(world.store, app))
    m.authorize(boss, m.Action.VERSION_DEPLOY, app, found)
    world.run(world.store.delete(m.member_key(app, "boss")))
    result = world.run(world.store.txn(found.guard("boss"), [PutOp("/apps/shop", b"v2")]))
    assert not result.succeeded and world.server._range("/apps/shop", False).kvs == ()


def test_a_member_write_fails_when_the_resource_record_is_gone():
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    members = m.Members(world.store, world.rt, resource_key=lambda r: f"/test/apps/{r.name}")
    world.refused(m.NotFound, members.add(ALICE, app, "bob", "guest", request_id="r1"))
    world.run(world.store.put("/test/apps/shop", b"{}"))
    assert world.run(members.add(ALICE, app, "bob", "guest", request_id="r2")).membership is not None


@pytest.mark.parametrize("value", [b"", b"not json", b"[]", b'{"role":"king","by":"ops","at":1}',
                                   b'{"role":"owner","by":"ops","at":1,"x":1}', b'{"role":"owner","by":"O P","at":1}',
                                   b'{"role":"owner","by":"ops","at":true}', b"[" * 100_000,
                                   b'{"role":"owner","by":"ops","at":1e400}', b"\xff\xfe"])
def test_a_corrupt_membership_gives_no_right_and_crashes_nothing(value):
    world = World()
    app = m.Resource("app", "shop")
    world.give(app, "alice", "owner")
    world.run(world.store.put(m.member_key(app, "mallory"), value))
    found = world.run(m.load_memberships(world.store, app))
    assert found.role_of("mallory") is None and found.invalid == (m.member_key(app, "mallory"),)
    with pytest.raises(m.NotFound):
        m.authorize(Principal("mallory", "user"), m.Action.APP_READ, app, found)
    assert found.role_of("alice") == m.Role.OWNER


@pytest.mark.parametrize("key", ["/platform/members/app/shop/Bad", "/platform/members/db/shop/alice",
                                 "/platform/members/image/noslash/alice", "/platform/members/app/a/b/alice"])
def test_a_membership_under_a_bad_key_does_not_decode(key):
    from foundation.ports import KeyValue
    with pytest.raises(m.InvalidMembership):
        m.decode(KeyValue(key, b'{"role":"owner","by":"ops","at":1}', 1, 1, 1))


@pytest.mark.parametrize("kind,name", [("app", "UPPER"), ("app", "a/b"), ("app", ""), ("image", "grp"),
                                       ("image", "grp/a/b"), ("image_group", "x" * 64), ("db", "x"),
                                       ("app", "-lead"), ("image", "../etc")])
def test_resource_names_are_validated(kind, name):
    with pytest.raises(m.InvalidArgument):
        m.Resource(kind, name)


def test_owner_ops_and_delete_ops_join_the_resource_transactions():
    world = World()
    app = m.Resource("app", "shop")
    compares, puts = m.owner_ops(app, "alice", 1.7e9)
    assert world.run(world.store.txn(compares, puts)).succeeded
    assert not world.run(world.store.txn(compares, puts)).succeeded  # only the first Owner, once
    assert world.run(m.load_memberships(world.store, app)).owners() == ["alice"]
    world.run(world.store.txn([], m.delete_ops(app)))
    assert world.run(m.load_memberships(world.store, app)).direct == {}
    assert not world.server._range(COUNTS, True).kvs


def test_docs_roles_md_holds_the_matrix_rendered_from_the_code():
    text = (ROOT / "docs" / "roles.md").read_text()
    start = text.index("<!-- rendered from control.members.render_matrix(); do not edit by hand -->\n")
    end = text.index("<!-- end of the rendered matrix -->")
    assert text[text.index("\n", start) + 1:end] == m.render_matrix()
