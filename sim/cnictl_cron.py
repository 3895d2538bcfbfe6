"""The operator's cron in a simulated Region: cnictl's ``check_leaks`` then ``release_certain``, every period.

The real cnictl code (cni/admin.py) runs unchanged against the Region's etcd and a
``RegionCluster`` (the pods of every Cell): a round whose listing fails (a Cell's API
out of reach) or whose etcd calls fail is skipped and counted, never guessed. It keeps
what the ``leaks-found-and-released`` check asks: the distinct leaks found, and the
handles cnictl itself released (a leak freed by anything else is a bug the check shows).
It must not know the agents or the faults.
"""

from __future__ import annotations

from cni import admin
from cni.admin import AdminError
from foundation.ports import StoreError
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.metrics import NO_METRICS
from foundation.ports.metrics import Metrics as MetricsPort
from sim.adapters.cluster import RegionCluster
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import SimStoreClient
from sim.metrics import Metrics


class LeakCron:
    def __init__(self, runtime: SimRuntime, store: SimStoreClient, cluster: RegionCluster, metrics: Metrics, *,
                 every: float, grace: float, series: MetricsPort = NO_METRICS) -> None:
        self.runtime = runtime
        self.store = store
        self.cluster = cluster
        self.metrics = metrics
        self.every = every
        self.grace = grace
        self.series = series  # the Metrics port cnictl's logic records into (leak gauges, reclamations)
        self.leaks_seen: set[tuple[str, str]] = set()  # (address, handle) of every certain leak found
        self.released_by_cnictl: set[str] = set()  # handles

    async def run(self) -> None:
        while True:
            await self.runtime.sleep(self.every)
            try:
                report = await admin.check_leaks(self.store, self.cluster, self.runtime, grace=self.grace,
                                                metrics=self.series)
                released, _ = await admin.release_certain(self.store, self.runtime, metrics=self.series)
            except (ClusterUnavailable, AdminError, StoreError) as exc:
                self.metrics.leak_checks_skipped += 1
                self.runtime.trace("leak-check-skipped", error=type(exc).__name__)
                continue
            self.metrics.leak_checks += 1
            self.leaks_seen.update((leak.address, leak.handle) for leak in report.certain)
            self.metrics.leaks_found = len(self.leaks_seen)  # distinct: a leak seen by two checks is one
            self.metrics.leaks_released += len(released)
            self.released_by_cnictl.update(r.handle for r in released)
            self.runtime.trace("leak-check", suspects=len(report.leaks), certain=len(report.certain),
                               released=len(released))
