"""What every launcher of a private service needs: stopping a child, and one shape of ``running_*``.

``stop_child``: SIGTERM, then SIGKILL. ``freeze``: SIGSTOP that returns only once every
thread has stopped. ``process_state``: a process's (or thread's) state letter from /proc;
``is_running``: a process that has not exited (not gone, not a zombie).
``running_service(make, prefix=…)``: a fresh scratch
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
    """SIGSTOP ``pid`` and return once it is stopped: no thread of it can run its own code.

    ``kill`` returns once the signal is queued: the kernel wakes one thread, and only
    when that thread is scheduled does it stop the others. On a busy machine that
    takes milliseconds, long enough for a server to answer one more request; a
    caller that freezes a server to test what clients see must not race that.
    Stopped means: some thread is in state ``T`` and every other one is ``T`` too, or
    in uninterruptible sleep (``D``: it stops on leaving it, before any code of its
    own), or gone. A process whose threads are all gone or zombies is not frozen but
    dead: ``RuntimeError``, as for a timeout, naming a thread that still runs.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        raise RuntimeError(f"process {pid} is gone") from None
    deadline = time.monotonic() + timeout
    while (running := _running_thread(pid)) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout:g}s of SIGSTOP "
                               f"(thread {running[0]} in state {running[1]})")
        time.sleep(0.001)


def process_state(pid: int, tid: int | str | None = None) -> str | None:
    """The state letter (``R``, ``S``, ``D``, ``T``, ``Z`` ...) of ``pid``, or of its thread ``tid``; None when gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            # the command name, in parentheses, may contain spaces and ")": the state follows the last ")"
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def is_running(pid: int) -> bool:
    """``pid`` is a process that has not exited (gone or a zombie is not)."""
    return process_state(pid) not in (None, "Z")


def _running_thread(pid: int) -> tuple[str, str] | None:
    """A thread of ``pid`` that may still run its own code, as (tid, state); None once the process is stopped."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        raise RuntimeError(f"process {pid} is gone") from None
    states: dict[str, str] = {}
    for tid in tasks:
        state = process_state(pid, tid)
        if state is not None:  # a thread that exited runs nothing
            states[tid] = state
    if "T" not in states.values():
        if all(state in ("Z", "X") for state in states.values()):
            raise RuntimeError(f"process {pid} is gone (exited, not reaped)")
        return next((tid, state) for tid, state in states.items() if state not in ("Z", "X"))
    return next(((tid, state) for tid, state in states.items() if state not in ("T", "D", "Z", "X")), None)
