"""Seed sweeps: one scenario run on many seeds, results kept once per seed, failures grouped by cause.

A run of a scenario is a pure function of (scenario, seed, code) (sim/runner.py), so a
sweep is a map of ``run_seed(job, seed)`` over seeds. This module is the sweep's pure
orchestration: the task itself (``run_seed``: one seeded run of the Region, reduced to a
small picklable dict of verdicts, ``trace_sha256`` and failure signatures), the collection
of results (``Sweep``: each seed kept exactly once, whatever an engine delivers twice), the
grouping of failures by (check, signature), and what a sweep writes (``sweep.json``,
``summary.txt``, two PNG figures).

Where the tasks run is an ``Engine``'s business, in leengine/sweep_cmd.py: ``SerialEngine``
(this process, the reference) and ``DaskEngine`` (an embedded ``LocalCluster`` or a ``dask
scheduler`` by address, with retries); the engine also adds what this module may not measure
(each run's wall seconds, the worker, its code version). This module must not know Dask, the
terminal or how workers are started, and reads no clock.

Invariants: a seed's result is the same whichever engine ran it (``run_seed`` builds a
fresh ``SimRuntime`` seeded by the seed, as ``sim.runner.run_scenario`` does, so its
``trace_sha256`` equals a serial ``leengine sim run --seed N``); ``Sweep.add`` keeps the
first result of each seed and counts the others as duplicates; a signature holds
no number, address or name index, so seeds failing the same way share one group.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from sim.adapters.runtime import SimRuntime
from sim.fault_times import draw_fault_times, drawn_times, has_drawn_times
from sim.spec import MAX_SEED, RegionSpec
from sim.topology import IpamFactory, default_ipam
from sim.world import Region

SWEEP_VERSION = 1
MAX_SEEDS = 1_000_000  # one sweep; bigger sweeps are several (sweep.json holds every seed)
SIGNATURE_CHARS = 160
ERROR_CHECK = "(simulation)"  # the "check" of a run whose simulation raised (a bug in agent or world code)
LOST_CHECK = "(lost)"  # the "check" of a task the engine gave up on (its workers kept dying)

Result = dict[str, Any]


# ------------------------------------------------------------------ seeds


def parse_seeds(text: str) -> list[int]:
    """``"1-1000"``, ``"7"``, ``"1,5,10-20"`` -> the seeds in order, each once; ``ValueError`` names what is wrong."""
    seeds: list[int] = []
    seen: set[int] = set()
    if not text.strip():
        raise ValueError("no seeds: give e.g. 1-1000 or 1,5,9")
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d{1,19})(?:-(\d{1,19}))?", part)
        if not m:
            raise ValueError(f"{part[:40]!r} is not a seed or a range A-B of seeds")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if high < low:
            raise ValueError(f"{part!r}: the range ends before it starts")
        if high > MAX_SEED:
            raise ValueError(f"{part!r}: seeds are at most {MAX_SEED}")
        if len(seeds) + (high - low + 1) > MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS:,} seeds in one sweep")
        for seed in range(low, high + 1):
            if seed not in seen:
                seen.add(seed)
                seeds.append(seed)
    return seeds


# ------------------------------------------------------------------ the task


@dataclass(frozen=True)
class SweepJob:
    """What every task of a sweep shares: the validated spec (its seed is replaced per task) and, for
    tests, ``hook``: ``"module:attr"`` naming an ``IpamFactory`` the Region builds its IPAMs with (a
    deliberately broken agent); resolved by import on the worker, so the job stays picklable."""

    spec: RegionSpec
    hook: str | None = None


def signature(detail: str) -> str:
    """A failure's detail without what varies from seed to seed: hex ids, numbers (addresses, times,
    counts, node and app indexes) and the repeats of a list, cut to ``SIGNATURE_CHARS``."""
    text = re.sub(r"\b[0-9a-f]{12,64}\b", "H", detail)
    text = re.sub(r"\d+(?:\.\d+)*", "N", text)
    text = re.sub(r"([\w./-]+)(?:, \1\b)+", r"\1", text)  # "svc-N, svc-N, svc-N" -> "svc-N"
    text = re.sub(r"\s+", " ", text).strip()
    return text[:SIGNATURE_CHARS]


def resolve_hook(hook: str) -> IpamFactory:
    module, _, attr = hook.partition(":")
    if not module or not attr:
        raise ValueError(f"hook {hook[:60]!r} is not MODULE:ATTR")
    factory = getattr(importlib.import_module(module), attr)
    if not callable(factory):
        raise ValueError(f"hook {hook[:60]!r} is not callable")
    return factory  # type: ignore[no-any-return]


def run_seed(job: SweepJob, seed: int) -> Result:
    """One seeded run of the job's Region, as a small dict; never raises for a failure of the simulation
    (it becomes the result's ``error``, grouped under ``(simulation)``). The engine adds what this
    module may not measure: ``wall_seconds``, ``worker`` and ``code`` (leengine/sweep_cmd.py)."""
    spec = replace(job.spec, seed=seed)
    base: Result = {"seed": seed, **_fault_times(draw_fault_times(spec))}  # known even if the run raises
    try:
        factory = resolve_hook(job.hook) if job.hook else default_ipam
        runtime = SimRuntime(seed)
        region = Region(spec, runtime, ipam_factory=factory)
        region.run()
        checks = [dict(c) for c in region.report().get("checks", [])]
    except Exception as exc:  # a bug the seed found: one result, with the exception as its failure
        detail = f"{type(exc).__name__}: {exc}"
        return {**base, "passed": False, "checks": {}, "trace_sha256": None, "trace_events": None,
                "error": detail[:500],
                "failures": [{"check": ERROR_CHECK, "detail": detail[:500], "signature": signature(detail)}]}
    failures = [{"check": str(c.get("name")), "detail": str(c.get("detail", ""))[:500],
                 "signature": signature(str(c.get("detail", "")))} for c in checks if not c.get("passed")]
    return {**base, "passed": not failures, "checks": {str(c.get("name")): bool(c.get("passed")) for c in checks},
            "trace_sha256": runtime.trace_log.sha256, "trace_events": runtime.trace_log.count,
            "error": None, "failures": failures}


def _fault_times(spec: RegionSpec) -> Result:
    """``{"fault_times": [...]}``: when the faults whose times are ranges hit on this seed (none: nothing)."""
    return {"fault_times": drawn_times(spec)} if has_drawn_times(spec) else {}


def lost_result(seed: int, reason: str) -> Result:
    """The result of a task the engine gave up on (e.g. Dask's KilledWorker after its allowed failures)."""
    return {"seed": seed, "worker": None, "code": None, "passed": False, "checks": {}, "trace_sha256": None,
            "trace_events": None, "wall_seconds": None, "error": reason[:500],
            "failures": [{"check": LOST_CHECK, "detail": reason[:500], "signature": signature(reason)}]}


# ------------------------------------------------------------------ engines


Task = tuple[SweepJob, int]


class Engine(Protocol):
    """Runs tasks, yielding ``(index, result)`` as each completes: every index at least once (an engine
    that retries may yield an index twice; ``Sweep`` keeps the first)."""

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[int, Result]]: ...


# ------------------------------------------------------------------ collecting


@dataclass
class Sweep:
    """The results of one sweep, one per seed, as they arrive."""

    seeds: list[int]
    results: dict[int, Result] = field(default_factory=dict)  # seed -> its result
    duplicates: int = 0  # results delivered again for a seed already reported (a retried task)

    def add(self, result: Result) -> bool:
        """Keep ``result`` unless its seed already has one; True if kept (report it), False if a duplicate."""
        seed = int(result["seed"])
        if seed in self.results:
            self.duplicates += 1
            return False
        self.results[seed] = result
        return True

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results.values() if r["passed"])

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    def missing(self) -> list[int]:
        return [s for s in self.seeds if s not in self.results]


