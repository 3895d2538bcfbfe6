"""GitLab Push Hook deliveries (control.webhooks) against the real build scheduler over the sim store: every bad
delivery is refused with its status or ignored, and writes nothing; duplicates give one task; a newer push cancels
the older build; bindings need Master of the app and record their activity."""

from __future__ import annotations

import json

import pytest

from control import members as m
from control import webhooks as w
from control.activity import ACTIVITY
from control.apps import app_key
from control.auth import Principal
from control.builds import BuildScheduler, BuildService
from foundation.logic.build_task import IDS, RESULTS, TASKS, Result, Task, agent_key, result_key, task_id
from foundation.ports import control as port
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
ALICE = Principal("alice", "user")
C1, C2, C3 = "1" * 40, "2" * 40, "3" * 40
PROJECT = "Team/Shop"


class World:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=3)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)
        self.scheduler = BuildScheduler(self.store, self.rt)
        self.hooks = w.Hooks(self.store, self.rt, self.scheduler)
        self.run(self.store.put(app_key("shop"), b"{}"))
        self.run(self.store.put(agent_key("b1"), b'{"host":"b1"}'))
        self.give("alice", "master")
        binding, self.secret = self.run(self.hooks.bind(ALICE, "shop", PROJECT, "main", request_id="bind-1"))
        assert binding.revision > 0 and binding.secret_sha256 == w.secret_digest(self.secret)

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def give(self, user: str, role: str) -> None:
        record = m.Membership(m.Resource("app", "shop"), user, m.Role.parse(role), "ops", 1.7e9)
        self.run(self.store.put(record.key, record.to_bytes()))

    def snapshot(self):
        return self.server.revision, [(kv.key, kv.value, kv.mod_revision) for kv in self.server._range("/", True).kvs]

    def deliver(self, body: bytes | dict, **headers: str) -> w.Delivery:
        sent = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": self.secret}
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        return self.run(self.hooks.deliver(sent, body if isinstance(body, bytes) else json.dumps(body).encode()))

    def refused(self, status: int, body: bytes | dict, **headers: str) -> w.DeliveryError:
        before = self.snapshot()
        with pytest.raises(w.DeliveryError) as caught:
            self.deliver(body, **headers)
        assert caught.value.status == status, caught.value
        assert self.snapshot() == before, "a refused delivery must write nothing"
        return caught.value

    def ignored(self, body: bytes | dict, **headers: str) -> w.Delivery:
        before = self.snapshot()
        done = self.deliver(body, **headers)
        assert done.outcome == "ignored", done
        assert self.snapshot() == before, "an ignored delivery must write nothing"
        return done

    def tasks(self) -> list[str]:
        return [kv.key for kv in self.server._range(TASKS, True).kvs]

    def claims(self) -> list[str]:
        return [kv.key.removeprefix(IDS) for kv in self.server._range(IDS, True).kvs]

    def result(self, task: str) -> Result | None:
        kv = self.server._range(result_key(task), False).first()
        return Result.from_bytes(kv.value) if kv else None


def push(commit: str | None = C1, *, before: str = "0" * 40, ref: str = "refs/heads/main",
         project: str = PROJECT) -> dict:
    """GitLab's Push Hook payload (docs.gitlab.com, "Webhook events": push events), trimmed of nothing we read."""
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": commit or "0" * 40, "ref": ref,
        "ref_protected": True, "checkout_sha": commit, "user_id": 4, "user_name": "Alice", "user_username": "alice",
        "user_email": "", "project_id": 15,
        "project": {"id": 15, "name": "Shop", "path_with_namespace": project, "default_branch": "main",
                    "git_http_url": f"http://gitlab.example/{project}.git",
                    "git_ssh_url": f"git@gitlab.example:{project}.git"},
        "commits": [{"id": commit, "message": "change", "timestamp": "2026-11-30T10:00:00+00:00",
                     "author": {"name": "Alice", "email": "alice@example.com"}, "added": [], "modified": ["a"],
                     "removed": []}] if commit else [],
        "total_commits_count": 1 if commit else 0,
        "repository": {"name": "Shop", "url": f"git@gitlab.example:{project}.git"},
    }


