"""Members and roles: who may do what on an app, an image group or an image.

One membership table decides every permission of the platform's calls (apps, versions,
releases, images, builds, members, activity): a membership gives one user one ``Role`` on
one ``Resource``. ``authorize(principal, action, resource, memberships)`` is the one
check every call makes before it reads or writes anything else; ``RIGHTS`` is the one
table behind it (docs/roles.md is rendered from it and a test compares the two).

Rules (a GitLab-like platform's):

* Roles are ordered: Guest < Reporter < Developer < Master < Owner; a role has every
  right of the roles below it. Guest reads; Reporter also pulls images and reads builds;
  Developer builds, deploys to non-production and pushes; Master deploys to production,
  scales, releases, reverts, deletes images, sets an image group's visibility, manages
  robot accounts and Developers (and below); Owner manages every member and deletes apps
  and image groups. (The registry's pull/push/delete decision is ``control.registry_policy``,
  which follows the image.* rows of this table.)
* Inheritance: a member of an image group has that role on every image of the group
  (an image is named ``group/name``); a direct membership on the image counts too, and
  the higher of the two wins.
* Admins (``control.auth`` role ``admin``) may do everything, member or not. The
  ``discovery`` principal has no platform rights at all. Any ``user`` may create an app
  or an image group (``CREATE_ACTIONS``); its creator becomes its Owner in the creating
  transaction (``owner_ops``).
* A user who is no member of a resource gets ``NotFound`` exactly as if it did not
  exist (its name is not confirmed to outsiders); a member whose role is too low gets
  ``PermissionDenied`` naming the role needed.
* Member management: changing a membership whose old or new role is above Developer
  needs ``member.manage`` (Owner); otherwise ``member.manage_developers`` (Master)
  suffices. The last Owner of an app or image group cannot be removed or demoted
  (``FailedPrecondition``); an image keeps at least one Owner, direct or inherited.

Records: ``/platform/members/{kind}/{name}/{user}`` holds ``{"role", "by", "at"}`` as
JSON (docs/keys.md). This module is their one encoder and decoder; every decode
validates (a hostile or corrupt record is ``InvalidMembership``, never a crash; a call
that needs it fails with ``CorruptRecord``). Every write is one compare-and-swap
transaction that also compares every membership the decision read (the caller's own
memberships included), and carries its activity record (``control.activity``).

Pure service logic over the Store and Runtime ports: it must not know gRPC, etcd, the
token file, or what an app or an image is beyond its name (the caller passes the key of
the resource's own record, when it has one, to be compared in the same transaction).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from control.activity import activity_ops, check_request_id
from control.auth import Principal
from control.echo import clip
from foundation.logic.slb_domain import OWNER, load_json
from foundation.ports import Compare, DeleteOp, GetOp, KeyValue, PutOp, RangeResult, Runtime, Store
from foundation.ports import control as port

MEMBERS = "/platform/members/"
MAX_MEMBERS = 1000  # memberships one resource may hold (its reads stay one short prefix)

# --------------------------------------------------------------------------- roles, actions, resources


class Role(enum.IntEnum):
    """A member's role; the order is the order of rights (GitLab's access levels)."""

    GUEST = 10
    REPORTER = 20
    DEVELOPER = 30
    MASTER = 40
    OWNER = 50

    def __str__(self) -> str:
        return self.name.lower()

    @staticmethod
    def parse(text: Any, field_name: str = "role") -> Role:
        if isinstance(text, Role):
            return text
        if isinstance(text, str) and text.upper() in Role.__members__ and text == text.lower():
            return Role[text.upper()]
        raise InvalidArgument(field_name, f"{clip(text)} is not a role (one of "
                                          f"{', '.join(str(r) for r in Role)})")


class Action(enum.StrEnum):
    """Every permission of the platform; each call checks exactly one."""

    APP_READ = "app.read"
    APP_CREATE = "app.create"
    APP_DELETE = "app.delete"
    APP_SCALE = "app.scale"
    VERSION_DEPLOY = "version.deploy"  # a version to non-production (staging, canary) Cells
    VERSION_DEPLOY_PRODUCTION = "version.deploy_production"
    VERSION_RELEASE = "version.release"  # start or revert a gray release of a production app
    IMAGE_GROUP_CREATE = "image_group.create"
    IMAGE_GROUP_DELETE = "image_group.delete"
    IMAGE_GROUP_VISIBILITY = "image_group.visibility"  # make the group's images public or private
    IMAGE_READ = "image.read"  # list images and tags
    IMAGE_PULL = "image.pull"
    IMAGE_PUSH = "image.push"
    IMAGE_DELETE = "image.delete"
    ROBOT_MANAGE = "robot.manage"  # create, list and revoke robot accounts of a group or an image
    BUILD_TRIGGER = "build.trigger"
    BUILD_READ = "build.read"  # build status and logs
    HOOK_MANAGE = "hook.manage"  # bind or unbind the GitLab repository whose pushes build the app
    MEMBER_READ = "member.read"
    MEMBER_MANAGE = "member.manage"  # any membership, Owners included
    MEMBER_MANAGE_DEVELOPERS = "member.manage_developers"  # memberships of Developer and below
    ACTIVITY_READ = "activity.read"


Kind = Literal["app", "image_group", "image"]
KINDS: tuple[Kind, ...] = ("app", "image_group", "image")

#: The one table: the least role each action needs, and the kinds of resource it applies to.
RIGHTS: Mapping[Action, tuple[Role, tuple[Kind, ...]]] = {
    Action.APP_READ: (Role.GUEST, ("app",)),
    Action.APP_CREATE: (Role.OWNER, ("app",)),  # any user, on an app that does not exist yet
    Action.APP_DELETE: (Role.OWNER, ("app",)),
    Action.APP_SCALE: (Role.MASTER, ("app",)),
    Action.VERSION_DEPLOY: (Role.DEVELOPER, ("app",)),
    Action.VERSION_DEPLOY_PRODUCTION: (Role.MASTER, ("app",)),
    Action.VERSION_RELEASE: (Role.MASTER, ("app",)),  # non-production apps: version.deploy (control.releases)
    Action.IMAGE_GROUP_CREATE: (Role.OWNER, ("image_group",)),  # any user, on a new group
    Action.IMAGE_GROUP_DELETE: (Role.OWNER, ("image_group",)),
    Action.IMAGE_GROUP_VISIBILITY: (Role.MASTER, ("image_group",)),
    Action.IMAGE_READ: (Role.GUEST, ("image_group", "image")),
    Action.IMAGE_PULL: (Role.REPORTER, ("image_group", "image")),
    Action.IMAGE_PUSH: (Role.DEVELOPER, ("image_group", "image")),
    Action.IMAGE_DELETE: (Role.MASTER, ("image_group", "image")),  # the registry's delete (control.registry_policy)
    Action.ROBOT_MANAGE: (Role.MASTER, ("image_group", "image")),
    Action.BUILD_TRIGGER: (Role.DEVELOPER, ("app", "image_group", "image")),
    Action.BUILD_READ: (Role.REPORTER, ("app", "image_group", "image")),
    Action.HOOK_MANAGE: (Role.MASTER, ("app",)),  # control.webhooks: its secret queues builds
    Action.MEMBER_READ: (Role.GUEST, KINDS),
    Action.MEMBER_MANAGE: (Role.OWNER, KINDS),
    Action.MEMBER_MANAGE_DEVELOPERS: (Role.MASTER, KINDS),
    Action.ACTIVITY_READ: (Role.GUEST, KINDS),
}

#: What each action lets a member do, in a few words (docs/roles.md).
MEANING: Mapping[Action, str] = {
    Action.APP_READ: "see the app, its versions, Cells, releases",
    Action.APP_CREATE: "create an app (any user; the creator becomes its Owner)",
    Action.APP_DELETE: "delete the app (when it has no versions)",
    Action.APP_SCALE: "change a version's replicas",
    Action.VERSION_DEPLOY: "deploy a version to non-production Cells",
    Action.VERSION_DEPLOY_PRODUCTION: "deploy a version to production Cells",
    Action.VERSION_RELEASE: "start or revert a gray release (of a non-production app: version.deploy suffices)",
    Action.IMAGE_GROUP_CREATE: "create an image group (any user; the creator becomes its Owner)",
    Action.IMAGE_GROUP_DELETE: "delete the image group",
    Action.IMAGE_GROUP_VISIBILITY: "make the group's images public (anyone pulls) or private",
    Action.IMAGE_READ: "list images and tags",
    Action.IMAGE_PULL: "pull an image",
    Action.IMAGE_PUSH: "push an image",
    Action.IMAGE_DELETE: "delete an image or a tag",
    Action.ROBOT_MANAGE: "create, list and revoke robot accounts (pull/push tokens for CI)",
    Action.BUILD_TRIGGER: "start a build",
    Action.BUILD_READ: "see builds and their logs",
    Action.HOOK_MANAGE: "bind or unbind the GitLab repository and branch whose pushes build the app",
    Action.MEMBER_READ: "list the members",
    Action.MEMBER_MANAGE: "add, change, remove any member (Owners too)",
    Action.MEMBER_MANAGE_DEVELOPERS: "add, change, remove members of role Developer and below",
    Action.ACTIVITY_READ: "read the activity log",
}

#: Actions any ``user`` may take on a resource that does not exist yet (it becomes its Owner).
CREATE_ACTIONS = frozenset({Action.APP_CREATE, Action.IMAGE_GROUP_CREATE})

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: apps are namespaces
IMAGE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Resource:
    """What a membership is on: an app, an image group, or an image (``group/name``)."""

    kind: Kind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument("resource", f"kind {clip(self.kind)} is not one of {', '.join(KINDS)}")
        if not isinstance(self.name, str):
            raise InvalidArgument("resource", f"name {clip(self.name)} is not a string")
        if self.kind == "image":
            group, _, image = self.name.partition("/")
            if not NAME.fullmatch(group) or not IMAGE_NAME.fullmatch(image):
                raise InvalidArgument("resource", f"image {clip(self.name)} is not group/name (group a DNS label,"
                                                  " name [a-z0-9._-], at most 128 characters)")
        elif not NAME.fullmatch(self.name):
            raise InvalidArgument("resource", f"{self.kind} name {clip(self.name)} is not a DNS label")

    @property
    def parent(self) -> Resource | None:
        """The image group an image inherits memberships from; None for apps and groups."""
        return Resource("image_group", self.name.partition("/")[0]) if self.kind == "image" else None

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


# --------------------------------------------------------------------------- errors


class MembersError(port.ControlError):
    """Base of the typed errors of this module; each is the ControlClient port's error of its kind."""


