"""The agents' metrics, recorded through the Metrics port into the sim adapter: values equal what each test did.

Each test drives the real agent code on sim adapters (as test_cni_agent, test_slb_agent,
test_discovery and test_build_farm do) with a ``SimMetrics`` and reads the current value
of the series a scrape would see. The last test checks the promise that makes metrics
safe in the simulator: recording adds no trace line, no Store write and no runtime event,
so a run with metrics has the trace hash of the same run without them.
"""

from __future__ import annotations

import pytest

from cni import admin
from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import Pool
from cni.request import CniError, CniRequest
from control.auth import Principal
from control.builds import BuildScheduler
from control.discovery import Binding, Discovery
from control.slb_core import SlbCore
from foundation.logic.build_task import rank_hosts
from foundation.logic.slb_domain import Domain, Upstream
from foundation.ports.cluster import Endpoints, PodInfo
from foundation.ports.metrics import (
    BUILD_CACHE_HITS,
    BUILD_RESULTS,
    BUILD_STEP_SECONDS,
    BUILD_TASKS_MOVED,
    BUILD_TASKS_QUEUED,
    BUILD_TASKS_RUNNING,
    CNI_REQUEST_SECONDS,
    CNI_REQUESTS,
    DISCOVERY_CELLS_UNREACHABLE,
    DISCOVERY_DOMAINS_WITHOUT_UPSTREAM,
    DISCOVERY_DRAIN_SECONDS,
    DISCOVERY_DRAINS,
    DISCOVERY_PUSHES,
    ETCD_ERRORS,
    IPAM_ALLOCATION_SECONDS,
    IPAM_ALLOCATIONS_IN_USE,
    IPAM_BLOCKS,
    IPAM_CAS_CONFLICTS,
    IPAM_GC_CANDIDATES,
    IPAM_GC_RECLAMATIONS,
    IPAM_IPPOOL_SIZE,
    IPAM_LEAKS_CERTAIN,
    NO_METRICS,
    SLB_DOMAINS_SET_ASIDE,
    SLB_LAST_RELOAD_SUCCESSFUL,
    SLB_LAST_RELOAD_TIMESTAMP,
    SLB_PROPAGATION_SECONDS,
    SLB_RELOAD_SECONDS,
    SLB_RELOADS,
    SLB_UPSTREAM_UPDATES,
    MetricDef,
)
from node.build_agent import BuildAgent, BuildAgentConfig
from node.cni_agent import CniAgent, NodeConfig
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.builder import SimBuilder, SimRegistry
from sim.adapters.cluster import SimCluster
from sim.adapters.control import SimControlClient
from sim.adapters.dataplane import SimDataplane
from sim.adapters.metrics import SimMetrics
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

POOL = Pool.parse("cell1-a", "10.20.0.0/22", vlan=100, gateway="10.20.0.1")
NET = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int", "pools": ["cell1-a"]}
GROUP = "public"
ADMIN = Principal("ops", "admin")


def value(m: SimMetrics, metric: MetricDef, suffix: str = "", **labels: str) -> float | None:
    """The current value of one sample (``suffix``: ``_count``/``_sum`` of a histogram)."""
    return m.value(metric.name + suffix, labels)


# ---------------------------------------------------------------------------- IPAM and the CNI agent


