"""Image groups: the namespaces of the registry's repositories, public or private.

A registry repository is an image ``group/name``; its group's record says whether anyone may
pull its images (``public``) or only its members (``private``, Reporter and above). A group
without a record, or whose record does not decode, is **private**: nothing unreadable ever
grants a pull. An app's builds push to its own group (named after the app).

Calls (``ImageGroups``): any ``user`` creates a group (it becomes its Owner, ``members.owner_ops``);
``image_group.visibility`` (Master and above) switches it public/private; ``image_group.delete``
(Owner) deletes the record, every membership of the group and of its images, and every robot
account scoped to them, in one transaction. Each write is one compare-and-swap transaction that
compares the memberships its authorization read and carries its activity record.

Also the reads the registry's token endpoint needs: ``visibility(store, group)`` and
``effective_role(store, user, image)`` (the user's role on the image: its direct membership or
its group's, the higher wins), and ``access(store, caller, scope)`` which applies
``control.registry_policy.granted`` with both.

Records: ``/platform/image_groups/{group}`` = ``{"visibility", "by", "at"}`` (docs/keys.md); this
module is their one encoder and decoder, and every decode validates (``InvalidImageGroup``, never
another error). Pure service logic over the Store and Runtime ports: it must not know gRPC, HTTP,
etcd, or the registry's own storage (deleting a group leaves its blobs to the registry's garbage
collection).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from control.activity import activity_ops, check_request_id
from control.auth import Principal
from control.echo import clip
from control.members import (
    NAME,
    Action,
    AlreadyExists,
    Conflict,
    CorruptRecord,
    InvalidArgument,
    MembersError,
    NotFound,
    Resource,
    Role,
    authorize,
    delete_ops,
    load_memberships,
    owner_ops,
)
from control.registry_policy import Caller, Scope, granted
from foundation.logic.slb_domain import OWNER, load_json
from foundation.ports import Compare, DeleteOp, KeyValue, PutOp, Runtime, Store

IMAGE_GROUPS = "/platform/image_groups/"
MEMBERS_OF_IMAGES = "/platform/members/image/"
Visibility = Literal["public", "private"]
VISIBILITIES: tuple[Visibility, ...] = ("public", "private")


class InvalidImageGroup(ValueError):
    """An image-group record read from the store does not decode (what ``decode`` raises)."""


def image_group_key(group: str) -> str:
    return f"{IMAGE_GROUPS}{group}"


def check_group(group: Any, field_name: str = "group") -> str:
    if not isinstance(group, str) or not NAME.fullmatch(group):
        raise InvalidArgument(field_name, f"{clip(group)} is not an image group name (a DNS label)")
    return group


def check_visibility(visibility: Any, field_name: str = "visibility") -> Visibility:
    if visibility == "public":
        return "public"
    if visibility == "private":
        return "private"
    raise InvalidArgument(field_name, f"{clip(visibility)} is not public or private")


def group_resource(group: str) -> Resource:
    return Resource("image_group", group)


@dataclass(frozen=True, slots=True)
class ImageGroup:
    name: str
    visibility: Visibility
    by: str  # who created it or last changed its visibility
    at: float  # Unix time of that
    revision: int = 0  # mod_revision of the record (0: not stored yet)

    @property
    def key(self) -> str:
        return image_group_key(self.name)

    def to_bytes(self) -> bytes:
        return json.dumps({"visibility": self.visibility, "by": self.by, "at": self.at},
                          sort_keys=True, separators=(",", ":")).encode()


def decode(kv: KeyValue) -> ImageGroup:
    """The image group stored at ``kv``; ``InvalidImageGroup`` for anything else (never another error)."""
    try:
        if not kv.key.startswith(IMAGE_GROUPS):
            raise ValueError("not an image-group key")
        name = check_group(kv.key.removeprefix(IMAGE_GROUPS))
        data = load_json(kv.value)
        if not isinstance(data, dict) or set(data) != {"visibility", "by", "at"}:
            raise ValueError("not an object of visibility, by, at")
        visibility = check_visibility(data["visibility"])
        by, at = data["by"], data["at"]
        if not isinstance(by, str) or not OWNER.fullmatch(by):
            raise ValueError(f"by {clip(by)} is not a principal name")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 1e11:
            raise ValueError(f"at {clip(at)} is not a time")
        return ImageGroup(name, visibility, by, float(at), kv.mod_revision)
    except (ValueError, TypeError, RecursionError, MembersError) as exc:
        raise InvalidImageGroup(f"{clip(kv.key)}: {exc}") from None


def create_ops(group: str, who: str, now: float, visibility: Visibility = "private",
               ) -> tuple[list[Compare], list[PutOp]]:
    """The compares and puts that create the group's record with ``who`` its first Owner (to join a creating
    transaction, e.g. an app's, whose builds push to the group named after it)."""
    record = ImageGroup(check_group(group), check_visibility(visibility), who, now)
    compares, puts = owner_ops(group_resource(group), who, now)
    return [Compare.missing(record.key), *compares], [PutOp(record.key, record.to_bytes()), *puts]


