"""The SLB lab on one machine: back-end pods in network namespaces, the agent daemon, wrk load.

Used by ``tests/integration/test_slb_e2e.py`` and ``bench/slb.py`` (root only):

* ``PodBackends``: one network namespace per pod, one veth pair each (host end in
  the root netns with ``198.19.N.1/30``, pod end ``eth0`` with ``198.19.N.2/30``; the
  benchmarking range 198.18.0.0/15), and in each a tiny asyncio HTTP server (started
  with ``ip netns exec NS python -I -c …``) that answers every GET with
  ``200 "<pod name> <X-Gen header or ->"``, keep-alive unless asked to close.
* ``AgentProcess``: the real ``leengine-slb-agent`` daemon on a fresh Nginx prefix;
  ``kill9`` / ``start`` again (it adopts the Nginx it left), ``close`` stops the
  agent and the Nginx master it started (by the pid in the prefix), and removes the
  prefix.
* ``Wrk``: ``wrk`` on loopback with a generated lua script that counts non-2xx
  answers per thread (wrk itself only reports "Non-2xx or 3xx") and rotates Host
  headers; stopped by SIGINT (wrk prints its report then); ``WrkResult`` parses
  requests/s, "Socket errors" and the script's count.
* ``reconfigurations`` counts nginx's "signal 1 (SIGHUP) received …, reconfiguring"
  notices (one per SIGHUP the master got) in the prefix's error log; ``served_generation`` asks the
  admin endpoint (the unix socket ``PREFIX/admin/admin.sock``). Reloads are counted from both: the
  agent is another process, so its in-memory counter cannot be read.

Traffic goes only to loopback and to the namespaces made here. Everything made is
removed by ``close()``, which is safe to call after a partial setup.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cni.pools import Pool
from foundation.adapters.nginx_proxy import ADMIN_SOCKET
from foundation.logic.slb_domain import Upstream
from lab.nginx import make_prefix
from lab.processes import stop_child

BIN = Path(sys.executable).parent
BACKEND_PORT = 8080

_BACKEND = r"""
import asyncio, sys
name = sys.argv[1].encode()
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            gen, close = b"-", False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"x-gen":
                    gen = v.strip()
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            body = name + b" " + gen
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                         % (len(body), b"Connection: close\r\n" if close else b"", body))
            if close:
                self.t.close()
                return
async def main():
    server = await asyncio.get_running_loop().create_server(P, sys.argv[2], int(sys.argv[3]), backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Pod:
    name: str  # also the netns name
    host_if: str
    address: str  # pod side
    proc: subprocess.Popen | None = None

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.address, BACKEND_PORT)


