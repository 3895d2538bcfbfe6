"""slb-core: Nginx groups and their domains in the Store, with who may change what.

Keys (docs/slb.md, "Key schema"):

* ``/slb/{group}/meta``: the group (JSON: name, description, created_by, created_at).
  Its mod_revision also moves when a domain is *created* in the group (the meta is
  rewritten unchanged in the same transaction): that is what makes "delete a group
  only when it has no domains" atomic, since a txn can compare one key, not a prefix.
* ``/control/slb/groups/{group}``: an empty index key per group, so ListGroups does
  not have to read every domain under ``/slb/``.
* ``/slb/{group}/domains/{domain}``: a ``slb_domain.Domain`` as JSON; its
  mod_revision is the domain's revision. Domain names are unique per group (the key).
* ``/slb/{group}/status/{domain}/{host}``: written by each Nginx host's SLB agent,
  only read here (one domain's records are one short prefix).
* ``/slb/{group}/shares/{domain}``: the traffic shares of the domain's versions
  (``foundation.logic.slb_shares``), written by ``set_shares`` only, in the same
  transaction as the domain's upstreams re-weighted by them; ``set_upstreams`` weighs
  what discovery sends by the shares it reads in the same snapshot (its CAS compares
  the shares key too), and so does ``put_domain`` with the upstreams it writes, so the
  weights in force always follow the shares record.
  A domain without a shares record keeps the weights it is sent (discovery: 1).
  Deleting a domain deletes its shares.

Who may change what (principals come from ``control.auth``; reads are open to all):

* ``admin``: everything: create and delete groups, create, replace and delete any
  domain with any owner, any ``settings`` and any ``upstreams_by``, set upstreams.
* ``discovery``: SetUpstreams on any domain; nothing else is written.
* ``platform`` (the platform's release controller, in-process: a role no token is
  meant to carry) and ``admin``: SetShares. Reads of shares are open to all.
* ``user``: creates domains in existing groups with ``owner`` = itself (an empty
  owner means the caller); replaces and deletes domains it owns only; never touches
  ``settings`` or ``upstreams_by``: a new domain must have none, a replacement must
  carry the existing ones unchanged. It cannot give a domain to someone else.
  Upstreams are discovery's: a user sets them (SetUpstreams, or different upstreams
  in PutDomain) only on its own domains whose ``upstreams_by`` an admin set to
  ``owner``; otherwise a user's PutDomain keeps the stored upstreams (sending none,
  or the same ones, is fine) and anything else is PermissionDenied.
* Anything else is PermissionDenied; so is an unknown role.

Where upstreams may point: every upstream of a write must be a pod address, inside a
pool registered at ``/ipam/pools/`` (``cni.pod_pools``), read in the
same snapshot as the domain; otherwise InvalidArgument naming the servers. This keeps
a domain from aiming Nginx at etcd or any other host service; the SLB agents check
again before Nginx gets anything.

Order of checks: role, then the arguments (InvalidArgument names the field), then
the stored state (NotFound, PermissionDenied on someone else's domain or settings,
AlreadyExists, Conflict, FailedPrecondition). Every write is one compare-and-swap
transaction whose compares cover everything the checks read, so no check can be
outdated by the time the write lands: creating a domain compares the group meta's
mod_revision and the domain key's absence; replacing or deleting compares the
domain's mod_revision (the caller's ``expected_revision`` when given, else the one
just read, with a retry on a lost race); SetUpstreams is a read-modify-CAS loop that
changes nothing but the upstreams. On any error nothing is written.

Pure service logic over the Store and Runtime ports: it must not know gRPC, etcd or
the token file; errors are typed (``SlbError`` subclasses) and the server maps them
to status codes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni.pod_pools import POOLS, PodPools, PoolCache
from control.auth import Principal
from foundation.logic.slb_domain import (
    SLB,
    Domain,
    DomainError,
    DomainStatus,
    Upstream,
    check_domain_name,
    check_group,
    check_routable,
    domain_key,
    domain_status_prefix,
    domains_prefix,
    hosts_prefix,
    load_json,
    show,
)
from foundation.logic.slb_shares import SharesError, check_shares, decode_shares, encode_shares, shares_key, weigh
from foundation.ports import (
    CompactedError,
    Compare,
    DeleteOp,
    GetOp,
    KeyValue,
    PutOp,
    RangeResult,
    Runtime,
    Store,
)
from foundation.ports import control as port
from foundation.ports.control import HostStatus, StatusReport, StoredDomain
from foundation.ports.store import TxnOp

GROUP_INDEX = "/control/slb/groups/"
MAX_DESCRIPTION = 256
MAX_SERVERS_ASKED = 65536  # a request's list before de-duplication (the record holds at most 4096)
READ_CHUNK = 64  # keys per read transaction (etcd refuses more than 128 operations in one txn)
OWNERS = "/control/slb/owners/"  # {owner}: empty, rewritten whenever a domain is given to the owner
OWNED = "/control/slb/owned/"  # {owner}/{group}/{domain}: empty, one per domain the owner holds (the count)
DEFAULT_PAGE_SIZE = 100  # list calls without a page_size
MAX_PAGE_SIZE = 1000  # a larger page_size is lowered to this (AIP-158)
PAGE_BYTES = 1 << 20  # a page stops before its records pass this many bytes (one record always fits)
PAGE_ITEM_OVERHEAD = 64  # bytes a record costs in a response beyond its JSON (revision, field tags)
MAX_ECHO = 64  # characters of a caller's value repeated in an error message
SHARE_SETTERS = ("admin", "platform")  # roles that may set traffic shares (the release controller's is platform)


def meta_key(group: str) -> str:
    return f"{SLB}{group}/meta"


def group_index_key(group: str) -> str:
    return f"{GROUP_INDEX}{group}"


# --------------------------------------------------------------------------- errors


class SlbError(port.ControlError):
    """Base of the typed errors of slb-core; the message says what to do. Each is the ControlClient
    port's error of its kind (``foundation/ports/control.py``), so a client gets the same types in-process
    (the sim adapter) as over gRPC (the server maps ``code`` to a status, the gRPC adapter maps it back)."""


class NotFound(SlbError, port.NotFound):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name} does not exist")
        self.kind = kind
        self.name = name


class AlreadyExists(SlbError, port.AlreadyExists):
    def __init__(self, kind: str, name: str, revision: int) -> None:
        super().__init__(f"{kind} {name} already exists (revision {revision})")
        self.kind = kind
        self.name = name
        self.revision = revision


class PermissionDenied(SlbError, port.PermissionDenied):
    pass


class InvalidArgument(SlbError, port.InvalidArgument):
    """A request field is invalid; ``field`` names it (e.g. ``locations.set_headers``): the port's ``__init__``."""

    @staticmethod
    def of(error: DomainError, rename: dict[str, str] | None = None) -> InvalidArgument:
        field_name = (rename or {}).get(error.field, error.field)
        return InvalidArgument(field_name, str(error).removeprefix(f"{error.field}: "))


