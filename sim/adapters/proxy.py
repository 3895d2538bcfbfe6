"""The sim Proxy adapter: an Nginx host as a cost model, with the port's promises kept.

What it models (defaults measured on this machine with the real adapter, see
bench/nginx_reload_curve.py and docs/slb.md):
* ``set_upstreams`` takes ``upstream_seconds`` and never reloads;
* ``test`` takes ``test_base + test_per_domain * domains``;
* ``apply`` takes the test plus ``reload_base + reload_per_domain * domains``; the
  previous worker generation keeps serving the connections it has for ``linger``
  seconds (old workers finish in-flight requests), which is what a reload costs
  keep-alive clients;
* a domain is refused by ``test`` when ``rejects(domain)`` returns an error text
  (the scenario decides what its Nginx refuses, e.g. a port another process holds;
  by default nothing: records reaching the agent are already validated).
State survives "agent restarts" in ``saved`` as files on a real host would.

Weights (a gray release's traffic split): ``serving`` leaves out servers of weight 0
(they get no new requests), and ``pick`` chooses the server of one request by the real
balancer's rule, smooth weighted round robin, deterministic (no draw from the run's
random source): over any ``sum(weights)`` consecutive picks each server gets exactly
its weight. With weight 1 everywhere ``serving`` is the upstreams as set, the very
tuple (the traffic model caches by identity), so nothing changes for runs without
weights. ``request_counts`` reports what a client model told ``answered`` (per domain
and the version tag of the upstream that answered), as Nginx's log phase counts them.
It must not know the agent or the Store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from foundation.logic.slb_domain import Domain, Upstream
from foundation.ports.proxy import (
    ProxyError,
    ReloadFailed,
    ReloadOutcome,
    RequestCounts,
    SavedState,
    with_changes,
)
from foundation.ports.runtime import Runtime


def _accepts_everything(domain: Domain) -> str | None:
    return None  # validated records pass nginx -t; a scenario injects what its Nginx refuses


@dataclass
class Generation:
    number: int
    started: float
    retired: float | None = None  # when a newer generation took over; it then lingers


@dataclass
class SimProxy:
    runtime: Runtime
    host: str
    # Fitted to bench/nginx_reload_curve.py on this machine (100 / 1,000 / 5,000 domains):
    # test() ~ 9 ms + 0.28 ms/domain, apply() ~ 0.12 s + 0.51 ms/domain (its own test included).
    upstream_seconds: float = 0.0006
    test_base: float = 0.009
    test_per_domain: float = 0.00028
    reload_base: float = 0.111
    reload_per_domain: float = 0.00023
    linger: float = 1.0
    rejects: Callable[[Domain], str | None] = _accepts_everything
    live: dict[str, Domain] = field(default_factory=dict)
    upstreams: dict[str, tuple[Upstream, ...]] = field(default_factory=dict)
    generations: list[Generation] = field(default_factory=list)
    saved: SavedState = field(default_factory=SavedState)
    reload_count: int = 0
    upstream_changes: int = 0
    fail_next_reload: bool = False
    # Told the names of domains whose ``serving`` answer may have changed (an observer, e.g.
    # the world's client accounting, so that it looks again only at what changed).
    on_change: Callable[[str], None] | None = None
    # domain -> (its upstreams as set, those of weight > 0, their smooth-weighted-round-robin scores)
    _rotation: dict[str, tuple[tuple[Upstream, ...], tuple[Upstream, ...], list[int]]] = field(
        default_factory=dict, repr=False)
    # (domain, version) -> [{status class: responses}, seconds]: what request_counts reports
    _answered: dict[tuple[str, str], tuple[dict[str, int], list[float]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.generations:
            self.generations.append(Generation(0, self.runtime.now()))

    @property
    def generation(self) -> int:
        return self.generations[-1].number

    def serving(self, domain: str) -> tuple[Upstream, ...]:
        """What a request for ``domain`` may be sent to right now: weight > 0 (empty: 502)."""
        if domain not in self.live:
            return ()
        upstreams = self.upstreams.get(domain, ())
        cached = self._rotation.get(domain)
        if cached is None or cached[0] is not upstreams:
            in_rotation = upstreams if all(u.weight for u in upstreams) else tuple(u for u in upstreams if u.weight)
            cached = self._rotation[domain] = (upstreams, in_rotation, [0] * len(in_rotation))
        return cached[1]

    def pick(self, domain: str) -> Upstream | None:
        """The server one request for ``domain`` goes to now (None: no server, 502): smooth weighted round robin."""
        servers = self.serving(domain)
        if not servers:
            return None
        scores = self._rotation[domain][2]
        total, best = 0, 0
        for i, server in enumerate(servers):
            scores[i] += server.weight
            total += server.weight
            if scores[i] > scores[best]:
                best = i
        scores[best] -= total
        return servers[best]

    def lingering(self) -> int:
        """Old worker generations still finishing requests at this instant."""
        now = self.runtime.now()
        return sum(1 for g in self.generations[:-1] if g.retired is not None and now - g.retired < self.linger)

    # ---- the port
    async def set_upstreams(self, domain: str, servers: tuple[Upstream, ...]) -> None:
        await self.runtime.sleep(self.upstream_seconds)
        if domain not in self.live:
            raise ProxyError(f"domain {domain} is not configured on {self.host}")
        self.upstreams[domain] = tuple(servers)
        self.upstream_changes += 1
        self._changed(domain)

    def _changed(self, *domains: str) -> None:
        if self.on_change is not None:
            for domain in domains:
                self.on_change(domain)

    async def test(self, changes: Mapping[str, Domain | None]) -> str | None:
        config = with_changes(self.live, changes)
        await self.runtime.sleep(self.test_base + self.test_per_domain * len(config))
        for domain in changes.values():
            if domain is not None and (error := self.rejects(domain)):
                return f"{domain.name}: {error}"
        return None

    async def apply(self, changes: Mapping[str, Domain | None]) -> ReloadOutcome:
        started = self.runtime.now()
        error = await self.test(changes)
        if error is not None:
            raise ProxyError(error)
        config = with_changes(self.live, changes)
        await self.runtime.sleep(self.reload_base + self.reload_per_domain * len(config))
        if self.fail_next_reload:
            self.fail_next_reload = False
            raise ReloadFailed("new workers did not confirm the generation; previous configuration restored")
        now = self.runtime.now()
        self.generations[-1].retired = now
        self.generations.append(Generation(self.generation + 1, now))
        del self.generations[:-8]  # keep the recent ones: enough for lingering
        self.live = config
        for name, domain in changes.items():
            if domain is None:
                self.upstreams.pop(name, None)
            else:
                self.upstreams[name] = domain.upstreams
        self.reload_count += 1
        self._changed(*changes)
        return ReloadOutcome(self.generation, now - started, len(config))

    async def load_state(self) -> SavedState:
        return self.saved

    async def save_state(self, state: SavedState) -> None:
        self.saved = SavedState(state.revision, dict(state.domains))

    async def reloads(self) -> int:
        return self.reload_count

    async def request_counts(self) -> dict[tuple[str, str], RequestCounts]:
        return {key: RequestCounts(dict(classes), total[0]) for key, (classes, total) in self._answered.items()}

    def answered(self, domain: str, upstream: Upstream | None, status: int, seconds: float, requests: int = 1) -> None:
        """Count ``requests`` answered with ``status`` for ``domain`` by ``upstream``, taking ``seconds`` in all.

        ``upstream`` None: no server took it (the 503 sink). For a client model; nothing else calls it.
        """
        classes, total = self._answered.setdefault((domain, upstream.version if upstream else ""), ({}, [0.0]))
        status_class = f"{status // 100}xx"
        classes[status_class] = classes.get(status_class, 0) + requests
        total[0] += seconds

    def restart(self) -> None:
        """The host rebooted (Nginx restarted): it serves its saved files again."""
        before = set(self.live)
        self.live = dict(self.saved.domains)
        self.upstreams = {name: d.upstreams for name, d in self.live.items()}
        self._answered.clear()  # Nginx's counters start again from zero
        self._changed(*sorted(before | set(self.live)))