class Node:
    """One node's CNI agent on the sim adapters, recording into ``metrics``."""

    def __init__(self, metrics=None, seed: int = 1) -> None:
        self.rt = SimRuntime(seed=seed)
        self.metrics = SimMetrics(self.rt) if metrics is None else metrics
        self.server = MemoryStore(self.rt)
        self.cnictl = self.server.client("cnictl")
        self.rt.run_until_complete(add_pool(self.cnictl, POOL))
        self.client = self.server.client("node-1", latency=0.001, timeout=1.0)
        self.dataplane = SimDataplane("node-1")
        self.ipam = Ipam(self.client, self.rt, "node-1", metrics=self.metrics)
        self.agent = CniAgent(self.ipam, self.dataplane, self.rt, NodeConfig("node-1"), metrics=self.metrics)
        self.rt.run_until_complete(self.agent.start())

    def request(self, command: str, container: str, **kw) -> CniRequest:
        netns = kw.pop("netns", f"/var/run/netns/{container}")
        return CniRequest(command, "1.0.0", kw.pop("network", NET), container, netns, "eth0",
                          args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": f"web-{container}"}, **kw)

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    def add(self, container: str) -> dict:
        self.dataplane.add_netns(f"/var/run/netns/{container}")
        return self.run(self.agent.add(self.request("ADD", container)))

    def requests(self, command: str, code: int) -> float | None:
        return value(self.metrics, CNI_REQUESTS, node="node-1", command=command, code=str(code))


def test_n_adds_and_dels_are_counted_timed_and_the_ipam_gauges_follow():
    node = Node()
    for i in range(5):
        node.add(f"c{i}")
    m = node.metrics
    assert node.requests("ADD", 0) == 5
    assert value(m, CNI_REQUEST_SECONDS, "_count", node="node-1", command="ADD", code="0") == 5
    assert value(m, CNI_REQUEST_SECONDS, "_sum", node="node-1", command="ADD", code="0") > 0  # etcd round trips
    assert value(m, IPAM_ALLOCATION_SECONDS, "_count", node="node-1") == 5
    assert value(m, IPAM_ALLOCATIONS_IN_USE, pool="cell1-a", node="node-1") == 5
    assert value(m, IPAM_BLOCKS, pool="cell1-a", node="node-1") == 1  # 14 usable addresses in a block of 16
    assert value(m, IPAM_IPPOOL_SIZE, pool="cell1-a") == POOL.capacity()

    for i in range(2):
        node.run(node.agent.delete(node.request("DEL", f"c{i}")))
    node.run(node.agent.delete(node.request("DEL", "c0")))  # again: idempotent, still a success
    assert node.requests("DEL", 0) == 3
    assert value(m, IPAM_ALLOCATIONS_IN_USE, pool="cell1-a", node="node-1") == 3
    assert value(m, IPAM_BLOCKS, pool="cell1-a", node="node-1") == 1
    assert value(m, IPAM_ALLOCATION_SECONDS, "_count", node="node-1") == 5  # releases are not allocations


def test_errors_are_counted_by_the_code_answered_and_gc_dels_are_not_commands():
    node = Node()
    node.add("keep")
    node.add("gone")
    with pytest.raises(CniError) as bad_netns:
        node.run(node.agent.add(node.request("ADD", "ghost")))  # its netns does not exist
    with pytest.raises(CniError) as no_prev:
        node.run(node.agent.check(node.request("CHECK", "keep")))  # CHECK needs prevResult
    node.run(node.agent.status(node.request("STATUS", "", netns="")))
    node.run(node.agent.gc(node.request("GC", "", netns="", valid_attachments=(("keep", "eth0"),))))
    assert (bad_netns.value.code, no_prev.value.code) == (4, 7)
    assert node.requests("ADD", 0) == 2 and node.requests("ADD", 4) == 1
    assert node.requests("CHECK", 7) == 1
    assert node.requests("STATUS", 0) == 1 and node.requests("GC", 0) == 1
    assert node.requests("DEL", 0) is None  # GC released "gone" itself: no DEL came from the runtime
    assert value(node.metrics, IPAM_ALLOCATIONS_IN_USE, pool="cell1-a", node="node-1") == 1


def test_etcd_out_of_reach_is_code_11_and_an_etcd_error_of_the_cni_agent():
    node = Node()
    node.dataplane.add_netns("/var/run/netns/c1")
    node.client.partition()
    with pytest.raises(CniError) as err:
        node.run(node.agent.add(node.request("ADD", "c1")))
    assert err.value.code == 11
    assert node.requests("ADD", 11) == 1
    assert value(node.metrics, ETCD_ERRORS, component="cni-agent") == 1
    assert value(node.metrics, IPAM_ALLOCATION_SECONDS, "_count", node="node-1") is None  # no success to time


def test_a_lost_compare_and_swap_is_counted():
    node = Node()
    # A second IPAM of the node (a restarted agent whose cache went stale): its block's revision moves.
    stale = Ipam(node.server.client("node-1b", latency=0.001), node.rt, "node-1", metrics=node.metrics)
    node.add("first")
    node.run(stale.load())
    node.add("second")  # the block's mod_revision moves under the stale cache
    node.run(stale.allocate("third", "eth0", pools=["cell1-a"]))
    assert stale.stats.conflicts >= 1
    assert value(node.metrics, IPAM_CAS_CONFLICTS, node="node-1") == stale.stats.conflicts + node.ipam.stats.conflicts


# ---------------------------------------------------------------------------- cnictl


def test_cnictl_sets_suspects_then_certain_leaks_and_counts_reclamations():
    node = Node()
    cluster = SimCluster("cell1")
    cluster.add_node("node-1")
    for i in range(3):
        ip = node.add(f"c{i}")["ips"][0]["address"].split("/")[0]
        if i == 0:  # only the first pod is still alive; the others died without a DEL
            cluster.put_pod(PodInfo("shop", f"web-c{i}", "", "node-1", ip))
    m = node.metrics

    async def main():
        usage = await admin.pool_usage(node.cnictl, metrics=m)
        first = await admin.check_leaks(node.cnictl, cluster, node.rt, grace=30, metrics=m)
        suspects = (value(m, IPAM_GC_CANDIDATES, pool="cell1-a"), value(m, IPAM_LEAKS_CERTAIN, pool="cell1-a"))
        await node.rt.sleep(31)
        second = await admin.check_leaks(node.cnictl, cluster, node.rt, grace=30, metrics=m)
        certain = (value(m, IPAM_GC_CANDIDATES, pool="cell1-a"), value(m, IPAM_LEAKS_CERTAIN, pool="cell1-a"))
        released, _ = await admin.release_certain(node.cnictl, node.rt, metrics=m)
        third = await admin.check_leaks(node.cnictl, cluster, node.rt, grace=30, metrics=m)
        return usage, first, suspects, second, certain, released, third

    usage, first, suspects, second, certain, released, third = node.run(main())
    assert value(m, IPAM_IPPOOL_SIZE, pool="cell1-a") == usage[0].capacity
    assert len(first.leaks) == 2 and suspects == (2, 0)
    assert len(second.certain) == 2 and certain == (0, 2)
    assert len(released) == 2 and value(m, IPAM_GC_RECLAMATIONS, pool="cell1-a") == 2
    assert third.leaks == ()
    assert (value(m, IPAM_GC_CANDIDATES, pool="cell1-a"), value(m, IPAM_LEAKS_CERTAIN, pool="cell1-a")) == (0, 0)


# ---------------------------------------------------------------------------- the SLB agent


def domain(name: str, *servers: str, **extra) -> Domain:
    return Domain.parse({"name": name, "group": GROUP, "owner": "shop", "upstreams": list(servers), **extra})


class Slb:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=1)
        self.metrics = SimMetrics(self.rt)
        self.server = MemoryStore(self.rt)
        self.admin = self.server.client("slb-core", latency=0.001)
        self.proxy = SimProxy(self.rt, "nginx-1")
        pool = Pool.parse("pods", "10.0.0.0/16", vlan=100, gateway="10.0.255.254")
        self.rt.run_until_complete(self.admin.put(pool.key, pool.to_bytes()))
        self.agent: SlbAgent | None = None

    def start(self, **config) -> SlbAgent:
        self.agent = SlbAgent(self.server.client("nginx-1", latency=0.001), self.proxy, self.rt,
                              SlbAgentConfig(GROUP, "nginx-1", **config), metrics=self.metrics)
        self.rt.spawn(self.agent.run(), name="slb-agent")
        return self.agent

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    async def put(self, d: Domain) -> int:
        return (await self.admin.put(d.key, d.to_bytes())).revision

    def get(self, metric: MetricDef, suffix: str = "", **labels: str) -> float | None:
        return value(self.metrics, metric, suffix, group=GROUP, host="nginx-1", **labels)


