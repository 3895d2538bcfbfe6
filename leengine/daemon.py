"""What every long-running daemon does around its agent: stop on signals, wait for etcd.

Every daemon (``leengine-cni-agent``, ``leengine-slb-agent``, ``leengine-build-agent``,
``leengine-discovery``, ``leengine-control``) runs its body with ``run_daemon``:

* SIGTERM and SIGINT set one ``stop`` event (installed here, once, for every daemon); the
  body returns when it is set and the process exits 0.
* etcd is retried at start (``connect_until_stopped``): a daemon started before etcd, or
  while etcd is away, logs "waiting for etcd" every ``retry`` seconds and starts once it
  answers; it never exits because etcd is down. A signal while waiting stops it cleanly.
* A task of the agent that fails while nobody awaits it (a membership keeper) is logged
  by the runtime with its traceback and stops the daemon, which exits 1
  (``agent_runtime`` + ``fail_on_task_failures``): a dead background task never leaves a
  half-working agent running, as the sim runtime never lets one pass either.

It must not know any agent, flag or key: the daemons build their agent once
``connect_until_stopped`` says etcd answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.ports import StoreError, TaskFailed
from leengine.command import Failed

RETRY_SECONDS = 2.0


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (``stop`` if given: tests set it themselves)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: the caller stops it
            loop.add_signal_handler(signum, stop.set)
    return stop


def run_daemon(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``body(stop)`` on a new event loop; ``stop`` is set by SIGTERM/SIGINT."""

    async def main() -> None:
        await body(stop_on_signals())

    asyncio.run(main())


def agent_runtime(stop: asyncio.Event) -> AsyncioRuntime:
    """The agent's Runtime: a task failing unjoined (logged by the runtime) sets ``stop``."""
    return AsyncioRuntime(on_task_failed=lambda task: stop.set())


def fail_on_task_failures(runtime: AsyncioRuntime) -> None:
    """After the agent stopped: ``Failed`` (exit 1, one line) if one of its tasks failed unjoined."""
    try:
        runtime.raise_unjoined_failures()
    except TaskFailed as exc:
        raise Failed(f"stopped: {exc}") from None


async def connect_until_stopped(store: Any, stop: asyncio.Event, log: logging.Logger, *,
                                retry: float = RETRY_SECONDS) -> bool:
    """Connect ``store`` (an ``EtcdStore``), retrying while etcd is away; False when stopped first."""
    while not stop.is_set():
        try:
            await store.connect()
            return True
        except StoreError as exc:
            log.warning("waiting for etcd: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry)
    return False


async def until_stopped(work: Awaitable[Any], stop: asyncio.Event, *, name: str, grace: float = 0.0) -> None:
    """Run ``work`` until it ends or ``stop`` is set; its failure is raised, its cancellation waited ``grace`` s."""
    task = asyncio.ensure_future(work)
    task.set_name(name)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        task.result()  # raises the agent's failure; a clean return is a clean stop
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, grace) if grace > 0 else await task
