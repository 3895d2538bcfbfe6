"""A Kubernetes API mock server: just enough of /api/v1 over HTTP for the Cluster adapter.

There is no kube-apiserver on the one-machine lab (and none can be installed), so
the real ``kubernetes`` client is tested against this: pods, nodes and Service
endpoints held in memory, served as PodList / NodeList / EndpointsList JSON on
loopback, editable from Python (``put_pod``, ``remove_pod``, ``add_node``,
``set_endpoints``, ``delete_endpoints``) by tests and by the lab driver that plays
the kubelet and the endpoints controller. Unknown paths answer 404 as a real API
server does.

Endpoints are watched as the real API serves them: ``GET /api/v1/endpoints?watch=true
&resourceVersion=N`` streams newline-delimited ``{"type", "object"}`` events, chunked,
for every change after N, in order; ``resourceVersion`` "" or "0" starts with an
ADDED event per current object. A bounded history of changes is kept (``history``):
a version older than it gets a single ERROR event carrying a Status 410 Gone
("Expired"), as a real watch cache answers, and so does a watcher the history ran
past. ``timeoutSeconds`` ends the stream cleanly (after a BOOKMARK with the current
version when ``allowWatchBookmarks`` asked for one). Invariant: one resource version
counter for every change, as etcd's revision is.

It streams as a real API server does over HTTP/1.1: chunked, the connection kept alive
(no ``Connection: close``), so after the terminating chunk the client may send its next
request on it; plain answers carry ``Content-Length`` and keep the connection alive too.
``connection_close=True`` makes watch streams answer ``Connection: close`` instead (as
some proxies do), so the client is tested against both. ``requests`` logs every request
(``"list"`` or ``"watch"`` plus the path), so a test can tell a relist from a quiet watch.

Outages: ``cut_off()`` closes the listening socket (connections are refused) and
drops every open watch mid-stream (no terminating chunk, so the client sees a
broken stream, not an end) and every idle kept-alive connection; ``restore()`` listens again on the same port with the
same state. State is guarded by one lock; watchers wait on a condition of it.
It must not know any agent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_WATCH_TIMEOUT = 1800  # seconds; a real API server picks 30-60 min when the client sets none


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class _Drop(Exception):
    """The stream must break without a proper end (cut-off or stop)."""


class KubeApiMock:
    def __init__(self, *, history: int = 1000, connection_close: bool = False) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: deque[tuple[int, str, dict[str, Any]]] = deque()  # (version, type, object), oldest first
        self._history = history
        self._expired = 0  # the newest version dropped from the history: watches from before it get 410
        self._version = 1
        self._epoch = 0  # bumped by cut_off and stop: streams opened under an older epoch break
        self._server: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self.cut = False
        self.connection_close = connection_close
        self.requests: list[str] = []  # "list /api/v1/endpoints", "watch /api/v1/endpoints", ...
        self._conns: set[socket.socket] = set()  # open client connections, shut down on cut-off and stop

    def count(self, kind: str, path: str = "/api/v1/endpoints") -> int:
        """How many requests of ``kind`` ("list" or "watch") were made for ``path``."""
        with self._lock:
            return self.requests.count(f"{kind} {path}")

    # ---- state
    def put_pod(self, namespace: str, name: str, *, node: str = "", ip: str = "", uid: str | None = None,
                phase: str = "Running", ready: bool = True) -> str:
        uid = uid or str(uuid.uuid4())
        with self._lock:
            self._version += 1
            self._pods[(namespace, name)] = {
                "metadata": {"namespace": namespace, "name": name, "uid": uid, "resourceVersion": str(self._version)},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
                "status": {"phase": phase, "podIP": ip or None,
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
            }
        return uid

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def add_node(self, name: str) -> None:
        with self._lock:
            self._nodes[name] = {"metadata": {"name": name, "uid": str(uuid.uuid4())}}

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)

    def set_endpoints(self, namespace: str, service: str, *, ready: list[str] | tuple[str, ...] = (),
                      not_ready: list[str] | tuple[str, ...] = (), port: int = 8080) -> str:
        """Create or replace a Service's Endpoints; return its resource version (unchanged when nothing changed)."""
        subset: dict[str, Any] = {}
        if ready:
            subset["addresses"] = [{"ip": ip} for ip in ready]
        if not_ready:
            subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
        subsets = [{**subset, "ports": [{"port": port, "protocol": "TCP"}]}] if subset else []
        with self._lock:
            old = self._endpoints.get((namespace, service))
            if not (isinstance(old, dict) and isinstance(old.get("metadata"), dict) and "subsets" in old
                    and "uid" in old["metadata"]):
                old = None if old is None else {"metadata": {"uid": str(uuid.uuid4())}, "subsets": None}
            elif old["subsets"] == subsets:
                return str(old["metadata"]["resourceVersion"])  # a no-op update: no new version, no event
            self._version += 1
            uid = old["metadata"]["uid"] if old else str(uuid.uuid4())
            obj = {"kind": "Endpoints", "apiVersion": "v1",
                   "metadata": {"namespace": namespace, "name": service, "uid": uid,
                                "resourceVersion": str(self._version)},
                   "subsets": subsets}
            self._endpoints[(namespace, service)] = obj
            self._record("MODIFIED" if old else "ADDED", obj)
            return str(self._version)

    def put_raw_endpoints(self, namespace: str, service: str, obj: Any) -> str:
        """Store ``obj`` (any JSON value, well-formed or not) as a Service's Endpoints, as is: a corrupt
        object for tests of the client's decoding. Listed and watched like any other."""
        with self._lock:
            old = self._endpoints.get((namespace, service))
            self._version += 1
            self._endpoints[(namespace, service)] = obj
            self._record("MODIFIED" if old is not None else "ADDED", obj)
            return str(self._version)

    def delete_endpoints(self, namespace: str, service: str) -> None:
        with self._lock:
            old = self._endpoints.pop((namespace, service), None)
            if old is None:
                return
            self._version += 1
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._version)}} \
                if isinstance(old, dict) and isinstance(old.get("metadata"), dict) else old
            self._record("DELETED", gone)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        """Append a change to the history (lock held) and wake the watchers."""
        self._events.append((self._version, kind, obj))
        while len(self._events) > self._history:
            self._expired = self._events.popleft()[0]
        self._changed.notify_all()

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._version)

    def _list(self, kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self._version)},
                "items": items}

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if path == "/api/v1/pods":
                return 200, self._list("PodList", list(self._pods.values()))
            if path == "/api/v1/nodes":
                return 200, self._list("NodeList", list(self._nodes.values()))
            if path == "/api/v1/endpoints":
                return 200, self._list("EndpointsList", [self._endpoints[k] for k in sorted(self._endpoints)])
        return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")

    # ---- watch
    def _watch(self, query: dict[str, list[str]], write: Any) -> None:
        """Stream endpoints events to ``write(event)`` until the timeout; raise _Drop to break the stream."""
        since = query.get("resourceVersion", [""])[0]
        try:
            timeout = int(query.get("timeoutSeconds", [DEFAULT_WATCH_TIMEOUT])[0])
        except ValueError:
            timeout = DEFAULT_WATCH_TIMEOUT
        bookmarks = query.get("allowWatchBookmarks", [""])[0] == "true"
        deadline = time.monotonic() + timeout
        with self._lock:
            epoch = self._epoch
            if since in ("", "0"):  # "any version": the current state first, then changes
                cursor = self._version
                pending = [{"type": "ADDED", "object": self._endpoints[k]} for k in sorted(self._endpoints)]
            else:
                cursor = int(since)  # checked by the caller
                pending = []
        last: dict[str, Any] | None
        while True:
            for event in pending:
                write(event)  # never under the lock: a slow client must not stall the others
            with self._lock:
                while True:
                    if self._epoch != epoch:
                        raise _Drop
                    if cursor < self._expired:  # the history ran past this watcher (or it started too far back)
                        last = {"type": "ERROR", "object": _status(
                            410, "Expired", f"too old resource version: {cursor} ({self._expired + 1})")}
                        break
                    news = [(v, kind, obj) for v, kind, obj in self._events if v > cursor]
                    left = deadline - time.monotonic()
                    if news:
                        last = None
                        break
                    if left <= 0:
                        last = {"type": "BOOKMARK", "object": {
                            "kind": "Endpoints", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self._version)}}} if bookmarks else {}
                        break
                    self._changed.wait(left)
            if last is not None:
                if last:
                    write(last)
                return
            cursor = news[-1][0]
            pending = [{"type": kind, "object": obj} for _, kind, obj in news]

    # ---- HTTP
    def start(self, port: int = 0) -> str:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, chunked watches: as a real API server

            def setup(self) -> None:
                super().setup()
                with mock._lock:
                    mock._conns.add(self.connection)

            def finish(self) -> None:
                with mock._lock:
                    mock._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_GET(self) -> None:  # the name http.server dispatches GET to
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                watch = url.path == "/api/v1/endpoints" and query.get("watch", [""])[0] in ("true", "1")
                with mock._lock:
                    mock.requests.append(f"{'watch' if watch else 'list'} {url.path}")
                if watch:
                    self._stream(query)
                    return
                status, body = mock._answer(url.path)
                self._send(status, body)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _stream(self, query: dict[str, list[str]]) -> None:
                since = query.get("resourceVersion", [""])[0]
                if since not in ("", "0") and not since.isdigit():
                    self._send(400, _status(400, "BadRequest", f"invalid resource version {since!r}"))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                if mock.connection_close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()

                def write(event: dict[str, Any]) -> None:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()

                try:
                    mock._watch(query, write)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except _Drop:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no terminating chunk
                    self.close_connection = True
                except OSError:
                    self.close_connection = True  # the client went away
                if mock.connection_close:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kube-api-mock", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._port is not None
        return f"http://127.0.0.1:{self._port}"

    def _break_streams(self) -> None:
        with self._lock:
            self._epoch += 1
            self._changed.notify_all()
            conns = list(self._conns)
        for conn in conns:  # idle kept-alive connections too: a server that went away answers nothing
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # waits for the handler threads, streams included
            self._server = None

    def cut_off(self) -> None:
        """The API server goes away: connections are refused and open watches break mid-stream."""
        self.cut = True
        self._break_streams()
        self._close_listener()

    def restore(self) -> None:
        """Back on the same port, with the same objects and history."""
        if self._server is None and self._port is not None:
            self.start(self._port)
        self.cut = False

    def stop(self) -> None:
        self._break_streams()
        self._close_listener()
        self._port = None

    def __enter__(self) -> KubeApiMock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
