"""Apps and versions: the platform's deploy unit, recorded in etcd and reconciled into every Cell.

An **app** is a Kubernetes namespace (its name, a DNS label of at most 40 characters) in
each of at least two Cells of the Region, named by the request; a **version** ``v<N>`` is
an image (``repository:<40-hex commit id>``, what the build farm pushes), replicas per
Cell, resources (CPU millis, memory MiB), env (at most 64 variables) and a port, deployed
as one replication controller per Cell through the Workloads port
(``foundation/ports/workloads.py``). A new version is **prefilled** from the app's latest
one: only what the request gives differs (the talk's console did the same).

Records (docs/keys.md); this module is their one encoder and decoder, and every decode
validates (``InvalidRecord``; a call that needs the record fails with ``CorruptRecord``,
a reconcile skips it and traces why):

* ``/platform/apps/{app}``: ``{"name","cells","production","created_by","created_at",
  "next_version","state"}`` plus ``"group","domain"`` when the app has a domain (the Nginx
  group and domain serving it; records without them decode as an app without one);
  ``next_version`` is bumped in the transaction that creates a version, so "delete an app
  only when it has no versions" is one compare of this key.
* ``/platform/versions/{app}/{version}``: ``{"app","name","image","replicas":{cell: n},
  "cpu_millis","memory_mib","env","port","generation","state","created_by","created_at"}``;
  ``generation`` + 1 on every change of the spec (a scale).
* ``/platform/version-status/{app}/{version}``: ``{"applied":{cell: generation},
  "ready":{cell: n},"errors":{cell: text}}``, the reconciler's, advisory only.
* ``/platform/domains/{group}/{domain}``: the app's name (bytes), the claim of an app with a
  domain: put with the app record (compared missing: one app per domain, since two apps'
  reconciles and releases would fight over its one shares record and their version tags
  would mix), deleted with it when the app's record goes (only a claim naming that app).

**Order, and why nothing is half-written.** A call (create, deploy, scale, delete)
authorizes (``control.members``), validates, reads, and writes **one** compare-and-swap
transaction holding the intent (the record, with ``state`` ``active`` or ``deleting``),
the creator's Owner membership for a new app, and the call's activity record
(``control.activity``). Any error up to and including that transaction (permission,
validation, a lost race, etcd away) writes nothing and touches no Cell. Only after it
succeeds does the call **reconcile** the app: every Cell is made to match the records
with idempotent writes (ensure the namespace; apply each active version's controller;
delete the controllers of deleting versions, and the record once every Cell confirmed;
for a deleting app, delete the namespaces, then the record and its memberships). A Cell
that cannot be reached is not the call's error: the record is the truth, the answer says
which Cells are still pending, and ``reconcile_all`` (at start-up and on a period) brings
them in. So a crash anywhere leaves a state the next reconcile finishes: before the
transaction nothing happened; after it, the intent is there to be applied; after the
Cells, applying again writes nothing. Deletions complete only after every Cell confirmed
(the record outlives its controllers), and a controller of a version with no record and
a number below the app's ``next_version`` (read in the same snapshot) is an orphan the
reconcile deletes. The reconciler's own writes (status, completing a recorded deletion)
carry no activity record: they are not calls.

**Traffic shares** (an app with a domain): only released versions serve. ``reconcile``
first makes the domain's shares (``TrafficShares``, slb-core's ``/slb/{group}/shares/``
record, written by the entry point's adapter) agree with the versions: no shares yet -> the
lowest-numbered active version 100, the others 0; an active version without a share -> 0
(a new deploy runs but gets no traffic until a gray release, ``control.releases``, moves
it); versions deleted or being deleted are dropped, and the share they held (if the rest
no longer sums to 100) goes to the remaining version with the largest share (ties: the
lowest-numbered). Deploy reaches it after its CAS and before the Cells are touched (every
call reconciles). A failed shares write is traced, not the call's error: the next reconcile
repairs it. The shares record has no compare against the release controller's writes: a
reconcile racing a release step can overwrite that step, and the release's next check writes
its step's shares again.

Rights (docs/roles.md): ``app.create`` (any user, who becomes Owner), ``app.read``
(show, list, prefill), ``version.deploy`` or ``version.deploy_production`` (deploy and
delete a version: by the app's ``production`` flag), ``app.scale``, ``app.delete``.
Pure service logic over the Store, Runtime and Workloads ports: it must not know gRPC,
etcd or Kubernetes' JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from control.activity import activity_ops, check_request_id
from control.auth import Principal
from control.echo import clip
from control.image_groups import create_ops as image_group_create_ops
from control.image_groups import group_resource, image_group_key
from control.members import Action, Resource, Role, authorize, delete_ops, load_memberships, owner_ops
from foundation.logic.slb_domain import OWNER, load_json
from foundation.ports import Compare, DeleteOp, GetOp, KeyValue, PutOp, Runtime, Store
from foundation.ports import control as port
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.proxy_domain import DomainError, check_domain_name, check_group
from foundation.ports.traffic_shares import TrafficShares
from foundation.ports.workloads import (
    DNS_LABEL,
    MAX_ENV,
    MAX_REPLICAS,
    ControllerSpec,
    WorkloadNotFound,
    WorkloadRejected,
    Workloads,
    check_spec,
    controller_name,
)

APPS = "/platform/apps/"
VERSIONS = "/platform/versions/"
STATUS = "/platform/version-status/"
DOMAINS = "/platform/domains/"  # group/domain -> the one app served by it
MAX_APP_NAME = 40
RECONCILE_BATCH = 16  # apps reconciled at once by reconcile_all
MIN_CELLS = 2
MAX_CELLS = 16
MAX_VERSIONS = 32  # live versions of one app (a gray release needs two)
MAX_RECORD = 64 * 1024
DEFAULT_CPU_MILLIS = 500
DEFAULT_MEMORY_MIB = 512
DEFAULT_PORT = 8080
VERSION = re.compile(r"v([1-9][0-9]{0,8})")
State = Literal["active", "deleting"]


# --------------------------------------------------------------------------- errors


class AppsError(port.ControlError):
    """Base of this module's typed errors; each is the ControlClient port's error of its kind."""


class NotFound(AppsError, port.NotFound):
    pass


class AlreadyExists(AppsError, port.AlreadyExists):
    pass


class InvalidArgument(AppsError, port.InvalidArgument):
    pass


class FailedPrecondition(AppsError, port.FailedPrecondition):
    pass


class Conflict(AppsError, port.Conflict):
    pass


class CorruptRecord(AppsError, port.CorruptRecord):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the record at {key[:200]} is unreadable: {reason}")
        self.key = key


class InvalidRecord(ValueError):
    """A record read from the store does not decode (what the decoders raise, never another error)."""


def _summary(text: str) -> str:
    """An activity record's result: at most 200 characters."""
    return text if len(text) <= 200 else text[:199] + "…"


