"""The report of a simulated Region's run: verdicts, metrics, counts, series and the trace's hash.

``report(region)`` is a plain dict (``report_json`` writes it); the runner (sim/runner.py)
wraps it with the scenario's inputs, hash and code version. The trace's hash and event
count come from the runtime: everything the run did, in order.
It must not change the Region (the checks it asks for only read).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sim.metrics import SampledMetrics, first, percentile, pool_use

if TYPE_CHECKING:
    from sim.world import Region


def report(region: Region) -> dict[str, Any]:
    m = region.metrics
    lat = sorted(m.allocations)

    checks = [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in region.checks()]
    all_pods = [p for pods in region.kube.pods.values() for p in pods]
    hosts = region.hosts.values()
    return {
        "region": region.spec.name,
        "seed": region.spec.seed,
        "duration": region.spec.duration,
        "virtual_seconds": region.runtime.now(),
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "metrics": {
            "requests_ok": m.ok, "requests_failed": m.failed, "requests_failed_by_reloads": m.reload_failed,
            "allocations": len(lat), "alloc_p50": percentile(lat, 0.5, 6), "alloc_p99": percentile(lat, 0.99, 6),
            "alloc_max": round(lat[-1], 6) if lat else 0.0, "add_errors": m.add_errors,
            "leaked_max": m.max_leaked, "leaked_now": region.leaked(), "leaks_found": m.leaks_found,
            "leaks_released": m.leaks_released, "leak_checks": m.leak_checks,
            "leak_checks_skipped": m.leak_checks_skipped, "pool_use": pool_use(region.pools, region.auditor),
            "reloads": sum(h.proxy.reload_count for h in hosts),
            "reloads_max_per_host": max((h.proxy.reload_count for h in hosts), default=0),
            "discovery_pushes": region.discovery.stats.pushes,
            **region.farm.metrics(),
            **(region.webhooks.metrics() if region.webhooks is not None else {}),
        },
        "counts": {
            "cells": len(region.cells), "nodes": len(region.nodes), "nginx_hosts": len(region.hosts),
            "build_hosts": len(region.farm.hosts), "registry_images": len(region.farm.registry.images),
            "apps": len(region.apps), "pods_started": m.pods_started, "pods_died": m.pods_died,
            "pods_deleted": m.pods_deleted, "pods_alive": sum(1 for p in all_pods if p.alive),
            "faults": len(region.fault_windows), "store_writes": region.store.writes,
            "store_revision": region.store.revision,
        },
        **({"platform": region.platform.summary()} if region.platform is not None else {}),
        "series": m.series,
        "samples": samples(region),
        "trace_events": region.runtime.trace_log.count,
        "trace_sha256": region.runtime.trace_log.sha256,
    }


def samples(region: Region) -> dict[str, list[float]]:
    """The distributions ``leengine compare`` holds against a lab run, the first ``MAX_SAMPLES`` of each:
    cni_add_seconds (a kubelet's wait for a successful ADD), propagation_seconds, reload_seconds,
    drain_seconds (agents' observations, sim/metrics.py ``SAMPLED``), build_seconds (submit to result
    of the builds done, in order of submission)."""
    observed = region.agent_metrics.samples if isinstance(region.agent_metrics, SampledMetrics) else {}
    builds = [b.finished - b.submitted for b in region.farm.builds.values()
              if b.state == "done" and b.finished is not None]
    return {"cni_add_seconds": first(region.metrics.allocations),
            "propagation_seconds": first(observed.get("propagation_seconds", [])),
            "reload_seconds": first(observed.get("reload_seconds", [])),
            "drain_seconds": first(observed.get("drain_seconds", [])),
            "build_seconds": first(builds)}


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, indent=2)
