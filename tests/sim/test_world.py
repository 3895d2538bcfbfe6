"""The simulated Region: real agents on sim adapters, faults, leaks found and released, checks that bite."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pytest

from cni.ipam import Ipam
from cni.pools import BLOCKS
from foundation.ports import Compare
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore
from sim.spec import AppSpec, CellSpec, CheckSpec, ChurnSpec, FaultSpec, GroupSpec, PoolSpec, RegionSpec, Selector
from sim.topology import ADMIN
from sim.world import Region, run_region

CHECKS = (
    CheckSpec("no-duplicate-address"),
    CheckSpec("domains-keep-serving"),
    CheckSpec("leaks-found-and-released", within=200),
    CheckSpec("apps-serve-again", within=200),
    CheckSpec("max-reloads", limit=50),
)


def small_region(seed: int = 7, faults=(), **extra) -> RegionSpec:
    cells = tuple(CellSpec(f"cell-{c}", 5, (PoolSpec(f"pool-{c}", f"10.{c}.0.0/22", vlan=100 + c),), racks=2)
                  for c in (1, 2))
    apps = (AppSpec("shop", ("cell-1", "cell-2"), 3, "public", requests_per_second=50),
            AppSpec("blog", ("cell-1", "cell-2"), 2, "public", requests_per_second=20),
            AppSpec("api", ("cell-1",), 2, "public", requests_per_second=30))
    return RegionSpec("test", seed, 600.0, cells, (GroupSpec("public", 2),), apps, faults=faults, checks=CHECKS,
                      leak_check_every=30, leak_grace=30, **extra)


HOST_CRASH = FaultSpec("host-crash", at=120, target=Selector(labels=(("cell", "cell-1"),), count=2))


@pytest.fixture(scope="module")
def crashed():
    return run_region(small_region(faults=(HOST_CRASH,)))


def test_host_crash_leaks_addresses_that_cnictl_finds_and_releases(crashed):
    report, region = crashed
    checks = {c["name"]: c for c in report["checks"]}
    assert report["counts"]["pods_died"] > 0
    assert report["metrics"]["leaked_max"] > 0  # the crash leaked addresses ...
    assert report["metrics"]["leaks_released"] >= report["metrics"]["leaked_max"]  # ... cnictl released them
    assert region.leaked() == 0
    assert checks["leaks-found-and-released"]["passed"], checks["leaks-found-and-released"]
    assert checks["no-duplicate-address"]["passed"], checks["no-duplicate-address"]
    assert checks["apps-serve-again"]["passed"], checks["apps-serve-again"]
    assert checks["domains-keep-serving"]["passed"], checks["domains-keep-serving"]
    assert report["passed"]
    # Every app runs its replicas again, each pod on its own address.
    alive = [p for pods in region.kube.pods.values() for p in pods if p.alive and p.ready]
    assert len(alive) == 3 * 2 + 2 * 2 + 2
    assert len({p.ip for p in alive}) == len(alive)
    assert report["metrics"]["requests_ok"] > 0 and report["metrics"]["allocations"] >= len(alive)
    assert [s["t"] for s in report["series"]][:2] == [10.0, 20.0]


def test_same_seed_same_trace_other_seed_other_trace(crashed):
    again, _ = run_region(small_region(faults=(HOST_CRASH,)))
    assert again["trace_sha256"] == crashed[0]["trace_sha256"]
    assert again["metrics"] == crashed[0]["metrics"]
    other, _ = run_region(small_region(seed=8, faults=(HOST_CRASH,)))
    assert other["trace_sha256"] != crashed[0]["trace_sha256"]


def test_apps_keep_serving_from_the_other_cell_during_a_cell_outage():
    outage = FaultSpec("cell-outage", at=100, duration=120, target=Selector(names=("cell-1",)))
    spec = replace(small_region(faults=(outage,)), duration=400.0,
                   checks=(CheckSpec("domains-keep-serving"), CheckSpec("apps-serve-again", within=60)))
    report, _ = run_region(spec)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["domains-keep-serving"]["passed"], checks["domains-keep-serving"]
    assert checks["apps-serve-again"]["passed"], checks["apps-serve-again"]
    during = [s for s in report["series"] if 110 <= s["t"] <= 220]
    # shop and blog (both Cells) keep serving; api lives in cell-1 only and fails while it is dark.
    assert all(s["ok"] >= 10 * (50 + 20) for s in during)
    assert all(s["failed"] == 10 * 30 for s in during)
    assert not any(s["failed"] for s in report["series"] if s["t"] >= 240)


@dataclass
class _NoBlockCas:
    """A Store that drops every compare on IPAM blocks: the bug the safety check must catch."""

    inner: object

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def txn(self, compares: list[Compare], success, failure=None):
        kept = [c for c in compares if not c.key.startswith(BLOCKS)]
        return await self.inner.txn(kept, success, failure)


class NoCasIpam(Ipam):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.store = _NoBlockCas(self.store)


def test_the_duplicate_address_check_catches_an_ipam_without_compare_and_swap():
    # Tiny pools (4 blocks of 16 for 5 nodes): nodes claim the same blocks, and without CAS overwrite each other.
    cells = tuple(CellSpec(f"cell-{c}", 5, (PoolSpec(f"pool-{c}", f"10.{c}.0.0/26", vlan=100 + c),))
                  for c in (1, 2))
    spec = replace(small_region(), cells=cells, duration=120.0, checks=(CheckSpec("no-duplicate-address"),))
    good, _ = run_region(spec)
    assert good["checks"][0]["passed"], good["checks"][0]
    broken, region = run_region(spec, ipam_factory=lambda store, rt, node, cooldown: NoCasIpam(store, rt, node,
                                                                                                cooldown=cooldown))
    check = broken["checks"][0]
    assert check["name"] == "no-duplicate-address" and not check["passed"]
    assert "duplicate" in check["detail"] and region.auditor.violations


def test_every_fault_kind_runs_and_the_region_recovers():
    faults = (
        FaultSpec("runtime-death", at=60, duration=30, target=Selector(count=2)),
        FaultSpec("etcd-slow", at=100, duration=30, factor=50),
        FaultSpec("etcd-unavailable", at=140, duration=20),
        FaultSpec("etcd-unavailable", at=170, duration=20, target=Selector(labels=(("cell", "cell-2"),))),
        FaultSpec("reload-storm", at=200, duration=20, changes=40, group="public"),
        FaultSpec("nginx-host-loss", at=230, duration=30, target=Selector(count=1), group="public"),
        FaultSpec("pool-exhaustion", at=270, duration=60, pool="pool-1", free=0),
        FaultSpec("host-crash", at=280, target=Selector(labels=(("cell", "cell-1"),), count=2)),  # needs pool-1
        FaultSpec("host-crash", at=300, duration=50, every=250, target=Selector(percent=10)),
    )
    spec = replace(small_region(faults=faults), duration=1040.0,
                   checks=(CheckSpec("no-duplicate-address"), CheckSpec("leaks-found-and-released", within=150),
                           CheckSpec("apps-serve-again", within=150), CheckSpec("max-reloads", limit=10)))
    report, _ = run_region(spec)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["no-duplicate-address"]["passed"]
    assert checks["leaks-found-and-released"]["passed"], checks["leaks-found-and-released"]
    assert checks["apps-serve-again"]["passed"], checks["apps-serve-again"]
    assert not checks["max-reloads"]["passed"]  # the storm made every host reload (spaced: ~1 per second)
    m = report["metrics"]
    assert m["reloads_max_per_host"] >= 15 and m["requests_failed_by_reloads"] > 0
    assert max(s["pool_use"]["pool-1"] for s in report["series"]) == 100.0  # the squatter took the pool ...
    assert m["add_errors"] > 0 and m["pool_use"]["pool-1"] < 5  # ... pods waited, and it was given back
    assert m["leaks_released"] > 0 and m["leaked_now"] == 0
    assert report["counts"]["faults"] == 11  # the host crash repeats every 250 s: 300, 550, 800


def test_churn_replaces_and_scales_pods_without_leaks_or_duplicates():
    churn = ChurnSpec(deploys_per_hour=40, scale_events_per_hour=60)
    spec = replace(small_region(seed=11), duration=900.0, churn=churn,
                   checks=(CheckSpec("no-duplicate-address"), CheckSpec("domains-keep-serving")))
    started = time.perf_counter()
    report, region = run_region(spec)
    assert time.perf_counter() - started < 10.0
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["no-duplicate-address"]["passed"], checks["no-duplicate-address"]
    assert checks["domains-keep-serving"]["passed"], checks["domains-keep-serving"]
    counts, m = report["counts"], report["metrics"]
    base = 3 * 2 + 2 * 2 + 2
    # Deploys replaced pods (drain + CNI DEL + removal) and scale events changed replica counts.
    assert counts["pods_deleted"] >= 10 and counts["pods_started"] >= base + counts["pods_deleted"] - 5
    assert region.kube.replicas != {k: region.apps[k[0]].replicas for k in region.kube.replicas}
    # Every deleted pod's address went back: the Store holds exactly the live pods' handles.
    live = {(p.app, p.name): p.ip for pods in region.kube.pods.values() for p in pods if p.alive and p.in_api and p.ip}
    assert set(region.auditor.handle_pod.values()) == set(live)
    assert len(set(live.values())) == len(live)  # no address given twice
    assert region.leaked() == 0 and m["leaked_max"] == 0 and m["leaks_found"] == 0
    # Apps kept serving: no failed requests once the apps were up, and every app serves at the end.
    assert m["requests_failed"] == 0 and m["requests_ok"] > 0
    assert not region.traffic.not_serving_now()
    assert sum(len(pods) for pods in region.kube.pods.values()) == sum(region.kube.replicas.values())


def test_overlapping_faults_on_one_etcd_client_end_one_by_one():
    """A cell outage and an etcd fault on one node: the client reconnects when the last one ends."""
    client = MemoryStore(SimRuntime(seed=1)).client("c1-n001")
    client.partition()  # a cell outage ...
    client.partition()  # ... and an etcd-unavailable fault on the same node
    client.heal()  # the outage ends first
    assert client.partitioned  # still cut off: the other fault is in force
    client.heal()
    assert not client.partitioned
    client.heal()  # one heal too many changes nothing
    assert not client.partitioned
    client.slow_down(10.0)
    client.slow_down(3.0)
    client.speed_up(10.0)
    assert client.slowness == 3.0
    client.speed_up(3.0)
    assert client.slowness == 1.0


def test_a_reload_storm_changes_only_the_apps_its_target_selects():
    storm = FaultSpec("reload-storm", at=100, duration=20, changes=10, group="public",
                      target=Selector(names=("blog",)))
    _, region = run_region(replace(small_region(faults=(storm,)), duration=300.0, checks=()))
    for host in region.hosts.values():
        headers = {domain: dict(d.locations[0].set_headers) for domain, d in host.proxy.live.items()}
        assert headers["blog.example.com"] == {"X-Sim-Storm": "10"}, host.name  # the last of the 10 changes
        assert headers["shop.example.com"] == {} and headers["api.example.com"] == {}


@pytest.mark.parametrize("latency", [0.002, 0.05])
def test_a_reload_storm_keeps_its_declared_schedule_whatever_the_store_costs(latency):
    """Change i starts at i x gap (up to 16 in flight), as the lab's storm: a slower store must not stretch it
    (one after the other, 40 changes of 4-5 round trips at 50 ms ended ~8 s late, and hosts reloaded more)."""
    storm = FaultSpec("reload-storm", at=100, duration=20, changes=40, group="public", target=Selector(names=("blog",)))
    region = Region(replace(small_region(faults=(storm,), etcd_latency=latency), duration=300.0, checks=()),
                    SimRuntime(seed=3))
    region.boot()
    region.run_until(100 + 20 + 0.5)  # the last change starts at 100 + 39 x 0.5 s = 119.5 s
    record = region.runtime.run_until_complete(region.slb.get_domain(ADMIN, "public", "blog.example.com"))
    assert dict(record.domain.locations[0].set_headers) == {"X-Sim-Storm": "40"}


def test_a_reload_storm_whose_changes_outlast_16_gaps_has_16_in_flight_at_most():
    """0.1 s apart, each change of several 1 s round trips: the 17th waits for a free slot, and every one ends."""
    storm = FaultSpec("reload-storm", at=100, duration=4, changes=40, group="public", target=Selector(names=("blog",)))
    region = Region(replace(small_region(faults=(storm,), etcd_latency=1.0), duration=300.0, checks=()),
                    SimRuntime(seed=3))
    region.boot()
    # A storm change: ADMIN's get_domain, then its put_domain of a storm header (discovery reads domains too).
    changes = {"in_flight": 0, "most": 0, "ended": 0}
    get_domain, put_domain = region.slb.get_domain, region.slb.put_domain

    def ended() -> None:
        changes["in_flight"] -= 1
        changes["ended"] += 1

    async def counted_get(who, *args, **kwargs):
        if who is not ADMIN:
            return await get_domain(who, *args, **kwargs)
        changes["in_flight"] += 1
        changes["most"] = max(changes["most"], changes["in_flight"])
        try:
            return await get_domain(who, *args, **kwargs)
        except Exception:
            ended()
            raise

    async def counted_put(who, data, *args, **kwargs):
        try:
            return await put_domain(who, data, *args, **kwargs)
        finally:
            if "X-Sim-Storm" in str(data.get("locations")):
                ended()

    region.slb.get_domain, region.slb.put_domain = counted_get, counted_put
    region.run_until(200)
    # 16 at once on one domain: some lose their compare-and-swap to another (skipped, as in the lab); all end.
    assert changes == {"in_flight": 0, "most": 16, "ended": 40}


def test_etcd_faults_select_nginx_hosts_and_control_clients_by_role():
    cut = FaultSpec("etcd-unavailable", at=100, duration=50, target=Selector(labels=(("role", "nginx"),)))
    slow = FaultSpec("etcd-slow", at=100, duration=50, factor=20, target=Selector(names=("discovery",)))
    region = Region(replace(small_region(faults=(cut, slow)), duration=400.0), SimRuntime(seed=3))
    region.boot()
    region.run_until(120)
    partitioned = {name for name, client in region.clients.items() if client.partitioned}
    assert partitioned == {"public-nginx-1", "public-nginx-2"}
    assert {name for name, c in region.clients.items() if c.slowness > 1} == {"discovery"}
    region.run_until(400)
    assert not any(c.partitioned or c.slowness > 1 for c in region.clients.values())
    checks = {c.name: c.passed for c in region.checks()}
    # Agents cut off from etcd keep serving what they had, and catch up when it comes back.
    assert checks["domains-keep-serving"] and checks["apps-serve-again"], region.checks()


def test_a_leak_freed_behind_cnictls_back_fails_the_leak_check():
    """The check asks that cnictl released the leaks, not merely that they are gone."""
    region = Region(small_region(faults=(HOST_CRASH,)), SimRuntime(seed=7))
    region.boot()
    region.run_until(125)  # crashed at 120; cnictl's grace keeps it from releasing before 150
    victim = next(p for pods in region.kube.pods.values() for p in pods if not p.alive and p.ip)
    rogue = Ipam(region.client("rogue"), region.runtime, victim.node.name)  # e.g. an agent wiping handles
    region.runtime.spawn(rogue.release(victim.container_id, "eth0"), name="rogue")
    region.run_until(region.spec.duration)
    verdict = {c.name: (c.passed, c.detail) for c in region.checks()}["leaks-found-and-released"]
    assert not verdict[0] and f"1 freed by something else: {victim.ip}" in verdict[1], verdict


def test_an_app_no_nginx_host_will_serve_violates_domains_keep_serving():
    """An app whose domain never goes live is never published; its ready pods still make it a violation."""
    region = Region(replace(small_region(), duration=120.0), SimRuntime(seed=7))
    for host in region.hosts.values():
        host.proxy.rejects = lambda d: "port 80 in use" if d.name == "blog.example.com" else None
    region.run()
    verdict = {c.name: (c.passed, c.detail) for c in region.checks()}["domains-keep-serving"]
    assert not verdict[0] and "no host serves blog.example.com while a ready pod exists" in verdict[1], verdict
    assert region.traffic.published == {"shop", "api"}


def farm_region(seed: int, crash: FaultSpec, duration: float = 1500.0) -> RegionSpec:
    return replace(small_region(seed=seed), duration=duration, build_hosts=3, faults=(crash,),
                   churn=ChurnSpec(deploys_per_hour=60),
                   checks=(CheckSpec("no-duplicate-address"), CheckSpec("domains-keep-serving"),
                           CheckSpec("builds-finish", within=900), CheckSpec("apps-serve-again", within=900)))


def test_deploys_build_on_the_farm_and_builds_move_off_crashed_build_hosts():
    crash = FaultSpec("builder-crash", at=200, duration=100, target=Selector(count=2))
    # Seed 3: the 2 hosts drawn (from the fault-target stream) hold builds in flight at t=200; with
    # seed 2 they were idle (0 moved, every check passing): the draw, not the farm, decides that.
    report, region = run_region(farm_region(3, crash))
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in checks.values()), checks
    m = report["metrics"]
    assert m["builds_moved"] >= 1  # a build host died mid-build: its task went to the next host of the repo
    assert m["builds_submitted"] > 0 and m["builds_failed"] == 0
    # Every build had finished unless it was submitted in the last few minutes of the run.
    assert not [t for t, b in region.farm.builds.items() if b.finished is None and b.submitted < 1500 - 600]
    assert 0 < m["builds_cache_hits"] < m["builds_done"]  # warm where the repo was built before
    # Rolled-out pods run the images the farm pushed; the registry holds each one.
    images = {p.image for pods in region.kube.pods.values() for p in pods if p.alive and p.image}
    assert images and images <= set(region.farm.registry.images)
    assert any(node.images for node in region.nodes.values())  # nodes pulled them


def test_builds_that_never_finish_fail_the_builds_finish_check():
    crash = FaultSpec("builder-crash", at=60, target=Selector())  # every build host, for good
    spec = replace(small_region(seed=2), duration=600.0, build_hosts=3, faults=(crash,),
                   checks=(CheckSpec("builds-finish", within=300),))
    region = Region(spec, SimRuntime(seed=2))
    region.boot()
    region.run_until(50)
    region.runtime.spawn(region.farm.release("shop"), name="deploy")  # compiling when the farm dies
    region.run_until(600)
    [verdict] = region.checks()
    passed, detail = verdict.passed, verdict.detail
    from sim.farm import release_commit  # release 1 of shop, as a full commit id

    assert not passed and "0 of 1 build(s)" in detail and f"unfinished: shop@{release_commit('shop', 1)}" in detail, \
        detail


def test_settled_apps_really_serve_on_every_live_host_at_every_instant():
    """The event-driven request accounting trusts that every change touches its apps: check it, fresh."""
    faults = (
        FaultSpec("host-crash", at=60, duration=50, every=200, target=Selector(count=2)),
        FaultSpec("runtime-death", at=90, duration=30, target=Selector(count=2)),
        FaultSpec("cell-outage", at=150, duration=40, target=Selector(names=("cell-1",))),  # api only runs there
        FaultSpec("nginx-host-loss", at=250, duration=30, target=Selector(count=1), group="public"),
        FaultSpec("reload-storm", at=300, duration=20, changes=30, group="public"),
        FaultSpec("etcd-unavailable", at=350, duration=20, target=Selector(labels=(("role", "nginx"),))),
    )
    spec = replace(small_region(seed=5, faults=faults), duration=700.0,
                   churn=ChurnSpec(deploys_per_hour=60, scale_events_per_hour=60))
    region = Region(spec, SimRuntime(seed=5))
    wrong, looked = [], [0]

    async def inspector():
        while True:
            await region.runtime.sleep(0.25)
            for app in sorted(region.traffic.settled):
                domain = region.domains[app]
                for host in region.traffic.live_hosts(region.apps[app].group):
                    looked[0] += 1
                    pods = [region.kube.pod_by_ip.get(u.host) for u in host.proxy.serving(domain)]
                    if not any(region.traffic.good(p) and p.app == app for p in pods):
                        wrong.append(f"t={region.runtime.now():g} {app} settled but not served by {host.name}")

    region.runtime.spawn(inspector(), name="inspector")
    region.run()
    assert looked[0] > 1000 and not wrong, wrong[:5]
