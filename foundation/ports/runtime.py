"""The Runtime port: time, concurrency and randomness for agent code.

Agent code is ``async def`` and gets everything that depends on *when* or *by
chance* from a ``Runtime``: the clock, sleeping, spawning and cancelling tasks,
queues, events, timeouts and one seeded random source. Two adapters implement it:
asyncio (``foundation.adapters.asyncio_runtime``) and a SimPy environment
(``sim.adapters.runtime``). Because agents never call ``asyncio.sleep``,
``time.time`` or ``random`` themselves, a simulated run is a pure function of
(scenario, seed).

Both adapters treat a task that fails while nobody awaits its ``join()`` alike: they
record it, and the runner of the run (``run_until_complete``, a daemon's main) raises
``TaskFailed``, so an agent's background task (a membership keeper) never dies
silently, in simulation or in production. The asyncio adapter also logs it at once.

This module must not know which adapter is in use. It names the cancellation
exception once (``Cancelled``) so agents can catch it without importing asyncio.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)  # a Task[int] is a Task[object]: it only hands results out

# Both runtimes raise this inside a task that is cancelled; asyncio's own class is
# reused so that library code awaited by real adapters behaves as it expects.
Cancelled = asyncio.CancelledError


class TaskFailed(RuntimeError):
    """A spawned task raised and no other task joined it; ``__cause__`` is its error."""

    @staticmethod
    def raise_first(unjoined: list[tuple[str, BaseException]]) -> None:
        """Raise for the first of the (name, error) of failed, unjoined tasks; nothing when there is none.

        Both runtimes report the same way (their parity tests compare the messages).
        """
        if unjoined:
            name, error = unjoined[0]
            raise TaskFailed(f"{len(unjoined)} task(s) failed unobserved; first: {name}: {error!r}") from error


class Task(Protocol[T_co]):
    """A spawned coroutine. Awaiting ``join()`` returns its result or raises its error."""

    @property
    def name(self) -> str: ...

    def cancel(self) -> None:
        """Ask the task to stop: ``Cancelled`` is raised inside it at its current await."""

    def done(self) -> bool: ...

    async def join(self) -> T_co:
        """Wait for the task; re-raise its exception (``Cancelled`` if it was cancelled)."""


class Queue(Protocol[T]):
    """An unbounded FIFO queue between tasks of one runtime."""

    def put_nowait(self, item: T) -> None: ...

    async def get(self) -> T: ...

    def get_nowait(self) -> T:
        """Return the next item; raise ``IndexError`` when the queue is empty."""

    def qsize(self) -> int: ...


class Event(Protocol):
    """A one-shot flag tasks can wait on."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """Clock, tasks, queues, timeouts and the run's one random source."""

    @property
    def name(self) -> str:
        """``"asyncio"`` or ``"sim"``: for logs and reports, never for branching agent logic."""

    @property
    def random(self) -> random.Random:
        """The run's seeded random source. Agents draw all randomness from it."""

    def now(self) -> float:
        """Seconds on this runtime's monotonic clock (virtual seconds in simulation)."""

    def wall_time(self) -> float:
        """Seconds since the Unix epoch, for records other hosts read (a release time in etcd).

        In simulation: a fixed epoch plus virtual time, so it is deterministic too.
        """

    def secret_hex(self, nbytes: int = 16) -> str:
        """``nbytes`` random bytes as lowercase hex: a credential (a build attempt's push secret).

        The asyncio runtime draws them from the OS (``secrets``): its seeded ``random`` is a
        Mersenne Twister whose outputs predict the next ones. The sim runtime draws them from
        a seeded stream of their own, so runs stay deterministic and other draws do not move.
        Never log or trace what it returns.
        """

    async def sleep(self, seconds: float) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> Task[T]:
        """Run ``coro`` concurrently as a task named ``name`` (names appear in traces)."""

    def queue(self) -> Queue[Any]: ...

    def event(self) -> Event: ...

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        """Await ``awaitable``; after ``timeout`` seconds cancel it and raise ``TimeoutError``."""

    def trace(self, what: str, /, **fields: object) -> None:
        """Record one event of the run (the sim runtime hashes these into the trace)."""
