"""The real Runtime adapter: asyncio, the wall clock and one seeded random source.

It is deliberately thin: agents get exactly asyncio's semantics for sleeping,
tasks, cancellation and timeouts. The seed makes the agents' random choices
repeatable even in the real runtime (I/O timing still varies, of course).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("leengine.trace")


class AsyncioTask:
    __slots__ = ("_task",)

    def __init__(self, task: asyncio.Task) -> None:
        self._task = task

    @property
    def name(self) -> str:
        return self._task.get_name()

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    async def join(self) -> Any:
        return await self._task


class AsyncioQueue(asyncio.Queue):
    def get_nowait(self) -> Any:
        try:
            return super().get_nowait()
        except asyncio.QueueEmpty:
            # The port promises IndexError so agent code need not know asyncio's exception.
            raise IndexError("queue is empty") from None


class AsyncioRuntime:
    name = "asyncio"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self.random = random.Random(self.seed)
        # Keep strong references: asyncio holds tasks only weakly.
        self._tasks: set[asyncio.Task] = set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> AsyncioTask:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return AsyncioTask(task)

    def queue(self) -> AsyncioQueue:
        return AsyncioQueue()

    def event(self) -> asyncio.Event:
        return asyncio.Event()

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        return await asyncio.wait_for(awaitable, timeout)

    def trace(self, what: str, /, **fields: object) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))