def run_sweep(engine: Engine, job: SweepJob, seeds: list[int], on_result: Any = None) -> Sweep:
    """Run every seed on ``engine``; ``on_result(result, sweep)`` after each newly kept result."""
    sweep = Sweep(seeds=list(seeds))
    for _index, result in engine.run((job, seed) for seed in seeds):
        if sweep.add(result) and on_result is not None:
            on_result(result, sweep)
    return sweep


def replay_command(scenario_file: str, seed: int, hook: str | None = None) -> str:
    """The command that replays one seed: ``sim run``, or with a hook (which ``sim run`` does not take) a sweep
    of that one seed."""
    if hook:
        return f"leengine sim sweep {shlex.quote(scenario_file)} --seeds {seed} --ipam-hook {shlex.quote(hook)}"
    return f"leengine sim run {shlex.quote(scenario_file)} --seed {seed}"


def failure_groups(results: Iterable[Result], scenario_file: str, hook: str | None = None) -> list[dict[str, Any]]:
    """Failing seeds grouped by (check, signature), biggest group first; each with its seeds (ascending)
    and the replay command of its smallest seed. A seed failing two checks is in two groups."""
    groups: dict[tuple[str, str], list[int]] = {}
    out: list[dict[str, Any]] = []
    examples: dict[tuple[str, str], str] = {}
    times: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for result in results:
        for failure in result["failures"]:
            key = (failure["check"], failure["signature"])
            groups.setdefault(key, []).append(int(result["seed"]))
            examples.setdefault(key, failure["detail"])
            if result.get("fault_times"):
                times.setdefault(key, []).append(result["fault_times"])
    for (check, sig), seeds in groups.items():
        seeds.sort()
        examples_seed = seeds[0]
        group = {"check": check, "signature": sig, "count": len(seeds), "seeds": seeds,
                 "example": examples[(check, sig)], "replay": replay_command(scenario_file, examples_seed, hook)}
        if (check, sig) in times:
            group["fault_times"] = time_spans(times[(check, sig)])
        out.append(group)
    out.sort(key=lambda g: (-len(g["seeds"]), g["check"], g["signature"]))
    return out


