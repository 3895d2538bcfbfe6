"""Discovery: the ready pods of every app, across all its Cells, become its domains' upstream servers.

An app is a namespace with one Service in each Cell it runs in. A **binding** says
which domain of which Nginx group serves it and on which port. Discovery lists and
then watches the endpoints of every Cell (the Cluster port), keeps the **ready**
addresses per (Cell, app), and whenever the union over Cells changes, calls the control
service's ``SetUpstreams`` with the result (the ControlClient port: over gRPC with its
token, or slb-core in-process in the sim, as the ``discovery`` principal either way, so
the service's authorisation decides, as for any client). A pod joins only once its
readiness probe passes: not-ready addresses are never pushed. A refused token
(``PermissionDenied``, ``Unauthenticated``) is logged as an error and nothing is pushed.

**Versions** (gray releases): each ready address is pushed with the app version its pod
runs when the Cell says (``Endpoints.ready_versions``): ``a.b.c.d:port version=v2``; an
address of unknown version is pushed untagged. Discovery always pushes weight 1:
slb-core weighs the servers by the domain's traffic shares (``foundation.logic.slb_shares``).

**Drain** (scale-down without failed requests): before a pod is deleted, ``drain``
removes its address from every domain of its app, waits until every Nginx host of
the group reports the new revision applied (their status records), and only then
returns, so the caller may delete the pod. A Cell whose API server is out of reach
keeps its last known addresses (its pods are probably still serving) while discovery
retries; an app whose last ready address disappears is pushed as an empty list.

**After a (re)start** discovery knows nothing of a Cell until it has listed it, and a
domain's record does not say which Cell an address came from. Until every Cell has been
listed once, each domain's servers are what the listed Cells have ready **plus** the
servers recorded in the domain (read from the control service before its first push) whose
address no listed Cell has reported for the app since the start (ready, not ready or
deleted) and that are not being drained. So nothing is removed for a Cell that has not
been listed: a Cell whose API is out of reach at start keeps the addresses it had, and a
restart never pushes the union of whichever Cell listed first. Addresses a listed Cell
reports are exact at once (a pod that went not-ready there leaves). Once every Cell has
been listed, the recorded servers play no part any more (``synced``).

**Drain records** (``/discovery/drains/{namespace}/{ip}``) let a user drain through etcd:
``leengine-discovery drain`` writes ``{"state": "requested"}``; discovery excludes the
address, drains, and writes ``draining`` then ``drained`` or ``failed`` with the report
(domains, hosts that confirmed and that did not, seconds taken). While a record exists the
address stays excluded, also across restarts (records are read before the first push);
deleting it (``leengine-discovery forget``) is ``forget``. Cell outages and recoveries are
logged at WARNING once per transition, drains at INFO.

Everything read back is validated again: an address that is not IPv4, a drain record or a
domain record that does not decode (however deeply nested) is logged and skipped, never a
crash.

Metrics (the Metrics port): pushes by result (``ok`` or the control service's error code,
a fixed set of gRPC code names), drains by result (``drained``, ``failed``) and their
duration, the Cells out of reach now, and the bound domains whose app has ready addresses
(not being drained) while no server of theirs is in force **as far as discovery knows**:
its last successful push of the domain named none, or none has succeeded since it started
(a failed push leaves the last successful one standing: Nginx keeps those servers). Etcd
errors of the drain records count under component ``discovery``.

It must not know Kubernetes clients, etcd, gRPC, Prometheus or slb-core's logic: only the
Cluster, ControlClient, Store (its drain records only), Runtime and Metrics ports.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from foundation.logic.mutex import Mutex
from foundation.logic.slb_domain import GROUP_NAME
from foundation.ports import Cancelled, Runtime, Store, StoreError
from foundation.ports.cluster import Cluster, ClusterUnavailable, Endpoints, ResourceExpired, ip_order
from foundation.ports.control import (
    ControlClient,
    ControlError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from foundation.ports.metrics import (
    DISCOVERY_CELLS_UNREACHABLE,
    DISCOVERY_DOMAINS_WITHOUT_UPSTREAM,
    DISCOVERY_DRAIN_SECONDS,
    DISCOVERY_DRAINS,
    DISCOVERY_PUSHES,
    ETCD_ERRORS,
    NO_METRICS,
    Metrics,
)
from foundation.ports.proxy_domain import VERSION
from foundation.ports.store import Compare, KeyValue, PutOp

log = logging.getLogger("leengine.discovery")  # the daemon configures it; the sim leaves it quiet

COMPONENT = "discovery"  # the etcd errors' component label
DRAINS_PREFIX = "/discovery/drains/"
DRAIN_STATES = ("requested", "draining", "drained", "failed")
MAX_DRAIN_RECORD = 64 * 1024  # bytes; a record of ours is a few hundred
MAX_DRAIN_TIMEOUT = 3600.0
# What decoding a corrupt record can raise (json: ValueError; too deeply nested: RecursionError).
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)


def is_ipv4(ip: object) -> bool:
    """One canonical spelling of an IPv4 address: what an upstream server may be."""
    if not isinstance(ip, str) or len(ip) > 15:
        return False
    try:
        return str(ipaddress.IPv4Address(ip)) == ip
    except ValueError:
        return False


def drain_key(namespace: str, ip: str) -> str:
    if not GROUP_NAME.fullmatch(namespace) or not is_ipv4(ip):
        raise ValueError(f"not a namespace and IPv4 address: {namespace[:64]!r} {ip[:64]!r}")
    return f"{DRAINS_PREFIX}{namespace}/{ip}"


def parse_drain_key(key: str) -> tuple[str, str]:
    """(namespace, ip) of a drain record's key; ValueError when it is not one."""
    namespace, _, ip = key.removeprefix(DRAINS_PREFIX).partition("/")
    if not key.startswith(DRAINS_PREFIX) or not GROUP_NAME.fullmatch(namespace) or not is_ipv4(ip):
        raise ValueError(f"{key[:120]!r} is not {DRAINS_PREFIX}<namespace>/<IPv4>")
    return namespace, ip


