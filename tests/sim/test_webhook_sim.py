"""Builds on push in the sim: GitLab's duplicate deliveries and a dying receiver give one build per commit.

The shipped scenario scenarios/webhook-storm.yaml (duplicates, receiver crashes, a builder crash,
a build host cut off mid-build) passes its checks; the same run with a receiver that skips the
``/build/ids`` claim fails ``one-build-per-commit`` (the check can fail); the pure verdict catches
a push from a superseded attempt; the scenario part and the fault kinds are validated, each error
naming its line.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from control.builds import BuildScheduler
from foundation.logic.build_task import Result, Task, id_key, rank_hosts, result_key, task_key
from foundation.ports import KeyValue, PutOp, WatchEvent
from sim.adapters.builder import PushSeen
from sim.adapters.runtime import SimRuntime
from sim.checks import one_build_verdict
from sim.scenario import ScenarioError, load_scenario, parse_scenario
from sim.spec import CheckSpec
from sim.webhooks import push_commit
from sim.world import Region

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "webhook-storm.yaml"
CHECK = CheckSpec("one-build-per-commit")


def run(region: Region) -> dict[str, bool]:
    region.run()
    return {v.name: v.passed for v in region.checks()}


def test_the_shipped_storm_builds_every_commit_once():
    spec = load_scenario(SCENARIO).spec
    region = Region(spec, SimRuntime(spec.seed))
    verdicts = run(region)
    assert verdicts == {"one-build-per-commit": True, "builds-finish": True, "no-duplicate-address": True,
                        "activity-consistent": True}  # the hook bindings carry their activity records
    hooks = region.webhooks
    assert hooks is not None
    metrics = hooks.metrics()
    outcomes = [d.outcome for d in hooks.deliveries]
    # The storm happened: copies raced and found the commit claimed, receivers died before and after writes,
    # GitLab delivered again; a push to an unbound branch was ignored.
    assert outcomes.count("duplicate") >= 10 and metrics["hooks_receiver_died"] >= 10
    assert {"died-before-write", "died-after-write-1"} <= set(outcomes)
    assert any(d.attempt > 1 for d in hooks.deliveries) and "ignored" in outcomes
    assert metrics["hooks_given_up"] == 0
    assert metrics["hook_answer_max"] < 1.0  # GitLab disables a hook that answers slowly
    # Every pushed commit of a bound branch was acknowledged, and each was queued once (the check's history).
    bound = [h for h in hooks.hooks if h.branch == "main"]
    assert {f"{h.app}@{h.commit}" for h in bound} == set(hooks.answered)
    # A zombie's (or a cancelled build's) push was refused by the registry; accepted pushes were current.
    registry = region.farm.registry
    assert registry.pushes_refused >= 1 and any(p.accepted for p in registry.pushes)
    assert all(p.why == "no token for these credentials (401)" for p in registry.pushes if not p.accepted)


class ClaimlessQueue:
    """A broken receiver's queue: it writes the task without claiming ``/build/ids/{task}`` first."""

    def __init__(self, scheduler: BuildScheduler) -> None:
        self.scheduler = scheduler

    async def submit(self, app: str, commit: str, *, repo: str | None = None) -> str:
        s = self.scheduler
        task = Task.parse({"app": app, "repo": repo or app, "commit": commit, "submitted_at": s.runtime.now(),
                           "push_secret": s.runtime.secret_hex()})
        host = rank_hosts(task.repo, await s.agents())[0]
        await s.store.txn([], [PutOp(id_key(task.id), host.encode()),  # no Compare.missing: the claim skipped
                               PutOp(task_key(host, task.id), task.to_bytes())])
        return task.id

    async def cancel(self, task: str, *, reason: str = "") -> bool:
        return await self.scheduler.cancel(task, reason=reason)


def test_a_receiver_that_skips_the_claim_fails_the_check():
    spec = load_scenario(SCENARIO).spec
    region = Region(spec, SimRuntime(spec.seed))
    assert region.webhooks is not None and region.farm.scheduler is not None
    region.webhooks.queue = ClaimlessQueue(region.farm.scheduler)
    region.run()
    verdict = next(v for v in region.checks() if v.name == "one-build-per-commit")
    assert not verdict.passed
    assert "queued 2 times" in verdict.detail or "queued 3 times" in verdict.detail, verdict.detail


# ------------------------------------------------------------------ the pure verdict


def _put(revision: int, key: str, value: bytes) -> WatchEvent:
    return WatchEvent("put", KeyValue(key, value, revision, revision, 1), revision)


