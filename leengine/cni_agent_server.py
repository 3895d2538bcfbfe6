"""The node CNI agent's unix-socket server: one line of JSON in from ``leengine-cni``, exit code and stdout out.

Each connection carries one invocation (see ``leengine/cni_plugin.py`` for the
wire format): the server reads the request line (at most ``max_request_bytes``,
within ``read_timeout``), parses it with ``cni/spec.py``, calls the ``CniHandler``
method for the command, writes the answer and closes the connection. The answer is
the exit code in ASCII decimal, a newline, then the plugin's stdout verbatim in
UTF-8 (``0\\n<result>`` or ``1\\n<the spec's error object>``): the end of the
connection ends it, so the plugin needs no JSON decoder. VERSION is answered here
too, though the plugin normally answers it without asking.

Error policy: a ``CniError`` from the handler goes to the runtime as it is (the
handler chooses 11 for an unavailable store, 100 for an empty pool...).
Any other exception is a bug or an unclassified failure: it is logged with its
traceback and answered with code 5 (I/O failure, the spec's generic code for "the
operation failed"), not 11, because retrying a bug forever only hides it; the
server keeps serving. A request the server cannot read (too large, not our JSON,
too slow to arrive) is also answered with 5 when the peer is still there.

Invariants:

* the socket file has mode 0600 from the instant it appears (bound under a
  temporary name, chmod-ed, then renamed into place), in a directory created 0700
  if missing; a stale socket is replaced only if nothing answers on it, and a path
  that is not a socket is never removed;
* at most ``max_concurrency`` handler calls run at once; more connections wait
  (the plugin's own deadline bounds how long);
* a handler call is never cancelled because the plugin gave up: an ADD half done
  is worse than an ADD finished late (the runtime's DEL will follow);
* shutdown (``close()``, SIGTERM/SIGINT in ``serve()``) stops accepting at once and
  waits for the requests in flight before removing the socket;
* one log line per request: command, container, ifname, outcome, milliseconds.

It must not know etcd, OVS, netlink or IPAM: those are the handler's (``node/cni_agent.py``),
chosen by the daemon's ``main()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import traceback
from typing import Any

from cni.request import (
    DECODE_FAILURE,
    IO_FAILURE,
    SUPPORTED_VERSIONS,
    CniError,
    CniHandler,
    CniRequest,
)
from cni.spec import error_version, format_error, format_result, format_version, parse_invocation
from leengine.daemon import stop_on_signals

log = logging.getLogger("leengine.cni_agent")

DEFAULT_SOCKET = "/run/leengine/cni.sock"
DEFAULT_MAX_CONCURRENCY = 32
# One request line: the plugin sends at most 1 MiB of configuration (cni.spec.MAX_CONFIG_BYTES), which its
# ASCII-only JSON escaping can grow up to 6 times (a control character becomes \u0001), and at most 64 KiB
# of CNI_* variables, likewise.
MAX_REQUEST_BYTES = 8 << 20
READ_TIMEOUT = 10.0
STALE_PROBE_TIMEOUT = 1.0


class AgentAlreadyRunning(RuntimeError):
    """Another process answers on the socket path: two agents on one node would both allocate."""


class Server:
    """One agent socket. ``await start()``, then ``await close()`` (or ``async with``)."""

    def __init__(self, socket_path: str, handler: CniHandler, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 max_request_bytes: int = MAX_REQUEST_BYTES, read_timeout: float = READ_TIMEOUT) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.socket_path = socket_path
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.requests_served = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        sock = await _bind(self.socket_path)
        st = os.stat(self.socket_path)
        self._inode = (st.st_dev, st.st_ino)
        # limit: the StreamReader's buffer, so an oversized line fails fast instead of growing memory.
        self._server = await asyncio.start_unix_server(self._on_connection, sock=sock,
                                                       limit=self.max_request_bytes + 1)
        log.info("cni agent listening on %s", self.socket_path)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), remove the socket."""
        if self._server is None:
            return
        self._server.close()
        await asyncio.sleep(0)  # connections accepted just before close() get to register themselves
        pending = set(self._connections)
        if pending:
            log.info("cni agent stopping: waiting for %d request(s) in flight", len(pending))
            _done, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self._server.wait_closed()
        self._server = None
        self._remove_own_socket()
        log.info("cni agent stopped")

    def _remove_own_socket(self) -> None:
        # Only our own inode: a newer agent may already have taken the path over.
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.socket_path)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except Exception:  # a bug here must cost one connection, never the agent
            log.error("cni agent failed on a connection:\n%s", traceback.format_exc())
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        command, container_id, ifname = "?", "", ""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), self.read_timeout)
        except (asyncio.LimitOverrunError, ValueError):
            answer = _error_answer(CniError(IO_FAILURE, "request too large",
                                            f"more than {self.max_request_bytes} bytes"), SUPPORTED_VERSIONS[-1])
        except TimeoutError:
            answer = _error_answer(CniError(IO_FAILURE, "request not received in time",
                                            f"no complete request line within {self.read_timeout:g}s"),
                                   SUPPORTED_VERSIONS[-1])
        except asyncio.IncompleteReadError:
            self._log("?", "", "", "no request (peer closed)", started)
            return
        else:
            env, stdin, refused = _decode_envelope(line)
            if refused is not None:
                answer = refused
            else:
                command = env.get("CNI_COMMAND", "?") or "?"
                container_id, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
                async with self._slots:
                    answer = await self._dispatch(env, stdin)
        self.requests_served += 1
        outcome = "ok" if answer["exit"] == 0 else f"error {_code(answer)}"
        try:
            writer.write(_frame(answer))
            await writer.drain()  # then _on_connection closes: the end of the connection ends the answer
        except (ConnectionError, BrokenPipeError):
            outcome += " (plugin gone before the answer)"
        self._log(command, container_id, ifname, outcome, started)

    async def _dispatch(self, env: dict[str, str], stdin: str) -> dict[str, Any]:
        if env.get("CNI_COMMAND") == "VERSION":
            return {"exit": 0, "stdout": format_version(error_version(stdin))}
        version = error_version(stdin)
        try:
            request = parse_invocation(env, stdin)
            version = request.cni_version
            result = await _call(self.handler, request)
        except CniError as err:
            return _error_answer(err, version)
        except Exception as exc:  # a handler bug must cost one request, never the agent
            log.error("cni handler failed unexpectedly:\n%s", traceback.format_exc())
            internal = CniError(IO_FAILURE, "leengine CNI agent internal error", f"{type(exc).__name__}: {exc}")
            return _error_answer(internal, version)
        if result is None:
            return {"exit": 0, "stdout": ""}
        return {"exit": 0, "stdout": format_result(result, version)}

    def _log(self, command: str, container_id: str, ifname: str, outcome: str, started: float) -> None:
        ms = (asyncio.get_running_loop().time() - started) * 1000
        log.info("cni %s container=%s ifname=%s %s %.1fms", command, container_id or "-", ifname or "-", outcome, ms)


