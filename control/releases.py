"""Gray releases: a new version's share of an app's traffic raised in steps, checked, reverted or completed.

A **release** moves an app's traffic from the version serving it (``old``) to a newer one
(``new``) in steps of the new version's share (default 1, 10, 50, 100 %), through the
domain's traffic shares (slb-core's record, written through the ``TrafficShares`` port: the
Nginx weights change in place, no reload). It is one operation across the app's Cells:
the shares live in the Nginx group, so every Cell's pods move together.

Each step bakes ``bake_seconds``; every ``check_seconds`` the controller:

1. **probes every Cell** of the app through the Workloads port; any Cell that does not
   answer **pauses** the release (no evaluation, no step: a Cell outage is not the new
   version's fault); when all answer again it **resumes** and the current step's bake
   starts over;
2. **measures the interval** since the last check from the traffic records the Nginx
   hosts write (``foundation.logic.slb_traffic``: cumulative counts per version), as
   deltas summed over hosts; a host whose count went down or whose ``epoch`` changed
   (Nginx restarted) contributes its new value; a host not seen before, its whole value;
3. calls the interval **bad** when the new version answered at least ``min_requests``
   and its error rate exceeds the old one's by more than ``max_error_increase``, or its
   mean latency exceeds ``max_latency_ratio`` times the old one's (only when the old
   version answered anything in the interval); **good** otherwise; an interval with
   fewer requests to the new version is neither (the streak stays);
4. after ``bad_checks`` bad intervals in a row: **revert**: shares ``{old: 100, new: 0}``,
   then the new version deleted in every Cell (``delete_version`` as the principal
   ``release-controller``);
5. otherwise adds the time since the last check to ``baked``; a step baked long enough
   moves to the next, unless the streak of bad intervals is not 0 (the last evaluated
   interval was bad: the step holds until a good one or the revert); after the 100 % step's
   bake, likewise, **completes**: the old version (which got no new requests since the
   100 % step began: drained in place) is deleted.

States (``state``): ``running`` -> ``paused`` <-> ``running``; ``running``/``paused`` ->
``reverting`` -> ``reverted``; ``running`` -> ``completing`` -> ``completed``. ``reverting``
and ``completing`` are intents written before their side effects, so a restarted controller
finishes them (both are idempotent: shares set again, a version being deleted is left to
the apps reconciler, one already gone is fine). A release whose ``new`` version disappears
(deleted by hand) ends ``reverted``; one whose ``old`` version disappears ends ``completed``.

Record ``/platform/releases/{app}`` (docs/keys.md), one per app; a finished one stays
readable until the next release starts. This module is its one encoder and decoder; the
decoder validates everything (``InvalidRelease``: a corrupt record is traced and left
alone by the loop, a call that needs it fails with ``CorruptRecord``). Progress is kept as
``baked`` seconds and the counts last seen per host (``baseline``), never as absolute
times, and written by CAS at every check: a control service restarted (even SIGKILLed)
picks the release up where the record says (the time between its last check and the
restart does not count as baked). Every transition is one CAS of the record; a user's
call (start, revert) carries its activity record in that transaction (``control.activity``);
a transition the controller makes carries one by the principal ``release-controller``
(check-by-check progress carries none: it changes no state). The shares are written after
the record (a crash in between: every check writes the record's shares again).

Rights: ``version.release`` (Master) on a production app, ``version.deploy`` (Developer) on
a non-production one (docs/roles.md). Determinism: time is ``runtime.now()`` (records:
``wall_time()``), hosts and releases are taken in key order, nothing draws randomness.

Pure control-service logic over the Store, Runtime and Workloads ports and two small
Protocols (``AppsPort``: ``control.apps.Apps``; ``TrafficShares``: slb-core behind an
adapter of the entry point). It must not know gRPC, etcd, Nginx or Kubernetes' JSON, and it
does not import ``control.apps`` or ``control.slb_core``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from control.activity import activity_ops, check_request_id
from control.auth import Principal
from control.echo import clip
from control.members import Action, Resource, authorize, load_memberships
from foundation.logic.slb_domain import OWNER, load_json
from foundation.logic.slb_traffic import TrafficError, VersionCounts, decode_traffic, traffic_prefix
from foundation.ports import Compare, KeyValue, PutOp, Runtime, Store, StoreError
from foundation.ports import control as port
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.runtime import Event
from foundation.ports.traffic_shares import TrafficShares
from foundation.ports.workloads import DNS_LABEL, WorkloadNotFound, WorkloadRejected, Workloads, controller_name

RELEASES = "/platform/releases/"
CONTROLLER = Principal("release-controller", "admin")  # who the controller's transitions are recorded as
VERSION = re.compile(r"v([1-9][0-9]{0,8})")
HOST = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
DEFAULT_STEPS = (1, 10, 50, 100)
MAX_STEPS = 16
MAX_HOSTS = 1024  # Nginx hosts kept in a record's baseline
MAX_RECORD = 1024 * 1024  # a baseline of MAX_HOSTS hosts of 253-character names and 2**53 counts takes ~400 KiB
MAX_COUNT = 2**53  # requests and errors in a record (slb_traffic's bound)
MAX_SECONDS = 1e15  # request seconds in a record (slb_traffic has no bound: larger ones are cut to this)
MAX_REASON = 300
IDLE_SECONDS = 5.0  # how often the loop looks for releases when none is active
State = Literal["running", "paused", "reverting", "reverted", "completing", "completed"]
STATES: tuple[State, ...] = ("running", "paused", "reverting", "reverted", "completing", "completed")
ACTIVE: tuple[State, ...] = ("running", "paused", "reverting", "completing")
Counts = tuple[int, int, float]  # requests, errors, seconds
ZERO: Counts = (0, 0, 0.0)


# --------------------------------------------------------------------------- errors


class ReleasesError(port.ControlError):
    """Base of this module's typed errors; each is the ControlClient port's error of its kind."""


class NotFound(ReleasesError, port.NotFound):
    pass


class InvalidArgument(ReleasesError, port.InvalidArgument):
    pass


class FailedPrecondition(ReleasesError, port.FailedPrecondition):
    pass


class Conflict(ReleasesError, port.Conflict):
    pass


class CorruptRecord(ReleasesError, port.CorruptRecord):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the record at {key[:200]} is unreadable: {reason}")
        self.key = key


class InvalidRelease(ValueError):
    """A release record read from the store does not decode (what ``decode_release`` raises)."""


# --------------------------------------------------------------------------- the ports it meets


class AppLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def cells(self) -> tuple[str, ...]: ...
    @property
    def production(self) -> bool: ...
    @property
    def state(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def domain(self) -> str: ...


class VersionLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...


class VersionViewLike(Protocol):
    @property
    def version(self) -> VersionLike: ...


class AppViewLike(Protocol):
    @property
    def app(self) -> AppLike: ...
    @property
    def versions(self) -> Sequence[VersionViewLike]: ...


class AppsPort(Protocol):
    """What releases need of ``control.apps.Apps`` (wired by the entry point)."""

    async def show(self, who: Principal, app: Any) -> AppViewLike: ...

    async def delete_version(self, who: Principal, app: Any, version: Any, *, request_id: str) -> object: ...


# --------------------------------------------------------------------------- the record


def release_key(app: str) -> str:
    return f"{RELEASES}{app}"


def _number(value: Any, name: str, low: float, high: float, *, whole: bool = True) -> Any:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name} {clip(value)} is not a {'whole ' if whole else ''}number from {low:g} to "
                         f"{high:g}")
    return value if whole else float(value)


def _counts(value: Any, where: str) -> Counts:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"{where}: not [requests, errors, seconds]")
    requests = _number(value[0], f"{where} requests", 0, MAX_COUNT)
    errors = _number(value[1], f"{where} errors", 0, requests)
    return requests, errors, _number(value[2], f"{where} seconds", 0, MAX_SECONDS, whole=False)


@dataclass(frozen=True)
class Policy:
    """How a release proceeds: the steps of the new version's share and the thresholds of a bad interval."""

    steps: tuple[int, ...] = DEFAULT_STEPS
    bake_seconds: float = 300.0
    check_seconds: float = 30.0
    max_error_increase: float = 0.01  # error rate new - old, as a fraction of requests
    max_latency_ratio: float = 1.5  # mean latency new / old
    bad_checks: int = 3  # bad intervals in a row that revert
    min_requests: int = 20  # requests to the new version for an interval to count

    def check(self) -> Policy:
        """This policy (its seconds and ratios as floats) if every field is within bounds; else ``ValueError``
        naming the field first."""
        steps = self.steps
        if not isinstance(steps, tuple) or not 1 <= len(steps) <= MAX_STEPS or any(
                isinstance(s, bool) or not isinstance(s, int) for s in steps):
            raise ValueError(f"steps: 1 to {MAX_STEPS} whole percents")
        if any(not 1 <= s <= 100 for s in steps) or list(steps) != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"steps: {clip(list(steps))} must rise strictly from 1..100 and end at 100")
        return Policy(steps, _number(self.bake_seconds, "bake_seconds", 0, 7 * 86400, whole=False),
                      _number(self.check_seconds, "check_seconds", 0.01, 3600, whole=False),
                      _number(self.max_error_increase, "max_error_increase", 0, 1, whole=False),
                      _number(self.max_latency_ratio, "max_latency_ratio", 1, 1000, whole=False),
                      _number(self.bad_checks, "bad_checks", 1, 1000), _number(self.min_requests, "min_requests",
                                                                               1, 10**9))

    def to_json(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "bake_seconds": self.bake_seconds, "check_seconds": self.check_seconds,
                "max_error_increase": self.max_error_increase, "max_latency_ratio": self.max_latency_ratio,
                "bad_checks": self.bad_checks, "min_requests": self.min_requests}


