"""The figures of a sim run: every metric over virtual time, units on the axes, the fault windows shaded.

``fault_windows(spec)`` lists every occurrence of every fault of the scenario (a fault
with ``every`` occurs many times) as the schedule declares it (``sim.faults.occurrences``):
start, declared end (the run's end for a permanent fault), kind and target as written.
``write_plots`` draws one PNG per metric family (``pool_use:c1-pool`` and
``pool_use:c2-pool`` are two lines of one figure) plus ``metrics.png`` with all of them;
the HTML report (sim/report_html.py) embeds the same PNG bytes, so the page and the files
always show the same figures.

Units: the sampler (sim/metrics.py) records some series as counts per sampling period
(``ok``, ``failed``, ``allocations``, ``reloads``); they are drawn as rates (the count
divided by the period, e.g. requests/s) and the axis says so. A series this module does
not know is drawn as is, its unit taken from the Prometheus suffix of its name
(``_seconds``, ``_bytes``, ``_total``) or called "value".

Invariants: every string that came from the scenario file (pool names in series names,
fault targets) reaches matplotlib with ``$`` escaped, so a name is never parsed as
mathtext (a stray ``$`` would abort the drawing); drawing is linear in the number of
points and windows (windows closer than a pixel are merged before drawing).
It must not know the Region's objects (it reads series and the spec only) nor HTML.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.ports.metrics import CATALOGUE
from sim.faults import occurrences
from sim.spec import FaultSpec, RegionSpec

# One solid colour for fault windows, everywhere (PNG shading, the HTML timeline): a reader
# learns it once, and the browser test finds it in the screenshot.
FAULT_SHADE = "#f4c0b8"
FAULT_EDGE = "#c0392b"
LINE_COLOURS = ("#1f5fa8", "#d9822b", "#2e8b57", "#8e44ad", "#7f6a00", "#16a0a0", "#c0392b", "#555555")
HOURS_FROM = 7200.0  # runs longer than two virtual hours get an axis in hours
MAX_LEGEND = 12  # lines named in a legend; the rest are counted
MAX_TITLE = 125  # characters of a plot's title
MAX_LABELLED_FAULTS = 40  # "F3" marks above a plot; more would be unreadable
# Metrics plotted first when the world provides them (the rest follow by name).
KEY_METRICS = ("leaked", "pool_use", "alloc_max", "failed", "reloads", "ok", "allocations")


@dataclass(frozen=True)
class Unit:
    axis: str  # the y-axis label, with its unit
    title: str  # what the series is, for a person
    rate: bool = False  # the series holds counts per sampling period: drawn divided by the period
    period: bool = False  # a sample at t describes the period ending at t (drawn over it), not the instant t


# The Region's own series (sim/metrics.py, Sampler).
UNITS = {
    "leaked": Unit("addresses", "leaked addresses (allocated in etcd, their pod gone)"),
    "pool_use": Unit("% of the pool's addresses", "pool use (allocated addresses)"),
    "alloc_max": Unit("seconds", "slowest address allocation in each sample", period=True),
    "failed": Unit("requests/s", "failed client requests", rate=True, period=True),
    "ok": Unit("requests/s", "served client requests", rate=True, period=True),
    "allocations": Unit("allocations/s", "address allocations (CNI ADD)", rate=True, period=True),
    "reloads": Unit("reloads/s", "Nginx reloads, all hosts", rate=True, period=True),
}


CATALOGUE_BY_NAME = {m.name: m for m in CATALOGUE}


def unit_of(family: str) -> Unit:
    if family in UNITS:
        return UNITS[family]
    metric = CATALOGUE_BY_NAME.get(family)
    if metric is not None:  # an agent's series, folded by sim/agent_series.py
        if metric.kind == "counter":
            return Unit("per second", metric.help, rate=True, period=True)
        if metric.kind == "histogram":
            return Unit("seconds (mean per period)", metric.help, period=True)
        if family.endswith("_successful"):
            return Unit("1 = success (lowest host)", metric.help)
        if family.endswith("_timestamp_seconds"):
            return Unit("seconds ago (the stalest host)", metric.help + ", as its age at each sample")
        return Unit("count (sum over members)", metric.help)
    if family.endswith("_timestamp_seconds"):
        return Unit("Unix seconds", family)
    for suffix, axis in (("_seconds", "seconds"), ("_bytes", "bytes"), ("_ratio", "ratio"), ("_total", "count")):
        if family.endswith(suffix):
            return Unit(axis, family)
    return Unit("value", family)


def family_of(name: str) -> str:
    """``pool_use:c1-pool`` -> ``pool_use``: the series of one family share a figure."""
    return name.split(":", 1)[0]


def families(metrics: dict[str, list[list[float]]]) -> list[tuple[str, list[tuple[str, list[list[float]]]]]]:
    """The non-empty series grouped by family, key metrics first, then by name; series by name within."""
    grouped: dict[str, list[tuple[str, list[list[float]]]]] = {}
    for name in sorted(metrics):
        if metrics[name]:
            grouped.setdefault(family_of(name), []).append((name, metrics[name]))

    def rank(family: str) -> tuple[int, str]:
        return (KEY_METRICS.index(family) if family in KEY_METRICS else len(KEY_METRICS), family)

    return [(f, grouped[f]) for f in sorted(grouped, key=rank)]


def sampling_period(metrics: dict[str, list[list[float]]]) -> float:
    """The sampler's period, read off the series' times (samples fall on multiples of it)."""
    times = sorted({float(p[0]) for points in metrics.values() for p in points})
    gaps = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
    if gaps:
        return gaps[len(gaps) // 2]
    return times[0] if times and times[0] > 0 else 1.0


@dataclass(frozen=True)
class TimeAxis:
    scale: float  # virtual seconds per axis unit
    label: str

    @staticmethod
    def for_duration(duration: float) -> TimeAxis:
        if duration > HOURS_FROM:
            return TimeAxis(3600.0, "virtual time (hours)")
        return TimeAxis(1.0, "virtual time (seconds)")


# ------------------------------------------------------------------ faults


@dataclass(frozen=True)
class FaultWindow:
    number: int  # the fault's place in the scenario's list, from 1 ("F1")
    kind: str
    target: str  # what it hits, as the scenario says (untrusted text: escape it where it is shown)
    start: float
    end: float  # the declared end; the run's end for a permanent fault
    permanent: bool


def describe_target(fault: FaultSpec) -> str:
    """The fault's target and parameters as the scenario wrote them, in one line."""
    parts: list[str] = []
    sel = fault.target
    if sel.names:
        parts.append("names " + ", ".join(sel.names))
    if sel.labels:
        parts.append("labels " + ", ".join(f"{k}={v}" for k, v in sel.labels))
    if sel.count is not None:
        parts.append(f"{sel.count} drawn")
    if sel.percent is not None:
        parts.append(f"{sel.percent:g}% drawn")
    if not parts and fault.kind != "pool-exhaustion":
        parts.append("all")
    if fault.kind == "etcd-slow":
        parts.append(f"{fault.factor:g}x slower")
    if fault.kind == "reload-storm":
        parts.append(f"{fault.changes} changes")
    if fault.group:
        parts.append(f"group {fault.group}")
    if fault.kind == "pool-exhaustion":
        parts.append(f"pool {fault.pool}, {fault.free} free")
    return "; ".join(parts)


