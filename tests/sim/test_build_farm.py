"""The build farm on sim adapters: placement by repo, warm caches, tasks moving off dead hosts, late results dropped."""

from __future__ import annotations

import pytest

from control.builds import BuildScheduler, NoBuildAgents
from foundation.logic.build_task import AGENTS, RESULTS, TASKS, TaskError, rank_hosts
from node.build_agent import BuildAgent, BuildAgentConfig
from sim.adapters.builder import SimBuilder, SimRegistry
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

HOSTS = ("build-1", "build-2", "build-3")
# Full commit ids: the only commits the farm takes (a ref such as HEAD or a tag could name another tree tomorrow).
V1 = "1111111111111111111111111111111111111111"
V2 = "2222222222222222222222222222222222222222"
V9 = "9999999999999999999999999999999999999999"


class Farm:
    def __init__(self, hosts=HOSTS) -> None:
        self.rt = SimRuntime(seed=5)
        self.server = MemoryStore(self.rt)
        self.registry = SimRegistry()
        self.clients = {h: self.server.client(h, latency=0.002) for h in hosts}
        self.builders = {h: SimBuilder(self.rt, h, self.registry) for h in hosts}
        self.agents = {h: BuildAgent(self.clients[h], self.builders[h], self.rt, BuildAgentConfig(h, ttl=10))
                       for h in hosts}
        self.tasks = {h: self.rt.spawn(self.agents[h].run(), name=f"agent/{h}") for h in hosts}
        self.scheduler = BuildScheduler(self.server.client("control", latency=0.002), self.rt, every=2.0)
        self.rt.spawn(self.scheduler.reassign_forever(), name="reassign")

    def run(self, coro, limit=7200):
        return self.rt.run_until_complete(coro, limit=limit)

    def keys(self, prefix):
        return sorted(kv.key.removeprefix(prefix) for kv in self.server._range(prefix, True).kvs)


async def settle(farm: Farm, seconds: float = 1.0) -> None:
    await farm.rt.sleep(seconds)


def test_same_repo_same_host_warm_cache_and_one_build_per_commit():
    farm = Farm()

    async def scenario():
        await settle(farm)  # agents registered
        assert await farm.scheduler.agents() == list(HOSTS)
        first = await farm.scheduler.submit("shop", V1)
        again = await farm.scheduler.submit("shop", V1)  # the same commit: queued once
        one = await farm.scheduler.wait(first, timeout=3600)
        second = await farm.scheduler.wait(await farm.scheduler.submit("shop", V2), timeout=3600)
        duplicate = await farm.scheduler.submit("shop", V1)  # built already: nothing queued
        return first, again, one, second, duplicate

    first, again, one, second, duplicate = farm.run(scenario())
    home = rank_hosts("shop", list(HOSTS))[0]
    assert first == again == duplicate == f"shop@{V1}"
    assert (one.state, one.host, one.image, one.cache_hit) == ("done", home, f"registry.region/shop/shop:{V1}", False)
    assert (second.host, second.cache_hit) == (home, True)  # same host: the dependency cache was warm
    assert dict(second.steps)["compile"] < dict(one.steps)["compile"] / 2
    assert [s for s, _ in one.steps] == ["clone", "compile", "image", "push"]
    assert f"registry.region/shop/shop:{V2}" in farm.registry.images  # repository {app}/{app}, tag the commit
    assert farm.scheduler.stats.submitted == 2 and farm.scheduler.stats.duplicates == 2
    assert sum(b.builds for b in farm.builders.values()) == 2
    assert farm.keys(TASKS) == [] and farm.keys(RESULTS) == [f"shop@{V1}", f"shop@{V2}"]


def test_a_host_dying_mid_build_loses_its_lease_and_the_task_moves_to_the_next_host():
    farm = Farm()
    home, heir = rank_hosts("shop", list(HOSTS))[:2]

    async def scenario():
        await settle(farm)
        task = await farm.scheduler.submit("shop", V1)
        await farm.rt.sleep(30)  # compiling on its home host
        farm.tasks[home].cancel()  # the host dies: no more keepalives, no result
        return await farm.scheduler.wait(task, timeout=3600)

    result = farm.run(scenario())
    assert (result.state, result.host, result.attempt) == ("done", heir, 2)
    assert home not in farm.keys(AGENTS)
    assert farm.scheduler.stats.moved == 1 and farm.keys(TASKS) == []
    assert farm.builders[heir].builds == 1 and not result.cache_hit  # a cold cache on the heir


