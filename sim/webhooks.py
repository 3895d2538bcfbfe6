"""GitLab and the control service's hook receiver in a simulated Region: pushes, Push Hooks, duplicates, crashes.

For a scenario with a ``pushes:`` block (sim/scenario_pushes.py) the world builds one
``Webhooks``. At boot it binds each pushed app's GitLab project ``sim/{app}`` and its first
pushed branch (pushes to its other branches are delivered and ignored) to the app through
``control.webhooks.Hooks.bind`` (as the Region's admin; retried until the platform has
created the app, whose record a binding needs). At each push it makes a
new commit (``push_commit``: 40 hex, stable per app, branch and push number) and GitLab
delivers a Push Hook (the payload and headers GitLab sends) to the receiver, the control
service's own ``Hooks.deliver`` over its own etcd client, in-process, with the farm's
``BuildScheduler`` as its queue.

The two fault kinds act here (sim/faults.py switches them on and off):

* ``webhook-duplicate``: while it lasts, each Push Hook of a selected app is delivered
  ``deliveries`` times: half of the copies at the same instant (they race one another),
  the rest within ``DUPLICATE_SPREAD`` seconds after (they find the commit claimed);
* ``webhook-receiver-crash``: while it lasts, each delivery kills the receiver: *before its
  first write* (nothing written) or *after one of its writes* (the branch head, the
  scheduler's claim and task, the cancel of the superseded build: write ``k`` drawn in 1..3;
  a delivery with fewer writes dies after its last one, before answering). ``crash_point``
  picks which (``either``: drawn per delivery). The receiver dies inside the real code: its
  Store and its queue are wrapped so that the chosen write raises ``ReceiverDied`` just
  before it is sent or just after it is answered. GitLab got no answer: it delivers the
  same hook again ``redeliver_after`` seconds later, as often as it takes (at most
  ``MAX_ATTEMPTS`` times).

A 5xx answer (etcd away, no build agent, a busy branch) is retried the same way; a 4xx is
final. Every delivery is recorded (``DeliverySeen``) with the receiver's answer time, and
every task a delivery answered ``queued`` joins the farm's builds (so ``builds-finish``
waits for it too). Draws (which copies race, where a receiver dies) come from a stream of
their own (``seeded_stream(seed, "webhooks")``): a Region without pushes draws nothing and
runs exactly as before. Secrets never reach a trace or the report.
It must not know the checks or the report, nor import real adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from control.webhooks import BuildQueue, Delivery, DeliveryError, Hooks
from foundation.ports import Compare, DeleteOp, PutOp, Store, StoreError, TxnResult
from foundation.ports import control as port
from foundation.ports.store import TxnOp
from sim.adapters.runtime import SimRuntime, seeded_stream
from sim.adapters.store import SimStoreClient
from sim.farm import BuildSeen, Farm
from sim.metrics import percentile
from sim.spec import FaultSpec, PushSpec
from sim.topology import ADMIN

ZERO = "0" * 40  # GitLab's "before" of a branch's first push
DUPLICATE_SPREAD = 5.0  # seconds over which the later copies of a duplicated hook arrive
BIND_RETRY = 5.0  # seconds between tries to bind a project whose app does not exist yet
RETRY_5XX = 10.0  # GitLab's delay before it delivers a hook again after a 5xx answer (no crash fault)
MAX_ATTEMPTS = 50  # deliveries of one hook copy before GitLab gives up (disables the hook)
MAX_WRITES = 3  # a delivery writes the branch head, submits (claim + task), cancels the superseded build


def push_commit(app: str, branch: str, n: int) -> str:
    """The commit id of the ``n``-th push to ``app``'s ``branch``: a stable 40-hex name, as git would give one."""
    return hashlib.sha1(f"{app} {branch} push {n}".encode()).hexdigest()


def project_of(app: str) -> str:
    """The GitLab project of an app of the Region (``path_with_namespace``)."""
    return f"sim/{app}"


