"""The Metrics port's conformance suite: the same bodies against ``PromMetrics`` and ``SimMetrics``,
then the sim's OpenMetrics output through the real ``promtool`` and ``prometheus``.

A body gets a ``MetricsHarness``: ``h.metrics`` (the adapter) and ``h.samples()``, every
sample a scrape would see now as {(sample name, sorted label pairs): value}: for the real
adapter parsed from its exposition (``prometheus_client``'s text parser), for the sim its
``current_samples()``. So "what the real registry exposes after inc/set/observe equals
what the sim's current values say" is asserted sample by sample, ``le`` spellings
included; a random walk over the whole catalogue is run on both and compared whole.

The OpenMetrics tests need Debian's ``prometheus`` (``promtool`` and the server): a missing
binary fails (``lab/prometheus.py``), it is never a skip.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.adapters.prom_metrics import PromMetrics
from foundation.ports import metrics as m
from foundation.ports.metrics import CATALOGUE, MetricDef, MetricError, Metrics
from lab.prometheus import PrometheusError, find_promtool, load_openmetrics, prometheus_on_openmetrics
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SIM_EPOCH, SimRuntime

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class MetricsHarness:
    kind: str
    metrics: Metrics
    samples: Callable[[], Samples]


def _real() -> MetricsHarness:
    adapter = PromMetrics()

    def samples() -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(adapter.exposition().decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    return MetricsHarness("real", adapter, samples)


def _sim() -> MetricsHarness:
    adapter = SimMetrics(SimRuntime(seed=1))
    return MetricsHarness("sim", adapter, adapter.current_samples)


@pytest.fixture(params=["real", "sim"])
def h(request) -> MetricsHarness:
    return _real() if request.param == "real" else _sim()


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


# --------------------------------------------------------------------------- both adapters


def test_both_adapters_fit_the_port():
    assert isinstance(PromMetrics(), Metrics) and isinstance(SimMetrics(SimRuntime()), Metrics)


def test_counter_counts_per_label_set(h):
    for _ in range(3):
        h.metrics.inc(m.CNI_REQUESTS, node="n1", command="ADD", code="0")
    h.metrics.inc(m.CNI_REQUESTS, 2.5, node="n1", command="DEL", code="0")
    h.metrics.inc(m.BUILD_CACHE_HITS)
    assert h.samples() == {
        key("leengine_cni_requests_total", node="n1", command="ADD", code="0"): 3.0,
        key("leengine_cni_requests_total", node="n1", command="DEL", code="0"): 2.5,
        key("leengine_build_cache_hits_total"): 1.0,
    }


def test_gauge_set_and_moved_both_ways(h):
    h.metrics.set(m.IPAM_IPPOOL_SIZE, 254, pool="default")
    h.metrics.set(m.BUILD_TASKS_QUEUED, 7)
    h.metrics.inc(m.BUILD_TASKS_QUEUED, -2)
    h.metrics.inc(m.BUILD_TASKS_QUEUED)
    assert h.samples() == {key("leengine_ipam_ippool_size", pool="default"): 254.0,
                           key("leengine_build_tasks_queued"): 6.0}


def test_histogram_buckets_are_cumulative_and_le_inclusive(h):
    for value in (0.0003, 0.001, 0.004, 0.7, 99.0):  # 0.001 sits on a bound: counted in le="0.001"
        h.metrics.observe(m.IPAM_ALLOCATION_SECONDS, value, node="n1")
    got = h.samples()
    bucket = {dict(labels)["le"]: v for (name, labels), v in got.items() if name.endswith("_bucket")}
    assert bucket["0.0005"] == 1 and bucket["0.001"] == 2 and bucket["0.0025"] == 2 and bucket["0.005"] == 3
    assert bucket["0.5"] == 3 and bucket["1.0"] == 4 and bucket["10.0"] == 4 and bucket["+Inf"] == 5
    assert len(bucket) == len(m.LATENCY_BUCKETS) + 1
    assert got[key("leengine_ipam_allocation_seconds_count", node="n1")] == 5
    assert got[key("leengine_ipam_allocation_seconds_sum", node="n1")] == pytest.approx(99.7053)


@pytest.mark.parametrize("labels", [{}, {"node": "n1"}, {"node": "n1", "command": "ADD", "code": "0", "x": "y"},
                                    {"node": "n1", "command": "ADD", "result": "0"}])
def test_labels_must_be_exactly_the_definitions(h, labels):
    with pytest.raises(MetricError, match="leengine_cni_requests_total"):
        h.metrics.inc(m.CNI_REQUESTS, **labels)
    with pytest.raises(MetricError):
        h.metrics.set(m.BUILD_TASKS_QUEUED, 1, pool="p")  # a label-less family takes none
    assert h.samples() == {}


def test_a_label_value_is_a_string(h):
    with pytest.raises(MetricError, match="not a string"):
        h.metrics.set(m.IPAM_IPPOOL_SIZE, 1, pool=7)  # type: ignore[arg-type]  # what the check is for
    assert h.samples() == {}


def test_a_counter_never_goes_down_and_calls_fit_the_kind(h):
    h.metrics.inc(m.BUILD_RESULTS, result="done")
    with pytest.raises(MetricError, match="only goes up"):
        h.metrics.inc(m.BUILD_RESULTS, -1, result="done")
    with pytest.raises(MetricError):
        h.metrics.set(m.BUILD_RESULTS, 0, result="done")
    with pytest.raises(MetricError):
        h.metrics.observe(m.BUILD_TASKS_QUEUED, 1.0)
    with pytest.raises(MetricError):
        h.metrics.inc(m.DISCOVERY_DRAIN_SECONDS)
    assert h.samples() == {key("leengine_build_results_total", result="done"): 1.0}


def test_two_definitions_with_one_name_are_refused(h):
    h.metrics.set(m.BUILD_TASKS_QUEUED, 1)
    impostor = MetricDef("leengine_build_tasks_queued", "gauge", "other help", ("pool",))
    with pytest.raises(MetricError, match="two definitions"):
        h.metrics.set(impostor, 1, pool="p")


def _random_walk(metrics: Metrics, seed: int, steps: int = 400) -> None:
    rng = random.Random(seed)
    values = ["a", "b", 'quote"and\\slash', "n-1"]
    for _ in range(steps):
        metric = rng.choice(CATALOGUE)
        labels = {name: rng.choice(values) for name in metric.labels}
        if metric.kind == "counter":
            metrics.inc(metric, rng.choice([1.0, 2.0, 0.5]), **labels)
        elif metric.kind == "gauge":
            if rng.random() < 0.5:
                metrics.set(metric, rng.uniform(-5, 500), **labels)
            else:
                metrics.inc(metric, rng.uniform(-3, 3), **labels)
        else:
            bounds = list(metric.buckets)
            metrics.observe(metric, rng.choice([*bounds, rng.uniform(0, bounds[-1] * 2)]), **labels)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_calls_expose_the_same_samples_on_both(seed):
    real, sim = _real(), _sim()
    _random_walk(real.metrics, seed)
    _random_walk(sim.metrics, seed)
    got_real, got_sim = real.samples(), sim.samples()
    assert got_real.keys() == got_sim.keys()
    for k, v in got_real.items():
        assert got_sim[k] == pytest.approx(v, rel=1e-12, abs=1e-9), k


# --------------------------------------------------------------------------- the sim's samples over time


def test_value_at_is_the_last_sample_at_or_before_t():
    rt = SimRuntime(seed=1)
    sim = SimMetrics(rt)
    sim.set(m.BUILD_TASKS_QUEUED, 1)
    sim.sample(0.0)
    sim.set(m.BUILD_TASKS_QUEUED, 2)
    sim.inc(m.BUILD_TASKS_MOVED)
    sim.sample(10.0)
    sim.set(m.BUILD_TASKS_QUEUED, 3)  # recorded, not sampled yet: no query sees it
    assert sim.value_at(m.BUILD_TASKS_QUEUED, None, -1) is None
    assert [sim.value_at(m.BUILD_TASKS_QUEUED, None, t) for t in (0, 9.99, 10, 1e6)] == [1, 1, 2, 2]
    assert sim.value_at(m.BUILD_TASKS_MOVED, None, 5) is None  # the series did not exist yet
    assert sim.value_at(m.BUILD_TASKS_MOVED, None, 10) == 1
    assert sim.value(m.BUILD_TASKS_QUEUED) == 3
    assert sim.points(m.BUILD_TASKS_QUEUED) == [(0.0, 1.0), (10.0, 2.0)]
    sim.sample(10.0004)  # the same millisecond: replaces the previous sample
    assert sim.sample_times == [0.0, 10.0004] and sim.value_at(m.BUILD_TASKS_QUEUED, None, 10) == 3
    with pytest.raises(MetricError, match="before"):
        sim.sample(5.0)


def test_openmetrics_text_is_well_formed():
    sim = SimMetrics(SimRuntime(seed=1))
    sim.inc(m.CNI_REQUESTS, node='n"1\\', command="ADD", code="0")
    sim.observe(m.DISCOVERY_DRAIN_SECONDS, 0.3)
    sim.sample(0)
    sim.sample(1.5)
    text = sim.openmetrics(base_time=1000.0)
    lines = text.splitlines()
    assert lines[-1] == "# EOF" and text.endswith("\n") and text.count("# EOF") == 1
    assert "# TYPE leengine_cni_requests counter" in lines  # the family is named without _total
    assert "# TYPE leengine_discovery_drain_seconds histogram" in lines
    assert "# UNIT leengine_discovery_drain_seconds seconds" in lines
    assert 'leengine_cni_requests_total{code="0",command="ADD",node="n\\"1\\\\"} 1.0 1001.500' in lines
    assert 'leengine_discovery_drain_seconds_bucket{le="+Inf"} 1.0 1000.000' in lines
    # The default base is the runtime's wall clock at virtual 0: what agents stamp with wall_time().
    assert sim.openmetrics().splitlines()[2].endswith(f" {SIM_EPOCH:.3f}")
    assert SimMetrics(SimRuntime()).openmetrics() == "# EOF\n"


# --------------------------------------------------------------------------- promtool and prometheus

RUN_SECONDS = 3 * 3600 + 25  # a few of promtool's 2 h blocks
EVERY = 10.0


def _simulated_run() -> SimMetrics:
    """A small 'run' with counters, gauges that go up and down, histograms and an awkward label value."""
    sim = SimMetrics(SimRuntime(seed=7))
    rng = random.Random(7)
    t = 0.0
    while t <= RUN_SECONDS:
        for node in ("n1", "n2"):
            for _ in range(rng.randint(0, 3)):
                sim.inc(m.CNI_REQUESTS, node=node, command="ADD", code="0")
                sim.observe(m.IPAM_ALLOCATION_SECONDS, rng.uniform(0.0001, 0.02), node=node)
        sim.set(m.IPAM_LEAKS_CERTAIN, float(int(t) // 600 % 4), pool='pool "a"\\b')
        if t >= 3600:  # a series born mid-run
            sim.inc(m.SLB_RELOADS, group="web", host="slb-1", result="failure")
        sim.sample(t)
        t += EVERY
    return sim


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> tuple[SimMetrics, Path]:
    sim = _simulated_run()
    path = tmp_path_factory.mktemp("om") / "metrics.om.txt"
    with path.open("w") as out:
        sim.write_openmetrics(out)
    return sim, path


def test_promtool_is_installed():
    assert Path(find_promtool()).exists()  # a missing promtool fails here, loudly, not as a skip


def test_promtool_turns_the_sims_output_into_blocks_keeping_every_sample(run_file, tmp_path):
    _, path = run_file
    storage = load_openmetrics(path, tmp_path / "tsdb")
    metas = [json.loads((d / "meta.json").read_text()) for d in storage.iterdir() if (d / "meta.json").exists()]
    assert len(metas) >= 2  # promtool cuts 2 h blocks: the run spans more than one
    written = sum(1 for line in path.read_text().splitlines() if not line.startswith("#"))
    # promtool drops a sample older than its series' last one without a word (below): none may be lost.
    assert sum(meta["stats"]["numSamples"] for meta in metas) == written


def test_promtool_drops_samples_out_of_order_and_refuses_a_file_without_eof(tmp_path):
    """Why the sim writes each series in timestamp order: promtool would silently lose the rest."""
    unordered = tmp_path / "unordered.om.txt"
    unordered.write_text("# TYPE leengine_x gauge\nleengine_x 1 200.000\nleengine_x 2 100.000\n# EOF\n")
    storage = load_openmetrics(unordered, tmp_path / "tsdb")
    metas = [json.loads((d / "meta.json").read_text()) for d in storage.iterdir() if (d / "meta.json").exists()]
    assert sum(meta["stats"]["numSamples"] for meta in metas) == 1
    unended = tmp_path / "unended.om.txt"
    unended.write_text("# TYPE leengine_x gauge\nleengine_x 1 200.000\n")
    with pytest.raises(PrometheusError, match="EOF"):
        load_openmetrics(unended, tmp_path / "tsdb2")


def test_prometheus_answers_what_value_at_says(run_file):
    sim, path = run_file
    base = SIM_EPOCH
    leaks = {"pool": 'pool "a"\\b'}
    with prometheus_on_openmetrics(path) as prom:
        for t in (0.0, 615.0, 3599.0, 3600.0, 7300.0, float(RUN_SECONDS)):
            expected = sim.value_at(m.IPAM_LEAKS_CERTAIN, leaks, t)
            assert prom.query_value('leengine_ipam_allocations_leaked{pool="pool \\"a\\"\\\\b"}', base + t) == expected
            for node in ("n1", "n2"):
                labels = {"node": node, "command": "ADD", "code": "0"}
                got = prom.query_value(f'leengine_cni_requests_total{{node="{node}",command="ADD"}}', base + t)
                assert got == sim.value_at(m.CNI_REQUESTS, labels, t)
                count = prom.query_value(f'leengine_ipam_allocation_seconds_count{{node="{node}"}}', base + t)
                assert count == sim.value_at("leengine_ipam_allocation_seconds_count", {"node": node}, t)
                bucket = prom.query_value(f'leengine_ipam_allocation_seconds_bucket{{node="{node}",le="0.005"}}',
                                          base + t)
                assert bucket == sim.value_at("leengine_ipam_allocation_seconds_bucket",
                                              {"node": node, "le": "0.005"}, t)
        # The series born at virtual 3600 s does not exist before it, then counts one per sample.
        reloads = 'leengine_slb_reloads_total{result="failure"}'
        assert prom.query_value(reloads, base + 3590) is None
        assert prom.query_value(reloads, base + 3600) == 1
        assert prom.query_value(reloads, base + RUN_SECONDS) == sim.value_at(
            m.SLB_RELOADS, {"group": "web", "host": "slb-1", "result": "failure"}, RUN_SECONDS)
        # PromQL over the run works as on a lab: a rate and a quantile over virtual time.
        rate = prom.query_value('sum(rate(leengine_cni_requests_total[10m]))', base + 7200)
        assert rate is not None and 0 < rate < 6 / EVERY
        p99 = prom.query_value(
            "histogram_quantile(0.99, sum by (le) (rate(leengine_ipam_allocation_seconds_bucket[30m])))", base + 7200)
        assert p99 is not None and 0.0001 <= p99 <= 0.025 and not math.isnan(p99)
