"""Activity records and daily counts: what every mutating call of the platform did, in etcd.

Every mutating call (create an app, deploy, scale, release, revert, add a member, …)
appends ``activity_ops(...)`` to the **one** compare-and-swap transaction that makes its
change: the record and the change land together or not at all, so there is no change
without its record and no record without its change, whatever fails in between.

Records (docs/keys.md):

* ``/platform/activity/{kind}/{name}/{inverted-ms}-{request_id}``: one JSON record
  ``{"id", "at", "who", "role", "action", "kind", "name", "result"}``. ``inverted-ms`` is
  ``10**15 - 1 - round(at * 1000)``, 15 digits, so a resource's records in key order are
  newest first and a page is one forward range read (``read_activity``). The key's
  absence is compared in the transaction (a request id reused in the same millisecond
  fails the write rather than overwriting a record).
* ``/platform/counts/{day}/{kind}/{action}``: the daily count of an operation on a kind of
  resource (``day`` is the record's UTC date). The transaction **puts** this key once;
  etcd raises a key's ``version`` by exactly one per put, so the key's version *is* the
  count: incremental, in the same transaction, with no read and no compare (operations
  on different resources never contend on it). These keys are never deleted (a delete
  would restart the count). ``recount(store)`` recomputes the counts from the records.

Refused calls (authorization, validation, a lost race) write nothing here: the record
would be a write without its change. The gRPC server logs each refusal as one line
(principal, method, status) instead; they are not counted.

The record order is the writers' wall clocks: two control services whose clocks differ
may list two near-simultaneous records in the wrong order (ties: by request id).

This module is the one encoder and decoder of both records; every decode validates
(``InvalidActivity``, never another error). Pure logic over the Store port: it must not
know gRPC, etcd, or what the recorded operations do.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from control.auth import Principal
from foundation.logic.slb_domain import OWNER, load_json
from foundation.ports import CompactedError, Compare, KeyValue, PutOp, Store
from foundation.ports import control as port

if TYPE_CHECKING:  # members imports this module; at run time only names are shared
    from control.members import Action, Resource

ACTIVITY = "/platform/activity/"
COUNTS = "/platform/counts/"
TIME_SPAN_MS = 10**15  # inverted-ms is 15 digits: times up to year ~33,000
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ACTION = re.compile(r"^[a-z_]{1,32}\.[a-z_]{1,32}$")
KIND = re.compile(r"^(app|image_group|image)$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_RESULT = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
READ_CHUNK = 256  # records per read of a recount


class InvalidActivity(ValueError):
    """An activity or count record read from the store does not decode."""


class InvalidArgument(port.InvalidArgument):
    """A field of a call is invalid; ``field`` names it (the port's ``__init__``)."""


class Conflict(port.Conflict):
    pass


# --------------------------------------------------------------------------- records and keys


def day_of(at: float) -> str:
    """The UTC date of a Unix time, ``YYYY-MM-DD``: the day a record counts in."""
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def _inverted_ms(at: float) -> str:
    return f"{TIME_SPAN_MS - 1 - round(at * 1000):015d}"


def activity_prefix(kind: str, name: str) -> str:
    return f"{ACTIVITY}{kind}/{name}/"


def count_key(day: str, kind: str, action: str) -> str:
    return f"{COUNTS}{day}/{kind}/{action}"


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    request_id: str
    at: float  # Unix time of the change
    who: str  # the principal's name
    role: str  # the principal's role (admin, user, …) when it acted
    action: str  # an Action's value, e.g. ``version.deploy``
    kind: str  # the resource's kind
    name: str  # the resource's name
    result: str  # what the change did, in a few words (e.g. ``deployed v3 to 2 Cells``)
    revision: int = 0  # mod_revision once stored (the change's revision)

    @property
    def key(self) -> str:
        return f"{activity_prefix(self.kind, self.name)}{_inverted_ms(self.at)}-{self.request_id}"

    @property
    def day(self) -> str:
        return day_of(self.at)

    def to_bytes(self) -> bytes:
        return json.dumps({"id": self.request_id, "at": self.at, "who": self.who, "role": self.role,
                           "action": self.action, "kind": self.kind, "name": self.name, "result": self.result},
                          sort_keys=True, separators=(",", ":")).encode()


def check_request_id(request_id: Any) -> str:
    """``request_id`` if it is 1-64 characters of ``[A-Za-z0-9._-]``; else ``InvalidArgument``."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id", f"{str(request_id)[:64]!r} is not 1-64 characters of [A-Za-z0-9._-]")
    return request_id


def _check(record: ActivityRecord) -> ActivityRecord:
    """``record`` if every field is within bounds; else ``ValueError`` naming the field."""
    if not REQUEST_ID.fullmatch(record.request_id):
        raise ValueError(f"request_id {record.request_id[:64]!r} is not 1-64 characters of [A-Za-z0-9._-]")
    if isinstance(record.at, bool) or not isinstance(record.at, int | float) or not 0 <= record.at < 1e11:
        raise ValueError(f"at {record.at!r} is not a time")
    if not OWNER.fullmatch(record.who) or not OWNER.fullmatch(record.role):
        raise ValueError(f"who {record.who[:64]!r} / role {record.role[:64]!r} is not a principal")
    if not ACTION.fullmatch(record.action) or not KIND.fullmatch(record.kind):
        raise ValueError(f"action {record.action[:64]!r} on kind {record.kind[:64]!r} is not an operation")
    if not record.name or len(record.name) > 256 or not all(c.isalnum() or c in "._/-" for c in record.name) \
            or not record.name.isascii() or "//" in record.name or record.name.startswith("/"):
        raise ValueError(f"name {record.name[:64]!r} is not a resource name")
    if len(record.result) > MAX_RESULT or not record.result.isprintable():
        raise ValueError(f"result is not at most {MAX_RESULT} printable characters")
    return record


def decode(kv: KeyValue) -> ActivityRecord:
    """The activity record stored at ``kv``, checked against its key; ``InvalidActivity`` otherwise."""
    try:
        data = load_json(kv.value)
        if not isinstance(data, dict) or set(data) != {"id", "at", "who", "role", "action", "kind", "name",
                                                       "result"}:
            raise ValueError("not an object of id, at, who, role, action, kind, name, result")
        if not all(isinstance(data[f], str) for f in ("id", "who", "role", "action", "kind", "name", "result")):
            raise ValueError("a text field is not a string")
        at = data["at"]
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("at is not a number")
        record = _check(ActivityRecord(data["id"], float(at), data["who"], data["role"], data["action"],
                                       data["kind"], data["name"], data["result"], kv.mod_revision))
        if record.key != kv.key:
            raise ValueError(f"it holds the record of {record.kind} {record.name} at {record.at}")
        return record
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise InvalidActivity(f"{kv.key[:200]!r}: {exc}") from None


def decode_count(kv: KeyValue) -> tuple[tuple[str, str, str], int]:
    """``((day, kind, action), count)`` of a count key: the count is the key's version."""
    day, _, rest = kv.key.removeprefix(COUNTS).partition("/")
    kind, _, action = rest.partition("/")
    if not kv.key.startswith(COUNTS) or not DAY.fullmatch(day) or not KIND.fullmatch(kind) \
            or not ACTION.fullmatch(action) or kv.version < 1:
        raise InvalidActivity(f"{kv.key[:200]!r} is not a daily count key")
    return (day, kind, action), kv.version


# --------------------------------------------------------------------------- the write


@dataclass(frozen=True)
class ActivityWrite:
    """What to append to the change's transaction: ``txn([*mine, *w.compares], [*my_ops, *w.ops])``."""

    record: ActivityRecord
    compares: tuple[Compare, ...]
    ops: tuple[PutOp, ...]


def activity_ops(principal: Principal, action: Action | str, resource: Resource, result: str, now: float, *,
                 request_id: str) -> ActivityWrite:
    """The compares and puts that record one change, to join the change's own transaction.

    ``now`` is the runtime's wall time (Unix seconds); ``request_id`` identifies the call (the
    client's, or one the server made), unique per call; ``result`` says in a few words what was
    done. Raises ``InvalidArgument`` when a field is out of bounds (nothing is written then).
    A transaction records at most one change (a second one would put the same count key).
    """
    record = ActivityRecord(check_request_id(request_id), now, principal.name,
                            principal.role, str(action), resource.kind, resource.name, result)
    try:
        _check(record)
    except ValueError as exc:
        field_name = str(exc).split(" ", 1)[0]
        raise InvalidArgument(field_name if field_name in ("request_id", "result") else "activity",
                              str(exc)) from None
    marker = json.dumps({"day": record.day, "kind": record.kind, "action": record.action},
                        sort_keys=True, separators=(",", ":")).encode()
    return ActivityWrite(record, (Compare.missing(record.key),),
                         (PutOp(record.key, record.to_bytes()), PutOp(count_key(record.day, record.kind,
                                                                                record.action), marker)))


# --------------------------------------------------------------------------- reads


@dataclass(frozen=True)
class ActivityPage:
    records: tuple[ActivityRecord, ...]  # newest first
    revision: int  # the snapshot every page of this listing is read at
    next_page_token: str  # "" on the last page
    invalid: tuple[str, ...] = ()  # keys of records on this page that did not decode (skipped)


def _token(scope: str, last: str, revision: int) -> str:
    raw = json.dumps(["activity", scope, last, revision], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: Any, scope: str) -> tuple[str, int]:
    if token == "":
        return "", 0
    try:
        if not isinstance(token, str) or len(token) > 1024:
            raise ValueError("not a short string")
        kind, got_scope, last, revision = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        valid = kind == "activity" and got_scope == scope and isinstance(last, str) and last \
            and type(revision) is int and revision > 0
    except (ValueError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidArgument("page_token", "not a page token of this resource's activity; list from the start")
    return last, revision


async def read_activity(store: Store, resource: Resource, *, page_size: Any = 0,
                        page_token: Any = "") -> ActivityPage:
    """One page of the resource's activity, newest first; every page of a listing is one snapshot.

    Authorization (``activity.read``) is the caller's: ``members.authorize`` before this.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
        raise InvalidArgument("page_size", f"{page_size!r:.64} is not a page size (0 means {DEFAULT_PAGE_SIZE})")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    prefix = activity_prefix(resource.kind, resource.name)
    after, revision = _read_token(page_token, str(resource))
    try:
        found = await store.range(prefix, limit=size + 1, start_after=f"{prefix}{after}" if after else "",
                                  revision=revision)
    except CompactedError:
        raise Conflict(f"the listing's snapshot (revision {revision}) was compacted: list again from the first "
                       "page") from None
    records: list[ActivityRecord] = []
    invalid: list[str] = []
    for kv in found.kvs[:size]:
        try:
            records.append(decode(kv))
        except InvalidActivity:
            invalid.append(kv.key)
    more = len(found.kvs) > size
    token = _token(str(resource), found.kvs[size - 1].key.removeprefix(prefix), found.revision) if more else ""
    return ActivityPage(tuple(records), found.revision, token, tuple(invalid))


Counts = Mapping[tuple[str, str, str], int]  # (day, kind, action) → operations


async def daily_counts(store: Store, day: str = "") -> dict[tuple[str, str, str], int]:
    """The kept counts (of one ``day``, or all), from the count keys' versions; bad keys are skipped."""
    if day and not DAY.fullmatch(day):
        raise InvalidArgument("day", f"{day[:32]!r} is not YYYY-MM-DD")
    counts: dict[tuple[str, str, str], int] = {}
    for kv in (await store.range(f"{COUNTS}{day}/" if day else COUNTS)).kvs:
        try:
            what, count = decode_count(kv)
        except InvalidActivity:
            continue
        counts[what] = count
    return counts


@dataclass(frozen=True)
class Recount:
    counts: dict[tuple[str, str, str], int]  # recomputed from the records
    kept: dict[tuple[str, str, str], int]  # the count keys, read in the same snapshot
    records: int
    invalid: tuple[str, ...]  # record keys that did not decode (not counted)

    @property
    def equal(self) -> bool:
        return self.counts == self.kept


async def recount(store: Store) -> Recount:
    """Count every activity record by (day, kind, action), in one snapshot with the kept counts."""
    kept_read = await store.range(COUNTS)
    revision = kept_read.revision
    kept: dict[tuple[str, str, str], int] = {}
    for kv in kept_read.kvs:
        try:
            what, count = decode_count(kv)
        except InvalidActivity:
            continue
        kept[what] = count
    counts: dict[tuple[str, str, str], int] = {}
    invalid: list[str] = []
    seen, last = 0, ""
    while True:
        chunk = await store.range(ACTIVITY, limit=READ_CHUNK, start_after=last, revision=revision)
        for kv in chunk.kvs:
            try:
                record = decode(kv)
            except InvalidActivity:
                invalid.append(kv.key)
                continue
            seen += 1
            what = (record.day, record.kind, record.action)
            counts[what] = counts.get(what, 0) + 1
        if len(chunk.kvs) < READ_CHUNK:
            break
        last = chunk.kvs[-1].key
    return Recount(dict(sorted(counts.items())), dict(sorted(kept.items())), seen, tuple(invalid))