@dataclass(frozen=True)
class HostMark:
    """What one Nginx host had counted for the two versions at the last check."""

    epoch: int
    old: Counts
    new: Counts


@dataclass(frozen=True)
class Release:
    app: str
    old: str  # the version serving before the release
    new: str  # the version released
    group: str
    domain: str
    policy: Policy
    state: State
    step: int  # index into policy.steps
    baked: float  # seconds baked at this step
    bad: int  # bad intervals in a row
    checks: int  # intervals evaluated
    baseline: Mapping[str, HostMark]  # host -> counts at the last check (empty: none taken yet)
    interval: Mapping[str, Counts]  # the last evaluated interval: {"old": …, "new": …}
    reason: str  # why the last transition happened
    started_by: str
    started_at: float  # wall time
    revision: int = 0  # mod_revision of the record

    @property
    def key(self) -> str:
        return release_key(self.app)

    @property
    def percent(self) -> int:
        """The new version's share at the current step."""
        return self.policy.steps[self.step]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_bytes(self) -> bytes:
        return json.dumps({
            "app": self.app, "old": self.old, "new": self.new, "group": self.group, "domain": self.domain,
            "policy": self.policy.to_json(), "state": self.state, "step": self.step, "baked": self.baked,
            "bad": self.bad, "checks": self.checks,
            "baseline": {h: [m.epoch, list(m.old), list(m.new)] for h, m in self.baseline.items()},
            "interval": {k: list(v) for k, v in self.interval.items()}, "reason": self.reason,
            "started_by": self.started_by, "started_at": self.started_at,
        }, sort_keys=True, separators=(",", ":")).encode()


