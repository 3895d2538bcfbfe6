"""The pure parts of `leengine lab run`: fault selection and composition, placement, checks, report shape.

No root, no processes: the fault table runs against a recording fake of ``LabOps``, the
controller against a fake runtime on the asyncio loop, the checks over hand-made
observations, and the report is held against a simulated run's keys.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import pytest

from lab import checks as lab_checks
from lab.controller import Controller, LabPod, NodeState, Started, StartFailed, pick_node
from lab.faults import FAULTS, Schedule, select
from lab.load import Load, get
from lab.observe import Observations, duplicates, parse_ip_addr_json
from lab.report import SAMPLE_KINDS, LabTotals, lab_report
from sim import checks as sim_checks
from sim import faults as sim_faults
from sim.adapters.runtime import SimRuntime, seeded_stream
from sim.checks import Probe
from sim.runner import RunResult, build_report
from sim.scenario import Scenario, parse_scenario
from sim.spec import FAULT_KINDS, CheckSpec, FaultSpec, Selector
from sim.world import Region

SCENARIO = """
name: lab-unit
seed: 11
duration: 60
topology:
  cells:
    - {name: c1, nodes: 4, racks: 2, pools: [{name: c1-pool, cidr: 10.70.0.0/24, vlan: 170, block_size: 8}]}
    - {name: c2, nodes: 4, racks: 2, pools: [{name: c2-pool, cidr: 10.71.0.0/24, vlan: 171, block_size: 8}]}
  groups:
    - {name: web, hosts: 2}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 3, group: web, requests_per_second: 5}
    - {name: blog, cells: [c2], replicas: 2, group: web}
faults:
  - {kind: host-crash, at: 10, duration: 20, target: {labels: {cell: c1, rack: r2}}}
  - {kind: host-crash, at: 12, target: {percent: 30}}
  - {kind: cell-outage, at: 20, duration: 5, target: {names: [c2]}}
  - {kind: etcd-slow, at: 21, duration: 5, factor: 50, target: {labels: {role: nginx}}}
  - {kind: etcd-unavailable, at: 22, duration: 5}
  - {kind: nginx-host-loss, at: 23, duration: 5, group: web, target: {count: 1}}
  - {kind: pool-exhaustion, at: 24, duration: 5, pool: c1-pool, free: 4}
checks:
  - kind: no-duplicate-address
  - {kind: apps-serve-again, within: 10}
  - {kind: leaks-found-and-released, within: 100}
  - {kind: max-reloads, limit: 3}
"""


def spec():
    return parse_scenario(SCENARIO, "lab-unit.yaml")


# ------------------------------------------------------------------ fault selection


def test_every_fault_kind_has_a_lab_counterpart():
    assert set(FAULTS) == set(FAULT_KINDS) == set(sim_faults.FAULTS)
    assert set(lab_checks.CHECKS) == set(sim_checks.CHECKS)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_the_lab_picks_the_same_fault_targets_as_the_sim_for_the_same_seed(seed):
    """Both draw count/percent targets from the run's fault-target stream, in schedule order."""
    s = replace(spec(), seed=seed)
    region = Region(s, SimRuntime(seed))
    sim_picks = [sim_faults.select(region, fault) for fault in s.faults]
    rnd = seeded_stream(seed, "fault-targets")
    assert [select(s, fault, rnd) for fault in s.faults] == sim_picks
    # whatever else the Region draws in between from its main stream does not move the picks
    region = Region(s, SimRuntime(seed))
    region.runtime.random.random()
    assert [sim_faults.select(region, fault) for fault in s.faults] == sim_picks


def test_selection_by_labels_names_the_rack_and_needs_no_draw():
    s = spec()
    rnd = random.Random(5)
    state = rnd.getstate()
    assert select(s, s.faults[0], rnd) == ["c1-n002", "c1-n004"]
    assert rnd.getstate() == state  # by labels: nothing drawn, so the sim picks the same nodes whatever its state
    assert len(select(s, s.faults[1], rnd)) == 3  # 30 % of 8 nodes, rounded up


