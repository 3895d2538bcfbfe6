"""Fit the sim's cost models from lab reports: ``leengine lab fit LAB_REPORT... --out scenarios/costs.yaml``.

A report is a ``lab run``'s report.json (``samples`` as sim/report.py defines them). Every
report weighs the same, since ``leengine compare`` judges each scenario's median against the
sim's (±25 %) and the reports differ in what their samples are made of (pooled, the 201
reloads of a storm outweighed the four boot reloads of a quiet scenario, and the many
one-at-a-time ADDs of churn outweighed a boot's ADDs all at once). The reload duration is
fitted to the **midrange of the reports' medians** (``midrange``: the geometric mean of the
smallest and the largest report median, the constant that keeps the largest lab/sim ratio
as small as it can be); the ADD latency to a line in the ADDs in flight (a boot's ADDs,
all at once, contend for the machine's 2 cores: a constant attach time could not be within
±25 % of both a boot and churn when they differ by more than 1.67x). The builder uses the
pooled median. Medians, so one slow outlier moves nothing. What is fitted, and how:

* **store latency** (``costs.store.latency`` and ``costs.store.commit_seconds``): ``lab run``
  times one get and one put a second through a client's link to the lab's 3-member etcd, as
  the agents reach it (``samples.etcd_get_seconds``, ``etcd_put_seconds``). The round trip is
  the median of the reports' median gets (a linearizable read: the leader confirms it is
  still the leader, no disk); the commit is the median of their median puts less it (the
  raft round and the members' WAL fsync every write waits for: IPAM's transactions, leases,
  the SLB records), never below 0. Why two numbers: one latency for everything, set to a
  put's 7-9 ms, also slowed the sim's reads and watch deliveries, and its reload storm made
  106 reloads against the lab's 84-86. Reports without both lists keep the current values.
* **dataplane attach** (``costs.dataplane.attach_seconds`` and ``lab_costs.dataplane.attach_per_in_flight``):
  the lab's ADD latency as the runtime sees it (``cni_add_seconds``: plugin exec, agent, IPAM,
  veth, OVS port) grows with the ADDs in flight on the machine as it begins
  (``cni_add_in_flight``, itself included, recorded beside each sample by the lab kubelet):
  the CNI agents, OVS's userspace datapath and etcd share 2 cores. Fitted as
  ``seconds = a + b x (in flight - 1)`` by weighted least squares (``in_flight_line``) over
  each report's median latency per in-flight count, each median weighted by its share of its
  report's ADDs, so every report weighs the same however many ADDs it made (medians, so one
  slow outlier moves nothing). ``attach_seconds`` is ``a`` (an ADD alone on its machine: what
  a Region's node, its own machine, pays too) minus the store's share, ``ROUND_TRIPS_PER_ADD``
  writes at the (fitted) store costs, round trip + commit: the sim's median ADD is one IPAM
  transaction (its batch commit), and everything else a real ADD costs (the plugin's start, the socket hop,
  netlink, OVSDB) is attach time in the sim; never below 0. ``b`` is
  ``lab_costs.dataplane.attach_per_in_flight`` only: the lab's nodes share one machine, and a
  lab-scaled sim run charges each attach ``b`` per other attach in flight in the Region
  (sim/adapters/dataplane.py, sim/world.py); never below 0. Reports without in-flight counts
  (older lab runs) fall back to a constant: the midrange of the reports' medians, with no slope (the
  constant holds their contention already).
* **reload curve** (``costs.proxy``): the SLB agent's ``reload_seconds`` (test + reload +
  confirmation of a batch) is ``test_base + reload_base + (test_per_domain +
  reload_per_domain) * domains``. The per-domain slopes stay (bench/nginx_reload_curve.py
  measures them over 100-5,000 domains; a lab holds a handful), and the bases absorb the
  difference, in their current proportion: ``base = midrange(report median - slopes * domains)``,
  each report's median less its own per-domain share, where ``domains`` is that report's
  largest Nginx group's domain count in its ``inputs`` (its count of apps otherwise).
* **builder durations** (``lab_costs.builder``: the lab's builds are a tiny repository's,
  not a Region's): every step (clone, compile cold and warm, image, push through the
  registry's bandwidth) is scaled by one factor so that a cold build's modelled time
  equals the median ``build_seconds`` (submit to result, queueing included: an upper
  bound on the steps).

**The machine's load.** The lab's timings move with what else runs on its machine (ADDs alone
took 0.06 s on a quiet machine, 0.24 s at a 1-minute load of 7-13 on 2 CPUs), so costs fitted
from loaded runs make the sim 2-3x slower than a quiet lab. ``lab run`` records the load
over the run (``lab.machine_load``); a report whose median load per CPU is above
``max_load`` (default 2.0) is refused, naming it; older reports without it are noted.
The load includes the lab's own work: quiet runs here had medians of 0.2-1.5 per CPU (the
reload storm the most), runs beside other work 3.3-7.5.

``propagation_seconds`` and ``drain_seconds`` fit nothing: they are made of the agents'
own code and timers, which the sim runs as they are; ``leengine compare`` judges them.
The output is a complete costs file (sim/scenario_costs.py) with a ``fitted:`` block
naming the reports and the sample counts; it must parse (it is read back before it is
written). Changing the shipped costs moves the shipped scenarios' trace_sha256: re-pin
tests/sim/test_trace_stability.py in the same commit.
It must not run a lab or a simulation.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lab.compare import CompareError, load_report, machine_load, reference_rates, samples
from sim.metrics import percentile
from sim.scenario_costs import CostsFile, apply_overrides, cost_fields, load_costs, parse_costs
from sim.spec import MAX_ETCD_LATENCY, BuilderCosts, CostSpec

ROUND_TRIPS_PER_ADD = 1  # the sim's median ADD: one IPAM transaction (docs above)
STORE_SAMPLES = ("etcd_get_seconds", "etcd_put_seconds")  # the lab's own (lab/report.py LAB_SAMPLE_KINDS)
FITTED_SAMPLES = ("cni_add_seconds", "reload_seconds", "build_seconds", *STORE_SAMPLES)
IN_FLIGHT = "cni_add_in_flight"  # beside cni_add_seconds in a lab report's samples, in its order (lab/report.py)


class FitError(ValueError):
    """Nothing to fit from, or a report that is not one: one line."""


@dataclass
class Fit:
    costs: CostSpec
    lab_costs: CostSpec | None
    reports: list[str]
    samples: dict[str, int]
    notes: list[str] = field(default_factory=list)  # what was fitted and from what, one line each


def _pooled(reports: list[dict[str, Any]], name: str) -> list[float]:
    from lab.compare import samples

    out: list[float] = []
    for report in reports:
        out.extend(samples(report, name))
    return sorted(out)


def midrange(medians: list[float]) -> float:
    """The geometric mean of the smallest and largest (>0): the value whose worst ratio to any of them is least."""
    low, high = max(min(medians), 1e-9), max(max(medians), 1e-9)
    return round(math.sqrt(low * high), 6)


def in_flight_pairs(report: dict[str, Any]) -> list[tuple[int, float]]:
    """A report's (ADDs in flight, seconds) of each ADD; [] when it has no in-flight counts that pair up."""
    got = report.get("samples") or {}
    seconds, counts = got.get("cni_add_seconds"), got.get(IN_FLIGHT)
    if not isinstance(seconds, list) or not isinstance(counts, list) or len(seconds) != len(counts):
        return []
    pairs = []
    for n, s in zip(counts, seconds, strict=True):
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(s, int | float) \
                and not isinstance(s, bool) and math.isfinite(s) and s >= 0:
            pairs.append((n, float(s)))
    return pairs