# --------------------------------------------------------------------------- names and keys


def check_app_name(name: Any, field_name: str = "app") -> str:
    if not isinstance(name, str) or len(name) > MAX_APP_NAME or not DNS_LABEL.fullmatch(name):
        raise InvalidArgument(field_name, f"{clip(name)} is not an app name (a DNS label of at most "
                                          f"{MAX_APP_NAME} characters: a-z, 0-9, '-')")
    return name


def check_version_name(name: Any, field_name: str = "version") -> str:
    if not isinstance(name, str) or not VERSION.fullmatch(name):
        raise InvalidArgument(field_name, f"{clip(name)} is not a version name (v<N>)")
    return name


def version_number(name: str) -> int:
    return int(name[1:])


def app_key(app: str) -> str:
    return f"{APPS}{app}"


def versions_prefix(app: str) -> str:
    return f"{VERSIONS}{app}/"


def version_key(app: str, version: str) -> str:
    return f"{VERSIONS}{app}/{version}"


def status_key(app: str, version: str) -> str:
    return f"{STATUS}{app}/{version}"


def app_resource(app: str) -> Resource:
    return Resource("app", app)


def resource_key(resource: Resource) -> str | None:
    """The key of an app's record, for ``control.members.Members(resource_key=...)``."""
    return app_key(resource.name) if resource.kind == "app" else None


# --------------------------------------------------------------------------- records


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _number(data: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} {clip(value)} is not a whole number from {low} to {high}")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"{clip(value)} is not a time")
    return float(value)


def _principal(value: Any) -> str:
    if not isinstance(value, str) or not OWNER.fullmatch(value):
        raise ValueError(f"{clip(value)} is not a principal name")
    return value


def _state(value: Any) -> State:
    if value not in ("active", "deleting"):
        raise ValueError(f"state {clip(value)} is not active or deleting")
    return value  # type: ignore[no-any-return]  # one of the two literals, just checked


def _object(raw: bytes, keys: set[str], optional: set[str] | None = None) -> dict[str, Any]:
    """The JSON object of ``keys``, plus either all or none of ``optional``."""
    if len(raw) > MAX_RECORD:
        raise ValueError(f"larger than {MAX_RECORD} bytes")
    data = load_json(raw)
    if not isinstance(data, dict) or (set(data) != keys and set(data) != keys | (optional or set())):
        raise ValueError(f"not an object of {', '.join(sorted(keys))}"
                         + (f" (and optionally {', '.join(sorted(optional))})" if optional else ""))
    return data


def _cells(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not MIN_CELLS <= len(value) <= MAX_CELLS:
        raise ValueError(f"cells: a list of {MIN_CELLS} to {MAX_CELLS} Cells")
    if not all(isinstance(c, str) and DNS_LABEL.fullmatch(c) for c in value) or len(set(value)) != len(value):
        raise ValueError("cells: each Cell a DNS label, named once")
    return tuple(value)


@dataclass(frozen=True)
class App:
    name: str
    cells: tuple[str, ...]
    production: bool
    created_by: str
    created_at: float
    next_version: int = 1  # the number the next deployed version gets
    state: State = "active"
    revision: int = 0  # mod_revision of the record
    group: str = ""  # the Nginx group of the app's domain ("" = no domain)
    domain: str = ""  # the domain serving the app ("" = none: no traffic shares)

    @property
    def key(self) -> str:
        return app_key(self.name)

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"name": self.name, "cells": list(self.cells), "production": self.production,
                                "created_by": self.created_by, "created_at": self.created_at,
                                "next_version": self.next_version, "state": self.state}
        if self.domain:  # written only when set: records of apps without a domain keep their bytes
            data.update(group=self.group, domain=self.domain)
        return _dumps(data)


APP_FIELDS = {"name", "cells", "production", "created_by", "created_at", "next_version", "state"}
DOMAIN_FIELDS = {"group", "domain"}


def domain_claim_key(group: str, domain: str) -> str:
    """The claim of a (validated) domain by the one app it serves."""
    return f"{DOMAINS}{group}/{domain}"


