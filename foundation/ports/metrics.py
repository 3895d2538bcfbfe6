"""The Metrics port: how agents record measurements, and the one catalogue of every series.

Agents record through ``Metrics`` (``inc``, ``set``, ``observe``) naming a ``MetricDef``
from the catalogue below; they never import ``prometheus_client``. Two adapters:

* real (``foundation/adapters/prom_metrics.py``): ``prometheus_client`` collectors in a
  registry a daemon serves on ``/metrics``;
* sim (``sim/adapters/metrics.py``): the same series kept per label set and sampled over
  virtual time, written as OpenMetrics text with timestamps, so a simulated day loads into
  a real Prometheus (``promtool tsdb create-blocks-from openmetrics``).

The catalogue is the contract between them, the alert rules and the docs: names follow
Prometheus conventions (one prefix ``leengine_``, base units, ``_total`` counters,
``_seconds`` histograms). Every label is listed with its definition; a label's values are
bounded (pool, node, host, group, domain and app names that their validators already
checked; an upstream's version tag, validated with it; command, code, step, method and
result from fixed sets), so cardinality is
bounded by the platform's size, never by what a caller sends. ``check_labels`` refuses a
call whose labels are not exactly the definition's.

It must not know any adapter, agent or exporter format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Kind = Literal["counter", "gauge", "histogram"]
PREFIX = "leengine_"

# Latency buckets in seconds: sub-millisecond in-place updates up to minute-long builds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUILD_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class MetricError(ValueError):
    """A call that does not fit its definition (wrong labels, a negative counter step)."""


@dataclass(frozen=True)
class MetricDef:
    """One series family: its name (with unit and ``_total`` where they belong), kind, help and labels."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise MetricError(f"{self.name}: every series starts with {PREFIX}")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise MetricError(f"{self.name}: a counter's name ends in _total")
        if self.kind == "histogram" and not (self.name.endswith("_seconds") and self.buckets):
            raise MetricError(f"{self.name}: a histogram here measures seconds and has buckets")

    def check_labels(self, labels: dict[str, str]) -> None:
        if tuple(sorted(labels)) != tuple(sorted(self.labels)):
            raise MetricError(f"{self.name}: labels {sorted(labels)} given, {sorted(self.labels)} defined")