def _delete(revision: int, key: str) -> WatchEvent:
    return WatchEvent("delete", KeyValue(key, b"", 0, revision, 0), revision)


COMMIT = push_commit("shop", "main", 1)
TASK = f"shop@{COMMIT}"
OLD, NEW = "a" * 32, "b" * 32


def _history() -> list[WatchEvent]:
    first = Task("shop", "sim/shop", COMMIT, 1.0, 1, push_secret=OLD)
    moved = Task("shop", "sim/shop", COMMIT, 1.0, 2, push_secret=NEW)
    done = Result(TASK, "done", "build-2", 2, image=f"registry.region/shop/shop:{COMMIT}")
    return [_put(10, id_key(TASK), b"build-1"), _put(10, task_key("build-1", TASK), first.to_bytes()),
            _delete(20, task_key("build-1", TASK)), _put(20, task_key("build-2", TASK), moved.to_bytes()),
            _put(20, id_key(TASK), b"build-2"),
            _put(30, result_key(TASK), done.to_bytes()), _delete(30, task_key("build-2", TASK))]


def _push(revision: int, secret: str, accepted: bool = True) -> PushSeen:
    return PushSeen(float(revision), revision, "shop/shop", COMMIT, f"build${TASK}",
                    hashlib.sha256(secret.encode()).hexdigest(), accepted)


def test_the_verdict_holds_pushes_of_the_current_attempt():
    verdict = one_build_verdict(CHECK, _history(), [_push(15, OLD), _push(25, NEW), _push(26, OLD, False)],
                                {TASK: "queued"})
    assert verdict.passed, verdict.detail
    assert "1 build(s) queued, 1 result(s); 2 push(es) accepted, 1 refused" in verdict.detail


@pytest.mark.parametrize(("push", "why"), [(_push(25, OLD), "superseded attempt"),  # the zombie's, after the move
                                           (_push(31, NEW), "superseded attempt")])  # after the result
def test_the_verdict_fails_a_push_accepted_from_a_superseded_attempt(push, why):
    verdict = one_build_verdict(CHECK, _history(), [push], {})
    assert not verdict.passed and why in verdict.detail


def test_the_verdict_fails_a_second_queueing_a_second_result_and_an_unqueued_acknowledgement():
    again = Task("shop", "sim/shop", COMMIT, 40.0, 1, push_secret=OLD)
    twice = [*_history(), _put(40, task_key("build-1", TASK), again.to_bytes())]
    assert "queued 2 times" in one_build_verdict(CHECK, twice, [], {}).detail
    result = Result(TASK, "done", "build-1", 1)
    assert "2 results" in one_build_verdict(CHECK, [*_history(), _put(41, result_key(TASK), result.to_bytes())],
                                            [], {}).detail
    other = f"shop@{push_commit('shop', 'main', 2)}"
    verdict = one_build_verdict(CHECK, _history(), [], {other: "duplicate"})
    assert not verdict.passed and "answered duplicate but never queued" in verdict.detail


# ------------------------------------------------------------------ validation


BASE = """\
seed: 1
duration: 600
topology:
  build_hosts: 2
  cells:
    - {name: c1, nodes: 2, pools: [{name: p1, cidr: 10.1.0.0/24, vlan: 101}]}
    - {name: c2, nodes: 2, pools: [{name: p2, cidr: 10.2.0.0/24, vlan: 102}]}
  groups: [{name: web, hosts: 1}]
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 1, group: web, platform: true}
    - {name: blog, cells: [c1], replicas: 1, group: web}
"""
PUSHES = """\
pushes:
  - {app: shop, at: 10, every: 60}
"""


def test_a_valid_push_block_and_the_webhook_faults_parse():
    spec = parse_scenario(BASE + PUSHES + """\
faults:
  - {kind: webhook-duplicate, at: 5, duration: 100, deliveries: 4, target: {names: [shop]}}
  - {kind: webhook-receiver-crash, at: 200, duration: 50, crash_point: after-txn, redeliver_after: 7}
checks:
  - kind: one-build-per-commit
""", "ok.yaml")
    assert [(p.app, p.at, p.every, p.branch, p.line) for p in spec.pushes] == [("shop", 10, 60, "main", 14)]
    dup, crash = spec.faults
    assert (dup.deliveries, dup.target.names) == (4, ("shop",))
    assert (crash.crash_point, crash.redeliver_after) == ("after-txn", 7)