def in_flight_line(reports: list[list[tuple[int, float]]]) -> tuple[float, float]:
    """``(a, b)`` of ``seconds = a + b x (in flight - 1)``: weighted least squares over each report's median
    seconds per in-flight count, weighted by that count's share of the report's ADDs (every report weighs 1)."""
    points: list[tuple[float, float, float]] = []  # (x, median seconds, weight)
    for pairs in reports:
        if not pairs:
            continue
        by_count: dict[int, list[float]] = {}
        for n, s in pairs:
            by_count.setdefault(n, []).append(s)
        for n, values in sorted(by_count.items()):
            points.append((n - 1.0, percentile(sorted(values), 0.5, 6), len(values) / len(pairs)))
    if not points:
        raise FitError("no ADD has an in-flight count")
    w = sum(p[2] for p in points)
    mx = sum(x * wt for x, _, wt in points) / w
    my = sum(y * wt for _, y, wt in points) / w
    sxx = sum(wt * (x - mx) ** 2 for x, _, wt in points)
    b = sum(wt * (x - mx) * (y - my) for x, y, wt in points) / sxx if sxx > 0 else 0.0
    b = max(b, 0.0)  # contention never makes an ADD faster
    a = my - b * mx
    if a < 0:  # the line through 0 at x=0: the least-squares slope through the origin
        a, b = 0.0, sum(wt * x * y for x, y, wt in points) / max(sum(wt * x * x for x, _, wt in points), 1e-12)
    return round(a, 6), round(max(b, 0.0), 6)


