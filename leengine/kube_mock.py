"""A Kubernetes API mock server: just enough of /api/v1 over HTTP for the Cluster adapter.

There is no kube-apiserver on the one-machine lab (and none can be installed), so
the real ``kubernetes`` client is tested against this: pods and nodes held in
memory, served as PodList / NodeList JSON on loopback, editable from Python
(``put_pod``, ``remove_pod``, ``add_node``) by tests and by the lab driver that
plays the kubelet. Unknown paths answer 404 as a real API server does.
It must not know any agent.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class KubeApiMock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._version = 1
        self._server: ThreadingHTTPServer | None = None

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

    def _list(self, kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self._version)},
                "items": items}

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if path == "/api/v1/pods":
                return 200, self._list("PodList", list(self._pods.values()))
            if path == "/api/v1/nodes":
                return 200, self._list("NodeList", list(self._nodes.values()))
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}

    # ---- HTTP
    def start(self, port: int = 0) -> str:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server dispatches GET to
                status, body = mock._answer(self.path.split("?", 1)[0])
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, name="kube-api-mock", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KubeApiMock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
