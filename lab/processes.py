"""What every launcher of a private service needs: stopping a child, and one shape of ``running_*``.

``stop_child``: SIGTERM, then SIGKILL. ``running_service(make, prefix=…)``: a fresh scratch
directory, the service made in it and started; on exit (also when the start fails) the
service stopped and the directory removed with everything in it. ``running_etcd``,
``running_ovs`` and ``running_prometheus`` are this plus their own ``make``.
It must not know which service the process is.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
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