class FakeOps:
    """A recording LabOps: every primitive call is appended to ``calls``."""

    def __init__(self, spec):
        self.spec = spec
        self.calls: list[tuple[Any, ...]] = []
        self.dead: set[str] = set()
        self.lost: set[str] = set()

    def __getattr__(self, name):
        async def primitive(*args):
            self.calls.append((name, *args))
            return {"kill_pods_hard": ["p1"], "runtime_kill_all": ["p2"], "squat": "squatter-1",
                    "remove_dead_ports": 1, "storm_change": True}.get(name)
        return primitive

    def node_alive(self, node):
        return node not in self.dead

    def runtime_alive(self, node):
        return True

    def node_down(self, node, pods):
        self.dead.add(node)
        self.calls.append(("node_down", node, tuple(pods)))

    def node_up(self, node):
        self.dead.discard(node)
        self.calls.append(("node_up", node))

    def runtime_down(self, node, pods):
        self.calls.append(("runtime_down", node))

    def runtime_up(self, node):
        self.calls.append(("runtime_up", node))

    def cell_nodes(self, cell):
        return [f"{cell}-n001", f"{cell}-n002"]

    def cell_out(self, cell, out):
        self.calls.append(("cell_out", cell, out))

    def etcd_members(self):
        return ["etcd1", "etcd2", "etcd3"]

    def host_lost(self, host):
        return host in self.lost

    def clients_use_host(self, host, use):
        (self.lost.discard if use else self.lost.add)(host)
        self.calls.append(("clients_use_host", host, use))


def _apply_undo(kind_name: str, fault: FaultSpec) -> list[tuple[Any, ...]]:
    ops = FakeOps(spec())
    kind = FAULTS[kind_name]

    async def go():
        broken = await kind.apply(ops, fault, random.Random(1))
        ops.calls.append(("--undo--",))
        if kind.undo is not None:
            await kind.undo(ops, broken)

    asyncio.run(go())
    return ops.calls


def test_host_crash_kills_without_cni_del_and_return_restarts_and_marks_ready():
    calls = _apply_undo("host-crash", FaultSpec("host-crash", 1.0, 5.0, Selector(names=("c1-n001",))))
    assert calls == [("kill_node_processes", "c1-n001"), ("kill_pods_hard", "c1-n001"),
                     ("node_down", "c1-n001", ("p1",)), ("set_node_ready", "c1-n001", False), ("--undo--",),
                     ("remove_dead_ports", "c1-n001"), ("start_node_processes", "c1-n001"),
                     ("set_node_ready", "c1-n001", True), ("node_up", "c1-n001")]
    assert not any(c[0] == "stop_pod" for c in calls)  # no CNI DEL anywhere


def test_cell_outage_cuts_fabric_api_and_its_nodes_links_then_restores_all_three():
    calls = _apply_undo("cell-outage", FaultSpec("cell-outage", 1.0, 5.0, Selector(names=("c2",))))
    assert calls == [("cell_out", "c2", True), ("cut_fabric", "c2"), ("cut_api", "c2"),
                     ("set_links", ["c2-n001", "c2-n002"], "cut"), ("--undo--",),
                     ("set_links", ["c2-n001", "c2-n002"], "pass"), ("restore_api", "c2"), ("restore_fabric", "c2"),
                     ("cell_out", "c2", False)]


def test_etcd_faults_delay_or_cut_links_and_without_target_stop_two_members():
    slow = _apply_undo("etcd-slow", FaultSpec("etcd-slow", 1.0, 5.0, Selector(labels=(("role", "nginx"),)),
                                              factor=50))
    assert slow[0] == ("set_links", ["web-nginx-1", "web-nginx-2"], "delay", 50 * spec().etcd_latency)
    assert slow[-1] == ("set_links", ["web-nginx-1", "web-nginx-2"], "pass")
    down = _apply_undo("etcd-unavailable", FaultSpec("etcd-unavailable", 1.0, 5.0))
    assert down == [("stop_member", "etcd2"), ("stop_member", "etcd3"), ("--undo--",),
                    ("start_member", "etcd2"), ("start_member", "etcd3")]
    cut = _apply_undo("etcd-unavailable", FaultSpec("etcd-unavailable", 1.0, 5.0, Selector(names=("cnictl",))))
    assert cut == [("set_links", ["cnictl"], "cut"), ("--undo--",), ("set_links", ["cnictl"], "pass")]


