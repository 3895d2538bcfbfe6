"""lab/prometheus.py against Debian's real prometheus: it scrapes a ``/metrics`` served by
``leengine.metrics_option`` from a ``PromMetrics`` registry, a query returns what the test
recorded, an alert rule fires, a dead target and bad PromQL are named, and nothing is left
behind (process, files). Querying a simulated run loaded with promtool is in
``tests/conformance/test_metrics.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from foundation.adapters.prom_metrics import PromMetrics
from foundation.ports import metrics as m
from lab.prometheus import PrometheusError, find_prometheus, prometheus_on_openmetrics, running_prometheus
from leengine.metrics_option import serve_metrics
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SIM_EPOCH, SimRuntime


def _eventually(probe, expected, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = probe()
        if got == expected:
            return got
        time.sleep(0.2)
    raise AssertionError(f"still {got!r} after {timeout:.0f}s, expected {expected!r}")


@pytest.fixture
def served():
    metrics = PromMetrics()
    server = serve_metrics("127.0.0.1:0", metrics.registry)
    assert server is not None
    try:
        yield metrics, f"127.0.0.1:{server.port}"
    finally:
        server.close()


def test_prometheus_is_installed():
    assert Path(find_prometheus()).exists()  # missing: an error that names the package, never a skip


def test_a_scrape_returns_what_was_recorded(served):
    metrics, target = served
    for _ in range(5):
        metrics.inc(m.CNI_REQUESTS, node="n1", command="ADD", code="0")
    metrics.set(m.SLB_LAST_RELOAD_SUCCESSFUL, 0, group="web", host="slb-1")
    with running_prometheus({"leengine": [target]}) as prom:
        prom.wait_for_target_up("leengine")
        query = 'leengine_cni_requests_total{job="leengine",command="ADD",code="0"}'
        _eventually(lambda: prom.query_value(query), 5.0)
        metrics.inc(m.CNI_REQUESTS, 3, node="n1", command="ADD", code="0")
        _eventually(lambda: prom.query_value(query), 8.0)  # scraped every second
        assert prom.query_value('leengine_slb_config_last_reload_successful{host="slb-1"}') == 0.0
        workdir, pid = prom.workdir, prom._proc.pid if prom._proc else None
    assert not workdir.exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_a_rule_file_is_loaded_and_its_alert_fires(served, tmp_path):
    metrics, target = served
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: lab\n  rules:\n  - alert: BuildQueueLong\n"
        "    expr: leengine_build_tasks_queued > 5\n    labels: {severity: warning}\n")
    metrics.set(m.BUILD_TASKS_QUEUED, 2)
    with running_prometheus({"leengine": [target]}, rule_files=[rules]) as prom:
        prom.wait_for_target_up()
        assert [r["name"] for g in prom.rules() for r in g["rules"]] == ["BuildQueueLong"]
        assert prom.alerts() == []
        metrics.set(m.BUILD_TASKS_QUEUED, 9)
        firing = _eventually(lambda: [(a["labels"]["alertname"], a["state"]) for a in prom.alerts()],
                             [("BuildQueueLong", "firing")])
        assert firing


def test_a_dead_target_and_bad_promql_are_named():
    with running_prometheus({"gone": ["127.0.0.1:9"]}) as prom:
        with pytest.raises(PrometheusError, match=r"127\.0\.0\.1:9\b.*connection refused"):
            prom.wait_for_target_up("gone", timeout=8)
        with pytest.raises(PrometheusError, match="bad_data"):
            prom.query("sum(")
        assert prom.query_value("1 + 1") == 2.0


def test_a_simulated_run_is_served_at_its_virtual_times_and_cleaned_up(tmp_path):
    sim = SimMetrics(SimRuntime(seed=1))
    for t in range(0, 600, 10):
        sim.set(m.IPAM_LEAKS_CERTAIN, 1.0 if 200 <= t < 400 else 0.0, pool="default")
        sim.sample(float(t))
    path = tmp_path / "run.om.txt"
    path.write_text(sim.openmetrics())
    with prometheus_on_openmetrics(path) as prom:
        assert prom.query_value("leengine_ipam_allocations_leaked", SIM_EPOCH + 100) == 0.0
        assert prom.query_value("leengine_ipam_allocations_leaked", SIM_EPOCH + 300) == 1.0
        matrix = prom.query_range("leengine_ipam_allocations_leaked", SIM_EPOCH, SIM_EPOCH + 590, 10)
        assert [float(v) for _, v in matrix[0]["values"]] == [sim.value_at(m.IPAM_LEAKS_CERTAIN,
                                                                          {"pool": "default"}, t)
                                                             for t in range(0, 600, 10)]
        storage = prom.storage
    assert not storage.exists()
