"""The build agent: one per build host; registers in etcd, builds the tasks queued for it, one at a time.

It keeps ``/build/agents/{host}`` alive under a lease (the scheduler places tasks only
on registered hosts and moves a dead host's tasks away when the lease expires). It
takes the oldest task under ``/build/tasks/{host}/``, marks it running by
compare-and-swap, runs the Builder's four steps, and finishes with one transaction
that writes ``/build/results/{task}`` and deletes the task, **only if the task is
still the one it marked running**: if the host was taken for dead meanwhile and the
task moved, the late result is dropped and the new host's build counts. A task left
``running`` by a previous life of this agent (the host crashed mid-build) is built
again from the start.

While it builds, the agent watches the running task's key: when the key is deleted (the
scheduler cancelled the build because a newer push superseded it, or moved the task off
this host taken for dead), the build is cancelled at once (the Builder kills its
processes) and nothing of it is written.

Task records are read back from etcd and trusted no more than user input: each is
decoded and validated again (``Task.from_bytes``: a full commit id, never a ref; any
decoding failure, however deep or large, is a ``TaskError``), and its id must be the
one its key names. A task that fails that check is **failed**: a ``failed`` result with
the reason is written under the id its key names and the task is removed, in one
transaction, so whoever waits for it learns why. A key whose name is not a task id at
all cannot be answered: it is set aside (reported once, never built). Neither stops
the agent or the tasks queued behind it.

Metrics (the Metrics port): each step's duration as the Builder reports it and each warm
cache, for every build that completed (also one whose result is then dropped: the work was
done); each result this agent wrote, by state (``done``, ``failed``; a rejected record's
``failed`` too); etcd errors (component ``build-agent``).

It must not know which Store, Builder, runtime or metrics sink is behind the ports.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from foundation.logic.build_task import (
    MAX_TEXT,
    Result,
    Task,
    TaskError,
    agent_key,
    check_host,
    check_task_id,
    echo,
    result_key,
    task_prefix,
)
from foundation.logic.claims import stay_registered
from foundation.ports import Compare, DeleteOp, KeyValue, PutOp, Runtime, Store, StoreError
from foundation.ports.builder import STEPS, Builder, BuildFailed, BuildRequest
from foundation.ports.metrics import (
    BUILD_CACHE_HITS,
    BUILD_RESULTS,
    BUILD_STEP_SECONDS,
    ETCD_ERRORS,
    NO_METRICS,
    Metrics,
)
from foundation.ports.runtime import Cancelled, Event
from foundation.ports.runtime import Task as RuntimeTask

COMPONENT = "build-agent"  # the etcd errors' component label
T = TypeVar("T")


class TaskGone(Exception):
    """The running task's key was deleted while it built: cancelled, or moved to another host."""


@dataclass(frozen=True)
class BuildAgentConfig:
    host: str
    ttl: int = 10  # seconds of silence after which the scheduler moves this host's tasks
    retry: float = 1.0

    def __post_init__(self) -> None:
        check_host(self.host)


@dataclass
class BuildAgentStats:
    built: int = 0
    failed: int = 0
    rejected: int = 0  # task records that failed validation: failed without a build
    dropped: int = 0  # results of tasks that had moved to another host meanwhile
    cancelled: int = 0  # builds stopped because their task was deleted while they ran (cancelled or moved)
    store_errors: int = 0
    unreadable: list[str] = field(default_factory=list)