FIELDS = {"app", "old", "new", "group", "domain", "policy", "state", "step", "baked", "bad", "checks", "baseline",
          "interval", "reason", "started_by", "started_at"}
POLICY_FIELDS = {"steps", "bake_seconds", "check_seconds", "max_error_increase", "max_latency_ratio", "bad_checks",
                 "min_requests"}


def decode_release(kv: KeyValue) -> Release:
    """The release stored at ``kv``, checked against its key; ``InvalidRelease`` for anything else."""
    try:
        if len(kv.value) > MAX_RECORD:
            raise ValueError(f"larger than {MAX_RECORD} bytes")
        data = load_json(kv.value)
        if not isinstance(data, dict) or set(data) != FIELDS:
            raise ValueError(f"not an object of {', '.join(sorted(FIELDS))}")
        app = data["app"]
        if not isinstance(app, str) or len(app) > 40 or not DNS_LABEL.fullmatch(app) or kv.key != release_key(app):
            raise ValueError(f"it holds app {clip(app)}")
        old, new = data["old"], data["new"]
        if not all(isinstance(v, str) and VERSION.fullmatch(v) for v in (old, new)) or old == new:
            raise ValueError("old and new are not two version names (v<N>)")
        group, domain = data["group"], data["domain"]
        if not isinstance(group, str) or not DNS_LABEL.fullmatch(group) or not isinstance(domain, str) \
                or not domain or len(domain) > 240 or not all(p and DNS_LABEL.fullmatch(p) for p in domain.split(".")):
            raise ValueError("group or domain is not a name")
        raw_policy = data["policy"]
        if not isinstance(raw_policy, dict) or set(raw_policy) != POLICY_FIELDS:
            raise ValueError(f"policy: not an object of {', '.join(sorted(POLICY_FIELDS))}")
        steps = raw_policy["steps"]
        if not isinstance(steps, list):
            raise ValueError("policy.steps is not a list")
        policy = Policy(tuple(steps), raw_policy["bake_seconds"], raw_policy["check_seconds"],
                        raw_policy["max_error_increase"], raw_policy["max_latency_ratio"], raw_policy["bad_checks"],
                        raw_policy["min_requests"]).check()
        state = data["state"]
        if state not in STATES:
            raise ValueError(f"state {clip(state)} is not one of {', '.join(STATES)}")
        step = _number(data["step"], "step", 0, len(policy.steps) - 1)
        baseline_data = data["baseline"]
        if not isinstance(baseline_data, dict) or len(baseline_data) > MAX_HOSTS:
            raise ValueError(f"baseline: an object of at most {MAX_HOSTS} hosts")
        baseline = {}
        for host, mark in sorted(baseline_data.items()):
            if not HOST.fullmatch(host) or not isinstance(mark, list) or len(mark) != 3:
                raise ValueError(f"baseline: {clip(host)} is not host: [epoch, old, new]")
            baseline[host] = HostMark(_number(mark[0], "epoch", 0, 2**53), _counts(mark[1], f"baseline {host} old"),
                                      _counts(mark[2], f"baseline {host} new"))
        interval_data = data["interval"]
        if not isinstance(interval_data, dict) or set(interval_data) - {"old", "new"}:
            raise ValueError("interval: an object of old and new")
        interval = {k: _counts(v, f"interval {k}") for k, v in sorted(interval_data.items())}
        reason = data["reason"]
        if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
            raise ValueError(f"reason: at most {MAX_REASON} printable characters")
        started_by = data["started_by"]
        if not isinstance(started_by, str) or not OWNER.fullmatch(started_by):
            raise ValueError(f"started_by {clip(started_by)} is not a principal name")
        return Release(app, old, new, group, domain, policy, state, step,
                       _number(data["baked"], "baked", 0, 1e9, whole=False), _number(data["bad"], "bad", 0, 10**9),
                       _number(data["checks"], "checks", 0, 10**12), baseline, interval, reason, started_by,
                       _number(data["started_at"], "started_at", 0, 1e11, whole=False), kv.mod_revision)
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError) as exc:
        raise InvalidRelease(f"{kv.key[:200]}: {exc}") from None