@pytest.fixture
def world() -> World:
    return World()


def test_a_push_queues_one_build_of_its_commit_for_the_bound_app(world: World):
    done = world.deliver(push(C1))
    assert done == w.Delivery("queued", task_id("shop", C1), ())
    assert world.tasks() == [f"{TASKS}b1/shop@{C1}"]
    task = Task.from_bytes(world.server._range(f"{TASKS}b1/shop@{C1}", False).first().value)
    assert task.repo == "team/shop"  # the build hosts clone {repos}/team/shop
    head = w.decode_head(world.server._range(w.branch_key("shop", "main"), False).first())
    assert (head.commit, head.previous) == (C1, "")


def test_duplicates_give_one_task(world: World):
    outcomes = [world.deliver(push(C1)).outcome for _ in range(5)]
    assert outcomes == ["queued"] + ["duplicate"] * 4
    assert world.claims() == [f"shop@{C1}"] and len(world.tasks()) == 1
    assert world.scheduler.stats.submitted == 1


def test_a_newer_push_cancels_the_older_build(world: World):
    world.deliver(push(C1))
    done = world.deliver(push(C2, before=C1))
    assert done == w.Delivery("queued", task_id("shop", C2), (task_id("shop", C1),))
    assert world.tasks() == [f"{TASKS}b1/shop@{C2}"]
    cancelled = world.result(task_id("shop", C1))
    assert cancelled is not None and cancelled.state == "cancelled" and C2 in cancelled.error
    # The old push delivered late neither moves the head back nor queues anything.
    before = world.snapshot()
    late = world.deliver(push(C1))
    assert late.outcome == "duplicate" and world.snapshot() == before
    # Once a third push superseded it, the second one delivered again is a duplicate that writes nothing.
    assert world.deliver(push(C3, before=C2)).cancelled == (task_id("shop", C2),)
    before = world.snapshot()
    assert world.deliver(push(C2, before=C1)).outcome == "duplicate" and world.snapshot() == before


def test_a_force_push_back_to_an_older_commit_moves_the_head_and_cancels_the_newer_build(world: World):
    world.deliver(push(C1))
    world.deliver(push(C2, before=C1))  # C1's build cancelled
    back = world.deliver(push(C1, before=C2))  # force-pushed back: it follows the head, so it is newer
    assert back == w.Delivery("duplicate", task_id("shop", C1), (task_id("shop", C2),))
    head = w.decode_head(world.server._range(w.branch_key("shop", "main"), False).first())
    assert (head.commit, head.before, head.previous) == (C1, C2, C2)
    assert world.tasks() == [] and world.result(task_id("shop", C2)).state == "cancelled"
    assert world.claims() == [f"shop@{C1}", f"shop@{C2}"]  # nothing built again: one build per commit, ever
    before = world.snapshot()
    assert world.deliver(push(C1, before=C2)).outcome == "duplicate" and world.snapshot() == before


def test_a_push_superseded_before_it_was_delivered_is_queued_and_cancelled_at_once(world: World):
    world.deliver(push(C2, before=C1))  # GitLab delivered the second push first
    done = world.deliver(push(C1))
    assert done == w.Delivery("queued", task_id("shop", C1), (task_id("shop", C1),), f"superseded by {C2} on main")
    assert world.claims() == [f"shop@{C1}", f"shop@{C2}"] and world.tasks() == [f"{TASKS}b1/shop@{C2}"]
    assert world.result(task_id("shop", C1)).state == "cancelled"
    before = world.snapshot()
    assert world.deliver(push(C1)).outcome == "duplicate" and world.snapshot() == before
    head = w.decode_head(world.server._range(w.branch_key("shop", "main"), False).first())
    assert head.commit == C2  # the head never moves back


def test_a_finished_build_is_not_cancelled(world: World):
    world.deliver(push(C1))
    task = task_id("shop", C1)
    finished = Result(task, "done", "b1", 1)
    world.run(world.store.txn([], [w.DeleteOp(f"{TASKS}b1/{task}"), w.PutOp(result_key(task), finished.to_bytes())]))
    done = world.deliver(push(C2, before=C1))
    assert done.cancelled == () and world.result(task).state == "done"