def check_app_domain(group: Any, domain: Any) -> tuple[str, str]:
    """``(group, domain)`` both given and valid, or both "" (no domain); else ``InvalidArgument``."""
    if group == "" and domain == "":
        return "", ""
    try:
        return check_group(group), check_domain_name(domain)
    except DomainError as exc:
        raise InvalidArgument("domain" if exc.field == "name" else "group", str(exc)) from None


def decode_app(kv: KeyValue) -> App:
    """The app stored at ``kv``, checked against its key; ``InvalidRecord`` otherwise."""
    try:
        data = _object(kv.value, APP_FIELDS, optional=DOMAIN_FIELDS)
        name = check_app_name(data["name"])
        if kv.key != app_key(name):
            raise ValueError(f"it holds app {name}")
        if not isinstance(data["production"], bool):
            raise ValueError("production is not true or false")
        group, domain = data.get("group", ""), data.get("domain", "")
        if "domain" in data and (not group or not domain):
            raise ValueError("group and domain: both set when present")
        group, domain = check_app_domain(group, domain)
        return App(name, _cells(data["cells"]), data["production"], _principal(data["created_by"]),
                   _time(data["created_at"]), _number(data, "next_version", 1, 10**9), _state(data["state"]),
                   kv.mod_revision, group, domain)
    except (ValueError, TypeError, KeyError, RecursionError, port.ControlError) as exc:
        raise InvalidRecord(f"{kv.key[:200]}: {exc}") from None


@dataclass(frozen=True)
class Version:
    app: str
    name: str  # v<N>
    image: str
    replicas: Mapping[str, int]  # per Cell, in the app's Cell order
    cpu_millis: int
    memory_mib: int
    env: tuple[tuple[str, str], ...]
    port: int
    created_by: str
    created_at: float
    generation: int = 1
    state: State = "active"
    revision: int = 0

    @property
    def key(self) -> str:
        return version_key(self.app, self.name)

    @property
    def number(self) -> int:
        return version_number(self.name)

    def spec(self, cell: str) -> ControllerSpec:
        """What the version's controller in ``cell`` must be."""
        return ControllerSpec(self.app, self.name, self.image, self.replicas[cell], self.cpu_millis,
                              self.memory_mib, self.env, self.port)

    def to_bytes(self) -> bytes:
        return _dumps({"app": self.app, "name": self.name, "image": self.image, "replicas": dict(self.replicas),
                       "cpu_millis": self.cpu_millis, "memory_mib": self.memory_mib,
                       "env": [list(pair) for pair in self.env], "port": self.port, "generation": self.generation,
                       "state": self.state, "created_by": self.created_by, "created_at": self.created_at})


VERSION_FIELDS = {"app", "name", "image", "replicas", "cpu_millis", "memory_mib", "env", "port", "generation",
                  "state", "created_by", "created_at"}


def decode_version(kv: KeyValue) -> Version:
    """The version stored at ``kv``, checked against its key and the port's bounds; ``InvalidRecord`` otherwise."""
    try:
        data = _object(kv.value, VERSION_FIELDS)
        app, name = check_app_name(data["app"]), check_version_name(data["name"])
        if kv.key != version_key(app, name):
            raise ValueError(f"it holds version {name} of {app}")
        replicas = data["replicas"]
        if not isinstance(replicas, dict):
            raise ValueError("replicas is not an object")
        _cells(list(replicas))
        env = data["env"]
        if not isinstance(env, list) or not all(isinstance(p, list) and len(p) == 2 for p in env):
            raise ValueError("env is not a list of [name, value]")
        version = Version(app, name, data["image"], dict(replicas), data["cpu_millis"], data["memory_mib"],
                          tuple((p[0], p[1]) for p in env), data["port"], _principal(data["created_by"]),
                          _time(data["created_at"]), _number(data, "generation", 1, 10**12), _state(data["state"]),
                          kv.mod_revision)
        for cell in version.replicas:
            check_spec(version.spec(cell))  # image, replicas, resources, env, port: the port's bounds
        return version
    except (ValueError, TypeError, KeyError, RecursionError, port.ControlError) as exc:
        raise InvalidRecord(f"{kv.key[:200]}: {exc}") from None


@dataclass(frozen=True)
class VersionStatus:
    applied: Mapping[str, int] = field(default_factory=dict)  # Cell -> generation in force there
    ready: Mapping[str, int] = field(default_factory=dict)  # Cell -> ready replicas it reported
    errors: Mapping[str, str] = field(default_factory=dict)  # Cell -> why it is behind
    revision: int = 0

    def to_bytes(self) -> bytes:
        return _dumps({"applied": dict(self.applied), "ready": dict(self.ready), "errors": dict(self.errors)})


def decode_status(kv: KeyValue) -> VersionStatus:
    try:
        data = _object(kv.value, {"applied", "ready", "errors"})
        tables = []
        for name, kind in (("applied", int), ("ready", int), ("errors", str)):
            table = data[name]
            if not isinstance(table, dict) or len(table) > MAX_CELLS or not all(
                    isinstance(k, str) and DNS_LABEL.fullmatch(k) and isinstance(v, kind) and not isinstance(v, bool)
                    and (len(v) <= 300 if isinstance(v, str) else 0 <= v <= 10**12) for k, v in table.items()):
                raise ValueError(f"{name} is not a table of Cells")
            tables.append(table)
        return VersionStatus(tables[0], tables[1], tables[2], kv.mod_revision)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise InvalidRecord(f"{kv.key[:200]}: {exc}") from None


