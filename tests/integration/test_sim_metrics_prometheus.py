"""A simulated run's series in a real Prometheus: what PromQL says at a virtual time is what report.json says.

``leengine sim run``'s outputs (``sim.runner.write_outputs``) for host-crash-ip-leak: its
``metrics.om`` goes through ``promtool tsdb create-blocks-from openmetrics`` into a private
Prometheus (``lab.prometheus.prometheus_on_openmetrics``), queried at ``base_time + t`` with
the base time report.json records. The agents' counters, as Prometheus reads them, must
agree with the world's own tally in report.json: leaks released by cnictl, the largest leak
cnictl saw, successful CNI ADDs, discovery's pushes and Nginx reloads. Needs Debian's
prometheus (prometheus + promtool); no root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.prometheus import prometheus_on_openmetrics
from sim.adapters.runtime import SIM_EPOCH
from sim.runner import run_scenario, write_outputs
from sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "host-crash-ip-leak.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-run")
    write_outputs(run_scenario(load_scenario(SCENARIO)), out, code_version={}, plot=False)
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def prom(run_dir: Path, report: dict):
    with prometheus_on_openmetrics(run_dir / report["openmetrics"]["file"]) as server:
        yield server


def test_report_json_says_where_the_series_are_and_on_which_clock(run_dir: Path, report: dict) -> None:
    om = report["openmetrics"]
    assert om["file"] == "metrics.om" and (run_dir / om["file"]).stat().st_size > 0
    assert om["base_time"] == SIM_EPOCH  # 2026-01-01T00:00:00Z is virtual t=0
    assert om["scrape_interval"] == 10.0
    assert om["samples"] == int(report["virtual_seconds"] // om["scrape_interval"]) - 1  # 10 .. 890 s
    assert (run_dir / om["file"]).read_text().endswith("# EOF\n")


def test_leaks_at_a_virtual_time_are_what_report_json_says(prom, report: dict) -> None:
    base, end = report["openmetrics"]["base_time"], report["virtual_seconds"]
    released = "sum(leengine_ipam_allocations_gc_reclamations_total)"
    # nothing leaked before the rack crashes at 120 s: no reclamation has happened (no series yet)
    assert prom.query_value(released, time=base + 110) in (None, 0.0)
    # at the end: every leak cnictl released, as the world counted them
    assert report["metrics"]["leaks_released"] > 0
    assert prom.query_value(released, time=base + end - 10) == report["metrics"]["leaks_released"]
    # the largest leak: one check saw the whole crashed rack's addresses as certain leaks
    biggest = prom.query_value(f"max_over_time(sum(leengine_ipam_allocations_leaked)[{end:.0f}s:10s])",
                               time=base + end - 10)
    assert biggest == report["metrics"]["leaked_max"] > 0
    # and when: cnictl checks every 60 s with a 60 s grace, so the leak of 120 s is certain at 240 s
    leaked_now = "sum(leengine_ipam_allocations_leaked)"
    assert prom.query_value(leaked_now, time=base + 230) == 0.0
    assert prom.query_value(leaked_now, time=base + 250) == report["metrics"]["leaked_max"]


def test_agent_counters_in_prometheus_match_the_worlds_tally(prom, report: dict, run_dir: Path) -> None:
    last_scrape = report["virtual_seconds"] - 10  # scrapes at 10 .. 890 s: what happens after 890 is in no sample
    at = report["openmetrics"]["base_time"] + last_scrape
    m = report["metrics"]
    # the world's own tally up to the last scrape (metrics.json: its per-interval counts, sampled at the same times)
    tally = json.loads((run_dir / "metrics.json").read_text())
    allocations = sum(v for t, v in tally["allocations"] if t <= last_scrape)
    reloads = sum(v for t, v in tally["reloads"] if t <= last_scrape)
    assert m["add_errors"] == 0 and allocations > 0 and reloads > 0
    assert prom.query_value('sum(leengine_cni_requests_total{command="ADD",code="0"})', time=at) == allocations
    # discovery's pushes have no per-interval tally: equal when nothing was allocated after the last scrape,
    # else the pushes those late pods caused are in the world's total only
    pushes = prom.query_value("sum(leengine_discovery_pushes_total)", time=at)
    if allocations == m["allocations"]:
        assert pushes == m["discovery_pushes"]
    else:
        assert pushes is not None and 0 < pushes <= m["discovery_pushes"]
    assert prom.query_value("sum(leengine_slb_reloads_total)", time=at) == reloads
    # a histogram survives the trip: as many observations as ADDs answered with code 0
    assert prom.query_value('sum(leengine_cni_request_seconds_count{command="ADD",code="0"})', time=at) \
        == allocations
