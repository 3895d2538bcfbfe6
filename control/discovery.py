"""Discovery: the ready pods of every app, across all its Cells, become its domains' upstream servers.

An app is a namespace with one Service in each Cell it runs in. A **binding** says
which domain of which Nginx group serves it and on which port. Discovery lists and
then watches the endpoints of every Cell (the Cluster port), keeps the **ready**
addresses per (Cell, app), and whenever the union over Cells changes, calls
slb-core's ``set_upstreams`` with the result (as the ``discovery`` principal). A pod
joins only once its readiness probe passes: not-ready addresses are never pushed.

**Drain** (scale-down without failed requests): before a pod is deleted, ``drain``
removes its address from every domain of its app, waits until every Nginx host of
the group reports the new revision applied (their status records), and only then
returns, so the caller may delete the pod. A Cell whose API server is out of reach
keeps its last known addresses (its pods are probably still serving) while discovery
retries; an app whose last ready address disappears is pushed as an empty list.

It must not know Kubernetes clients, etcd or gRPC: only the Cluster, Store (through
slb-core's logic) and Runtime ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.auth import Principal
from control.slb_core import NotFound, SlbCore, SlbError
from foundation.logic.mutex import Mutex
from foundation.logic.slb_domain import hosts_prefix
from foundation.ports import Cancelled, Runtime, StoreError
from foundation.ports.cluster import Cluster, ClusterUnavailable

DISCOVERY = Principal("discovery", "discovery")


@dataclass(frozen=True)
class Binding:
    namespace: str  # the app
    service: str
    port: int
    group: str
    domain: str


@dataclass
class DiscoveryStats:
    pushes: int = 0
    drains: int = 0
    cluster_errors: int = 0
    push_errors: int = 0


@dataclass
class Discovery:
    cells: dict[str, Cluster]
    slb: SlbCore
    runtime: Runtime
    bindings: list[Binding]
    retry: float = 1.0
    resync: float = 5.0
    linger: float = 30.0  # longest a forgotten address stays excluded while still listed ready
    stats: DiscoveryStats = field(default_factory=DiscoveryStats)

    def __post_init__(self) -> None:
        self._ready: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (cell, namespace, service) -> IPs
        self._draining: set[tuple[str, str]] = set()  # (namespace, ip) on their way out
        self._pushed: dict[tuple[str, str], tuple[str, ...]] = {}  # (group, domain) -> servers pushed
        self._listed: set[str] = set()  # Cells listed at least once
        # Indexes, so that a change costs what it touches, not the size of the Region:
        self._by_service: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}  # (ns, svc) -> cell -> IPs
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

    # ------------------------------------------------------------------ following the Cells
    async def run(self) -> None:
        tasks = [self.runtime.spawn(self._follow(cell, cluster), name=f"discovery/{cell}")
                 for cell, cluster in sorted(self.cells.items())]
        tasks.append(self.runtime.spawn(self._repush(), name="discovery/repush"))
        tasks.append(self.runtime.spawn(self._pusher(), name="discovery/pusher"))
        try:
            for task in tasks:
                await task.join()
        finally:
            for task in tasks:
                task.cancel()

    async def _follow(self, cell: str, cluster: Cluster) -> None:
        while True:
            try:
                listing, version = await cluster.list_endpoints()
                seen = {(cell, e.namespace, e.service) for e in listing}
                for key in [k for k in self._ready if k[0] == cell and k not in seen]:
                    self._set_ready(key, None)  # services deleted while we were not watching
                for endpoints in listing:
                    self._set_ready((cell, endpoints.namespace, endpoints.service), endpoints.ready)
                self._listed.add(cell)
                await self._push_all()
                if len(self._listed) == len(self.cells):
                    self.synced.set()
                watch = cluster.watch_endpoints(version)
                try:
                    async for event in watch:
                        key = (cell, event.endpoints.namespace, event.endpoints.service)
                        self._set_ready(key, None if event.type == "DELETED" else event.endpoints.ready)
                        self._wake_pusher()
                finally:
                    await watch.close()
            except Cancelled:
                raise
            except ClusterUnavailable:
                # Keep what we knew of this Cell: its pods are probably still serving.
                self.stats.cluster_errors += 1
                await self.runtime.sleep(self.retry)

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
            if self.synced.is_set():
                await self._push_stale()

    # ------------------------------------------------------------------ indexes
    def _set_ready(self, key: tuple[str, str, str], ips: tuple[str, ...] | None) -> None:
        """Record (or with None forget) the ready IPs of (cell, namespace, service); mark what they feed stale."""
        cell, ns, svc = key
        if ips is None:
            if self._ready.pop(key, None) is None:
                return
            self._by_service.get((ns, svc), {}).pop(cell, None)
        else:
            if self._ready.get(key) == ips and key in self._ready:
                return
            self._ready[key] = ips
            self._by_service.setdefault((ns, svc), {})[cell] = ips
        self._touch_service(ns, svc)
        self._end_lingering(ns)

    def _touch_service(self, ns: str, svc: str) -> None:
        for target in self._targets_of.get((ns, svc), ()):
            self._servers.pop(target, None)
            self._stale.add(target)

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
        servers = set()
        for other in self._feeds.get(target, [binding]):
            ips = {ip for ready in self._by_service.get((other.namespace, other.service), {}).values()
                   for ip in ready}
            ips -= self._drained_ips.get(other.namespace, set())
            servers |= {(ip, other.port) for ip in ips}
        result = tuple(f"{ip}:{port}" for ip, port in sorted(servers, key=lambda s: (_ip_order(s[0]), s[1])))
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

    async def _push_locked(self, binding: Binding, target: tuple[str, str]) -> tuple[bool, int | None]:
        servers = self.servers(binding)
        if self._pushed.get(target) == servers:
            self._stale.discard(target)
            return True, None
        try:
            revision = await self.slb.set_upstreams(DISCOVERY, binding.group, binding.domain, list(servers))
        except (SlbError, StoreError) as exc:
            # The domain may not exist yet, or etcd is away: the next change or resync pushes again.
            self.stats.push_errors += 1
            self.runtime.trace("discovery-push-failed", domain=binding.domain, error=type(exc).__name__)
            self._pushed.pop(target, None)
            return False, None
        self._pushed[target] = servers
        if self.servers(binding) == servers:
            self._stale.discard(target)
        self.stats.pushes += 1
        self.runtime.trace("discovery-push", domain=binding.domain, servers=len(servers), revision=revision)
        return True, revision

    # ------------------------------------------------------------------ drain
    async def drain(self, namespace: str, ip: str, *, timeout: float = 30.0, poll: float = 0.05) -> bool:
        """Take ``ip`` out of its app's upstreams and wait until every Nginx host applied that.

        True when all hosts confirmed within ``timeout``; False otherwise (the caller decides
        whether to delete the pod anyway). The address stays excluded until ``forget``.
        """
        self.stats.drains += 1
        self._draining.add((namespace, ip))
        self._drained_ips.setdefault(namespace, set()).add(ip)
        self._touch_namespace(namespace)
        waits = []
        for binding in self._of_namespace.get(namespace, ()):
            written, revision = await self._push_outcome(binding)
            if not written:
                return False  # the removal was not written: the pod still receives traffic
            if revision is None:  # nothing to change: it was out already
                revision = await self._current_revision(binding)
            if revision:
                waits.append((binding, revision))
        deadline = self.runtime.now() + timeout
        for binding, revision in waits:
            while not await self._applied_everywhere(binding, revision):
                if self.runtime.now() >= deadline:
                    return False
                await self.runtime.sleep(poll)
        return True

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
            return (await self.slb.get_domain(DISCOVERY, binding.group, binding.domain)).revision
        except (NotFound, StoreError):
            return 0

    async def _applied_everywhere(self, binding: Binding, revision: int) -> bool:
        """Every Nginx host of the group applied it (a decommissioned host's status records must be removed)."""
        try:
            registered = await self.slb.store.range(hosts_prefix(binding.group))
            report = await self.slb.get_status(DISCOVERY, binding.group, binding.domain)
        except (SlbError, StoreError):
            return False
        applied = {h.host: h.applied_revision for h in report.hosts}
        # Hosts alive now (registered under a lease) and hosts that ever reported this domain
        # (an agent restarting has no lease yet, but its Nginx still serves the old upstreams).
        hosts = {kv.key.removeprefix(hosts_prefix(binding.group)) for kv in registered.kvs} | set(applied)
        return all(applied.get(host, 0) >= revision for host in hosts)


def _ip_order(ip: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ip.split("."))