# --------------------------------------------------------------------------- what the token endpoint reads


async def visibility(store: Store, group: str) -> str:
    """``"public"`` only when the group's record says so and decodes; ``"private"`` otherwise."""
    if not isinstance(group, str) or not NAME.fullmatch(group):
        return "private"
    kv = await store.get(image_group_key(group))
    if kv is None:
        return "private"
    try:
        return decode(kv).visibility
    except InvalidImageGroup:
        return "private"


async def effective_role(store: Store, user: str, image: str | Resource) -> Role | None:
    """``user``'s role on the image ``group/name``: the higher of its direct one and its group's; None when it
    has neither, or when ``user`` or ``image`` is not a valid name. Corrupt memberships give no role."""
    try:
        resource = image if isinstance(image, Resource) else Resource("image", image)
    except MembersError:
        return None
    if resource.kind != "image" or not isinstance(user, str) or not OWNER.fullmatch(user):
        return None
    return (await load_memberships(store, resource)).role_of(user)


async def access(store: Store, caller: Caller, scope: Scope) -> tuple[str, ...]:
    """What ``caller`` is granted of ``scope``: ``registry_policy.granted`` with the image's group's visibility
    and, for a user, its effective role on the image (read from the store here)."""
    if scope.type != "repository":
        return granted(caller, scope, visibility="private", role=None)
    shown = await visibility(store, scope.name.partition("/")[0])
    role = await effective_role(store, caller.name, scope.name) if caller.kind == "user" else None
    return granted(caller, scope, visibility=shown, role=role)


# --------------------------------------------------------------------------- the calls


@dataclass(frozen=True)
class GroupView:
    group: ImageGroup
    role: Role | None  # the caller's own role on the group (None: admin, or a public group's outsider)


