"""The real Metrics adapter: ``prometheus_client`` collectors in one registry a daemon serves on ``/metrics``.

``PromMetrics(registry=None)`` creates, on first use of a ``MetricDef`` of the catalogue
(``foundation.ports.metrics``), the matching collector (``Counter``, ``Gauge``,
``Histogram`` with the definition's buckets) in its registry; ``None`` makes a fresh
``CollectorRegistry``, so two adapters (two tests, two agents in one test) never share
series. A daemon serves ``registry`` (``leengine.metrics_option.serve_metrics``);
``exposition()`` is the text a scrape would get, for tests.

Invariants:

* The same call is refused here and by the sim adapter alike (``MetricError``): labels
  that are not exactly the definition's, a negative counter step, a call that does not fit
  the kind (``set`` on a counter, ``observe`` on a gauge, ``inc`` on a histogram), two
  definitions with one name and different kinds/labels.
* ``prometheus_client``'s ``*_created`` series are off (``disable_created_metrics``, a
  process-wide switch of the library): they double every counter and histogram on a scrape
  and the simulator has no creation time to write; nothing else in this project uses them.

It must not know any agent, nor how the registry is served.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from foundation.ports.metrics import MetricDef, MetricError

_Collector = Counter | Gauge | Histogram


class PromMetrics:
    """The Metrics port over ``prometheus_client``: one collector per catalogue entry, created on first use."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # the library leaves it unannotated
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._collectors: dict[str, tuple[MetricDef, _Collector]] = {}

    # ------------------------------------------------------------------ the port

    def inc(self, metric: MetricDef, amount: float = 1.0, **labels: str) -> None:
        if metric.kind == "histogram":
            raise MetricError(f"{metric.name}: a histogram takes observe(), not inc()")
        if metric.kind == "counter" and amount < 0:
            raise MetricError(f"{metric.name}: a counter only goes up (step {amount!r})")
        child = self._child(metric, labels)
        assert not isinstance(child, Histogram)  # the kind was checked above
        child.inc(amount)

    def set(self, metric: MetricDef, value: float, **labels: str) -> None:
        if metric.kind != "gauge":
            raise MetricError(f"{metric.name}: only a gauge is set ({metric.kind})")
        child = self._child(metric, labels)
        assert isinstance(child, Gauge)
        child.set(value)

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        if metric.kind != "histogram":
            raise MetricError(f"{metric.name}: only a histogram observes ({metric.kind})")
        child = self._child(metric, labels)
        assert isinstance(child, Histogram)
        child.observe(value)

    # ------------------------------------------------------------------ for daemons and tests

    def register_all(self, metrics: tuple[MetricDef, ...]) -> None:
        """Create the collectors of ``metrics`` now, so a scrape lists their families before any event."""
        for metric in metrics:
            self._collector(metric)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format, what ``/metrics`` answers."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ collectors

    def _collector(self, metric: MetricDef) -> _Collector:
        known = self._collectors.get(metric.name)
        if known is not None:
            if known[0] != metric:
                raise MetricError(f"{metric.name}: two definitions with one name ({known[0]} and {metric})")
            return known[1]
        collector: _Collector
        if metric.kind == "counter":
            collector = Counter(metric.name, metric.help, metric.labels, registry=self.registry)
        elif metric.kind == "gauge":
            collector = Gauge(metric.name, metric.help, metric.labels, registry=self.registry)
        else:
            collector = Histogram(metric.name, metric.help, metric.labels, registry=self.registry,
                                  buckets=metric.buckets)
        self._collectors[metric.name] = (metric, collector)
        return collector

    def _child(self, metric: MetricDef, labels: dict[str, str]) -> _Collector:
        metric.check_labels(labels)
        for key, value in labels.items():
            if not isinstance(value, str):
                raise MetricError(f"{metric.name}: label {key}={value!r} is not a string")
        collector = self._collector(metric)
        # A family without labels is its own (only) child; prometheus_client refuses labels() on it.
        return collector.labels(**labels) if metric.labels else collector
