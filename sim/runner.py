"""Run one scenario on the sim runtime: drive the Region in slices of virtual time, then report.

``run_scenario`` builds a ``SimRuntime`` seeded from the spec, a ``sim.world.Region``
on it, and steps ``env.run(until=t)`` slice by slice (calling ``on_progress(t)``
between slices, for a progress bar). ``write_outputs`` writes ``report.json``
(inputs, seed, code version, scenario hash, every check's verdict, a metrics
summary, ``trace_sha256``, where the OpenMetrics file's time axis starts), ``metrics.json``
(the full series), ``metrics.om`` (every series the agents recorded through the Metrics
port, as a Prometheus scrape every ``scrape_interval`` virtual seconds would have seen it:
OpenMetrics with timestamps ``base_time + t``, for ``promtool tsdb create-blocks-from
openmetrics``), PNG plots with the
fault windows shaded (sim/plots.py) and ``report.html``, the same for a person in one
self-contained page (sim/report_html.py).

Invariant: the report's ``trace_sha256`` depends only on (scenario, seed): slicing
the run changes nothing, since ``env.run(until=t)`` processes the same events in the
same order whatever the slice boundaries. Wall time is recorded but never hashed.

It must not know the terminal (the CLI draws progress and tables) nor real adapters.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim import report_html
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SIM_EPOCH, SimRuntime
from sim.agent_series import agent_series
from sim.fault_times import drawn_times, has_drawn_times
from sim.plots import KEY_METRICS, fault_windows, write_plots
from sim.scenario import NAME, Scenario
from sim.spec import RegionSpec
from sim.world import Region

SLICES = 200  # progress updates over the run
REPORT_VERSION = 1
OPENMETRICS_FILE = "metrics.om"


def extract_series(report: dict[str, Any]) -> dict[str, list[list[float]]]:
    """Time series of a Region report: ``metrics`` entries that are ``[[t, v], ...]`` lists, plus
    ``series`` (a list of ``{"t": .., name: value or {sub: value}}`` samples), flattened to
    ``name`` / ``name:sub`` -> ``[[t, value], ...]``."""
    out: dict[str, list[list[float]]] = {}
    for name, value in (report.get("metrics") or {}).items():
        if isinstance(value, list) and all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
            out[name] = [[float(t), v] for t, v in value]
    for sample in report.get("series") or []:
        t = float(sample.get("t", 0.0))
        for name, value in sample.items():
            if name == "t":
                continue
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, int | float):
                        out.setdefault(f"{name}:{sub}", []).append([t, v])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(name, []).append([t, value])
    return out


def scalar_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The report's ``metrics`` entries that are not time series (totals, percentiles, per-pool dicts)."""
    return {k: v for k, v in (report.get("metrics") or {}).items() if not isinstance(v, list)}


@dataclass
class RunResult:
    scenario: Scenario
    spec: RegionSpec
    report: dict[str, Any]  # what Region.report() returned
    trace_sha256: str
    trace_events: int
    virtual_seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    agent_metrics: SimMetrics | None = None  # what the agents recorded, scraped every scrape_interval
    scrape_interval: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.get("passed") for c in self.checks)


class SteppedRuntime(SimRuntime):
    """A SimRuntime whose ``run(until=T)`` advances in slices, reporting progress between them.

    Slicing does not change the event order (``env.run(until=t)`` stops before events
    at ``t`` and resumes with them), so the trace is the one an unsliced run makes.
    """

    def __init__(self, seed: int, *, slice_seconds: float, on_progress: Callable[[float], None] | None) -> None:
        super().__init__(seed)
        self.slice_seconds = slice_seconds
        self.on_progress = on_progress

    def run(self, until: float | None = None) -> None:
        if until is None or self.slice_seconds <= 0:
            super().run(until)
            return
        while self.env.now < until:
            t = min(until, self.env.now + self.slice_seconds)
            super().run(until=t)
            if self.on_progress is not None:
                self.on_progress(t)


def run_scenario(scenario: Scenario, *, on_progress: Callable[[float], None] | None = None,
                 slices: int = SLICES) -> RunResult:
    """Run the Region of a scenario to its end (``Region.run``: boot, run to the duration, trace the verdicts)."""
    spec = scenario.spec
    runtime = SteppedRuntime(spec.seed, slice_seconds=spec.duration / max(slices, 1), on_progress=on_progress)
    region = Region(spec, runtime)
    region.run()
    report = region.report()
    checks = [dict(c) for c in report.get("checks", [])]
    return RunResult(scenario=scenario, spec=region.spec, report=report, trace_sha256=runtime.trace_log.sha256,
                     trace_events=runtime.trace_log.count, virtual_seconds=runtime.now(), checks=checks,
                     agent_metrics=region.agent_metrics, scrape_interval=region.sampler.every)


# ------------------------------------------------------------------ outputs