class ImageGroups:
    """Create, read, make public/private, delete image groups; each write one CAS txn with its activity."""

    def __init__(self, store: Store, runtime: Runtime, *, max_attempts: int = 16) -> None:
        self.store = store
        self.runtime = runtime
        self.max_attempts = max_attempts

    async def _record(self, group: str) -> ImageGroup | None:
        kv = await self.store.get(image_group_key(group))
        if kv is None:
            return None
        try:
            return decode(kv)
        except InvalidImageGroup as exc:
            raise CorruptRecord(kv.key, str(exc)) from None

    async def create(self, who: Principal, group: Any, *, public: bool = False, request_id: str) -> GroupView:
        """A new group, private unless ``public``; its creator becomes its Owner. AlreadyExists when the group
        has a record, or has memberships without one (given by an admin) and the caller is neither an admin
        nor an Owner among them: nobody takes over a name others already hold roles on."""
        check_request_id(request_id)
        group = check_group(group)
        if not isinstance(public, bool):
            raise InvalidArgument("public", "must be true or false")
        resource = group_resource(group)
        found = await load_memberships(self.store, resource)
        authorize(who, Action.IMAGE_GROUP_CREATE, resource, found)
        held = found.direct.get(who.name)
        if found.direct and not who.is_admin and (held is None or held.role != Role.OWNER):
            raise AlreadyExists(f"image group {group} already exists")
        now = self.runtime.wall_time()
        shown: Visibility = "public" if public else "private"
        record = ImageGroup(group, shown, who.name, now)
        if held is None:
            compares, puts = create_ops(group, who.name, now, shown)
        else:  # an Owner (or admin) already holds a membership: it stays as read
            compares, puts = [Compare.missing(record.key)], [PutOp(record.key, record.to_bytes())]
        compares += found.guard(who.name)
        logged = activity_ops(who, Action.IMAGE_GROUP_CREATE, resource, f"create {shown}", now,
                              request_id=request_id)
        result = await self.store.txn([*compares, *logged.compares], [*puts, *logged.ops])
        if not result.succeeded:
            raise AlreadyExists(f"image group {group} already exists")
        self.runtime.trace("image_groups.create", group=group, visibility=shown, by=who.name,
                           revision=result.revision)
        return GroupView(ImageGroup(group, shown, who.name, now, result.revision),
                         held.role if held is not None else Role.OWNER)

    async def get(self, who: Principal, group: Any) -> GroupView:
        """The group: any user may read a public one; a private one only its members (NotFound for others)."""
        group = check_group(group)
        resource = group_resource(group)
        found = await load_memberships(self.store, resource)
        record = await self._record(group)
        if record is None or record.visibility != "public" or who.role != "user":
            authorize(who, Action.IMAGE_READ, resource, found)
        if record is None:
            raise NotFound(str(resource))
        return GroupView(record, found.role_of(who.name) if who.role == "user" else None)

    async def set_visibility(self, who: Principal, group: Any, visibility: Any, *, request_id: str) -> GroupView:
        """Make the group public or private (Master and above); no write when it already is."""
        check_request_id(request_id)
        group = check_group(group)
        wanted = check_visibility(visibility)
        resource = group_resource(group)
        for _ in range(self.max_attempts):
            found = await load_memberships(self.store, resource)
            authorize(who, Action.IMAGE_GROUP_VISIBILITY, resource, found)
            record = await self._record(group)
            if record is None:
                raise NotFound(str(resource))
            if record.visibility == wanted:
                return GroupView(record, found.role_of(who.name))
            now = self.runtime.wall_time()
            new = ImageGroup(group, wanted, who.name, now)
            logged = activity_ops(who, Action.IMAGE_GROUP_VISIBILITY, resource,
                                  f"visibility {record.visibility}->{wanted}", now, request_id=request_id)
            result = await self.store.txn(
                [Compare.mod_is(record.key, record.revision), *found.guard(who.name), *logged.compares],
                [PutOp(new.key, new.to_bytes()), *logged.ops])
            if result.succeeded:
                self.runtime.trace("image_groups.visibility", group=group, visibility=wanted, by=who.name,
                                   revision=result.revision)
                return GroupView(ImageGroup(group, wanted, who.name, now, result.revision), found.role_of(who.name))
        raise Conflict(f"image group {group} kept changing; try again")

    async def delete(self, who: Principal, group: Any, *, request_id: str) -> int:
        """Delete the group (Owner): its record, the memberships of the group and of its images, and the robot
        accounts scoped to it or its images, in one transaction; the store revision of the delete."""
        from control.robots import scoped_robot_keys  # robots import this module: the import stays local

        check_request_id(request_id)
        group = check_group(group)
        resource = group_resource(group)
        for _ in range(self.max_attempts):
            found = await load_memberships(self.store, resource)
            authorize(who, Action.IMAGE_GROUP_DELETE, resource, found)
            kv = await self.store.get(image_group_key(group))
            if kv is None:
                raise NotFound(str(resource))
            robots = await scoped_robot_keys(self.store, group)
            now = self.runtime.wall_time()
            logged = activity_ops(who, Action.IMAGE_GROUP_DELETE, resource, "delete", now, request_id=request_id)
            # A robot created meanwhile rewrites the group's record, so the compare on it fails and we re-read.
            result = await self.store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision), *found.guard(who.name),
                 *(Compare.mod_is(key, revision) for key, revision in robots), *logged.compares],
                [DeleteOp(kv.key), *delete_ops(resource), DeleteOp(f"{MEMBERS_OF_IMAGES}{group}/", prefix=True),
                 *(DeleteOp(key) for key, _ in robots), *logged.ops])
            if result.succeeded:
                self.runtime.trace("image_groups.delete", group=group, by=who.name, robots=len(robots),
                                   revision=result.revision)
                return result.revision
        raise Conflict(f"image group {group} kept changing; try again")

