"""The Region's clients: requests counted per virtual second and app, served or failed by the Nginx hosts.

Model (kept simple; reports say so): an app's requests of one second are split
round-robin over its group's Nginx hosts that are not lost. A host's share succeeds when
the domain is live there and at least one upstream it serves is a pod that is alive,
ready and reachable (Nginx tries the next upstream: ``proxy_next_upstream``); otherwise
the whole share fails (502). Keep-alive clients lose ``reload_failure_fraction`` of a
host's requests in a second per reload that host did in it (requests racing the close
of idle connections by the old workers that ``SimProxy`` keeps lingering).

Accounting is event-driven: an app that serves on every live host of its group is
*settled*, and the settled apps of a group count as one sum per group and tick. Whatever
can change an app's answer *touches* it (``reachability_changed``, ``touch_domain``,
``touch_group``: a pod's state, an address changing hands, a host's config, a lost Nginx
host, a Cell cut off), and a touched app is looked at one by one every tick until it
serves everywhere again. A quiet Region of 2,000 apps then costs a few operations per
virtual second. As on LeEngine, clients find an app only once its domain serves
(operators publish it in DNS then): start-up is not an outage.

**Platform apps** (``AppSpec.platform``: versions, traffic shares) are never settled: each
tick, a host's part of the app's requests is split over the versions of the upstreams it
serves by their weights in force on that host (``SimProxy`` upstream weights, the gray
release's shares), exactly in the long run (fractions carry over, per host and domain).
Each version answers in ``REQUEST_SECONDS`` (times a bad version's ``latency_factor``), and
a **bad version** (the ``bad-version`` fault: ``set_bad``) answers ``error_rate`` of its
requests with 500 (fractions carry over: no draw from the run's random source). Every
answer is counted on the host's ``SimProxy`` (``answered``: per domain and version, what
``request_counts`` reports to the SLB agent's traffic records) and in ``versions``
(requests, failed per (app, version)); ``first_error`` keeps when each bad version first
failed a request. Requests lost to reloads are failed but never answered.

It must not change the Region (no pod, host or Store is touched here), only count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard

from foundation.logic.slb_domain import Upstream
from sim.adapters.runtime import SimRuntime
from sim.metrics import Metrics, sleep_to_next
from sim.spec import AppSpec, GroupSpec
from sim.topology import Cell, NginxHost, Pod

REQUEST_SECONDS = 0.02  # how long a platform app's good version takes to answer one request (the model's constant)


@dataclass
class BadVersion:
    """A bad-version fault in force: ``version`` "next" until the app's next version is deployed (``deployed``)."""

    app: str
    version: str
    error_rate: float
    latency_factor: float = 1.0


def share(count: int, hosts: int, i: int, turn: int) -> int:
    """Host ``i``'s part of ``count`` requests spread over ``hosts``; the remainder rotates with ``turn``."""
    return count // hosts + (1 if (i - turn) % hosts < count % hosts else 0)


