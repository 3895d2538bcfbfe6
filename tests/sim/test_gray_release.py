"""The platform in the simulator (issue 13): apps deployed through control/apps.py, gray releases run by
control/releases.py, pods per version, requests split by the weights in force on each Nginx host, bad versions.

The two shipped scenarios are run at their own seeds and held to what they promise (reverted within two bake
intervals; paused, resumed and completed across a Cell outage); a small Region shows the mechanics (two versions
side by side in a Cell, endpoints carrying versions, the split of requests by shares, a bad version's errors in
the SLB agents' traffic records) and the new checks fail when they should (negative controls).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest

from control.activity import ACTIVITY, COUNTS
from foundation.logic.slb_shares import decode_shares, shares_key
from foundation.logic.slb_traffic import decode_traffic, traffic_prefix
from foundation.ports import KeyValue, PutOp, StoreUnavailable, WatchEvent
from foundation.ports.metrics import SLB_REQUESTS
from foundation.ports.workloads import ControllerInfo, controller_name
from sim.adapters.runtime import SimRuntime
from sim.checks import activity_violations
from sim.scenario import load_scenario, parse_scenario
from sim.scenario_errors import ScenarioError
from sim.scenario_lab import lab_scaled
from sim.spec import AppSpec, CellSpec, CheckSpec, FaultSpec, GroupSpec, PoolSpec, RegionSpec, ReleaseSpec
from sim.world import Region, run_region

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
PLATFORM_CHECKS = (CheckSpec("no-orphan-versions"), CheckSpec("activity-consistent"),
                   CheckSpec("domains-keep-serving"))


def verdicts(report) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def run_file(name: str):
    spec = load_scenario(SCENARIOS / f"{name}.yaml").spec
    return run_region(spec)


@pytest.fixture(scope="module")
def reverted():
    return run_file("gray-release-revert")


@pytest.fixture(scope="module")
def outage():
    return run_file("gray-release-cell-outage")


def small(*, steps=(50, 100), bake=60.0, faults=(), checks=PLATFORM_CHECKS, bad_checks=2, duration=300.0,
          seed=7) -> RegionSpec:
    cells = tuple(CellSpec(f"cell-{c}", 4, (PoolSpec(f"pool-{c}", f"10.{c}.0.0/22", vlan=100 + c),), racks=2)
                  for c in (1, 2))
    apps = (AppSpec("shop", ("cell-1", "cell-2"), 3, "public", requests_per_second=100, platform=True),
            AppSpec("blog", ("cell-1", "cell-2"), 1, "public", requests_per_second=10))
    releases = (ReleaseSpec("shop", at=40.0, steps=steps, bake_seconds=bake, check_seconds=10.0,
                            bad_checks=bad_checks, min_requests=10),)
    return RegionSpec("gray", seed, duration, cells, (GroupSpec("public", 2),), apps, faults=faults, checks=checks,
                      releases=releases, traffic_every=5.0)


# ------------------------------------------------------------------ the shipped scenarios


def test_a_bad_version_is_reverted_within_two_bake_intervals_of_its_first_error(reverted):
    report, region = reverted
    assert report["passed"], report["checks"]
    first = region.traffic.first_error[("shop", "v2")]
    platform = region.platform
    assert platform is not None
    for cell in ("c1", "c2"):  # v2's controllers deleted in every Cell, soon after its first error
        workloads = platform.workloads[cell]
        assert set(workloads.controllers) == {("shop", "shop-v1")}
        assert first < workloads.deleted_at[("shop", "shop-v2")] <= first + 2 * 60
        assert all(p.version == "v1" for p in region.kube.pods[("shop", cell)] if p.in_api)
    assert platform.observed.shares["shop"][-1][1] == {"v1": 100}
    states = [state for _, state, _, new in platform.observed.releases["shop"] if new == "v2"]
    assert states[0] == "running" and states[-2:] == ["reverting", "reverted"]
    # v2 answered 20 % of its requests with 500; v1 none; what failed is bounded and reported.
    v1, v2 = region.traffic.versions[("shop", "v1")], region.traffic.versions[("shop", "v2")]
    assert v1[1] == 0 and v2[0] >= 10 and 0.15 <= v2[1] / v2[0] <= 0.25, (v1, v2)
    assert report["metrics"]["requests_failed"] <= 200
    assert report["platform"]["requests_failed_by_versions"] == v2[1]
    # The Nginx hosts counted them per version, and the SLB agents' traffic records carry them.
    errors = 0
    for host in region.hosts.values():
        counts = host.proxy._answered
        errors += counts.get(("shop.example.com", "v2"), ({}, [0.0]))[0].get("5xx", 0)
    assert errors == v2[1]
    recorded = [decode_traffic(kv.key, kv.value) for kv in region.store._keys.values()
                if kv.key.startswith(traffic_prefix("web"))]
    assert len(recorded) == 2
    assert sum(t.domains["shop.example.com"]["v2"].errors for t in recorded) == v2[1]
    # ... and the agents' request metrics (metrics.om) per version and status class
    exported = sum(region.agent_metrics.value(SLB_REQUESTS, {"group": "web", "host": host, "domain": "shop.example.com",
                                                             "version": "v2", "code": "5xx"}) or 0
                   for host in region.hosts)
    assert exported == v2[1]


def test_a_good_release_pauses_while_a_cell_is_cut_off_then_resumes_and_completes(outage):
    report, region = outage
    assert report["passed"], report["checks"]
    timeline = region.platform.observed.releases["shop"]
    paused = [at for at, state, _, _ in timeline if state == "paused"]
    assert len(paused) == 1 and 230 <= paused[0] <= 240  # the Cell went dark at 230; a check every 10 s
    resumed = next(at for at, state, _, _ in timeline if at > paused[0] and state == "running")
    assert 320 <= resumed <= 330  # it came back at 320
    assert not any(state in ("reverting", "reverted") for _, state, _, _ in timeline)
    assert timeline[-1][1] == "completed"
    for cell in ("c1", "c2"):
        assert set(region.platform.workloads[cell].controllers) == {("shop", "shop-v2")}
    assert report["metrics"]["requests_failed"] == 0  # a good release across an outage costs no request
    assert region.platform.observed.shares["shop"][-1][1] == {"v2": 100}


def test_both_scenarios_pass_at_the_labs_scale():
    for name in ("gray-release-revert", "gray-release-cell-outage"):
        scenario = load_scenario(SCENARIOS / f"{name}.yaml")
        report, _ = run_region(lab_scaled(scenario.spec))
        assert report["passed"], (name, report["checks"])


# ------------------------------------------------------------------ the mechanics, in a small Region


@pytest.fixture(scope="module")
def halfway():
    """A Region stopped at 50 % of v2 (released at 40 s, 60 s of bake per step): both versions serve."""
    region = Region(small(), SimRuntime(7))
    region.boot()
    region.run_until(70.0)
    before = {k: list(v) for k, v in region.traffic.versions.items()}
    region.run_until(95.0)
    return region, before


def test_two_versions_run_side_by_side_in_each_cell_and_endpoints_carry_them(halfway):
    region, _ = halfway
    for cell in ("cell-1", "cell-2"):
        pods = [p for p in region.kube.pods[("shop", cell)] if p.in_api]
        assert sorted(p.version for p in pods) == ["v1"] * 3 + ["v2"] * 3
        assert all(p.name.startswith(f"shop-{p.version}-{cell}-") for p in pods)
        endpoints = region.cells[cell].cluster.endpoints[("shop", "shop")]
        by_ip = {p.ip: p.version for p in pods if p.ready}
        assert dict(zip(endpoints.ready, endpoints.ready_versions, strict=True)) == by_ip
        workloads = region.platform.workloads[cell]
        assert {n: c.ready_replicas for (_, n), c in workloads.controllers.items()} == {"shop-v1": 3, "shop-v2": 3}
        # blog is no platform app: one controller per (app, Cell), its pods without a version
        assert all(p.version == "" for p in region.kube.pods[("blog", cell)])


def test_requests_split_over_versions_by_the_weights_in_force(halfway):
    region, before = halfway
    shares = decode_shares(region.store._keys[shares_key("public", "shop.example.com")].value)
    assert shares == {"v1": 50, "v2": 50}
    for host in region.hosts.values():
        weights = {u.version: u.weight for u in host.proxy.upstreams["shop.example.com"]}
        assert weights == {"v1": 1000, "v2": 1000}
    now = region.traffic.versions
    v1 = now[("shop", "v1")][0] - before[("shop", "v1")][0]
    v2 = now[("shop", "v2")][0] - before[("shop", "v2")][0]
    assert v1 + v2 == pytest.approx(25 * 100, rel=0.02)
    assert v2 / (v1 + v2) == pytest.approx(0.5, abs=0.01)


def test_a_one_percent_step_sends_one_percent():
    region = Region(small(steps=(1, 100), bake=200.0, duration=200.0),
                    SimRuntime(7))
    region.boot()
    region.run_until(80.0)
    before = {k: list(v) for k, v in region.traffic.versions.items()}
    region.run_until(180.0)
    v1 = region.traffic.versions[("shop", "v1")][0] - before[("shop", "v1")][0]
    v2 = region.traffic.versions[("shop", "v2")][0] - before[("shop", "v2")][0]
    assert 0.008 <= v2 / (v1 + v2) <= 0.012, (v1, v2)


def test_bad_version_next_is_the_first_version_deployed_after_the_fault_begins():
    spec = small(faults=(FaultSpec("bad-version", at=20.0, app="shop", error_rate=0.5),), duration=120.0,
                 checks=(CheckSpec("release-reverted-within", within=60.0),))
    report, region = run_region(spec)
    assert region.traffic.versions[("shop", "v1")][1] == 0  # v1 was deployed before the fault began
    assert region.traffic.first_error[("shop", "v2")] > 40.0
    assert verdicts(report)["release-reverted-within"]["passed"], report["checks"]


def test_every_platform_change_keeps_its_activity_record_across_etcd_outages():
    """etcd goes down as the release's deploy is sent and again mid-release: the platform's calls fail or are
    applied without an answer, and are retried; still 0 changes without a record, 0 records without a change,
    counts == recount, and the release completes with nothing orphaned."""
    faults = (FaultSpec("etcd-unavailable", at=40.0, duration=3.0), FaultSpec("etcd-unavailable", at=101.0,
                                                                             duration=2.0))
    checks = (*PLATFORM_CHECKS, CheckSpec("release-completed"))
    report, region = run_region(small(faults=faults, checks=checks))
    assert report["passed"], report["checks"]
    assert report["platform"]["calls_retried"] >= 1
    assert region.platform.observed.final.recount.records >= 5


def test_answers_lost_after_the_write_was_applied_are_retried_without_a_second_change():
    """The transactions that deploy v2 and start its release are applied, but their answers are lost (as one
    past the client's deadline): the retries find the change applied; one v2, one release, every change with
    its one record."""
    spec = small(checks=(*PLATFORM_CHECKS, CheckSpec("release-completed")))
    region = Region(spec, SimRuntime(7))
    store = region.platform.apps.store
    applied = store.txn
    lost: list[str] = []

    async def txn(compares, ops, *args, **kwargs):
        result = await applied(compares, ops, *args, **kwargs)
        for prefix in ("/platform/versions/shop/v2", "/platform/releases/shop"):
            if prefix not in lost and any(isinstance(op, PutOp) and op.key == prefix for op in ops):
                lost.append(prefix)
                raise StoreUnavailable(store.endpoint, "the answer came after the deadline")
        return result

    store.txn = txn  # the control service's one etcd client: Apps' and Releases'
    region.boot()
    region.run_until(spec.duration)
    assert lost == ["/platform/versions/shop/v2", "/platform/releases/shop"]
    verdict = {v.name: v for v in region.checks()}
    assert all(v.passed for v in verdict.values()), verdict
    assert region.platform.observed.calls_failed == 2
    assert sorted(region.platform.observed.final.active["shop"]) == ["v2"]  # no v3 from a blind retry


def test_a_slow_version_is_reverted_by_its_latency_alone():
    spec = small(faults=(FaultSpec("bad-version", at=20.0, app="shop", error_rate=0.0, latency_factor=5.0),),
                 duration=150.0, checks=(CheckSpec("no-orphan-versions"),))
    report, region = run_region(spec)
    assert region.traffic.versions[("shop", "v2")][1] == 0  # not one error
    states = [state for _, state, _, _ in region.platform.observed.releases["shop"]]
    assert states[-1] == "reverted", states
    assert report["passed"], report["checks"]
    seconds = {}
    for host in region.hosts.values():  # the Nginx hosts measured it: v2's requests took 5 x as long
        for (domain, version), (classes, total) in host.proxy._answered.items():
            if domain == "shop.example.com":
                done = seconds.setdefault(version, [0, 0.0])
                done[0] += sum(classes.values())
                done[1] += total[0]
    assert seconds["v2"][1] / seconds["v2"][0] == pytest.approx(5 * seconds["v1"][1] / seconds["v1"][0])


def test_the_run_is_deterministic():
    spec = small(duration=150.0)
    assert run_region(spec)[0]["trace_sha256"] == run_region(spec)[0]["trace_sha256"]


# ------------------------------------------------------------------ the checks fail when they should


def test_release_reverted_within_fails_when_the_controller_never_reverts():
    spec = small(faults=(FaultSpec("bad-version", at=20.0, app="shop", error_rate=0.5),), duration=200.0,
                 bad_checks=100, bake=300.0, checks=(CheckSpec("release-reverted-within", within=60.0),))
    report, _ = run_region(spec)
    verdict = verdicts(report)["release-reverted-within"]
    assert not verdict["passed"] and "not reverted" in verdict["detail"]


def test_no_orphan_versions_fails_on_a_controller_no_record_asks_for():
    spec = small(duration=120.0, checks=(CheckSpec("no-orphan-versions"),))
    region = Region(spec, SimRuntime(7))
    region.boot()
    region.run_until(100.0)
    # Someone made v9 by hand: above the app's next_version, so no orphan the reconcile deletes.
    workloads = region.platform.workloads["cell-2"]
    spec9 = replace(workloads.controllers[("shop", "shop-v1")].spec, version="v9", replicas=1)
    workloads.controllers[("shop", controller_name("shop", "v9"))] = ControllerInfo("shop", "shop-v9", spec9, 0, "1")
    region.run_until(120.0)
    verdict = {v.name: v for v in region.checks()}["no-orphan-versions"]
    assert not verdict.passed and "cell-2" in verdict.detail and "shop-v9" in verdict.detail


def _event(key: str, revision: int, kind: Literal["put", "delete"] = "put", value: bytes = b"{}") -> WatchEvent:
    return WatchEvent(kind, KeyValue(key, value if kind == "put" else b"", revision, revision, 1), revision)


def test_activity_violations_catch_a_change_without_its_record_and_a_record_without_its_change():
    record, count = f"{ACTIVITY}app/shop/x", f"{COUNTS}2026-01-01/app/version.deploy"
    good = [_event("/platform/versions/shop/v1", 2), _event(record + "1", 2), _event(count, 2),
            _event("/platform/versions/shop/v1", 3, "delete")]  # the reconciler's completion: no record
    assert activity_violations(good) == ([], 1)
    unrecorded = [_event("/platform/apps/shop", 4)]
    problems, _ = activity_violations(good + unrecorded)
    assert len(problems) == 1 and "revision 4" in problems[0]
    orphan_record = [_event(record + "2", 5), _event(count, 5)]
    problems, records = activity_violations(good + orphan_record)
    assert len(problems) == 1 and "revision 5" in problems[0] and records == 2


# ------------------------------------------------------------------ the scenario format


BASE = """
seed: 1
duration: 100
topology:
  cells:
    - {name: a, nodes: 2, pools: [{name: pa, cidr: 10.1.0.0/24, vlan: 1}]}
    - {name: b, nodes: 2, pools: [{name: pb, cidr: 10.2.0.0/24, vlan: 2}]}
  groups: [{name: edge, hosts: 2}]
workload:
  apps:
    - {name: shop, cells: [a, b], replicas: 2, group: edge, platform: true}
    - {name: blog, cells: [a], replicas: 1, group: edge}
"""


@pytest.mark.parametrize(("extra", "field"), [
    ("platform:\n  releases: [{app: blog, at: 10}]\n", "platform.releases[0].app"),
    ("platform:\n  releases: [{app: shop, at: 10, steps: [10, 5, 100]}]\n", "platform.releases[0].steps"),
    ("platform:\n  releases: [{app: shop, at: 10, steps: [1, 50]}]\n", "platform.releases[0].steps"),
    ("platform:\n  releases: [{app: shop, at: 100}]\n", "platform.releases[0].at"),
    ("faults: [{kind: bad-version, at: 5, app: blog, error_rate: 0.2}]\n", "faults[0].app"),
    ("faults: [{kind: bad-version, at: 5, app: shop, error_rate: 1.5}]\n", "faults[0].error_rate"),
    ("faults: [{kind: bad-version, at: 5, app: shop, version: two, error_rate: 0.1}]\n", "faults[0].version"),
    ("faults: [{kind: bad-version, at: 5, error_rate: 0.1}]\n", "faults[0].app"),
    ("faults: [{kind: host-crash, at: 5, app: shop}]\n", "faults[0].app"),
])
def test_the_parser_refuses_what_the_platform_cannot_run(extra: str, field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(BASE + extra, "t.yaml")
    assert caught.value.field == field, caught.value


def test_a_platform_app_runs_in_two_cells_and_has_no_churn():
    one_cell = BASE.replace("{name: shop, cells: [a, b]", "{name: shop, cells: [a]")
    with pytest.raises(ScenarioError, match="2 to 16 Cells"):
        parse_scenario(one_cell, "t.yaml")
    with pytest.raises(ScenarioError, match="no churn"):
        parse_scenario(BASE.replace("workload:\n", "workload:\n  churn: {deploys_per_hour: 10}\n"), "t.yaml")
    no_platform = BASE.replace(", platform: true", "")
    with pytest.raises(ScenarioError, match="needs platform apps"):
        parse_scenario(no_platform + "checks: [{kind: no-orphan-versions}]\n", "t.yaml")
    with pytest.raises(ScenarioError, match="exceed a controller's 1000"):
        parse_scenario(BASE.replace("replicas: 2, group: edge, platform", "replicas: 1001, group: edge, platform"),
                       "t.yaml")
    shared = BASE.replace("{name: blog, cells: [a], replicas: 1, group: edge}",
                          "{name: blog, cells: [a], replicas: 1, group: edge, domain: shop.example.com}")
    with pytest.raises(ScenarioError, match=r"serve one domain shop\.example\.com in group edge"):
        parse_scenario(shared, "t.yaml")  # the platform claims its app's domain: a second app there is refused
    spec = parse_scenario(BASE + "platform:\n  traffic_every: 2\n  releases: [{app: shop, at: 10}]\n", "t.yaml")
    assert spec.traffic_every == 2.0 and spec.releases[0].steps == (1, 10, 50, 100)
    assert parse_scenario(no_platform, "t.yaml").traffic_every == 0.0  # no platform: no traffic records