def time_spans(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Over some seeds' ``fault_times``: each drawn fault's kind, line and the span (min, max) of the times its
    seeds drew (where in its range a group of failing seeds was hit)."""
    spans: dict[int, dict[str, Any]] = {}
    for drawn in per_seed:
        for t in drawn:
            span = spans.setdefault(int(t["fault"]), {"fault": t["fault"], "kind": t["kind"], "line": t["line"]})
            for key in ("at", "duration"):
                if f"{key}_range" in t and t[key] is not None:
                    low, high = span.get(key, [t[key], t[key]])
                    span[key] = [min(low, t[key]), max(high, t[key])]
                    span[f"{key}_range"] = t[f"{key}_range"]
    return [spans[k] for k in sorted(spans)]


def summarize(sweep: Sweep, *, scenario: dict[str, Any], code: dict[str, Any], engine: dict[str, Any],
              seeds_text: str, wall_seconds: float, hook: str | None = None) -> dict[str, Any]:
    """The content of sweep.json."""
    results = [sweep.results[s] for s in sorted(sweep.results)]
    walls = [r["wall_seconds"] for r in results if r.get("wall_seconds") is not None]
    by_check = Counter(f["check"] for r in results for f in r["failures"])
    codes = Counter(r["code"] for r in results if r.get("code") is not None)
    return {
        "sweep_version": SWEEP_VERSION,
        "scenario": scenario,
        "code_version": code,
        "worker_code_versions": dict(codes),
        "seeds": {"spec": seeds_text, "count": len(sweep.seeds)},
        "engine": engine,
        "ipam_hook": hook,
        "wall_seconds": round(wall_seconds, 3),
        "seeds_per_minute": round(len(results) / wall_seconds * 60, 1) if wall_seconds > 0 else None,
        "totals": {"reported": len(results), "passed": sweep.passed, "failed": sweep.failed,
                   "errors": sum(1 for r in results if r["error"] and r["failures"][0]["check"] == ERROR_CHECK),
                   "lost": sum(1 for r in results if r["failures"] and r["failures"][0]["check"] == LOST_CHECK),
                   "missing": len(sweep.missing()), "duplicates_dropped": sweep.duplicates},
        "run_wall_seconds": _spread(walls),
        # The share of the workers' time spent in runs: 1.0 is no dispatch overhead at all (whatever the load).
        "busy_fraction": (round(sum(walls) / (wall_seconds * engine["threads"]), 3)
                          if walls and wall_seconds > 0 and engine.get("threads") else None),
        "failures_by_check": dict(sorted(by_check.items())),
        "groups": failure_groups(results, scenario.get("file") or "SCENARIO", hook),
        "results": results,
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None, "mean": None}
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1],
            "mean": round(sum(ordered) / len(ordered), 4)}


def summary_text(report: dict[str, Any], *, max_seeds: int = 20) -> str:
    """The summary table of a sweep, plain text (summary.txt; the CLI prints the same)."""
    t = report["totals"]
    lines = [f"sweep of {report['scenario'].get('name')}: seeds {report['seeds']['spec']} "
             f"({report['seeds']['count']:,}) on {report['engine'].get('kind')} "
             f"({report['engine'].get('workers')} workers)",
             f"{t['reported']:,} reported: {t['passed']:,} passed, {t['failed']:,} failed "
             f"({t['errors']} simulation errors, {t['lost']} lost), {t['missing']} missing, "
             f"{t['duplicates_dropped']} duplicate results dropped",
             f"{report['wall_seconds']:.1f} s wall (and {report['engine'].get('startup_seconds', 0)} s to start the "
             f"cluster), {report['seeds_per_minute']} seeds/min, workers busy {report.get('busy_fraction')}; one run "
             f"{report['run_wall_seconds']['min']}-{report['run_wall_seconds']['max']} s "
             f"(median {report['run_wall_seconds']['median']})",
             f"code {report['code_version'].get('describe')}"
             + (f"; IPAM hook {report['ipam_hook']}" if report.get("ipam_hook") else "")]
    if report["failures_by_check"]:
        lines.append("failures by check: " + ", ".join(f"{k} {v}" for k, v in report["failures_by_check"].items()))
    for group in report["groups"]:
        seeds = ", ".join(map(str, group["seeds"][:max_seeds])) + (" ..." if group["count"] > max_seeds else "")
        lines += [f"- {group['check']}: {group['count']} seed(s): {group['signature']}",
                  f"    seeds {seeds}", *_span_lines(group.get("fault_times", [])), f"    replay: {group['replay']}"]
    return "\n".join(lines) + "\n"


def _span_lines(spans: list[dict[str, Any]]) -> list[str]:
    """``    faults[0] (host-crash, line 30): at 41.2-47.9 s of 40-60 s`` per drawn fault of a group."""
    out = []
    for span in spans:
        parts = [f"{key} {span[key][0]:g}-{span[key][1]:g} s of {span[f'{key}_range'][0]:g}-"
                 f"{span[f'{key}_range'][1]:g} s" for key in ("at", "duration") if key in span]
        out.append(f"    faults[{span['fault']}] ({span['kind']}, line {span['line']}): drawn {', '.join(parts)}")
    return out


def write_sweep(report: dict[str, Any], out: Path, *, plots: bool = True) -> list[str]:
    """sweep.json, summary.txt and (``plots``) failures-by-check.png + wall-time.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "summary.txt").write_text(summary_text(report))
    files = ["sweep.json", "summary.txt"]
    if plots:
        files += _plots(report, out)
    return files