def test_nginx_loss_takes_the_host_out_of_rotation_and_pool_exhaustion_gives_back_what_it_took():
    loss = _apply_undo("nginx-host-loss", FaultSpec("nginx-host-loss", 1.0, 5.0, Selector(names=("web-nginx-2",)),
                                                    group="web"))
    assert loss == [("clients_use_host", "web-nginx-2", False), ("kill_nginx_host", "web-nginx-2"), ("--undo--",),
                    ("start_nginx_host", "web-nginx-2"), ("clients_use_host", "web-nginx-2", True)]
    pool = _apply_undo("pool-exhaustion", FaultSpec("pool-exhaustion", 1.0, 5.0, pool="c1-pool", free=4))
    assert pool == [("squat", "c1-pool", 4), ("--undo--",), ("unsquat", "squatter-1")]


def test_schedule_applies_in_time_order_and_undoes_at_the_declared_end():
    s = spec()
    faults = (FaultSpec("nginx-host-loss", 0.2, 0.2, Selector(names=("web-nginx-1",)), group="web"),
              FaultSpec("runtime-death", 0.1, None, Selector(names=("c2-n003",))))
    ops = FakeOps(replace(s, faults=faults, duration=1.0))

    async def go():
        schedule = Schedule(ops, asyncio.get_running_loop().time(), seed=1)
        await schedule.run()
        await asyncio.sleep(0.4)
        await schedule.finish()
        return schedule

    schedule = asyncio.run(go())
    assert [(e.kind, e.what) for e in schedule.events] == [("runtime-death", "apply"), ("nginx-host-loss", "apply"),
                                                           ("nginx-host-loss", "undo")]
    assert schedule.windows == [(0.1, 0.1, "runtime-death"), (0.2, pytest.approx(0.4), "nginx-host-loss")]
    undo = next(e for e in schedule.events if e.what == "undo")
    assert undo.at == pytest.approx(0.4, abs=0.1)


# ------------------------------------------------------------------ placement and the controller


def test_power_of_two_choices_is_reproducible_and_skips_unschedulable_nodes():
    def placements(seed):
        nodes = [NodeState(f"c1-n00{i}", "c1") for i in range(1, 5)]
        nodes[1].alive = False
        rnd = random.Random(seed)
        out = []
        for i in range(12):
            node = pick_node(nodes, rnd)
            assert node is not None
            node.pods[f"p{i}"] = LabPod("a", "c1", f"p{i}", "u", "c")
            out.append(node.name)
        return out

    first = placements(3)
    assert first == placements(3)
    assert "c1-n002" not in first
    counts = sorted(first.count(n) for n in set(first))
    assert len(counts) == 3 and counts[-1] - counts[0] <= 2  # spread over the 3 live nodes


class FakeRuntime:
    def __init__(self, fail_first: int = 0):
        self.running: dict[str, str] = {}
        self.stopped: list[str] = []
        self.fail_first = fail_first
        self.forgotten: list[str] = []
        self.n = 0

    async def run_pod(self, node, pod, ready_after):
        if self.fail_first > 0:
            self.fail_first -= 1
            raise StartFailed("no address")
        self.n += 1
        self.running[pod.name] = node
        return Started(f"10.70.0.{self.n}", 0.01)

    async def stop_pod(self, node, pod):
        self.stopped.append(pod.name)
        self.running.pop(pod.name, None)

    async def forget_pod(self, pod):
        self.forgotten.append(pod.name)

    async def drain(self, pod):
        return 0.05

    async def undrain(self, pod):
        pass


def _fast(s):
    return replace(s, apps=tuple(replace(a, start_seconds=0.0, readiness_seconds=0.05) for a in s.apps))


