"""The sim Metrics adapter: the catalogue's series kept per label set, sampled over virtual time, as OpenMetrics.

``SimMetrics(runtime)`` is the Metrics port (``foundation.ports.metrics``) of one Region:
``inc``/``set``/``observe`` update the *current* value of a series (a counter's or
gauge's float; a histogram's bucket counts, sum and count), exactly what a real
``prometheus_client`` registry would hold after the same calls, and refuse the same
calls (``MetricError``). ``sample(now)`` is the Region's scrape: it appends the current
value of every series that exists, stamped ``now`` (virtual seconds).
``openmetrics(base_time)`` writes every sample as OpenMetrics text with timestamps
``base_time + t`` (Unix seconds), which ``promtool tsdb create-blocks-from openmetrics``
loads into a real Prometheus; ``value_at(name, labels, t)`` answers what an instant
query at virtual time ``t`` would (the last sample at or before ``t``).

Invariants:

* Sample names and label values are the real exposition's: a counter's series is
  ``<name>`` (ending ``_total``); a histogram's are ``<name>_bucket{le=...}`` (cumulative,
  ``le`` spelled as the Go client and ``prometheus_client`` spell it: ``"1.0"``,
  ``"0.0005"``, ``"+Inf"``), ``<name>_sum`` and ``<name>_count``. The conformance suite
  compares ``current_samples()`` with what a ``PromMetrics`` registry exposes.
* OpenMetrics: one block per family (``# HELP``, ``# TYPE``, ``# UNIT`` for ``_seconds``
  families), a counter's family named without ``_total``, its samples with it; label
  values and help escaped (``\\``, ``"``, newline); inside a family each series' points in
  ascending timestamp order; ``# EOF`` last. Timestamps have millisecond resolution, as
  Prometheus stores them: a sample within the same millisecond as the previous one
  replaces it, an earlier one is refused.
* Sampling and recording add no trace line, store write or runtime event: metrics never
  change a run's ``trace_sha256``. Output is sorted (family name, then labels), so one
  run always writes the same bytes.
* A series, once it exists, is in every later sample (a scrape sees it until the
  process ends); memory is one shared list of sample times plus one value (a tuple for
  a histogram) per series and sample.

It must not know any agent, the world, or ``prometheus_client``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from foundation.ports.metrics import MetricDef, MetricError

LabelKey = tuple[tuple[str, str], ...]  # (label, value) pairs sorted by label name


class _Clock(Protocol):
    def now(self) -> float: ...

    def wall_time(self) -> float: ...


def go_float(value: float) -> str:
    """A float as the Go client (and ``prometheus_client``'s ``floatToGoString``) writes it: ``le`` values."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(labels: LabelKey) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return repr(float(value))  # 3.0, not 3: one spelling for every count
    return go_float(value)


@dataclass
class _Series:
    """One label set of one family: its current value and its samples (aligned with SimMetrics._times)."""

    labels: LabelKey
    value: float = 0.0  # counter, gauge
    buckets: list[float] = field(default_factory=list)  # histogram: per-bucket (not cumulative) counts, +Inf last
    total: float = 0.0  # histogram sum
    count: float = 0.0  # histogram count
    first: int = -1  # index in SimMetrics._times of this series' first sample (-1: never sampled)
    points: list[tuple[float, ...]] = field(default_factory=list)

    def snapshot(self, metric: MetricDef) -> tuple[float, ...]:
        if metric.kind != "histogram":
            return (self.value,)
        cumulative: list[float] = []
        running = 0.0
        for n in self.buckets:
            running += n
            cumulative.append(running)
        return (*cumulative, self.total, self.count)


class SimMetrics:
    """The Metrics port for a simulated Region: current values, samples over virtual time, OpenMetrics out."""

    def __init__(self, runtime: _Clock) -> None:
        self.runtime = runtime
        self._defs: dict[str, MetricDef] = {}
        self._series: dict[str, dict[LabelKey, _Series]] = {}
        self._times: list[float] = []  # virtual times of the samples, ascending

    # ------------------------------------------------------------------ the port

    def inc(self, metric: MetricDef, amount: float = 1.0, **labels: str) -> None:
        if metric.kind == "histogram":
            raise MetricError(f"{metric.name}: a histogram takes observe(), not inc()")
        if metric.kind == "counter" and amount < 0:
            raise MetricError(f"{metric.name}: a counter only goes up (step {amount!r})")
        self._get(metric, labels).value += amount

    def set(self, metric: MetricDef, value: float, **labels: str) -> None:
        if metric.kind != "gauge":
            raise MetricError(f"{metric.name}: only a gauge is set ({metric.kind})")
        self._get(metric, labels).value = float(value)

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        if metric.kind != "histogram":
            raise MetricError(f"{metric.name}: only a histogram observes ({metric.kind})")
        series = self._get(metric, labels)
        # The first bucket whose upper bound is >= value (le is inclusive); past the last: +Inf.
        series.buckets[bisect.bisect_left(metric.buckets, value)] += 1
        series.total += value
        series.count += 1

    # ------------------------------------------------------------------ sampling

    def sample(self, now: float | None = None) -> None:
        """Record the current value of every series at virtual time ``now`` (default: the runtime's now)."""
        t = self.runtime.now() if now is None else float(now)
        if self._times and round(t * 1000) == round(self._times[-1] * 1000):
            index = len(self._times) - 1  # same millisecond: this sample replaces the previous one
            self._times[index] = t
        elif self._times and t < self._times[-1]:
            raise MetricError(f"sample at {t!r} before the previous one at {self._times[-1]!r}")
        else:
            self._times.append(t)
            index = len(self._times) - 1
        for name, family in self._series.items():
            metric = self._defs[name]
            for series in family.values():
                point = series.snapshot(metric)
                if series.first < 0:
                    series.first = index
                    series.points.append(point)
                elif series.first + len(series.points) > index:
                    series.points[index - series.first] = point
                else:
                    series.points.append(point)

    @property
    def sample_times(self) -> list[float]:
        """The virtual times sampled so far, ascending."""
        return list(self._times)

    # ------------------------------------------------------------------ reading

    def current_samples(self) -> dict[tuple[str, LabelKey], float]:
        """Every sample a scrape would see now: (sample name, sorted label pairs) -> value."""
        out: dict[tuple[str, LabelKey], float] = {}
        for name, family in self._series.items():
            metric = self._defs[name]
            for series in family.values():
                for sample_name, labels, value in self._expand(metric, series.labels, series.snapshot(metric)):
                    out[(sample_name, labels)] = value
        return out

    def value(self, name: str | MetricDef, labels: Mapping[str, str] | None = None) -> float | None:
        """The current value of one sample (``name`` as exposed, e.g. ``..._bucket`` with ``le``); None if absent."""
        key = self._sample_key(name, labels)
        return self.current_samples().get(key)

    def value_at(self, name: str | MetricDef, labels: Mapping[str, str] | None, t: float) -> float | None:
        """The sample's value at virtual time ``t``: the last sample at or before ``t`` (None: none yet)."""
        sample_name, label_key = self._sample_key(name, labels)
        index = bisect.bisect_right(self._times, t + 0.0005) - 1  # the sample of t's millisecond counts
        if index < 0:
            return None
        for metric, series in self._candidates(sample_name, label_key):
            if series.first < 0 or index < series.first:
                return None
            point = series.points[index - series.first]
            for name_, labels_, value in self._expand(metric, series.labels, point):
                if name_ == sample_name and labels_ == label_key:
                    return value
        return None

    def points(self, name: str | MetricDef, labels: Mapping[str, str] | None = None) -> list[tuple[float, float]]:
        """Every (virtual time, value) sampled of one sample (e.g. for a plot)."""
        sample_name, label_key = self._sample_key(name, labels)
        out: list[tuple[float, float]] = []
        for metric, series in self._candidates(sample_name, label_key):
            for offset, point in enumerate(series.points):
                for name_, labels_, value in self._expand(metric, series.labels, point):
                    if name_ == sample_name and labels_ == label_key:
                        out.append((self._times[series.first + offset], value))
        return out

    # ------------------------------------------------------------------ OpenMetrics

    def openmetrics_lines(self, base_time: float | None = None) -> Iterator[str]:
        """The OpenMetrics text, line by line (each ending in a newline); see ``openmetrics``."""
        base = self.runtime.wall_time() - self.runtime.now() if base_time is None else float(base_time)
        for name in sorted(self._series):
            metric = self._defs[name]
            family = self._series[name]
            if not any(s.points for s in family.values()):
                continue
            family_name = name[: -len("_total")] if metric.kind == "counter" else name
            yield f"# HELP {family_name} {_escape(metric.help)}\n"
            yield f"# TYPE {family_name} {metric.kind}\n"
            if family_name.endswith("_seconds"):
                yield f"# UNIT {family_name} seconds\n"
            for labels in sorted(family):
                series = family[labels]
                for offset, point in enumerate(series.points):
                    stamp = f"{base + self._times[series.first + offset]:.3f}"
                    for sample_name, sample_labels, value in self._expand(metric, labels, point):
                        yield f"{sample_name}{_labels_text(sample_labels)} {_number(value)} {stamp}\n"
        yield "# EOF\n"

    def openmetrics(self, base_time: float | None = None) -> str:
        """Every sample as OpenMetrics text, virtual time ``t`` stamped ``base_time + t`` (Unix seconds).

        ``base_time`` defaults to the runtime's wall time at virtual 0 (``wall_time() - now()``),
        so the series line up with the wall times agents stamp into gauges and records.
        """
        return "".join(self.openmetrics_lines(base_time))

    def write_openmetrics(self, out: TextIO, base_time: float | None = None) -> None:
        """``openmetrics`` streamed into a file (a simulated day of a large Region is hundreds of MB)."""
        for line in self.openmetrics_lines(base_time):
            out.write(line)

    # ------------------------------------------------------------------ internals

    def _get(self, metric: MetricDef, labels: dict[str, str]) -> _Series:
        metric.check_labels(labels)
        for label, value in labels.items():
            if not isinstance(value, str):
                raise MetricError(f"{metric.name}: label {label}={value!r} is not a string")
        known = self._defs.get(metric.name)
        if known is None:
            self._defs[metric.name] = metric
            self._series[metric.name] = {}
        elif known != metric:
            raise MetricError(f"{metric.name}: two definitions with one name ({known} and {metric})")
        family = self._series[metric.name]
        key: LabelKey = tuple(sorted(labels.items()))
        series = family.get(key)
        if series is None:
            series = _Series(key)
            if metric.kind == "histogram":
                series.buckets = [0.0] * (len(metric.buckets) + 1)
            family[key] = series
        return series

    @staticmethod
    def _expand(metric: MetricDef, labels: LabelKey, point: tuple[float, ...]) -> Iterator[tuple[str, LabelKey, float]]:
        """A point's samples as exposed: one for a counter or gauge; buckets, count and sum for a histogram."""
        if metric.kind != "histogram":
            yield metric.name, labels, point[0]
            return
        bounds = [*metric.buckets, math.inf]
        for bound, value in zip(bounds, point[: len(bounds)], strict=True):
            yield metric.name + "_bucket", tuple(sorted((*labels, ("le", go_float(bound))))), value
        yield metric.name + "_count", labels, point[-1]
        yield metric.name + "_sum", labels, point[-2]

    def _sample_key(self, name: str | MetricDef, labels: Mapping[str, str] | None) -> tuple[str, LabelKey]:
        sample_name = name.name if isinstance(name, MetricDef) else name
        return sample_name, tuple(sorted((labels or {}).items()))

    def _candidates(self, sample_name: str, labels: LabelKey) -> Iterator[tuple[MetricDef, _Series]]:
        """The series a sample name and labels may belong to (its family's series with those labels sans le)."""
        base_labels = tuple(kv for kv in labels if kv[0] != "le")
        for suffix in ("", "_bucket", "_count", "_sum"):
            if suffix and not sample_name.endswith(suffix):
                continue
            family_name = sample_name[: len(sample_name) - len(suffix)]
            metric = self._defs.get(family_name)
            if metric is None or (suffix and metric.kind != "histogram"):
                continue
            series = self._series[family_name].get(labels if metric.kind != "histogram" else base_labels)
            if series is not None:
                yield metric, series
