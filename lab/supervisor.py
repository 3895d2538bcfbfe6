"""Start, find, signal and stop the lab's processes: one role script per process, tagged with the lab's id.

``Supervisor(lab_dir, lab_id)`` runs a ``Launch`` (a role script of ``lab/roles/`` with its
environment, in a host's netns or in the root netns) as::

    ip netns exec le-<id>-<host> lab/roles/<role>.sh      (stdout+stderr >> DIR/logs/<name>.log)

in a new session (the setsid a role's daemon needs so that a Ctrl-C to the lab command
never reaches it), and writes ``DIR/pids/<name>.pid``. Role scripts ``exec`` their daemon,
so the pid is the daemon's. The launch itself is kept in ``DIR/launch/<name>.json``, so
another lab command (``lab run``'s fault driver) can ``start(name)`` it again after a kill.

Invariants:

* Every process gets ``LEENGINE_LAB=<id>`` in its environment, and nothing of the caller's
  environment but ``PATH``-like basics (a stray ``ETCD_*`` or ``LEENGINE_ETCD`` of the
  operator's shell must not reach a lab daemon). A pid is believed only while
  ``/proc/PID/environ`` carries that tag: a recycled pid is never signalled.
* The intent is recorded (``DIR/made.jsonl``, fsynced) before the process is started, so a
  lab command that dies right after the fork leaves a record ``lab down`` can act on.
* Names are DNS-label-like (they become file names); environment values are strings
  without NUL; argv is a list (no shell ever parses it).

It must not know what a role does: ``lab/services.py`` decides what to launch and when it is ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.adapters.binaries import log_tail
from lab.record import LAB_ENV, LabRecord, process_lab

PROCESS_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
ROLES_DIR = Path(__file__).resolve().parent / "roles"
TAG = LAB_ENV
STOP_TIMEOUT = 5.0
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SupervisorError(RuntimeError):
    """A process could not be launched or is not what it should be; the message names it."""


@dataclass(frozen=True)
class Launch:
    """One lab process: ``role`` script with ``args``, ``env``, in ``netns`` (None: the root netns)."""

    name: str
    role: str  # lab/roles/<role>.sh
    env: Mapping[str, str] = field(default_factory=dict)
    netns: str | None = None
    host: str | None = None  # the lab host it belongs to (status only)
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not PROCESS_NAME.fullmatch(self.name):
            raise SupervisorError(f"process name {self.name[:80]!r} is not a lab process name")
        if not PROCESS_NAME.fullmatch(self.role) or not (ROLES_DIR / f"{self.role}.sh").is_file():
            raise SupervisorError(f"no role script lab/roles/{self.role[:40]}.sh")
        if self.netns is not None and not PROCESS_NAME.fullmatch(self.netns):
            raise SupervisorError(f"netns {self.netns[:80]!r} is not a lab netns name")
        for key, value in self.env.items():
            if not ENV_NAME.fullmatch(key) or not isinstance(value, str) or "\0" in value:
                raise SupervisorError(f"{self.name}: environment variable {key[:64]!r} is not a plain NAME=string")
        for arg in self.args:
            if not isinstance(arg, str) or "\0" in arg:
                raise SupervisorError(f"{self.name}: argument {str(arg)[:60]!r} is not a string")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "env": dict(self.env), "netns": self.netns, "host": self.host,
                "args": list(self.args)}

    @classmethod
    def from_dict(cls, data: Any) -> Launch:
        if not isinstance(data, dict) or not isinstance(data.get("env"), dict) or not isinstance(data.get("args"),
                                                                                                     list):
            raise SupervisorError("launch record is not an object with env and args")
        return cls(str(data.get("name")), str(data.get("role")), dict(data["env"]),
                   data.get("netns"), data.get("host"), tuple(data["args"]))


def process_tag(pid: int) -> str | None:
    """The ``LEENGINE_LAB`` value in ``/proc/PID/environ`` (None: no such process, no tag, or a zombie)."""
    return process_lab(pid)


class Supervisor:
    """The processes of one lab directory."""

    def __init__(self, lab_dir: Path, lab_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{4}", lab_id):
            raise SupervisorError(f"lab id {lab_id[:20]!r} is not 4 lowercase hex characters")
        self.dir = Path(lab_dir)
        self.lab_id = lab_id

    # ---------------------------------------------------------------- files

    def pidfile(self, name: str) -> Path:
        return self.dir / "pids" / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def launchfile(self, name: str) -> Path:
        return self.dir / "launch" / f"{name}.json"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return log_tail(self.logfile(name), lines, name)

    def launches(self) -> list[Launch]:
        """Every launch this lab directory knows, in start order."""
        found = []
        for path in sorted((self.dir / "launch").glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
            with contextlib.suppress(OSError, ValueError, SupervisorError):
                found.append(Launch.from_dict(json.loads(path.read_text())))
        return found

    def launch(self, name: str) -> Launch:
        try:
            return Launch.from_dict(json.loads(self.launchfile(name).read_text()))
        except (OSError, ValueError) as exc:
            raise SupervisorError(f"no launch recorded for {name!r} in {self.dir}: {exc}") from None

    def _record_intent(self, launch: Launch) -> None:
        LabRecord(self.dir).intend("process", launch.name, pidfile=str(self.pidfile(launch.name)),
                                   netns=launch.netns, role=launch.role)

    # ---------------------------------------------------------------- life cycle

    def environment(self, launch: Launch) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {"PATH": f"{bin_dir}:{BASE_PATH}", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
               "LEENGINE_BIN": bin_dir, "LEENGINE_PYTHON": sys.executable,
               "LEENGINE_SRC": str(Path(__file__).resolve().parent.parent)}
        env.update(launch.env)
        env[TAG] = self.lab_id
        return env

    def start(self, launch: Launch | str) -> int:
        """Start ``launch`` (or the recorded launch of that name) unless it runs; returns its pid."""
        if isinstance(launch, str):
            launch = self.launch(launch)
        running = self.pid(launch.name)
        if running is not None:
            return running
        for sub in ("pids", "logs", "launch"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._record_intent(launch)
        path = self.launchfile(launch.name)
        path.with_suffix(".tmp").write_text(json.dumps(launch.to_dict()))
        path.with_suffix(".tmp").replace(path)
        script = str(ROLES_DIR / f"{launch.role}.sh")
        argv = [script, *launch.args]
        if launch.netns is not None:
            argv = ["ip", "netns", "exec", launch.netns, *argv]
        with self.logfile(launch.name).open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {launch.name} ({launch.role})\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self.environment(launch), cwd=str(self.dir), start_new_session=True)
        tmp = self.pidfile(launch.name).with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(self.pidfile(launch.name))
        return proc.pid

    def recorded_pid(self, name: str) -> int | None:
        try:
            text = self.pidfile(name).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and 1 < int(text) < 1 << 22 else None

    def pid(self, name: str) -> int | None:
        """The process's pid while it runs and carries this lab's tag; else None."""
        pid = self.recorded_pid(name)
        if pid is None:
            return None
        _reap(pid)
        return pid if process_tag(pid) == self.lab_id else None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to the process (only if it is this lab's); True if it was sent."""
        pid = self.pid(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                _wait_gone(pid, self.lab_id, 5.0)
            return True
        return False

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True when it was running."""
        pid = self.pid(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, self.lab_id, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, self.lab_id, 5.0)
        return True

    def wait_ready(self, name: str, ready: Any, *, timeout: float, what: str) -> None:
        """Poll ``ready()`` until it is true; an error naming the process and its log tail if it dies or times out."""
        deadline = time.monotonic() + timeout
        last: object = "no answer yet"
        unseen = 0  # consecutive polls that did not find the process
        while True:
            try:
                if ready():
                    return
            except Exception as exc:  # any probe failure is "not ready yet", reported at the end
                last = exc
            # While a process execs (ip netns exec -> the role script -> its daemon) its /proc/PID/environ
            # reads empty for a moment: only several misses in a row mean it exited.
            unseen = 0 if self.alive(name) else unseen + 1
            if unseen >= 3:
                raise SupervisorError(f"{name} exited while starting ({what}); log tail:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise SupervisorError(f"{name} not ready after {timeout:g}s ({what}: {last}); log tail:\n"
                                      f"{self.log_tail(name)}")
            time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # our own child that died: no zombie left to look alive


def _wait_gone(pid: int, lab_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if process_tag(pid) != lab_id:
            return True
        time.sleep(0.02)
    return False