def test_slb_reloads_in_place_updates_and_propagation_are_recorded():
    slb = Slb()
    reload_times = []

    async def main():
        for i in range(3):
            await slb.put(domain(f"app{i}.example.com", f"10.0.0.{i + 1}:80"))
        slb.start()
        await slb.rt.sleep(1)
        reload_times.append(slb.proxy.generations[-1].started)
        for i in range(5):  # upstream-only changes: in place
            await slb.put(domain("app0.example.com", f"10.0.1.{i + 1}:80"))
            await slb.rt.sleep(0.1)
        await slb.put(domain("new.example.com", "10.0.0.9:80"))  # a new domain: batched, one reload
        await slb.rt.sleep(2)
        reload_times.append(slb.proxy.generations[-1].started)

    slb.run(main())
    assert slb.proxy.reload_count == 2
    assert slb.get(SLB_RELOADS, result="success") == 2 and slb.get(SLB_RELOADS, result="failure") is None
    assert slb.get(SLB_RELOAD_SECONDS, "_count") == 2
    assert slb.get(SLB_LAST_RELOAD_SUCCESSFUL) == 1
    assert slb.get(SLB_LAST_RELOAD_TIMESTAMP) == pytest.approx(slb.rt.wall_time() - slb.rt.now() + reload_times[-1])
    assert slb.get(SLB_UPSTREAM_UPDATES) == 5 == slb.agent.stats.in_place
    assert slb.get(SLB_DOMAINS_SET_ASIDE) == 0
    # 3 domains applied by the start-up resync, 5 in place, 1 batched: each revision in force once.
    assert slb.get(SLB_PROPAGATION_SECONDS, "_count") == 9
    # The batched one waited at least the debounce; in-place ones take one upstream update (0.6 ms).
    in_place_bucket = slb.metrics.value(SLB_PROPAGATION_SECONDS.name + "_bucket",
                                        {"group": GROUP, "host": "nginx-1", "le": "0.001"})
    assert in_place_bucket == 5
    assert slb.get(SLB_PROPAGATION_SECONDS, "_sum") > SlbAgentConfig(GROUP, "x").debounce


