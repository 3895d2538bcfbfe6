"""A throwaway private Open vSwitch (ovsdb-server + ovs-vswitchd) for tests, benchmarks and the one-machine lab.

``running_ovs()`` creates a fresh Open_vSwitch database in a temporary directory with
``ovsdb-tool create``, starts ``ovsdb-server`` on a unix socket there and
``ovs-vswitchd`` pointed at that socket, waits until vswitchd has applied the
database (``ovs-vsctl init`` returns only once ``cur_cfg`` caught up with
``next_cfg``), yields an ``OvsServer`` handle whose ``.db`` is the OVSDB endpoint
(``unix:/tmp/leengine-ovs-…/db.sock``) and, on exit, deletes every bridge, stops
both processes and removes the directory.

Invariants:

* Everything of this instance lives in its own directory: database, OVSDB socket,
  pidfiles, logs, unixctl sockets and the per-bridge OpenFlow management sockets
  (``OVS_RUNDIR``/``OVS_DBDIR``/``OVS_LOGDIR``/``OVS_SYSCONFDIR`` point there, and
  every path flag is explicit). Nothing touches ``/var/run/openvswitch``, so a
  system Open vSwitch, if one runs, is left alone, and two instances can coexist.
* There is no OVS kernel module on the machines this runs on: bridges must use
  ``datapath_type=netdev`` (the userspace datapath inside this vswitchd). Its only
  kernel-visible objects are one tap device per bridge (the bridge's internal port,
  named like the bridge), removed with the bridge; callers pick bridge names that
  cannot clash with the host's interfaces.
* A missing binary is an error, never a skip: install Debian's ``openvswitch-switch``.
  The processes are not daemonised (no ``--detach``): we keep their ``Popen``
  handles, so a crash is noticed and nothing outlives the block.

This module knows nothing about the Dataplane port or the ``ovs`` Python library: it
runs two processes and talks to them with ``ovs-vsctl``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from foundation.adapters.binaries import SBIN_DIRS, log_tail
from lab.processes import running_service, stop_child

START_TIMEOUT = 15.0  # seconds for ovsdb-server to answer and vswitchd to apply the db
STOP_TIMEOUT = 5.0  # seconds for a graceful SIGTERM before SIGKILL
SCHEMA_CANDIDATES = ("/usr/share/openvswitch/vswitch.ovsschema",)
_BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
_INSTALL_HINT = "install Debian's openvswitch-switch package (apt-get install openvswitch-switch)"


def find_ovs() -> dict[str, str]:
    """Paths of the OVS binaries we need (also searched in /usr/sbin, which a non-root PATH lacks)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in _BINARIES:  # all missing ones named at once: one package brings them all
        path = shutil.which(name, path=search)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise RuntimeError(f"Open vSwitch binaries not found ({', '.join(missing)}): {_INSTALL_HINT}")
    return found


def find_schema() -> str:
    """The Open_vSwitch schema: ``$LEENGINE_OVS_SCHEMA`` or Debian's copy."""
    explicit = os.environ.get("LEENGINE_OVS_SCHEMA")
    candidates = (explicit,) if explicit else SCHEMA_CANDIDATES
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise RuntimeError(f"vswitch.ovsschema not found at {', '.join(c for c in candidates if c)}: {_INSTALL_HINT}")