def test_a_host_cut_off_past_its_lease_stops_its_build_once_it_sees_the_task_gone():
    farm = Farm()
    home, heir = rank_hosts("shop", list(HOSTS))[:2]

    async def scenario():
        await settle(farm)
        task = await farm.scheduler.submit("shop", V1)
        await farm.rt.sleep(5)
        farm.clients[home].partition()  # alive and building, but cut off from etcd
        await farm.rt.sleep(60)  # its lease expires; the task moves to the heir
        farm.clients[home].heal()
        result = await farm.scheduler.wait(task, timeout=3600)
        await farm.rt.sleep(600)  # let the old host finish its now-orphaned build
        return result

    result = farm.run(scenario())
    assert (result.host, result.attempt) == (heir, 2)
    # Healed, its watch of the running task finds the task gone (moved): the build is cancelled, nothing written.
    assert farm.agents[home].stats.cancelled == 1 and farm.agents[home].stats.built == 0
    assert farm.agents[home].stats.dropped == 0
    assert farm.keys(RESULTS) == [f"shop@{V1}"] and farm.keys(TASKS) == []
    assert home in farm.keys(AGENTS)  # it joined again under a new lease


def test_a_build_cancelled_while_it_runs_stops_at_once_and_writes_nothing():
    farm = Farm()
    home = rank_hosts("shop", list(HOSTS))[0]

    async def scenario():
        await settle(farm)
        task = await farm.scheduler.submit("shop", V1)
        await farm.rt.sleep(5)  # compiling on its home host
        cancelled = await farm.scheduler.cancel(task, reason="superseded")
        await farm.rt.sleep(1)
        after = await farm.scheduler.wait(await farm.scheduler.submit("shop", V2), timeout=3600)
        return cancelled, await farm.scheduler.result("shop", V1), after

    cancelled, result, after = farm.run(scenario())
    assert cancelled and (result.state, result.host, result.error) == ("cancelled", home, "superseded")
    assert farm.agents[home].stats.cancelled == 1 and farm.agents[home].stats.built == 1  # only V2 completed
    assert not any(V1 in image for image in farm.registry.images)  # the cancelled build pushed nothing
    assert after.state == "done" and farm.keys(TASKS) == []


def test_a_failing_step_is_reported_with_its_name():
    farm = Farm()
    home = rank_hosts("shop", list(HOSTS))[0]
    farm.builders[home].fail_step = "compile"

    async def scenario():
        await settle(farm)
        return await farm.scheduler.wait(await farm.scheduler.submit("shop", V1), timeout=3600)

    result = farm.run(scenario())
    assert result.state == "failed" and result.error.startswith("compile: exit status 1")
    assert result.image == "" and farm.registry.images == {}
    assert farm.agents[home].stats.failed == 1


@pytest.mark.parametrize("app, commit, repo, field", [
    ("Shop", V1, None, "app"),
    ("shop", "v1;rm -rf /", None, "commit"),
    ("shop", V1, "../etc", "repo"),
    ("shop", V1, "/abs/path", "repo"),
    ("shop", "", None, "commit"),
    # Mutable refs (issue 9): a ref can name another commit tomorrow; only full ids are builds.
    ("shop", "HEAD", None, "commit"),
    ("shop", "main", None, "commit"),
    ("shop", "v1", None, "commit"),
    ("shop", f"{V1}..{V2}", None, "commit"),
    ("shop", V1[:12], None, "commit"),
    ("shop", V1.replace("1", "A"), None, "commit"),
])
def test_bad_submissions_name_the_field_and_write_nothing(app, commit, repo, field):
    farm = Farm()

    async def scenario():
        await settle(farm)
        with pytest.raises(TaskError) as info:
            await farm.scheduler.submit(app, commit, repo=repo)
        return info.value

    assert farm.run(scenario()).field == field
    assert farm.keys(TASKS) == [] and farm.scheduler.stats.submitted == 0


def test_no_build_agent_is_an_error_not_a_lost_task():
    farm = Farm(hosts=())
    with pytest.raises(NoBuildAgents):
        farm.run(farm.scheduler.submit("shop", V1))
    assert farm.keys(TASKS) == []