def _store_samples(report: dict[str, Any]) -> tuple[list[float], ...]:
    """A report's etcd (gets, puts) a store cost can be: a hostile or corrupt one (<= 0, beyond the bound) is not."""
    return tuple([v for v in samples(report, kind) if 0 < v < MAX_ETCD_LATENCY] for kind in STORE_SAMPLES)


def _domains(report: dict[str, Any]) -> int:
    """Domains on one Nginx host of the report's largest group (apps per group), else its app count."""
    inputs = report.get("inputs")
    apps = inputs.get("apps") if isinstance(inputs, dict) else None
    if isinstance(apps, list) and apps:
        per_group: dict[str, int] = {}
        for app in apps:
            if isinstance(app, dict) and isinstance(app.get("group"), str):
                per_group[app["group"]] = per_group.get(app["group"], 0) + 1
        if per_group:
            return max(per_group.values())
    count = (report.get("counts") or {}).get("apps")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def fit(reports: list[dict[str, Any]], names: list[str], base: CostsFile) -> Fit:
    """The cost models ``reports`` give, on top of ``base`` (what is not fitted keeps its value)."""
    costs = base.costs
    lab_costs = apply_overrides(costs, base.lab_overrides) if base.lab_overrides else None
    counts = {name: len(_pooled(reports, name)) for name in FITTED_SAMPLES}
    out = Fit(costs, lab_costs, names, counts)
    if not any(counts.values()):
        raise FitError("the reports hold no samples to fit from (cni_add_seconds, reload_seconds, build_seconds)")

    timed = [(gets, puts) for gets, puts in (_store_samples(r) for r in reports) if gets and puts]
    latency, commit = costs.store.latency, costs.store.commit_seconds
    if timed:
        latency = percentile(sorted(percentile(gets, 0.5, 6) for gets, _ in timed), 0.5, 6)
        put = percentile(sorted(percentile(puts, 0.5, 6) for _, puts in timed), 0.5, 6)
        commit = round(max(0.0, put - latency), 6)
        out.notes.append(f"store.latency = median of {len(timed)} reports' median get {latency:.6f} s; "
                         f"commit_seconds = their median put {put:.6f} s - it = {commit:.6f} s "
                         f"(n={sum(len(gets) + len(puts) for gets, puts in timed)})")
    else:
        out.notes.append(f"store.latency kept at {latency:.6f} s, commit_seconds at {commit:.6f} s "
                         f"(no report has both etcd_get_seconds and etcd_put_seconds)")
    costs = replace(costs, store=replace(costs.store, latency=latency, commit_seconds=commit))

    adds = _pooled(reports, "cni_add_seconds")
    paired = [in_flight_pairs(r) for r in reports]
    per_in_flight = (lab_costs or costs).dataplane.attach_per_in_flight
    if adds and any(paired):
        a, per_in_flight = in_flight_line(paired)
        attach = round(max(0.0, a - ROUND_TRIPS_PER_ADD * (latency + commit)), 6)
        costs = replace(costs, dataplane=replace(costs.dataplane, attach_seconds=attach))
        used = sum(len(p) for p in paired)
        out.notes.append(f"dataplane: ADD = {a:.6f} s + {per_in_flight:.6f} s x (ADDs in flight - 1), weighted "
                         f"least squares over {sum(1 for p in paired if p)} reports' medians per in-flight count "
                         f"(n={used}); attach_seconds = {a:.6f} - {ROUND_TRIPS_PER_ADD} x {latency + commit:.6f} s = "
                         f"{attach:.6f} s; lab_costs attach_per_in_flight = {per_in_flight:.6f} s")
    elif adds:
        per_in_flight = 0.0
        medians = [percentile(list(samples(r, "cni_add_seconds")), 0.5, 6) for r in reports
                   if samples(r, "cni_add_seconds")]
        median = midrange(medians)
        attach = round(max(0.0, median - ROUND_TRIPS_PER_ADD * (latency + commit)), 6)
        costs = replace(costs, dataplane=replace(costs.dataplane, attach_seconds=attach))
        out.notes.append(f"dataplane.attach_seconds = midrange of the reports' median ADDs "
                         f"({', '.join(f'{m:.3f}' for m in medians)}) {median:.6f} s - {ROUND_TRIPS_PER_ADD} x "
                         f"{latency + commit:.6f} s = {attach:.6f} s (n={len(adds)})")

    reloads = _pooled(reports, "reload_seconds")
    if reloads:
        p = costs.proxy
        slopes = p.test_per_domain + p.reload_per_domain
        # Each report's median less its own per-domain share: reports of different domain counts compare.
        based = [percentile(list(samples(r, "reload_seconds")), 0.5, 6) - slopes * _domains(r) for r in reports
                 if samples(r, "reload_seconds")]
        median = midrange(based)
        bases = max(median, 0.002)
        share = p.test_base / (p.test_base + p.reload_base) if p.test_base + p.reload_base > 0 else 0.1
        proxy = replace(p, test_base=round(bases * share, 6), reload_base=round(bases * (1 - share), 6))
        costs = replace(costs, proxy=proxy)
        domains = sorted({_domains(r) for r in reports if samples(r, "reload_seconds")})
        out.notes.append(f"proxy bases = midrange of the reports' (median reload - slopes x domains per host, "
                         f"{'/'.join(map(str, domains))}: {', '.join(f'{b:.3f}' for b in based)}) "
                         f"{median:.6f} s: test_base "
                         f"{proxy.test_base:.6f} s, reload_base {proxy.reload_base:.6f} s (n={len(reloads)})")

    builds = _pooled(reports, "build_seconds")
    if builds:
        median = percentile(builds, 0.5, 6)
        b = (lab_costs or costs).builder
        modelled = b.clone_seconds + b.compile_cold + b.image_seconds + b.image_mb / b.registry_mb_per_second
        k = median / modelled if modelled > 0 else 1.0
        builder = BuilderCosts(clone_seconds=round(b.clone_seconds * k, 6), compile_cold=round(b.compile_cold * k, 6),
                               compile_warm=round(b.compile_warm * k, 6), image_seconds=round(b.image_seconds * k, 6),
                               jitter=b.jitter, image_mb=b.image_mb,
                               registry_mb_per_second=round(b.registry_mb_per_second / k, 6) if k > 0 else
                               b.registry_mb_per_second, pull_base_seconds=b.pull_base_seconds)
        lab_costs = replace(lab_costs or costs, builder=builder)
        out.notes.append(f"lab_costs.builder x {k:.4f}: a cold build modelled {modelled:.3f} s -> median build "
                         f"{median:.3f} s (n={len(builds)})")
    out.costs = costs
    if lab_costs is None and per_in_flight != costs.dataplane.attach_per_in_flight:
        lab_costs = costs  # the lab's shared machine differs from a Region's nodes
    if lab_costs is not None:  # lab_costs holds costs + the lab's overrides: carry the newly fitted fields over
        lab_costs = replace(lab_costs, store=costs.store, proxy=costs.proxy,
                            dataplane=replace(costs.dataplane, attach_per_in_flight=per_in_flight))
    out.lab_costs = lab_costs
    return out


