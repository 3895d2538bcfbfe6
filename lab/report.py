"""The report of a lab run: ``report.json`` in the shape of a simulated run's (sim/runner.py's ``build_report``).

Same top-level fields (``report_version``, ``scenario``, ``seed``, ``code_version``,
``inputs``, ``passed``, ``checks``, ``counts``, ``metrics``, ``metrics_summary``, ...), the
same check names with the same fields (``name``, ``passed``, ``detail``), the same
``metrics`` and ``counts`` keys where the lab measures the thing (``requests_ok``,
``leaks_found``, ``reloads``, ``pods_started``, ...), plus ``scale: "lab"``, ``samples``
(the distributions ``leengine compare`` holds against the sim's: ``cni_add_seconds``,
``propagation_seconds``, ``reload_seconds``, ``drain_seconds``, ``build_seconds``; and, beside
``cni_add_seconds`` and in its order, ``cni_add_in_flight``: the machine's CNI ADDs in flight as each
began, itself included, which ``leengine lab fit`` relates the latency to) and
``lab`` (its id, the faults as applied, the /metrics scraped at the end). A lab run has
no trace: ``trace_sha256`` is null and ``virtual_seconds`` is the wall time the scenario ran.

It must not run anything: the driver (lab/run.py) hands it what it measured.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.checks import CheckResult
from sim.metrics import percentile
from sim.runner import REPORT_VERSION, metrics_summary
from sim.scenario import Scenario
from sim.spec import RegionSpec

SAMPLE_KINDS = ("cni_add_seconds", "propagation_seconds", "reload_seconds", "drain_seconds", "build_seconds")
# The lab's own measurements beside them, for ``lab fit`` (the sim's report has none: nothing to compare).
LAB_SAMPLE_KINDS = ("etcd_put_seconds", "etcd_get_seconds")
IN_FLIGHT = "cni_add_in_flight"  # paired with cni_add_seconds, unsorted: counts, not a distribution


@dataclass
class LabTotals:
    """What the driver measured, in the report's vocabulary."""

    ok: int = 0
    failed: int = 0
    failed_no_answer: int = 0
    add_errors: int = 0
    leaked_max: int = 0
    leaked_now: int = 0
    leaks_found: int = 0
    leaks_released: int = 0
    leak_checks: int = 0
    leak_checks_skipped: int = 0
    pool_use: dict[str, float] = field(default_factory=dict)
    reloads: dict[str, int] = field(default_factory=dict)
    pods_started: int = 0
    pods_died: int = 0
    pods_deleted: int = 0
    pods_alive: int = 0
    faults: int = 0
    store_revision: int = 0
    registry_images: int = 0
    builds: dict[str, Any] = field(default_factory=dict)  # the sim's builds_* metrics (lab/farm.py), if a farm ran
    series: list[dict[str, Any]] = field(default_factory=list)  # {"t", "ok", "failed", "leaked", ...} per period
    samples: dict[str, list[float]] = field(default_factory=dict)
    add_in_flight: list[int] = field(default_factory=list)  # of each cni_add_seconds sample, in its order


def lab_report(scenario: Scenario, spec: RegionSpec, checks: list[CheckResult], totals: LabTotals, *,
               code_version: dict[str, Any], elapsed: float, wall_seconds: float | None = None,
               lab: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict (``json.dumps``-able), shaped as sim/runner.py's ``build_report``."""
    verdicts = [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks]
    adds = sorted(totals.samples.get("cni_add_seconds", []))
    samples: dict[str, list[Any]] = {kind: [round(v, 6) for v in totals.samples.get(kind, [])]
                                     for kind in SAMPLE_KINDS}
    samples |= {kind: [round(v, 6) for v in totals.samples[kind]] for kind in LAB_SAMPLE_KINDS
                if totals.samples.get(kind)}
    if len(totals.add_in_flight) == len(samples["cni_add_seconds"]):  # pairs, or nothing
        samples[IN_FLIGHT] = list(totals.add_in_flight)
    metrics = {
        "requests_ok": totals.ok, "requests_failed": totals.failed,
        "requests_failed_no_answer": totals.failed_no_answer,
        "allocations": len(adds), "alloc_p50": percentile(adds, 0.5, 6), "alloc_p99": percentile(adds, 0.99, 6),
        "alloc_max": round(adds[-1], 6) if adds else 0.0, "add_errors": totals.add_errors,
        "leaked_max": totals.leaked_max, "leaked_now": totals.leaked_now, "leaks_found": totals.leaks_found,
        "leaks_released": totals.leaks_released, "leak_checks": totals.leak_checks,
        "leak_checks_skipped": totals.leak_checks_skipped, "pool_use": dict(sorted(totals.pool_use.items())),
        "reloads": sum(totals.reloads.values()),
        "reloads_max_per_host": max(totals.reloads.values(), default=0),
        **totals.builds,
    }
    counts = {
        "cells": len(spec.cells), "nodes": sum(c.nodes for c in spec.cells),
        "nginx_hosts": sum(g.hosts for g in spec.groups), "build_hosts": spec.build_hosts,
        "registry_images": totals.registry_images, "apps": len(spec.apps), "pods_started": totals.pods_started,
        "pods_died": totals.pods_died, "pods_deleted": totals.pods_deleted, "pods_alive": totals.pods_alive,
        "faults": totals.faults, "store_revision": totals.store_revision,
    }
    return {
        "report_version": REPORT_VERSION,
        "scenario": {"file": scenario.path, "name": spec.name, "sha256": scenario.sha256},
        "region": spec.name,
        "seed": spec.seed,
        "duration": spec.duration,
        "scale": "lab",
        "code_version": code_version,
        "inputs": asdict(spec),
        "passed": all(v["passed"] for v in verdicts),
        "checks": verdicts,
        "counts": counts,
        "metrics": metrics,
        "metrics_summary": metrics_summary(series_of(totals.series)),
        "samples": samples,
        "trace_sha256": None,
        "trace_events": 0,
        "virtual_seconds": round(elapsed, 3),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "plots": [],
        "replay": f"leengine lab run {shlex.quote(str(scenario.path))} --seed {spec.seed}",
        "openmetrics": None,
        "lab": lab or {},
    }


def series_of(samples: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``[{"t": .., name: v or {sub: v}}]`` -> ``name`` / ``name:sub`` -> ``[[t, v], ...]`` (as sim/runner.py)."""
    out: dict[str, list[list[float]]] = {}
    for sample in samples:
        t = float(sample.get("t", 0.0))
        for name, value in sample.items():
            if name == "t":
                continue
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        out.setdefault(f"{name}:{sub}", []).append([t, v])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(name, []).append([t, value])
    return out


def write_report(out: Path, report: dict[str, Any], series: list[dict[str, Any]]) -> Path:
    """``OUT/report.json`` and ``OUT/metrics.json`` (the series, as a simulated run writes them)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "metrics.json").write_text(json.dumps(series_of(series), sort_keys=True) + "\n")
    return path
