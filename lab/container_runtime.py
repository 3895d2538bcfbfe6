"""The lab kubelet: one node's container runtime, playing containerd for the CNI plugin and a kubelet for
the Cell's Kubernetes API.

``python -m lab.container_runtime --node N --socket PATH --kube URL --cni-bin DIR --cni-conf FILE
--lab-id ID --netns-prefix le-<id>-p-`` serves a unix socket (mode 0600), one JSON line per
request and one JSON line per answer, in order, on as many connections as callers like:

* ``{"op": "run", "pod": NAME, "app": APP, "namespace": "default", "port": 80}`` → the Pod created in
  the API (``spec.nodeName``, label ``app``; Pending), as a kubelet finds it there, then its network
  namespace ``<prefix><pod>`` (loopback up); the CNI plugin executed as containerd/libcni
  execute it (the conf's ``type`` looked up in the ``--cni-bin`` directories; env
  ``CNI_COMMAND=ADD``, ``CNI_CONTAINERID``, ``CNI_NETNS=/var/run/netns/<ns>``,
  ``CNI_IFNAME=eth0``, ``CNI_PATH``, ``CNI_ARGS`` with ``IgnoreUnknown``,
  ``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``, ``K8S_POD_INFRA_CONTAINER_ID``, ``K8S_POD_UID`` (the API's uid);
  the network configuration on stdin with ``cniVersion`` and ``name`` injected from a
  ``.conflist`` as libcni does); then ``busybox httpd -f -p PORT`` in the netns (``port``: the app's
  container port, 1-65535, default 80; discovery binds the same port) serving the pod's
  name at ``/``; once it listens, the Pod's status is patched to Running + Ready with its ``podIP``.
  Answer ``{"ok": true, "ip": ..., "add_seconds": ..., "add_in_flight": N}`` (N: the CNI ADDs in flight on
  the machine when this one began, itself included: see "ADDs in flight" below). A failed ADD is undone
  (CNI DEL, netns deleted) and answered ``{"ok": false, "error": ..., "cni_code": N}`` with the plugin's own
  code (the Pod deleted from the API).
  Optional ``"version": "v<N>"`` (a platform version's pod, lab/replication.py: label ``version``) and
  ``"error_rate": 0..1`` (a bad version: the pod answers 500 to that share of its requests, from a CGI
  run by httpd instead of the static page: ``error_script``).
* ``{"op": "errors", "app": APP, "version": "v<N>", "error_rate": R}`` → from now on the pods of that app
  and version answer 500 to ``R`` of their requests (0: good again); the answer names them (lab/faults.py's
  ``bad-version``).
* ``{"op": "stop", "pod": NAME}`` → CNI DEL, httpd killed, netns deleted, Pod deleted from the
  API. A failed DEL keeps the pod (as a sandbox whose teardown failed) for a retry.
* ``{"op": "list"}`` → the pods this runtime holds. ``{"op": "samples"}`` → the seconds of
  every CNI ADD exec (``cni_add_seconds``) and DEL (``cni_del_seconds``), in order, and of each
  RunPod's phases (``queue_seconds`` waiting for a slot, ``netns_seconds``, ``httpd_seconds`` from
  spawn to listening, ``api_seconds`` for the API writes, ``run_seconds`` the whole request).
  ``cni_add_in_flight`` lists each ADD's N, in the order of ``cni_add_seconds``.
* ``{"op": "kill_all"}`` → SIGKILL every httpd and delete every netns, with NO CNI DEL and no
  API call: what a dead host leaves (addresses held in etcd, pods still in the API).

State: one JSON file per pod under ``--state-dir`` (default ``<socket dir>/<node>.pods``),
written before its sandbox is made, plus the pod's docroot. On start the runtime
registers its Node (Ready), then looks at the API's pods on this node: a pod whose state
file, netns and httpd (the pid's cmdline is busybox httpd and its environment carries
``LEENGINE_LAB=<id>``) are all still there is adopted; any other is patched ``Failed``, not
Ready (its netns and any state left are removed; its address is NOT released: a runtime
that lost a pod cannot prove the address free, ``cnictl`` can).

ADDs in flight: every runtime of the lab (one per node, all on this one machine's cores) marks an ADD it
executes with a file ``<pid>-<n>`` in ``--in-flight-dir`` (default ``<socket dir>/cni-adds-in-flight``, shared
by the lab's runtimes) for the exec's duration, and counts the marks of live runtimes as it begins: the
machine's ADDs in flight, which ``leengine lab fit`` relates the ADD's latency to (a SIGKILLed runtime's
marks are not counted: its pid is dead; they are removed by the next count).

Invariants: pod, app and namespace names are DNS labels (checked before anything is made;
they become netns names, paths and CNI_ARGS, never shell words: every command is an argv
list); requests on different connections run concurrently, at most ``--max-concurrent``
pod operations at a time, one at a time per pod; a line is at most 64 KiB. httpd processes
run in their own session (they outlive a killed runtime, as containers outlive containerd)
with ``LEENGINE_LAB=<id>`` so ``lab down`` finds them. It must not know IPAM, OVS or etcd:
the plugin and its agent do that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lab.kube_objects import is_dns_label
from lab.pod_netns import delete_netns, make_netns, netns_dir_is_mount, spawn_in_netns

log = logging.getLogger("leengine.lab.runtime")

MAX_LINE = 64 * 1024
MAX_SAMPLES = 200_000
PHASES = ("queue_seconds", "netns_seconds", "httpd_seconds", "api_seconds", "run_seconds")
HTTP_TIMEOUT = 10.0
CNI_TIMEOUT = 60.0
LISTEN_WAIT = 10.0  # seconds for httpd to listen
NETNS_DIR = Path("/var/run/netns")
IMAGE = "busybox"
VERSION = re.compile(r"v[1-9][0-9]{0,8}")
ERROR_RATE = re.compile(r"(0|1)(\.[0-9]{1,6})?")
ERROR_RATE_ENV = "LEENGINE_ERROR_RATE"  # a version's env that makes its pods answer errors (lab only)
IN_FLIGHT_DIR = "cni-adds-in-flight"  # beside the runtimes' sockets: shared by the lab's runtimes


class RuntimeError_(Exception):
    """A request that failed; ``cni_code`` is the plugin's code when the plugin said why."""

    def __init__(self, message: str, cni_code: int | None = None) -> None:
        super().__init__(message)
        self.cni_code = cni_code