def test_controller_keeps_replicas_and_replaces_a_dead_hosts_pods_after_the_grace():
    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        runtime = FakeRuntime(fail_first=2)
        c = Controller(_fast(spec()), runtime, lambda: loop.time() - t0, seed=4, tick=0.05, node_grace=0.3,
                       kubelet_retry=0.05)
        task = loop.create_task(c.run())
        await asyncio.sleep(0.5)
        assert c.counts.add_errors == 2  # ADD failed twice, the kubelet retried
        assert len(c.ready_pods("shop")) == 6 and len(c.ready_pods("blog")) == 2
        victim = next(p for p in c.ready_pods("shop") if p.cell == "c1")
        victims = [p.name for p in c.nodes[victim.node].pods.values()]
        c.node_down(victim.node, victims)
        assert not victim.alive and ("shop", victim.name) in c.killed
        await asyncio.sleep(0.15)
        assert victim.in_api  # within the grace the pods stay in the API, not replaced
        await asyncio.sleep(0.5)
        assert not victim.in_api and victim.name in runtime.forgotten
        assert len(c.ready_pods("shop")) == 6
        assert all(p.node != victim.node for p in c.ready_pods("shop"))
        c.cell_out("c1", True)
        before = len(c.by_name)
        c.runtime_down("c1-n001", [])
        await asyncio.sleep(0.3)
        assert all(p.cell == "c2" for p in list(c.by_name.values())[before:])  # a cut Cell is not reconciled
        task.cancel()
        await c.stop()
        return c

    c = asyncio.run(go())
    assert c.counts.pods_died >= 1 and c.counts.pods_started >= 8


def test_a_deploy_rolls_one_pod_at_a_time_and_drains_before_stopping():
    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        runtime = FakeRuntime()
        c = Controller(_fast(spec()), runtime, lambda: loop.time() - t0, seed=4, tick=0.05)
        task = loop.create_task(c.run())
        await asyncio.sleep(0.3)
        old = {p.name for p in c.pods[("blog", "c2")]}
        await c.deploy(("blog", "c2"))
        now = {p.name for p in c.pods[("blog", "c2")] if p.in_api}
        task.cancel()
        await c.stop()
        return old, now, runtime, c

    old, now, runtime, c = asyncio.run(go())
    assert not old & now and len(now) == 2
    assert sorted(runtime.stopped) == sorted(old)
    assert c.counts.drain_seconds == [0.05, 0.05] and c.counts.pods_deleted == 2


# ------------------------------------------------------------------ observations and checks


def test_parse_ip_addr_json_and_duplicates_across_netns_and_handles():
    text = ('[{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},'
            ' {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.70.0.5"},'
            ' {"family": "inet6", "local": "fe80::1"}]}]')
    assert parse_ip_addr_json(text) == ["10.70.0.5"]
    assert parse_ip_addr_json("not json") == []
    assert duplicates({"a": ["10.0.0.1"], "b": ["10.0.0.2"]}, [("10.0.0.1", "a"), ("10.0.0.3", "dead")]) == []
    assert duplicates({"a": ["10.0.0.1"], "b": ["10.0.0.1"]}, []) == ["10.0.0.1 owned by a, b"]
    assert duplicates({"a": ["10.0.0.1"]}, [("10.0.0.1", "c")]) == ["10.0.0.1 owned by a, c"]


def _verdicts(obs, checks):
    return {r.name: (r.passed, r.detail) for r in lab_checks.judge_all(obs, checks)}


