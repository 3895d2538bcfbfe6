"""A throwaway single-member etcd server on loopback, for tests, benchmarks and the one-machine lab.

``running_etcd()`` starts Debian's etcd (``etcd-server``) on two free loopback ports
with a fresh data directory, waits until ``/health`` answers, yields an
``EtcdServer`` handle and, on exit, stops the process and removes every file it made.

Invariants:

* The server listens on 127.0.0.1 only; tests never touch a shared or remote etcd.
* A missing binary is an error, never a skip: a suite that silently skips its real
  backend proves nothing. Install it with ``apt-get install etcd-server`` or point
  ``LEENGINE_ETCD_BIN`` at a binary.
* With ``running_etcd(certs=make_certs(dir))`` (``lab/certs.py``) etcd serves
  clients over TLS only and demands a client certificate signed by that CA
  (``--client-cert-auth --trusted-ca-file``): a client without one is refused by etcd
  itself. The health check then speaks TLS with the bundle's client certificate;
  ``client_tls`` holds the files a client needs, ``client_args`` the same as the
  ``--etcd-ca/--etcd-cert/--etcd-key`` flags of our commands. Peers stay plaintext
  on loopback (a single member has no peer traffic).
* ``pause()``/``resume()`` (SIGSTOP/SIGCONT) make etcd hang with its sockets open,
  the way a wedged or overloaded server looks to a client; ``stop()``/``start()``
  make it refuse connections, the way a dead one does. ``start()`` reuses the same
  ports and data, so the store keeps its keys and revisions across a restart.

This module knows nothing about the Store port or any client library: it only runs
a process and speaks HTTP to its health endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from foundation.adapters.binaries import find_binary, log_tail
from lab.certs import CertBundle
from lab.processes import freeze, running_service, stop_child
from leengine.etcd_options import EtcdClientTls

START_TIMEOUT = 15.0  # seconds for etcd to answer /health before we give up
STOP_TIMEOUT = 5.0  # seconds for a graceful SIGTERM before SIGKILL


def find_etcd() -> str:
    """The etcd binary to run: ``$LEENGINE_ETCD_BIN`` or ``etcd`` on PATH."""
    return find_binary("etcd", env="LEENGINE_ETCD_BIN",
                       hint="install Debian's etcd-server package (apt-get install etcd-server)")


def _free_port() -> int:
    # The kernel picks an unused port; it can in principle be taken again before etcd
    # binds it, so start() retries with fresh ports when etcd exits at once.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHM_NEEDED = 256 * 1024 * 1024  # etcd pre-allocates 64 MB WAL files; leave room for a few


def _scratch_root() -> str | None:
    # tmpfs makes etcd's fsyncs nearly free (etcd 3.4 has no --unsafe-no-fsync flag);
    # a small /dev/shm (Docker's default is 64 MB) would make etcd fail, so use /tmp then.
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return None
    stats = os.statvfs(shm)
    return shm if stats.f_bavail * stats.f_frsize >= SHM_NEEDED else None


class EtcdServer:
    """One etcd process: its endpoint, pid and controls. Use ``running_etcd()`` to get one."""

    def __init__(self, binary: str, workdir: Path, *, fast_raft: bool = True, certs: CertBundle | None = None) -> None:
        self.binary = binary
        self.certs = certs
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "etcd.log"
        self.fast_raft = fast_raft
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # ------------------------------------------------------------------ facts

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API, as the Store adapter takes it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The client URL with its scheme: ``https://`` when etcd serves TLS."""
        return f"{'https' if self.certs else 'http'}://{self.endpoint}"

    @property
    def client_tls(self) -> EtcdClientTls | None:
        """The CA and client certificate a client needs (None: plaintext etcd)."""
        if self.certs is None:
            return None
        return EtcdClientTls(self.certs.ca_cert, self.certs.client_cert, self.certs.client_key)

    @property
    def client_args(self) -> list[str]:
        """``--etcd-ca/--etcd-cert/--etcd-key`` for a command that talks to this etcd ([] when plaintext)."""
        tls = self.client_tls
        return tls.args() if tls else []

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("etcd is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines, "etcd")

    # ------------------------------------------------------------------ lifecycle

    def _command(self) -> list[str]:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        if self.certs is not None:
            cmd += [
                "--client-cert-auth",
                f"--trusted-ca-file={self.certs.ca_cert}",
                f"--cert-file={self.certs.server_cert}",
                f"--key-file={self.certs.server_key}",
            ]
        if self.fast_raft:
            # A lone member still waits one election timeout before it leads; 10/100 ms
            # makes startup fast and lowers etcd's minimum lease TTL (1.5 x election
            # timeout, rounded up to whole seconds) from 2 s to 1 s.
            cmd += ["--heartbeat-interval=10", "--election-timeout=100"]
        return cmd

    def start(self) -> None:
        """Start (or restart) etcd and wait until it is healthy."""
        if self.running:
            return
        fresh = self.client_port == 0
        attempts = 3 if fresh else 1  # a restart must keep its ports: clients know them
        for attempt in range(attempts):
            if fresh:
                self.client_port, self.peer_port = _free_port(), _free_port()
                shutil.rmtree(self.data_dir, ignore_errors=True)  # a failed attempt's member has other URLs
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # a Ctrl-C to pytest must not reach etcd first
                )
            self._paused = False
            try:
                self._wait_healthy()
                return
            except RuntimeError:
                exited_early = self._proc.poll() is not None
                self._terminate()
                if not (fresh and exited_early) or attempt == attempts - 1:
                    raise

    def _wait_healthy(self) -> None:
        url = f"{self.url}/health"
        context = None
        if self.certs is not None:
            context = ssl.create_default_context(cafile=str(self.certs.ca_cert))
            context.load_cert_chain(str(self.certs.client_cert), str(self.certs.client_key))
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with code {self._proc.returncode} while starting on {self.endpoint};"
                    f" log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0, context=context) as resp:
                    body = resp.read()
                if b'"true"' in body:
                    return
                last = body.decode(errors="replace")
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(
            f"etcd on {self.endpoint} not healthy after {START_TIMEOUT:.0f}s ({last}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate etcd; clients now get "connection refused". ``start()`` brings it back."""
        self._terminate()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if self._paused:
            proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self._paused = False
        stop_child(proc, STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP etcd: connections stay open but nothing answers (a hung server)."""
        if not self.running:
            raise RuntimeError("etcd is not running")
        self._paused = True  # set first: resume() must undo even a freeze that timed out
        freeze(self.pid)

    def resume(self) -> None:
        """SIGCONT etcd after ``pause()``."""
        if self.running and self._paused:
            os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with server.paused():`` etcd hangs inside the block and resumes after it."""
        self.pause()
        try:
            yield
        finally:
            self.resume()


@contextlib.contextmanager
def running_etcd(*, fast_raft: bool = True, certs: CertBundle | None = None) -> Iterator[EtcdServer]:
    """Run a fresh etcd on loopback for the duration of the block.

    ``fast_raft=False`` keeps etcd's default raft timing (100 ms heartbeat, 1 s
    election timeout), e.g. to observe its default minimum lease TTL of 2 s.
    ``certs`` (``lab.certs.make_certs``): serve TLS and demand client certificates.
    """
    binary = find_etcd()
    with running_service(lambda workdir: EtcdServer(binary, workdir, fast_raft=fast_raft, certs=certs),
                         prefix="leengine-etcd-", parent=_scratch_root()) as server:
        yield server