class PodBackends:
    """``count`` pods, each a netns + veth pair + HTTP server; ``close()`` removes them all."""

    def __init__(self, count: int, *, tag: str, subnet_base: int) -> None:
        if not (subnet_base >= 0 and subnet_base + count <= 255):
            raise ValueError("subnet_base + count must stay within 198.19.0-255")
        self.pods: list[Pod] = []
        try:
            for n in range(count):
                self._make(f"{tag}p{n}", f"{tag}h{n}", subnet_base + n)
            for pod in self.pods:
                self._wait_ready(pod)
        except BaseException:
            self.close()
            raise

    def pools(self, prefix: str) -> list[Pool]:
        """Each pod's /30 as a pod pool (gateway: the host end of its veth), as cnictl registers them.

        Upstreams must be pod addresses of a registered pool (slb-core and the SLB agent refuse
        others), so whoever points a domain at these pods puts these records first.
        """
        return [Pool.parse(f"{prefix}-{n}", str(ipaddress.IPv4Network(f"{pod.address}/30", strict=False)), 100,
                           str(ipaddress.IPv4Address(pod.address) - 1), block_size=4)
                for n, pod in enumerate(self.pods)]

    def _make(self, name: str, host_if: str, third: int) -> None:
        pod = Pod(name, host_if, f"198.19.{third}.2")
        sh("ip", "netns", "add", name)
        self.pods.append(pod)  # from here close() removes it (and the veth with it)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"198.19.{third}.1/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", f"{pod.address}/30", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        pod.proc = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-I", "-c", _BACKEND, name, pod.address,
             str(BACKEND_PORT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)

    @staticmethod
    def _wait_ready(pod: Pod) -> None:
        assert pod.proc is not None and pod.proc.stdout is not None
        line = pod.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"back-end {pod.name} did not start (exit {pod.proc.poll()})")
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((pod.address, BACKEND_PORT), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        for pod in self.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait(10)
            sh("ip", "netns", "del", pod.name, check=False)  # takes the veth pair with it
            sh("ip", "link", "del", pod.host_if, check=False)
        self.pods = []


# --------------------------------------------------------------------------- the agent daemon


class AgentProcess:
    """The ``leengine-slb-agent`` daemon on its own Nginx prefix."""

    def __init__(self, *, group: str, host: str, etcd: str, extra: tuple[str, ...] = ()) -> None:
        self.group, self.host, self.etcd, self.extra = group, host, etcd, extra
        self.prefix = make_prefix()
        self.admin_socket = self.prefix / ADMIN_SOCKET
        self.log = Path(tempfile.mkstemp(prefix="leengine-slb-agent-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, *, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "leengine-slb-agent"), "--group", self.group, "--host", self.host, "--prefix",
             str(self.prefix), "--etcd", self.etcd, "--listen-address", "127.0.0.1", *self.extra],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while served_generation(self.admin_socket) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slb agent did not start nginx:\n{self.log_tail()}")
            time.sleep(0.02)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def nginx_pid(self) -> int | None:
        try:
            return int((self.prefix / "logs" / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def reconfigurations(self) -> int:
        return reconfigurations(self.prefix)

    def close(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)
        pid = self.nginx_pid()
        if pid is not None:
            stop_process(pid)
        shutil.rmtree(self.prefix, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log.unlink()


def stop_process(pid: int, *, grace: float = 5.0) -> None:
    """SIGQUIT (nginx's graceful stop), then SIGKILL; returns when ``pid`` is gone."""
    for sig, wait in ((signal.SIGQUIT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)


def reconfigurations(prefix: Path) -> int:
    """How many SIGHUPs the nginx master received ("signal 1 (SIGHUP) received from …, reconfiguring").

    Counted by that line: nginx logs a second, bare "reconfiguring" notice for each, so
    counting the word would count every reload twice.
    """
    try:
        return (prefix / "logs" / "error.log").read_text(errors="replace").count("(SIGHUP) received")
    except OSError:
        return 0


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the Nginx admin endpoint is on no TCP port)."""

    def __init__(self, path: os.PathLike[str] | str, timeout: float) -> None:
        super().__init__("leengine-admin", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def served_generation(admin_socket: os.PathLike[str] | str) -> int | None:
    """The generation the admin endpoint at ``admin_socket`` answers, or None."""
    try:
        conn = _UnixHTTPConnection(admin_socket, timeout=1)
        try:
            conn.request("GET", "/generation")
            resp = conn.getresponse()
            return int(json.loads(resp.read())["generation"]) if resp.status == 200 else None
        finally:
            conn.close()
    except (OSError, ValueError, KeyError):
        return None


def get(port: int, host: str, *, timeout: float = 5) -> tuple[int, str]:
    """One request on a fresh connection to 127.0.0.1:port with ``Host: host``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


# --------------------------------------------------------------------------- wrk

_LUA = """
local hosts = {%(hosts)s}
local close = %(close)s
local threads = {}
local n = 0
function setup(thread)
    table.insert(threads, thread)
end
function init(args)
    bad = 0
    good = 0
    n = 0
end
function request()
    n = n + 1
    local headers = {Host = hosts[(n %% #hosts) + 1]}
    if close then headers["Connection"] = "close" end
    return wrk.format("GET", "/", headers)
end
function response(status, headers, body)
    if status >= 200 and status < 300 then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
    local b, g = 0, 0
    for _, t in ipairs(threads) do
        b = b + t:get("bad")
        g = g + t:get("good")
    end
    io.write(string.format("LEENGINE non2xx=%%d ok=%%d\\n", b, g))
end
"""

_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_OURS = re.compile(r"LEENGINE non2xx=(\d+) ok=(\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    non2xx: int
    ok: int
    connect: int
    read: int
    write: int
    timeout: int
    output: str

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.non2xx + self.socket_errors

    @staticmethod
    def parse(output: str) -> WrkResult:
        ours = _OURS.search(output)
        rps, total = _RPS.search(output), _TOTAL.search(output)
        if ours is None or rps is None or total is None:
            raise RuntimeError(f"cannot read wrk's report:\n{output}")
        errors = _SOCKET_ERRORS.search(output)
        connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
        return WrkResult(int(total.group(1)), float(rps.group(1)), int(ours.group(1)), int(ours.group(2)),
                         connect, read, write, timeout, output)


class Wrk:
    """``wrk`` against ``127.0.0.1:port`` rotating ``hosts``; ``stop()`` ends it early and returns the result."""

    def __init__(self, port: int, hosts: list[str], *, threads: int = 2, connections: int = 50,
                 close: bool = False, duration: float = 120) -> None:
        for host in hosts:
            if not re.fullmatch(r"[a-z0-9.-]+", host):
                raise ValueError(f"{host!r} is not a host name")
        fd, script = tempfile.mkstemp(prefix="leengine-wrk-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(_LUA % {"hosts": ", ".join(f'"{h}"' for h in hosts), "close": "true" if close else "false"})
        self.script = Path(script)
        self.proc = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{int(duration)}s", "--timeout", "5s",
             "-s", script, f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.monotonic()

    def stop(self) -> WrkResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # wrk stops its threads and prints the report
        try:
            output, _ = self.proc.communicate(timeout=30)
        finally:
            self.close()
        return WrkResult.parse(output)

    def wait(self) -> WrkResult:
        try:
            output, _ = self.proc.communicate(timeout=300)
        finally:
            self.close()
        return WrkResult.parse(output)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.script.unlink()
