"""The build scheduler of the control service: place build tasks on live build agents, move them when one dies.

``submit`` validates (app, repo, commit) and, in one transaction that claims the
task's id (``/build/ids/{task}``: a commit is queued once, ever), writes the task under
the first live agent of the repo's rendezvous order
(``foundation.logic.build_task.rank_hosts``: same repo, same host, warm cache). A commit
whose build failed stays failed: builds are reproducible, the retry is a new commit.
``wait`` returns the result once an agent wrote it. ``reassign_forever`` runs beside
the service: every ``every`` seconds it moves each task whose host is no longer
registered (its lease expired: the host died or lost etcd) to the next live host of
its repo's order, by compare-and-swap, with ``attempt`` + 1 and a fresh ``push_secret``
(the Runtime's ``secret_hex``; the old attempt's secret gets no registry token any more:
``control.build_credentials``, the fence against a zombie agent's push). A task never exists on two
hosts: the move deletes the old key in the transaction that writes the new one, and an
agent writes a result only while none exists.

A commit is a full commit id (``foundation.logic.build_task.COMMIT``), never a ref: a
ref is resolved by whoever submits, once, so that what is built, tagged and deduplicated
is one tree. Records read back from etcd are checked again: an unreadable task is left
where it is (the agent on its host fails it), an unreadable result or claim is a
``CorruptRecord`` (INTERNAL) for that one build, and an agent key whose name is not a
host name is ignored; none of them stops the reassigner or another build.

Who may do what (the members table, ``control.members``): queueing a build of an app needs
``build.trigger`` on it (Developer and above), reading one ``build.read`` (Reporter and
above); admins may do both on every app; every principal may list the agents.
``BuildService`` checks that and answers the gRPC surface. ``cancel`` (a newer push to the
same branch supersedes a build: ``control.webhooks``) deletes the task wherever it is queued
or running and writes its ``cancelled`` result in one transaction; the agent building it
watches its task and stops the build when the task is gone.

Metrics (the Metrics port): the reassigner's read of every task, done every ``every``
seconds anyway, sets the tasks queued and running (the scheduler's view, whichever host
holds them; an unreadable record is not counted); each task moved off a dead host is
counted; its etcd errors count under component ``build-scheduler``.

It must not know gRPC, etcd clients, Prometheus or the runtime behind the ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control.auth import Principal
from control.members import Action, Resource, authorize, load_memberships
from foundation.logic.build_task import (
    AGENTS,
    TASKS,
    Result,
    Task,
    TaskError,
    check_host,
    check_task_id,
    echo,
    id_key,
    rank_hosts,
    result_key,
    task_id,
    task_key,
)
from foundation.ports import Compare, DeleteOp, GetOp, PutOp, RangeResult, Runtime, Store, StoreError
from foundation.ports import control as port
from foundation.ports.metrics import (
    BUILD_TASKS_MOVED,
    BUILD_TASKS_QUEUED,
    BUILD_TASKS_RUNNING,
    ETCD_ERRORS,
    NO_METRICS,
    Metrics,
)

COMPONENT = "build-scheduler"  # the etcd errors' component label


class BuildError(port.ControlError):
    """A refused build call; the subclass is the control port's error of the same status."""


class NoBuildAgents(BuildError, port.Unavailable):
    """No build agent is registered: nothing can build (a gRPC UNAVAILABLE)."""


class NotFound(BuildError, port.NotFound):
    pass


class PermissionDenied(BuildError, port.PermissionDenied):
    pass


class CorruptRecord(BuildError, port.CorruptRecord):
    """A stored build record does not parse (an INTERNAL error: not the caller's fault)."""


@dataclass
class SchedulerStats:
    submitted: int = 0
    duplicates: int = 0  # submits of a commit already queued or built
    moved: int = 0