@runtime_checkable
class Metrics(Protocol):
    """Where agents record: one instance per process (real) or per Region (sim)."""

    def inc(self, metric: MetricDef, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0 for counters) to a counter or gauge."""
        ...

    def set(self, metric: MetricDef, value: float, **labels: str) -> None:
        """Set a gauge."""
        ...

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        """Record one observation in a histogram."""
        ...


class NoMetrics:
    """Records nothing: for agents built without a metrics sink (tests, tools)."""

    def inc(self, metric: MetricDef, amount: float = 1.0, **labels: str) -> None:
        return None

    def set(self, metric: MetricDef, value: float, **labels: str) -> None:
        return None

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        return None


NO_METRICS = NoMetrics()


def _m(name: str, kind: Kind, help_text: str, *labels: str, buckets: tuple[float, ...] = ()) -> MetricDef:
    return MetricDef(PREFIX + name, kind, help_text, labels, buckets)


# --------------------------------------------------------------------------- IPAM (as Calico's kube-controllers)
IPAM_ALLOCATIONS_IN_USE = _m("ipam_allocations_in_use", "gauge",
                             "Addresses allocated in the pool's blocks held by the node", "pool", "node")
IPAM_BLOCKS = _m("ipam_blocks", "gauge", "Blocks of the pool the node holds", "pool", "node")
IPAM_IPPOOL_SIZE = _m("ipam_ippool_size", "gauge", "Usable addresses of the pool", "pool")
IPAM_GC_CANDIDATES = _m("ipam_allocations_gc_candidates", "gauge",
                        "Allocations whose pod is gone, seen once (suspect leaks)", "pool")
IPAM_LEAKS_CERTAIN = _m("ipam_allocations_leaked", "gauge",
                        "Allocations whose pod is gone, seen again after the grace (certain leaks)", "pool")
IPAM_GC_RECLAMATIONS = _m("ipam_allocations_gc_reclamations_total", "counter",
                          "Leaked allocations released by cnictl", "pool")
IPAM_ALLOCATION_SECONDS = _m("ipam_allocation_seconds", "histogram", "Time to allocate an address (one ADD's share)",
                             "node", buckets=LATENCY_BUCKETS)
IPAM_CAS_CONFLICTS = _m("ipam_cas_conflicts_total", "counter", "Allocation transactions that lost a compare-and-swap",
                        "node")
ETCD_ERRORS = _m("etcd_errors_total", "counter",
                 "Agent operations that failed on etcd (unavailable, timeout, refused): one per CNI command or loop "
                 "pass; component: cni-agent, slb-agent, discovery, build-agent or build-scheduler", "component")

# --------------------------------------------------------------------------- CNI
CNI_REQUESTS = _m("cni_requests_total", "counter", "CNI commands answered, by command and result code (0: success)",
                  "node", "command", "code")
CNI_REQUEST_SECONDS = _m("cni_request_seconds", "histogram", "Time to answer a CNI command", "node", "command", "code",
                         buckets=LATENCY_BUCKETS)

# --------------------------------------------------------------------------- SLB (as ingress-nginx)
SLB_UPSTREAM_UPDATES = _m("slb_upstream_updates_total", "counter", "Upstream changes applied in place (no reload)",
                          "group", "host")
SLB_RELOADS = _m("slb_reloads_total", "counter", "Nginx reloads, by result (success, failure)", "group", "host",
                 "result")
SLB_RELOAD_SECONDS = _m("slb_reload_seconds", "histogram", "Test + reload + confirmation of one batch", "group",
                        "host", buckets=LATENCY_BUCKETS)
SLB_LAST_RELOAD_SUCCESSFUL = _m("slb_config_last_reload_successful", "gauge",
                                "1 when the last reload succeeded, 0 when it failed", "group", "host")
SLB_LAST_RELOAD_TIMESTAMP = _m("slb_config_last_reload_successful_timestamp_seconds", "gauge",
                               "When the last successful reload happened (Unix seconds)", "group", "host")
SLB_DOMAINS_SET_ASIDE = _m("slb_domains_set_aside", "gauge", "Domains refused (invalid or failing nginx -t)",
                           "group", "host")
SLB_PROPAGATION_SECONDS = _m("slb_propagation_seconds", "histogram",
                             "The agent's share of propagation: from receiving a domain record's change (watch "
                             "event or resync read) to that revision in force on this host", "group", "host",
                             buckets=LATENCY_BUCKETS)

SLB_REQUESTS = _m("slb_requests_total", "counter",
                  "Requests the host's Nginx answered for the domain, by the version tag of the upstream that answered "
                  "('': none, or no upstream) and status class (1xx..5xx): what a gray release compares",
                  "group", "host", "domain", "version", "code")
SLB_REQUEST_SECONDS = _m("slb_request_seconds_total", "counter",
                         "Sum of those requests' times (first byte read to last byte sent); divided by "
                         "slb_requests_total: the mean latency per version", "group", "host", "domain", "version")
# --------------------------------------------------------------------------- discovery
DISCOVERY_PUSHES = _m("discovery_pushes_total", "counter",
                      "Upstream pushes to slb-core, by result (ok, or the control service's gRPC code name)", "result")
DISCOVERY_DRAINS = _m("discovery_drains_total", "counter", "Drains, by result (drained, failed)", "result")
DISCOVERY_DRAIN_SECONDS = _m("discovery_drain_seconds", "histogram", "Time a drain took", buckets=LATENCY_BUCKETS)
DISCOVERY_CELLS_UNREACHABLE = _m("discovery_cells_unreachable", "gauge", "Cells whose API is out of reach")
DISCOVERY_DOMAINS_WITHOUT_UPSTREAM = _m("discovery_domains_without_upstream", "gauge",
                                        "Bound domains whose app has ready pods but no upstream in force (as "
                                        "discovery knows: its last successful push named none, or none succeeded)")

# --------------------------------------------------------------------------- builds
BUILD_TASKS_QUEUED = _m("build_tasks_queued", "gauge", "Build tasks waiting for their agent")
BUILD_TASKS_RUNNING = _m("build_tasks_running", "gauge", "Build tasks an agent is running")
BUILD_STEP_SECONDS = _m("build_step_seconds", "histogram", "Duration of a build step", "step", buckets=BUILD_BUCKETS)
BUILD_CACHE_HITS = _m("build_cache_hits_total", "counter", "Builds that found the repo's dependency cache warm")
BUILD_RESULTS = _m("build_results_total", "counter", "Results written by build agents, by result (done, failed)",
                   "result")
BUILD_TASKS_MOVED = _m("build_tasks_moved_total", "counter", "Tasks moved off build agents whose lease expired")

# --------------------------------------------------------------------------- control service
CONTROL_RPCS = _m("control_rpcs_total", "counter", "RPCs answered, by method and status code", "method", "code")

# --------------------------------------------------------------------------- every daemon
DAEMON_INFO = _m("daemon_info", "gauge", "Always 1: which daemon serves these metrics (its command's name) and the "
                 "version of the package it runs", "daemon", "version")

CATALOGUE: tuple[MetricDef, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, MetricDef))