def fault_windows(spec: RegionSpec) -> list[FaultWindow]:
    """Every occurrence of every fault, by start time (ties in the scenario's order)."""
    windows: list[FaultWindow] = []
    for number, fault in enumerate(spec.faults, start=1):
        target = describe_target(fault)
        for at in occurrences(fault, spec.duration):
            permanent = fault.duration is None
            end = spec.duration if permanent else min(spec.duration, at + (fault.duration or 0.0))
            windows.append(FaultWindow(number, fault.kind, target, at, end, permanent))
    windows.sort(key=lambda w: (w.start, w.number))
    return windows


def merged_spans(windows: Iterable[FaultWindow], min_gap: float) -> list[tuple[float, float]]:
    """The union of the windows as (start, end) spans, spans closer than ``min_gap`` joined (sub-pixel)."""
    spans: list[tuple[float, float]] = []
    for start, end in sorted((w.start, w.end) for w in windows):
        if spans and start <= spans[-1][1] + min_gap:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


# ------------------------------------------------------------------ drawing


def plain(text: str) -> str:
    """Text for matplotlib: a ``$`` is a dollar sign, never the start of mathtext."""
    return text.replace("$", r"\$")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "metric"


def plot_file(family: str) -> str:
    return f"metric-{slug(family)}.png"