def test_a_task_queued_between_looking_and_watching_wakes_the_agent():
    """The idle agent lists its tasks, then watches: a task landing in between must not be missed."""
    farm = Farm(hosts=("build-1",))
    farm.tasks["build-1"].cancel()  # drive the agent's steps by hand instead
    agent = farm.agents["build-1"]

    async def scenario():
        await farm.server.client("x").put(f"{AGENTS}build-1", b"{}")  # registered, without its loop
        assert not await agent._build_next()  # nothing queued yet ...
        task = await farm.scheduler.submit("shop", V1)  # ... and now there is
        await farm.rt.wait_for(agent._wait_for_tasks(), 5.0)  # returns at once: no later event will come
        assert await agent._build_next()
        return task

    task = farm.run(scenario())
    assert farm.keys(RESULTS) == [task] and farm.keys(TASKS) == []


def test_a_commit_queued_on_two_hosts_gets_one_result():
    """Even if a task were queued twice (an operator's copy), the second finish only removes its task."""
    farm = Farm()
    home = rank_hosts("shop", list(HOSTS))[0]
    other = next(h for h in HOSTS if h != home)

    async def scenario():
        await settle(farm)
        task = await farm.scheduler.submit("shop", V1)
        kv = await farm.server.client("x").get(f"{TASKS}{home}/{task}")
        await farm.server.client("x").put(f"{TASKS}{other}/{task}", kv.value)  # the copy
        first = await farm.scheduler.wait(task, timeout=3600)
        await farm.rt.sleep(900)
        return first, (await farm.scheduler.result("shop", V1))

    first, last = farm.run(scenario())
    assert first == last  # the first result stands
    assert farm.keys(TASKS) == [] and farm.keys(RESULTS) == [f"shop@{V1}"]


def test_the_service_answers_corrupt_or_dangling_records_as_internal_errors_and_keeps_moving_tasks():
    from control.auth import Principal
    from control.builds import BuildService, CorruptRecord
    from foundation.logic.build_task import id_key, task_key

    farm = Farm(hosts=("build-1", "build-2"))
    service = BuildService(farm.scheduler)
    ops = Principal("ops", "admin")
    raw = farm.server.client("operator")

    async def scenario():
        await settle(farm)
        await raw.put(id_key(f"shop@{V9}"), b"build-1")  # claimed, but its task was deleted by hand
        with pytest.raises(CorruptRecord, match="neither queued nor finished"):
            await service.get(ops, "shop", V9)
        await raw.put(id_key(f"blog@{V1}"), b"build-9")
        await raw.put(task_key("build-9", f"blog@{V1}"),
                      b'{"app":"blog","commit":"%s","submitted_at":[1]}' % V1.encode())
        with pytest.raises(CorruptRecord, match="unreadable"):
            await service.get(ops, "blog", V1)
        # A readable task on a dead host still moves, the unreadable one stays for an operator.
        await raw.put(task_key("build-9", f"api@{V1}"), b'{"app":"api","commit":"%s"}' % V1.encode())
        await farm.rt.sleep(5)
        return farm.keys(TASKS)

    left = farm.run(scenario())
    assert f"build-9/blog@{V1}" in left and not any(k.endswith(f"/api@{V1}") for k in left if k.startswith("build-9/"))
    assert farm.scheduler.stats.moved == 1


def test_a_finished_commit_resubmitted_with_no_agent_left_is_still_the_same_build():
    farm = Farm(hosts=("build-1",))

    async def scenario():
        await settle(farm)
        task = await farm.scheduler.wait(await farm.scheduler.submit("shop", V1), timeout=3600)
        farm.tasks["build-1"].cancel()  # the whole farm goes away
        await farm.rt.sleep(30)  # its lease expires
        return task, await farm.scheduler.submit("shop", V1)

    done, again = farm.run(scenario())
    assert done.state == "done" and again == f"shop@{V1}"


def test_a_builder_that_crashes_fails_the_task_not_the_agent():
    farm = Farm(hosts=("build-1",))

    async def explode(request, log):
        raise RuntimeError("segfault in the toolchain wrapper")

    farm.builders["build-1"].build = explode

    async def scenario():
        await settle(farm)
        first = await farm.scheduler.wait(await farm.scheduler.submit("shop", V1), timeout=60)
        second = await farm.scheduler.wait(await farm.scheduler.submit("shop", V2), timeout=60)
        return first, second

    first, second = farm.run(scenario())
    assert first.state == second.state == "failed"  # the agent lived on to take the second task
    assert first.error.startswith("builder: RuntimeError: segfault")


# --- issue 9: hostile records in etcd fail their task, never the agent, the reassigner or the service ---

DEEP = b"[" * 100000