@pytest.mark.parametrize(("text", "where"), [
    (BASE + "pushes:\n  - {app: blog, at: 10}\n", "bad.yaml:14: pushes[0].app: 'blog' is no platform app"),
    (BASE + "pushes:\n  - {app: shop, at: 700}\n", "bad.yaml:14: pushes[0].at: at 700 s is not before the end"),
    (BASE + "pushes:\n  - {app: shop, at: 1, branch: 'a..b'}\n", "bad.yaml:14: pushes[0].branch: 'a..b' is not"),
    (BASE + "pushes:\n  - {app: shop, at: 1, every: 0.5}\n", "bad.yaml:14: pushes[0].every"),
    (BASE.replace("build_hosts: 2", "build_hosts: 0") + PUSHES, "bad.yaml:14: pushes: pushes build on the farm"),
    (BASE + "faults:\n  - {kind: webhook-duplicate, at: 5}\n", "bad.yaml:14: faults[0].kind: webhook-duplicate "
                                                                "needs pushes"),
    (BASE + PUSHES + "faults:\n  - {kind: webhook-duplicate, at: 5, deliveries: 1}\n",
     "bad.yaml:16: faults[0].deliveries"),
    (BASE + PUSHES + "faults:\n  - {kind: webhook-receiver-crash, at: 5, crash_point: later}\n",
     "bad.yaml:16: faults[0].crash_point: 'later' is not one of before-txn, after-txn, either"),
    (BASE + PUSHES + "faults:\n  - {kind: webhook-receiver-crash, at: 5, target: {count: 1}}\n",
     "bad.yaml:16: faults[0].target: webhook-receiver-crash crashes the one hook receiver"),
    (BASE + PUSHES + "faults:\n  - {kind: webhook-receiver-crash, at: 5, deliveries: 3}\n",
     "bad.yaml:16: faults[0].deliveries: only for fault kinds webhook-duplicate"),
    (BASE.replace("build_hosts: 2", "build_hosts: 0") + "checks:\n  - kind: one-build-per-commit\n",
     "bad.yaml:14: checks[0].kind: one-build-per-commit needs build hosts"),
])
def test_a_bad_push_block_or_webhook_fault_names_its_line(text, where):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "bad.yaml")
    assert str(caught.value).startswith(where), str(caught.value)


def test_the_lab_scaling_scales_the_pushes():
    from sim.scenario_lab import lab_scaled
    spec = parse_scenario(BASE + PUSHES + "lab: {time_scale: 0.5}\n", "lab.yaml")
    scaled = lab_scaled(spec)
    assert [(p.at, p.every) for p in scaled.pushes] == [(5.0, 30.0)]


# ------------------------------------------------------------------ the fence, on the farm itself


def test_a_zombie_agents_push_is_refused_and_the_check_would_catch_it_accepted():
    """A build host cut off mid-build keeps building (its Builder does not need etcd) past its lease; the task
    moves (attempt 2, a new secret); the zombie's push asks for a token with attempt 1's secret and is refused.
    Had the registry accepted it, one-build-per-commit would fail on the very same history."""
    from foundation.logic.build_task import IDS
    from sim.adapters.store import MemoryStore
    from sim.farm import Farm
    from sim.spec import BuilderCosts

    rt = SimRuntime(seed=3)
    store = MemoryStore(rt)
    farm = Farm(rt, store, 2, lambda name: store.client(name, latency=0.002), costs=BuilderCosts(jitter=0.0))
    farm.start()
    assert farm.scheduler is not None

    async def scenario():
        await rt.sleep(1)
        task = await farm.scheduler.submit("shop", COMMIT)
        home = store._range(f"{IDS}{task}", False).kvs[0].value.decode()
        await rt.sleep(30)  # compiling, cold: 180 s
        farm.hosts[home].client.partition()  # cut off: its lease expires, the task moves to the other host
        result = await farm.scheduler.wait(task, timeout=3600)
        await rt.sleep(60)  # the zombie reaches its push meanwhile (at about 205 s)
        return home, result

    home, result = rt.run_until_complete(scenario(), limit=7200)
    assert result is not None and (result.state, result.attempt) == ("done", 2) and result.host != home
    registry = farm.registry
    refused = [p for p in registry.pushes if not p.accepted]
    accepted = [p for p in registry.pushes if p.accepted]
    assert len(refused) == 1 and len(accepted) == 1 and refused[0].at < accepted[0].at
    assert registry.images == {f"registry.region/shop/shop:{COMMIT}": registry.image_mb}  # attempt 2's image
    history = store.history()
    assert one_build_verdict(CHECK, history, registry.pushes, {}).passed
    broken = [replace(refused[0], accepted=True), *accepted]  # a registry that let the zombie push
    verdict = one_build_verdict(CHECK, history, broken, {})
    assert not verdict.passed and "superseded attempt" in verdict.detail
