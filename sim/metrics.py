"""What a simulated Region measures: counters, and the series sampled every ``metrics_every`` virtual seconds.

``Metrics`` holds the counters the Kubernetes emulation, the client traffic and the
cnictl cron add to; ``Sampler`` appends one sample of the series per period, on round
virtual times (``sleep_to_next``). The report (sim/report.py) reads both. The same tick is
the Region's Prometheus scrape: ``series.sample(t)`` stamps every agent-recorded series
(a ``SimMetrics``) at that virtual time, so the scrape interval is ``every`` (10 s by
default) and sampling adds no event of its own.

``SampledMetrics`` (the Region's Metrics port) also keeps the first ``MAX_SAMPLES``
observations of the histograms ``leengine compare`` holds against a lab run
(``SAMPLED``): the report's ``samples`` (sim/report.py). Keeping them adds no event,
trace line or store write, so ``trace_sha256`` is the same with or without them.
It must not change the Region: sampling is observation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cni.pools import Pool
from foundation.ports.metrics import (
    DISCOVERY_DRAIN_SECONDS,
    SLB_PROPAGATION_SECONDS,
    SLB_RELOAD_SECONDS,
    MetricDef,
)
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SimRuntime
from sim.audit import Auditor
from sim.topology import NginxHost


def percentile(ordered: list[float], q: float, digits: int) -> float:
    """The ``q`` quantile of an ascending list (the value at rank ``int(q * n)``), rounded; 0.0 when empty."""
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], digits) if ordered else 0.0


@dataclass
class Metrics:
    ok: int = 0
    failed: int = 0
    reload_failed: int = 0
    allocations: list[float] = field(default_factory=list)  # ADD latencies, virtual seconds
    add_errors: int = 0
    leaks_found: int = 0  # certain leaks seen by cnictl check
    leaks_released: int = 0
    leak_checks: int = 0
    leak_checks_skipped: int = 0
    pods_started: int = 0
    pods_died: int = 0
    pods_deleted: int = 0
    series: list[dict[str, Any]] = field(default_factory=list)
    max_leaked: int = 0
    serving_violations: int = 0  # host-seconds (see the domains-keep-serving check)
    serving_examples: list[str] = field(default_factory=list)  # the first few, for the report

    def violation(self, text: str) -> None:
        self.serving_violations += 1
        if len(self.serving_examples) < 10:  # a long outage must not grow a list of millions
            self.serving_examples.append(text)


MAX_SAMPLES = 5000  # per sample list: the first ones (deterministic, bounded)

# The report's sample lists fed by agents' histogram observations (the lab reads the same daemons):
# the SLB agent's share of propagation, its test + reload + confirmation of a batch, discovery's drains.
# cni_add_seconds (the kubelet's wait for a successful ADD) and build_seconds (submit to result) are
# the world's own measurements (sim/report.py).
SAMPLED: dict[str, str] = {SLB_PROPAGATION_SECONDS.name: "propagation_seconds",
                           SLB_RELOAD_SECONDS.name: "reload_seconds",
                           DISCOVERY_DRAIN_SECONDS.name: "drain_seconds"}


class SampledMetrics(SimMetrics):
    """``SimMetrics`` that also keeps the first ``MAX_SAMPLES`` observations of each ``SAMPLED`` histogram."""

    def __init__(self, runtime: SimRuntime) -> None:
        super().__init__(runtime)
        self.samples: dict[str, list[float]] = {key: [] for key in SAMPLED.values()}

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        super().observe(metric, value, **labels)
        key = SAMPLED.get(metric.name)
        if key is not None and len(self.samples[key]) < MAX_SAMPLES:
            self.samples[key].append(value)


def first(values: list[float], n: int = MAX_SAMPLES) -> list[float]:
    """The first ``n`` values, rounded to the microsecond (a report is JSON read by people too)."""
    return [round(v, 6) for v in values[:n]]


async def sleep_to_next(runtime: SimRuntime, interval: float) -> None:
    """Sleep to the next multiple of ``interval``: samples fall on round virtual times."""
    now = runtime.now()
    await runtime.sleep((math.floor(now / interval + 1e-9) + 1) * interval - now)


def pool_use(pools: dict[str, Pool], auditor: Auditor) -> dict[str, float]:
    """Percent of each pool's addresses allocated, per the Store's history."""
    return {name: round(100.0 * auditor.allocated.get(name, 0) / pool.capacity(), 2)
            for name, pool in sorted(pools.items())}


class Sampler:
    """One sample every ``every`` virtual seconds: requests, leaked addresses, pool use, allocations, reloads."""

    def __init__(self, runtime: SimRuntime, metrics: Metrics, hosts: dict[str, NginxHost], pools: dict[str, Pool],
                 auditor: Auditor, leaked: Callable[[], int], every: float,
                 series: SimMetrics | None = None) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.hosts = hosts
        self.pools = pools
        self.auditor = auditor
        self.leaked = leaked
        self.every = every
        self.series = series

    async def run(self) -> None:
        last = {"ok": 0, "failed": 0, "allocs": 0, "reloads": 0}
        while True:
            await sleep_to_next(self.runtime, self.every)
            m = self.metrics
            reloads = sum(h.proxy.reload_count for h in self.hosts.values())
            allocs = m.allocations[last["allocs"]:]
            leaked = self.leaked()
            m.max_leaked = max(m.max_leaked, leaked)
            m.series.append({"t": self.runtime.now(), "ok": m.ok - last["ok"], "failed": m.failed - last["failed"],
                             "leaked": leaked, "pool_use": pool_use(self.pools, self.auditor),
                             "allocations": len(allocs), "alloc_max": round(max(allocs), 6) if allocs else 0.0,
                             "reloads": reloads - last["reloads"]})
            if self.series is not None:
                self.series.sample(self.runtime.now())
            last = {"ok": m.ok, "failed": m.failed, "allocs": len(m.allocations), "reloads": reloads}
