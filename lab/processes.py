"""What every launcher of a private service needs: stopping a child, and one shape of ``running_*``.

``stop_child``: SIGTERM, then SIGKILL. ``freeze``: SIGSTOP that returns only once every
thread has stopped. ``running_service(make, prefix=…)``: a fresh scratch
directory, the service made in it and started; on exit (also when the start fails) the
service stopped and the directory removed with everything in it. ``running_etcd``,
``running_ovs`` and ``running_prometheus`` are this plus their own ``make``.
It must not know which service the process is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


@contextlib.contextmanager
def running_service(make: Callable[[Path], S], *, prefix: str, parent: str | None = None) -> Iterator[S]:
    """``make(workdir)`` in a fresh directory under ``parent`` (default: the temp dir), started, yielded."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        server = make(workdir)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def stop_child(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns once the process is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and wait until all its threads are stopped (state ``T``).

    ``kill`` returns once the signal is queued: the kernel wakes one thread, and only
    when that thread is scheduled does it stop the others. On a busy machine that
    takes milliseconds, long enough for a server to answer one more request; a
    caller that freezes a server to test what clients see must not race that.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        raise RuntimeError(f"process {pid} is gone") from None
    deadline = time.monotonic() + timeout
    while not _all_threads_stopped(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout:g}s of SIGSTOP")
        time.sleep(0.001)


def _all_threads_stopped(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise RuntimeError(f"process {pid} is gone") from None
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # a thread that exited is not running either
        state = stat.rsplit(")", 1)[1].split()[0]  # the command name may contain spaces and ")"
        if state not in ("T", "t", "Z", "X"):
            return False
    return True