class NotFound(MembersError, port.NotFound):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} does not exist")
        self.what = what


class PermissionDenied(MembersError, port.PermissionDenied):
    pass


class InvalidArgument(MembersError, port.InvalidArgument):
    pass


class AlreadyExists(MembersError, port.AlreadyExists):
    pass


class FailedPrecondition(MembersError, port.FailedPrecondition):
    pass


class Conflict(MembersError, port.Conflict):
    pass


class CorruptRecord(MembersError, port.CorruptRecord):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the record at {clip(key, 200)} is unreadable: {reason}")
        self.key = key


class InvalidMembership(ValueError):
    """A membership record read from the store does not decode (what ``decode`` raises)."""


# --------------------------------------------------------------------------- records and keys


def members_prefix(resource: Resource) -> str:
    return f"{MEMBERS}{resource.kind}/{resource.name}/"


def member_key(resource: Resource, user: str) -> str:
    return f"{members_prefix(resource)}{user}"


def check_user(user: Any, field_name: str = "user") -> str:
    if not isinstance(user, str) or not OWNER.fullmatch(user):
        raise InvalidArgument(field_name, f"{clip(user)} is not a user name ([a-z0-9][a-z0-9._-]{{0,62}})")
    return user


@dataclass(frozen=True, slots=True)
class Membership:
    resource: Resource
    user: str
    role: Role
    by: str  # who gave it
    at: float  # Unix time it was given or last changed
    revision: int = 0  # mod_revision of the record (0: not stored yet)

    @property
    def key(self) -> str:
        return member_key(self.resource, self.user)

    def to_bytes(self) -> bytes:
        return json.dumps({"role": str(self.role), "by": self.by, "at": self.at},
                          sort_keys=True, separators=(",", ":")).encode()