class BuildAgent:
    def __init__(self, store: Store, builder: Builder, runtime: Runtime, config: BuildAgentConfig,
                 metrics: Metrics = NO_METRICS) -> None:
        self.store = store
        self.builder = builder
        self.runtime = runtime
        self.config = config
        self.metrics = metrics
        self.stats = BuildAgentStats()

    async def run(self) -> None:
        membership = self.runtime.spawn(
            stay_registered(self.store, self.runtime, agent_key(self.config.host),
                            json.dumps({"host": self.config.host}).encode(), ttl=self.config.ttl,
                            retry=self.config.retry, on_store_error=self._etcd_error),
            name=f"build-member/{self.config.host}")
        try:
            while True:
                try:
                    if not await self._build_next():
                        await self._wait_for_tasks()
                except StoreError as exc:
                    self.stats.store_errors += 1
                    self.metrics.inc(ETCD_ERRORS, component=COMPONENT)
                    self.runtime.trace("build-agent-retry", host=self.config.host, error=type(exc).__name__)
                    await self.runtime.sleep(self.config.retry)
        finally:
            membership.cancel()

    def _etcd_error(self) -> None:
        self.metrics.inc(ETCD_ERRORS, component=COMPONENT)

    async def _queued(self) -> tuple[list[tuple[KeyValue, Task]], list[tuple[KeyValue, str, str]], int]:
        """Readable tasks (oldest first), tasks to fail (key, id, why), and the revision read at."""
        found = await self.store.range(task_prefix(self.config.host))
        tasks, rejected = [], []
        for kv in found.kvs:
            name = kv.key.removeprefix(task_prefix(self.config.host))
            try:
                task = Task.from_bytes(kv.value)
                if task.id != name:
                    raise TaskError("task", f"the record is {echo(task.id)}, its key says {echo(name)}")
                tasks.append((kv, task))
            except TaskError as exc:
                try:
                    rejected.append((kv, check_task_id(name), str(exc)))
                except TaskError:  # not even the key names a task: nobody to answer, skip it, say so once
                    if kv.key not in self.stats.unreadable:
                        self.stats.unreadable.append(kv.key)
                        self.runtime.trace("build-task-unreadable", key=echo(kv.key), error=str(exc)[:200])
        # Oldest first; a task this agent left running before a crash goes first of all.
        tasks.sort(key=lambda t: (t[1].state != "running", t[1].submitted_at, t[1].id))
        return tasks, rejected, found.revision

    async def _reject(self, kv: KeyValue, task: str, why: str) -> None:
        """Fail a task whose record does not validate: its result says why; the task goes, in one transaction."""
        result = Result(task, "failed", self.config.host, 1, error=f"invalid task record: {why}"[:1000],
                        finished_at=self.runtime.now())
        done = await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision), Compare.missing(result_key(task))],
                                    [PutOp(result_key(task), result.to_bytes()), DeleteOp(kv.key)])
        if not done.succeeded:  # a result exists already (or the record changed): only the bad copy goes
            await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [DeleteOp(kv.key)])
        else:
            self.metrics.inc(BUILD_RESULTS, result="failed")
        self.stats.rejected += 1
        self.runtime.trace("build-task-rejected", host=self.config.host, task=task, error=why[:200])

    async def _wait_for_tasks(self) -> None:
        tasks, rejected, revision = await self._queued()
        if tasks or rejected:
            return  # one arrived since we last looked (before the watch's start revision)
        async with self.store.watch(task_prefix(self.config.host), start_revision=revision + 1) as watch:
            async for event in watch:
                if event.type == "put":
                    return

    async def _build_next(self) -> bool:
        """Build the oldest queued task; False when there is none."""
        tasks, rejected, _ = await self._queued()
        for bad in rejected:
            await self._reject(*bad)
        if not tasks:
            return bool(rejected)
        kv, task = tasks[0]
        rt = self.runtime
        running = Task(task.app, task.repo, task.commit, task.submitted_at, task.attempt, "running", rt.now(),
                       task.push_secret)
        marked = await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision)],
                                      [PutOp(kv.key, running.to_bytes())])
        if not marked.succeeded:
            return True  # it moved or changed under us: look again
        rt.trace("build-start", host=self.config.host, task=task.id, attempt=task.attempt)
        log: list[str] = []
        try:
            outcome = await self._watched(kv.key, marked.revision, self.builder.build(BuildRequest(
                task.app, task.repo, task.commit,
                f"build${task.id}", task.push_secret), log.append))
            for timing in outcome.steps:
                if timing.step in STEPS:  # the label's fixed set, whatever a Builder reports
                    self.metrics.observe(BUILD_STEP_SECONDS, timing.seconds, step=timing.step)
            if outcome.cache_hit:
                self.metrics.inc(BUILD_CACHE_HITS)
            result = Result(task.id, "done", self.config.host, task.attempt, outcome.image,
                            tuple((s.step, round(s.seconds, 6)) for s in outcome.steps), outcome.cache_hit,
                            submitted_at=task.submitted_at, finished_at=rt.now(), log=_tail(log))
        except TaskGone:
            # Cancelled (a newer push superseded it: the scheduler wrote its result) or moved away: the Builder
            # killed its processes; nothing of this build is written.
            self.stats.cancelled += 1
            rt.trace("build-cancelled", host=self.config.host, task=task.id, attempt=task.attempt)
            return True
        except BuildFailed as exc:
            result = Result(task.id, "failed", self.config.host, task.attempt, error=str(exc)[:MAX_TEXT],
                            submitted_at=task.submitted_at, finished_at=rt.now(), log=_tail(log))
        except Exception as exc:  # a builder bug: this task fails, the agent (and the next host) must not die
            result = Result(task.id, "failed", self.config.host, task.attempt,
                            error=f"builder: {type(exc).__name__}: {exc}"[:1000], submitted_at=task.submitted_at,
                            finished_at=rt.now(), log=_tail(log))
        finished = await self._finish(kv.key, marked.revision, task.id, result)
        if not finished:
            self.stats.dropped += 1
            rt.trace("build-dropped", host=self.config.host, task=task.id)
            return True
        if result.state == "done":
            self.stats.built += 1
        else:
            self.stats.failed += 1
        self.metrics.inc(BUILD_RESULTS, result=result.state)
        rt.trace("build-finished", host=self.config.host, task=task.id, state=result.state,
                 cache_hit=result.cache_hit)
        return True

    async def _watched(self, key: str, revision: int, build: Coroutine[Any, Any, T]) -> T:
        """Run ``build`` while watching the running task's key; when the key is deleted (the scheduler cancelled
        the task, or moved it off this host taken for dead), cancel the build and raise ``TaskGone``."""
        rt = self.runtime
        work = rt.spawn(build, name=f"build/{self.config.host}")
        gone = rt.event()
        watcher = rt.spawn(self._watch_gone(key, revision, work, gone), name=f"build-watch/{self.config.host}")
        try:
            return await work.join()
        except Cancelled:
            if gone.is_set():
                raise TaskGone(key) from None
            raise  # this agent is being stopped
        finally:
            work.cancel()  # no-op once it is done; else the Builder kills its processes
            watcher.cancel()

    async def _watch_gone(self, key: str, revision: int, work: RuntimeTask[Any], gone: Event) -> None:
        """Cancel ``work`` once ``key`` (marked running at ``revision``) is deleted; through etcd errors and
        compactions, by reading the key again before watching on."""
        start = revision + 1
        while not work.done():
            try:
                async with self.store.watch(key, start_revision=start) as watch:
                    async for event in watch:
                        start = event.revision + 1
                        if event.kv.key == key and event.type == "delete":  # a prefix watch: other keys pass by
                            gone.set()
                            work.cancel()
                            return
            except StoreError:  # etcd away, or the start revision compacted: look at the key itself
                await self.runtime.sleep(self.config.retry)
                try:
                    found = await self.store.range(key)
                except StoreError:
                    continue
                if not any(kv.key == key for kv in found.kvs):
                    gone.set()
                    work.cancel()
                    return
                start = found.revision + 1

    async def _finish(self, key: str, running_revision: int, task: str, result: Result) -> bool:
        """Write the result and remove the task, if the task is still ours; True when written.

        Retried through etcd errors while our lease may still hold (the transaction is a CAS,
        so a retry can never write twice): a finished build is not thrown away for a blip.
        """
        give_up = self.runtime.now() + self.config.ttl
        while True:
            try:
                done = await self.store.txn(
                    [Compare.mod_is(key, running_revision), Compare.missing(result_key(task))],
                    [PutOp(result_key(task), result.to_bytes()), DeleteOp(key)])
                if not done.succeeded:
                    # Moved away (nothing to do), or this commit was built elsewhere already:
                    # then only our copy of the task goes, the first result stands.
                    await self.store.txn([Compare.mod_is(key, running_revision)], [DeleteOp(key)])
                return done.succeeded
            except StoreError:
                if self.runtime.now() >= give_up:
                    raise
                await self.runtime.sleep(self.config.retry)


def _tail(log: list[str]) -> tuple[str, ...]:
    """The last 20 lines, each cut to what a result record may hold."""
    return tuple(line[:MAX_TEXT] for line in log[-20:])