def test_a_receiver_killed_after_writing_the_head_is_completed_by_the_redelivery(world: World):
    world.deliver(push(C1))

    class Dies(BuildScheduler):
        async def submit(self, app, commit, *, repo=None):  # the receiver dies before it submits
            raise SystemExit("killed")

    crashed = w.Hooks(world.store, world.rt, Dies(world.store, world.rt))
    with pytest.raises(SystemExit):
        world.run(crashed.deliver({"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
                                   "X-Gitlab-Token": world.secret}, json.dumps(push(C2, before=C1)).encode()))
    assert world.claims() == [f"shop@{C1}"]  # the head moved, nothing was queued yet
    done = world.deliver(push(C2, before=C1))
    assert done == w.Delivery("queued", task_id("shop", C2), (task_id("shop", C1),))
    assert world.claims() == [f"shop@{C1}", f"shop@{C2}"] and world.tasks() == [f"{TASKS}b1/shop@{C2}"]
    assert world.deliver(push(C2, before=C1)).outcome == "duplicate"


# ---- bad input: refused with its status, nothing written


def test_oversized_payload_is_413(world: World):
    world.refused(413, b"{" + b" " * w.MAX_BODY + b"}")


def test_not_json_content_type_is_415(world: World):
    world.refused(415, push(C1), Content_Type="application/x-www-form-urlencoded")


@pytest.mark.parametrize("body", [b"", b"{", b"[1,2]", b"[" * 100_000, b"\xff\xfe", b"null",
                                  json.dumps({"object_kind": "push"}).encode(),
                                  json.dumps({"project": {"path_with_namespace": "../../etc"}}).encode(),
                                  json.dumps({**push(C1), "checkout_sha": 7}).encode(),
                                  json.dumps({**push(C1), "ref": ["refs/heads/main"]}).encode()])
def test_malformed_payloads_are_400(world: World, body: bytes):
    world.refused(400, body)


@pytest.mark.parametrize("token", ["", "wrong", "x" * 5000])
def test_a_wrong_secret_is_401(world: World, token: str):
    world.refused(401, push(C1), X_Gitlab_Token=token)


def test_a_missing_secret_is_401(world: World):
    before = world.snapshot()
    with pytest.raises(w.WrongSecret):
        world.run(world.hooks.deliver({"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook"},
                                      json.dumps(push(C1)).encode()))
    assert world.snapshot() == before


def test_an_unknown_project_is_404(world: World):
    world.refused(404, push(C1, project="team/other"))


def test_a_project_whose_app_is_gone_is_404(world: World):
    world.run(world.store.delete(app_key("shop")))
    world.refused(404, push(C1))


@pytest.mark.parametrize("sha", ["HEAD", "main", "1234567", ("ab" * 20).upper(), C1[:39], C1 + "0", "g" * 40,
                                 " " + C1[1:]])
def test_a_checkout_sha_that_is_not_a_full_commit_id_is_400(world: World, sha: str):
    world.refused(400, {**push(C1), "checkout_sha": sha})


def test_a_deleted_branch_is_ignored(world: World):
    world.ignored(push(None, before=C1))


def test_another_branch_and_tags_are_ignored(world: World):
    world.ignored(push(C1, ref="refs/heads/feature/x"))
    world.ignored(push(C1, ref="refs/tags/v1"))
    world.ignored(push(C1), X_Gitlab_Event="Tag Push Hook")
    world.ignored(push(C1), X_Gitlab_Event="Merge Request Hook")


def test_without_build_agents_the_push_is_503_and_writes_nothing(world: World):
    world.run(world.store.delete(agent_key("b1")))
    world.refused(503, push(C1))


def test_corrupt_records_are_typed(world: World):
    kv = world.server._range(w.project_key(PROJECT), False).first()
    for raw in (b"[", b"{}", json.dumps({**json.loads(kv.value), "app": "Bad App"}).encode(),
                json.dumps({**json.loads(kv.value), "project": "team/other"}).encode(), b"x" * 10_000):
        with pytest.raises(w.InvalidHookRecord):
            w.decode_binding(type(kv)(kv.key, raw, kv.create_revision, kv.mod_revision, kv.version))
    world.run(world.store.put(w.project_key(PROJECT), b"[" * 50_000))
    world.refused(404, push(C1))  # an unreadable binding queues nothing
    world.run(world.store.put(w.branch_key("shop", "main"), b'{"commit": 5}'))
    with pytest.raises(w.InvalidHookRecord):
        w.decode_head(world.server._range(w.branch_key("shop", "main"), False).first())