@dataclass
class Pod:
    name: str
    app: str
    namespace: str
    netns: str
    container_id: str
    uid: str
    ip: str = ""
    pid: int = 0
    port: int = 80  # what its httpd listens on (the app's port)
    version: str = ""  # the platform version it runs (label ``version``; "" = a scenario app's pod)
    error_rate: float = 0.0  # the share of requests it answers 500 (a bad version: ``errors`` op, ``run``)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


# ---- the CNI side
def load_network_config(path: Path) -> dict[str, Any]:
    """The plugin's configuration as libcni hands it to the plugin: a ``.conf`` as is, the first plugin of a
    ``.conflist`` with the list's ``cniVersion`` and ``name`` injected."""
    conf = json.loads(path.read_text())
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: not a JSON object")
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list) or not plugins or not isinstance(plugins[0], dict):
            raise ValueError(f"{path}: plugins must be a non-empty list of objects")
        conf = {**plugins[0], "cniVersion": conf.get("cniVersion"), "name": conf.get("name")}
    for field in ("cniVersion", "name", "type"):
        if not isinstance(conf.get(field), str) or not conf[field]:
            raise ValueError(f"{path}: {field} is missing")
    if "/" in conf["type"] or conf["type"] in (".", ".."):
        raise ValueError(f"{path}: type must be a plugin name, not a path")
    return conf