# --------------------------------------------------------------------------- the pure decisions


def step_shares(release: Release, versions: Sequence[str], percent: int | None = None) -> dict[str, int]:
    """The shares at ``percent`` for the new version (default: the current step's): the old version the rest,
    every other active version (``versions``) 0."""
    share = release.percent if percent is None else percent
    shares = {v: 0 for v in versions if v not in (release.old, release.new)}
    shares[release.old] = 100 - share
    shares[release.new] = share
    return shares


def _minus(now: Counts, before: Counts) -> Counts:
    return now[0] - before[0], now[1] - before[1], now[2] - before[2]


def _plus(a: Counts, b: Counts) -> Counts:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _consistent(delta: Counts) -> bool:
    """No count went down and no more errors than requests were added."""
    return delta[0] >= 0 and delta[2] >= 0 and 0 <= delta[1] <= delta[0]


def _bounded(counts: Counts) -> Counts:
    """``counts`` within what a record holds (sums over many hosts may pass ``MAX_COUNT``)."""
    requests = min(counts[0], MAX_COUNT)
    return requests, min(counts[1], requests), min(counts[2], MAX_SECONDS)


def measure(baseline: Mapping[str, HostMark], now: Mapping[str, HostMark]) -> dict[str, Counts]:
    """The interval's counts per side ("old", "new"), summed over the hosts of ``now``: per host the
    difference with ``baseline``; a host new to the baseline, or whose epoch changed or a count went
    down (Nginx restarted), or whose errors rose by more than its requests (a record that contradicts
    the last one: trusted no more than a restart), contributes its whole new value. The sums are
    bounded as a release record's counts are (``_bounded``), so what is measured is always recordable."""
    old, new = ZERO, ZERO
    for host, mark in now.items():
        before = baseline.get(host)
        deltas = (_minus(mark.old, before.old), _minus(mark.new, before.new)) if before is not None else None
        if before is None or before.epoch != mark.epoch or deltas is None or not all(map(_consistent, deltas)):
            old, new = _plus(old, mark.old), _plus(new, mark.new)
        else:
            old, new = _plus(old, deltas[0]), _plus(new, deltas[1])
    return {"old": _bounded(old), "new": _bounded(new)}


def verdict(policy: Policy, interval: Mapping[str, Counts]) -> tuple[bool | None, str]:
    """(True: bad, False: good, None: too few requests to the new version; the figures in words)."""
    old, new = interval.get("old", ZERO), interval.get("new", ZERO)
    err_new = new[1] / new[0] if new[0] else 0.0
    err_old = old[1] / old[0] if old[0] else 0.0
    lat_new = new[2] / new[0] if new[0] else 0.0
    lat_old = old[2] / old[0] if old[0] else 0.0
    words = (f"new {new[0]} requests, {err_new:.1%} errors, {lat_new * 1000:.0f} ms; old {old[0]} requests, "
             f"{err_old:.1%} errors, {lat_old * 1000:.0f} ms")
    if new[0] < policy.min_requests:
        return None, words
    if err_new - err_old > policy.max_error_increase:
        return True, words
    if old[0] and lat_new > policy.max_latency_ratio * lat_old:
        return True, words
    return False, words


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class ReleaseView:
    release: Release
    shares: Mapping[str, int] | None = field(default=None)  # the domain's shares as last read (None: unknown)