def decode_drain_record(value: bytes) -> dict[str, Any]:
    """A drain record's JSON, checked; ValueError naming what is wrong (never another exception)."""
    if len(value) > MAX_DRAIN_RECORD:
        raise ValueError(f"{len(value)} bytes, more than {MAX_DRAIN_RECORD}")
    try:
        record = json.loads(value)
    except UNREADABLE as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if record.get("state") not in DRAIN_STATES:
        raise ValueError(f"state: {str(record.get('state'))[:40]!r} is not one of {', '.join(DRAIN_STATES)}")
    timeout = record.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_DRAIN_TIMEOUT:
        raise ValueError(f"timeout: {str(timeout)[:40]!r} is not a number of seconds in (0, {MAX_DRAIN_TIMEOUT:g}]")
    took = record.get("took", 0.0)
    if isinstance(took, bool) or not isinstance(took, int | float) or not 0 <= took < float("inf"):
        raise ValueError(f"took: {str(took)[:40]!r} is not a number of seconds")
    for name in ("domains", "confirmed", "unconfirmed"):
        values = record.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{name}: not a list of names")
    if not isinstance(record.get("error", ""), str):
        raise ValueError("error: not a string")
    return record


def encode_drain_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Binding:
    namespace: str  # the app
    service: str
    port: int
    group: str
    domain: str


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: the domains the address left, the Nginx hosts that confirmed it and those that did not."""

    namespace: str
    ip: str
    drained: bool  # every host of every domain confirmed within the timeout
    domains: tuple[str, ...]  # "group/domain", sorted
    confirmed: tuple[str, ...]  # hosts that applied the removal (of every domain they serve)
    unconfirmed: tuple[str, ...]  # hosts that did not within the timeout
    took: float  # seconds
    error: str = ""

    def fields(self) -> dict[str, Any]:
        return {"drained": self.drained, "domains": list(self.domains), "confirmed": list(self.confirmed),
                "unconfirmed": list(self.unconfirmed), "took": round(self.took, 3), "error": self.error}


@dataclass
class DiscoveryStats:
    pushes: int = 0
    drains: int = 0
    cluster_errors: int = 0
    push_errors: int = 0


@dataclass
class Discovery:
    cells: dict[str, Cluster]
    control: ControlClient  # the control service, as the discovery principal: upstreams, domains, statuses
    store: Store  # the drain records (/discovery/drains/) only; upstreams go through ``control``
    runtime: Runtime
    bindings: list[Binding]
    retry: float = 1.0
    resync: float = 5.0
    linger: float = 30.0  # longest a forgotten address stays excluded while still listed ready
    stats: DiscoveryStats = field(default_factory=DiscoveryStats)
    metrics: Metrics = NO_METRICS

    def __post_init__(self) -> None:
        self._ready: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (cell, namespace, service) -> IPs
        self._draining: set[tuple[str, str]] = set()  # (namespace, ip) on their way out
        self._pushed: dict[tuple[str, str], tuple[str, ...]] = {}  # (group, domain) -> servers pushed
        self._listed: set[str] = set()  # Cells listed at least once
        # Indexes, so that a change costs what it touches, not the size of the Region:
        self._by_service: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}  # (ns, svc) -> cell -> IPs
        # (ns, svc) -> cell -> ready IP -> its app version (only the IPs whose version is known)
        self._versions: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self._drained_ips: dict[str, set[str]] = {}  # namespace -> IPs draining
        self._lingering: dict[str, dict[str, float]] = {}  # namespace -> forgotten IPs still listed ready -> since
        self._feeds: dict[tuple[str, str], list[Binding]] = {}  # (group, domain) -> bindings feeding it
        self._targets_of: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (ns, svc) -> (group, domain)s
        self._of_namespace: dict[str, list[Binding]] = {}
        for b in self.bindings:
            self._of_namespace.setdefault(b.namespace, []).append(b)
            self._feeds.setdefault((b.group, b.domain), []).append(b)
            targets = self._targets_of.setdefault((b.namespace, b.service), [])
            if (b.group, b.domain) not in targets:
                targets.append((b.group, b.domain))
        self._servers: dict[tuple[str, str], tuple[str, ...]] = {}  # (group, domain) -> servers now (cache)
        self._stale: set[tuple[str, str]] = set(self._feeds)  # targets whose pushed servers may be out of date
        self.synced = self.runtime.event()  # every Cell listed once
        self._changes = self.runtime.queue()  # wakes the pusher (one item at most: _pusher_woken)
        self._pusher_woken = False
        # One push at a time per domain, its servers computed under the lock: a push computed
        # before a drain can then never land after it and put the drained address back.
        self._push_locks: dict[tuple[str, str], Mutex] = {}
        # Until every Cell is listed (see the module docstring): the servers recorded in each domain,
        # and the addresses listed Cells reported per (namespace, service) since the start.
        self._recorded: dict[tuple[str, str], tuple[tuple[str, int, str], ...]] = {}  # (ip, port, version)
        self._claimed: dict[tuple[str, str], set[str]] = {}
        self._reachable: dict[str, bool] = {}  # cell -> reachable at the last attempt (absent: not tried)
        self._down_since: dict[str, float] = {}
        self._push_failing: set[tuple[str, str]] = set()  # targets whose last push failed (logged once)
        self._invalid_seen: dict[tuple[str, str, str], tuple[str, ...]] = {}  # invalid addresses logged
        self._drains_loaded = self.runtime.event()  # drain records read once: nothing is pushed before
        self._drain_jobs: dict[str, Any] = {}  # drain record key -> the task draining it
        self._drain_job_ids: dict[str, int] = {}  # key -> its id: a cancelled job must not unlist its successor
        self._next_drain_job = 0
        self._drain_logged: dict[str, int] = {}  # key -> mod_revision of an invalid record already logged
        self._serving: dict[tuple[str, str], bool] = {}  # target -> its last successful push named a server
        self._unserved: set[tuple[str, str]] = set()  # targets with ready addresses and no server in force

    # ------------------------------------------------------------------ following the Cells
    async def run(self) -> None:
        self.metrics.set(DISCOVERY_CELLS_UNREACHABLE, 0)
        for target in sorted(self._feeds):
            self._update_unserved(target)
        self.metrics.set(DISCOVERY_DOMAINS_WITHOUT_UPSTREAM, len(self._unserved))
        tasks = [self.runtime.spawn(self._follow_drains(), name="discovery/drains")]
        tasks += [self.runtime.spawn(self._follow(cell, cluster), name=f"discovery/{cell}")
                  for cell, cluster in sorted(self.cells.items())]
        tasks.append(self.runtime.spawn(self._repush(), name="discovery/repush"))
        tasks.append(self.runtime.spawn(self._pusher(), name="discovery/pusher"))
        try:
            for task in tasks:
                await task.join()
        finally:
            for task in tasks:
                task.cancel()
            for job in list(self._drain_jobs.values()):
                job.cancel()

    async def _follow(self, cell: str, cluster: Cluster) -> None:
        await self._drains_loaded.wait()  # a drained address must not be pushed back by the first push
        while True:
            listed = False
            try:
                listing, version = await cluster.list_endpoints()
                listed = True
                self._cell_reachable(cell, len(listing))
                seen = {(cell, e.namespace, e.service) for e in listing}
                for key in [k for k in self._ready if k[0] == cell and k not in seen]:
                    self._set_ready(key, None)  # services deleted while we were not watching
                for endpoints in listing:
                    self._claim(endpoints)
                    self._set_ready((cell, endpoints.namespace, endpoints.service), endpoints.ready,
                                    endpoints.versions())
                self._listed.add(cell)
                if len(self._listed) == len(self.cells) and not self.synced.is_set():
                    self._all_listed()
                await self._push_all()
                watch = cluster.watch_endpoints(version)
                try:
                    async for event in watch:
                        key = (cell, event.endpoints.namespace, event.endpoints.service)
                        self._claim(event.endpoints)
                        if event.type == "DELETED":
                            self._set_ready(key, None)
                        else:
                            self._set_ready(key, event.endpoints.ready, event.endpoints.versions())
                        self._wake_pusher()
                finally:
                    await watch.close()
            except Cancelled:
                raise
            except ClusterUnavailable as exc:
                # Keep what we knew of this Cell: its pods are probably still serving.
                self.stats.cluster_errors += 1
                if listed or isinstance(exc, ResourceExpired):  # a watch ended: list again (not an outage)
                    log.debug("Cell %s: endpoints watch ended (%s); listing again", cell, exc.reason[:200])
                else:
                    self._cell_unreachable(cell, exc)
                await self.runtime.sleep(self.retry)

    def _cell_unreachable(self, cell: str, exc: ClusterUnavailable) -> None:
        """Log an outage once, when it starts (not on every retry)."""
        if self._reachable.get(cell, True):
            self._reachable[cell] = False
            self._down_since[cell] = self.runtime.now()
            kept = sum(len(ips) for key, ips in self._ready.items() if key[0] == cell)
            log.warning("Cell %s is out of reach (%s): keeping its %d last known ready addresses, retrying every "
                        "%gs", cell, str(exc)[:300], kept, self.retry)
            self.runtime.trace("discovery-cell-down", cell=cell, kept=kept)
            self._count_unreachable()

    def _count_unreachable(self) -> None:
        self.metrics.set(DISCOVERY_CELLS_UNREACHABLE, sum(1 for up in self._reachable.values() if not up))

    def _cell_reachable(self, cell: str, services: int) -> None:
        if self._reachable.get(cell) is False:
            down = self.runtime.now() - self._down_since.pop(cell, self.runtime.now())
            log.warning("Cell %s is reachable again after %.1fs: %d Services listed", cell, down, services)
            self.runtime.trace("discovery-cell-up", cell=cell, after=round(down, 3))
        elif cell not in self._reachable:
            log.info("Cell %s listed: %d Services", cell, services)
        self._reachable[cell] = True
        self._count_unreachable()

    def _claim(self, endpoints: Endpoints) -> None:
        """Until every Cell is listed: the addresses a listed Cell reported for the service are its own."""
        if self.synced.is_set():
            return
        claimed = self._claimed.setdefault((endpoints.namespace, endpoints.service), set())
        new = {ip for ip in endpoints.ready + endpoints.not_ready if ip not in claimed}
        if new:
            claimed |= new
            self._touch_service(endpoints.namespace, endpoints.service)

    def _all_listed(self) -> None:
        """Every Cell listed once: the recorded servers play no part any more; push the exact sets."""
        self._recorded.clear()
        self._claimed.clear()
        self._servers.clear()
        self._stale |= set(self._feeds)
        self.synced.set()
        log.info("every Cell listed once: pushing exact upstreams")
        self.runtime.trace("discovery-synced", cells=len(self.cells))

    def _wake_pusher(self) -> None:
        if not self._pusher_woken:
            self._pusher_woken = True
            self._changes.put_nowait(None)

    async def _pusher(self) -> None:
        """Push what changed, as soon as it changed. Changes that arrive while a push is on its
        way are pushed together by the next round: a burst of 50 pods of one app turning ready
        costs a handful of writes (and Nginx updates), not 50."""
        while True:
            await self._changes.get()
            self._pusher_woken = False
            await self._push_stale()

    async def _repush(self) -> None:
        """Retry what failed (a domain created after its binding, etcd away) every ``resync`` seconds."""
        while True:
            await self.runtime.sleep(self.resync)
            for namespace in sorted(self._lingering):
                self._end_lingering(namespace, older_than=self.runtime.now() - self.linger)
            await self._push_stale()  # before every Cell is listed too: such pushes only keep or add

    # ------------------------------------------------------------------ indexes
    def _set_ready(self, key: tuple[str, str, str], ips: tuple[str, ...] | None,
                   versions: dict[str, str] | None = None) -> None:
        """Record (or with None forget) the ready IPs of (cell, namespace, service) and the versions known of
        them; mark what they feed stale. A version that is no valid tag is left out (the server goes untagged)."""
        cell, ns, svc = key
        if ips is not None and not all(is_ipv4(ip) for ip in ips):
            invalid = tuple(ip for ip in ips if not is_ipv4(ip))
            if self._invalid_seen.get(key) != invalid:  # logged when it changes, not on every event
                self._invalid_seen[key] = invalid
                log.warning("Cell %s, %s/%s: ignoring %d ready addresses that are not IPv4 (%s)", cell, ns, svc,
                            len(invalid), ", ".join(repr(ip[:45]) for ip in invalid[:3]))
            ips = tuple(ip for ip in ips if is_ipv4(ip))
        if ips is None:
            if self._ready.pop(key, None) is None:
                return
            self._by_service.get((ns, svc), {}).pop(cell, None)
            self._versions.get((ns, svc), {}).pop(cell, None)
        else:
            tags = {ip: v for ip, v in (versions or {}).items() if ip in ips and VERSION.fullmatch(v)} \
                if versions else {}
            if self._ready.get(key) == ips and key in self._ready \
                    and self._versions.get((ns, svc), {}).get(cell, {}) == tags:
                return
            self._ready[key] = ips
            self._by_service.setdefault((ns, svc), {})[cell] = ips
            if tags:
                self._versions.setdefault((ns, svc), {})[cell] = tags
            else:
                self._versions.get((ns, svc), {}).pop(cell, None)
        self._touch_service(ns, svc)
        self._end_lingering(ns)

    def _touch_service(self, ns: str, svc: str) -> None:
        for target in self._targets_of.get((ns, svc), ()):
            self._servers.pop(target, None)
            self._stale.add(target)
            self._update_unserved(target)

    def _has_ready(self, target: tuple[str, str]) -> bool:
        """Some Cell lists a ready address, not being drained, of an app feeding ``target``."""
        for binding in self._feeds.get(target, ()):
            drained = self._drained_ips.get(binding.namespace, set())
            for ips in self._by_service.get((binding.namespace, binding.service), {}).values():
                if any(ip not in drained for ip in ips):
                    return True
        return False

    def _update_unserved(self, target: tuple[str, str]) -> None:
        before = len(self._unserved)
        if self._has_ready(target) and not self._serving.get(target, False):
            self._unserved.add(target)
        else:
            self._unserved.discard(target)
        if len(self._unserved) != before:
            self.metrics.set(DISCOVERY_DOMAINS_WITHOUT_UPSTREAM, len(self._unserved))

    def _touch_namespace(self, ns: str) -> None:
        for binding in self._of_namespace.get(ns, ()):
            self._touch_service(binding.namespace, binding.service)

    # ------------------------------------------------------------------ pushing
    def servers(self, binding: Binding) -> tuple[str, ...]:
        """The upstream servers of the binding's domain now: ready, not draining, every Cell,
        and every binding that feeds the same domain (their union, never one overwriting another)."""
        target = (binding.group, binding.domain)
        cached = self._servers.get(target)
        if cached is not None:
            return cached
        servers: dict[tuple[str, int], str] = {}  # (ip, port) -> version ("": unknown; a known one wins)
        for other in self._feeds.get(target, [binding]):
            drained_ips = self._drained_ips.get(other.namespace, set())
            versions = self._versions.get((other.namespace, other.service), {})
            for cell, ready in self._by_service.get((other.namespace, other.service), {}).items():
                tags = versions.get(cell, {})
                for ip in ready:
                    if ip not in drained_ips and not servers.get((ip, other.port)):
                        servers[(ip, other.port)] = tags.get(ip, "")
        if not self.synced.is_set():  # not every Cell listed yet: keep what the record has of the others
            feeds = self._feeds.get(target, [binding])
            claimed: set[str] = set()
            drained: set[str] = set()
            for other in feeds:
                claimed |= self._claimed.get((other.namespace, other.service), set())
                drained |= self._drained_ips.get(other.namespace, set())
            for ip, port, version in self._recorded.get(target, ()):
                if ip not in claimed and ip not in drained and not servers.get((ip, port)):
                    servers[(ip, port)] = version
        # Weight 1 (left out of the text): slb-core weighs the servers by the domain's traffic shares.
        result = tuple(f"{ip}:{port}" + (f" version={servers[(ip, port)]}" if servers[(ip, port)] else "")
                       for ip, port in sorted(servers, key=lambda s: (ip_order(s[0]), s[1])))
        self._servers[target] = result
        return result

    async def _push_all(self) -> None:
        for binding in self.bindings:
            await self._push(binding)

    async def _push_stale(self) -> None:
        """Push only the domains whose servers changed or whose last push failed."""
        for target in sorted(self._stale):
            feeds = self._feeds.get(target)
            if feeds:
                await self._push(feeds[0])

    async def _push(self, binding: Binding) -> int | None:
        """Push the binding's domain if its servers changed: the new revision, or None (unchanged or failed)."""
        return (await self._push_outcome(binding))[1]

    async def _push_outcome(self, binding: Binding) -> tuple[bool, int | None]:
        """(written or nothing to write, the new revision if one was written)."""
        target = (binding.group, binding.domain)
        lock = self._push_locks.get(target)
        if lock is None:
            lock = self._push_locks[target] = Mutex(self.runtime)
        async with lock:
            return await self._push_locked(binding, target)

    async def _read_recorded(self, binding: Binding, target: tuple[str, str]) -> bool:
        """Before a domain's first push while some Cell is unlisted: read the servers its record has."""
        try:
            stored = await self.control.get_domain(binding.group, binding.domain)
            recorded = tuple((u.host, u.port, u.version) for u in stored.domain.upstreams)
        except Unavailable:
            return False  # the service or etcd away: nothing can be pushed now anyway; try again later
        except NotFound:
            recorded = ()
        except ControlError as exc:  # a corrupt record (or a refused token): nothing to keep (its push fails too)
            log.warning("domain %s/%s: its record is unreadable (%s); keeping none of its servers",
                        binding.group, binding.domain, str(exc)[:200])
            recorded = ()
        self._recorded[target] = tuple(s for s in recorded if is_ipv4(s[0]))
        self._servers.pop(target, None)
        return True

    async def _push_locked(self, binding: Binding, target: tuple[str, str]) -> tuple[bool, int | None]:
        if not self.synced.is_set() and target not in self._recorded \
                and not await self._read_recorded(binding, target):
            self._stale.add(target)
            return False, None
        servers = self.servers(binding)
        if self._pushed.get(target) == servers:
            self._stale.discard(target)
            return True, None
        try:
            revision = await self.control.set_upstreams(binding.group, binding.domain, list(servers))
        except ControlError as exc:
            # The domain may not exist yet, or the service or etcd is away: the next change or resync pushes again.
            self.stats.push_errors += 1
            self.metrics.inc(DISCOVERY_PUSHES, result=exc.code)
            self.runtime.trace("discovery-push-failed", domain=binding.domain, error=type(exc).__name__)
            if target not in self._push_failing:
                self._push_failing.add(target)
                if isinstance(exc, PermissionDenied | Unauthenticated):  # no retry fixes this: say whose it is
                    log.error("domain %s/%s: the control service refused to set its upstreams (%s: %s); discovery "
                              "needs a token of role discovery; nothing pushed, retrying every %gs", binding.group,
                              binding.domain, exc.code, str(exc)[:300], self.resync)
                else:
                    log.warning("domain %s/%s: pushing its upstreams failed (%s); retrying every %gs",
                                binding.group, binding.domain, str(exc)[:300] or type(exc).__name__, self.resync)
            self._pushed.pop(target, None)
            return False, None
        if target in self._push_failing:
            self._push_failing.discard(target)
            log.warning("domain %s/%s: pushing its upstreams works again", binding.group, binding.domain)
        self._pushed[target] = servers
        if self.servers(binding) == servers:
            self._stale.discard(target)
        self.stats.pushes += 1
        self.metrics.inc(DISCOVERY_PUSHES, result="ok")
        self._serving[target] = bool(servers)
        self._update_unserved(target)
        self.runtime.trace("discovery-push", domain=binding.domain, servers=len(servers), revision=revision)
        return True, revision

    # ------------------------------------------------------------------ drain
    async def drain(self, namespace: str, ip: str, *, timeout: float = 30.0, poll: float = 0.05) -> bool:
        """Take ``ip`` out of its app's upstreams and wait until every Nginx host applied that.

        True when all hosts confirmed within ``timeout``; False otherwise (the caller decides
        whether to delete the pod anyway). The address stays excluded until ``forget``.
        """
        return (await self.drain_report(namespace, ip, timeout=timeout, poll=poll)).drained

    def _exclude(self, namespace: str, ip: str) -> None:
        if ip in self._drained_ips.get(namespace, set()) and (namespace, ip) in self._draining:
            return
        self._draining.add((namespace, ip))
        self._drained_ips.setdefault(namespace, set()).add(ip)
        self._lingering.get(namespace, {}).pop(ip, None)
        self._touch_namespace(namespace)

    async def drain_report(self, namespace: str, ip: str, *, timeout: float = 30.0,
                           poll: float = 0.05) -> DrainReport:
        """``drain``, saying what it did: which domains, which hosts confirmed, how long it took."""
        started = self.runtime.now()
        self.stats.drains += 1
        self._exclude(namespace, ip)
        log.info("drain of %s (%s) started", ip, namespace)
        self.runtime.trace("discovery-drain-start", namespace=namespace, ip=ip)
        domains: list[str] = []
        waits = []
        for binding in self._of_namespace.get(namespace, ()):
            name = f"{binding.group}/{binding.domain}"
            if name not in domains:
                domains.append(name)
            written, revision = await self._push_outcome(binding)
            if not written:  # the removal was not written: the pod still receives traffic
                return self._drained(namespace, ip, False, domains, {}, started,
                                     f"the removal could not be written to {name}")
            if revision is None:  # nothing to change: it was out already
                revision = await self._current_revision(binding)
            if revision:
                waits.append((binding, revision))
        deadline = started + timeout
        hosts: dict[str, bool] = {}  # host -> applied every removal that concerns it
        for binding, revision in waits:
            while True:
                applied = await self._host_confirmations(binding, revision)
                if applied is not None and all(applied.values()):
                    break
                if self.runtime.now() >= deadline:
                    break
                await self.runtime.sleep(poll)
            for host, ok in (applied or {}).items():
                hosts[host] = hosts.get(host, True) and ok
            if applied is None:  # the status could not be read at all: nobody confirmed this domain
                return self._drained(namespace, ip, False, domains, hosts, started,
                                     f"the status of {binding.group}/{binding.domain} could not be read")
        return self._drained(namespace, ip, all(hosts.values()), domains, hosts, started,
                             "" if all(hosts.values()) else f"not every host confirmed within {timeout:g}s")

    def _drained(self, namespace: str, ip: str, ok: bool, domains: list[str], hosts: dict[str, bool],
                 started: float, error: str) -> DrainReport:
        report = DrainReport(namespace, ip, ok, tuple(sorted(domains)),
                             tuple(sorted(h for h, done in hosts.items() if done)),
                             tuple(sorted(h for h, done in hosts.items() if not done)),
                             self.runtime.now() - started, error)
        if ok:
            log.info("drain of %s (%s) done in %.3fs: %d domains, confirmed by %s", ip, namespace, report.took,
                     len(report.domains), ", ".join(report.confirmed) or "no host (none registered)")
        else:
            log.warning("drain of %s (%s) failed after %.3fs: %s; unconfirmed hosts: %s", ip, namespace,
                        report.took, error, ", ".join(report.unconfirmed) or "-")
        self.runtime.trace("discovery-drain-done", namespace=namespace, ip=ip, drained=ok,
                           confirmed=len(report.confirmed), unconfirmed=len(report.unconfirmed))
        self.metrics.inc(DISCOVERY_DRAINS, result="drained" if ok else "failed")
        self.metrics.observe(DISCOVERY_DRAIN_SECONDS, report.took)
        return report

    def forget(self, namespace: str, ip: str) -> None:
        """The drained pod is gone: stop excluding its address (a new pod may get it later).

        If discovery still sees the address among the app's ready endpoints (the deletion's
        endpoints event is on its way, or the Cell is out of reach), the exclusion lingers
        until it leaves them, at most ``linger`` seconds: lifting it at once would push the
        deleted pod back into its domain.
        """
        self._draining.discard((namespace, ip))
        if self._listed_ready(namespace, ip):
            self._lingering.setdefault(namespace, {})[ip] = self.runtime.now()
            return
        self._stop_excluding(namespace, ip)

    def _stop_excluding(self, namespace: str, ip: str) -> None:
        self._drained_ips.get(namespace, set()).discard(ip)
        self._touch_namespace(namespace)

    def _listed_ready(self, namespace: str, ip: str) -> bool:
        return any(ip in ips for binding in self._of_namespace.get(namespace, ())
                   for ips in self._by_service.get((namespace, binding.service), {}).values())

    def _end_lingering(self, namespace: str, *, older_than: float | None = None) -> None:
        lingering = self._lingering.get(namespace)
        if not lingering:
            return
        for ip, since in sorted(lingering.items()):
            if not self._listed_ready(namespace, ip) or (older_than is not None and since <= older_than):
                del lingering[ip]
                self._stop_excluding(namespace, ip)

    async def _current_revision(self, binding: Binding) -> int:
        try:
            return (await self.control.get_domain(binding.group, binding.domain)).revision
        except ControlError:  # gone, away, or unreadable: nothing to wait for
            return 0

    async def _applied_everywhere(self, binding: Binding, revision: int) -> bool:
        """Every Nginx host of the group applied it (a decommissioned host's status records must be removed)."""
        applied = await self._host_confirmations(binding, revision)
        return applied is not None and all(applied.values())

    async def _host_confirmations(self, binding: Binding, revision: int) -> dict[str, bool] | None:
        """Per Nginx host of the group: has it applied ``revision`` of the domain? None when unreadable."""
        try:
            report = await self.control.get_status(binding.group, binding.domain)
        except ControlError:  # an unreadable status counts as not confirmed
            return None
        applied = {h.host: h.applied_revision for h in report.hosts}
        # Hosts alive now (registered under a lease) and hosts that ever reported this domain
        # (an agent restarting has no lease yet, but its Nginx still serves the old upstreams).
        hosts = set(report.registered) | set(applied)
        return {host: applied.get(host, 0) >= revision for host in sorted(hosts)}

    # ------------------------------------------------------------------ drain records in etcd
    async def _follow_drains(self) -> None:
        """Read the drain records, then watch them: a request is drained, a deleted record is ``forget``."""
        store = self.store
        known: set[str] = set()
        while True:
            try:
                listing = await store.range(DRAINS_PREFIX)
                present = {kv.key for kv in listing.kvs}
                for key in sorted(known - present):  # deleted while we were not watching
                    self._drain_record_gone(key)
                known = set()
                for kv in listing.kvs:
                    if self._drain_record(kv, listed=True):
                        known.add(kv.key)
                self._drains_loaded.set()
                watch = store.watch(DRAINS_PREFIX, start_revision=listing.revision + 1)
                try:
                    async for event in watch:
                        if event.type == "delete":
                            known.discard(event.kv.key)
                            self._drain_record_gone(event.kv.key)
                        elif self._drain_record(event.kv, listed=False):
                            known.add(event.kv.key)
                finally:
                    await watch.close()
            except Cancelled:
                raise
            except StoreError:
                self.metrics.inc(ETCD_ERRORS, component=COMPONENT)
                await self.runtime.sleep(self.retry)

    def _drain_record(self, kv: KeyValue, *, listed: bool) -> bool:
        """Act on a drain record; False (logged once) when it is not a valid one."""
        try:
            namespace, ip = parse_drain_key(kv.key)
            record = decode_drain_record(kv.value)
        except ValueError as exc:
            if self._drain_logged.get(kv.key) != kv.mod_revision:
                self._drain_logged[kv.key] = kv.mod_revision
                log.warning("ignoring an invalid drain record at %s: %s", kv.key[:160], exc)
                self.runtime.trace("discovery-drain-invalid", key=kv.key[:160])
            return False
        self._exclude(namespace, ip)
        # A request; or, when listing, a drain its daemon did not finish (it died or was restarted).
        if kv.key not in self._drain_jobs and (record["state"] == "requested"
                                               or (listed and record["state"] == "draining")):
            self._next_drain_job += 1
            self._drain_job_ids[kv.key] = self._next_drain_job
            self._drain_jobs[kv.key] = self.runtime.spawn(
                self._drain_job(kv.key, namespace, ip, record, kv.mod_revision, self._next_drain_job),
                name=f"discovery/drain {kv.key}")
        return True

    def _drain_record_gone(self, key: str) -> None:
        try:
            namespace, ip = parse_drain_key(key)
        except ValueError:
            return
        job = self._drain_jobs.pop(key, None)
        self._drain_job_ids.pop(key, None)
        if job is not None:
            job.cancel()
        log.info("drain of %s (%s) lifted (its record was deleted)", ip, namespace)
        self.forget(namespace, ip)

    async def _drain_job(self, key: str, namespace: str, ip: str, record: dict[str, Any], revision: int,
                         job_id: int) -> None:
        """Drain on request, writing ``draining`` then the outcome; every write is a CAS on what it read,
        so a record deleted (forgotten) or requested again meanwhile is never overwritten."""
        store = self.store
        try:
            while True:
                try:
                    timeout = float(record.get("timeout", 30.0))
                    base: dict[str, Any] = {k: record[k] for k in ("requested_at", "requested_by", "timeout")
                                            if k in record}
                    draining = {**base, "state": "draining", "started_at": self.runtime.wall_time()}
                    written = await store.txn([Compare.mod_is(key, revision)],
                                              [PutOp(key, encode_drain_record(draining))])
                    if written.succeeded:
                        report = await self.drain_report(namespace, ip, timeout=timeout)
                        final = {**draining, **report.fields(), "state": "drained" if report.drained else "failed",
                                 "finished_at": self.runtime.wall_time()}
                        done = await store.txn([Compare.mod_is(key, written.revision)],
                                               [PutOp(key, encode_drain_record(final))])
                        if done.succeeded:
                            return
                    current = await store.get(key)  # changed meanwhile: requested again, or forgotten
                    if current is None:
                        return
                    record, revision = decode_drain_record(current.value), current.mod_revision
                    if record["state"] != "requested":
                        return
                except StoreError:
                    self.metrics.inc(ETCD_ERRORS, component=COMPONENT)
                    await self.runtime.sleep(self.retry)
                    current = await store.get(key)
                    if current is None:
                        return
                    record, revision = decode_drain_record(current.value), current.mod_revision
                    if record["state"] not in ("requested", "draining"):
                        return
        except ValueError as exc:
            log.warning("ignoring an invalid drain record at %s: %s", key, exc)
        except StoreError:
            self.metrics.inc(ETCD_ERRORS, component=COMPONENT)
            return  # etcd away twice in a row: the next listing of the records starts it again
        finally:
            if self._drain_job_ids.get(key) == job_id:
                del self._drain_job_ids[key]
                self._drain_jobs.pop(key, None)