class Conflict(SlbError, port.Conflict):
    """The record is not at the revision the caller expected (or kept changing): read it again."""

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class FailedPrecondition(SlbError, port.FailedPrecondition):
    pass


class QuotaExceeded(SlbError, port.QuotaExceeded):
    """A write would pass one of the caller's quotas; ``quota`` names it (e.g. ``domains_per_owner``)."""

    def __init__(self, quota: str, message: str) -> None:
        super().__init__(f"quota {quota} exceeded: {message}")
        self.quota = quota


class CorruptRecord(SlbError, port.CorruptRecord):
    """A stored record does not decode: written by something other than slb-core."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the record at {key} is unreadable: {reason}")
        self.key = key


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    created_by: str
    created_at: float
    revision: int  # mod_revision of the meta key

    def to_bytes(self) -> bytes:
        return json.dumps({"name": self.name, "description": self.description, "created_by": self.created_by,
                           "created_at": self.created_at}, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_kv(kv: KeyValue) -> Group:
        try:
            data = load_json(kv.value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            name, description, by, at = (data.get("name"), data.get("description", ""), data.get("created_by", ""),
                                         data.get("created_at", 0.0))
            name = check_group(name)
            if not all(isinstance(v, str) and len(v) <= 1024 for v in (description, by)):
                raise ValueError("description and created_by must be short strings")
            if isinstance(at, bool) or not isinstance(at, int | float) or not -1e12 < at < 1e12:
                raise ValueError(f"created_at {show(at)} is not a time")
            return Group(name, description, by, float(at), kv.mod_revision)
        except ValueError as exc:  # DomainError is one
            raise CorruptRecord(kv.key, str(exc)) from None


# StoredDomain, HostStatus and StatusReport are the ControlClient port's records (imported above).


def _decode_domain(kv: KeyValue) -> Domain:
    try:
        domain = Domain.from_bytes(kv.value)  # any failure, deep nesting included, is a DomainError
    except ValueError as exc:
        raise CorruptRecord(kv.key, str(exc)) from None
    if domain.key != kv.key:
        raise CorruptRecord(kv.key, f"it holds domain {domain.name} of group {domain.group}")
    return domain


def _check_pools(pools: PodPools, upstreams: tuple[Upstream, ...], field_name: str) -> None:
    outside = pools.outside(upstreams)
    if outside:
        listed = ", ".join(str(u) for u in outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        raise InvalidArgument(field_name, f"{listed}: not a pod address (an upstream must be an address of a pod "
                                          "pool registered with cnictl)")


def _names(group: Any, name: Any, *, name_field: str = "name") -> tuple[str, str]:
    try:
        return check_group(group), check_domain_name(name)
    except DomainError as exc:
        raise InvalidArgument.of(exc, {"name": name_field}) from None


def _group_name(group: Any, field_name: str = "group") -> str:
    try:
        return check_group(group)
    except DomainError as exc:
        raise InvalidArgument.of(exc, {"group": field_name}) from None


def _check_expected(expected_revision: int | None) -> None:
    if expected_revision is not None and (isinstance(expected_revision, bool) or expected_revision < 0):
        raise InvalidArgument("expected_revision", f"{expected_revision!r} is not a revision (0 = must not exist)")


def clip(value: Any, limit: int = MAX_ECHO) -> str:
    """A caller's value for an error message or a log line: at most ``limit`` characters, then its size."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except ValueError:  # an integer too long to print
            return f"<a {type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def owner_key(owner: str) -> str:
    return f"{OWNERS}{owner}"