def output_dir(spec: RegionSpec, base: Path = Path("runs")) -> Path:
    """The default output directory, ``runs/NAME-seedN``: one directory inside ``base``, whatever the name.

    A scenario's name was validated against ``sim.scenario.NAME``; a ``RegionSpec`` built
    in code was not, so the rule is checked again here rather than trusted.
    """
    if not NAME.fullmatch(spec.name):
        raise ValueError(f"scenario name {spec.name[:40]!r} is not [a-z0-9][a-z0-9-]{{0,62}}: no output path from it")
    return base / f"{spec.name}-seed{spec.seed}"


def summarize_series(points: list[list[float]]) -> dict[str, float | int | None]:
    values = [float(v) for _, v in points if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"points": len(points), "min": None, "max": None, "mean": None, "last": None}
    return {"points": len(points), "min": min(values), "max": max(values),
            "mean": round(sum(values) / len(values), 6), "last": values[-1]}


def metrics_summary(metrics: dict[str, list[list[float]]]) -> dict[str, dict[str, Any]]:
    return {name: summarize_series(points) for name, points in ordered_metrics(metrics)}


def ordered_metrics(metrics: dict[str, list[list[float]]]) -> list[tuple[str, list[list[float]]]]:
    def rank(name: str) -> tuple[int, str]:
        base = name.split(":")[0]
        return (KEY_METRICS.index(base) if base in KEY_METRICS else len(KEY_METRICS), name)

    return [(n, metrics[n]) for n in sorted(metrics, key=rank)]


def build_report(result: RunResult, *, code_version: dict[str, Any], wall_seconds: float | None = None,
                 plots: list[str] | None = None) -> dict[str, Any]:
    spec, scenario = result.spec, result.scenario
    metrics = extract_series(result.report)
    return {
        "report_version": REPORT_VERSION,
        "scenario": {"file": scenario.path, "name": spec.name, "sha256": scenario.sha256},
        "seed": spec.seed,
        "code_version": code_version,
        "inputs": asdict(spec),
        "passed": result.passed,
        "checks": result.checks,
        # faults whose `at`/`duration` are ranges: the times this seed drew (also in inputs.faults)
        **({"fault_times": drawn_times(spec)} if has_drawn_times(spec) else {}),
        "counts": result.report.get("counts", {}),
        "metrics": scalar_metrics(result.report),
        "metrics_summary": metrics_summary(metrics),
        "samples": result.report.get("samples", {}),  # the distributions `leengine compare` reads
        # a Region with platform apps: requests per version, releases and shares over time (sim/platform.py)
        **({"platform": result.report["platform"]} if "platform" in result.report else {}),
        "scale": spec.scale,  # "lab": the scenario's lab block applied (`sim run --lab`)
        "trace_sha256": result.trace_sha256,
        "trace_events": result.trace_events,
        "virtual_seconds": result.virtual_seconds,
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "plots": plots or [],
        "replay": f"leengine sim run {shlex.quote(str(scenario.path))} --seed {spec.seed}"
                  + (" --lab" if spec.scale == "lab" else ""),
        # Virtual time t is stamped base_time + t in metrics.om: the sim's wall clock (SIM_EPOCH +
        # t, 2026-01-01) that agents also stamp into gauges, so a query at base_time + t sees t.
        "openmetrics": None if result.agent_metrics is None else {
            "file": OPENMETRICS_FILE, "base_time": SIM_EPOCH, "scrape_interval": result.scrape_interval,
            "samples": len(result.agent_metrics.sample_times)},
    }


def write_outputs(result: RunResult, out: Path, *, code_version: dict[str, Any],
                  wall_seconds: float | None = None, plot: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = extract_series(result.report)
    spec = result.spec
    windows = fault_windows(spec)
    title = f"{spec.name} seed {spec.seed}"
    files = write_plots(metrics, out, title, windows=windows, duration=spec.duration) if plot else {}
    # The agents' catalogue series, a few lines per family (metrics.om has every label set).
    agents = agent_series(result.agent_metrics) if result.agent_metrics is not None else {}
    agent_files = (write_plots(agents, out, title, windows=windows, duration=spec.duration, overview=None)
                   if plot else {})
    (out / "metrics.json").write_text(json.dumps(metrics, sort_keys=True) + "\n")
    if result.agent_metrics is not None:
        with (out / OPENMETRICS_FILE).open("w", encoding="utf-8") as om:
            result.agent_metrics.write_openmetrics(om, base_time=SIM_EPOCH)
    report = build_report(result, code_version=code_version, wall_seconds=wall_seconds,
                          plots=[*files.values(), *agent_files.values()])
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    figures = {family: (out / file).read_bytes() for family, file in [*files.items(), *agent_files.items()] if family}
    page = report_html.render(report, windows=windows, figures=figures, duration=spec.duration, metrics=metrics,
                              agents=agents)
    (out / "report.html").write_text(page, encoding="utf-8")
    return report
