"""Stopping a child process politely, then firmly: what every launcher of a service needs.

It must not know which service the process is.
"""

from __future__ import annotations

import subprocess


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
