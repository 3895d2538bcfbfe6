"""The registry's access policy: the documented pull/push/delete table for every caller, properties over all callers
and scopes (granted is a subset of what was asked, never more than the role allows), and the scope grammar
(round-trips, garbage refused with a message naming the bad part)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control.members import Role
from control.registry_policy import ACTIONS, Caller, Scope, ScopeError, granted, parse_scope

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL = Scope("repository", "grp/web", ACTIONS)

# The documented table (docs/roles.md "Images and the registry"), written out independently of the code:
# caller -> (actions on a public group's image, actions on a private group's image).
TABLE = {
    "anonymous": ("pull", ""),
    "guest": ("pull", ""),
    "reporter": ("pull", "pull"),
    "developer": ("pull,push", "pull,push"),
    "master": ("pull,push,delete", "pull,push,delete"),
    "owner": ("pull,push,delete", "pull,push,delete"),
    "admin": ("pull,push,delete", "pull,push,delete"),
    "no member": ("pull", ""),
}


def _caller(who: str) -> tuple[Caller, Role | None]:
    if who in ("anonymous", "admin"):
        return Caller(who), None  # type: ignore[arg-type]
    if who == "no member":
        return Caller("user", "zed"), None
    return Caller("user", "alice"), Role[who.upper()]


@pytest.mark.parametrize("who", TABLE)
@pytest.mark.parametrize("visibility", ["public", "private"])
def test_the_documented_table_for_people(who, visibility):
    caller, role = _caller(who)
    want = TABLE[who][0 if visibility == "public" else 1]
    assert ",".join(granted(caller, ALL, visibility=visibility, role=role)) == want
    for action in ACTIONS:  # asking for one action gets that action exactly when the table has it
        got = granted(caller, Scope("repository", "grp/web", (action,)), visibility=visibility, role=role)
        assert got == ((action,) if action in want.split(",") else ())


def test_anything_but_exactly_public_is_private():
    for visibility in ("private", "Public", "", "public ", "yes"):
        assert granted(Caller("anonymous"), ALL, visibility=visibility, role=None) == ()


def test_a_robot_gets_its_actions_inside_its_scope_only():
    group_robot = Caller("robot", "ci", robot_scope=("image_group", "grp"), robot_actions=("pull", "push"))
    image_robot = Caller("robot", "ci", robot_scope=("image", "grp/web"), robot_actions=("pull",))
    assert granted(group_robot, ALL, visibility="private", role=None) == ("pull", "push")
    assert granted(group_robot, Scope("repository", "grp/api", ACTIONS), visibility="private", role=None) == \
        ("pull", "push")
    assert granted(group_robot, Scope("repository", "grpx/web", ACTIONS), visibility="private", role=None) == ()
    assert granted(image_robot, ALL, visibility="private", role=None) == ("pull",)
    assert granted(image_robot, Scope("repository", "grp/api", ACTIONS), visibility="private", role=None) == ()
    # outside its scope a robot is anyone: public pulls only; a role passed in is ignored
    assert granted(image_robot, Scope("repository", "grp/api", ACTIONS), visibility="public",
                   role=Role.OWNER) == ("pull",)
    # a robot given delete (by a hand-made record) gets it; robots.py never creates one (tested there)
    deleter = Caller("robot", "x", robot_scope=("image", "grp/web"), robot_actions=("delete", "bogus"))
    assert granted(deleter, ALL, visibility="private", role=None) == ("delete",)


def test_a_build_pushes_and_pulls_its_own_repository_only_and_never_deletes():
    build = Caller("build", "web@" + "a" * 40, robot_scope=("image", "web/web"),
                   robot_actions=("pull", "push", "delete"))
    assert granted(build, Scope("repository", "web/web", ACTIONS), visibility="private", role=None) == \
        ("pull", "push")
    assert granted(build, Scope("repository", "web/other", ACTIONS), visibility="private", role=None) == ()
    assert granted(build, Scope("repository", "base/python", ACTIONS), visibility="public", role=None) == ("pull",)
    assert granted(Caller("build", "x"), Scope("repository", "web/web", ACTIONS), visibility="private",
                   role=None) == ()


def test_the_catalog_is_for_admins_only():
    catalog = parse_scope("registry:catalog:*")
    assert catalog == Scope("registry", "catalog", ("*",))
    assert granted(Caller("admin", "ops"), catalog, visibility="public", role=None) == ("*",)
    for caller in (Caller("anonymous"), Caller("user", "alice"),
                   Caller("robot", "r", robot_scope=("image_group", "grp"), robot_actions=("pull",))):
        assert granted(caller, catalog, visibility="public", role=Role.OWNER) == ()


# --------------------------------------------------------------------------- properties

groups = st.sampled_from(["grp", "web", "a", "x-1"])
repositories = st.builds(lambda g, n: f"{g}/{n}", groups, st.sampled_from(["web", "api", "a.b", "x_y-z"]))
action_sets = st.sets(st.sampled_from(ACTIONS), min_size=1).map(lambda s: tuple(a for a in ACTIONS if a in s))
scopes = st.one_of(st.builds(Scope, st.just("repository"), repositories, action_sets),
                   st.just(Scope("registry", "catalog", ("*",))))
roles = st.one_of(st.none(), st.sampled_from(list(Role)))
robot_scopes = st.one_of(st.none(), st.tuples(st.just("image_group"), groups),
                         st.tuples(st.just("image"), repositories), st.tuples(st.text(max_size=8), st.text(max_size=8)))
callers = st.builds(Caller, st.sampled_from(["anonymous", "user", "admin", "robot", "build"]),
                    st.sampled_from(["", "alice", "ci"]), robot_scopes,
                    st.lists(st.sampled_from([*ACTIONS, "*", "all", ""]), max_size=4).map(tuple))
visibilities = st.sampled_from(["public", "private", "", "PUBLIC"])


@PROPS
@given(callers, scopes, visibilities, roles)
def test_granted_is_a_subset_of_what_was_asked_in_order(caller, scope, visibility, role):
    got = granted(caller, scope, visibility=visibility, role=role)
    assert set(got) <= set(scope.actions)
    assert list(got) == [a for a in scope.actions if a in got]
    assert len(set(got)) == len(got)


@PROPS
@given(callers, scopes, visibilities, roles)
def test_never_more_than_the_caller_may(caller, scope, visibility, role):
    got = set(granted(caller, scope, visibility=visibility, role=role))
    if scope.type == "registry":
        assert not got or caller.kind == "admin"
        return
    public_pull = {"pull"} if visibility == "public" else set()
    if caller.kind == "admin":
        assert got == set(scope.actions)
    elif caller.kind == "user":
        least = {"pull": Role.REPORTER, "push": Role.DEVELOPER, "delete": Role.MASTER}
        assert got <= public_pull | {a for a in ACTIONS if role is not None and role >= least[a]}
    elif caller.kind in ("robot", "build"):
        kind, name = caller.robot_scope or ("", "")
        inside = (kind == "image_group" and scope.name.split("/")[0] == name) \
            or (kind == "image" and scope.name == name)
        mine = set(caller.robot_actions) - ({"delete"} if caller.kind == "build" else set())
        assert got <= public_pull | (mine if inside else set())
    else:
        assert got <= public_pull


@PROPS
@given(callers, scopes, roles)
def test_a_private_group_never_grants_more_than_a_public_one(caller, scope, role):
    private = set(granted(caller, scope, visibility="private", role=role))
    assert private <= set(granted(caller, scope, visibility="public", role=role))


@PROPS
@given(scopes)
def test_scopes_round_trip_through_their_text(scope):
    assert parse_scope(str(scope)) == scope


@PROPS
@given(repositories, st.lists(st.sampled_from([*ACTIONS, "*"]), min_size=1, max_size=5))
def test_parsing_orders_and_dedupes_actions_and_star_means_all(name, words):
    scope = parse_scope(f"repository:{name}:{','.join(words)}")
    want = set(ACTIONS) if "*" in words else set(words)
    assert scope.actions == tuple(a for a in ACTIONS if a in want)


@PROPS
@given(st.text(max_size=80))
def test_garbage_is_refused_with_a_message_naming_the_part(text):
    try:
        scope = parse_scope(text)
    except ScopeError as exc:
        assert exc.part in ("type", "name", "action")
        assert str(exc).startswith(f"scope {exc.part}: ")
        assert "\n" not in str(exc) or "\n" in text
        assert len(str(exc)) < 300
    else:
        assert parse_scope(str(scope)) == scope


@pytest.mark.parametrize(("text", "part"), [
    ("", "type"), ("repository", "type"), ("repo:grp/web:pull", "type"), ("Repository:grp/web:pull", "type"),
    ("repository:grp/web", "action"), ("repository:grp/web:", "action"), ("repository:grp/web:pull,,push", "action"),
    ("repository:grp/web:pull,write", "action"), ("repository:grp/web:PULL", "action"),
    ("repository:grp:pull", "name"), ("repository:GRP/web:pull", "name"), ("repository:grp/a/b:pull", "name"),
    ("repository::pull", "name"), ("repository:localhost:5000/grp/web:pull", "name"),
    ("repository:-grp/web:pull", "name"), ("repository:" + "g" * 64 + "/web:pull", "name"),
    ("registry:catalog:pull", "action"), ("registry:catalogue:*", "name"),
    ("repository:grp/web:pull" + "x" * 600, "name"),
])
def test_bad_scopes_name_the_bad_part(text, part):
    with pytest.raises(ScopeError) as caught:
        parse_scope(text)
    assert caught.value.part == part, str(caught.value)


@pytest.mark.parametrize(("kind", "name", "actions"), [
    ("repository", "grp/web", ()), ("repository", "grp/web", ("push", "pull")),
    ("repository", "grp/web", ("pull", "pull")),
    ("repository", "grp/web", ("*",)), ("repository", "nogroup", ("pull",)), ("registry", "catalog", ("pull",)),
    ("blob", "grp/web", ("pull",)),
])
def test_a_scope_built_by_hand_is_validated_too(kind, name, actions):
    with pytest.raises(ScopeError):
        Scope(kind, name, actions)


def test_callers_are_checked():
    with pytest.raises(ValueError, match="caller kind"):
        Caller("root")  # type: ignore[arg-type]
    for bad in (dict(robot_scope=("image_group",)), dict(robot_scope=["image", "g/n"]),
                dict(robot_scope=("image", 3)), dict(robot_actions=["pull"]), dict(robot_actions=("pull", None)),
                dict(name=None)):
        with pytest.raises(ValueError):
            Caller("robot", **bad)  # type: ignore[arg-type]
    assert all(Caller(k).kind == k for k in ("anonymous", "user", "admin", "robot", "build"))  # type: ignore[arg-type]


def test_every_role_and_visibility_is_covered_by_the_table():
    assert {w for w in TABLE if w not in ("anonymous", "admin", "no member")} == {str(r) for r in Role}
    assert list(itertools.product(TABLE, ["public", "private"]))


def test_docs_roles_md_holds_the_registry_table_rendered_from_the_code():
    from pathlib import Path

    from control.registry_policy import render_table
    text = (Path(__file__).resolve().parents[2] / "docs" / "roles.md").read_text()
    start = text.index("<!-- rendered from control.registry_policy.render_table(); do not edit by hand -->\n")
    end = text.index("<!-- end of the rendered registry table -->")
    assert text[text.index("\n", start) + 1:end] == render_table()
    # and the rendered table says what the independent TABLE above says, row for row
    for who, (public, private) in TABLE.items():
        caller, role = _caller(who)
        for visibility, want in (("public", public), ("private", private)):
            assert ",".join(granted(caller, ALL, visibility=visibility, role=role)) == want
