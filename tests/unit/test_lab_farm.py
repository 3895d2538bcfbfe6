"""The lab run's build farm client and the agents' histogram samples: pure parts, no root, no lab.

* ``AppRepos`` makes one git repository per app and a real new commit per release;
* ``LabFarm.release`` submits that commit, waits for the result its observer reads, and counts
  what the ``builds-finish`` check and the report need (submitted, unfinished, build_seconds);
* a deploy of the controller builds first and rolls nothing when the build fails, as the sim's;
* ``HistogramSamples`` turns scrapes' ``_count``/``_sum`` increases into per-observation samples.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace

import pytest

from foundation.logic.build_task import Result
from lab.controller import Controller
from lab.farm import AppRepos, LabFarm, SubmitRefused
from lab.observe import HistogramSamples, histogram_totals
from sim.scenario import parse_scenario
from tests.unit.test_lab_checks import SCENARIO, FakeRuntime

C = "0123456789abcdef0123456789abcdef01234567"


def test_repos_give_a_new_full_commit_id_per_release_with_a_build_script(tmp_path):
    repos = AppRepos(tmp_path)
    first, second = repos.next_commit("shop"), repos.next_commit("shop")
    assert first != second and len(first) == 40 and all(c in "0123456789abcdef" for c in first)
    repo = tmp_path / "shop"
    assert (repo / "build.sh").is_file() and (repo / "VERSION").read_text() == "r2\n"
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True, check=True)
    assert log.stdout.split("\n")[:3] == ["shop r2", "shop r1", "shop r0"]
    with pytest.raises(ValueError):
        repos.path("../etc")


class FakeBuilds:
    def __init__(self, refuse=False):
        self.refuse = refuse
        self.submitted: list[tuple[str, str]] = []

    async def submit(self, app, commit):
        if self.refuse:
            raise SubmitRefused("UNAVAILABLE: no build agent")
        self.submitted.append((app, commit))
        return f"{app}@{commit}"

    async def close(self):
        pass


class FakeRepos:
    def __init__(self):
        self.n = 0

    def next_commit(self, app):
        self.n += 1
        return f"{self.n:040x}"


def _result(task, state="done"):
    return Result(task, state, "build-1", 1, image=f"198.18.0.9:5000/{task.replace('@', ':')}",
                  error="" if state == "done" else "compile: exit 1").to_bytes()


def test_release_waits_for_the_result_and_counts_what_the_checks_read():
    async def go():
        now = [0.0]
        builds = FakeBuilds()
        farm = LabFarm(FakeRepos(), builds, store=None, clock=lambda: now[0])
        release = asyncio.create_task(farm.release("shop", timeout=5))
        await asyncio.sleep(0.01)
        task = f"shop@{1:040x}"
        assert farm.unfinished(submitted_by=10) == [task]
        now[0] = 7.5
        farm.on_result(_result(task))
        image = await release
        failing = asyncio.create_task(farm.release("shop", timeout=5))
        await asyncio.sleep(0.01)
        farm.on_result(_result(f"shop@{2:040x}", "failed"))
        failed = await failing
        farm.on_result(b"not a record")  # nothing the real agents wrote: not counted
        late = await farm.release("shop", timeout=0.05)  # no result: None, still unfinished
        builds.refuse = True
        refused = await farm.release("shop", timeout=1)
        return farm, image, failed, late, refused

    farm, image, failed, late, refused = asyncio.run(go())
    assert image == f"198.18.0.9:5000/shop:{1:040x}" and failed is None and late is None and refused is None
    assert farm.seconds() == [7.5]
    assert farm.submitted(by=10) == 3 and farm.unfinished(submitted_by=10) == [f"shop@{3:040x}"]
    m = farm.metrics()
    assert (m["builds_submitted"], m["builds_done"], m["builds_failed"], m["builds_unsubmitted"]) == (3, 1, 1, 1)


def test_a_deploy_builds_first_and_rolls_nothing_when_the_build_fails():
    spec = parse_scenario(SCENARIO, "lab-unit.yaml")
    spec = replace(spec, apps=tuple(replace(a, start_seconds=0.0, readiness_seconds=0.05) for a in spec.apps))

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        runtime = FakeRuntime()
        c = Controller(spec, runtime, lambda: loop.time() - t0, seed=4, tick=0.05)
        images = iter([None, "registry/blog:c2"])
        asked = []

        async def release(app):
            asked.append(app)
            return next(images)

        c.release = release
        task = loop.create_task(c.run())
        await asyncio.sleep(0.3)
        old = {p.name for p in c.pods[("blog", "c2")]}
        await c.deploy(("blog", "c2"))  # the build failed: nothing rolls
        same = {p.name for p in c.pods[("blog", "c2")] if p.in_api}
        await c.deploy(("blog", "c2"))
        rolled = {p.name for p in c.pods[("blog", "c2")] if p.in_api}
        task.cancel()
        await c.stop()
        return old, same, rolled, asked, c

    old, same, rolled, asked, c = asyncio.run(go())
    assert asked == ["blog", "blog"] and same == old and not rolled & old
    assert c.images == {"blog": "registry/blog:c2"}


EXPOSITION = """\
# HELP slb_reload_seconds Test + reload + confirmation of one batch
# TYPE slb_reload_seconds histogram
slb_reload_seconds_bucket{group="web",host="web-nginx-1",le="0.1"} 1.0
slb_reload_seconds_count{group="web",host="web-nginx-1"} %d
slb_reload_seconds_sum{group="web",host="web-nginx-1"} %s
slb_reload_seconds_created{group="web",host="web-nginx-1"} 1.7e+09
slb_reload_seconds_other 3
"""


def test_histogram_increases_become_samples_exact_when_one_and_averaged_when_several():
    assert histogram_totals(EXPOSITION % (2, "0.25"), "slb_reload_seconds") == {
        (("group", "web"), ("host", "web-nginx-1")): (2.0, 0.25)}
    h = HistogramSamples("slb_reload_seconds")
    h.update("slb-web-nginx-1", EXPOSITION % (2, "0.25"))  # the baseline: lab up's reloads
    h.update("slb-web-nginx-1", EXPOSITION % (3, "0.37"))
    h.update("slb-web-nginx-1", EXPOSITION % (3, "0.37"))
    h.update("slb-web-nginx-1", EXPOSITION % (5, "0.57"))
    h.update("slb-web-nginx-1", EXPOSITION % (1, "0.09"))  # the agent restarted: a new baseline, no sample
    h.update("slb-web-nginx-1", EXPOSITION % (2, "0.2"))
    assert [round(v, 6) for v in h.samples] == [0.12, 0.1, 0.1, 0.11]
    assert (h.exact, h.averaged) == (2, 2)


def test_a_series_born_after_the_baseline_counts_from_zero_unless_its_source_went_quiet():
    h = HistogramSamples("slb_reload_seconds")
    empty = "# TYPE slb_reload_seconds histogram\n"  # a labelled histogram before its first observation
    h.update("slb-web-nginx-1", empty)  # the baseline: no reload yet
    h.update("slb-web-nginx-1", EXPOSITION % (1, "0.25"))  # the boot's first reload, after the first scrape
    assert h.samples == [0.25] and h.exact == 1
    h.forget("slb-web-nginx-1")  # a scrape failed: the next answer is a baseline, whatever it shows
    h.update("slb-web-nginx-1", EXPOSITION % (4, "0.95"))
    assert h.samples == [0.25]
    h.update("slb-web-nginx-1", EXPOSITION % (5, "1.15"))
    assert [round(v, 6) for v in h.samples] == [0.25, 0.2]


# ------------------------------------------------------------------ the persistent controller's adoption and healing


class ListingRuntime(FakeRuntime):
    """A FakeRuntime that answers ``list`` per node like lab/container_runtime.py (None: silent)."""

    def __init__(self):
        super().__init__()
        self.silent: set[str] = set()
        self.dead: set[str] = set()
        self.ips: dict[str, str] = {}

    async def run_pod(self, node, pod, ready_after):
        started = await super().run_pod(node, pod, ready_after)
        self.ips[pod.name] = started.ip
        return started

    async def list_pods(self, node):
        if node in self.silent:
            return None
        return [{"name": p, "app": p.split("-")[0], "ip": self.ips[p], "port": 8080, "alive": p not in self.dead}
                for p, n in self.running.items() if n == node]


def test_a_restarted_controller_adopts_running_pods_and_heals_what_breaks():
    spec = parse_scenario(SCENARIO, "lab-unit.yaml")
    spec = replace(spec, apps=tuple(replace(a, start_seconds=0.0, readiness_seconds=0.02) for a in spec.apps))

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        clock = lambda: loop.time() - t0  # noqa: E731
        runtime = ListingRuntime()
        first = Controller(spec, runtime, clock, seed=4, tick=0.02)
        task = loop.create_task(first.run())
        await asyncio.sleep(0.2)
        task.cancel()
        await first.stop()
        started = dict(runtime.running)
        # A new controller process: it adopts what runs instead of starting 8 more pods.
        c = Controller(spec, runtime, clock, seed=4, tick=0.02, node_grace=0.2)
        for node in c.nodes:
            c.adopt(node, await runtime.list_pods(node))
        assert sorted(c.by_name) == sorted(started) and c._counter == 8
        tasks = [loop.create_task(c.run()), loop.create_task(c.heal(runtime.list_pods, every=0.02,
                                                                     unreachable_after=0.1))]
        await asyncio.sleep(0.1)
        assert runtime.running == started  # nothing more was started
        victim = next(iter(started))
        runtime.dead.add(victim)  # its server died: torn down with DEL (stop) and replaced
        await asyncio.sleep(0.2)
        assert victim in runtime.stopped and not c.by_name[victim].in_api
        lost = next(n for n in c.nodes if any(nn == n for nn in runtime.running.values()))
        on_lost = [p for p, n in runtime.running.items() if n == lost]
        runtime.silent.add(lost)  # its runtime stopped answering: lost after 0.1 s, evicted 0.2 s later
        await asyncio.sleep(0.6)
        assert not c.nodes[lost].alive
        assert all(not c.by_name[p].in_api and p not in runtime.stopped for p in on_lost)  # no DEL: they leak
        runtime.silent.discard(lost)
        await asyncio.sleep(0.1)
        assert c.nodes[lost].alive
        counts = {k: len([p for p in pods if p.in_api]) for k, pods in c.pods.items()}
        for t in tasks:
            t.cancel()
        await c.stop()
        return c, counts

    c, counts = asyncio.run(go())
    assert counts == c.replicas  # every app back at its replica count
    assert c.counts.pods_died >= 2


# ------------------------------------------------------------------ a fault by hand


def test_a_fault_by_hand_checks_its_targets_and_what_it_broke_reads_back():
    from lab.faults import _EtcdCut, broken_from_json, broken_to_json
    from lab.hand import HandFaultInput, fault_spec

    spec = parse_scenario(SCENARIO, "lab-unit.yaml")
    crash = fault_spec(spec, "host-crash", ["c1-n002"], duration=30, factor=None, changes=None, pool="", free=0,
                       group="")
    assert crash.target.names == ("c1-n002",) and crash.duration == 30
    with pytest.raises(HandFaultInput, match="no target named c9-n001"):
        fault_spec(spec, "host-crash", ["c9-n001"], duration=None, factor=None, changes=None, pool="", free=0,
                   group="")
    with pytest.raises(HandFaultInput, match="needs --pool"):
        fault_spec(spec, "pool-exhaustion", [], duration=None, factor=None, changes=None, pool="", free=0, group="")
    with pytest.raises(HandFaultInput, match="unknown fault kind"):
        fault_spec(spec, "meteor", [], duration=None, factor=None, changes=None, pool="", free=0, group="")
    assert fault_spec(spec, "nginx-host-loss", [], duration=None, factor=None, changes=None, pool="", free=0,
                      group="").group == "web"  # the only group
    whole = fault_spec(spec, "etcd-unavailable", [], duration=None, factor=None, changes=None, pool="", free=0,
                       group="")
    assert whole.target == type(whole.target)()  # no target: etcd itself loses quorum, as in a scenario
    cut = _EtcdCut(members=["etcd2", "etcd3"])
    assert broken_from_json("etcd-unavailable", broken_to_json(cut)) == cut
    assert broken_from_json("host-crash", broken_to_json(["c1-n002"])) == ["c1-n002"]
    with pytest.raises(ValueError):
        broken_from_json("host-crash", {"x": 1})


def test_the_fault_record_is_written_whole_and_refused_when_missing(tmp_path):
    from lab.hand import HandFaultInput, load_record, record_path, save_record

    path = record_path(tmp_path, "host-crash")
    with pytest.raises(HandFaultInput, match="no host-crash fault applied by hand"):
        load_record(path)
    save_record(path, {"kind": "host-crash", "broken": ["c1-n001"]})
    assert load_record(path)["broken"] == ["c1-n001"] and not list(path.parent.glob(".*.tmp"))
