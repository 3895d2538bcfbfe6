"""What every long-running agent daemon does around its agent: stop on signals, wait for etcd.

It must not know any agent: the daemons (``leengine-slb-agent``, ``leengine-build-agent``)
build their agent once ``connect_until_stopped`` says etcd answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from foundation.ports import StoreError


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (``stop`` if given: tests set it themselves)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def connect_until_stopped(store, stop: asyncio.Event, log: logging.Logger, *, retry: float = 2.0) -> bool:
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