def _plots(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_check = report["failures_by_check"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(by_check) or ["(none)"]
    ax.barh(names, [by_check.get(n, 0) for n in names], color="#c0392b")
    ax.set_xlabel("failing seeds")
    ax.set_title(f"{report['scenario'].get('name')}: failures by check, of {report['totals']['reported']:,} seeds")
    fig.tight_layout()
    fig.savefig(out / "failures-by-check.png", dpi=100)
    plt.close(fig)
    written.append("failures-by-check.png")
    walls = [r["wall_seconds"] for r in report["results"] if r.get("wall_seconds") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(walls or [0.0], bins=min(50, max(5, len(walls) // 10)), color="#2c7fb8")
    ax.set_xlabel("wall seconds per run")
    ax.set_ylabel("runs")
    ax.set_title(f"{report['scenario'].get('name')}: wall time of one run ({len(walls):,} runs)")
    fig.tight_layout()
    fig.savefig(out / "wall-time.png", dpi=100)
    plt.close(fig)
    written.append("wall-time.png")
    if any(r.get("fault_times") for r in report["results"]):
        written.append(_fault_time_plot(report, out, plt))
    return written


def _fault_time_plot(report: dict[str, Any], out: Path, plt: Any) -> str:
    """fault-times.png: for each fault whose time is drawn, the seeds that passed and failed by the time drawn."""
    first = next(r["fault_times"] for r in report["results"] if r.get("fault_times"))
    panels = [(t["fault"], key, t["kind"]) for t in first for key in ("at", "duration") if f"{key}_range" in t]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), squeeze=False)
    for ax, (index, key, kind) in zip(axes[:, 0], panels, strict=True):
        passed: list[float] = []
        failed: list[float] = []
        for r in report["results"]:
            t = next((t for t in r.get("fault_times") or [] if t["fault"] == index), None)
            if t is not None and t.get(key) is not None:
                (passed if r["passed"] else failed).append(t[key])
        ax.hist([passed, failed], bins=40, stacked=True, color=["#2c7fb8", "#c0392b"],
                label=[f"passed ({len(passed)})", f"failed ({len(failed)})"])
        ax.set_xlabel(f"faults[{index}] ({kind}) {key}, virtual s (drawn per seed)")
        ax.set_ylabel("seeds")
        ax.legend(fontsize=8)
    axes[0, 0].set_title(f"{report['scenario'].get('name')}: seeds by the fault time drawn")
    fig.tight_layout()
    fig.savefig(out / "fault-times.png", dpi=100)
    plt.close(fig)
    return "fault-times.png"