def test_a_failed_reload_sets_last_reload_successful_to_0_until_a_retry_succeeds():
    slb = Slb()
    seen = {}

    async def main():
        await slb.put(domain("a.example.com", "10.0.0.1:80"))
        slb.start(retry=2.0)
        await slb.rt.sleep(1)
        stamp = slb.get(SLB_LAST_RELOAD_TIMESTAMP)
        slb.proxy.fail_next_reload = True
        await slb.put(domain("a.example.com", "10.0.0.1:80", listen=8080))
        await slb.rt.sleep(1)
        seen["during"] = (slb.get(SLB_LAST_RELOAD_SUCCESSFUL), slb.get(SLB_RELOADS, result="failure"),
                          slb.get(SLB_LAST_RELOAD_TIMESTAMP) == stamp)
        await slb.rt.sleep(3)

    slb.run(main())
    assert seen["during"] == (0, 1, True)  # failed, counted; the timestamp is the last *successful* one's
    assert slb.get(SLB_LAST_RELOAD_SUCCESSFUL) == 1
    assert slb.get(SLB_RELOADS, result="success") == 2 and slb.get(SLB_RELOADS, result="failure") == 1
    assert slb.get(SLB_RELOAD_SECONDS, "_count") == 3


def test_domains_set_aside_are_a_gauge():
    slb = Slb()
    slb.proxy.rejects = lambda d: "bind() to 0.0.0.0:8443 failed (98: Address in use)" if d.listen == 8443 else None
    seen = []

    async def main():
        slb.start()
        await slb.rt.sleep(1)
        await slb.put(domain("bad.example.com", "10.0.0.1:80", listen=8443))
        await slb.put(domain("worse.example.com", "10.0.0.1:80", listen=8443))
        await slb.put(domain("ok.example.com", "10.0.0.2:80"))
        await slb.rt.sleep(2)
        seen.append(slb.get(SLB_DOMAINS_SET_ASIDE))
        await slb.put(domain("bad.example.com", "10.0.0.1:80"))  # fixed
        await slb.rt.sleep(2)
        seen.append(slb.get(SLB_DOMAINS_SET_ASIDE))

    slb.run(main())
    assert seen == [2, 1]
    assert "ok.example.com" in slb.proxy.live and "worse.example.com" not in slb.proxy.live


# ---------------------------------------------------------------------------- discovery