def check_version(value: object) -> str:
    """A pod's platform version label: "" or ``v<N>`` (the platform's version names); else ``RuntimeError_``."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise RuntimeError_(f"version: {str(value)[:20]!r} is not a version (v<N>)")
    return value


def check_error_rate(value: object) -> float:
    """A share of requests to fail, 0..1 (a number, or its decimal text as an env value); else ``RuntimeError_``."""
    if isinstance(value, str) and ERROR_RATE.fullmatch(value):
        value = float(value)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise RuntimeError_(f"error_rate: {str(value)[:20]!r} is not a number from 0 to 1")
    return float(value)


def error_script(shell: str, rate: float) -> str:
    """The CGI ``cgi-bin/index.cgi`` of a pod answering 500 (body ``error <pod>``) to ``rate`` of its requests,
    else its name (lab/load.py tells the bad version's errors by that pod name).

    busybox httpd runs ``cgi-bin/index.cgi`` for ``/`` when the docroot has no ``index.html``.
    Only numbers and the validated absolute path of busybox reach the script; the pod's name comes
    from httpd's environment (``LEENGINE_POD``), quoted: no request or user string becomes a word.
    ``$RANDOM`` of busybox's ash is uniform over 0..32767.
    """
    threshold = round(check_error_rate(rate) * 32768)
    # Content-Length (busybox ash's ${#var}): without it Nginx relays the CGI's answer chunked.
    return (f"#!{shell} sh\n"
            f"if [ \"$RANDOM\" -lt {threshold} ]; then\n"
            "  printf 'HTTP/1.0 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n"
            "Content-Length: %d\\r\\n\\r\\nerror %s' \"$((${#LEENGINE_POD} + 6))\" \"$LEENGINE_POD\"\n"
            "else\n"
            "  printf 'Content-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s' \"${#LEENGINE_POD}\" "
            "\"$LEENGINE_POD\"\n"
            "fi\n")


def find_plugin(cni_path: str, kind: str) -> Path:
    """The executable ``kind`` in the first CNI_PATH directory that has it, as libcni's FindInPath."""
    for directory in filter(None, cni_path.split(":")):
        candidate = Path(directory) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ValueError(f"no CNI plugin {kind!r} in {cni_path}")


def cni_args(pod: Pod) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}")


def cni_error(stdout: bytes, returncode: int) -> RuntimeError_:
    """The plugin's error object (spec: code, msg, details) as an answer; garbage is code 999's 'unknown'."""
    try:
        err = json.loads(stdout)
        code, msg = err.get("code"), err.get("msg")
        details = err.get("details") or ""
        if isinstance(code, int) and isinstance(msg, str):
            return RuntimeError_(f"CNI error {code}: {msg}" + (f" ({details})" if details else ""), code)
    except (ValueError, AttributeError, RecursionError):
        pass
    return RuntimeError_(f"CNI plugin exited {returncode} without an error object: {stdout[:200]!r}")