def test_checks_judge_observations_with_the_sims_words():
    checks = spec().checks
    obs = Observations(duration=60, faults_end=30, reloads={"web-nginx-1": 2, "web-nginx-2": 3})
    obs.probes[40] = Probe(40.0, (), 0, ())
    v = _verdicts(obs, checks)
    assert v["no-duplicate-address"] == (True, "0 duplicate owner(s)")
    assert v["apps-serve-again"] == (True, "at t=40: every app serves on every live host")
    assert v["max-reloads"] == (True, "at most 3 reloads per host (web-nginx-2) (limit 3)")
    assert v["leaks-found-and-released"] == (False, "the run ends at 60 s, before the deadline 130 s "
                                                    "(last fault ends + 100 s)")
    obs.netns_duplicates.append("10.70.0.5 owned by a, b")
    obs.reloads["web-nginx-1"] = 4
    obs.probes[40] = Probe(40.0, ("shop on web-nginx-1",), 0, ())
    v = _verdicts(obs, checks)
    assert v["no-duplicate-address"] == (False, "1 duplicate owner(s); first: 10.70.0.5 owned by a, b")
    assert v["apps-serve-again"][0] is False and v["max-reloads"][0] is False
    assert lab_checks.liveness_deadlines(checks, 30, 60) == [40]


def test_leaks_check_fails_when_something_else_than_cnictl_freed_a_leak():
    check = CheckSpec("leaks-found-and-released", within=10)
    obs = Observations(duration=60, faults_end=30)
    obs.probes[40] = Probe(40.0, (), 0, ())
    obs.leaks_gone = {"h1": "10.70.0.9"}
    obs.leaks.released_handles = {"h1"}
    obs.leaks.found = obs.leaks.released = 1
    assert lab_checks.judge(obs, check).passed
    obs.leaks_gone["h2"] = "10.70.0.10"
    result = lab_checks.judge(obs, check)
    assert not result.passed and "freed by something else: 10.70.0.10" in result.detail


# ------------------------------------------------------------------ load (loopback only)


def test_get_reads_status_and_body_and_reports_a_refused_connection_as_status_0():
    async def go():
        async def answer(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Host: shop.example.com" in head
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshop-c1-3\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ok = await get("127.0.0.1", port, "shop.example.com", 2.0)
        server.close()
        await server.wait_closed()
        refused = await get("127.0.0.1", port, "shop.example.com", 2.0)
        return ok, refused

    ok, refused = asyncio.run(go())
    assert (ok.status, ok.body) == (200, "shop-c1-3")
    assert refused.status == 0


def test_load_refuses_targets_outside_the_lab_network():
    s = spec()
    with pytest.raises(ValueError, match="outside the lab's network"):
        Load(s.apps, s.groups, {"shop": "shop.example.com"}, {"web-nginx-1": "8.8.8.8"}, lambda: 0.0,
             lambda *a: False)


# ------------------------------------------------------------------ the report


def test_lab_report_has_the_sim_reports_fields_checks_and_samples():
    s = spec()
    scenario = Scenario(s, "0" * 64, "lab-unit.yaml")
    sim_shape = build_report(RunResult(scenario, s, {"counts": {}, "metrics": {}}, "x", 0, 0.0),
                             code_version={})
    checks = [sim_checks.CheckResult("no-duplicate-address", True, "0 duplicate owner(s)")]
    totals = LabTotals(ok=10, failed=1, reloads={"web-nginx-1": 2}, samples={"cni_add_seconds": [0.03, 0.02]},
                       series=[{"t": 10.0, "ok": 10, "failed": 1, "pool_use": {"c1-pool": 5.0}}])
    report = lab_report(scenario, s, checks, totals, code_version={}, elapsed=60.2)
    assert set(sim_shape) <= set(report)
    assert report["scale"] == "lab" and report["passed"] is True
    assert report["checks"] == [{"name": "no-duplicate-address", "passed": True, "detail": "0 duplicate owner(s)"}]
    assert set(report["samples"]) == set(SAMPLE_KINDS)
    assert report["metrics"]["alloc_p50"] == 0.03 and report["metrics"]["reloads"] == 2
    assert report["metrics_summary"]["pool_use:c1-pool"]["last"] == 5.0
    timed = lab_report(scenario, s, checks, replace(totals, samples={**totals.samples,
                                                                      "etcd_put_seconds": [0.0041234567]}),
                       code_version={}, elapsed=60.2)
    assert timed["samples"]["etcd_put_seconds"] == [0.004123]  # the lab's own list, for lab fit
    assert report["replay"] == "leengine lab run lab-unit.yaml --seed 11"