class Traffic:
    def __init__(self, runtime: SimRuntime, apps: dict[str, AppSpec], domains: dict[str, str],
                 groups: tuple[GroupSpec, ...], hosts: dict[str, NginxHost], cells: dict[str, Cell],
                 pods: dict[tuple[str, str], list[Pod]], pod_by_ip: dict[str, Pod],
                 metrics: Metrics, *, tick: float, reload_failure_fraction: float, propagation_grace: float,
                 publish_grace: float) -> None:
        self.runtime = runtime
        self.apps = apps
        self.domains = domains
        self.groups = groups
        self.hosts = hosts
        self.cells = cells
        self.pods = pods  # the Kubernetes emulation's: (app, Cell) -> pods, address -> pod
        self.pod_by_ip = pod_by_ip
        self.metrics = metrics
        self.tick = tick
        self.reload_failure_fraction = reload_failure_fraction
        self.propagation_grace = propagation_grace
        self.publish_grace = publish_grace  # a new domain's first propagation (boot: thousands at once)
        self.epoch = 0  # bumps whenever a pod's reachability changes: request results are cached per epoch
        self._serve_cache: dict[tuple[str, str], tuple[tuple[object, ...], int, bool]] = {}
        self.published: set[str] = set()  # apps whose domain clients know
        self.watched: set[str] = set(apps)  # apps looked at one by one
        self.settled: set[str] = set()  # apps serving on every live host of their group
        self._settled_rate: dict[str, float] = {}
        self._settled_dirty: set[str] = set()
        self._owed_loss = {name: 0.0 for name in hosts}
        self._apps_of_domain: dict[str, list[str]] = {}
        for app, domain in domains.items():
            self._apps_of_domain.setdefault(domain, []).append(app)
        self._apps_in_group: dict[str, list[str]] = {}
        for spec in apps.values():
            self._apps_in_group.setdefault(spec.group, []).append(spec.name)
        self.bad: list[BadVersion] = []  # bad-version faults in force, oldest first
        self.versions: dict[tuple[str, str], list[int]] = {}  # (platform app, version) -> [requests, failed]
        self.first_error: dict[tuple[str, str], float] = {}  # (app, bad version) -> its first failed request
        self._split_owed: dict[tuple[str, str], dict[str, float]] = {}  # (host, domain) -> version -> owed
        self._error_owed: dict[tuple[str, str], float] = {}  # (app, version) -> failures owed

    # ------------------------------------------------------------------ what serves
    def good(self, pod: Pod | None) -> TypeGuard[Pod]:
        """The pod can answer a request: alive, ready, its Cell and its host reachable."""
        return (pod is not None and pod.alive and pod.ready and not self.cells[pod.cell].out
                and pod.node is not None and pod.node.alive)

    def serves(self, host: NginxHost, domain: str) -> bool:
        upstreams = host.proxy.serving(domain)
        cached = self._serve_cache.get((host.name, domain))
        if cached is not None and cached[0] is upstreams and cached[1] == self.epoch:
            return cached[2]
        # A good pod of one of the domain's apps: an address handed on to another app's pod
        # (the domain not yet updated) does not serve this domain.
        apps = self._apps_of_domain.get(domain, ())
        result = any(self.good(pod) and pod.app in apps
                     for pod in (self.pod_by_ip.get(u.host) for u in upstreams))
        self._serve_cache[(host.name, domain)] = (upstreams, self.epoch, result)
        return result

    def live_hosts(self, group: str) -> list[NginxHost]:
        return [h for h in self.hosts.values() if h.group == group and not h.lost]

    def not_serving_now(self) -> list[str]:
        """``app on host`` for every live host that does not serve an app's domain now."""
        return [f"{name} on {h.name}" for name, app in sorted(self.apps.items())
                for h in self.live_hosts(app.group) if not self.serves(h, self.domains[name])]

    def ready_elsewhere(self, app: str, now: float, grace: float | None = None) -> bool:
        """Some pod of the app is serving-capable, and has been long enough to have propagated."""
        grace = self.propagation_grace if grace is None else grace
        return any(self.good(p) and now - p.ready_at >= grace
                   for cell in self.apps[app].cells for p in self.pods.get((app, cell), ()))

    # ------------------------------------------------------------------ touches
    def reachability_changed(self, *apps: str) -> None:
        """Whether some pods can serve changed: cached request results are stale, these apps get looked at."""
        self.epoch += 1
        for app in apps:
            self.touch(app)

    def touch(self, app: str) -> None:
        if app in self.settled:
            self.settled.discard(app)
            self._settled_dirty.add(self.apps[app].group)
        self.watched.add(app)

    def touch_domain(self, domain: str) -> None:
        for app in self._apps_of_domain.get(domain, ()):
            self.touch(app)

    def touch_group(self, group: str) -> None:
        for app in self._apps_in_group.get(group, ()):
            self.touch(app)

    # ------------------------------------------------------------------ bad versions
    def set_bad(self, bad: BadVersion) -> None:
        self.bad.append(bad)

    def clear_bad(self, bad: BadVersion) -> None:
        if bad in self.bad:
            self.bad.remove(bad)

    def deployed(self, app: str, version: str) -> None:
        """``version`` of ``app`` was just deployed: bad-version faults waiting for the "next" one take it."""
        for bad in self.bad:
            if bad.app == app and bad.version == "next":
                bad.version = version

    def _badness(self, app: str, version: str) -> tuple[float, float]:
        """(error rate, latency factor) of a version: the newest fault on it, else (0, 1)."""
        for bad in reversed(self.bad):
            if bad.app == app and bad.version == version:
                return bad.error_rate, bad.latency_factor
        return 0.0, 1.0

    # ------------------------------------------------------------------ counting
    def _settled_rates(self) -> dict[str, float]:
        """Requests per second of the settled apps of each group (recomputed only where that set changed)."""
        for group in self._settled_dirty:
            self._settled_rate[group] = math.fsum(self.apps[a].requests_per_second
                                                  for a in self._apps_in_group.get(group, ()) if a in self.settled)
        self._settled_dirty.clear()
        return self._settled_rate

    def _served(self, host: NginxHost, reloads: int, count: int) -> int:
        """``count`` requests reached ``host``, which serves them; keep-alive clients lose some per reload.
        Returns how many were served (not lost)."""
        # Fractions carry over: a small share times a small fraction must not round to zero forever.
        self._owed_loss[host.name] += count * self.reload_failure_fraction * reloads
        lost = min(count, int(self._owed_loss[host.name]))
        self._owed_loss[host.name] -= lost
        self.metrics.reload_failed += lost
        self.metrics.failed += lost
        self.metrics.ok += count - lost
        return count - lost

    def _served_by_versions(self, host: NginxHost, app: str, domain: str, reloads: int, count: int) -> None:
        """A platform app's ``count`` requests on ``host``: split over versions by weight, bad ones fail some."""
        served = self._served(host, reloads, count)
        weights: dict[str, int] = {}
        sample: dict[str, Upstream] = {}
        for upstream in host.proxy.serving(domain):
            pod = self.pod_by_ip.get(upstream.host)
            if self.good(pod) and pod.app == app:  # Nginx passes a dead server's requests on to a live one
                weights[upstream.version] = weights.get(upstream.version, 0) + upstream.weight
                sample.setdefault(upstream.version, upstream)
        total = sum(weights.values())
        if served <= 0 or total <= 0:
            return
        owed = self._split_owed.setdefault((host.name, domain), {})
        for gone in [v for v in owed if v not in weights]:
            del owed[gone]  # a version no longer served here owes nothing
        parts: dict[str, int] = {}
        for version, weight in weights.items():
            owed[version] = owed.get(version, 0.0) + served * weight / total
            parts[version] = max(0, int(owed[version]))
            owed[version] -= parts[version]
        # The remainder to the versions owed most (ties: by name), an excess back from those owed least:
        # the split is exact over time.
        extra = served - sum(parts.values())
        for version in sorted(weights, key=lambda v: (-owed[v], v))[:max(0, extra)]:
            parts[version] += 1
            owed[version] -= 1.0
        for version in sorted(weights, key=lambda v: (owed[v], v))[:max(0, -extra)]:
            if parts[version]:
                parts[version] -= 1
                owed[version] += 1.0
        now = self.runtime.now()
        for version in sorted(parts):
            n = parts[version]
            if n <= 0:
                continue
            rate, slower = self._badness(app, version)
            failed = 0
            if rate > 0.0:
                key = (app, version)
                self._error_owed[key] = self._error_owed.get(key, 0.0) + n * rate
                failed = min(n, int(self._error_owed[key]))
                self._error_owed[key] -= failed
                if failed:
                    self.first_error.setdefault(key, now)
            seconds = REQUEST_SECONDS * slower
            tally = self.versions.setdefault((app, version), [0, 0])
            tally[0] += n
            tally[1] += failed
            self.metrics.ok -= failed
            self.metrics.failed += failed
            if n - failed:
                host.proxy.answered(domain, sample[version], 200, seconds * (n - failed), n - failed)
            if failed:
                host.proxy.answered(domain, sample[version], 500, seconds * failed, failed)

    async def run(self) -> None:
        owed = {name: 0.0 for name in self.apps}
        owed_group = {group.name: 0.0 for group in self.groups}
        turn = 0
        while True:
            await sleep_to_next(self.runtime, self.tick)
            now = self.runtime.now()
            reloads = {}
            for host in self.hosts.values():
                reloads[host.name] = host.proxy.reload_count - host.last_reloads
                host.last_reloads = host.proxy.reload_count
            turn += 1

            for group, rate in sorted(self._settled_rates().items()):
                if rate <= 0.0:
                    continue
                hosts = self.live_hosts(group)  # not empty: losing a host unsettles its group's apps
                owed_group[group] += rate * self.tick
                count = int(owed_group[group])
                owed_group[group] -= count
                for i, host in enumerate(hosts):
                    self._served(host, reloads[host.name], share(count, len(hosts), i, turn))

            for name in sorted(self.watched):
                app = self.apps[name]
                hosts = self.live_hosts(app.group)
                domain = self.domains[name]
                if name not in self.published:
                    if not any(self.serves(host, domain) for host in hosts):
                        if hosts and self.ready_elsewhere(name, now, self.publish_grace):
                            # An app with a pod ready for a while that no Nginx host serves is an outage
                            # (publish_grace: a Region booting thousands of domains takes time to push them all).
                            self.metrics.violation(f"t={now:g}: no host serves {domain} while a ready pod exists")
                        continue
                    self.published.add(name)
                owed[name] += app.requests_per_second * self.tick
                count = int(owed[name])
                owed[name] -= count
                if not hosts:
                    self.metrics.failed += count
                    continue
                everywhere = True
                for i, host in enumerate(hosts):
                    part = share(count, len(hosts), i, turn)
                    if not self.serves(host, domain):
                        everywhere = False
                        self.metrics.failed += part
                        if self.ready_elsewhere(name, now):
                            self.metrics.violation(f"t={now:g}: {host.name} has no live upstream for {domain} "
                                                   "while a ready pod exists")
                        continue
                    if app.platform:
                        self._served_by_versions(host, name, domain, reloads[host.name], part)
                    else:
                        self._served(host, reloads[host.name], part)
                if everywhere and not app.platform:  # a platform app's versions are counted one by one
                    self.watched.discard(name)
                    self.settled.add(name)
                    self._settled_dirty.add(app.group)
