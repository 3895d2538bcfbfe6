"""The machine's raw reference rates: measured beside a lab's timings, so a slow machine is told from a slow lab.

The lab's durations (a CNI ADD, an Nginx reload, a build) are seconds of this machine, and
this machine's speed moves: its neighbours on the host take cores the load average never
shows (the raw SimPy rate here ranged 230k-1.17M events/s between hours). A duration is
read with the rates measured in the same run, just before and after it:

* ``fork_exec_per_second``: ``/bin/true`` forked and exec'd one after the other: process
  start-up, which every CNI plugin exec, ``nginx -t``, Nginx worker and pod start pays;
* ``sha256_mib_per_second``: hashing a fixed buffer in C (hashlib): plain CPU, which an
  Nginx reload's configuration parsing and Lua start mostly is.

Used by ``lab run`` (``report.json``'s ``lab.reference_rates``), ``leengine compare``, ``lab
fit`` and the lab benches. It must not know the lab: it measures the machine only.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from collections.abc import Callable

EXEC_SAMPLES = 300  # ~0.3 s on a quiet machine here
HASHED_MIB = 256  # ~0.2 s on a quiet machine here
log = logging.getLogger(__name__)



def exec_rate(n: int = EXEC_SAMPLES) -> float:
    """fork+exec of /bin/true, one after the other, per second: the machine's process start-up rate right now."""
    started = time.perf_counter()
    for _ in range(n):
        subprocess.run(["/bin/true"], check=True)
    return n / (time.perf_counter() - started)


def sha256_rate(mib: int = HASHED_MIB) -> float:
    """MiB per second sha256 hashes, one core: the machine's plain CPU rate right now."""
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(mib):
        digest.update(block)
    return mib / (time.perf_counter() - started)


# report name: (shown as, unit, how it is measured)
RATES: dict[str, tuple[str, str, Callable[[], float]]] = {
    "fork_exec_per_second": ("fork+exec", "/s", exec_rate),
    "sha256_mib_per_second": ("sha256", " MiB/s", sha256_rate),
}


def reference_rates() -> dict[str, float] | None:
    """Every rate, measured now (~0.5 s on a quiet machine here); None when the machine cannot fork now
    (a finished run's report must not be lost to its reference)."""
    try:
        return {name: round(measure(), 1) for name, (_, _, measure) in RATES.items()}
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("reference rates not measured: %s", exc)
        return None