class Region:
    """Two Cells, two Nginx hosts, slb-core and discovery (as test_discovery.py), discovery recording."""

    def __init__(self, bindings: list[Binding] | None = None, create: tuple[str, ...] = ("shop.example.com",)) -> None:
        self.rt = rt = SimRuntime(seed=2)
        self.metrics = SimMetrics(rt)
        self.server = MemoryStore(rt)
        self.slb = SlbCore(self.server.client("control", latency=0.001), rt)
        self.cells = {name: SimCluster(name, rt) for name in ("cell-a", "cell-b")}
        self.proxies = {h: SimProxy(rt, h) for h in ("nginx-1", "nginx-2")}
        self.agents = {h: SlbAgent(self.server.client(h, latency=0.001), p, rt, SlbAgentConfig(GROUP, h))
                       for h, p in self.proxies.items()}
        self.bindings = bindings or [Binding("shop", "shop", 8080, GROUP, "shop.example.com")]
        self.create = create
        self.discovery = Discovery(self.cells, SimControlClient(self.slb), self.slb.store, rt, self.bindings,
                                   retry=0.5, metrics=self.metrics)
        self.tasks = {}

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    async def start(self) -> None:
        for name, cidr in (("cell-a", "10.1.0.0/16"), ("cell-b", "10.2.0.0/16")):
            pool = Pool.parse(name, cidr, vlan=100, gateway=cidr.replace("0.0/16", "255.254"))
            await self.slb.store.put(pool.key, pool.to_bytes())
        await self.slb.create_group(ADMIN, GROUP)
        for name in self.create:
            await self.slb.put_domain(ADMIN, {"name": name, "group": GROUP, "owner": "shop"})
        for host, agent in self.agents.items():
            self.tasks[host] = self.rt.spawn(agent.run(), name=host)
        self.tasks["discovery"] = self.rt.spawn(self.discovery.run(), name="discovery")
        await self.discovery.synced.wait()
        await self.rt.sleep(1)

    def get(self, metric: MetricDef, suffix: str = "", **labels: str) -> float | None:
        return value(self.metrics, metric, suffix, **labels)


def test_pushes_and_a_drain_are_counted_and_the_drain_timed():
    r = Region()

    async def main():
        r.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await r.start()
        return await r.discovery.drain_report("shop", "10.1.0.6")

    report = r.run(main())
    assert report.drained
    assert r.get(DISCOVERY_PUSHES, result="ok") == r.discovery.stats.pushes == 2  # the first push, the drain's
    assert r.get(DISCOVERY_DRAINS, result="drained") == 1 and r.get(DISCOVERY_DRAINS, result="failed") is None
    assert r.get(DISCOVERY_DRAIN_SECONDS, "_count") == 1
    assert r.get(DISCOVERY_DRAIN_SECONDS, "_sum") == pytest.approx(report.took) and report.took > 0
    assert r.get(DISCOVERY_DOMAINS_WITHOUT_UPSTREAM) == 0 and r.get(DISCOVERY_CELLS_UNREACHABLE) == 0


def test_a_drain_no_host_confirms_is_failed():
    r = Region()

    async def main():
        r.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await r.start()
        r.tasks["nginx-2"].cancel()  # never confirms
        await r.rt.sleep(0.1)
        return await r.discovery.drain("shop", "10.1.0.6", timeout=3)

    assert r.run(main()) is False
    assert r.get(DISCOVERY_DRAINS, result="failed") == 1
    assert r.get(DISCOVERY_DRAIN_SECONDS, "_sum") >= 3


def test_cells_out_of_reach_and_domains_without_upstream_are_gauges():
    blog = "blog.example.com"
    r = Region([Binding("shop", "shop", 8080, GROUP, "shop.example.com"), Binding("blog", "blog", 8080, GROUP, blog)])
    seen = {}

    async def main():
        r.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        r.cells["cell-b"].set_endpoints(Endpoints("blog", "blog", ready=("10.2.0.7",)))
        await r.start()  # blog's domain does not exist yet: its pushes fail
        seen["no domain"] = (r.get(DISCOVERY_DOMAINS_WITHOUT_UPSTREAM), r.get(DISCOVERY_PUSHES, result="NOT_FOUND"))
        await r.slb.put_domain(ADMIN, {"name": blog, "group": GROUP, "owner": "blog"})
        await r.rt.sleep(2 * r.discovery.resync)  # the retry pushes it
        seen["created"] = r.get(DISCOVERY_DOMAINS_WITHOUT_UPSTREAM)
        r.cells["cell-a"].cut_off()
        await r.rt.sleep(2)
        seen["cut off"] = r.get(DISCOVERY_CELLS_UNREACHABLE)
        r.cells["cell-a"].reconnect()
        await r.rt.sleep(2)
        seen["back"] = r.get(DISCOVERY_CELLS_UNREACHABLE)

    r.run(main())
    assert seen["no domain"][0] == 1 and seen["no domain"][1] >= 1
    assert seen["created"] == 0
    assert (seen["cut off"], seen["back"]) == (1, 0)
    assert r.proxies["nginx-1"].serving(blog) == (Upstream("10.2.0.7", 8080),)


# ---------------------------------------------------------------------------- builds

V1 = "1111111111111111111111111111111111111111"
V2 = "2222222222222222222222222222222222222222"
HOSTS = ("build-1", "build-2", "build-3")


