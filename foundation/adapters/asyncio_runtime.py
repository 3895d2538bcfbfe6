"""The real Runtime adapter: asyncio, the wall clock and one seeded random source.

It is deliberately thin: agents get exactly asyncio's semantics for sleeping,
tasks, cancellation and timeouts. The seed makes the agents' random choices
repeatable even in the real runtime (I/O timing still varies, of course).

One thing asyncio does not do and the port promises (parity with the sim runtime):
a spawned task that fails while no other task awaits its ``join()`` is **not**
silent. It is logged at once (ERROR, with its traceback, logger
``leengine.runtime``), recorded, and ``raise_unjoined_failures()`` /
``run_until_complete()`` raise ``TaskFailed`` for it, as the sim runtime does; a
daemon passes ``on_task_failed`` to stop at once and exit non-zero. A join after
the failure still gets the error and clears the record. Cancellation is no failure.

It must not know any agent, store or daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from foundation.ports.runtime import TaskFailed

T = TypeVar("T")
log = logging.getLogger("leengine.trace")
failures_log = logging.getLogger("leengine.runtime")


class AsyncioTask(Generic[T]):
    __slots__ = ("_joiners", "_task", "observed")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self._task = task
        self._joiners = 0  # tasks inside join() now: a failure they will see is not "unjoined"
        self.observed = False  # someone got the outcome through join()

    @property
    def name(self) -> str:
        return self._task.get_name()

    @property
    def error(self) -> BaseException | None:
        """The exception the finished task raised (None while running, on success or cancellation)."""
        if not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    async def join(self) -> T:
        self._joiners += 1
        try:
            return await self._task
        finally:
            self._joiners -= 1
            if self._task.done():
                self.observed = True


class AsyncioQueue(asyncio.Queue[T]):
    def get_nowait(self) -> T:
        try:
            return super().get_nowait()
        except asyncio.QueueEmpty:
            # The port promises IndexError so agent code need not know asyncio's exception.
            raise IndexError("queue is empty") from None


class AsyncioEvent:
    """``asyncio.Event`` as the port's ``Event``: its ``wait()`` returns None, not True."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class AsyncioRuntime:
    name = "asyncio"

    def __init__(self, seed: int | None = None, *,
                 on_task_failed: Callable[[AsyncioTask[Any]], None] | None = None) -> None:
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self.random = random.Random(self.seed)
        # Keep strong references: asyncio holds tasks only weakly.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed: list[AsyncioTask[Any]] = []
        self._on_task_failed = on_task_failed

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_time(self) -> float:
        return time.time()

    def secret_hex(self, nbytes: int = 16) -> str:
        # The OS's CSPRNG: the seeded Mersenne Twister in ``random`` can be predicted from its outputs.
        return secrets.token_hex(nbytes)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> AsyncioTask[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        wrapper = AsyncioTask(task)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(wrapper, done))
        return wrapper

    def queue(self) -> AsyncioQueue[Any]:
        return AsyncioQueue()

    def event(self) -> AsyncioEvent:
        return AsyncioEvent()

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        return await asyncio.wait_for(awaitable, timeout)

    def trace(self, what: str, /, **fields: object) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))

    # ---- failed tasks nobody awaits (the sim runtime's TaskFailed, see the module docstring)
    def _finished(self, wrapper: AsyncioTask[Any], task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Runs before the callbacks of tasks awaiting it (ours was added first), so a joiner
        # still counts. exception() also tells asyncio the error was retrieved: we report it.
        if task.cancelled() or (exc := task.exception()) is None or wrapper._joiners:
            return
        self._failed.append(wrapper)
        failures_log.error("task %s failed and no task awaits it", wrapper.name, exc_info=exc)
        self.trace("task-failed", task=wrapper.name, error=type(exc).__name__)
        if self._on_task_failed is not None:
            self._on_task_failed(wrapper)

    def raise_unjoined_failures(self) -> None:
        """Raise ``TaskFailed`` if a task failed and nobody has joined it since."""
        TaskFailed.raise_first([(t.name, t.error) for t in self._failed if not t.observed and t.error is not None])

    def run_until_complete(self, coro: Coroutine[Any, Any, T], *, limit: float | None = None) -> T:
        """Run ``coro`` as the main task on a new event loop; return its result or raise its error.

        As the sim runtime's: ``TaskFailed`` first if another task failed unjoined,
        ``TimeoutError`` if ``limit`` seconds pass first.
        """
        return asyncio.run(self._main(coro, limit))

    async def _main(self, coro: Coroutine[Any, Any, T], limit: float | None) -> T:
        main = self.spawn(coro, name="main")
        try:
            result = await (main.join() if limit is None else asyncio.wait_for(main.join(), limit))
        except BaseException:
            self.raise_unjoined_failures()
            raise
        self.raise_unjoined_failures()
        return result