class OvsServer:
    """One private ovsdb-server + ovs-vswitchd pair. Use ``running_ovs()`` to get one."""

    def __init__(self, binaries: dict[str, str], schema: str, workdir: Path) -> None:
        self.binaries = binaries
        self.schema = schema
        self.workdir = workdir
        self.db_path = workdir / "conf.db"
        self.socket_path = workdir / "db.sock"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ facts

    @property
    def db(self) -> str:
        """The OVSDB endpoint, as ``ovs-vsctl --db=`` and the Dataplane adapter take it."""
        return f"unix:{self.socket_path}"

    @property
    def running(self) -> bool:
        return len(self._procs) == 2 and all(p.poll() is None for p in self._procs.values())

    def pid(self, name: str) -> int:
        """Pid of ``"ovsdb-server"`` or ``"ovs-vswitchd"``."""
        return self._procs[name].pid

    def log_tail(self, name: str, lines: int = 30) -> str:
        return log_tail(self.workdir / f"{name}.log", lines, name)

    def vsctl(self, *args: str, timeout: float = 10.0, check: bool = True) -> str:
        """Run ``ovs-vsctl --db=<ours> ARGS`` (argv list, never a shell) and return its stdout."""
        cmd = [self.binaries["ovs-vsctl"], f"--db={self.db}", f"--timeout={max(1, int(timeout))}", *args]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5, check=False, env=self._env())
        if check and run.returncode != 0:
            raise RuntimeError(f"ovs-vsctl {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
        return run.stdout

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    # ------------------------------------------------------------------ lifecycle

    def _env(self) -> dict[str, str]:
        # The compiled-in defaults point at /var/run/openvswitch, /etc/openvswitch and
        # /var/log/openvswitch; these variables move every implicit path (the bridges'
        # OpenFlow .mgmt sockets included) into our directory.
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
            env[var] = str(self.workdir)
        return env

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with (self.workdir / f"{name}.stderr").open("ab") as out:
            self._procs[name] = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self._env(),
                cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C to pytest must not reach OVS first
            )

    def start(self) -> None:
        """Create the database and start both daemons; return once vswitchd has applied the db."""
        if self.running:
            return
        subprocess.run([self.binaries["ovsdb-tool"], "create", str(self.db_path), self.schema], check=True,
                       capture_output=True, timeout=30, env=self._env())
        w = self.workdir
        self._spawn("ovsdb-server", [
            self.binaries["ovsdb-server"], str(self.db_path),
            f"--remote=punix:{self.socket_path}",
            f"--pidfile={w / 'ovsdb-server.pid'}",
            f"--unixctl={w / 'ovsdb-server.ctl'}",
            f"--log-file={w / 'ovsdb-server.log'}",
            "-vconsole:off",
        ])
        self._wait("ovsdb-server", ["--no-wait", "init"])
        self._spawn("ovs-vswitchd", [
            self.binaries["ovs-vswitchd"], self.db,
            f"--pidfile={w / 'ovs-vswitchd.pid'}",
            f"--unixctl={w / 'ovs-vswitchd.ctl'}",
            f"--log-file={w / 'ovs-vswitchd.log'}",
            "-vconsole:off",
        ])
        # Without --no-wait, ovs-vsctl bumps next_cfg and waits for vswitchd to report it
        # in cur_cfg: the proof that vswitchd is connected and acting on the database.
        self._wait("ovs-vswitchd", ["init"])

    def _wait(self, name: str, probe: list[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} while starting in {self.workdir};"
                    f" log tail:\n{self.log_tail(name)}\n{self._stderr_tail(name)}"
                )
            try:
                self.vsctl(*probe, timeout=2.0)
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(
            f"{name} not ready after {START_TIMEOUT:.0f}s ({last}); log tail:\n{self.log_tail(name)}"
        )

    def _stderr_tail(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.stderr").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Delete every bridge (their tap devices go with them), then stop vswitchd and ovsdb-server."""
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                for bridge in self.bridges():
                    self.vsctl("--if-exists", "del-br", bridge)
        # vswitchd first: it must not see its database vanish and log reconnect noise.
        for name in ("ovs-vswitchd", "ovsdb-server"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                stop_child(proc, STOP_TIMEOUT)


@contextlib.contextmanager
def running_ovs() -> Iterator[OvsServer]:
    """Run a private ovsdb-server + ovs-vswitchd (userspace datapath) for the duration of the block."""
    binaries = find_ovs()
    schema = find_schema()
    if os.geteuid() != 0:
        raise RuntimeError("running_ovs() needs root: vswitchd opens tap devices and raw sockets on veths")
    # Not /dev/shm like etcd: the unix socket path must stay short (sun_path is 108 bytes)
    # and /tmp is short; OVS does few fsyncs, so tmpfs buys nothing here.
    with running_service(lambda workdir: OvsServer(binaries, schema, workdir), prefix="leengine-ovs-") as server:
        yield server