class Farm:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=5)
        self.metrics = SimMetrics(self.rt)
        self.server = MemoryStore(self.rt)
        registry = SimRegistry()
        self.agents = {h: BuildAgent(self.server.client(h, latency=0.002), SimBuilder(self.rt, h, registry), self.rt,
                                     BuildAgentConfig(h, ttl=10), metrics=self.metrics) for h in HOSTS}
        self.tasks = {h: self.rt.spawn(a.run(), name=f"agent/{h}") for h, a in self.agents.items()}
        self.scheduler = BuildScheduler(self.server.client("control", latency=0.002), self.rt, every=2.0,
                                        metrics=self.metrics)
        self.rt.spawn(self.scheduler.reassign_forever(), name="reassign")

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=7200)

    def get(self, metric: MetricDef, suffix: str = "", **labels: str) -> float | None:
        return value(self.metrics, metric, suffix, **labels)


def test_builds_record_steps_cache_hits_results_and_the_schedulers_queue():
    farm = Farm()
    seen = {}

    async def main():
        await farm.rt.sleep(1)
        first = await farm.scheduler.submit("shop", V1)
        await farm.rt.sleep(5)  # the reassigner has read the task running
        seen["building"] = (farm.get(BUILD_TASKS_QUEUED), farm.get(BUILD_TASKS_RUNNING))
        one = await farm.scheduler.wait(first, timeout=3600)
        two = await farm.scheduler.wait(await farm.scheduler.submit("shop", V2), timeout=3600)
        await farm.rt.sleep(5)
        seen["idle"] = (farm.get(BUILD_TASKS_QUEUED), farm.get(BUILD_TASKS_RUNNING))
        return one, two

    one, two = farm.run(main())
    assert seen["building"] == (0, 1) and seen["idle"] == (0, 0)
    assert farm.get(BUILD_RESULTS, result="done") == 2 and farm.get(BUILD_RESULTS, result="failed") is None
    assert farm.get(BUILD_CACHE_HITS) == 1 and (one.cache_hit, two.cache_hit) == (False, True)
    for step in ("clone", "compile", "image", "push"):
        assert farm.get(BUILD_STEP_SECONDS, "_count", step=step) == 2
        assert farm.get(BUILD_STEP_SECONDS, "_sum", step=step) == pytest.approx(
            dict(one.steps)[step] + dict(two.steps)[step], abs=1e-5)
    assert farm.get(BUILD_TASKS_MOVED) == 0  # exists from the scheduler's start, so increase() sees a first move


def test_a_task_moved_off_a_dead_host_is_counted():
    farm = Farm()
    home = rank_hosts("shop", list(HOSTS))[0]

    async def main():
        await farm.rt.sleep(1)
        task = await farm.scheduler.submit("shop", V1)
        await farm.rt.sleep(30)
        farm.tasks[home].cancel()
        return await farm.scheduler.wait(task, timeout=3600)

    result = farm.run(main())
    assert result.attempt == 2
    assert farm.get(BUILD_TASKS_MOVED) == 1 == farm.scheduler.stats.moved
    assert farm.get(BUILD_RESULTS, result="done") == 1


# ---------------------------------------------------------------------------- metrics change nothing


def test_recording_metrics_adds_no_trace_line_store_write_or_runtime_event():
    """The same CNI, SLB and discovery runs with and without a sink: one trace hash, one end time."""

    def cni(metrics) -> tuple[str, int, float]:
        node = Node(metrics=metrics, seed=7)
        for i in range(20):
            node.add(f"c{i}")
        for i in range(0, 20, 3):
            node.run(node.agent.delete(node.request("DEL", f"c{i}")))
        return node.rt.trace_log.sha256, node.rt.trace_log.count, node.rt.now()

    assert cni(NO_METRICS) == cni(None)

    def discovery(with_metrics: bool) -> tuple[str, int, float]:
        r = Region()
        if not with_metrics:
            r.discovery.metrics = NO_METRICS
        for agent in r.agents.values():
            agent.metrics = r.metrics if with_metrics else NO_METRICS

        async def main():
            r.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
            await r.start()
            await r.discovery.drain("shop", "10.1.0.6")
            r.cells["cell-b"].cut_off()
            await r.rt.sleep(3)

        r.run(main())
        return r.rt.trace_log.sha256, r.rt.trace_log.count, r.rt.now()

    assert discovery(False) == discovery(True)
