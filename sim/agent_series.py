"""What the agents recorded in a sim run (the Metrics port's catalogue series), folded into a few lines per family.

``metrics.om`` holds every series of every node and host (hundreds of label sets); a
person reads a family at a time. ``agent_series(sim_metrics)`` returns, per catalogue
family, one line per value of its *small* labels (pool, command, code, result, method,
step, component: fixed sets or the scenario's pools) with the *per-member* labels
(node, host, group, domain, app) folded: gauges summed (a last-reload-successful gauge
takes the minimum: one failing host shows; a timestamp becomes the stalest member's age), counters summed and
turned into counts per sampling period, histograms into the mean observed value per
period (``Δsum / Δcount``; no observation, no point). Names are ``family`` or
``family:label=value,...``, the shape of ``sim.runner.extract_series``'s, so the same
figures draw them (sim/plots.py, whose ``unit_of`` reads the catalogue for their units).

It only reads the adapter's public samples (``current_samples``, ``points``,
``sample_times``); it must not change them, nor know the world or the agents.
"""

from __future__ import annotations

from collections import defaultdict

from foundation.ports.metrics import CATALOGUE, PREFIX, MetricDef
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SIM_EPOCH

BY_NAME = {m.name: m for m in CATALOGUE}
FOLDED = frozenset({"node", "host", "group", "domain", "app", "cell"})  # one per member of the platform


def _line(metric: MetricDef, labels: tuple[tuple[str, str], ...]) -> str:
    kept = [f"{k}={v}" for k, v in labels if k not in FOLDED and k != "le"]
    return f"{metric.name}:{','.join(kept)}" if kept else metric.name


def _fold(name: str) -> str:
    if name.endswith("_successful"):
        return "min"
    if name.endswith("_timestamp_seconds"):
        return "age"
    return "sum"


def _folded(fold: str, t: float, values: list[float]) -> float | None:
    if fold == "min":
        return min(values)
    if fold == "age":
        # A Unix time means little on a simulated day: its age at the sample (the sim's wall
        # clock is SIM_EPOCH + t), for the stalest member; 0 is "never" and is left out.
        stamps = [v for v in values if v > 0]
        return t + SIM_EPOCH - min(stamps) if stamps else None
    return sum(values)


def agent_series(metrics: SimMetrics) -> dict[str, list[list[float]]]:
    times = metrics.sample_times
    if not times:
        return {}
    index = {t: i for i, t in enumerate(times)}
    # (line, sample suffix) -> per sample time: values of the series folded into it
    grid: dict[tuple[str, str], list[list[float]]] = defaultdict(lambda: [[] for _ in times])
    kinds: dict[str, MetricDef] = {}
    for sample_name, labels in sorted(metrics.current_samples()):
        for suffix in ("", "_sum", "_count"):
            family = sample_name[: len(sample_name) - len(suffix)] if suffix else sample_name
            metric = BY_NAME.get(family)
            if metric is not None and (metric.kind == "histogram") == bool(suffix):
                break
        else:
            continue  # a histogram's buckets, or a name outside the catalogue
        line = _line(metric, labels)
        kinds[line] = metric
        cells = grid[(line, suffix)]
        for t, value in metrics.points(sample_name, dict(labels)):
            cells[index[t]].append(value)
    out: dict[str, list[list[float]]] = {}
    for line, metric in kinds.items():
        if metric.kind == "histogram":
            sums, counts = grid[(line, "_sum")], grid[(line, "_count")]
            points, last_sum, last_count = [], 0.0, 0.0
            for t, s, c in zip(times, sums, counts, strict=True):
                total_sum, total_count = sum(s), sum(c)
                if total_count > last_count:
                    points.append([t, (total_sum - last_sum) / (total_count - last_count)])
                last_sum, last_count = total_sum, total_count
            out[line] = points
        elif metric.kind == "counter":
            points, last = [], 0.0
            for t, values in zip(times, grid[(line, "")], strict=True):
                total = sum(values)
                points.append([t, float(total - last)])
                last = total
            out[line] = points
        else:
            fold = _fold(metric.name)
            folded = [(t, _folded(fold, t, v)) for t, v in zip(times, grid[(line, "")], strict=True) if v]
            out[line] = [[t, float(v)] for t, v in folded if v is not None]
    return {name: out[name] for name in sorted(out)}


def short(family: str) -> str:
    """A family's name without the project prefix, for titles."""
    return family[len(PREFIX):] if family.startswith(PREFIX) else family