def decode(kv: KeyValue) -> Membership:
    """The membership stored at ``kv``; ``InvalidMembership`` for anything else (never another error)."""
    try:
        if not kv.key.startswith(MEMBERS):
            raise ValueError("not a membership key")
        kind, _, rest = kv.key.removeprefix(MEMBERS).partition("/")
        name, _, user = rest.rpartition("/")
        resource = Resource(kind, name)  # type: ignore[arg-type]  # validated by Resource itself
        check_user(user)
        data = load_json(kv.value)
        if not isinstance(data, dict) or set(data) != {"role", "by", "at"}:
            raise ValueError("not an object of role, by, at")
        role = Role.parse(data["role"])
        by, at = data["by"], data["at"]
        if not isinstance(by, str) or not OWNER.fullmatch(by):
            raise ValueError(f"by {clip(by)} is not a principal name")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 1e11:
            raise ValueError(f"at {clip(at)} is not a time")
        return Membership(resource, user, role, by, float(at), kv.mod_revision)
    except (ValueError, TypeError, RecursionError, port.ControlError) as exc:
        raise InvalidMembership(f"{clip(kv.key, 200)}: {exc}") from None


@dataclass(frozen=True)
class Memberships:
    """The memberships that decide rights on ``resource``: its own and its parent's (an image's group),
    as read at ``revision``; corrupt records are set aside in ``invalid`` (they give no right)."""

    resource: Resource
    direct: Mapping[str, Membership] = field(default_factory=dict)
    inherited: Mapping[str, Membership] = field(default_factory=dict)
    revision: int = 0
    invalid: tuple[str, ...] = ()  # keys of records that did not decode

    def role_of(self, user: str) -> Role | None:
        """The user's role on the resource: the higher of its direct and inherited ones."""
        roles = [m.role for m in (self.direct.get(user), self.inherited.get(user)) if m is not None]
        return max(roles) if roles else None

    def guard(self, user: str) -> list[Compare]:
        """Compares that hold while the user's memberships on the resource are as read: a write the
        user was authorized for appends them, so a membership removed meanwhile makes it fail."""
        compares = []
        for scope, table in ((self.resource, self.direct), (self.resource.parent, self.inherited)):
            if scope is None:
                continue
            held = table.get(user)
            key = member_key(scope, user)
            compares.append(Compare.mod_is(key, held.revision) if held else Compare.missing(key))
        return compares

    def owners(self) -> list[str]:
        """Users who are Owner of the resource, directly or through its group."""
        return sorted({u for t in (self.direct, self.inherited) for u, m in t.items() if m.role == Role.OWNER})