def write_plots(metrics: dict[str, list[list[float]]], out: Path, title: str, *,
                windows: list[FaultWindow], duration: float, overview: str | None = "metrics.png") -> dict[str, str]:
    """One PNG per metric family plus ``overview`` (all of them, one above the other; None: none).

    Returns ``{family: file}`` in drawing order, the overview under the key ``""``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    groups = families(metrics)
    written: dict[str, str] = {}
    if not groups:
        return written
    axis = TimeAxis.for_duration(duration)
    period = sampling_period(metrics)
    spans = merged_spans(windows, duration / 2000)
    files: dict[str, str] = {}
    for family, series in groups:
        fig, ax = plt.subplots(figsize=(10, 3.4))
        _plot(ax, family, series, axis=axis, period=period, duration=duration, spans=spans, windows=windows)
        ax.set_xlabel(axis.label)
        fig.suptitle(plain(title), fontsize=9)
        # Fixed margins, not tight_layout: every figure has the same size and furniture, and
        # measuring the text would draw each figure twice (a third of the plotting time).
        fig.subplots_adjust(left=0.09, right=0.98, top=0.83, bottom=0.15)
        file = plot_file(family)
        fig.savefig(out / file, dpi=90)
        plt.close(fig)
        files[family] = file
    if overview is None:
        return files
    rows = len(groups)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.4 * rows), sharex=True, squeeze=False)
    for ax, (family, series) in zip(axes[:, 0], groups, strict=True):
        _plot(ax, family, series, axis=axis, period=period, duration=duration, spans=spans, windows=windows)
    axes[-1, 0].set_xlabel(axis.label)
    fig.suptitle(plain(title) + " (shaded: faults)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / overview, dpi=90)
    plt.close(fig)
    written[""] = overview
    written.update(files)
    return written


def _plot(ax: Any, family: str, series: list[tuple[str, list[list[float]]]], *, axis: TimeAxis, period: float,
          duration: float, spans: list[tuple[float, float]], windows: list[FaultWindow]) -> None:
    unit = unit_of(family)
    # Fault windows first, below the grid and the lines; one collection however many spans.
    if spans:
        ax.broken_barh([(s / axis.scale, (e - s) / axis.scale) for s, e in spans], (0, 1),
                       transform=ax.get_xaxis_transform(), facecolors=FAULT_SHADE, edgecolors="none", zorder=0)
    seen: set[int] = set()
    for w in windows:
        if w.number in seen or len(seen) >= MAX_LABELLED_FAULTS:
            continue
        seen.add(w.number)
        ax.text(w.start / axis.scale, 1.0, f" F{w.number}", transform=ax.get_xaxis_transform(), fontsize=7,
                color=FAULT_EDGE, va="top", ha="left", zorder=3)
    lowest = 0.0
    for i, (name, points) in enumerate(series):
        times = [float(p[0]) / axis.scale for p in points]
        values = [float(p[1]) / period if unit.rate else float(p[1]) for p in points]
        if unit.period and times:  # the first sample covers the period before it too
            times, values = [times[0] - period / axis.scale, *times], [values[0], *values]
        lowest = min([lowest, *values])
        label = plain(name.split(":", 1)[1]) if ":" in name and i < MAX_LEGEND else None
        # A gauge holds its sampled value until the next sample; a per-period value covers the
        # period that ends at its sample's time.
        ax.step(times, values, where="pre" if unit.period else "post", linewidth=1.2,
                color=LINE_COLOURS[i % len(LINE_COLOURS)], label=label, zorder=2)
    rate_note = f" (count per {period:g} s sample / {period:g} s)" if unit.rate else ""
    title = f"{family}: {unit.title}{rate_note}"
    if len(title) > MAX_TITLE:  # one line; the page's caption has it whole
        title = title[: MAX_TITLE - 1] + "\u2026"
    ax.set_title(plain(title), fontsize=9, loc="left")
    ax.set_ylabel(plain(unit.axis), fontsize=8)
    ax.set_xlim(0, duration / axis.scale)
    if lowest >= 0:
        ax.set_ylim(bottom=0)  # counts and sizes start at zero: a flat zero line sits on the axis
    ax.grid(True, alpha=0.3, zorder=1)
    if len(series) > 1:
        handles, labels = ax.get_legend_handles_labels()
        more = len(series) - len(labels)
        more_title = f"+{more} more" if more > 0 else None
        ax.legend(handles, labels, fontsize=7, loc="upper right", title=more_title, title_fontsize=7, framealpha=0.8)