def owned_prefix(owner: str) -> str:
    return f"{OWNED}{owner}/"


def owned_key(owner: str, group: str, name: str) -> str:
    return f"{OWNED}{owner}/{group}/{name}"


@dataclass(frozen=True)
class Limits:
    """One role's quotas; 0 means no limit of that kind."""

    domains_per_owner: int  # domains one owner holds, over all groups
    upstreams_per_domain: int  # servers one write may give a domain (the record itself holds at most 4096)
    record_bytes: int  # a domain record as stored, its upstreams not counted (they have their own quota)

    NAMES = ("domains", "upstreams", "record_bytes")

    def __post_init__(self) -> None:
        for value in (self.domains_per_owner, self.upstreams_per_domain, self.record_bytes):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"a quota is a whole number >= 0 (0: no limit), got {clip(value)}")

    @staticmethod
    def parse(text: str, base: Limits) -> Limits:
        """``domains=100,upstreams=1024,record_bytes=16384`` (any of them) over ``base``."""
        values = {"domains": base.domains_per_owner, "upstreams": base.upstreams_per_domain,
                  "record_bytes": base.record_bytes}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, number = part.partition("=")
            if name.strip() not in values or not number.strip().isascii() or not number.strip().isdigit() \
                    or len(number.strip()) > 12:
                raise ValueError(f"quota {clip(part)}: expected name=number with name one of "
                                 f"{', '.join(Limits.NAMES)}")
            values[name.strip()] = int(number.strip())
        return Limits(values["domains"], values["upstreams"], values["record_bytes"])

    def __str__(self) -> str:
        return (f"domains={self.domains_per_owner},upstreams={self.upstreams_per_domain},"
                f"record_bytes={self.record_bytes}")


@dataclass(frozen=True)
class Quotas:
    """Limits by the caller's role: ``user`` for users, ``admin`` for admins and discovery."""

    user: Limits = Limits(100, 1024, 16 * 1024)
    admin: Limits = Limits(10_000, 4096, 256 * 1024)

    def of(self, who: Principal) -> Limits:
        return self.user if who.role == "user" else self.admin


@dataclass(frozen=True)
class DomainPage:
    domains: tuple[StoredDomain, ...]
    revision: int  # the store revision every page of this listing is read at
    next_page_token: str  # "" on the last page


@dataclass(frozen=True)
class GroupPage:
    groups: tuple[Group, ...]
    revision: int  # the revision the index was read at (metas are read as they are now)
    next_page_token: str


def _page_size(page_size: Any) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
        raise InvalidArgument("page_size", f"{clip(page_size)} is not a page size (0 means {DEFAULT_PAGE_SIZE})")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _page_token(kind: str, scope: str, last: str, revision: int) -> str:
    raw = json.dumps([kind, scope, last, revision], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: Any, kind: str, scope: str) -> tuple[str, int]:
    """``(last name listed, snapshot revision)`` of a token ``_page_token`` made; ("", 0) for none."""
    if token == "":
        return "", 0
    try:
        if not isinstance(token, str) or len(token) > 1024:
            raise ValueError("not a short string")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        got_kind, got_scope, last, revision = json.loads(raw)
        valid = got_kind == kind and isinstance(got_scope, str) and isinstance(last, str) and last \
            and type(revision) is int and revision > 0
    except (ValueError, TypeError, RecursionError):  # binascii.Error and JSONDecodeError are ValueErrors
        valid = False
    if not valid:
        raise InvalidArgument("page_token", f"{clip(token)} is not a page token of this list call; "
                                            "list from the start without one")
    if got_scope != scope:
        raise InvalidArgument("page_token", f"the token continues a listing of {clip(got_scope)}, not {scope}")
    return last, revision


# --------------------------------------------------------------------------- the service