class ReceiverDied(Exception):
    """The receiver process died (webhook-receiver-crash) at the chosen point of a delivery."""


@dataclass(frozen=True)
class Hook:
    """One Push Hook as GitLab sends it (its redeliveries and duplicates are the very same bytes)."""

    app: str
    branch: str
    commit: str
    number: int  # the push's number on its branch (1, 2, ...)
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class DeliverySeen:
    at: float
    app: str
    commit: str
    copy: int  # 0: the hook; 1..: its duplicates
    attempt: int  # 1: the first delivery of this copy; 2..: GitLab's redeliveries
    status: int  # HTTP status answered; 0: no answer (the receiver died)
    outcome: str  # queued | duplicate | ignored | refused | died-before-write | died-after-write-N | died-before-answer
    task: str = ""
    seconds: float = 0.0  # from the request to the answer (0 without one)


@dataclass
class _Crash:
    point: str  # before-txn | after-txn | either
    redeliver_after: float


@dataclass
class _Duplicate:
    apps: frozenset[str]
    deliveries: int


class _Dying:
    """Counts one delivery's writes and kills it at the chosen one (``die_before``: before write 1)."""

    def __init__(self, die_before: bool, after_write: int) -> None:
        self.die_before = die_before
        self.after_write = after_write
        self.writes = 0
        self.where = "died-before-answer"  # every write done (or none needed): it dies before it answers

    def before(self) -> None:
        if self.die_before:
            self.where = "died-before-write"
            raise ReceiverDied("before its first write")

    def after(self) -> None:
        self.writes += 1
        if not self.die_before and self.writes == self.after_write:
            self.where = f"died-after-write-{self.writes}"
            raise ReceiverDied(f"after write {self.writes}")


class _DyingStore:
    """The receiver's Store, dying before or after a write transaction (reads pass through)."""

    def __init__(self, store: SimStoreClient, dying: _Dying) -> None:
        self._store = store
        self._dying = dying

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def txn(self, compares: Sequence[Compare], success: Sequence[TxnOp],
                  failure: Sequence[TxnOp] | None = None) -> TxnResult:
        writes = any(isinstance(op, PutOp | DeleteOp) for op in (*success, *(failure or ())))
        if writes:
            self._dying.before()
        result = await self._store.txn(compares, success, failure)
        if writes and result.succeeded:
            self._dying.after()
        return result


class _DyingQueue:
    """The scheduler as the dying receiver calls it: each submit or cancel is one write (the claim, the cancel)."""

    def __init__(self, queue: BuildQueue, dying: _Dying) -> None:
        self._queue = queue
        self._dying = dying

    async def submit(self, app: str, commit: str, *, repo: str | None = None) -> str:
        self._dying.before()
        task = await self._queue.submit(app, commit, repo=repo)
        self._dying.after()
        return task

    async def cancel(self, task: str, *, reason: str = "") -> bool:
        self._dying.before()
        done = await self._queue.cancel(task, reason=reason)
        self._dying.after()
        return done


ReceiverFactory = Callable[[Store, BuildQueue], Any]  # (store, queue) -> an object with Hooks' ``deliver``