class Releases:
    """Start, revert and read gray releases; ``run`` is the controller loop that drives them.

    ``cells`` maps each Cell of the Region to its Workloads (for the probes); ``apps`` is
    ``control.apps.Apps`` over the same store; ``shares`` writes the domains' shares.
    """

    def __init__(self, store: Store, runtime: Runtime, apps: AppsPort, shares: TrafficShares,
                 cells: Mapping[str, Workloads], *, max_attempts: int = 16) -> None:
        self.store = store
        self.runtime = runtime
        self.apps = apps
        self.shares = shares
        self.cells = dict(cells)
        self.max_attempts = max_attempts
        self._last_check: dict[str, float] = {}  # app -> runtime.now() of its last check in this process
        self._wake: Event | None = None  # set by start(): the loop looks at the new release at once

    # ------------------------------------------------------------------ reads

    async def _read(self, app: str) -> Release | None:
        kv = await self.store.get(release_key(app))
        if kv is None:
            return None
        try:
            return decode_release(kv)
        except InvalidRelease as exc:
            raise CorruptRecord(kv.key, str(exc)) from None

    async def _authorized(self, who: Principal, app: str, production: bool | None) -> list[Compare]:
        """The caller may release ``app`` (version.release, or version.deploy on a non-production app)."""
        found = await load_memberships(self.store, Resource("app", app))
        if production is None:
            authorize(who, Action.APP_READ, Resource("app", app), found)
            return found.guard(who.name)
        action = Action.VERSION_RELEASE if production else Action.VERSION_DEPLOY
        authorize(who, action, Resource("app", app), found)
        return found.guard(who.name)

    async def get(self, who: Principal, app: Any) -> ReleaseView:
        """The app's release (the running one, or the last finished one); NotFound when it never had one."""
        app = _app_name(app)
        await self._authorized(who, app, None)
        release = await self._read(app)
        if release is None:
            raise NotFound(f"app {app} has no release")
        return ReleaseView(release, await self._shares_or_none(release))

    async def _shares_or_none(self, release: Release) -> dict[str, int] | None:
        try:
            return await self.shares.get_shares(release.group, release.domain)
        except (port.ControlError, ValueError):
            return None

    # ------------------------------------------------------------------ user calls

    async def start(self, who: Principal, app: Any, version: Any, *, steps: Sequence[int] = DEFAULT_STEPS,
                    bake_seconds: float = 300.0, check_seconds: float = 30.0, max_error_increase: float = 0.01,
                    max_latency_ratio: float = 1.5, bad_checks: int = 3, min_requests: int = 20,
                    request_id: str) -> ReleaseView:
        """Start releasing ``version`` of ``app``: the record (with the caller's activity record) in one CAS,
        then the first step's shares."""
        check_request_id(request_id)
        app = _app_name(app)
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            raise InvalidArgument("version", f"{clip(version)} is not a version name (v<N>)")
        if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
            raise InvalidArgument("steps", "a list of percents")
        try:
            policy = Policy(tuple(steps), bake_seconds, check_seconds, max_error_increase, max_latency_ratio,
                            bad_checks, min_requests).check()
        except (ValueError, TypeError) as exc:
            name = str(exc).split(" ", 1)[0].rstrip(":")
            raise InvalidArgument(name if name in POLICY_FIELDS else "steps", str(exc)) from None
        for _ in range(self.max_attempts):
            view = await self.apps.show(who, app)  # NotFound for outsiders, before anything else
            record = view.app
            guard = await self._authorized(who, app, record.production)
            if not record.domain:
                raise FailedPrecondition(f"app {app} has no domain: a release moves a domain's traffic (create the "
                                         "app with a domain)")
            if record.state != "active":
                raise FailedPrecondition(f"app {app} is being deleted")
            active = [v.version.name for v in view.versions if v.version.state == "active"]
            if version not in active:
                raise NotFound(f"version {version} of app {app} does not exist (or is being deleted)")
            kv = await self.store.get(release_key(app))
            current = None
            if kv is not None:
                try:
                    current = decode_release(kv)
                except InvalidRelease as exc:  # unreadable: a new release replaces it (the loop skips it anyway)
                    self.runtime.trace("releases.corrupt.replaced", app=app, error=str(exc)[:200])
            if current is not None and current.active:
                raise FailedPrecondition(f"app {app} is already releasing {current.new} ({current.state}): "
                                         "revert it or wait for it to finish")
            shares = await self._shares_or_none_raw(record.group, record.domain)
            old = _serving(shares, active, version)
            if old is None:
                raise FailedPrecondition(f"app {app} has no other active version to release {version} from")
            if shares and shares.get(old, 0) == 0:  # every other version at 0: nothing to move traffic from
                raise FailedPrecondition(f"{version} already serves all the traffic of app {app}: no other version "
                                         "has a share to release it from")
            release = Release(app, old, version, record.group, record.domain, policy, "running", 0, 0.0, 0, 0,
                              await self._snapshot(record.group, record.domain, old, version), {},
                              f"started by {who.name}", who.name, self.runtime.wall_time())
            compares = [Compare.mod_is(release.key, kv.mod_revision) if kv else Compare.missing(release.key),
                        *guard]
            done = await self._write(release, compares, who, "release.start",
                                     f"release of {version} over {old} in steps {'/'.join(map(str, policy.steps))}",
                                     request_id)
            if done is not None:
                self._last_check[app] = self.runtime.now()
                await self._set_shares(done, step_shares(done, active))
                if self._wake is not None:
                    self._wake.set()
                return ReleaseView(done, await self._shares_or_none(done))
        raise Conflict(f"the release of {app} kept changing while starting it; try again")

    async def _shares_or_none_raw(self, group: str, domain: str) -> dict[str, int] | None:
        try:
            return await self.shares.get_shares(group, domain)
        except (ValueError, port.CorruptRecord):  # a shares record that does not decode: as if none
            return None

    async def revert(self, who: Principal, app: Any, *, request_id: str) -> ReleaseView:
        """Revert the app's running or paused release: recorded as the caller's, then carried out."""
        check_request_id(request_id)
        app = _app_name(app)
        for _ in range(self.max_attempts):
            view = await self.apps.show(who, app)
            guard = await self._authorized(who, app, view.app.production)
            release = await self._read(app)
            if release is None:
                raise NotFound(f"app {app} has no release")
            if release.state in ("reverting", "reverted"):
                return await self._finish(release) if release.state == "reverting" else ReleaseView(release)
            if release.state in ("completing", "completed"):
                raise FailedPrecondition(f"the release of {release.new} is {release.state}: the old version "
                                         f"{release.old} is being deleted; deploy it again to go back")
            reverting = replace(release, state="reverting", reason=f"reverted by {who.name}")
            done = await self._write(reverting, [Compare.mod_is(release.key, release.revision), *guard], who,
                                     "release.revert", f"revert of {release.new} to {release.old} at "
                                                       f"{release.percent}%", request_id)
            if done is not None:
                return await self._finish(done)
        raise Conflict(f"the release of {app} kept changing while reverting it; try again")

    # ------------------------------------------------------------------ the controller

    async def run(self) -> None:
        """The controller loop: every release is checked every ``check_seconds`` of its own; errors are traced."""
        while True:
            wait = IDLE_SECONDS
            self._wake = self.runtime.event()
            try:
                wait = await self.tick()
            except (StoreError, port.ControlError) as exc:
                self.runtime.trace("releases.tick.failed", error=str(exc)[:200])
            with contextlib.suppress(TimeoutError):
                await self.runtime.wait_for(self._wake.wait(), wait)

    async def tick(self) -> float:
        """Check every active release that is due; the seconds until the next one is (at most IDLE_SECONDS)."""
        listing = await self.store.range(RELEASES)
        wait = IDLE_SECONDS
        now = self.runtime.now()
        for kv in listing.kvs:
            try:
                release = decode_release(kv)
            except InvalidRelease as exc:
                self.runtime.trace("releases.corrupt", key=kv.key[:200], error=str(exc)[:200])
                continue
            if not release.active:
                self._last_check.pop(release.app, None)
                continue
            last = self._last_check.get(release.app)
            due = last is None or now - last >= release.policy.check_seconds - 1e-9
            if due:
                try:
                    await self.check(release.app)
                except (StoreError, port.ControlError) as exc:
                    self.runtime.trace("releases.check.failed", app=release.app, error=str(exc)[:200])
                wait = min(wait, release.policy.check_seconds)
            else:
                wait = min(wait, release.policy.check_seconds - (now - (last or now)))
        return max(wait, 0.01)

    async def check(self, app: str) -> Release | None:
        """One check of the app's release (module docstring); the release as it stands after it (None: none)."""
        kv = await self.store.get(release_key(app))
        if kv is None:
            return None
        try:
            release = decode_release(kv)
        except InvalidRelease as exc:
            self.runtime.trace("releases.corrupt", key=kv.key[:200], error=str(exc)[:200])
            return None
        now = self.runtime.now()
        last = self._last_check.get(app)
        elapsed = max(0.0, now - last) if last is not None else 0.0  # a restart's downtime does not bake
        self._last_check[app] = now
        if release.state in ("reverting", "completing"):
            return (await self._finish(release)).release
        if not release.active:
            return release
        try:
            view = await self.apps.show(CONTROLLER, app)
        except port.NotFound:
            return await self._end(release, "reverted", f"app {app} was deleted")
        active = [v.version.name for v in view.versions if v.version.state == "active"]
        if release.new not in active:
            return await self._end(release, "reverted", f"{release.new} was deleted")
        if release.old not in active:
            return await self._end(release, "completed", f"{release.old} was deleted")
        dark = await self._probe(view.app.cells, app, release.new)
        if dark:
            if release.state == "running":
                return await self._transition(release, replace(release, state="paused", baked=0.0, bad=0,
                                                               reason=f"Cell {dark} unreachable"), "release.pause")
            return release  # still paused
        marks = await self._snapshot(release.group, release.domain, release.old, release.new)
        if release.state == "paused":
            resumed = replace(release, state="running", baked=0.0, bad=0, baseline=marks,
                              reason=f"every Cell answers again: step {release.percent}% bakes again")
            done = await self._transition(release, resumed, "release.resume")
            if done.state == "running":  # a lost race: a revert's shares are not undone
                await self._set_shares(done, step_shares(done, active))
            return done
        await self._set_shares(release, step_shares(release, active))  # again: a crash or a race may have lost it
        interval = measure(release.baseline, marks) if release.baseline else {}
        bad_now, words = verdict(release.policy, interval) if interval else (
            None, "no Nginx host reports traffic of the domain" if not marks else "first reading of the traffic")
        bad = release.bad + 1 if bad_now else (0 if bad_now is False else release.bad)
        progressed = replace(release, baseline=marks, bad=bad, checks=release.checks + (1 if interval else 0),
                             interval=interval or release.interval, baked=release.baked + elapsed)
        self.runtime.trace("releases.check", app=app, step=release.percent, baked=round(progressed.baked, 3),
                           bad=bad, verdict=("bad" if bad_now else "good" if bad_now is False else "-"))
        if bad >= release.policy.bad_checks:
            reverting = replace(progressed, state="reverting",
                                reason=f"{bad} bad intervals at {release.percent}%: {words}"[:MAX_REASON])
            done = await self._transition(release, reverting, "release.revert")
            return (await self._finish(done)).release
        if bad == 0 and progressed.baked + 1e-9 >= release.policy.bake_seconds:  # never on from a bad interval
            if release.step + 1 < len(release.policy.steps):
                stepped = replace(progressed, step=release.step + 1, baked=0.0,
                                  reason=f"{release.percent}% baked {progressed.baked:.0f} s: {words}"[:MAX_REASON])
                done = await self._transition(release, stepped, "release.step")
                if done.state == "running":  # lost to a revert (or a completion): its shares stand
                    await self._set_shares(done, step_shares(done, active))
                return done
            completing = replace(progressed, state="completing",
                                 reason=f"100% baked {progressed.baked:.0f} s: {words}"[:MAX_REASON])
            done = await self._transition(release, completing, "release.complete")
            return (await self._finish(done)).release
        return await self._progress(release, progressed)

    async def _finish(self, release: Release) -> ReleaseView:
        """Carry out a ``reverting`` or ``completing`` release (idempotent), then record it done."""
        versions = await self._active_versions(release.app)
        if release.state == "reverting":
            await self._set_shares(release, step_shares(release, versions, 0))
            await self._delete(release, release.new)
            release = await self._end(release, "reverted", release.reason)
        elif release.state == "completing":
            await self._set_shares(release, step_shares(release, versions, 100))
            await self._delete(release, release.old)
            release = await self._end(release, "completed", release.reason)
        return ReleaseView(release, await self._shares_or_none(release))

    async def _active_versions(self, app: str) -> list[str]:
        try:
            view = await self.apps.show(CONTROLLER, app)
        except port.NotFound:
            return []
        return [v.version.name for v in view.versions if v.version.state == "active"]

    async def _delete(self, release: Release, version: str) -> None:
        with contextlib.suppress(port.NotFound):  # gone already (a restarted controller, or someone deleted it)
            await self.apps.delete_version(CONTROLLER, release.app, version,
                                           request_id=f"{release.app}-{version}-r{release.revision}"[:64])

    async def _end(self, release: Release, state: State, reason: str) -> Release:
        action = "release.revert" if state == "reverted" else "release.complete"
        return await self._transition(release, replace(release, state=state, reason=reason[:MAX_REASON]), action,
                                      done_state=state)

    async def _transition(self, before: Release, after: Release, action: str, *,
                          done_state: str | None = None) -> Release:
        """One CAS of the record from ``before`` to ``after`` with the controller's activity record; on a lost
        race the record as it now is (the next check decides again)."""
        result = f"{after.new} {done_state or after.state} at {after.percent}%: {after.reason}"
        done = await self._write(after, [Compare.mod_is(before.key, before.revision)], CONTROLLER, action,
                                 result[:200], f"{after.app}-r{before.revision}"[:64])
        if done is None:
            return await self._read(before.app) or before
        return done

    async def _progress(self, before: Release, after: Release) -> Release:
        """A check's progress (baked, counts seen): one CAS of the record, no activity (no state changed)."""
        done = await self.store.txn([Compare.mod_is(before.key, before.revision)],
                                    [PutOp(after.key, after.to_bytes())])
        return replace(after, revision=done.revision) if done.succeeded else (await self._read(before.app) or before)

    async def _write(self, release: Release, compares: Sequence[Compare], who: Principal, action: str, result: str,
                     request_id: str) -> Release | None:
        logged = activity_ops(who, action, Resource("app", release.app), _summary(result),
                              self.runtime.wall_time(), request_id=request_id)
        done = await self.store.txn([*compares, *logged.compares], [PutOp(release.key, release.to_bytes()),
                                                                   *logged.ops])
        if not done.succeeded:
            return None
        self.runtime.trace(action.replace("release.", "releases."), app=release.app, state=release.state,
                           step=release.percent, by=who.name, revision=done.revision)
        return replace(release, revision=done.revision)

    async def _set_shares(self, release: Release, shares: Mapping[str, int]) -> None:
        """Write the shares unless they are so already; a failure is traced (the next check writes them again)."""
        try:
            current = await self._shares_or_none_raw(release.group, release.domain)
            if current is not None and dict(current) == dict(shares):
                return
            await self.shares.set_shares(release.group, release.domain, shares)
            self.runtime.trace("releases.shares", app=release.app,
                               shares=",".join(f"{v}={s}" for v, s in shares.items()))
        except (port.ControlError, ValueError) as exc:
            self.runtime.trace("releases.shares.failed", app=release.app, error=str(exc)[:200])

    async def _probe(self, cells: Sequence[str], app: str, version: str) -> str | None:
        """The first Cell of the app whose API does not answer (None: all do). An answer of any kind counts,
        a refusal or "no such namespace" included: the Cell is up, the apps reconciler repairs what it lacks."""
        for cell in cells:
            workloads = self.cells.get(cell)
            if workloads is None:
                return cell
            try:
                await workloads.get_controller(app, controller_name(app, version))
            except ClusterUnavailable:
                return cell
            except (WorkloadRejected, WorkloadNotFound, ValueError):
                continue
        return None

    async def _snapshot(self, group: str, domain: str, old: str, new: str) -> dict[str, HostMark]:
        """Every Nginx host's cumulative counts of the two versions on the domain (hosts in key order);
        records that do not decode are traced and left out."""
        listing = await self.store.range(traffic_prefix(group))
        marks: dict[str, HostMark] = {}
        for kv in listing.kvs:
            try:
                traffic = decode_traffic(kv.key, kv.value)
            except TrafficError as exc:
                self.runtime.trace("releases.traffic.corrupt", key=kv.key[:200], error=str(exc)[:200])
                continue
            versions = traffic.domains.get(domain, {})
            if not HOST.fullmatch(traffic.host) or len(marks) >= MAX_HOSTS:
                continue
            marks[traffic.host] = HostMark(traffic.epoch, _as_counts(versions.get(old)),
                                           _as_counts(versions.get(new)))
        return marks


def _as_counts(counts: VersionCounts | None) -> Counts:
    """A traffic record's counts as a release records them (its seconds, unbounded there, bounded here)."""
    return _bounded((counts.requests, counts.errors, counts.seconds)) if counts is not None else ZERO


def _serving(shares: Mapping[str, int] | None, active: Sequence[str], new: str) -> str | None:
    """The version a release of ``new`` moves traffic from: the active one with the largest share (ties: the
    lowest-numbered), or without shares the lowest-numbered active one."""
    others = [v for v in active if v != new]
    if not others:
        return None
    if shares:
        return max(others, key=lambda v: (shares.get(v, 0), -others.index(v)))
    return others[0]


def _app_name(app: Any) -> str:
    if not isinstance(app, str) or len(app) > 40 or not DNS_LABEL.fullmatch(app):
        raise InvalidArgument("app", f"{clip(app)} is not an app name")
    return app


def _summary(text: str) -> str:
    return text if len(text) <= 200 else text[:199] + "…"
