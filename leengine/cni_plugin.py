"""``leengine-cni``: the CNI plugin executable the container runtime runs; a thin forwarder to the node's CNI agent.

The runtime runs this once per ADD/DEL/CHECK/GC/STATUS, so it must start fast and
hold no state: it answers VERSION itself and forwards everything else, verbatim,
over a unix socket to the long-lived per-node agent (``leengine/cni_agent_server.py``),
which holds the etcd, OVS and netlink handles and does the parsing and the work.

Protocol (one request, one answer, each one line of JSON)::

    plugin → agent   {"env": {only the CNI_* variables}, "stdin": "<network configuration, as text>"}\\n
    agent → plugin   {"exit": <int>, "stdout": "<what the plugin prints>"}\\n

Socket: ``$LEENGINE_CNI_SOCKET``, else the configuration's ``agentSocket``, else
``/run/leengine/cni.sock``. Answer deadline: ``$LEENGINE_CNI_TIMEOUT``, else the
configuration's ``agentTimeout``, else 30 s (an ADD may wait on etcd and OVS).

When the agent cannot be reached (no socket, refused, closed without answering,
no answer in time) the plugin prints the spec's error object and exits 1 with
code 11, "try again later"; for STATUS with 50, "plugin not available". DEL gets
11 too, not success: the agent holds the address in etcd, and a DEL that
reported success without reaching it would make the runtime forget the pod and
leak its address until ``cnictl check``. An error makes the runtime retry the
DEL, which is idempotent on the agent's side.

Invariants: imports only the standard library's smallest modules (no ``cni``
package, no dataclasses): start-up time is paid on every pod start. It must not
know the handler, etcd, OVS or the request's fields beyond ``cniVersion`` and
``agentSocket``/``agentTimeout``: validation is the agent's job (``cni/spec.py``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")  # == cni.request.SUPPORTED_VERSIONS (a test keeps them equal)
DEFAULT_SOCKET = "/run/leengine/cni.sock"
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0  # a live agent accepts at once; a full backlog must not hang the runtime
MAX_ANSWER = 16 << 20

# The spec's codes (kept local: importing cni.request would cost start-up time).
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")


class _Unreachable(Exception):
    """The agent did not answer: nobody listens, it hung up, or it was too slow."""


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    raw = sys.stdin.buffer.read()
    try:
        stdin = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _fail(DECODE_FAILURE, "stdin is not valid UTF-8", str(exc), SUPPORTED_VERSIONS[-1])
    conf = _loads(stdin)
    version = conf.get("cniVersion") if isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] else None
    err_version = version or SUPPORTED_VERSIONS[-1]

    if command not in COMMANDS:
        what = "missing" if not command else f"unknown: {command!r}"
        return _fail(INVALID_ENV, f"CNI_COMMAND {what}", "CNI_COMMAND", err_version)
    if command == "VERSION":
        if stdin.strip() and conf is _NOT_JSON:
            return _fail(DECODE_FAILURE, "failed to decode the VERSION request", "stdin is not a JSON object",
                         err_version)
        _out(json.dumps({"cniVersion": version or SUPPORTED_VERSIONS[-1],
                         "supportedVersions": list(SUPPORTED_VERSIONS)}))
        return 0

    path = os.environ.get("LEENGINE_CNI_SOCKET") or _str(conf.get("agentSocket")) or DEFAULT_SOCKET
    timeout = _timeout(os.environ.get("LEENGINE_CNI_TIMEOUT"), conf.get("agentTimeout"))
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    request = json.dumps({"env": env, "stdin": stdin}, separators=(",", ":")).encode() + b"\n"
    try:
        answer = _exchange(path, request, timeout)
    except _Unreachable as exc:
        if command == "STATUS":
            return _fail(PLUGIN_NOT_AVAILABLE, "the leengine CNI agent is not available", str(exc), err_version)
        return _fail(TRY_AGAIN_LATER, "the leengine CNI agent is not available; try again later", str(exc),
                     err_version)
    except OSError as exc:  # e.g. permission denied on the socket: retrying will not help
        return _fail(IO_FAILURE, "cannot talk to the leengine CNI agent", f"{path}: {exc}", err_version)

    try:
        reply = json.loads(answer)
        code, out = reply["exit"], reply["stdout"]
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(out, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _fail(IO_FAILURE, "the leengine CNI agent answered garbage", repr(answer[:200]), err_version)
    if out:
        _out(out)
    return code if 0 <= code <= 255 else 1


def _exchange(path: str, request: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(CONNECT_TIMEOUT, timeout))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _Unreachable(f"{path}: {exc.strerror or exc}") from None
        except TimeoutError:
            raise _Unreachable(f"{path}: connect timed out after {min(CONNECT_TIMEOUT, timeout):g}s") from None
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(request)
            chunks: list[bytes] = []
            size = 0
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n") or size > MAX_ANSWER:
                    break
        except TimeoutError:
            raise _Unreachable(f"{path}: no answer within {timeout:g}s") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Unreachable(f"{path}: the agent hung up: {exc.strerror or exc}") from None
        if not chunks:
            raise _Unreachable(f"{path}: the agent closed the connection without answering")
        return b"".join(chunks)
    finally:
        sock.close()


_NOT_JSON: dict = {}  # sentinel: stdin did not parse as a JSON object


def _loads(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return _NOT_JSON
    return value if isinstance(value, dict) else _NOT_JSON


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _timeout(env_value: str | None, conf_value: object) -> float:
    for candidate in (env_value, conf_value):
        if candidate is None or isinstance(candidate, bool):
            continue
        try:
            seconds = float(candidate)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            return seconds
    return DEFAULT_TIMEOUT


def _fail(code: int, msg: str, details: str, cni_version: str) -> int:
    # The runtime (libcni) parses the error object from stdout; stderr is for humans.
    _out(json.dumps({"cniVersion": cni_version, "code": code, "msg": msg, "details": details}))
    sys.stderr.write(f"leengine-cni: {msg}: {details}\n")
    return 1


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