class SlbCore:
    """The slb-core API over a Store. Every method takes the calling ``Principal`` first."""

    def __init__(self, store: Store, runtime: Runtime, *, max_attempts: int = 16, quotas: Quotas | None = None,
                 page_bytes: int = PAGE_BYTES) -> None:
        self.store = store
        self.runtime = runtime
        self.max_attempts = max_attempts
        self.quotas = quotas or Quotas()
        self.page_bytes = page_bytes
        self._pools = PoolCache()  # parsed once per change of /ipam/pools/, read with every upstream write

    # ------------------------------------------------------------------ groups

    async def create_group(self, who: Principal, name: Any, description: Any = "") -> Group:
        _require(who, "admin", action="create groups")
        name = _group_name(name, "name")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or not description.isprintable():
            raise InvalidArgument("description", f"must be at most {MAX_DESCRIPTION} printable characters")
        group = Group(name, description, who.name, self.runtime.wall_time(), 0)
        key = meta_key(name)
        result = await self.store.txn([Compare.missing(key)],
                                      [PutOp(key, group.to_bytes()), PutOp(group_index_key(name), b"")],
                                      [GetOp(key)])
        if not result.succeeded:
            existing = result.responses[0].first() if isinstance(result.responses[0], RangeResult) else None
            raise AlreadyExists("group", name, existing.mod_revision if existing else 0)
        self.runtime.trace("slb.group.create", group=name, by=who.name, revision=result.revision)
        return Group(name, description, who.name, group.created_at, result.revision)

    async def list_groups(self, who: Principal) -> list[Group]:
        names = [kv.key.removeprefix(GROUP_INDEX) for kv in (await self.store.range(GROUP_INDEX)).kvs]
        groups: list[Group] = []
        for start in range(0, len(names), READ_CHUNK):
            chunk = names[start:start + READ_CHUNK]
            result = await self.store.txn([], [GetOp(meta_key(n)) for n in chunk])
            for response in result.responses:
                kv = response.first() if isinstance(response, RangeResult) else None
                if kv is not None:  # deleted since the index was read
                    groups.append(Group.from_kv(kv))
        return groups

    async def list_groups_page(self, who: Principal, *, page_size: Any = 0, page_token: Any = "") -> GroupPage:
        """One page of the groups sorted by name (AIP-158): at most ``page_size`` and ``page_bytes``.

        The index is read at the revision of the listing's first page; each page's metas
        are read as they are now (a group deleted meanwhile is left out).
        """
        size = _page_size(page_size)
        after, revision = _read_page_token(page_token, "groups", "")
        start = group_index_key(after) if after else ""
        try:
            index = await self.store.range(GROUP_INDEX, limit=size + 1, start_after=start, revision=revision)
        except CompactedError:
            raise Conflict(f"the listing's snapshot (revision {revision}) was compacted: list again from the "
                           "first page") from None
        names = [kv.key.removeprefix(GROUP_INDEX) for kv in index.kvs]
        groups: list[Group] = []
        used, last, more = 0, "", len(names) > size
        for first in range(0, min(len(names), size), READ_CHUNK):
            chunk = names[first:min(first + READ_CHUNK, size)]
            result = await self.store.txn([], [GetOp(meta_key(n)) for n in chunk])
            for name, response in zip(chunk, result.responses, strict=True):
                kv = response.first() if isinstance(response, RangeResult) else None
                cost = len(kv.value) + PAGE_ITEM_OVERHEAD if kv is not None else 0
                if groups and used + cost > self.page_bytes:
                    more = True
                    break
                used, last = used + cost, name
                if kv is not None:  # deleted since the index was read
                    groups.append(Group.from_kv(kv))
            else:
                continue
            break
        token = _page_token("groups", "", last, index.revision) if more and last else ""
        return GroupPage(tuple(groups), index.revision, token)

    async def get_group(self, who: Principal, name: Any) -> Group:
        name = _group_name(name, "name")
        kv = await self.store.get(meta_key(name))
        if kv is None:
            raise NotFound("group", name)
        return Group.from_kv(kv)

    async def delete_group(self, who: Principal, name: Any) -> int:
        """Delete an empty group (its meta, its index key and any status its hosts left)."""
        _require(who, "admin", action="delete groups")
        name = _group_name(name, "name")
        key = meta_key(name)
        for _ in range(self.max_attempts):
            meta = await self.store.get(key)
            if meta is None:
                raise NotFound("group", name)
            # A domain created after the meta was read moved the meta's mod_revision: the txn fails.
            domains = await self.store.range(domains_prefix(name), limit=1)
            if domains.kvs:
                first = domains.kvs[0].key.removeprefix(domains_prefix(name))
                raise FailedPrecondition(f"group {name} still has domains (e.g. {first}): delete them first")
            result = await self.store.txn([Compare.mod_is(key, meta.mod_revision)],
                                          [DeleteOp(f"{SLB}{name}/", prefix=True), DeleteOp(group_index_key(name))])
            if result.succeeded:
                self.runtime.trace("slb.group.delete", group=name, by=who.name, revision=result.revision)
                return result.revision
        raise Conflict(f"group {name} kept changing while deleting it; try again")

    # ------------------------------------------------------------------ domains

    async def _charge(self, who: Principal, domain: Domain,
                      current: KeyValue | None) -> tuple[list[Compare], list[TxnOp]]:
        """Check ``who``'s quotas for writing ``domain`` over ``current``; the compares and writes that keep
        the owner's domain count true, to join the write's transaction."""
        limits = self.quotas.of(who)
        old = _readable_or_none(current)  # None: a new domain, or an admin overwriting a corrupt record
        bare = len(domain.with_upstreams(()).to_bytes())
        if limits.record_bytes and bare > limits.record_bytes:
            raise QuotaExceeded("record_bytes", f"the record of {domain.name} is {bare} bytes without its "
                                f"upstreams; role {who.role} may store at most {limits.record_bytes}")
        if limits.upstreams_per_domain and len(domain.upstreams) > limits.upstreams_per_domain \
                and (old is None or old.upstreams != domain.upstreams):
            raise QuotaExceeded("upstreams_per_domain", f"{len(domain.upstreams)} upstreams for {domain.name}; "
                                f"role {who.role} may set at most {limits.upstreams_per_domain}")
        if old is not None and old.owner == domain.owner:
            return [], []
        # The domain is new to its owner. The owner key is read before the count and compared
        # by the write, so two creates racing past the count cannot both land.
        owner = owner_key(domain.owner)
        seen = await self.store.get(owner)
        if limits.domains_per_owner:
            held = await self.store.range(owned_prefix(domain.owner), limit=limits.domains_per_owner)
            if len(held.kvs) >= limits.domains_per_owner:
                raise QuotaExceeded("domains_per_owner", f"{domain.owner} already holds {len(held.kvs)} domains; "
                                    f"role {who.role} may give an owner at most {limits.domains_per_owner}: "
                                    "delete one first")
        ops: list[TxnOp] = [PutOp(owned_key(domain.owner, domain.group, domain.name), b""), PutOp(owner, b"")]
        if old is not None:
            ops.append(DeleteOp(owned_key(old.owner, domain.group, domain.name)))
        return [Compare.mod_is(owner, seen.mod_revision if seen else 0)], ops

    async def put_domain(self, who: Principal, data: dict[str, Any], *,
                         expected_revision: int | None = None) -> StoredDomain:
        """Create or replace a domain. ``expected_revision``: 0 = create only, N = replace revision N only."""
        _require(who, "admin", "user", action="create or change domains (discovery sets upstreams only)")
        _check_expected(expected_revision)
        if not isinstance(data, dict):
            raise InvalidArgument("domain", "must be an object")
        data = dict(data)
        if not data.get("owner"):
            data["owner"] = who.name
        try:
            domain = Domain.parse(data)
            check_routable(domain.upstreams)
        except DomainError as exc:
            raise InvalidArgument.of(exc) from None
        if who.role == "user" and domain.owner != who.name:
            raise PermissionDenied(f"{who.name} may create and change only its own domains (owner {who.name}), "
                                   f"not owner {domain.owner}")
        key, meta = domain.key, meta_key(domain.group)
        asked = domain
        for _ in range(self.max_attempts):
            domain = asked
            read = await self.store.txn([], [GetOp(meta), GetOp(key), GetOp(POOLS, prefix=True),
                                             GetOp(shares_key(domain.group, domain.name))])
            meta_kv, current = (r.first() if isinstance(r, RangeResult) else None for r in read.responses[:2])
            if meta_kv is None:
                raise NotFound("group", domain.group)
            if current is None:
                if expected_revision:
                    raise Conflict(f"domain {domain.name} does not exist (deleted?); expected revision "
                                   f"{expected_revision}", expected=expected_revision, actual=0)
                if who.role == "user" and domain.settings:
                    raise PermissionDenied(f"settings are admin-only: {who.name} may not set "
                                           f"{', '.join(k for k, _ in domain.settings)}")
                if who.role == "user" and (domain.upstreams_by != "discovery" or domain.upstreams):
                    raise PermissionDenied(f"upstreams are set by discovery: {who.name} may not create a domain "
                                           "with upstreams or upstreams_by (an admin may allow the owner)")
            else:
                if expected_revision == 0:
                    raise AlreadyExists("domain", f"{domain.group}/{domain.name}", current.mod_revision)
                if expected_revision is not None and expected_revision != current.mod_revision:
                    raise Conflict(f"domain {domain.name} is at revision {current.mod_revision}, not "
                                   f"{expected_revision}: read it again", expected=expected_revision,
                                   actual=current.mod_revision)
                if who.role == "user":
                    old = _decode_domain(current)
                    _own(who, old)
                    if domain.settings != old.settings:
                        raise PermissionDenied(f"settings are admin-only: {who.name} must send the domain's "
                                               f"settings unchanged ({dict(old.settings)})")
                    if domain.upstreams_by != old.upstreams_by:
                        raise PermissionDenied(f"upstreams_by is admin-only: {who.name} must send it unchanged "
                                               f"({old.upstreams_by})")
                    if not domain.upstreams or old.upstreams_by == "discovery":
                        if domain.upstreams and domain.upstreams != old.upstreams:
                            raise PermissionDenied(f"the upstreams of {domain.name} are set by discovery: "
                                                   f"{who.name} may send none (kept) or the stored ones")
                        domain = domain.with_upstreams(old.upstreams)  # discovery's servers stay
            pools, share_read = read.responses[2:]
            _check_pools(self._pools.update(pools.kvs if isinstance(pools, RangeResult) else (), read.revision),
                         domain.upstreams, "upstreams")
            # The domain's traffic shares weigh whatever upstreams it gets (None: kept as sent).
            share_kv = share_read.first() if isinstance(share_read, RangeResult) else None
            domain = domain.with_upstreams(weigh(domain.upstreams, _decode_shares(share_kv)))
            shares_unchanged = Compare.mod_is(shares_key(domain.group, domain.name),
                                              share_kv.mod_revision if share_kv else 0)
            value = domain.to_bytes()
            if current is not None and current.value == value:  # nothing changes: no write, no new revision
                return StoredDomain(domain, current.mod_revision)
            quota_compares, quota_ops = await self._charge(who, domain, current)
            if current is None:
                result = await self.store.txn([Compare.mod_is(meta, meta_kv.mod_revision), Compare.missing(key),
                                               shares_unchanged, *quota_compares],
                                              [PutOp(key, value), PutOp(meta, meta_kv.value), *quota_ops])
            else:
                # The pools are not compared: a pool is added before pods get its addresses, and a
                # pool's removal (a drained subnet) racing this write is caught by the agents' check.
                result = await self.store.txn([Compare.mod_is(key, current.mod_revision), shares_unchanged,
                                               *quota_compares], [PutOp(key, value), *quota_ops])
            if result.succeeded:
                self.runtime.trace("slb.domain.put", key=key, by=who.name, revision=result.revision)
                return StoredDomain(domain, result.revision)
            # Lost a race: read again; the checks above decide whether it is the caller's conflict.
        raise Conflict(f"domain {domain.name} kept changing while writing it; try again")

    async def get_domain(self, who: Principal, group: Any, name: Any) -> StoredDomain:
        group, name = _names(group, name)
        kv = await self.store.get(domain_key(group, name))
        if kv is None:
            raise NotFound("domain", f"{group}/{name}")
        return StoredDomain(_decode_domain(kv), kv.mod_revision)

    async def list_domains(self, who: Principal, group: Any) -> tuple[list[StoredDomain], int]:
        """The group's domains sorted by name, and the store revision they were read at."""
        group = _group_name(group)
        read = await self.store.txn([], [GetOp(meta_key(group)), GetOp(domains_prefix(group), prefix=True)])
        meta, domains = read.responses
        if not isinstance(meta, RangeResult) or meta.first() is None:
            raise NotFound("group", group)
        kvs = domains.kvs if isinstance(domains, RangeResult) else ()
        return self._readable(kvs), read.revision

    def _readable(self, kvs: Iterable[KeyValue]) -> list[StoredDomain]:
        """The domains of ``kvs`` that decode; a corrupt record is skipped (and traced), never fatal to a list."""
        found = []
        for kv in kvs:
            try:
                found.append(StoredDomain(_decode_domain(kv), kv.mod_revision))
            except CorruptRecord as exc:
                self.runtime.trace("slb.domain.corrupt", key=kv.key, error=str(exc)[:200])
        return found

    async def list_domains_page(self, who: Principal, group: Any, *, page_size: Any = 0,
                                page_token: Any = "") -> DomainPage:
        """One page of the group's domains sorted by name (AIP-158).

        Every page of a listing is read at the revision of its first page, so the pages
        are one snapshot (a snapshot compacted away meanwhile: Conflict, list again). A
        page holds at most ``page_size`` domains and stops before its records pass
        ``page_bytes`` (one domain at least), so it fits a message limit above that.
        Corrupt records are skipped, as in a full list.
        """
        group = _group_name(group)
        size = _page_size(page_size)
        after, revision = _read_page_token(page_token, "domains", group)
        prefix = domains_prefix(group)
        taken: list[StoredDomain] = []
        used, last, more = 0, f"{prefix}{after}" if after else "", False
        try:
            meta = await self.store.range(meta_key(group), limit=1, revision=revision)
            if not meta.kvs or meta.kvs[0].key != meta_key(group):
                raise NotFound("group", group)
            revision = meta.revision
            while not more:
                chunk = await self.store.range(prefix, limit=READ_CHUNK, start_after=last, revision=revision)
                for kv in chunk.kvs:
                    cost = len(kv.value) + PAGE_ITEM_OVERHEAD
                    if len(taken) >= size or (taken and used + cost > self.page_bytes):
                        more = True
                        break
                    used, last = used + cost, kv.key
                    try:
                        taken.append(StoredDomain(_decode_domain(kv), kv.mod_revision))
                    except CorruptRecord as exc:  # skipped, as a full list skips it
                        self.runtime.trace("slb.domain.corrupt", key=kv.key, error=str(exc)[:200])
                if len(chunk.kvs) < READ_CHUNK:
                    break
        except CompactedError:
            raise Conflict(f"the listing's snapshot (revision {revision}) was compacted: list again from the "
                           "first page") from None
        token = _page_token("domains", group, last.removeprefix(prefix), revision) if more else ""
        return DomainPage(tuple(taken), revision, token)

    async def delete_domain(self, who: Principal, group: Any, name: Any, *,
                            expected_revision: int | None = None) -> int:
        _require(who, "admin", "user", action="delete domains")
        group, name = _names(group, name)
        _check_expected(expected_revision)
        key = domain_key(group, name)
        for _ in range(self.max_attempts):
            current = await self.store.get(key)
            if current is None:
                raise NotFound("domain", f"{group}/{name}")
            if expected_revision is not None and expected_revision != current.mod_revision:
                raise Conflict(f"domain {name} is at revision {current.mod_revision}, not {expected_revision}",
                               expected=expected_revision, actual=current.mod_revision)
            if who.role == "user":
                _own(who, _decode_domain(current))
            old = _readable_or_none(current)  # its owner's domain count goes down with it
            uncount = [DeleteOp(owned_key(old.owner, group, name))] if old else []
            # The shares go with the domain (a delete of a missing key writes nothing).
            result = await self.store.txn([Compare.mod_is(key, current.mod_revision)],
                                          [DeleteOp(key), DeleteOp(shares_key(group, name)), *uncount])
            if result.succeeded:
                self.runtime.trace("slb.domain.delete", key=key, by=who.name, revision=result.revision)
                return result.revision
        raise Conflict(f"domain {name} kept changing while deleting it; try again")

    async def set_upstreams(self, who: Principal, group: Any, name: Any, servers: Any) -> int:
        """Replace the domain's upstream servers and nothing else; return the domain's revision after it."""
        # A user passes this line only to be checked against the domain's upstreams_by below.
        _require(who, "admin", "discovery", "user", action="set upstreams")
        group, name = _names(group, name, name_field="domain")
        if not isinstance(servers, list | tuple):
            raise InvalidArgument("servers", "must be a list of IPv4:port (each optionally ' weight=N version=V')")
        if len(servers) > MAX_SERVERS_ASKED:
            raise InvalidArgument("servers", f"{len(servers)} servers: at most {MAX_SERVERS_ASKED}")
        try:
            upstreams = tuple(Upstream.parse(s) for s in servers)
            check_routable(upstreams)
        except DomainError as exc:
            raise InvalidArgument.of(exc, {"upstreams": "servers"}) from None
        key, share_key = domain_key(group, name), shares_key(group, name)
        for _ in range(self.max_attempts):
            read = await self.store.txn([], [GetOp(key), GetOp(POOLS, prefix=True), GetOp(share_key)])
            found, pools, share_read = read.responses
            current = found.first() if isinstance(found, RangeResult) else None
            if current is None:
                raise NotFound("domain", f"{group}/{name}")
            old = _decode_domain(current)
            share_kv = share_read.first() if isinstance(share_read, RangeResult) else None
            shares = _decode_shares(share_kv)
            if who.role == "user":
                _own(who, old)
                if old.upstreams_by != "owner":
                    raise PermissionDenied(f"the upstreams of {name} are set by discovery; an admin may let its "
                                           f"owner set them (upstreams_by: owner)")
            _check_pools(self._pools.update(pools.kvs if isinstance(pools, RangeResult) else (), read.revision),
                         upstreams, "servers")
            try:
                # weigh: the shares decide the weights (None: kept as sent); refuses one address twice
                new = old.with_upstreams(weigh(upstreams, shares))
                Domain.parse(new.to_json())  # the record's own limits (e.g. at most 4096 servers)
            except DomainError as exc:
                raise InvalidArgument.of(exc, {"upstreams": "servers"}) from None
            if new == old:
                return current.mod_revision  # already so: no write, agents see nothing
            limit = self.quotas.of(who).upstreams_per_domain
            if limit and len(new.upstreams) > limit:
                raise QuotaExceeded("upstreams_per_domain", f"{len(new.upstreams)} upstreams for {name}; role "
                                    f"{who.role} may set at most {limit}")
            result = await self.store.txn([Compare.mod_is(key, current.mod_revision),
                                           Compare.mod_is(share_key, share_kv.mod_revision if share_kv else 0)],
                                          [PutOp(key, new.to_bytes())])
            if result.succeeded:
                self.runtime.trace("slb.upstreams.set", key=key, by=who.name, servers=len(new.upstreams),
                                   revision=result.revision)
                return result.revision
        raise Conflict(f"domain {name} kept changing while setting its upstreams; try again")

    # ------------------------------------------------------------------ traffic shares

    async def set_shares(self, who: Principal, group: Any, domain: Any, shares: Mapping[str, int]) -> int:
        """Set the traffic shares of the domain's versions and re-weigh its upstreams by them, in one CAS.

        Returns the domain's revision after it (unchanged when its weights already were so).
        A corrupt shares record is overwritten (this is how it is repaired).
        """
        _require(who, *SHARE_SETTERS, action="set traffic shares")
        group, name = _names(group, domain, name_field="domain")
        try:
            checked = check_shares(shares)
        except SharesError as exc:
            raise InvalidArgument("shares", str(exc)) from None
        key, share_key = domain_key(group, name), shares_key(group, name)
        value = encode_shares(checked)
        for _ in range(self.max_attempts):
            read = await self.store.txn([], [GetOp(key), GetOp(share_key)])
            current, share_kv = (r.first() if isinstance(r, RangeResult) else None for r in read.responses)
            if current is None:
                raise NotFound("domain", f"{group}/{name}")
            old = _decode_domain(current)
            new = old.with_upstreams(weigh(old.upstreams, checked))
            if new == old and share_kv is not None and share_kv.value == value:
                return current.mod_revision  # already so: no write
            ops: list[TxnOp] = [PutOp(share_key, value)]
            if new != old:
                ops.append(PutOp(key, new.to_bytes()))
            result = await self.store.txn([Compare.mod_is(key, current.mod_revision),
                                           Compare.mod_is(share_key, share_kv.mod_revision if share_kv else 0)], ops)
            if result.succeeded:
                self.runtime.trace("slb.shares.set", key=share_key, by=who.name, shares=checked,
                                   revision=result.revision)
                return result.revision if new != old else current.mod_revision
        raise Conflict(f"domain {name} kept changing while setting its shares; try again")

    async def get_shares(self, who: Principal, group: Any, domain: Any) -> dict[str, int] | None:
        """The domain's traffic shares, or None when it has none (its weights are as discovery sent them)."""
        group, name = _names(group, domain, name_field="domain")
        return _decode_shares(await self.store.get(shares_key(group, name)))

    # ------------------------------------------------------------------ status

    async def get_status(self, who: Principal, group: Any, name: Any, *, registered: bool = False) -> StatusReport:
        """What each Nginx host of the group reports for the domain, sorted by host.

        With ``registered``, also the group's hosts registered now (a read of their leased keys,
        before the statuses): a drain waits for those too, not only for hosts that reported."""
        group, name = _names(group, name, name_field="domain")
        hosts_now: tuple[str, ...] = ()
        if registered:
            listing = await self.store.range(hosts_prefix(group))
            hosts_now = tuple(sorted(kv.key.removeprefix(hosts_prefix(group)) for kv in listing.kvs))
        prefix = domain_status_prefix(group, name)
        read = await self.store.txn([], [GetOp(domain_key(group, name)), GetOp(prefix, prefix=True)])
        domain, statuses = (r if isinstance(r, RangeResult) else RangeResult((), 0) for r in read.responses)
        current = domain.first()
        hosts = []
        for kv in statuses.kvs:
            host = kv.key.removeprefix(prefix)
            try:
                status = DomainStatus.from_bytes(kv.value)
            except (ValueError, TypeError, KeyError) as exc:
                hosts.append(HostStatus(host, 0, 0, f"unreadable status record: {exc!r}", 0.0))
                continue
            hosts.append(HostStatus(host, status.revision, status.wanted_revision, status.error, status.at))
        if current is None and not hosts:
            raise NotFound("domain", f"{group}/{name}")
        return StatusReport(current.mod_revision if current else 0, tuple(sorted(hosts, key=lambda h: h.host)),
                            hosts_now)


def _decode_shares(kv: KeyValue | None) -> dict[str, int] | None:
    try:
        return decode_shares(kv.value) if kv is not None else None
    except SharesError as exc:
        raise CorruptRecord(kv.key if kv is not None else "", str(exc)) from None


def _require(who: Principal, *roles: str, action: str) -> None:
    if who.role not in roles:
        raise PermissionDenied(f"{who.name} (role {who.role}) may not {action}; that needs role "
                               f"{' or '.join(roles)}")


def _readable_or_none(kv: KeyValue | None) -> Domain | None:
    """A stored domain record, or None when there is none or it does not decode (no owner's count holds it)."""
    try:
        return _decode_domain(kv) if kv is not None else None
    except CorruptRecord:
        return None


def _own(who: Principal, domain: Domain) -> None:
    if domain.owner != who.name:
        raise PermissionDenied(f"domain {domain.name} belongs to {domain.owner}; {who.name} may change only "
                               "its own domains")