class BuildScheduler:
    def __init__(self, store: Store, runtime: Runtime, *, every: float = 2.0, metrics: Metrics = NO_METRICS) -> None:
        self.store = store
        self.runtime = runtime
        self.every = every
        self.metrics = metrics
        self.stats = SchedulerStats()

    async def agents(self) -> list[str]:
        return self._hosts((await self.store.range(AGENTS)).kvs)

    def _hosts(self, kvs: Any) -> list[str]:
        """Registered hosts: keys under /build/agents/ whose name is a host name (others are someone's garbage)."""
        hosts = []
        for kv in kvs:
            name = kv.key.removeprefix(AGENTS)
            try:
                hosts.append(check_host(name))
            except TaskError:
                self.runtime.trace("build-agent-key-ignored", key=echo(kv.key))
        return sorted(hosts)

    async def submit(self, app: str, commit: str, *, repo: str | None = None) -> str:
        """Queue a build of ``commit`` of ``app``; returns the task id (``TaskError`` names a bad field)."""
        task = Task.parse({"app": app, "repo": repo or app, "commit": commit, "submitted_at": self.runtime.now(),
                           "push_secret": self.runtime.secret_hex()})
        if await self.store.get(id_key(task.id)) is not None:  # queued or built already (agents or not)
            self.stats.duplicates += 1
            return task.id
        hosts = await self.agents()
        if not hosts:
            raise NoBuildAgents("no build agent is registered under /build/agents/")
        host = rank_hosts(task.repo, hosts)[0]
        written = await self.store.txn([Compare.missing(id_key(task.id))],
                                       [PutOp(id_key(task.id), host.encode()),
                                        PutOp(task_key(host, task.id), task.to_bytes())])
        if written.succeeded:
            self.stats.submitted += 1
            self.runtime.trace("build-submitted", task=task.id, host=host)
        else:
            self.stats.duplicates += 1
        return task.id

    async def result(self, app: str, commit: str) -> Result | None:
        task = check_task_id(task_id(app, commit))
        kv = await self.store.get(result_key(task))
        return _result(task, kv.value) if kv is not None else None

    async def wait(self, task: str, *, timeout: float) -> Result | None:
        """The task's result, waiting up to ``timeout`` seconds for it (None: not finished by then)."""
        deadline = self.runtime.now() + timeout
        key = result_key(task)
        while True:
            try:
                read = await self.store.txn([], [GetOp(key)])
            except StoreError:  # etcd away for a moment: the build goes on, keep waiting
                if self.runtime.now() >= deadline:
                    return None
                await self.runtime.sleep(min(self.every, max(0.0, deadline - self.runtime.now())))
                continue
            found = read.responses[0]
            if isinstance(found, RangeResult) and found.kvs:
                return _result(task, found.kvs[0].value)
            left = deadline - self.runtime.now()
            if left <= 0:
                return None
            try:
                async with self.store.watch(key, start_revision=read.revision + 1) as watch:
                    event = await self.runtime.wait_for(watch.__anext__(), left)
                    if event.type == "put":
                        return _result(task, event.kv.value)
            except TimeoutError:
                return None
            except StopAsyncIteration:
                pass  # the watch ended (etcd restarted): read again
            except StoreError:
                await self.runtime.sleep(min(self.every, max(0.0, deadline - self.runtime.now())))

    async def cancel(self, task: str, *, reason: str = "") -> bool:
        """Cancel a build still queued or running: one transaction deletes its task and writes its ``cancelled``
        result, compared against the claim, the task and the absence of a result as read. False when there
        was nothing to cancel (no such build, or it finished: a result stands)."""
        task = check_task_id(task)
        for _ in range(8):
            read = await self.store.txn([], [GetOp(id_key(task)), GetOp(result_key(task))])
            claim, result = (r.kvs[0] if isinstance(r, RangeResult) and r.kvs else None for r in read.responses)
            if claim is None or result is not None:
                return False
            try:
                host = check_host(claim.value.decode("utf-8", errors="replace"))
            except TaskError as exc:
                raise CorruptRecord(f"the claim of {task} is unreadable: {exc}") from None
            kv = await self.store.get(task_key(host, task))
            if kv is None:
                continue  # it moved or finished between the two reads: read again
            try:
                queued = Task.from_bytes(kv.value)
                attempt, submitted_at = queued.attempt, queued.submitted_at
            except TaskError:  # an unreadable task is cancelled all the same: its result says so
                attempt, submitted_at = 1, 0.0
            cancelled = Result(task, "cancelled", host, attempt, error=(reason or "cancelled")[:1000],
                               submitted_at=submitted_at, finished_at=self.runtime.now())
            done = await self.store.txn([Compare.mod_is(id_key(task), claim.mod_revision),
                                         Compare.mod_is(kv.key, kv.mod_revision), Compare.missing(result_key(task))],
                                        [DeleteOp(kv.key), PutOp(result_key(task), cancelled.to_bytes())])
            if done.succeeded:
                self.runtime.trace("build-cancelled", task=task, host=host, attempt=attempt)
                return True
        raise port.Conflict(f"the build of {task} kept changing while being cancelled; try again")

    async def reassign_once(self) -> int:
        """Move every task queued on a host that is not registered; returns how many moved."""
        # One read of both: a host that registers between two reads would lose its tasks for nothing.
        read = await self.store.txn([], [GetOp(AGENTS, prefix=True), GetOp(TASKS, prefix=True)])
        agents, tasks = (r if isinstance(r, RangeResult) else RangeResult((), 0) for r in read.responses)
        live = self._hosts(agents.kvs)
        self._count_tasks(tasks.kvs)
        moved = 0
        for kv in tasks.kvs:
            host, _, name = kv.key.removeprefix(TASKS).partition("/")
            if host in live or not live:
                continue
            try:  # one bad record is skipped; it never stops the moves of the others
                task = Task.from_bytes(kv.value)
                if task.id != check_task_id(name):
                    raise TaskError("task", f"the record is {echo(task.id)}, its key says {echo(name)}")
            except TaskError as exc:
                self.runtime.trace("build-task-unreadable", key=echo(kv.key), error=str(exc)[:200])
                continue  # left where it is for an operator (the agent of a live host fails it)
            target = rank_hosts(task.repo, live)[0]
            # A fresh push secret: the agent that lost the task (frozen, cut off) gets no registry token with the old.
            moved_task = Task(task.app, task.repo, task.commit, task.submitted_at, task.attempt + 1,
                              push_secret=self.runtime.secret_hex())
            done = await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision)],
                                        [DeleteOp(kv.key), PutOp(task_key(target, name), moved_task.to_bytes()),
                                         PutOp(id_key(name), target.encode())])
            if done.succeeded:
                moved += 1
                self.stats.moved += 1
                self.metrics.inc(BUILD_TASKS_MOVED)
                self.runtime.trace("build-moved", task=name, came_from=host, to=target, attempt=moved_task.attempt)
        return moved

    def _count_tasks(self, kvs: Any) -> None:
        """Set the queued and running gauges from one read of every task (unreadable records are not counted)."""
        counts = {"queued": 0, "running": 0}
        for kv in kvs:
            try:
                counts[Task.from_bytes(kv.value).state] += 1
            except (TaskError, KeyError):
                continue
        self.metrics.set(BUILD_TASKS_QUEUED, counts["queued"])
        self.metrics.set(BUILD_TASKS_RUNNING, counts["running"])

    async def reassign_forever(self) -> None:
        # The counter exists from the start at 0: a rate or increase() over it sees the first move
        # (a series born at 1 has no earlier sample to count from, and an alert on it never fires).
        self.metrics.inc(BUILD_TASKS_MOVED, 0)
        while True:
            try:
                await self.reassign_once()
            except Exception as exc:  # etcd away, or a record nobody expected: try again, never stop moving
                if isinstance(exc, StoreError):
                    self.metrics.inc(ETCD_ERRORS, component=COMPONENT)
                self.runtime.trace("build-reassign-failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await self.runtime.sleep(self.every)


@dataclass(frozen=True)
class BuildState:
    """A build as a caller sees it: queued or running somewhere, or finished (``result``)."""

    task: str
    state: str  # queued | running | done | failed | cancelled
    host: str
    attempt: int
    submitted_at: float
    result: Result | None = None
    steps: tuple[tuple[str, float], ...] = field(default=())


class BuildService:
    """The build calls of the control service: who may do what, and one view of a build."""

    def __init__(self, scheduler: BuildScheduler) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store

    async def submit(self, who: Principal, app: str, commit: str, repo: str = "") -> BuildState:
        Task.parse({"app": app, "repo": repo or app, "commit": commit})  # TaskError names a bad field first
        await self._authorize(who, Action.BUILD_TRIGGER, app)
        task = await self.scheduler.submit(app, commit, repo=repo or None)
        return await self._state(task)

    async def get(self, who: Principal, app: str, commit: str) -> BuildState:
        Task.parse({"app": app, "commit": commit})  # TaskError names a bad field before any read
        await self._authorize(who, Action.BUILD_READ, app)
        return await self._state(task_id(app, commit))

    async def _authorize(self, who: Principal, action: Action, app: str) -> None:
        """Admins always; a user by its role on the app (no member: NotFound, too low: PermissionDenied)."""
        if who.is_admin:
            return
        resource = Resource("app", app)
        authorize(who, action, resource, await load_memberships(self.store, resource))

    async def agents(self, who: Principal) -> list[str]:
        return await self.scheduler.agents()

    async def _state(self, task: str) -> BuildState:
        for _ in range(3):  # a task that finishes or moves between our two reads: read again
            read = await self.store.txn([], [GetOp(result_key(task)), GetOp(id_key(task))])
            result, placed = (r if isinstance(r, RangeResult) else RangeResult((), 0) for r in read.responses)
            if result.kvs:
                done = _result(task, result.kvs[0].value)
                return BuildState(task, done.state, done.host, done.attempt, done.submitted_at, done, done.steps)
            if not placed.kvs:
                raise NotFound(f"no build of {task}")
            try:
                host = check_host(placed.kvs[0].value.decode("utf-8", errors="replace"))
                kv = await self.store.get(task_key(host, task))
                queued = Task.from_bytes(kv.value) if kv is not None else None
                if queued is not None and queued.id != task:
                    raise TaskError("task", f"the record is {echo(queued.id)}")
            except TaskError as exc:
                raise CorruptRecord(f"the stored build of {task} is unreadable: {exc}") from None
            if queued is not None:
                return BuildState(task, queued.state, host, queued.attempt, queued.submitted_at)
        raise CorruptRecord(f"{task} is claimed but neither queued nor finished (a task was deleted by hand?)")


def _result(task: str, raw: bytes) -> Result:
    """The result record of ``task`` read back from etcd; anything wrong with it is a ``CorruptRecord``."""
    try:
        result = Result.from_bytes(raw)
    except TaskError as exc:
        raise CorruptRecord(f"the stored result of {task} is unreadable: {exc}") from None
    if result.task != task:
        raise CorruptRecord(f"the stored result of {task} is for {echo(result.task)}")
    return result


__all__ = ["BuildError", "BuildScheduler", "BuildService", "BuildState", "CorruptRecord", "NoBuildAgents", "NotFound",
           "PermissionDenied", "TaskError"]
