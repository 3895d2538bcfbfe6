"""The sim Runtime adapter: agent coroutines driven as SimPy processes on a virtual clock.

The bridge is small on purpose. Every awaitable the runtime hands out (sleep,
queue get, event wait, task join) ends in ``_Yield``, whose ``__await__`` yields a
SimPy event. A *driver* generator, registered as the SimPy process of each task,
steps the coroutine with ``send``/``throw``: whatever the coroutine yields is a
SimPy event, and the driver yields it to SimPy in turn. So a coroutine is suspended
exactly where SimPy would suspend a process, and virtual time advances between.

Invariants:
* Same seed, same spawn order ⇒ same event order ⇒ same trace (SimPy orders events
  at equal times by insertion; nothing here iterates an unordered collection).
* Cancellation raises ``Cancelled`` (asyncio's CancelledError) at the task's current
  await, as asyncio does, and a cancelled queue ``get`` never swallows an item.
* A task that fails is recorded; ``run`` raises ``TaskFailed`` if nobody joined it,
  so a bug in agent code stops the simulation loudly instead of vanishing.

It must not know any agent, store or scenario.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

import simpy
from simpy.events import Event as SimEvent

from foundation.ports.runtime import Cancelled, TaskFailed

# Wall-clock time at virtual time 0 (2026-01-01T00:00:00Z): fixed, so records stamped
# with wall_time() are the same in every replay.
SIM_EPOCH = 1_767_225_600.0


class _Yield:
    """Awaitable that suspends the awaiting coroutine until a SimPy event fires."""

    __slots__ = ("event",)

    def __init__(self, event: SimEvent) -> None:
        self.event = event

    def __await__(self) -> Generator[SimEvent, Any, Any]:
        return (yield self.event)


class Trace:
    """The run's event trace, hashed as it grows; lines are kept only when asked."""

    def __init__(self, keep_lines: bool = False) -> None:
        self._hash = hashlib.sha256()
        self.lines: list[str] | None = [] if keep_lines else None
        self.count = 0

    def record(self, now: float, kind: str, fields: dict[str, object]) -> None:
        # repr() of floats and strings is exact and platform-independent: stable bytes.
        line = f"{now!r} {kind}" + "".join(f" {k}={v!r}" for k, v in fields.items())
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.count += 1
        if self.lines is not None:
            self.lines.append(line)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class SimTask:
    __slots__ = ("_cancel_requested", "_coro", "_observed", "_process", "_runtime", "_started", "error", "name",
                 "result")

    def __init__(self, runtime: SimRuntime, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._runtime = runtime
        self._coro = coro
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self._started = False
        # A cancel asked for and not yet delivered: more cancel() calls add nothing (as in asyncio).
        self._cancel_requested = False
        self._observed = False
        self._process = runtime.env.process(self._drive())

    def _drive(self) -> Generator[SimEvent, Any, None]:
        runtime, coro = self._runtime, self._coro
        self._started = True
        send_value: Any = None
        to_throw: BaseException | None = self._deliver_cancel() if self._cancel_requested else None
        while True:
            runtime.current = self
            try:
                event = coro.throw(to_throw) if to_throw is not None else coro.send(send_value)
            except StopIteration as stop:
                self.result = stop.value
                return
            except (Exception, Cancelled) as exc:  # the task's outcome, kept for join()
                self.error = exc
                if not isinstance(exc, Cancelled):
                    runtime._task_failed(self)
                return
            finally:
                runtime.current = None
            to_throw = None
            if self._cancel_requested:  # the task cancelled itself: deliver at this await
                to_throw = self._deliver_cancel()
                continue
            try:
                send_value = yield event
            except simpy.Interrupt:
                to_throw = self._deliver_cancel()
            except Exception as exc:  # the awaited SimPy event failed
                to_throw = exc

    def _deliver_cancel(self) -> Cancelled:
        self._cancel_requested = False
        return Cancelled()

    def cancel(self) -> None:
        if self.done() or self._cancel_requested:
            return
        self._cancel_requested = True
        if self._started and self._runtime.current is not self:
            self._process.interrupt("cancel")
        # else: not started yet, or cancelling itself: the driver delivers it at the next await

    def done(self) -> bool:
        return not self._process.is_alive

    async def join(self) -> Any:
        if self._process.is_alive:
            await _Yield(self._process)
        self._observed = True
        if self.error is not None:
            raise self.error
        return self.result


class SimQueue:
    """FIFO queue on SimPy events; a cancelled getter hands its item back."""

    __slots__ = ("_env", "_getters", "_items")

    def __init__(self, env: simpy.Environment) -> None:
        self._env = env
        self._items: deque[Any] = deque()
        self._getters: deque[SimEvent] = deque()

    def put_nowait(self, item: Any) -> None:
        if self._getters:
            self._getters.popleft().succeed(item)
        else:
            self._items.append(item)

    def _put_front(self, item: Any) -> None:
        if self._getters:
            self._getters.popleft().succeed(item)
        else:
            self._items.appendleft(item)

    async def get(self) -> Any:
        if self._items:
            return self._items.popleft()
        waiter = self._env.event()
        self._getters.append(waiter)
        try:
            return await _Yield(waiter)
        except BaseException:
            if waiter.triggered:  # an item was handed to us but we were cancelled first
                self._put_front(waiter.value)
            else:
                self._getters.remove(waiter)
            raise

    def get_nowait(self) -> Any:
        if not self._items:
            raise IndexError("queue is empty")
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)