# ------------------------------------------------------------------ the file


def _yaml_number(value: float) -> str:
    return repr(float(value))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(result: Fit) -> str:
    """A costs file: ``costs:`` complete, ``lab_costs:`` the fields where the lab differs, ``fitted:``."""
    lines = ["# The sim's cost models, fitted from lab reports by `leengine lab fit` (lab/fit.py says how).",
             "# Read by every scenario of this directory (sim/scenario_costs.py); a scenario's `costs:`",
             "# overrides single fields. Changing a value moves the shipped scenarios' trace_sha256.",
             *(f"#   {note}" for note in result.notes), "costs:"]
    current = asdict(result.costs)
    for section in current:
        lines.append(f"  {section}:")
        lines.extend(f"    {name}: {_yaml_number(value)}" for name, value in current[section].items())
    if result.lab_costs is not None:
        lab = asdict(result.lab_costs)
        differ = [(s, n) for s, n in cost_fields() if lab[s][n] != current[s][n]]
        if differ:
            lines.append("lab_costs:  # lab-scaled runs only: what the lab's stand-ins cost")
            for section in dict.fromkeys(s for s, _ in differ):
                lines.append(f"  {section}:")
                lines.extend(f"    {n}: {_yaml_number(lab[section][n])}" for s, n in differ if s == section)
    lines.append("fitted:")
    lines.append("  reports:")
    lines.extend(f"    - {_quote(name)}" for name in result.reports)
    lines.append("  samples:")
    lines.extend(f"    {name}: {n}" for name, n in result.samples.items() if name not in STORE_SAMPLES)
    return "\n".join(lines) + "\n"