# --------------------------------------------------------------------------- requests and answers


@dataclass(frozen=True)
class Draft:
    """A version to deploy: every field None is taken from the app's latest version (``prefill``).

    ``replicas`` is one count for every Cell or a count per Cell (every Cell of the app named).
    """

    image: str | None = None
    replicas: int | Mapping[str, int] | None = None
    cpu_millis: int | None = None
    memory_mib: int | None = None
    env: Sequence[tuple[str, str]] | Mapping[str, str] | None = None
    port: int | None = None


@dataclass(frozen=True)
class VersionView:
    version: Version
    status: VersionStatus

    @property
    def pending(self) -> tuple[str, ...]:
        """Cells where the version is not yet as recorded (its controller, or its deletion)."""
        want = self.version.generation if self.version.state == "active" else -1
        return tuple(c for c in self.version.replicas if self.status.applied.get(c) != want)


@dataclass(frozen=True)
class AppView:
    app: App
    versions: tuple[VersionView, ...]  # by number
    pending: Mapping[str, str] = field(default_factory=dict)  # Cell -> why the last reconcile left it behind


@dataclass(frozen=True)
class Reconciled:
    app: str
    pending: Mapping[str, str]  # Cell -> error; empty when every Cell matches the records
    removed: tuple[str, ...] = ()  # records whose deletion completed ("app", or version names)
    orphans: tuple[str, ...] = ()  # controllers deleted that no record asked for


# --------------------------------------------------------------------------- traffic shares


def repaired_shares(current: Mapping[str, int] | None, active: Sequence[str]) -> dict[str, int] | None:
    """The shares ``current`` must become so that they name exactly the ``active`` versions (by number,
    lowest first) and sum to 100; None when there is no active version (nothing to serve: left alone).

    No shares yet: the lowest-numbered version 100, the others 0. Versions not active are dropped,
    active ones without a share get 0, and what the dropped ones held goes to the remaining version
    with the largest share (ties and all-zero: the lowest-numbered).
    """
    if not active:
        return None
    if current is None:
        return {v: 100 if i == 0 else 0 for i, v in enumerate(active)}
    wanted = {v: current.get(v, 0) for v in active}
    rest = 100 - sum(wanted.values())
    if rest:
        heir = max(active, key=lambda v: (wanted[v], -active.index(v)))
        wanted[heir] = max(0, wanted[heir] + rest)
        if sum(wanted.values()) != 100:  # hostile shares summing above 100: start again from the rule
            return {v: 100 if i == 0 else 0 for i, v in enumerate(active)}
    return wanted


# --------------------------------------------------------------------------- the service