async def _call(handler: CniHandler, request: CniRequest) -> dict[str, Any] | None:
    if request.command == "ADD":
        result = await handler.add(request)
        if not isinstance(result, dict):
            raise TypeError(f"handler.add returned {type(result).__name__}, not a result dict")
        return result
    method = {"DEL": handler.delete, "CHECK": handler.check, "GC": handler.gc, "STATUS": handler.status}
    await method[request.command](request)
    return None


def _decode_envelope(line: bytes) -> tuple[dict[str, str], str, dict[str, Any] | None]:
    """(env, stdin, None), or an error answer if the line is not our request format."""
    try:
        envelope = json.loads(line)
        env, stdin = envelope["env"], envelope["stdin"]
        if not isinstance(env, dict) or not isinstance(stdin, str):
            raise TypeError
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TypeError
    except UnicodeDecodeError as exc:
        return {}, "", _error_answer(CniError(DECODE_FAILURE, "request is not valid UTF-8", str(exc)),
                                     SUPPORTED_VERSIONS[-1])
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deeply
        err = CniError(IO_FAILURE, "malformed agent request",
                       'expected {"env": {CNI_* strings}, "stdin": "<text>"} on one line')
        return {}, "", _error_answer(err, SUPPORTED_VERSIONS[-1])
    # Only the CNI_* variables belong to the protocol; anything else is the plugin's environment.
    return {k: v for k, v in env.items() if k.startswith("CNI_")}, stdin, None


def _frame(answer: dict[str, Any]) -> bytes:
    """The wire form: exit code, newline, stdout (UTF-8) until the connection closes."""
    return b"%d\n" % answer["exit"] + answer["stdout"].encode("utf-8")


def _error_answer(err: CniError, cni_version: str) -> dict[str, Any]:
    return {"exit": 1, "stdout": format_error(err, cni_version)}


def _code(answer: dict[str, Any]) -> str:
    try:
        return str(json.loads(answer["stdout"])["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def _bind(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600, replacing a stale socket only if nothing answers on it."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{path} exists and is not a socket; not touching it")
        if await _answers(path):
            raise AgentAlreadyRunning(f"another CNI agent is listening on {path}")
        log.info("removing stale CNI agent socket %s", path)
    # Bind under a private name, restrict, then rename over the final path: no window in which the
    # socket exists with the umask's permissions, and a stale socket is replaced atomically.
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temp)
        os.chmod(temp, 0o600)
        sock.listen(128)
        os.rename(temp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    sock.setblocking(False)
    return sock


async def _answers(path: str) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), STALE_PROBE_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # something holds the socket but is slow: assume it is alive, never steal it
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return True


async def serve(socket_path: str, handler: CniHandler, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                stop: asyncio.Event | None = None, grace: float | None = None) -> None:
    """Serve until ``stop`` is set (without one: until SIGTERM/SIGINT), then shut down gracefully."""
    stop = stop or stop_on_signals()  # the daemon passes its own: signals are installed once, by leengine.daemon
    server = Server(socket_path, handler, max_concurrency=max_concurrency)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close(grace=grace)