def load_notes(paths: list[Path], reports: list[dict[str, Any]], max_load: float | None) -> list[str]:
    """One note per report on its machine's load and reference rates (what the fitted seconds are of);
    ``FitError`` naming a report loaded above ``max_load`` per CPU."""
    notes = []
    for path, report in zip(paths, reports, strict=True):
        load, rates = machine_load(report), reference_rates(report)
        shown = f"; {rates}" if rates is not None else ""
        if load is None:
            notes.append(f"{path}: machine load not recorded{shown}")
            continue
        if max_load is not None and load.per_cpu > max_load:
            raise FitError(f"{path}: its machine was loaded ({load}: {load.per_cpu:.2f} per CPU > --max-load "
                           f"{max_load:g}); its timings are not the lab's: run it again on a quiet machine")
        notes.append(f"{path}: {load}{shown}")
    return notes


def fit_files(paths: list[Path], out: Path, base: Path | None = None, *, max_load: float | None = 2.0) -> Fit:
    """Read the reports, fit on top of ``base`` (default: ``out`` if it exists), write ``out`` atomically.

    ``max_load``: refuse a report whose run's median 1-minute load per CPU was above it (None: take any)."""
    if not paths:
        raise FitError("give at least one lab report")
    try:
        reports = [load_report(p) for p in paths]
    except CompareError as exc:
        raise FitError(str(exc)) from None
    for path, report in zip(paths, reports, strict=True):
        if report.get("scale") == "full":
            raise FitError(f"{path}: a full-scale sim report, not a lab report")
    if max_load is not None and not (math.isfinite(max_load) and max_load >= 0):
        raise FitError(f"--max-load {max_load} is not a load per CPU (a finite number >= 0)")
    loads = load_notes(paths, reports, max_load)
    base_costs = load_costs(base if base is not None else out)
    result = fit(reports, [str(p) for p in paths], base_costs)
    result.notes.extend(loads)
    text = render(result)
    parse_costs(text.encode(), str(out))  # what is written must read back
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return result


__all__ = ["FITTED_SAMPLES", "IN_FLIGHT", "ROUND_TRIPS_PER_ADD", "Fit", "FitError", "fit", "fit_files",
           "in_flight_line", "in_flight_pairs", "load_notes", "midrange", "render"]