class Webhooks:
    def __init__(self, runtime: SimRuntime, seed: int, pushes: tuple[PushSpec, ...], client: SimStoreClient,
                 farm: Farm, duration: float, *, receiver: ReceiverFactory | None = None) -> None:
        assert farm.scheduler is not None, "pushes need build hosts (the parser says so)"
        self.runtime = runtime
        self.draws = seeded_stream(seed, "webhooks")
        self.pushes = pushes
        self.client = client  # the receiver's etcd client (the control service's)
        self.farm = farm
        self.queue: BuildQueue = farm.scheduler
        self.duration = duration
        # The receiver as the control service runs it; a test may hand in another (a broken one).
        self.make_receiver: ReceiverFactory = receiver or (lambda store, queue: Hooks(store, runtime, queue))
        self.secrets: dict[str, str] = {}  # app -> its project hook's secret (never traced)
        self.crashes: list[_Crash] = []  # webhook-receiver-crash faults in force
        self.duplicates: list[_Duplicate] = []  # webhook-duplicate faults in force
        self.deliveries: list[DeliverySeen] = []
        self.hooks: list[Hook] = []  # every push's hook, in order
        self.answered: dict[str, str] = {}  # task -> the first outcome answered for it (queued | duplicate)
        self.given_up = 0  # hook copies GitLab stopped delivering (MAX_ATTEMPTS, or the run ended)

    # ------------------------------------------------------------------ faults (sim/faults.py)
    def crash_receiver(self, fault: FaultSpec) -> _Crash:
        crash = _Crash(fault.crash_point, fault.redeliver_after)
        self.crashes.append(crash)
        return crash

    def mend_receiver(self, crash: _Crash) -> None:
        self.crashes.remove(crash)

    def duplicate(self, apps: list[str], deliveries: int) -> _Duplicate:
        dup = _Duplicate(frozenset(apps), deliveries)
        self.duplicates.append(dup)
        return dup

    def stop_duplicating(self, dup: _Duplicate) -> None:
        self.duplicates.remove(dup)

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        self.runtime.spawn(self._run(), name="region/gitlab")

    async def _run(self) -> None:
        bound: dict[str, str] = {}  # app -> the branch its project's hook is bound to: its first pushed
        for push in self.pushes:
            bound.setdefault(push.app, push.branch)
        for app, branch in bound.items():
            await self._bind(app, branch)
        for i, push in enumerate(self.pushes):
            self.runtime.spawn(self._pusher(push), name=f"region/pushes-{i}")

    async def _bind(self, app: str, branch: str) -> None:
        """Bind the app's project and branch (the app's Master would, once): retried until the app exists."""
        hooks = Hooks(self.client, self.runtime, self.queue)
        while True:
            try:
                _, secret = await hooks.bind(ADMIN, app, project_of(app), branch, request_id=f"sim-bind-{app}")
                self.secrets[app] = secret
                return
            except (StoreError, port.ControlError) as exc:  # the platform has not created the app yet, etcd away
                self.runtime.trace("hook-bind-retry", app=app, error=type(exc).__name__)
                await self.runtime.sleep(BIND_RETRY)

    async def _pusher(self, push: PushSpec) -> None:
        rt = self.runtime
        at = push.at
        while at < self.duration:
            await rt.sleep(max(0.0, at - rt.now()))
            self._send(self._hook(push.app, push.branch))
            if push.every is None:
                return
            at += push.every

    def _hook(self, app: str, branch: str) -> Hook:
        number = 1 + sum(1 for h in self.hooks if h.app == app and h.branch == branch)
        commit = push_commit(app, branch, number)
        before = push_commit(app, branch, number - 1) if number > 1 else ZERO
        project = project_of(app)
        payload = {
            "object_kind": "push", "event_name": "push", "before": before, "after": commit,
            "ref": f"refs/heads/{branch}", "checkout_sha": commit, "user_username": "sim-developer",
            "project": {"path_with_namespace": project, "default_branch": "main",
                        "git_http_url": f"https://gitlab.sim/{project}.git"},
            "commits": [{"id": commit, "message": f"push {number}", "timestamp": self.runtime.wall_time()}],
            "total_commits_count": 1,
        }
        headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
                   "X-Gitlab-Token": self.secrets.get(app, ""),
                   "X-Gitlab-Event-UUID": hashlib.sha1(f"{project} {commit}".encode()).hexdigest()}
        hook = Hook(app, branch, commit, number, headers, json.dumps(payload, sort_keys=True).encode())
        self.hooks.append(hook)
        self.runtime.trace("git-push", app=app, branch=branch, commit=commit)
        return hook

    def _send(self, hook: Hook) -> None:
        copies = max((d.deliveries for d in self.duplicates if hook.app in d.apps), default=1)
        racing = math.ceil(copies / 2)  # these arrive together; the others within DUPLICATE_SPREAD
        for copy in range(copies):
            delay = 0.0 if copy < racing else round(self.draws.uniform(0.0, DUPLICATE_SPREAD), 3)
            self.runtime.spawn(self._deliver(hook, copy, delay), name=f"region/hook-{hook.app}-{copy}")

    async def _deliver(self, hook: Hook, copy: int, delay: float) -> None:
        """Deliver one copy until the receiver answers (a crash or a 5xx: again after a delay)."""
        rt = self.runtime
        if delay:
            await rt.sleep(delay)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            wait = RETRY_5XX
            dying: _Dying | None = None
            if self.crashes:
                crash = self.crashes[-1]
                point = crash.point if crash.point != "either" else \
                    ("before-txn" if self.draws.random() < 0.5 else "after-txn")
                dying = _Dying(point == "before-txn", self.draws.randint(1, MAX_WRITES))
                wait = crash.redeliver_after
            seen = await self._one(hook, copy, attempt, dying)
            self.deliveries.append(seen)
            if seen.status and seen.status < 500:
                return
            if rt.now() + wait >= self.duration:
                break
            await rt.sleep(wait)
        self.given_up += 1

    async def _one(self, hook: Hook, copy: int, attempt: int, dying: _Dying | None) -> DeliverySeen:
        rt = self.runtime
        start = rt.now()
        store: Store = self.client if dying is None else cast(Store, _DyingStore(self.client, dying))
        queue: BuildQueue = self.queue if dying is None else _DyingQueue(self.queue, dying)
        receiver = self.make_receiver(store, queue)
        try:
            delivery: Delivery = await receiver.deliver(hook.headers, hook.body)
            if dying is not None:  # every write done: it dies before it answers
                raise ReceiverDied(f"after write {dying.writes}, before answering")
        except ReceiverDied:
            where = dying.where if dying is not None else "died"
            rt.trace("hook-receiver-died", app=hook.app, commit=hook.commit, where=where)
            return DeliverySeen(start, hook.app, hook.commit, copy, attempt, 0, where)
        except DeliveryError as exc:
            return DeliverySeen(start, hook.app, hook.commit, copy, attempt, exc.status, "refused",
                                seconds=rt.now() - start)
        except (StoreError, port.ControlError) as exc:  # etcd away, no agent, a busy build: the HTTP layer's 5xx
            rt.trace("hook-delivery-failed", app=hook.app, commit=hook.commit, error=type(exc).__name__)
            return DeliverySeen(start, hook.app, hook.commit, copy, attempt, 503, "refused",
                                seconds=rt.now() - start)
        if delivery.outcome in ("queued", "duplicate") and delivery.task:
            self.answered.setdefault(delivery.task, delivery.outcome)
            self.farm.builds.setdefault(delivery.task, BuildSeen(rt.now()))
        return DeliverySeen(start, hook.app, hook.commit, copy, attempt, 200, delivery.outcome, delivery.task,
                            rt.now() - start)

    # ------------------------------------------------------------------ what it shows
    def metrics(self) -> dict[str, Any]:
        d = self.deliveries
        answered = sorted(s.seconds for s in d if s.status)
        outcomes = [s.outcome for s in d]
        return {"hooks_pushed": len(self.hooks), "hooks_delivered": len(d),
                "hooks_queued": outcomes.count("queued"), "hooks_duplicate": outcomes.count("duplicate"),
                "hooks_ignored": outcomes.count("ignored"),
                "hooks_refused": outcomes.count("refused"),
                "hooks_receiver_died": sum(1 for s in d if not s.status),
                "hooks_given_up": self.given_up,
                "hook_answer_p50": percentile(answered, 0.5, 4),
                "hook_answer_max": round(answered[-1], 4) if answered else 0.0}


__all__ = ["DUPLICATE_SPREAD", "DeliverySeen", "Hook", "ReceiverDied", "Webhooks", "project_of", "push_commit"]
