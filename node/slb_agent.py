"""The SLB agent: one per Nginx host, keeps the host's Nginx equal to its group's domains in the Store.

It watches ``/slb/{group}/domains/`` and sorts each change by ``changed_config``:

* **upstreams only** → ``proxy.set_upstreams`` at once, in place, no reload;
* **anything else** (new or removed domain, locations, headers, settings) → queued.
  Queued changes are applied as one batch when no change has come for ``debounce``
  seconds, or ``max_wait`` seconds after the first one, whichever is sooner, but never
  sooner than ``min_reload_interval`` after the previous reload (a storm of changes
  100 ms apart would otherwise defeat the debounce and reload on every change): one
  ``nginx -t`` of the batch and one reload. If the batch fails its test, each
  domain is tested alone; the bad ones are set aside (their last good config stays
  in force, their status carries the error), the others are applied. A domain set
  aside still gets upstream changes in place on its last good config.

It trusts nothing it reads from etcd. A record that does not decode (bad JSON, nesting
too deep, a field outside its grammar, a key that does not match the name inside) is
never rendered: its status says why, and the other domains go on. Every upstream must
be a pod address of a pool registered at ``/ipam/pools/`` (``cni.pod_pools``,
watched beside the domains; re-read when a record is newer than the pools known, so a
pool added just before its pods is never missed): an upstream outside them is dropped
from what Nginx gets and the domain's status ``error`` says so, although the rest of the
record is applied (``applied_revision`` moves, drains are not held up). When the pools
change, the domains that lost servers are considered again, and servers of a removed
pool are taken out of Nginx in place.

After each step it writes its status per domain (revision in force, revision wanted,
error) at ``/slb/{group}/status/{domain}/{host}``, and saves its state through the Proxy
(domains in force and the Store revision they correspond to). A restarted agent
serves from that state at once and resumes its watch just after the saved revision;
if that revision was compacted away it resyncs from a full read (in pages of
``resync_page`` domains, all at one revision). While etcd is out
of reach the agent retries and Nginx keeps serving what it has.

Metrics (the Metrics port, labels group and host): upstream changes applied in place;
reloads by result with their duration (test + reload + confirmation of a batch); the last
reload's success (1/0) and the wall time of the last successful one; domains set aside
(invalid or failing ``nginx -t``); and the propagation of each record's change. A domain
record carries no write time (stamping one would change every record's bytes), so
propagation is the **agent's share**: from the moment the agent received the change (its
watch event, or the read of a resync) to the moment that revision is the domain's revision
in force here; a change superseded before it took effect is not observed, its successor is.
With ``request_metrics_every`` > 0 (the daemon's default when it serves metrics; 0 in the
sim) it also copies the proxy's request counts per domain and upstream version
(``Proxy.request_counts``, cumulative since Nginx started) into ``slb_requests_total``
and ``slb_request_seconds_total`` every that many seconds, as increments (a count that
went down means Nginx restarted: it counts from zero again).

**Traffic per version** (gray releases): with ``traffic_every`` > 0 (the daemon's default
5 s; 0 in the sim unless a scenario sets it) the agent writes, every that many seconds,
its host's record ``/slb/{group}/traffic/{host}`` (``foundation.logic.slb_traffic``):
for every domain in force whose upstreams carry a version tag, per version, the requests,
errors (5xx) and seconds Nginx counted since it started, an ``epoch`` that goes up by one
each time the agent saw a count go down (Nginx restarted), and ``at`` (``runtime.now()``).
It is written only when a count or the epoch changed, by a CAS that also compares the host
key's lease, under that lease: the record goes when the host does.

Invariants: one reload at a time (a single loop does every apply); the saved
revision never runs ahead of what is in force, so a restart replays, never skips.
It must not know nginx, etcd, asyncio or Prometheus: only the Store, Proxy, Runtime and
Metrics ports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field

from cni.pod_pools import POOLS, PoolCache
from foundation.logic.claims import stay_registered
from foundation.logic.slb_domain import (
    Domain,
    DomainError,
    DomainStatus,
    Upstream,
    changed_config,
    check_domain_name,
    domains_prefix,
    host_key,
    status_key,
)
from foundation.logic.slb_traffic import MAX_VERSIONS as TRAFFIC_MAX_VERSIONS
from foundation.logic.slb_traffic import HostTraffic, TrafficError, VersionCounts, encode_traffic, traffic_key
from foundation.ports import (
    Cancelled,
    CompactedError,
    Compare,
    DeleteOp,
    GetOp,
    PutOp,
    Queue,
    RangeResult,
    Runtime,
    Store,
    StoreError,
    Watch,
    WatchEvent,
)
from foundation.ports.metrics import (
    ETCD_ERRORS,
    NO_METRICS,
    SLB_DOMAINS_SET_ASIDE,
    SLB_LAST_RELOAD_SUCCESSFUL,
    SLB_LAST_RELOAD_TIMESTAMP,
    SLB_PROPAGATION_SECONDS,
    SLB_RELOAD_SECONDS,
    SLB_RELOADS,
    SLB_REQUEST_SECONDS,
    SLB_REQUESTS,
    SLB_UPSTREAM_UPDATES,
    Metrics,
)
from foundation.ports.proxy import Proxy, ProxyError, ReloadFailed, RequestCounts, SavedState

COMPONENT = "slb-agent"  # the etcd errors' component label


@dataclass(frozen=True)
class SlbAgentConfig:
    group: str
    host: str
    debounce: float = 0.05  # quiet time that closes a batch of config changes
    max_wait: float = 0.5  # a batch never waits longer than this after its first change
    retry: float = 1.0  # back-off after etcd errors
    min_reload_interval: float = 1.0  # a sustained storm costs at most one reload per this many seconds
    save_every: float = 1.0  # in-place upstream changes are saved at most this often
    resync_page: int = 100  # domains per read of a resync: a huge group never needs one huge answer
    request_metrics_every: float = 0.0  # seconds between copies of Nginx's request counts to metrics (0: never)
    traffic_every: float = 0.0  # seconds between writes of the per-version traffic record (0: never)


@dataclass
class SlbAgentStats:
    in_place: int = 0
    reloads: int = 0
    batches: int = 0
    rejected: int = 0
    resyncs: int = 0
    store_errors: int = 0


@dataclass
class _Desired:
    domain: Domain | DomainError | None  # None: removed; DomainError: the record is invalid
    revision: int
    received_at: float | None = None  # runtime clock when the agent received this change (propagation)

    @property
    def valid(self) -> Domain | None:
        """The domain of a change that decoded: only such changes are queued (``_consider`` rejects the rest)."""
        if isinstance(self.domain, DomainError):
            raise TypeError(f"an invalid record was queued: {self.domain}")
        return self.domain


@dataclass
class _WatchFailed:
    error: BaseException


@dataclass(frozen=True)
class _Received:
    """A watch event and when the agent received it (before it waited in the queue)."""

    event: WatchEvent
    at: float


@dataclass
class SlbAgent:
    store: Store
    proxy: Proxy
    runtime: Runtime
    config: SlbAgentConfig
    stats: SlbAgentStats = field(default_factory=SlbAgentStats)
    metrics: Metrics = NO_METRICS

    def __post_init__(self) -> None:
        self.live: dict[str, Domain] = {}  # domains in force on this host
        self.live_revision: dict[str, int] = {}  # mod_revision of each domain in force
        self.set_aside: dict[str, _Desired] = {}  # latest version that failed its test
        self.errors: dict[str, str] = {}  # why it failed
        self.revision = 0  # every event up to here is in force or set aside
        self._pending: dict[str, _Desired] = {}
        self._first_pending_at: float | None = None
        self._statuses: dict[str, DomainStatus | None] = {}  # to write at the end of this step
        self._last_save = float("-inf")
        self._last_reload_at = float("-inf")
        self.applied = self.runtime.event()  # set after the first complete sync (for tests and drains)
        self.pools = PoolCache()  # the registered pod pools: where upstreams may point
        self.dropped: dict[str, _Desired] = {}  # latest record of a domain that had upstreams outside the pools
        self.notes: dict[str, str] = {}  # which upstreams were dropped (the status error of an applied record)
        self._requests_seen: dict[tuple[str, str], RequestCounts] = {}  # the proxy's counts at the last copy
        self.traffic_epoch = 0  # +1 each time a count of the proxy went down (Nginx restarted)
        self._traffic_read: dict[tuple[str, str], RequestCounts] = {}  # the proxy's counts at the last read
        self._traffic_written: tuple[int, dict[str, dict[str, VersionCounts]]] | None = None  # (epoch, domains)
        self._traffic_lease = 0  # the host key's lease the record is written under (0: not read yet)
        self._traffic_revision = 0  # mod_revision of our record as last written (0: none)

    @property
    def prefix(self) -> str:
        return domains_prefix(self.config.group)

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        saved = await self.proxy.load_state()
        self.live = dict(saved.domains)
        self.revision = saved.revision
        self.live_revision = {name: saved.revision for name in self.live}
        # /slb/{group}/hosts/{host} under a lease: drains wait for every registered host.
        membership = self.runtime.spawn(
            stay_registered(self.store, self.runtime, host_key(self.config.group, self.config.host), b"up",
                            ttl=10, retry=self.config.retry, on_store_error=self._etcd_error),
            name=f"slb-member/{self.config.host}")
        reporter = self.runtime.spawn(self._report_requests(), name=f"slb-requests/{self.config.host}") \
            if self.config.request_metrics_every > 0 else None
        traffic = self.runtime.spawn(self._report_traffic(), name=f"slb-traffic/{self.config.host}") \
            if self.config.traffic_every > 0 else None
        try:
            while True:
                try:
                    if self.revision == 0:
                        await self.resync()
                    await self._follow()
                except CompactedError:
                    await self._guard(self.resync())
                except (StoreError, ProxyError) as exc:
                    # etcd away, or Nginx refused something we did not expect it to: Nginx keeps
                    # serving what it has; start over from the last revision fully in force.
                    if isinstance(exc, StoreError):
                        self.stats.store_errors += 1
                        self._etcd_error()
                    self.runtime.trace("slb-retry", host=self.config.host, error=type(exc).__name__)
                    self._pending.clear()
                    self._first_pending_at = None
                    self.revision = (await self.proxy.load_state()).revision if isinstance(exc, ProxyError) \
                        else self.revision
                    await self.runtime.sleep(self.config.retry)
        finally:
            membership.cancel()
            for task in (reporter, traffic):
                if task is not None:
                    task.cancel()

    async def _report_requests(self) -> None:
        while True:
            await self.runtime.sleep(self.config.request_metrics_every)
            try:
                await self.copy_request_counts()
            except ProxyError as exc:  # Nginx away for a moment: the counts wait for the next round
                self.runtime.trace("slb-requests-unread", host=self.config.host, error=str(exc)[:200])

    async def copy_request_counts(self) -> None:
        """Add what the proxy answered since the last copy to the request counters (one pass)."""
        group, host = self.config.group, self.config.host
        counts = await self.proxy.request_counts()
        for (domain, version), now in counts.items():
            before = self._requests_seen.get((domain, version), RequestCounts())
            restarted = now.seconds < before.seconds or any(now.by_class.get(c, 0) < n
                                                            for c, n in before.by_class.items())
            if restarted:
                before = RequestCounts()
            for status_class, responses in now.by_class.items():
                if responses > before.by_class.get(status_class, 0):
                    self.metrics.inc(SLB_REQUESTS, responses - before.by_class.get(status_class, 0), group=group,
                                     host=host, domain=domain, version=version, code=status_class)
            if now.seconds > before.seconds:
                self.metrics.inc(SLB_REQUEST_SECONDS, now.seconds - before.seconds, group=group, host=host,
                                 domain=domain, version=version)
        self._requests_seen = dict(counts)

    async def _report_traffic(self) -> None:
        while True:
            await self.runtime.sleep(self.config.traffic_every)
            try:
                await self.write_traffic()
            except ProxyError as exc:  # Nginx away for a moment: the counts wait for the next round
                self.runtime.trace("slb-traffic-unread", host=self.config.host, error=str(exc)[:200])
            except StoreError as exc:  # etcd away: written at the next round
                self.stats.store_errors += 1
                self._etcd_error()
                self.runtime.trace("slb-traffic-unwritten", host=self.config.host, error=type(exc).__name__)
                self._traffic_lease = 0  # read the lease again: it may have been replaced meanwhile
            except TrafficError as exc:  # e.g. a host name that makes no key: said, never a crash of the agent
                self.runtime.trace("slb-traffic-invalid", host=self.config.host, error=str(exc)[:200])

    def traffic_now(self, counts: Mapping[tuple[str, str], RequestCounts]) -> dict[str, dict[str, VersionCounts]]:
        """The record's domains from the proxy's counts; bumps ``traffic_epoch`` when a count went down."""
        before = self._traffic_read
        if any(key not in counts or _went_down(counts[key], old) for key, old in before.items()):
            self.traffic_epoch += 1
        self._traffic_read = dict(counts)
        domains: dict[str, dict[str, VersionCounts]] = {}
        for name in sorted(self.live):
            tagged = sorted({u.version for u in self.live[name].upstreams if u.version})
            if not tagged:
                continue
            counted = sorted(v for d, v in counts if d == name and v and v not in tagged)
            versions: dict[str, VersionCounts] = {}
            for version in (tagged + counted)[:TRAFFIC_MAX_VERSIONS]:  # those serving now first
                now = counts.get((name, version), RequestCounts())
                versions[version] = VersionCounts(now.requests, now.by_class.get("5xx", 0), now.seconds)
            domains[name] = dict(sorted(versions.items()))
        return domains

    async def write_traffic(self) -> bool:
        """Read the proxy's counts and write this host's traffic record if it changed; True when written."""
        domains = self.traffic_now(await self.proxy.request_counts())
        if self._traffic_written == (self.traffic_epoch, domains):
            return False
        group, host = self.config.group, self.config.host
        key, member = traffic_key(group, host), host_key(group, host)
        value = encode_traffic(HostTraffic(host, self.traffic_epoch, self.runtime.now(), domains))
        for _ in range(2):  # a failed compare reads the lease and our record again, then tries once more
            if not self._traffic_lease:
                read = await self.store.txn([], [GetOp(member), GetOp(key)])
                registered, ours = (r.first() if isinstance(r, RangeResult) else None for r in read.responses)
                if registered is None or not registered.lease:
                    return False  # not registered (yet): nothing to write it under
                self._traffic_lease = registered.lease
                self._traffic_revision = ours.mod_revision if ours else 0
            result = await self.store.txn(
                [Compare(member, "lease", "==", self._traffic_lease), Compare.mod_is(key, self._traffic_revision)],
                [PutOp(key, value, lease=self._traffic_lease)])
            if result.succeeded:
                self._traffic_revision = result.revision
                self._traffic_written = (self.traffic_epoch, domains)
                return True
            self._traffic_lease = 0
        return False

    async def _guard(self, step: Awaitable[None]) -> None:
        try:
            await step
        except StoreError as exc:
            self.stats.store_errors += 1
            self._etcd_error()
            self.runtime.trace("slb-store-error", host=self.config.host, error=type(exc).__name__)
            await self.runtime.sleep(self.config.retry)

    # ------------------------------------------------------------------ metrics
    def _etcd_error(self) -> None:
        self.metrics.inc(ETCD_ERRORS, component=COMPONENT)

    def _upstreams_updated(self) -> None:
        self.metrics.inc(SLB_UPSTREAM_UPDATES, group=self.config.group, host=self.config.host)

    def _took_effect(self, desired: _Desired) -> None:
        """``desired`` is now the domain's revision in force here: observe the agent's share of its propagation."""
        if desired.received_at is not None:
            self.metrics.observe(SLB_PROPAGATION_SECONDS, self.runtime.now() - desired.received_at,
                                 group=self.config.group, host=self.config.host)

    def _reloaded(self, ok: bool, started: float) -> None:
        group, host = self.config.group, self.config.host
        self.metrics.inc(SLB_RELOADS, group=group, host=host, result="success" if ok else "failure")
        self.metrics.observe(SLB_RELOAD_SECONDS, self.runtime.now() - started, group=group, host=host)
        self.metrics.set(SLB_LAST_RELOAD_SUCCESSFUL, 1.0 if ok else 0.0, group=group, host=host)
        if ok:
            self.metrics.set(SLB_LAST_RELOAD_TIMESTAMP, self.runtime.wall_time(), group=group, host=host)

    async def resync(self) -> None:
        """Read every domain and converge on it (first start, or history compacted away)."""
        self.stats.resyncs += 1
        await self._load_pools()
        # In pages, every page at the first one's revision: one snapshot, and the watch resumes
        # right after it. History compacted under a long resync raises CompactedError: run() resyncs.
        seen: dict[str, _Desired] = {}
        revision, last = 0, ""
        while True:
            page = await self.store.range(self.prefix, limit=self.config.resync_page, start_after=last,
                                          revision=revision)
            revision = page.revision
            read_at = self.runtime.now()
            for kv in page.kvs:
                seen[kv.key.removeprefix(self.prefix)] = _Desired(self._decode(kv.key, kv.value), kv.mod_revision,
                                                                  read_at)
            if len(page.kvs) < self.config.resync_page:
                break
            last = page.kvs[-1].key
        for name in self.live:
            seen.setdefault(name, _Desired(None, revision, self.runtime.now()))
        self._pending.clear()
        for name, desired in seen.items():
            await self._consider(name, desired)
        await self._flush()
        self.revision = revision
        await self._finish_step(force_save=True)
        self.applied.set()

    async def _follow(self) -> None:
        events = self.runtime.queue()
        await self._pools_changed()  # pools may have changed while we were away
        async with self.store.watch(self.prefix, start_revision=self.revision + 1) as watch, \
                self.store.watch(POOLS, start_revision=self.pools.pools.revision + 1) as pools_watch:
            pump = self.runtime.spawn(self._pump(watch, events), name=f"slb-watch/{self.config.host}")
            pools_pump = self.runtime.spawn(self._pump(pools_watch, events), name=f"slb-pools/{self.config.host}")
            try:
                await self._finish_step()  # statuses a failed step could not write go out now
                self.applied.set()
                while True:
                    item = await self._next(events)
                    if item is None:  # the batch's time is up
                        await self._flush()
                        await self._finish_step()
                        continue
                    batch = [item]
                    while events.qsize():
                        batch.append(events.get_nowait())
                    pools_moved = False
                    for one in batch:
                        if isinstance(one, _WatchFailed):
                            await self._flush()  # apply what we have before starting over
                            await self._finish_step(force_save=True)
                            raise one.error
                        if one.event.kv.key.startswith(POOLS):
                            pools_moved = True  # not self.revision: that is the domains' watch's progress
                            continue
                        await self._on_event(one.event, one.at)
                    if pools_moved:
                        await self._pools_changed()
                    if self._due():
                        await self._flush()
                    await self._finish_step()
            finally:
                pump.cancel()
                pools_pump.cancel()

    async def _pump(self, watch: Watch, events: Queue[_Received | _WatchFailed]) -> None:
        try:
            async for event in watch:
                events.put_nowait(_Received(event, self.runtime.now()))
        except Cancelled:
            raise
        except Exception as exc:  # surfaced to the main loop, which applies what it has and reconnects
            events.put_nowait(_WatchFailed(exc))

    async def _next(self, events: Queue[_Received | _WatchFailed]) -> _Received | _WatchFailed | None:
        if self._first_pending_at is None:
            return await events.get()
        try:
            return await self.runtime.wait_for(events.get(), self._time_left())
        except TimeoutError:
            return None

    def _time_left(self) -> float:
        assert self._first_pending_at is not None
        now = self.runtime.now()
        waited = now - self._first_pending_at
        batch_closes = max(0.0, min(self.config.debounce, self.config.max_wait - waited))
        # Under a sustained storm the debounce never holds: changes 100 ms apart would each
        # cost a reload. Reloads are spaced instead, and what arrives meanwhile rides along.
        return max(batch_closes, self._last_reload_at + self.config.min_reload_interval - now)

    def _due(self) -> bool:
        return self._first_pending_at is not None and self._time_left() <= 0

    # ------------------------------------------------------------------ pod pools
    async def _load_pools(self) -> None:
        found = await self.store.range(POOLS)
        before = self.pools.pools
        pools = self.pools.update(found.kvs, found.revision)
        if pools is not before and pools.invalid:
            self.runtime.trace("slb-pools-invalid", host=self.config.host, records=len(pools.invalid))

    async def _admit(self, name: str, desired: _Desired) -> _Desired:
        """``desired`` with every upstream outside the registered pod pools dropped (noted for its status)."""
        new = desired.domain
        outside = self.pools.pools.outside(new.upstreams) if isinstance(new, Domain) else ()
        if outside and isinstance(new, Domain) and desired.revision > self.pools.pools.revision:
            await self._load_pools()  # the record is newer than the pools we know: a new pool may hold them
            outside = self.pools.pools.outside(new.upstreams)
        if not outside:
            self.dropped.pop(name, None)
            self.notes.pop(name, None)
            return desired
        assert isinstance(new, Domain)
        self.dropped[name] = desired
        self.notes[name] = _dropped_note(outside)
        self.runtime.trace("slb-upstreams-dropped", host=self.config.host, domain=name, servers=len(outside))
        gone = set(outside)
        return _Desired(new.with_upstreams(tuple(u for u in new.upstreams if u not in gone)), desired.revision,
                        desired.received_at)

    async def _pools_changed(self) -> None:
        """Read the pools again; consider again what they now let through, take out what they no longer do."""
        before = self.pools.pools
        await self._load_pools()
        if self.pools.pools is before:
            return
        for name, desired in list(self.dropped.items()):
            await self._consider(name, desired)  # the latest record of it, filtered again
        for name, live in list(self.live.items()):
            if name in self.dropped or name in self._pending:
                continue
            outside = self.pools.pools.outside(live.upstreams)
            if not outside:
                continue
            gone = set(outside)
            kept = tuple(u for u in live.upstreams if u not in gone)
            try:
                await self.proxy.set_upstreams(name, kept)
            except ProxyError:
                continue
            self._upstreams_updated()
            self.live[name] = live.with_upstreams(kept)
            self.notes[name] = _dropped_note(outside)
            wanted = self.set_aside[name].revision if name in self.set_aside else self.live_revision.get(name, 0)
            self._statuses[name] = DomainStatus(self.live_revision.get(name, 0), self.errors.get(name, ""),
                                                wanted, self.runtime.wall_time())

    # ------------------------------------------------------------------ one change
    def _decode(self, key: str, value: bytes) -> Domain | DomainError | None:
        try:
            domain = Domain.from_bytes(value)
        except Exception as exc:  # whatever a record holds, it is an invalid record, never a crash
            return DomainError("record", f"{key[:300]} holds an invalid domain record: {str(exc)[:300]}")
        if domain.key != key:
            return DomainError("record", f"{key[:300]} holds domain {domain.name} of group {domain.group}")
        return domain

    async def _on_event(self, event: WatchEvent, received_at: float | None = None) -> None:
        name = event.kv.key.removeprefix(self.prefix)
        domain = None if event.type == "delete" else self._decode(event.kv.key, event.kv.value)
        await self._consider(name, _Desired(domain, event.revision, received_at))
        self.revision = event.revision

    async def _consider(self, name: str, desired: _Desired) -> None:
        desired = await self._admit(name, desired)
        new = desired.domain
        if isinstance(new, DomainError):
            self._reject(name, desired, str(new))
            return
        if name in self._pending:
            self._pending[name] = desired  # the queued change, newer: still one reload
            return
        live = self.live.get(name)
        rejected = self.set_aside.get(name)
        if rejected is not None and isinstance(rejected.domain, Domain) and new is not None \
                and not changed_config(rejected.domain, new):
            # Still the config that failed, with other upstreams: serve them on the last good config.
            self.set_aside[name] = desired
            if live is not None:
                await self._in_place(name, desired, still_failing=True)
            return
        if live is not None and new is not None and not changed_config(live, new):
            self._forget_failure(name)
            await self._in_place(name, desired, still_failing=False)
            return
        if live is None and new is None:  # removal of a domain that was never in force here
            self._forget_failure(name)
            self._statuses[name] = None
            return
        self._queue(name, desired)

    def _queue(self, name: str, desired: _Desired) -> None:
        if self._first_pending_at is None:
            self._first_pending_at = self.runtime.now()
        self._pending[name] = desired

    async def _in_place(self, name: str, desired: _Desired, *, still_failing: bool) -> None:
        new = desired.valid
        assert new is not None  # an in-place change is from one config to the same with other servers
        live = self.live[name]
        if live.upstreams != new.upstreams:
            try:
                await self.proxy.set_upstreams(name, new.upstreams)
            except ProxyError:
                # Nginx does not have the domain we think it has (e.g. a crash between a removal
                # and saving the state): render it in full instead.
                if not still_failing:
                    self._queue(name, desired)
                return
            self.stats.in_place += 1
            self._upstreams_updated()
            self.runtime.trace("slb-upstreams", host=self.config.host, domain=name,
                               servers=len(new.upstreams))
        self.live[name] = live.with_upstreams(new.upstreams)
        if not still_failing:
            self.live_revision[name] = desired.revision
            self._took_effect(desired)
        self._statuses[name] = DomainStatus(self.live_revision.get(name, 0), self.errors.get(name, ""),
                                            desired.revision, self.runtime.wall_time())

    def _reject(self, name: str, desired: _Desired, error: str) -> None:
        self.stats.rejected += 1
        self.set_aside[name] = desired
        self.errors[name] = error
        self._pending.pop(name, None)
        self.runtime.trace("slb-rejected", host=self.config.host, domain=name[:300], revision=desired.revision)
        if _is_domain_name(name):  # a key that cannot be a domain gets no status key built from it
            self._statuses[name] = DomainStatus(self.live_revision.get(name, 0), error, desired.revision,
                                                self.runtime.wall_time())

    async def _culprits(self, changes: dict[str, Domain | None], error: str) -> dict[str, str]:
        """Which changes make ``nginx -t`` fail: halve the batch until each culprit is alone."""
        if len(changes) == 1:
            return {next(iter(changes)): error}
        names = list(changes)
        culprits: dict[str, str] = {}
        for half in (names[: len(names) // 2], names[len(names) // 2 :]):
            part = {name: changes[name] for name in half}
            part_error = await self.proxy.test(part)
            if part_error is not None:
                culprits.update(await self._culprits(part, part_error))
        return culprits

    async def _reject_and_serve(self, name: str, desired: _Desired, error: str) -> None:
        """Set a failing version aside, but still serve its upstreams on the config in force."""
        self._reject(name, desired, error)
        live, new = self.live.get(name), desired.domain
        if live is not None and isinstance(new, Domain) and live.upstreams != new.upstreams:
            try:
                await self.proxy.set_upstreams(name, new.upstreams)
            except ProxyError:
                return
            self._upstreams_updated()
            self.live[name] = live.with_upstreams(new.upstreams)

    def _forget_failure(self, name: str) -> None:
        self.set_aside.pop(name, None)
        self.errors.pop(name, None)

    # ------------------------------------------------------------------ a batch
    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending, self._first_pending_at = self._pending, {}, None
        changes = {name: d.valid for name, d in batch.items()}
        self.stats.batches += 1
        started = self.runtime.now()
        error = await self.proxy.test(changes)
        bad = {}
        if error is not None:
            # No single culprit (the changes only fail together): the whole batch is set aside.
            bad = await self._culprits(changes, error) or dict.fromkeys(changes, error)
        good = {name: domain for name, domain in changes.items() if name not in bad}
        for name in bad:
            live, new = self.live.get(name), changes[name]
            if live is not None and (new is None or new.owner != live.owner):
                # The record in force was deleted (and maybe recreated by someone else, whose
                # version fails): never keep serving the old owner's config under the new record.
                good[name] = None
        if good:
            try:
                outcome = await self.proxy.apply(good)
            except ReloadFailed as exc:
                # Nginx did not take the new config (it restored the old one): a fault of the host,
                # not of the domains. Keep the batch queued and try again after a pause.
                self._reloaded(False, started)
                self.runtime.trace("slb-reload-failed", host=self.config.host, domains=len(good))
                for name in good:
                    self._statuses[name] = DomainStatus(self.live_revision.get(name, 0), f"reload failed: {exc}",
                                                        batch[name].revision, self.runtime.wall_time())
                self._pending = {**batch, **self._pending}
                self._first_pending_at = self.runtime.now()
                await self._finish_step()  # report it now, not after the pause
                await self.runtime.sleep(self.config.retry)
                return
            except ProxyError as exc:
                self._reloaded(False, started)
                bad.update({name: f"reload failed: {exc}" for name in good if name not in bad})
                good = {}
            else:
                self._reloaded(True, started)
                self.stats.reloads += 1
                self._last_reload_at = self.runtime.now()
                self.runtime.trace("slb-reload", host=self.config.host, domains=len(good),
                                   generation=outcome.generation)
        for name, domain in good.items():
            self._forget_failure(name)
            if name not in bad:  # (a forced removal of a bad one is not its change taking effect)
                self._took_effect(batch[name])
            if domain is None:
                self.live.pop(name, None)
                self.live_revision.pop(name, None)
                self._statuses[name] = None
            else:
                self.live[name] = domain
                self.live_revision[name] = batch[name].revision
                self._statuses[name] = DomainStatus(batch[name].revision, "", batch[name].revision,
                                                    self.runtime.wall_time())
        for name, message in bad.items():  # after: a forced removal above still reports why
            await self._reject_and_serve(name, batch[name], message)
        self._last_save = float("-inf")  # a reload always saves

    async def _finish_step(self, *, force_save: bool = False) -> None:
        """Write statuses and, when due, the saved state; never ahead of what is in force."""
        self.metrics.set(SLB_DOMAINS_SET_ASIDE, len(self.set_aside), group=self.config.group, host=self.config.host)
        if self._statuses:
            for name, status in self._statuses.items():
                if status is not None and not status.error and name in self.notes:  # applied, minus some servers
                    self._statuses[name] = DomainStatus(status.revision, self.notes[name], status.wanted_revision,
                                                        status.at)
            await self._write_statuses(list(self._statuses.items()))
            self._statuses.clear()  # only once written: an etcd error keeps them for the next step
        now = self.runtime.now()
        if force_save or now - self._last_save >= self.config.save_every:
            pending_from = min((d.revision for d in self._pending.values()), default=None)
            revision = self.revision if pending_from is None else pending_from - 1
            await self.proxy.save_state(SavedState(revision, dict(self.live)))
            self._last_save = now

    async def _write_statuses(self, statuses: Iterable[tuple[str, DomainStatus | None]]) -> None:
        ops = []
        for name, status in statuses:
            key = status_key(self.config.group, self.config.host, name)
            ops.append(DeleteOp(key) if status is None else PutOp(key, status.to_bytes()))
        for start in range(0, len(ops), 64):
            await self.store.txn([], ops[start : start + 64])


def _dropped_note(outside: tuple[Upstream, ...]) -> str:
    shown = ", ".join(str(u) for u in outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    return f"upstreams dropped: {shown}: not a pod address (outside every registered pod pool)"


def _is_domain_name(name: str) -> bool:
    try:
        check_domain_name(name)
    except DomainError:
        return False
    return True


def _went_down(now: RequestCounts, before: RequestCounts) -> bool:
    """A count is lower than at the last read: Nginx started counting again (a restart)."""
    return now.seconds < before.seconds or any(now.by_class.get(c, 0) < n for c, n in before.by_class.items())