class Apps:
    """The apps API over a Store and the Workloads of each Cell of the Region (``cells``: name -> port).

    Every method takes the calling ``Principal`` first; every mutating one a ``request_id``
    (the activity record's id). See the module docstring for the order of writes.
    """

    def __init__(self, store: Store, runtime: Runtime, cells: Mapping[str, Workloads], *,
                 max_attempts: int = 16, shares: TrafficShares | None = None) -> None:
        self.store = store
        self.runtime = runtime
        self.cells = dict(cells)
        self.max_attempts = max_attempts
        self.shares = shares  # None: domains' shares are not kept (apps with a domain serve every version)

    # ------------------------------------------------------------------ reads

    async def _read(self, app: str) -> tuple[KeyValue | None, list[KeyValue], list[KeyValue], int]:
        read = await self.store.txn([], [GetOp(app_key(app)), GetOp(versions_prefix(app), prefix=True),
                                         GetOp(f"{STATUS}{app}/", prefix=True)])
        return read.read(0).first(), list(read.read(1).kvs), list(read.read(2).kvs), read.revision

    @staticmethod
    def _app(kv: KeyValue | None, name: str) -> App:
        if kv is None:
            raise NotFound(f"app {name} does not exist")
        try:
            return decode_app(kv)
        except InvalidRecord as exc:
            raise CorruptRecord(kv.key, str(exc)) from None

    @staticmethod
    def _versions(kvs: list[KeyValue]) -> list[Version]:
        versions = []
        for kv in kvs:
            try:
                versions.append(decode_version(kv))
            except InvalidRecord as exc:
                raise CorruptRecord(kv.key, str(exc)) from None
        return sorted(versions, key=lambda v: v.number)

    @staticmethod
    def _statuses(kvs: list[KeyValue]) -> dict[str, VersionStatus]:
        found = {}
        for kv in kvs:
            try:
                found[kv.key.rsplit("/", 1)[1]] = decode_status(kv)
            except InvalidRecord:
                continue  # advisory: the next reconcile rewrites it
        return found

    async def _authorized(self, who: Principal, action: Action, app: str) -> list[Compare]:
        """Check ``who`` may ``action`` the app; the compares that keep that decision true in the write."""
        found = await load_memberships(self.store, app_resource(app))
        authorize(who, action, app_resource(app), found)
        return found.guard(who.name)

    async def show(self, who: Principal, app: Any) -> AppView:
        app = check_app_name(app)
        await self._authorized(who, Action.APP_READ, app)
        app_kv, version_kvs, status_kvs, _ = await self._read(app)
        record = self._app(app_kv, app)
        statuses = self._statuses(status_kvs)
        return AppView(record, tuple(VersionView(v, statuses.get(v.name, VersionStatus()))
                                     for v in self._versions(version_kvs)))

    async def list_apps(self, who: Principal) -> list[App]:
        """The apps ``who`` may see (an admin: all; a user: those it is a member of), by name.

        A corrupt app record is left out (and traced), never fatal to the listing."""
        read = await self.store.txn([], [GetOp(APPS, prefix=True), GetOp("/platform/members/app/", prefix=True)])
        mine: set[str] | None = None
        if not who.is_admin:
            mine = set()
            for kv in read.read(1).kvs:
                name, _, user = kv.key.removeprefix("/platform/members/app/").rpartition("/")
                if user == who.name:
                    mine.add(name)
        apps = []
        for kv in read.read(0).kvs:
            if mine is not None and kv.key.removeprefix(APPS) not in mine:
                continue
            try:
                apps.append(decode_app(kv))
            except InvalidRecord as exc:
                self.runtime.trace("apps.corrupt", key=kv.key[:200], error=str(exc)[:200])
        return apps

    async def prefill(self, who: Principal, app: Any) -> Draft:
        """The form of the app's next version: its latest version's fields (the defaults when it has none)."""
        view = await self.show(who, app)
        return self._prefill(view.app, [v.version for v in view.versions])

    @staticmethod
    def _prefill(app: App, versions: list[Version]) -> Draft:
        live = [v for v in versions if v.state == "active"] or versions
        if not live:
            return Draft(None, None, DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_MIB, (), DEFAULT_PORT)
        latest = live[-1]
        return Draft(latest.image, dict(latest.replicas), latest.cpu_millis, latest.memory_mib, latest.env,
                     latest.port)

    # ------------------------------------------------------------------ writes

    async def _commit(self, who: Principal, action: str, app: str, result: str, request_id: str,
                      compares: Sequence[Compare], ops: Sequence[PutOp | DeleteOp]) -> int | None:
        """One CAS transaction: the change and its activity record; its revision, or None when a compare failed."""
        logged = activity_ops(who, action, app_resource(app), result, self.runtime.wall_time(),
                              request_id=request_id)
        done = await self.store.txn([*compares, *logged.compares], [*ops, *logged.ops])
        if not done.succeeded:
            return None
        self.runtime.trace("apps." + action, app=app, by=who.name, result=result, revision=done.revision)
        return done.revision

    def _check_cells(self, cells: Any) -> tuple[str, ...]:
        if not isinstance(cells, list | tuple) or not all(isinstance(c, str) for c in cells):
            raise InvalidArgument("cells", "must be a list of Cell names")
        if len(set(cells)) != len(cells):
            raise InvalidArgument("cells", "a Cell is named twice")
        if not MIN_CELLS <= len(cells) <= MAX_CELLS:
            raise InvalidArgument("cells", f"an app runs in {MIN_CELLS} to {MAX_CELLS} Cells (a machine room can "
                                           f"fail), got {len(cells)}")
        unknown = [c for c in cells if c not in self.cells]
        if unknown:
            raise InvalidArgument("cells", f"{clip(unknown[0])} is not a Cell of this Region (known: "
                                           f"{', '.join(sorted(self.cells))})")
        return tuple(cells)

    async def create_app(self, who: Principal, name: Any, cells: Any, *, production: bool = True,
                         group: Any = "", domain: Any = "", request_id: str) -> AppView:
        """Record the app (its creator its Owner) in one CAS transaction, then make its namespaces.

        ``group`` + ``domain``: the Nginx domain serving the app (both or neither); whether the
        caller may steer that domain's traffic is the entry point's check (it knows slb-core)."""
        check_request_id(request_id)
        name = check_app_name(name, "name")
        chosen = self._check_cells(cells)
        if not isinstance(production, bool):
            raise InvalidArgument("production", "must be true or false")
        group, domain = check_app_domain(group, domain)
        guard = await self._authorized(who, Action.APP_CREATE, name)
        now = self.runtime.wall_time()
        record = App(name, chosen, production, who.name, now, group=group, domain=domain)
        owner_compares, owner_puts = owner_ops(app_resource(name), who.name, now)
        claim = domain_claim_key(group, domain) if domain else ""
        claim_compares, claim_puts = ([Compare.missing(claim)], [PutOp(claim, name.encode())]) if claim else ([], [])
        images_compares, images_puts = await self._image_group_ops(who, name, now)
        revision = await self._commit(
            who, "app.create", name, _summary(f"created in {', '.join(chosen)}"), request_id,
            [Compare.missing(record.key), *guard, *owner_compares, *claim_compares, *images_compares],
            [PutOp(record.key, record.to_bytes()), *owner_puts, *claim_puts, *images_puts])
        if revision is None:
            existing = await self.store.get(record.key)
            if existing is not None:
                raise AlreadyExists(f"app {name} already exists")
            claimed = await self.store.get(claim) if claim else None
            if claimed is not None:
                raise AlreadyExists(f"domain {domain} in group {group} already serves app "
                                    f"{clip(claimed.value.decode('utf-8', 'replace'))}: one app per domain")
            raise Conflict(f"the members of app {name} changed while creating it; try again")
        return await self._after_write(who, name)

    async def _image_group_ops(self, who: Principal, name: str, now: float) -> tuple[list[Compare], list[PutOp]]:
        """The app's builds push to the image group named after it (``{app}/{app}``): created with the app, its
        creator its Owner, in the same transaction; or, when it exists, compared as it is if the creator is its
        Owner (or an admin) -- anyone else's group refuses the app, or its owner could push or delete the app's
        images (docs/registry.md)."""
        kv = await self.store.get(image_group_key(name))
        if kv is None:
            return image_group_create_ops(name, who.name, now)
        if who.role != "admin":
            role = (await load_memberships(self.store, group_resource(name))).role_of(who.name)
            if role is None or role < Role.OWNER:
                raise AlreadyExists(f"image group {name} exists and {who.name} is not its Owner: an app's builds "
                                    f"push to the image group named after it")
        return [Compare.mod_is(kv.key, kv.mod_revision)], []

    async def deploy(self, who: Principal, app: Any, draft: Draft, *, request_id: str) -> AppView:
        """A new version v<N> from ``draft`` over the latest version (prefill), in every Cell of the app."""
        check_request_id(request_id)
        app = check_app_name(app)
        if not isinstance(draft, Draft):
            raise InvalidArgument("version", "must be a Draft")
        for _ in range(self.max_attempts):
            app_kv, version_kvs, _, _ = await self._read(app)
            if app_kv is None:  # outsiders learn nothing more than NotFound either way
                await self._authorized(who, Action.APP_READ, app)
                raise NotFound(f"app {app} does not exist")
            record = self._app(app_kv, app)
            action = Action.VERSION_DEPLOY_PRODUCTION if record.production else Action.VERSION_DEPLOY
            guard = await self._authorized(who, action, app)
            if record.state != "active":
                raise FailedPrecondition(f"app {app} is being deleted")
            versions = self._versions(version_kvs)
            if len(versions) >= MAX_VERSIONS:
                raise FailedPrecondition(f"app {app} has {len(versions)} versions: delete old ones first")
            name = f"v{record.next_version}"
            version = self._version(record, name, self._prefill(record, versions), draft, who)
            bumped = replace(record, next_version=record.next_version + 1)
            revision = await self._commit(
                who, "version.deploy", app, f"deployed {name} ({version.image.rsplit(':', 1)[1][:12]}) to "
                                            f"{sum(version.replicas.values())} replicas", request_id,
                [Compare.mod_is(record.key, record.revision), Compare.missing(version.key), *guard],
                [PutOp(record.key, bumped.to_bytes()), PutOp(version.key, version.to_bytes())])
            if revision is not None:
                return await self._after_write(who, app)
        raise Conflict(f"app {app} kept changing while deploying; try again")

    def _version(self, app: App, name: str, base: Draft, draft: Draft, who: Principal) -> Version:
        """The version the draft asks for over ``base`` (prefill), every field checked."""
        def pick(field_name: str) -> Any:
            value = getattr(draft, field_name)
            return getattr(base, field_name) if value is None else value

        image = pick("image")
        if image is None:
            raise InvalidArgument("image", "the app's first version needs an image")
        replicas = pick("replicas")
        if replicas is None:
            raise InvalidArgument("replicas", "the app's first version needs replicas")
        per_cell = self._replicas(app, replicas)
        env = pick("env")
        if isinstance(env, Mapping):
            env = list(env.items())
        if not isinstance(env, list | tuple) or len(env) > MAX_ENV:
            raise InvalidArgument("env", f"at most {MAX_ENV} variables, as (name, value) pairs")
        env = tuple(tuple(p) if isinstance(p, list | tuple) else p for p in env)
        version = Version(app.name, name, image, per_cell, pick("cpu_millis"), pick("memory_mib"), env,
                          pick("port"), who.name, self.runtime.wall_time())
        for cell in per_cell:
            try:
                check_spec(version.spec(cell))
            except (ValueError, TypeError) as exc:
                field_name = str(exc).split(":", 1)[0]
                raise InvalidArgument(field_name if field_name in ("image", "replicas", "cpu_millis",
                                                                    "memory_mib", "env", "port") else "version",
                                      str(exc)) from None
        return version

    @staticmethod
    def _replicas(app: App, replicas: Any, cell: str | None = None) -> dict[str, int]:
        def count(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPLICAS:
                raise InvalidArgument("replicas", f"{clip(value)} is not a whole number from 0 to {MAX_REPLICAS}")
            return value

        if isinstance(replicas, Mapping):
            if set(replicas) != set(app.cells):
                raise InvalidArgument("replicas", f"a count for each Cell of the app: {', '.join(app.cells)}")
            return {c: count(replicas[c]) for c in app.cells}
        return {c: count(replicas) for c in app.cells}

    async def scale(self, who: Principal, app: Any, version: Any, replicas: Any, *, cell: Any = None,
                    request_id: str) -> AppView:
        """Set a version's replicas in one Cell (``cell``) or in all of them."""
        check_request_id(request_id)
        app, version = check_app_name(app), check_version_name(version)
        if cell is not None and (not isinstance(cell, str) or not DNS_LABEL.fullmatch(cell)):
            raise InvalidArgument("cell", f"{clip(cell)} is not a Cell name")
        for _ in range(self.max_attempts):
            guard = await self._authorized(who, Action.APP_SCALE, app)
            app_kv, version_kvs, _, _ = await self._read(app)
            record = self._app(app_kv, app)
            current = next((v for v in self._versions(version_kvs) if v.name == version), None)
            if current is None or current.state != "active":
                raise NotFound(f"version {version} of app {app} does not exist")
            if cell is not None and cell not in record.cells:
                raise InvalidArgument("cell", f"app {app} does not run in {cell} (its Cells: "
                                              f"{', '.join(record.cells)})")
            wanted = dict(current.replicas)
            wanted.update(self._replicas(record, replicas) if cell is None else {cell: self._replicas(
                record, replicas)[cell]})
            if wanted == dict(current.replicas):
                return await self._after_write(who, app)  # already so: nothing written, nothing recorded
            scaled = replace(current, replicas=wanted, generation=current.generation + 1)
            shown = f"{wanted[cell]} in {cell}" if cell else (
                f"{replicas} in every Cell" if isinstance(replicas, int) else "a count per Cell")
            revision = await self._commit(
                who, "app.scale", app, _summary(f"{version} to {shown}"), request_id,
                [Compare.mod_is(current.key, current.revision), *guard], [PutOp(current.key, scaled.to_bytes())])
            if revision is not None:
                return await self._after_write(who, app)
        raise Conflict(f"version {version} of {app} kept changing while scaling; try again")

    async def delete_version(self, who: Principal, app: Any, version: Any, *, request_id: str) -> AppView:
        """Mark the version deleting (recorded), then remove its controllers; the record goes when all Cells did."""
        check_request_id(request_id)
        app, version = check_app_name(app), check_version_name(version)
        for _ in range(self.max_attempts):
            app_kv, version_kvs, _, _ = await self._read(app)
            if app_kv is None:
                await self._authorized(who, Action.APP_READ, app)
                raise NotFound(f"app {app} does not exist")
            record = self._app(app_kv, app)
            action = Action.VERSION_DEPLOY_PRODUCTION if record.production else Action.VERSION_DEPLOY
            guard = await self._authorized(who, action, app)
            current = next((v for v in self._versions(version_kvs) if v.name == version), None)
            if current is None:
                raise NotFound(f"version {version} of app {app} does not exist")
            if current.state == "deleting":
                return await self._after_write(who, app)  # asked already: finish it, record nothing new
            gone = replace(current, state="deleting", generation=current.generation + 1)
            revision = await self._commit(who, "version.delete", app, f"deleted {version}", request_id,
                                          [Compare.mod_is(current.key, current.revision), *guard],
                                          [PutOp(current.key, gone.to_bytes())])
            if revision is not None:
                return await self._after_write(who, app)
        raise Conflict(f"version {version} of {app} kept changing while deleting it; try again")

    async def delete_app(self, who: Principal, app: Any, *, request_id: str) -> AppView:
        """Delete an app that has no versions: marked deleting (recorded), namespaces removed, then the record."""
        check_request_id(request_id)
        app = check_app_name(app)
        for _ in range(self.max_attempts):
            guard = await self._authorized(who, Action.APP_DELETE, app)
            app_kv, version_kvs, _, _ = await self._read(app)
            record = self._app(app_kv, app)
            if version_kvs:
                first = version_kvs[0].key.removeprefix(versions_prefix(app))
                raise FailedPrecondition(f"app {app} still has versions (e.g. {first}): delete them first")
            if record.state == "deleting":
                return await self._after_write(who, app)
            gone = replace(record, state="deleting")
            # A version created after the read moved the app record's mod_revision: the txn fails.
            revision = await self._commit(who, "app.delete", app, "deleted", request_id,
                                          [Compare.mod_is(record.key, record.revision), *guard],
                                          [PutOp(record.key, gone.to_bytes())])
            if revision is not None:
                return await self._after_write(who, app)
        raise Conflict(f"app {app} kept changing while deleting it; try again")

    async def _after_write(self, who: Principal, app: str) -> AppView:
        """Reconcile the app now; the view after it (with the Cells still pending), or the last one when it went."""
        before = await self.store.get(app_key(app))
        done = await self.reconcile(app)
        app_kv, version_kvs, status_kvs, _ = await self._read(app)
        if app_kv is None:  # a deletion completed: the record as it was last
            return AppView(self._app(before, app), (), done.pending)
        statuses = self._statuses(status_kvs)
        return AppView(self._app(app_kv, app), tuple(VersionView(v, statuses.get(v.name, VersionStatus()))
                                                     for v in self._versions(version_kvs)), done.pending)

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, app: str) -> Reconciled:
        """Make every Cell of ``app`` match its records (module docstring); never raises for a Cell's failure.

        A Store error propagates (nothing to reconcile against); a corrupt record is
        traced and its app left alone (guessing could delete what it meant to keep).
        """
        app_kv, version_kvs, status_kvs, _ = await self._read(app)
        if app_kv is None:
            return Reconciled(app, {})
        try:
            record = decode_app(app_kv)
            versions = [decode_version(kv) for kv in version_kvs]
        except InvalidRecord as exc:
            self.runtime.trace("apps.reconcile.corrupt", app=app, error=str(exc)[:200])
            return Reconciled(app, {"*": f"corrupt record: {str(exc)[:200]}"})
        versions.sort(key=lambda v: v.number)
        if record.state == "active":
            await self._repair_shares(record, versions)
        statuses = self._statuses(status_kvs)
        pending: dict[str, str] = {}
        removed: list[str] = []
        orphans: list[str] = []
        if record.state == "deleting":
            for cell in record.cells:
                try:
                    await self._workloads(cell).delete_namespace(app)
                except (ClusterUnavailable, WorkloadRejected, WorkloadNotFound, ValueError) as exc:
                    pending[cell] = str(exc)[:300]
            if not pending and not versions:
                # No version can appear meanwhile: creating one rewrites the app record (next_version).
                # The domain's claim goes too, if it is this app's (apps made before claims have none).
                claimed = await self.store.get(domain_claim_key(record.group, record.domain)) \
                    if record.domain else None
                unclaim = ([Compare.mod_is(claimed.key, claimed.mod_revision)], [DeleteOp(claimed.key)]) \
                    if claimed is not None and claimed.value == app.encode() else ([], [])
                result = await self.store.txn(
                    [Compare.mod_is(record.key, record.revision), *unclaim[0]],
                    [DeleteOp(record.key), DeleteOp(f"{STATUS}{app}/", prefix=True), *delete_ops(app_resource(app)),
                     *unclaim[1]])
                if result.succeeded:
                    removed.append("app")
                    self.runtime.trace("apps.app.removed", app=app, revision=result.revision)
            return Reconciled(app, pending, tuple(removed))
        applied: dict[str, dict[str, int]] = {v.name: {} for v in versions}
        ready: dict[str, dict[str, int]] = {v.name: {} for v in versions}
        errors: dict[str, dict[str, str]] = {v.name: {} for v in versions}
        for cell in record.cells:
            try:
                workloads = self._workloads(cell)
                await workloads.ensure_namespace(app)
                present = {c.name: c for c in await workloads.list_controllers(app)}
                live = {controller_name(app, v.name) for v in versions}
                for name in present:
                    suffix = name.removeprefix(f"{app}-")
                    if name not in live and name.startswith(f"{app}-") and VERSION.fullmatch(suffix) \
                            and version_number(suffix) < record.next_version:
                        await workloads.delete_controller(app, name)  # no record asks for it: an orphan
                        orphans.append(f"{cell}/{name}")
                for version in versions:
                    try:
                        if version.state == "deleting":
                            await workloads.delete_controller(app, controller_name(app, version.name))
                            applied[version.name][cell] = -1
                        elif cell in version.replicas:
                            info = await workloads.apply_controller(version.spec(cell))
                            applied[version.name][cell] = version.generation
                            ready[version.name][cell] = info.ready_replicas
                    except (WorkloadRejected, WorkloadNotFound, ValueError) as exc:
                        errors[version.name][cell] = str(exc)[:300]
                        pending[cell] = str(exc)[:300]
            except (ClusterUnavailable, WorkloadRejected, WorkloadNotFound, ValueError) as exc:
                pending[cell] = str(exc)[:300]
                for version in versions:
                    errors[version.name][cell] = str(exc)[:300]
        for version in versions:
            old = statuses.get(version.name, VersionStatus())
            keep = {c: g for c, g in old.applied.items() if c not in applied[version.name]
                    and c not in errors[version.name]}  # Cells not reached keep what they had
            now = VersionStatus({**keep, **applied[version.name]}, {**old.ready, **ready[version.name]},
                                errors[version.name])
            if version.state == "deleting" and all(now.applied.get(c) == -1 for c in version.replicas):
                result = await self.store.txn([Compare.mod_is(version.key, version.revision)],
                                              [DeleteOp(version.key), DeleteOp(status_key(app, version.name))])
                if result.succeeded:
                    removed.append(version.name)
                    self.runtime.trace("apps.version.removed", app=app, version=version.name,
                                       revision=result.revision)
                continue
            if now.to_bytes() != old.to_bytes() or not old.revision:
                key = status_key(app, version.name)
                # The status follows the version it was computed from: a changed version makes it fail.
                await self.store.txn([Compare.mod_is(version.key, version.revision),
                                      Compare.mod_is(key, old.revision)], [PutOp(key, now.to_bytes())])
        if orphans:
            self.runtime.trace("apps.orphans.deleted", app=app, controllers=",".join(orphans))
        return Reconciled(app, pending, tuple(removed), tuple(orphans))

    async def _repair_shares(self, record: App, versions: Sequence[Version]) -> None:
        """Make the domain's shares name the active versions (``repaired_shares``); a failure is traced."""
        if self.shares is None or not record.domain:
            return
        active = [v.name for v in versions if v.state == "active"]
        try:
            try:
                current = await self.shares.get_shares(record.group, record.domain)
            except (ValueError, port.CorruptRecord):  # a shares record that does not decode: written anew
                current = None
            wanted = repaired_shares(current, active)
            if wanted is not None and wanted != current:
                await self.shares.set_shares(record.group, record.domain, wanted)
                self.runtime.trace("apps.shares", app=record.name, domain=record.domain,
                                   shares=",".join(f"{v}={s}" for v, s in wanted.items()))
        except (port.ControlError, ValueError) as exc:
            self.runtime.trace("apps.shares.failed", app=record.name, domain=record.domain, error=str(exc)[:200])

    def _workloads(self, cell: str) -> Workloads:
        workloads = self.cells.get(cell)
        if workloads is None:
            raise ValueError(f"Cell {cell} is not configured in this control service")
        return workloads

    async def reconcile_all(self) -> list[Reconciled]:
        """Reconcile every app (at start-up, and on a period): finishes whatever a crash interrupted."""
        listing = await self.store.range(APPS)
        names = [kv.key.removeprefix(APPS) for kv in listing.kvs if DNS_LABEL.fullmatch(kv.key.removeprefix(APPS))]
        done: list[Reconciled] = []
        # A few apps at a time: one by one, a Region of hundreds of apps took longer than a reconcile
        # period (each app is a round trip to every Cell); all at once would flood the API servers.
        for start in range(0, len(names), RECONCILE_BATCH):
            tasks = [self.runtime.spawn(self.reconcile(name), name=f"reconcile/{name}")
                     for name in names[start:start + RECONCILE_BATCH]]
            failure: Exception | None = None
            for task in tasks:  # join every task of the batch, then raise the first failure
                try:
                    done.append(await task.join())
                except Exception as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
        return done