async def load_memberships(store: Store, resource: Resource) -> Memberships:
    """The memberships of ``resource`` and of its parent, read in one snapshot."""
    scopes = [resource] + ([resource.parent] if resource.parent else [])
    read = await store.txn([], [GetOp(members_prefix(s), prefix=True) for s in scopes])
    tables: list[dict[str, Membership]] = []
    invalid: list[str] = []
    for scope, response in zip(scopes, read.responses, strict=True):
        table: dict[str, Membership] = {}
        for kv in response.kvs if isinstance(response, RangeResult) else ():
            try:
                member = decode(kv)
            except InvalidMembership:
                invalid.append(kv.key)
                continue
            if member.resource == scope:  # not a deeper key (names hold no "/", but trust nothing)
                table[member.user] = member
        tables.append(table)
    return Memberships(resource, tables[0], tables[1] if len(tables) > 1 else {}, read.revision, tuple(invalid))


# --------------------------------------------------------------------------- the check


def authorize(principal: Principal, action: Action, resource: Resource, memberships: Memberships) -> None:
    """Return when ``principal`` may do ``action`` on ``resource``; else raise ``NotFound`` (no member: the
    resource is not confirmed to exist) or ``PermissionDenied`` (a member whose role is too low, or a
    principal with no platform rights). ``memberships`` must be ``load_memberships(store, resource)``."""
    least, kinds = RIGHTS[Action(action)]
    if resource.kind not in kinds:
        raise InvalidArgument("resource", f"{action} applies to {' or '.join(kinds)}, not to {resource.kind}")
    if memberships.resource != resource:
        raise ValueError(f"memberships of {memberships.resource} given to authorize {action} on {resource}")
    if principal.is_admin:
        return
    if principal.role != "user":
        raise PermissionDenied(f"{principal.name} (role {principal.role}) has no rights on apps, images or "
                               "members")
    if action in CREATE_ACTIONS:
        return  # the resource's absence is the caller's transaction's compare
    role = memberships.role_of(principal.name)
    if role is None:
        raise NotFound(str(resource))
    if role < least:
        raise PermissionDenied(f"{principal.name} is {role} of {resource}; {action} needs {least} or above")