def test_a_corrupt_branch_head_cancels_nothing_and_is_replaced(world: World):
    world.deliver(push(C1))
    world.run(world.store.put(w.branch_key("shop", "main"), b'{"commit": "' + C3.encode() + b'"}'))
    done = world.deliver(push(C2, before=C1))
    assert done.outcome == "queued" and done.cancelled == ()
    assert w.decode_head(world.server._range(w.branch_key("shop", "main"), False).first()).commit == C2


# ---- bindings and build rights


def test_binding_needs_master_and_records_activity(world: World):
    world.give("dave", "developer")
    before = world.snapshot()
    with pytest.raises(port.PermissionDenied):
        world.run(world.hooks.bind(Principal("dave", "user"), "shop", PROJECT, "main", request_id="r1"))
    with pytest.raises(port.NotFound):
        world.run(world.hooks.bind(Principal("eve", "user"), "shop", PROJECT, "main", request_id="r2"))
    with pytest.raises(port.InvalidArgument):
        world.run(world.hooks.bind(ALICE, "shop", "no-namespace", "main", request_id="r3"))
    with pytest.raises(port.InvalidArgument):
        world.run(world.hooks.bind(ALICE, "shop", PROJECT, "bad..branch", request_id="r4"))
    assert world.snapshot() == before
    records = [json.loads(kv.value) for kv in world.server._range(f"{ACTIVITY}app/shop/", True).kvs]
    assert [(r["action"], r["who"]) for r in records] == [("hook.manage", "alice")]
    # Rebinding rotates the secret: the old one is refused from now on.
    _, fresh = world.run(world.hooks.bind(ALICE, "shop", PROJECT, "release/1", request_id="r5"))
    assert fresh != world.secret
    world.refused(401, push(C1, ref="refs/heads/release/1"))
    world.secret = fresh
    assert world.deliver(push(C1, ref="refs/heads/release/1")).outcome == "queued"
    world.run(world.store.put(app_key("cart"), b"{}"))
    world.run(world.store.put(m.Membership(m.Resource("app", "cart"), "alice", m.Role.OWNER, "ops", 1.7e9).key,
                              m.Membership(m.Resource("app", "cart"), "alice", m.Role.OWNER, "ops", 1.7e9)
                              .to_bytes()))
    with pytest.raises(port.AlreadyExists):
        world.run(world.hooks.bind(ALICE, "cart", "team/SHOP", "main", request_id="r6"))
    world.run(world.hooks.unbind(ALICE, "shop", PROJECT, request_id="r7"))
    world.refused(404, push(C2, ref="refs/heads/release/1"))


def test_build_rights_follow_the_roles(world: World):
    service = BuildService(world.scheduler)
    for user, role in (("gina", "guest"), ("rita", "reporter"), ("dev", "developer")):
        world.give(user, role)
    with pytest.raises(port.PermissionDenied):
        world.run(service.submit(Principal("rita", "user"), "shop", C1))
    with pytest.raises(port.NotFound):
        world.run(service.submit(Principal("nobody", "user"), "shop", C1))
    assert world.run(service.submit(Principal("dev", "user"), "shop", C1)).state == "queued"
    assert world.run(service.get(Principal("rita", "user"), "shop", C1)).state == "queued"
    with pytest.raises(port.PermissionDenied):
        world.run(service.get(Principal("gina", "user"), "shop", C1))
    assert world.run(service.get(ADMIN, "shop", C1)).state == "queued"
    assert world.run(world.scheduler.cancel(task_id("shop", C1), reason="test"))
    assert world.run(service.get(Principal("rita", "user"), "shop", C1)).state == "cancelled"
    assert not world.run(world.scheduler.cancel(task_id("shop", C1)))  # a second cancel: nothing to do
    assert world.tasks() == [] and len(list(world.server._range(RESULTS, True).kvs)) == 1
