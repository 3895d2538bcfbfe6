"""Robot accounts: a secret that lets a machine (a CI job, a node) pull or push one group's or one image's images.

A robot is created by a Master (or above) of its scope, an image group or one image, with the
actions it may take there (``pull``, ``push``) and an optional lifetime. The secret is made
by the runtime's ``secret_hex`` (unpredictable on the real runtime), returned **once** by
``create`` and stored only as its SHA-256. The registry's token endpoint authenticates a robot
with HTTP Basic (username ``robot$NAME``, password the secret) through ``robot_caller``, which
answers a ``registry_policy.Caller`` only for a known, unexpired robot whose secret matches
(compared in constant time): revoking a robot deletes its record, so the next token request
fails. A robot's grant does not follow its creator's later role changes; revoke it instead.

Records: ``/platform/robots/{NAME}`` = ``{"secret_sha256", "scope": {"kind", "name"}, "actions",
"expires", "by", "at"}`` (``expires``: Unix time, or null for never; docs/keys.md). Robot names
are one namespace for the platform (a DNS label). This module is their one encoder and decoder;
every decode validates (``InvalidRobot``, never another error) and a record that does not decode
authenticates nobody. Creating a robot rewrites its group's record unchanged in the same
transaction, so a concurrent group delete (which compares that record) cannot leave it behind.

Pure service logic over the Store and Runtime ports: it must not know gRPC, HTTP or etcd.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from control.activity import activity_ops, check_request_id
from control.auth import Principal
from control.echo import clip
from control.image_groups import InvalidImageGroup, image_group_key
from control.image_groups import decode as decode_group
from control.members import (
    NAME,
    Action,
    AlreadyExists,
    Conflict,
    CorruptRecord,
    FailedPrecondition,
    InvalidArgument,
    MembersError,
    NotFound,
    Resource,
    authorize,
    load_memberships,
)
from control.registry_policy import Caller
from foundation.logic.slb_domain import OWNER, load_json
from foundation.ports import Compare, DeleteOp, KeyValue, PutOp, Runtime, Store

ROBOTS = "/platform/robots/"
USER_PREFIX = "robot$"
ROBOT_ACTIONS: tuple[str, ...] = ("pull", "push")  # what a robot may be given (deletes stay with people)
SECRET_BYTES = 32  # 64 hex characters
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_PASSWORD = 256
MAX_TTL = 10 * 366 * 86400.0  # ten years
MAX_ROBOTS = 10_000  # robot records the platform holds (list and group-delete read them all)
# Robots of one group and its images: the group's delete compares and deletes each in one transaction, which
# must stay under etcd's --max-txn-ops (128 by default) with the delete's other operations.
MAX_ROBOTS_PER_GROUP = 100


class InvalidRobot(ValueError):
    """A robot record read from the store does not decode (what ``decode`` raises)."""


def robot_key(name: str) -> str:
    return f"{ROBOTS}{name}"


def check_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgument(field_name, f"{clip(name)} is not a robot name (a DNS label)")
    return name


def check_actions(actions: Any, field_name: str = "actions") -> tuple[str, ...]:
    """Distinct robot actions, as a sequence or ``"pull,push"`` text; in ACTIONS order."""
    words = actions.split(",") if isinstance(actions, str) else actions
    if not isinstance(words, Sequence) or isinstance(words, bytes | bytearray) or not words \
            or len(words) > len(ROBOT_ACTIONS) or any(w not in ROBOT_ACTIONS for w in words) \
            or len(set(words)) != len(words):
        raise InvalidArgument(field_name, f"{clip(actions)} is not distinct actions of {', '.join(ROBOT_ACTIONS)}")
    return tuple(a for a in ROBOT_ACTIONS if a in words)


def check_scope(scope: Any, field_name: str = "scope") -> Resource:
    if not isinstance(scope, Resource) or scope.kind not in ("image_group", "image"):
        raise InvalidArgument(field_name, f"{clip(scope)} is not an image group or an image")
    return scope


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Robot:
    name: str
    secret_sha256: str
    scope: Resource  # an image group or an image
    actions: tuple[str, ...]
    expires: float | None  # Unix time it stops authenticating; None: never
    by: str
    at: float
    revision: int = 0

    @property
    def key(self) -> str:
        return robot_key(self.name)

    @property
    def username(self) -> str:
        return f"{USER_PREFIX}{self.name}"

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def caller(self) -> Caller:
        return Caller("robot", self.name, robot_scope=(self.scope.kind, self.scope.name), robot_actions=self.actions)

    def to_bytes(self) -> bytes:
        return json.dumps({"secret_sha256": self.secret_sha256,
                           "scope": {"kind": self.scope.kind, "name": self.scope.name},
                           "actions": list(self.actions), "expires": self.expires, "by": self.by, "at": self.at},
                          sort_keys=True, separators=(",", ":")).encode()


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"{what} {clip(value)} is not a time")
    return float(value)


def decode(kv: KeyValue) -> Robot:
    """The robot stored at ``kv``; ``InvalidRobot`` for anything else (never another error)."""
    try:
        if not kv.key.startswith(ROBOTS):
            raise ValueError("not a robot key")
        name = check_name(kv.key.removeprefix(ROBOTS))
        data = load_json(kv.value)
        if not isinstance(data, dict) or set(data) != {"secret_sha256", "scope", "actions", "expires", "by", "at"}:
            raise ValueError("not an object of secret_sha256, scope, actions, expires, by, at")
        secret = data["secret_sha256"]
        if not isinstance(secret, str) or not SHA256_HEX.fullmatch(secret):
            raise ValueError("secret_sha256 is not 64 lowercase hex digits")
        scope = data["scope"]
        if not isinstance(scope, dict) or set(scope) != {"kind", "name"}:
            raise ValueError("scope is not an object of kind, name")
        resource = check_scope(Resource(scope["kind"], scope["name"]))
        actions = data["actions"]
        if not isinstance(actions, list):
            raise ValueError(f"actions {clip(actions)} is not a list")
        by = data["by"]
        if not isinstance(by, str) or not OWNER.fullmatch(by):
            raise ValueError(f"by {clip(by)} is not a principal name")
        expires = None if data["expires"] is None else _time(data["expires"], "expires")
        return Robot(name, secret, resource, check_actions(actions), expires, by, _time(data["at"], "at"),
                     kv.mod_revision)
    except (ValueError, TypeError, RecursionError, MembersError) as exc:
        raise InvalidRobot(f"{clip(kv.key)}: {exc}") from None


async def robot_caller(store: Store, runtime: Runtime, username: str, password: str) -> Caller | None:
    """The robot ``username`` (``robot$NAME``) authenticated by ``password``; None when the name is not a robot's,
    the robot is unknown, revoked, expired or its record corrupt, or the secret is wrong. Only store errors
    (``foundation.ports`` ones) propagate."""
    if not isinstance(username, str) or not username.startswith(USER_PREFIX) \
            or not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD:
        return None
    name = username.removeprefix(USER_PREFIX)
    if not NAME.fullmatch(name):
        return None
    kv = await store.get(robot_key(name))
    if kv is None:
        return None
    try:
        robot = decode(kv)
    except InvalidRobot:
        return None
    if not hmac.compare_digest(_digest(password), robot.secret_sha256) or robot.expired(runtime.wall_time()):
        return None
    return robot.caller()


async def _all(store: Store) -> tuple[list[Robot], list[str]]:
    """Every robot record (decoded) and the keys of those that do not decode."""
    robots, invalid = [], []
    for kv in (await store.range(ROBOTS, limit=MAX_ROBOTS)).kvs:
        try:
            robots.append(decode(kv))
        except InvalidRobot:
            invalid.append(kv.key)
    return robots, invalid


async def scoped_robot_keys(store: Store, group: str) -> list[tuple[str, int]]:
    """(key, mod_revision) of the robots scoped to ``group`` or one of its images (to delete with the group)."""
    robots, _ = await _all(store)
    return [(r.key, r.revision) for r in robots
            if (r.scope.name if r.scope.kind == "image_group" else r.scope.name.partition("/")[0]) == group]


@dataclass(frozen=True)
class RobotList:
    robots: tuple[Robot, ...]  # the ones the caller may manage, by name
    invalid: tuple[str, ...] = ()  # keys of corrupt records (shown to admins only)


class Robots:
    """Create, list and revoke robot accounts; each write one CAS txn with its activity record."""

    def __init__(self, store: Store, runtime: Runtime, *, max_attempts: int = 16) -> None:
        self.store = store
        self.runtime = runtime
        self.max_attempts = max_attempts

    async def create(self, who: Principal, name: Any, scope: Any, actions: Any, *, ttl: Any = None,
                     request_id: str) -> tuple[Robot, str]:
        """A new robot on ``scope`` (Master and above of it; the group must exist) and its secret, shown once.
        ``ttl``: seconds it lives (None: until revoked)."""
        check_request_id(request_id)
        name = check_name(name)
        scope = check_scope(scope)
        actions = check_actions(actions)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                                or not 0 < ttl <= MAX_TTL):
            raise InvalidArgument("ttl", f"{clip(ttl)} is not a number of seconds in (0, {MAX_TTL:.0f}]")
        group = scope.name.partition("/")[0]
        for _ in range(self.max_attempts):
            found = await load_memberships(self.store, scope)
            authorize(who, Action.ROBOT_MANAGE, scope, found)
            group_kv = await self.store.get(image_group_key(group))
            if group_kv is None:
                raise NotFound(f"image_group {group}")
            try:
                decode_group(group_kv)
            except InvalidImageGroup as exc:
                raise CorruptRecord(group_kv.key, str(exc)) from None
            if await self.store.get(robot_key(name)) is not None:
                raise AlreadyExists(f"robot {name} already exists")
            # Creates in one group are serialised by the group record's compare below, so this bound holds.
            if len(await scoped_robot_keys(self.store, group)) >= MAX_ROBOTS_PER_GROUP:
                raise FailedPrecondition(f"image group {group} already has {MAX_ROBOTS_PER_GROUP} robots: revoke "
                                         "one first")
            secret = self.runtime.secret_hex(SECRET_BYTES)
            now = self.runtime.wall_time()
            robot = Robot(name, _digest(secret), scope, actions, None if ttl is None else now + float(ttl),
                          who.name, now)
            logged = activity_ops(who, Action.ROBOT_MANAGE, scope, f"create robot {name} {','.join(actions)}", now,
                                  request_id=request_id)
            result = await self.store.txn(
                [Compare.missing(robot.key), Compare.mod_is(group_kv.key, group_kv.mod_revision),
                 *found.guard(who.name), *logged.compares],
                [PutOp(robot.key, robot.to_bytes()), PutOp(group_kv.key, group_kv.value), *logged.ops])
            if result.succeeded:
                self.runtime.trace("robots.create", robot=name, scope=str(scope), actions=",".join(actions),
                                   by=who.name, revision=result.revision)
                return Robot(name, robot.secret_sha256, scope, actions, robot.expires, who.name, now,
                             result.revision), secret
        raise Conflict(f"robot {name} or its scope kept changing; try again")

    async def list(self, who: Principal) -> RobotList:
        """The robots whose scope the caller may manage (Master and above; admins: all, and corrupt keys)."""
        robots, invalid = await _all(self.store)
        if who.is_admin:
            return RobotList(tuple(robots), tuple(invalid))
        mine = []
        for robot in robots:
            try:
                authorize(who, Action.ROBOT_MANAGE, robot.scope, await load_memberships(self.store, robot.scope))
            except MembersError:
                continue
            mine.append(robot)
        return RobotList(tuple(mine))

    async def revoke(self, who: Principal, name: Any, *, request_id: str) -> int:
        """Delete the robot (Master and above of its scope): its next token request fails. NotFound for a robot
        that does not exist or whose scope the caller is no member of; the store revision of the delete."""
        check_request_id(request_id)
        name = check_name(name)
        for _ in range(self.max_attempts):
            kv = await self.store.get(robot_key(name))
            if kv is None:
                raise NotFound(f"robot {name}")
            try:
                robot = decode(kv)
            except InvalidRobot as exc:
                raise CorruptRecord(kv.key, f"{exc} (an admin deletes it with etcdctl; it authenticates nobody)"
                                    ) from None
            found = await load_memberships(self.store, robot.scope)
            try:
                authorize(who, Action.ROBOT_MANAGE, robot.scope, found)
            except NotFound:
                raise NotFound(f"robot {name}") from None
            now = self.runtime.wall_time()
            logged = activity_ops(who, Action.ROBOT_MANAGE, robot.scope, f"revoke robot {name}", now,
                                  request_id=request_id)
            result = await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision), *found.guard(who.name),
                                           *logged.compares], [DeleteOp(kv.key), *logged.ops])
            if result.succeeded:
                self.runtime.trace("robots.revoke", robot=name, by=who.name, revision=result.revision)
                return result.revision
        raise Conflict(f"robot {name} kept changing; try again")