# ---- the Kubernetes side: a tiny HTTP/1.1 client on asyncio (one connection per call, no threads)
class KubeClient:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--kube {url!r}: expected http://HOST:PORT")
        self.host, self.port = parts.hostname, parts.port or 80

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> tuple[int, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: close\r\n"
                f"Accept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {len(raw)}\r\n\r\n")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), HTTP_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError_(f"Kubernetes API {self.host}:{self.port} unreachable: {exc}") from None
        try:
            writer.write(head.encode() + raw)
            answer = await asyncio.wait_for(_read_all(reader, MAX_ANSWER), HTTP_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError_(f"Kubernetes API {self.host}:{self.port}: {method} {path} failed: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head_bytes, _, payload = answer.partition(b"\r\n\r\n")
        try:
            status = int(head_bytes.split(b" ", 2)[1])
            return status, json.loads(payload) if payload else None
        except (IndexError, ValueError) as exc:
            raise RuntimeError_(f"Kubernetes API: unreadable answer to {method} {path}: {exc}") from None

    async def expect(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201),
                     content_type: str = "application/json") -> Any:
        status, answer = await self.call(method, path, body, content_type)
        if status not in ok:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise RuntimeError_(f"Kubernetes API: {method} {path}: HTTP {status}: {message}")
        return answer


PATCH = "application/merge-patch+json"
MAX_ANSWER = 64 * 1024 * 1024  # bytes of an API answer (a listing of a big Cell's pods)


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Everything up to the end of the connection (``Connection: close``), at most ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > limit:
            raise RuntimeError_(f"Kubernetes API: an answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ContainerRuntime:
    def __init__(self, args: argparse.Namespace) -> None:
        self.node: str = args.node
        self.lab_id: str = args.lab_id
        self.prefix: str = args.netns_prefix
        self.cni_path: str = args.cni_bin
        self.conf = load_network_config(Path(args.cni_conf))
        self.plugin = find_plugin(self.cni_path, self.conf["type"])
        self.stdin = json.dumps(self.conf).encode()
        self.kube = KubeClient(args.kube)
        self.state = Path(args.state_dir or Path(args.socket).parent / f"{self.node}.pods")
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.busybox: str = args.busybox
        # The CGI's interpreter: busybox's ash (it has $RANDOM), by absolute path for the script's #! line.
        self.shell = shutil.which(args.busybox) or "/bin/busybox"
        if not self.shell.startswith("/") or any(c.isspace() for c in self.shell):
            raise ValueError(f"--busybox {args.busybox!r}: no usable absolute path")
        self.pods: dict[str, Pod] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.slots = asyncio.Semaphore(args.max_concurrent)
        self.add_seconds: list[float] = []
        self.del_seconds: list[float] = []
        self.add_in_flight: list[int] = []  # the machine's ADDs in flight as each ADD began (itself included)
        self.in_flight_dir = Path(args.in_flight_dir or Path(args.socket).parent / IN_FLIGHT_DIR)
        self.in_flight_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.in_flight_seq = 0
        self.in_flight_of: dict[str, int] = {}  # container id -> its ADD's in-flight count, until run() answers
        # Where a RunPod's seconds go (the ``samples`` op, for bench/lab_scale.py): waiting for a slot, the
        # netns, httpd from spawn to listening, the API writes, and the whole request.
        self.phases: dict[str, list[float]] = {name: [] for name in PHASES}
        self.inproc_netns = False  # set once the netns directory is a shared mount point

    # ---- helpers
    def _lock(self, pod: str) -> asyncio.Lock:
        return self.locks.setdefault(pod, asyncio.Lock())

    async def _exec(self, *argv: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
                    timeout: float = 30.0) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError_(f"{argv[0]} did not finish within {timeout:.0f} s") from None
        return proc.returncode or 0, out, err

    async def _cni(self, command: str, pod: Pod) -> bytes:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
               "CNI_NETNS": str(NETNS_DIR / pod.netns), "CNI_IFNAME": "eth0", "CNI_PATH": self.cni_path,
               "CNI_ARGS": cni_args(pod), "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        mark = self._mark_in_flight() if command == "ADD" else None
        try:
            started = time.monotonic()
            code, out, _ = await self._exec(str(self.plugin), stdin=self.stdin, env=env, timeout=CNI_TIMEOUT)
            took = time.monotonic() - started
        finally:
            if mark is not None:
                with contextlib.suppress(FileNotFoundError):
                    mark[0].unlink()
        samples = self.add_seconds if command == "ADD" else self.del_seconds
        if len(samples) < MAX_SAMPLES:
            samples.append(round(took, 6))
            if mark is not None:
                self.add_in_flight.append(mark[1])
        if mark is not None:
            self.in_flight_of[pod.container_id] = mark[1]  # for run()'s answer
        if code != 0:
            raise cni_error(out, code)
        return out

    def _mark_in_flight(self) -> tuple[Path, int]:
        """Mark an ADD in flight (module docstring); returns the mark and the machine's ADDs in flight, itself
        included. A mark whose runtime is dead (SIGKILLed mid-ADD) is removed, not counted."""
        self.in_flight_seq += 1
        mark = self.in_flight_dir / f"{os.getpid()}-{self.in_flight_seq}"
        mark.touch()
        count = 0
        with os.scandir(self.in_flight_dir) as entries:
            for entry in entries:
                pid = entry.name.split("-", 1)[0]
                if pid.isdigit() and _alive(int(pid)):
                    count += 1
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        return mark, max(count, 1)

    async def _ip(self, *argv: str) -> None:
        code, _, err = await self._exec("ip", *argv)
        if code != 0:
            raise RuntimeError_(f"ip {' '.join(argv)}: {err.decode(errors='replace').strip()[:300]}")

    async def _make_netns(self, name: str) -> None:
        """The pod's netns with loopback up: in-process (lab/pod_netns.py) once the netns directory is a shared
        mount point; before that with ``ip``, which makes it one."""
        if self.inproc_netns or netns_dir_is_mount(NETNS_DIR):
            self.inproc_netns = True
            try:
                await make_netns(NETNS_DIR / name)
            except OSError as exc:
                raise RuntimeError_(f"netns {name}: {exc}") from None
            return
        await self._ip("netns", "add", name)
        await self._ip("-n", name, "link", "set", "lo", "up")

    async def _delete_netns(self, name: str) -> None:
        try:
            await delete_netns(NETNS_DIR / name)
        except OSError as exc:
            raise RuntimeError_(f"netns {name}: {exc}") from None

    def _state_file(self, pod: str) -> Path:
        return self.state / f"{pod}.json"

    def _save(self, pod: Pod) -> None:
        """Write the pod's state durably (temp + fsync + rename) before anyone else hears of the pod."""
        temp = self.state / f".{pod.name}.json.tmp"
        with open(temp, "w") as f:
            json.dump(asdict(pod), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self._state_file(pod.name))

    def _forget(self, pod: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._state_file(pod).unlink()
        shutil.rmtree(self.state / pod, ignore_errors=True)  # a DNS label under the state dir: the docroot
        self.pods.pop(pod, None)

    def _write_docroot(self, pod: Pod) -> Path:
        """The pod's docroot: ``index.html`` (its name) for a good pod; for one answering errors, no
        ``index.html`` and the CGI of ``error_script`` (files swapped by rename: httpd reads them per request)."""
        docroot = self.state / pod.name
        cgi = docroot / "cgi-bin"
        cgi.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(docroot, 0o755)
        index = docroot / "index.html"
        if pod.error_rate > 0:
            temp = cgi / ".index.cgi.tmp"
            temp.write_text(error_script(self.shell, pod.error_rate))
            os.chmod(temp, 0o755)
            os.replace(temp, cgi / "index.cgi")
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
        else:
            temp = docroot / ".index.html.tmp"
            temp.write_text(pod.name)
            os.replace(temp, index)
            with contextlib.suppress(FileNotFoundError):
                (cgi / "index.cgi").unlink()
        return docroot

    async def _start_httpd(self, pod: Pod) -> int:
        docroot = self._write_docroot(pod)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LEENGINE_LAB": self.lab_id,
               "LEENGINE_POD": pod.name}
        # Started from a thread that entered the pod's netns (lab/pod_netns.py): one exec, no nsenter.
        try:
            proc = await spawn_in_netns(NETNS_DIR / pod.netns, [self.busybox, "httpd", "-f", "-p", str(pod.port),
                                                                "-h", str(docroot)], env)
        except OSError as exc:
            raise RuntimeError_(f"httpd of pod {pod.name}: {exc}") from None
        self.children[pod.name] = proc  # httpd's own pid, reaped by _kill
        return int(proc.pid)

    @staticmethod
    def _listening(pid: int, port: int = 80) -> bool:
        """Does ``pid``'s network namespace have a TCP socket listening on ``port``? (/proc/PID/net/tcp is
        the table of the pid's own netns, so no exec into the namespace is needed)."""
        try:
            lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
            lines += Path(f"/proc/{pid}/net/tcp6").read_text().splitlines()[1:]
        except OSError:
            return False
        suffix = f":{port:04X}"
        return any(len(parts) > 3 and parts[1].endswith(suffix) and parts[3] == "0A"
                   for parts in (line.split() for line in lines))

    def _is_our_httpd(self, pid: int, pod: str) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return (b"httpd" in cmdline and f"LEENGINE_LAB={self.lab_id}".encode() in environ
                and f"LEENGINE_POD={pod}".encode() in environ)

    def _kill(self, pod: Pod) -> None:
        child = self.children.pop(pod.name, None)
        if pod.pid and self._is_our_httpd(pod.pid, pod.name):  # never signal a pid that was reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(pod.pid, signal.SIGKILL)
        if child is not None:  # our child (an adopted pod's parent is init): reap it, leave no zombie
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)

    # ---- operations
    async def run(self, name: object, app: object, namespace: object, port: object = 80, version: object = "",
                  error_rate: object = 0.0) -> dict[str, Any]:
        for field, value in (("pod", name), ("app", app), ("namespace", namespace)):
            if not is_dns_label(value):
                raise RuntimeError_(f"{field}: {value!r} is not a DNS label")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise RuntimeError_(f"port: {str(port)[:20]!r} is not a TCP port (1-65535)")
        assert isinstance(name, str) and isinstance(app, str) and isinstance(namespace, str)  # DNS labels
        version, rate = check_version(version), check_error_rate(error_rate)
        asked = time.monotonic()
        async with self._lock(name), self.slots:
            self._phase("queue_seconds", asked)
            if name in self.pods:
                pod = self.pods[name]
                if pod.app != app or pod.namespace != namespace:
                    raise RuntimeError_(f"pod {name} already runs here as {pod.namespace}/{pod.app}")
                return {"ok": True, "ip": pod.ip, "add_seconds": 0.0, "existing": True}
            container = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex digits, as containerd's sandbox ids
            pod = Pod(name, app, namespace, f"{self.prefix}{name}", container, str(uuid.uuid4()), port=port,
                      version=version, error_rate=rate)
            if (NETNS_DIR / pod.netns).exists():
                raise RuntimeError_(f"netns {pod.netns} exists and is not this runtime's pod")
            self.pods[name] = pod
            added = False
            try:
                # As a kubelet: the Pod is in the API first and its sandbox is set up under the API's uid
                # (K8S_POD_UID), so the handle's uid is the API's (cnictl judges a pod whose uid differs
                # from its handle's as recreated, and released live pods' addresses).
                pod.uid = await self._create(pod)
                self._save(pod)
                phase = time.monotonic()
                await self._make_netns(pod.netns)
                started = self._phase("netns_seconds", phase)
                result = json.loads(await self._cni("ADD", pod))
                add_seconds = time.monotonic() - started
                added = True
                pod.ip = _first_ip(result)
                phase = time.monotonic()
                pod.pid = await self._start_httpd(pod)
                self._save(pod)
                deadline = time.monotonic() + LISTEN_WAIT
                while not self._listening(pod.pid, pod.port):
                    if time.monotonic() > deadline:
                        raise RuntimeError_(f"httpd of pod {name} did not listen within {LISTEN_WAIT:.0f} s")
                    await asyncio.sleep(0.005)
                phase = self._phase("httpd_seconds", phase)
                await self._report(pod)
                self._phase("api_seconds", phase)
                self._phase("run_seconds", asked)
            except BaseException as exc:
                self.in_flight_of.pop(pod.container_id, None)
                await self._undo(pod, added)
                if isinstance(exc, ValueError | KeyError):
                    raise RuntimeError_(f"unreadable CNI result: {exc}") from None
                raise
            return {"ok": True, "ip": pod.ip, "add_seconds": round(add_seconds, 6),
                    "add_in_flight": self.in_flight_of.pop(pod.container_id, 0)}

    def _phase(self, name: str, since: float) -> float:
        """Record the seconds of phase ``name`` since ``since``; returns now (the next phase's start)."""
        now = time.monotonic()
        samples = self.phases[name]
        if len(samples) < MAX_SAMPLES:
            samples.append(round(now - since, 6))
        return now

    async def _create(self, pod: Pod) -> str:
        """Create the Pod (or take over a stale one of that name on this node); returns the uid the API gave it."""
        base = f"/api/v1/namespaces/{pod.namespace}/pods"
        labels = {"app": pod.app, **({"version": pod.version} if pod.version else {})}
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
                "spec": {"nodeName": self.node, "containers": [{"name": "app", "image": IMAGE}]}}
        status, answer = await self.kube.call("POST", base, body)
        if status == 409:  # a pod of that name from a previous run: replace it
            await self.kube.expect("DELETE", f"{base}/{pod.name}", ok=(200, 404))
            answer = await self.kube.expect("POST", base, body)
        elif status not in (200, 201):
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise RuntimeError_(f"Kubernetes API: creating pod {pod.name}: HTTP {status}: {message}")
        uid = answer.get("metadata", {}).get("uid") if isinstance(answer, dict) else None
        if not isinstance(uid, str) or not uid:
            raise RuntimeError_(f"Kubernetes API: pod {pod.name} created without a uid")
        return uid

    async def _report(self, pod: Pod) -> None:
        """Patch the Pod (created by ``_create``) Running + Ready with its address."""
        base = f"/api/v1/namespaces/{pod.namespace}/pods"
        await self.kube.expect("PATCH", f"{base}/{pod.name}/status", {"status": {
            "phase": "Running", "podIP": pod.ip,
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}},
            content_type=PATCH)

    async def _undo(self, pod: Pod, added: bool) -> None:
        if added:
            with contextlib.suppress(RuntimeError_, OSError):
                await self._cni("DEL", pod)
        self._kill(pod)
        with contextlib.suppress(RuntimeError_, OSError):
            if (NETNS_DIR / pod.netns).exists():
                await self._delete_netns(pod.netns)
        with contextlib.suppress(RuntimeError_, OSError):  # created in the API before its sandbox (run)
            await self.kube.expect("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", ok=(200, 404))
        self._forget(pod.name)

    async def stop(self, name: object) -> dict[str, Any]:
        if not is_dns_label(name):
            raise RuntimeError_(f"pod: {name!r} is not a DNS label")
        assert isinstance(name, str)
        async with self._lock(name), self.slots:
            pod = self.pods.get(name)
            if pod is None:
                raise RuntimeError_(f"no pod {name} on this node")
            await self._cni("DEL", pod)  # a failure keeps the pod: the caller retries, as a kubelet does
            self._kill(pod)
            if (NETNS_DIR / pod.netns).exists():
                await self._delete_netns(pod.netns)
            self._forget(name)
            await self.kube.expect("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{name}", ok=(200, 404))
            return {"ok": True}

    async def kill_all(self) -> dict[str, Any]:
        """What a host crash leaves: every httpd SIGKILLed and netns gone, no CNI DEL, the API not told."""
        killed = sorted(self.pods)
        for pod in list(self.pods.values()):
            self._kill(pod)
        for pod in list(self.pods.values()):
            with contextlib.suppress(RuntimeError_, OSError):
                await self._delete_netns(pod.netns)
            self._forget(pod.name)
        return {"ok": True, "killed": killed}

    def set_errors(self, app: object, version: object, error_rate: object) -> dict[str, Any]:
        """Pods of ``app`` at ``version`` answer 500 to ``error_rate`` of their requests from now on (the lab's
        ``bad-version`` fault; 0 makes them good again); the names of the pods changed."""
        if not is_dns_label(app):
            raise RuntimeError_(f"app: {app!r} is not a DNS label")
        version, rate = check_version(version), check_error_rate(error_rate)
        changed = []
        for pod in sorted(self.pods.values(), key=lambda p: p.name):
            if pod.app == app and pod.version == version and version:
                pod.error_rate = rate
                self._write_docroot(pod)
                self._save(pod)
                changed.append(pod.name)
        return {"ok": True, "pods": changed}

    def listing(self) -> dict[str, Any]:
        return {"ok": True, "pods": [{**asdict(p), "alive": self._is_our_httpd(p.pid, p.name)}
                                     for p in sorted(self.pods.values(), key=lambda p: p.name)]}

    # ---- start-up
    async def register_node(self) -> None:
        status, _ = await self.kube.call("POST", "/api/v1/nodes", {"metadata": {"name": self.node}})
        if status == 409:
            await self.kube.expect("PATCH", f"/api/v1/nodes/{self.node}/status",
                                   {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                                   content_type=PATCH)
        elif status not in (200, 201):
            raise RuntimeError_(f"Kubernetes API: registering node {self.node}: HTTP {status}")

    async def recover(self) -> None:
        """Adopt what this node's previous runtime left only when all of it can be verified (module docstring)."""
        saved: dict[str, Pod] = {}
        for path in sorted(self.state.glob("*.json")):
            try:
                pod = Pod(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                path.unlink()
                continue
            if is_dns_label(pod.name) and path.stem == pod.name:
                saved[pod.name] = pod
        listing = await self.kube.expect("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node}")
        in_api = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in listing.get("items", [])}
        for name, pod in saved.items():
            if ((pod.namespace, name) in in_api and (NETNS_DIR / pod.netns).exists()
                    and self._is_our_httpd(pod.pid, name)):
                self.pods[name] = pod
                log.info("adopted pod %s (%s)", name, pod.ip)
        for namespace, name in sorted(in_api):
            if name in self.pods:
                continue
            log.warning("pod %s/%s: nothing of it can be verified on this node: reported Failed", namespace, name)
            failed = {"status": {"phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}]}}
            await self.kube.expect("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", failed,
                                   ok=(200, 404), content_type=PATCH)
        for name, pod in saved.items():  # leftovers that are not adopted: remove what is ours
            if name not in self.pods:
                self._kill(pod)
                if (NETNS_DIR / pod.netns).exists():
                    with contextlib.suppress(RuntimeError_):
                        await self._delete_netns(pod.netns)
                self._forget(name)

    # ---- the socket
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok": false, "error": "request line too long"}\n')
                    return
                answer = await self.answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        op = request.get("op")
        try:
            if op == "run":
                return await self.run(request.get("pod"), request.get("app"), request.get("namespace", "default"),
                                      request.get("port", 80), request.get("version", ""),
                                      request.get("error_rate", 0.0))
            if op == "errors":
                return self.set_errors(request.get("app"), request.get("version"), request.get("error_rate"))
            if op == "stop":
                return await self.stop(request.get("pod"))
            if op == "list":
                return self.listing()
            if op == "kill_all":
                return await self.kill_all()
            if op == "samples":
                return {"ok": True, "cni_add_seconds": list(self.add_seconds),
                        "cni_add_in_flight": list(self.add_in_flight),
                        "cni_del_seconds": list(self.del_seconds),
                        **{name: list(values) for name, values in self.phases.items()}}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except RuntimeError_ as exc:
            answer: dict[str, Any] = {"ok": False, "error": str(exc)}
            if exc.cni_code is not None:
                answer["cni_code"] = exc.cni_code
            return answer
        except OSError as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _first_ip(result: Any) -> str:
    address = result["ips"][0]["address"]
    if not isinstance(address, str):
        raise ValueError("ips[0].address is not a string")
    return address.split("/", 1)[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.container_runtime", description=__doc__.split("\n")[0])
    p.add_argument("--node", required=True, help="this node's name (a DNS label)")
    p.add_argument("--socket", required=True, help="the unix socket to serve (made 0600)")
    p.add_argument("--kube", required=True, help="the Cell's Kubernetes API, http://HOST:PORT")
    p.add_argument("--cni-bin", required=True, help="CNI_PATH: directories of CNI plugins, ':'-separated")
    p.add_argument("--cni-conf", required=True, help="the network configuration (.conf or .conflist)")
    p.add_argument("--lab-id", required=True, help="the lab's id (4 lowercase hex digits)")
    p.add_argument("--netns-prefix", required=True, help="pods' netns are named PREFIX<pod>")
    p.add_argument("--state-dir", default="", help="pod state and docroots (default: <socket dir>/<node>.pods)")
    p.add_argument("--in-flight-dir", default="",
                   help="where the lab's runtimes mark ADDs in flight (default: <socket dir>/cni-adds-in-flight)")
    p.add_argument("--max-concurrent", type=int, default=2, help="pod operations at a time (default 2)")
    p.add_argument("--busybox", default="busybox", help="the busybox binary (default: busybox on PATH)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _check(args: argparse.Namespace) -> str | None:
    if not is_dns_label(args.node):
        return f"--node {args.node!r} is not a DNS label"
    if len(args.lab_id) != 4 or any(c not in "0123456789abcdef" for c in args.lab_id):
        return f"--lab-id {args.lab_id!r}: a lab id is 4 lowercase hex digits"
    prefix = args.netns_prefix
    if not prefix or len(prefix) > 64 or any(not (c.isascii() and (c.isalnum() or c in "-_.")) for c in prefix):
        return f"--netns-prefix {prefix!r}: letters, digits, '-', '_' and '.' only"
    if not 1 <= args.max_concurrent <= 1024:
        return "--max-concurrent must be 1-1024"
    return None


async def serve(args: argparse.Namespace) -> int:
    runtime = ContainerRuntime(args)
    deadline = time.monotonic() + 30
    while True:  # the API may still be coming up (the lab starts them side by side)
        try:
            await runtime.register_node()
            await runtime.recover()
            break
        except RuntimeError_ as exc:
            if time.monotonic() > deadline:
                print(f"python -m lab.container_runtime: error: {exc}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.2)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(args.socket).st_mode):
            os.unlink(args.socket)  # a killed runtime leaves its socket
    staging = f"{args.socket}.{os.getpid()}"
    old = os.umask(0o177)  # born 0600: no window in which another user can connect
    try:
        server = await asyncio.start_unix_server(runtime.handle, path=staging, limit=MAX_LINE)
    finally:
        os.umask(old)
    os.replace(staging, args.socket)  # the path appears only once it listens: a caller never finds it refusing
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("lab %s node %s: runtime serving on %s (%d pods adopted)", args.lab_id, args.node, args.socket,
             len(runtime.pods))
    await stop.wait()
    server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    log.info("node %s: runtime stopping; its %d pods keep running", args.node, len(runtime.pods))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _check(args)
    if problem is None:
        try:
            load_network_config(Path(args.cni_conf))
            find_plugin(args.cni_bin, load_network_config(Path(args.cni_conf))["type"])
            KubeClient(args.kube)
        except (OSError, ValueError) as exc:
            problem = str(exc)
    if problem is not None:
        print(f"python -m lab.container_runtime: error: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