class SimFlag:
    __slots__ = ("_event",)

    def __init__(self, env: simpy.Environment) -> None:
        self._event = env.event()

    def set(self) -> None:
        if not self._event.triggered:
            self._event.succeed()

    def is_set(self) -> bool:
        return self._event.triggered

    async def wait(self) -> None:
        if not self._event.processed:
            await _Yield(self._event)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def seeded_stream(seed: int, concern: str) -> random.Random:
    """An independent random stream for one concern of a run (e.g. ``"fault-targets"``), seeded by the run's seed.

    The lab's run driver draws from the very same stream (lab/faults.py), so a choice made only from
    it (which nodes a ``count``/``percent`` fault picks) is the same in a simulated and a lab run
    of one scenario and seed; draws from ``SimRuntime.random`` depend on everything before them.
    """
    return random.Random(f"{concern}/{seed}")


class SimRuntime:
    """A SimPy environment seen through the Runtime port."""

    name = "sim"

    def __init__(self, seed: int = 0, *, keep_trace_lines: bool = False, env: simpy.Environment | None = None) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        # Credentials come from a stream of their own: minting one moves no other draw (trace hashes stay).
        self._secrets = seeded_stream(seed, "secrets")
        self.env = env or simpy.Environment()
        self.trace_log = Trace(keep_trace_lines)
        self.current: SimTask | None = None
        self._failed: list[SimTask] = []

    # ---- the port
    def now(self) -> float:
        return self.env.now

    def wall_time(self) -> float:
        return SIM_EPOCH + self.env.now

    def secret_hex(self, nbytes: int = 16) -> str:
        return self._secrets.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()

    async def sleep(self, seconds: float) -> None:
        await _Yield(self.env.timeout(seconds))

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> SimTask:
        return SimTask(self, coro, name)

    def queue(self) -> SimQueue:
        return SimQueue(self.env)

    def event(self) -> SimFlag:
        return SimFlag(self.env)

    async def wait_for(self, awaitable: Awaitable[Any], timeout: float) -> Any:
        coro = awaitable if isinstance(awaitable, Coroutine) else _await(awaitable)
        inner = self.spawn(coro, name="wait_for")
        timer = self.env.timeout(max(timeout, 0.0))
        try:
            await _Yield(self.env.any_of([inner._process, timer]))
        except Cancelled:
            inner.cancel()  # we are cancelled: so is the work we wait for, and we wait for its cleanup
            with contextlib.suppress(Cancelled):
                await inner.join()
            raise
        if not inner._process.is_alive:
            return await inner.join()
        inner.cancel()
        try:
            await inner.join()
        except Cancelled as exc:
            if exc is not inner.error:  # we were cancelled ourselves while the inner work cleaned up
                raise
        raise TimeoutError(f"timed out after {timeout} s")

    def trace(self, what: str, /, **fields: object) -> None:
        self.trace_log.record(self.env.now, what, fields)

    # ---- driving the simulation
    def _task_failed(self, task: SimTask) -> None:
        self._failed.append(task)
        self.trace("task-failed", task=task.name, error=type(task.error).__name__)

    def run(self, until: float | None = None) -> None:
        """Advance virtual time until ``until`` (or until no events remain)."""
        self.env.run(until=until)
        self.raise_unjoined_failures()

    def run_until_complete(self, coro: Coroutine[Any, Any, Any], *, limit: float | None = None) -> Any:
        """Run ``coro`` as the main task; return its result or raise its error."""
        main = self.spawn(coro, name="main")
        until = main._process if limit is None else self.env.any_of([main._process, self.env.timeout(limit)])
        self.env.run(until=until)
        if main._process.is_alive:
            raise TimeoutError(f"main task still running after {limit} virtual seconds")
        main._observed = True
        self.raise_unjoined_failures()
        if main.error is not None:
            raise main.error
        return main.result

    def raise_unjoined_failures(self) -> None:
        TaskFailed.raise_first([(t.name, t.error) for t in self._failed if not t._observed and t.error is not None])