def test_hostile_task_records_fail_their_task_and_the_agent_builds_on():
    from foundation.logic.build_task import Result, task_key

    farm = Farm(hosts=("build-1",))
    raw = farm.server.client("intruder")

    async def scenario():
        await settle(farm)
        # A ref where a commit belongs, a record nested deep enough to blow the decoder's stack,
        # a record that names another task than its key, and a key that names no task at all.
        await raw.put(task_key("build-1", f"shop@{V1}"), b'{"app":"shop","commit":"HEAD"}')
        await raw.put(task_key("build-1", f"blog@{V1}"), DEEP)
        await raw.put(task_key("build-1", f"api@{V1}"), b'{"app":"api","commit":"%s"}' % V2.encode())
        await raw.put(task_key("build-1", "junk"), DEEP)
        await farm.rt.sleep(5)
        good = await farm.scheduler.wait(await farm.scheduler.submit("web", V2), timeout=3600)
        results = {}
        for task in (f"shop@{V1}", f"blog@{V1}", f"api@{V1}"):
            kv = await raw.get(f"{RESULTS}{task}")
            results[task] = Result.from_bytes(kv.value) if kv else None
        return good, results

    good, results = farm.run(scenario())
    assert good is not None and good.state == "done"  # the agent lived on and built the real task
    shop, blog, api = results.values()
    assert shop.state == "failed" and shop.error.startswith("invalid task record: commit: 'HEAD' is not a full commit")
    assert blog.state == "failed" and "nested too deeply" in blog.error
    assert api.state == "failed" and "its key says" in api.error
    assert farm.keys(TASKS) == ["build-1/junk"]  # nobody to answer for it: set aside, never built
    agent = farm.agents["build-1"]
    assert agent.stats.rejected == 3 and agent.stats.unreadable == [f"{TASKS}build-1/junk"]
    assert agent.stats.built == 1 and farm.builders["build-1"].builds == 1
    assert not farm.tasks["build-1"].done()


def test_a_deeply_nested_task_on_a_dead_host_does_not_stop_the_moves_of_the_others():
    from foundation.logic.build_task import task_key

    farm = Farm(hosts=("build-1",))
    raw = farm.server.client("operator")

    async def scenario():
        await settle(farm)
        await raw.put(task_key("build-9", f"blog@{V1}"), DEEP)  # sorts before the readable one
        await raw.put(task_key("build-9", f"shop@{V1}"), b'{"app":"shop","commit":"%s"}' % V1.encode())
        return await farm.scheduler.wait(f"shop@{V1}", timeout=3600)

    result = farm.run(scenario())
    assert result is not None and (result.state, result.host, result.attempt) == ("done", "build-1", 2)
    assert farm.scheduler.stats.moved == 1 and farm.keys(TASKS) == [f"build-9/blog@{V1}"]


def test_an_agent_key_that_names_no_host_is_not_a_build_host():
    farm = Farm(hosts=("build-1",))
    raw = farm.server.client("intruder")

    async def scenario():
        await settle(farm)
        for name in ("zz/../../ids", "Build-X", "x" * 300, ""):
            await raw.put(f"{AGENTS}{name}", b"{}")
        agents = await farm.scheduler.agents()
        task = await farm.scheduler.submit("shop", V1)
        return agents, task

    agents, task = farm.run(scenario())
    assert agents == ["build-1"]
    assert farm.keys(TASKS) == [f"build-1/{task}"]


def test_a_corrupt_result_is_an_internal_error_of_that_build_only():
    from control.auth import Principal
    from control.builds import BuildService, CorruptRecord
    from foundation.logic.build_task import id_key, result_key

    farm = Farm(hosts=("build-1",))
    service = BuildService(farm.scheduler)
    ops = Principal("ops", "admin")
    raw = farm.server.client("intruder")

    async def scenario():
        await settle(farm)
        await raw.put(id_key(f"shop@{V1}"), b"build-1")
        await raw.put(result_key(f"shop@{V1}"), DEEP)
        await raw.put(id_key(f"blog@{V1}"), b"../../etc")  # a claim naming no host
        errors = []
        for call in (service.get(ops, "shop", V1), farm.scheduler.wait(f"shop@{V1}", timeout=5),
                     farm.scheduler.result("shop", V1), service.get(ops, "blog", V1)):
            with pytest.raises(CorruptRecord) as info:
                await call
            errors.append(str(info.value))
        fine = await service.submit(ops, "web", V2)
        return errors, fine

    errors, fine = farm.run(scenario())
    assert all("unreadable" in e for e in errors), errors
    assert "nested too deeply" in errors[0] and "host" in errors[3]
    assert fine.state == "queued" and fine.host == "build-1"