def render_matrix() -> str:
    """The role matrix as a Markdown table: docs/roles.md holds exactly this (a test compares)."""
    head = ["action", "on", "what it allows", *(str(r) for r in Role), "admin"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for action, (least, kinds) in RIGHTS.items():
        marks = ["any user" if action in CREATE_ACTIONS else ("✓" if role >= least else "–") for role in Role]
        rows.append("| " + " | ".join([f"`{action}`", ", ".join(kinds), MEANING[action], *marks, "✓"]) + " |")
    return "\n".join(rows) + "\n"


def member_action(old: Role | None, new: Role | None) -> Action:
    """The right needed to change a membership from ``old`` to ``new`` (None: absent)."""
    highest = max((r for r in (old, new) if r is not None), default=Role.GUEST)
    return Action.MEMBER_MANAGE if highest > Role.DEVELOPER else Action.MEMBER_MANAGE_DEVELOPERS


def owner_ops(resource: Resource, user: str, now: float) -> tuple[list[Compare], list[PutOp]]:
    """The compares and puts that make ``user`` the first Owner of a resource being created (to join the
    creating transaction: the resource has no memberships yet)."""
    first = Membership(resource, check_user(user), Role.OWNER, user, now)
    return [Compare.missing(first.key)], [PutOp(first.key, first.to_bytes())]


def delete_ops(resource: Resource) -> list[DeleteOp]:
    """The delete that removes every membership of a resource being deleted (to join its transaction)."""
    return [DeleteOp(members_prefix(resource), prefix=True)]


# --------------------------------------------------------------------------- the calls


@dataclass(frozen=True)
class MemberChange:
    membership: Membership | None  # None after a removal
    revision: int  # the store revision of the change (the activity record's too)


ResourceKey = Callable[[Resource], str | None]


class Members:
    """List, add, change and remove members; each write one CAS transaction with its activity record.

    ``resource_key(resource)`` names the key of the resource's own record (an app's, a group's),
    compared to exist in every write so no membership outlives its resource; None: not checked.
    """

    def __init__(self, store: Store, runtime: Runtime, *, resource_key: ResourceKey | None = None,
                 max_attempts: int = 16) -> None:
        self.store = store
        self.runtime = runtime
        self.resource_key = resource_key
        self.max_attempts = max_attempts

    async def list(self, who: Principal, resource: Resource) -> Memberships:
        found = await load_memberships(self.store, resource)
        authorize(who, Action.MEMBER_READ, resource, found)
        return found

    async def add(self, who: Principal, resource: Resource, user: Any, role: Any, *, request_id: str) -> MemberChange:
        """Give ``user`` ``role`` on ``resource``; AlreadyExists when it already has a direct membership."""
        return await self._write(who, resource, check_user(user), Role.parse(role), request_id, "add")

    async def change(self, who: Principal, resource: Resource, user: Any, role: Any, *,
                     request_id: str) -> MemberChange:
        """Change ``user``'s direct role on ``resource``; NotFound when it has none."""
        return await self._write(who, resource, check_user(user), Role.parse(role), request_id, "change")

    async def remove(self, who: Principal, resource: Resource, user: Any, *, request_id: str) -> MemberChange:
        return await self._write(who, resource, check_user(user), None, request_id, "remove")

    async def _write(self, who: Principal, resource: Resource, user: str, role: Role | None, request_id: str,
                     verb: Literal["add", "change", "remove"]) -> MemberChange:
        check_request_id(request_id)
        for _ in range(self.max_attempts):
            found = await load_memberships(self.store, resource)
            authorize(who, Action.MEMBER_READ, resource, found)  # outsiders: NotFound before anything else
            old = found.direct.get(user)
            if verb == "add" and old is not None:
                raise AlreadyExists(f"{user} is already {old.role} of {resource}")
            if verb != "add" and old is None:
                raise NotFound(f"a membership of {user} on {resource}")
            authorize(who, member_action(old.role if old else None, role), resource, found)
            if old is not None and old.role == Role.OWNER and role != Role.OWNER:
                self._keep_an_owner(found, user)
            if role is not None and old is not None and old.role == role:
                return MemberChange(old, found.revision)  # nothing changes: no write, no record
            if role is not None and old is None and len(found.direct) >= MAX_MEMBERS:
                raise FailedPrecondition(f"{resource} already has {MAX_MEMBERS} members")
            compares = [*found.guard(who.name)]
            # Every Owner the last-owner rule counted stays as read, so two Owners cannot remove each other.
            compares += [Compare.mod_is(m.key, m.revision) for t in (found.direct, found.inherited)
                         for m in t.values() if m.role == Role.OWNER and m.user != who.name]
            key = member_key(resource, user)
            compares.append(Compare.mod_is(key, old.revision) if old else Compare.missing(key))
            if self.resource_key is not None and (resource_record := self.resource_key(resource)) is not None:
                compares.append(Compare(resource_record, "create", ">", 0))
            now = self.runtime.wall_time()
            new = Membership(resource, user, role, who.name, now) if role is not None else None
            ops: list[PutOp | DeleteOp] = [PutOp(key, new.to_bytes())] if new else [DeleteOp(key)]
            action = member_action(old.role if old else None, role)
            shown = role or (old.role if old else None)
            result_text = f"change {user} {old.role}->{role}" if old and role else f"{verb} {user} {shown}"
            logged = activity_ops(who, action, resource, result_text, now, request_id=request_id)
            result = await self.store.txn([*_dedupe(compares), *logged.compares], [*ops, *logged.ops])
            if result.succeeded:
                self.runtime.trace("members." + verb, resource=str(resource), user=user, role=str(role or ""),
                                   by=who.name, revision=result.revision)
                stored = Membership(resource, user, role, who.name, now, result.revision) if role else None
                return MemberChange(stored, result.revision)
            if self.resource_key is not None and (record_key := self.resource_key(resource)) is not None \
                    and await self.store.get(record_key) is None:
                raise NotFound(str(resource))
        raise Conflict(f"the members of {resource} kept changing; try again")

    @staticmethod
    def _keep_an_owner(found: Memberships, leaving: str) -> None:
        """FailedPrecondition unless an Owner remains once ``leaving``'s direct Ownership goes: a direct
        one for an app or a group; for an image, a direct one or one through its group."""
        remaining = [u for u, m in found.direct.items() if m.role == Role.OWNER and u != leaving]
        if found.resource.kind == "image":
            remaining += [u for u, m in found.inherited.items() if m.role == Role.OWNER]
        if not remaining:
            raise FailedPrecondition(f"{leaving} is the last Owner of {found.resource}: make another member "
                                     "Owner first")


def _dedupe(compares: Sequence[Compare]) -> list[Compare]:
    seen: dict[str, Compare] = {}
    for compare in compares:
        seen.setdefault(compare.key + "\0" + compare.target, compare)
    return list(seen.values())
