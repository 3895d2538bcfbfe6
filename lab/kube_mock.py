"""A Kubernetes API server for tests and the lab: enough of /api/v1 over HTTP for the Cluster adapter,
the lab kubelet (lab/container_runtime.py) and a fault driver.

There is no kube-apiserver on the one-machine lab (and none can be installed); PyPI's
``kmock`` was tried and does not serve (README, dependency table: its watches ignore
``resourceVersion`` and ``timeoutSeconds``, lists carry no version, writes are not
validated). So the real ``kubernetes`` client is served by this: pods, nodes and Endpoints
held in memory, one resource version counter for every change (as etcd's revision is).

* **Reads**: ``GET /api/v1/{pods,nodes,endpoints,namespaces,replicationcontrollers}``, the
  namespaced collections ``/api/v1/namespaces/NS/{pods,endpoints,replicationcontrollers}``
  and single objects, as PodList / NodeList /
  EndpointsList JSON with the list's ``resourceVersion``; ``labelSelector`` (``k=v``,
  ``k!=v``, ``k``) and ``fieldSelector`` (``spec.nodeName``, ``metadata.name``,
  ``metadata.namespace``) as a kubelet uses them. Unknown paths answer 404.
* **Writes** (``lab/kube_objects.py`` and ``lab/kube_workloads.py`` validate them; a bad one
  is a Status 400/422 and changes nothing): ``POST`` pods, nodes, namespaces and replication
  controllers (409 when the name exists; a controller's namespace must exist, else 404),
  ``PUT``/``PATCH``
  (JSON merge patch; a strategic merge patch is read as one) of an object or of its
  ``/status`` subresource, with the real split: a create and the main resource never set
  status, ``/status`` sets only status; a pod's spec is immutable (a controller's is not: a
  scale is a merge patch of ``spec.replicas``). ``DELETE`` removes at once (grace period 0)
  and answers the object; deleting a namespace first deletes its controllers, pods and
  Endpoints (no Terminating phase). Nothing here runs a controller's pods: the lab
  kubelet and controller do. Bodies are bounded (413) and need a
  ``Content-Length`` (411).
* **The endpoints controller**: every pod or node change recomputes the Endpoints
  ``NS/APP`` of the pods labelled ``app=APP`` (Ready pods on Ready nodes under
  ``addresses``, other addressed pods under ``notReadyAddresses``, port
  ``endpoints_port``); an Endpoints object set by hand (``set_endpoints``) is left alone.
* **Watches**: ``?watch=true&resourceVersion=N`` on any collection above streams
  newline-delimited ``{"type", "object"}`` events, chunked, for every change after N, in
  order; ``resourceVersion`` "" or "0" starts with an ADDED event per current object. A
  bounded history of changes is kept (``history``): a version older than it gets a single
  ERROR event carrying a Status 410 Gone ("Expired"), as a real watch cache answers, and so
  does a watcher the history ran past. ``timeoutSeconds`` ends the stream cleanly (after a
  BOOKMARK with the current version when ``allowWatchBookmarks`` asked for one).
* It streams as a real API server does over HTTP/1.1: chunked, the connection kept alive
  (no ``Connection: close``), so after the terminating chunk the client may send its next
  request on it; plain answers carry ``Content-Length`` and keep the connection alive too.
  ``connection_close=True`` makes watch streams answer ``Connection: close`` instead (as
  some proxies do), so the client is tested against both. ``requests`` logs the last
  requests (``"list"``, ``"watch"``, ``"get"``, ``"create"``, ``"update"``, ``"patch"``,
  ``"delete"`` plus the path), so a test can tell a relist from a quiet watch.
* Python callers (tests, the lab driver) edit state directly too: ``put_pod``,
  ``remove_pod``, ``add_node``, ``set_node_ready``, ``set_endpoints``, ``delete_endpoints``;
  these trust their caller and skip validation.

Outages: ``cut_off()`` closes the listening socket (connections are refused) and drops
every open watch mid-stream (no terminating chunk, so the client sees a broken stream, not
an end) and every idle kept-alive connection; ``restore()`` listens again on the same port
with the same state. State is guarded by one lock; watchers wait on a condition of it.
Stored objects are never mutated once stored (a write stores a new object), so answers are
serialised outside the lock. It must not know any agent.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from lab.kube_objects import (
    Invalid,
    check_depth,
    endpoints_subsets,
    is_dns_label,
    merge_patch,
    node_from,
    pod_app,
    pod_from,
)
from lab.kube_workloads import controller_from, namespace_from

DEFAULT_WATCH_TIMEOUT = 1800  # seconds; a real API server picks 30-60 min when the client sets none
MAX_BODY = 256 * 1024  # bytes of a write's body; a Pod of the lab is well under 2 KiB
KINDS = {"pods": "Pod", "nodes": "Node", "endpoints": "Endpoints", "namespaces": "Namespace",
         "replicationcontrollers": "ReplicationController"}
NAMESPACED = ("pods", "endpoints", "replicationcontrollers")
WRITABLE = ("pods", "nodes", "namespaces", "replicationcontrollers")  # Endpoints are the controller's
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")

Key = tuple[str, str]  # (namespace, name); "" is the namespace of a node or a namespace


def _validated(resource: str, body: Any, namespace: str, name: str | None) -> dict[str, Any]:
    """The object a write of ``body`` stores (kube_objects, kube_workloads); ``Invalid`` if it is none."""
    if resource == "pods":
        return pod_from(body, namespace=namespace, name=name)
    if resource == "replicationcontrollers":
        return controller_from(body, namespace=namespace, name=name)
    if resource == "namespaces":
        return namespace_from(body, name=name)
    return node_from(body, name=name)


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Drop(Exception):
    """The stream must break without a proper end (cut-off or stop)."""


class _Refused(Exception):
    """A request the API answers with a Status (not found, invalid, conflict...)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = _status(code, reason, message, details)
        self.code = code


def _invalid(exc: Invalid, kind: str, name: str) -> _Refused:
    if exc.code == 400:
        return _Refused(400, "BadRequest", str(exc))
    return _Refused(422, "Invalid", f'{kind} "{name}" is invalid: {exc}',
                    {"name": name, "kind": kind, "causes": [{"field": exc.field, "message": str(exc)}]})


class _Route:
    """What a path names: a collection (``name`` None) or one object, maybe its ``/status``."""

    def __init__(self, resource: str, namespace: str | None, name: str | None, status: bool) -> None:
        self.resource, self.namespace, self.name, self.status = resource, namespace, name, status

    @staticmethod
    def parse(path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            return None
        rest = parts[2:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
            if not is_dns_label(namespace) or rest[0] not in NAMESPACED:
                return None
        if not rest or rest[0] not in KINDS or len(rest) > 3:
            return None
        name = rest[1] if len(rest) >= 2 else None
        status = len(rest) == 3
        if (status and rest[2] != "status") or (name is not None and not is_dns_label(name)):
            return None
        return _Route(rest[0], namespace, name, status)


class _Selector:
    """The equality-based label and field selectors a kubelet or a controller sends."""

    FIELDS: ClassVar[dict[str, tuple[str, str]]] = {
        "spec.nodeName": ("spec", "nodeName"), "metadata.name": ("metadata", "name"),
        "metadata.namespace": ("metadata", "namespace")}

    def __init__(self, query: dict[str, list[str]]) -> None:
        self.labels = self._terms(query.get("labelSelector", [""])[0], labels=True)
        self.fields = self._terms(query.get("fieldSelector", [""])[0], labels=False)

    def _terms(self, text: str, *, labels: bool) -> list[tuple[str, str, str | None]]:
        terms: list[tuple[str, str, str | None]] = []
        for term in filter(None, (t.strip() for t in text.split(",")[:32])):
            for op in ("!=", "==", "="):
                if op in term:
                    key, value = (s.strip() for s in term.split(op, 1))
                    terms.append((key, "!=" if op == "!=" else "=", value))
                    break
            else:
                if not labels:
                    raise _Refused(400, "BadRequest", f"invalid field selector {term!r}")
                terms.append((term, "exists", None))
            if not labels and terms[-1][0] not in self.FIELDS:
                raise _Refused(400, "BadRequest", f"field label not supported: {terms[-1][0]}")
        return terms

    def __bool__(self) -> bool:
        return bool(self.labels or self.fields)

    def matches(self, obj: Any) -> bool:
        if not self:
            return True
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if not isinstance(labels, dict):
            labels = {}
        for key, op, value in self.labels:
            if (op == "exists" and key not in labels) or (op == "=" and labels.get(key) != value) \
                    or (op == "!=" and labels.get(key) == value):
                return False
        for key, op, value in self.fields:
            section, field = self.FIELDS[key]
            part = obj.get(section) if isinstance(obj, dict) else None
            got = (part.get(field) if isinstance(part, dict) else None) or ""
            if (op == "=" and got != value) or (op == "!=" and got == value):
                return False
        return True


class KubeApiMock:
    def __init__(self, *, history: int = 1000, connection_close: bool = False, host: str = "127.0.0.1",
                 endpoints_port: int = 80, request_log: int = 10000) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[str, dict[Key, Any]] = {resource: {} for resource in KINDS}
        self._app_pods: dict[Key, set[str]] = {}  # (namespace, app) -> names of its pods
        self._managed: set[Key] = set()  # the Endpoints the controller made (the others were set by hand)
        self._events: list[tuple[int, str, str, Any]] = []  # (version, resource, type, object), oldest first
        self._history = history
        self._expired = 0  # the newest version dropped from the history: watches from before it get 410
        self._version = 1
        self._epoch = 0  # bumped by cut_off and stop: streams opened under an older epoch break
        self._server: ThreadingHTTPServer | None = None
        self._host = host
        self._port: int | None = None
        self.endpoints_port = endpoints_port
        self.cut = False
        self.connection_close = connection_close
        self.requests: deque[str] = deque(maxlen=request_log)  # "list /api/v1/endpoints", ...
        self._conns: set[socket.socket] = set()  # open client connections, shut down on cut-off and stop

    def count(self, kind: str, path: str = "/api/v1/endpoints") -> int:
        """How many requests of ``kind`` ("list", "watch", "create", ...) were made for ``path``."""
        with self._lock:
            return self.requests.count(f"{kind} {path}")

    # ---- the store (lock held by the callers of the underscored methods)
    def _commit(self, resource: str, key: Key, obj: Any) -> Any:
        """Store ``obj`` (None deletes) under a new version, record the event; return what was stored."""
        table = self._objects[resource]
        old = table.get(key)
        if obj is None and old is None:
            return None
        self._version += 1
        if obj is None:
            del table[key]
            obj = old
            if isinstance(old, dict) and isinstance(old.get("metadata"), dict):
                obj = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._version)}}
            kind = "DELETED"
        else:
            if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                obj["metadata"]["resourceVersion"] = str(self._version)
            table[key] = obj
            kind = "MODIFIED" if old is not None else "ADDED"
        self._record(resource, kind, obj)
        if resource == "pods":
            self._pod_changed(key, old, None if kind == "DELETED" else obj)
        elif resource == "nodes":
            self._node_changed(key[1])
        return obj

    def _record(self, resource: str, kind: str, obj: Any) -> None:
        """Append a change to the history and wake the watchers; trim in steps so trimming stays cheap."""
        self._events.append((self._version, resource, kind, obj))
        if len(self._events) > self._history + max(1, self._history // 4):
            drop = len(self._events) - self._history
            self._expired = self._events[drop - 1][0]
            del self._events[:drop]
        self._changed.notify_all()

    def _pod_changed(self, key: Key, old: Any, new: Any) -> None:
        namespace, name = key
        apps = []
        for pod, add in ((old, False), (new, True)):
            app = pod_app(pod) if isinstance(pod, dict) else None
            if app is None:
                continue
            names = self._app_pods.setdefault((namespace, app), set())
            if add:
                names.add(name)
            else:
                names.discard(name)
            if app not in apps:
                apps.append(app)
        for app in apps:
            self._sync_endpoints(namespace, app)

    def _node_changed(self, node: str) -> None:
        apps = sorted({(ns, app) for (ns, _), pod in self._objects["pods"].items()
                       if isinstance(pod, dict) and pod.get("spec", {}).get("nodeName") == node
                       and (app := pod_app(pod)) is not None})
        for namespace, app in apps:
            self._sync_endpoints(namespace, app)

    def _node(self, name: str) -> dict[str, Any] | None:
        node = self._objects["nodes"].get(("", name))
        return node if isinstance(node, dict) and isinstance(node.get("status"), dict) else None

    def _sync_endpoints(self, namespace: str, app: str) -> None:
        """The endpoints controller: Endpoints NS/APP follows the app's pods (lock held)."""
        key = (namespace, app)
        old = self._objects["endpoints"].get(key)
        if old is not None and key not in self._managed:
            return  # set by hand: not the controller's
        pods = [self._objects["pods"][(namespace, name)] for name in sorted(self._app_pods.get(key, ()))]
        subsets = endpoints_subsets(pods, self._node, self.endpoints_port)
        if old is not None and old["subsets"] == subsets:
            return
        meta = {"namespace": namespace, "name": app, "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                "labels": {"app": app}}
        self._managed.add(key)
        self._commit("endpoints", key, {"kind": "Endpoints", "apiVersion": "v1", "metadata": meta,
                                        "subsets": subsets})

    # ---- state from Python (tests, the lab driver): trusted, not validated
    def put_pod(self, namespace: str, name: str, *, node: str = "", ip: str = "", uid: str | None = None,
                phase: str = "Running", ready: bool = True, labels: dict[str, str] | None = None) -> str:
        uid = uid or str(uuid.uuid4())
        meta: dict[str, Any] = {"namespace": namespace, "name": name, "uid": uid}
        if labels:
            meta["labels"] = dict(labels)
        status: dict[str, Any] = {"phase": phase, "podIP": ip or None,
                                  "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        with self._lock:
            self._commit("pods", (namespace, name), {
                "kind": "Pod", "apiVersion": "v1", "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]}, "status": status})
        return uid

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._commit("pods", (namespace, name), None)

    def add_node(self, name: str, *, ready: bool = True) -> None:
        with self._lock:
            self._commit("nodes", ("", name), {
                "kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "uid": str(uuid.uuid4())},
                "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})

    def set_node_ready(self, name: str, ready: bool) -> None:
        """What a node controller does when a node stops (or resumes) reporting: Ready False (True)."""
        with self._lock:
            node = self._node(name)
            if node is None:
                raise KeyError(name)
            conditions = [c for c in node["status"].get("conditions", []) if c.get("type") != "Ready"]
            conditions.append({"type": "Ready", "status": "True" if ready else "False"})
            self._commit("nodes", ("", name), {**node, "metadata": dict(node["metadata"]),
                                               "status": {**node["status"], "conditions": conditions}})

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._commit("nodes", ("", name), None)

    def get(self, resource: str, namespace: str, name: str) -> Any:
        """A copy of one stored object (``namespace`` "" for a node), or None."""
        with self._lock:
            return copy.deepcopy(self._objects[resource].get((namespace, name)))

    def objects(self, resource: str) -> list[Any]:
        """Copies of every stored object of ``resource``, by (namespace, name)."""
        with self._lock:
            table = self._objects[resource]
            return [copy.deepcopy(table[key]) for key in sorted(table)]

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
            self._managed.discard((namespace, service))
            old = self._objects["endpoints"].get((namespace, service))
            if not (isinstance(old, dict) and isinstance(old.get("metadata"), dict) and "subsets" in old
                    and "uid" in old["metadata"]):
                old = None if old is None else {"metadata": {"uid": str(uuid.uuid4())}, "subsets": None}
            elif old["subsets"] == subsets:
                return str(old["metadata"]["resourceVersion"])  # a no-op update: no new version, no event
            uid = old["metadata"]["uid"] if old else str(uuid.uuid4())
            obj = {"kind": "Endpoints", "apiVersion": "v1",
                   "metadata": {"namespace": namespace, "name": service, "uid": uid}, "subsets": subsets}
            self._commit("endpoints", (namespace, service), obj)
            return str(self._version)

    def put_raw_endpoints(self, namespace: str, service: str, obj: Any) -> str:
        """Store ``obj`` (any JSON value, well-formed or not) as a Service's Endpoints, as is: a corrupt
        object for tests of the client's decoding. Listed and watched like any other."""
        with self._lock:
            self._managed.discard((namespace, service))
            self._version += 1
            kind = "MODIFIED" if (namespace, service) in self._objects["endpoints"] else "ADDED"
            self._objects["endpoints"][(namespace, service)] = obj
            self._record("endpoints", kind, obj)
            return str(self._version)

    def delete_endpoints(self, namespace: str, service: str) -> None:
        with self._lock:
            self._managed.discard((namespace, service))
            self._commit("endpoints", (namespace, service), None)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._version)

    # ---- reads
    def _visible(self, route: _Route, selector: _Selector) -> Callable[[Any], bool]:
        def visible(obj: Any) -> bool:
            if route.namespace is not None:
                meta = obj.get("metadata") if isinstance(obj, dict) else None
                if not isinstance(meta, dict) or meta.get("namespace") != route.namespace:
                    return False
            return selector.matches(obj)

        return visible

    def _list(self, route: _Route, selector: _Selector) -> dict[str, Any]:
        visible = self._visible(route, selector)
        with self._lock:
            table = self._objects[route.resource]
            items = [table[key] for key in sorted(table) if visible(table[key])]
            version = str(self._version)
        return {"kind": f"{KINDS[route.resource]}List", "apiVersion": "v1",
                "metadata": {"resourceVersion": version}, "items": items}

    def _fetch(self, route: _Route) -> Any:
        assert route.name is not None
        with self._lock:
            obj = self._objects[route.resource].get((route.namespace or "", route.name))
        if obj is None:
            raise _Refused(404, "NotFound", f'{route.resource} "{route.name}" not found',
                           {"name": route.name, "kind": route.resource})
        return obj

    # ---- writes
    def _create(self, route: _Route, body: Any) -> Any:
        kind = KINDS[route.resource]
        name = body.get("metadata", {}).get("name") if isinstance(body, dict) and isinstance(
            body.get("metadata"), dict) else None
        try:
            obj = _validated(route.resource, body, route.namespace or "", None)
        except Invalid as exc:
            raise _invalid(exc, kind, str(name)) from None
        obj["metadata"]["uid"] = str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = _now()
        if route.resource == "pods":
            obj["status"] = {"phase": "Pending", "conditions": []}  # a create never sets status
        elif route.resource == "replicationcontrollers":
            obj["status"] = {"replicas": 0, "readyReplicas": 0}
        key = (route.namespace or "", obj["metadata"]["name"])
        with self._lock:
            if route.resource == "replicationcontrollers" and ("", key[0]) not in self._objects["namespaces"]:
                raise _Refused(404, "NotFound", f'namespaces "{key[0]}" not found',
                               {"name": key[0], "kind": "namespaces"})
            if key in self._objects[route.resource]:
                raise _Refused(409, "AlreadyExists", f'{route.resource} "{key[1]}" already exists',
                               {"name": key[1], "kind": route.resource})
            return self._commit(route.resource, key, obj)

    def _change(self, route: _Route, body: Any, *, patch: bool) -> Any:
        """PUT or PATCH of an object or of its status, with the main resource / status split."""
        assert route.name is not None
        kind, key = KINDS[route.resource], (route.namespace or "", route.name)
        with self._lock:
            old = self._objects[route.resource].get(key)
            if not isinstance(old, dict):
                raise _Refused(404, "NotFound", f'{route.resource} "{route.name}" not found',
                               {"name": route.name, "kind": route.resource})
            wanted = merge_patch(old, body) if patch else body
            if not isinstance(wanted, dict):
                raise _Refused(400, "BadRequest", "the body must be an object")
            meta = wanted.get("metadata")
            if patch and isinstance(meta, dict):  # a patch need not repeat the name; a replacement must
                wanted = {**wanted, "metadata": {**meta, "name": route.name}}
            try:
                new = _validated(route.resource, wanted, key[0], route.name)
            except Invalid as exc:
                raise _invalid(exc, kind, route.name) from None
            if route.status:  # only the status changes
                merged = {**old, "metadata": dict(old["metadata"]), "status": new["status"]}
            else:  # everything but the status; a pod's spec is the scheduler's and the kubelet's, fixed
                if route.resource == "pods" and new["spec"] != old["spec"]:
                    raise _invalid(Invalid("spec", "pod updates may not change the spec"), kind, route.name)
                labels = new["metadata"].get("labels")
                merged_meta = {k: v for k, v in old["metadata"].items() if k != "labels"}
                if labels:
                    merged_meta["labels"] = labels
                merged = {**old, "metadata": merged_meta, "spec": new["spec"]}
            if not patch and isinstance(meta, dict) and meta.get("resourceVersion") not in (
                    None, "", old["metadata"]["resourceVersion"]):
                raise _Refused(409, "Conflict", f'Operation cannot be fulfilled on {route.resource} "{route.name}": '
                                                "the object has been modified; please apply your changes to the "
                                                "latest version and try again")
            if merged == old:
                return old  # a no-op write: no new version, no event (as the real API)
            return self._commit(route.resource, key, merged)

    def _delete(self, route: _Route) -> Any:
        assert route.name is not None
        key = (route.namespace or "", route.name)
        with self._lock:
            if route.resource == "namespaces" and key in self._objects["namespaces"]:
                self._empty_namespace(route.name)
            gone = self._commit(route.resource, key, None)
        if gone is None:
            raise _Refused(404, "NotFound", f'{route.resource} "{route.name}" not found',
                           {"name": route.name, "kind": route.resource})
        return gone

    def _empty_namespace(self, namespace: str) -> None:
        """Delete what a namespace holds, each object its own change (lock held): pods first, so the
        endpoints controller is done with the namespace before its Endpoints go."""
        for resource in ("replicationcontrollers", "pods", "endpoints"):
            for key in sorted(k for k in self._objects[resource] if k[0] == namespace):
                self._commit(resource, key, None)
                self._managed.discard(key)

    # ---- watch
    def _watch(self, route: _Route, selector: _Selector, query: dict[str, list[str]],
               write: Callable[[dict[str, Any]], None]) -> None:
        """Stream events to ``write(event)`` until the timeout; raise _Drop to break the stream."""
        since = query.get("resourceVersion", [""])[0]
        try:
            timeout = int(query.get("timeoutSeconds", [DEFAULT_WATCH_TIMEOUT])[0])
        except ValueError:
            timeout = DEFAULT_WATCH_TIMEOUT
        bookmarks = query.get("allowWatchBookmarks", [""])[0] == "true"
        visible = self._visible(route, selector)
        deadline = time.monotonic() + timeout
        with self._lock:
            epoch = self._epoch
            if since in ("", "0"):  # "any version": the current state first, then changes
                cursor = self._version
                table = self._objects[route.resource]
                pending = [{"type": "ADDED", "object": table[k]} for k in sorted(table) if visible(table[k])]
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
                    start = bisect.bisect_right(self._events, cursor, key=lambda e: e[0])
                    news = self._events[start:]
                    left = deadline - time.monotonic()
                    if news:
                        last = None
                        break
                    if left <= 0:
                        last = {"type": "BOOKMARK", "object": {
                            "kind": KINDS[route.resource], "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self._version)}}} if bookmarks else {}
                        break
                    self._changed.wait(left)
            if last is not None:
                if last:
                    write(last)
                return
            cursor = news[-1][0]
            pending = [{"type": kind, "object": obj} for _, resource, kind, obj in news
                       if resource == route.resource and visible(obj)]

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

            def _log(self, verb: str, path: str) -> None:
                with mock._lock:
                    mock.requests.append(f"{verb} {path}")

            def do_GET(self) -> None:  # the names http.server dispatches methods to
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                route = _Route.parse(url.path)
                watch = route is not None and route.name is None and query.get("watch", [""])[0] in ("true", "1")
                self._log("watch" if watch else "get" if route and route.name else "list", url.path)
                try:
                    if route is None:
                        raise _Refused(404, "NotFound",
                                       f"the server could not find the requested resource ({url.path})")
                    selector = _Selector(query)
                    if watch:
                        self._stream(route, selector, query)
                        return
                    self._send(200, mock._fetch(route) if route.name else mock._list(route, selector))
                except _Refused as refused:
                    self._send(refused.code, refused.body)

            def do_POST(self) -> None:
                self._write("create", lambda route, body: (201, mock._create(route, body)), named=False)

            def do_PUT(self) -> None:
                self._write("update", lambda route, body: (200, mock._change(route, body, patch=False)))

            def do_PATCH(self) -> None:
                kind = self.headers.get("Content-Type", "").split(";")[0].strip()
                if kind not in MERGE_PATCHES:
                    self._discard_body()
                    self._send(415, _status(415, "UnsupportedMediaType",
                                            f"the patch type {kind!r} is not supported here: use "
                                            "application/merge-patch+json"))
                    return
                self._write("patch", lambda route, body: (200, mock._change(route, body, patch=True)))

            def do_DELETE(self) -> None:
                url = urlsplit(self.path)
                route = _Route.parse(url.path)
                self._log("delete", url.path)
                self._discard_body()
                if route is None or route.name is None or route.status or route.resource not in WRITABLE:
                    self._send(405 if route else 404, _status(405 if route else 404, "MethodNotAllowed"
                                                              if route else "NotFound", f"cannot delete {url.path}"))
                    return
                try:
                    self._send(200, mock._delete(route))
                except _Refused as refused:
                    self._send(refused.code, refused.body)

            def _discard_body(self) -> None:
                length = self.headers.get("Content-Length")
                if length and length.isdigit() and int(length) <= MAX_BODY:
                    self.rfile.read(int(length))
                elif length not in (None, "0"):
                    self.close_connection = True  # an unread body would be taken for the next request

            def _write(self, verb: str, apply: Callable[[_Route, Any], tuple[int, Any]], *,
                       named: bool = True) -> None:
                url = urlsplit(self.path)
                route = _Route.parse(url.path)
                self._log(verb, url.path)
                try:
                    if route is None:
                        self._discard_body()
                        raise _Refused(404, "NotFound",
                                       f"the server could not find the requested resource ({url.path})")
                    if route.resource not in WRITABLE or (route.name is not None) != named:
                        self._discard_body()
                        raise _Refused(405, "MethodNotAllowed", f"{verb} is not allowed on {url.path}")
                    body = self._body()
                    self._send(*apply(route, body))
                except _Refused as refused:
                    self._send(refused.code, refused.body)

            def _body(self) -> Any:
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self.close_connection = True
                    raise _Refused(411, "LengthRequired", "a Content-Length is required")
                if int(length) > MAX_BODY:
                    self.close_connection = True
                    raise _Refused(413, "RequestEntityTooLarge", f"the body is larger than {MAX_BODY} bytes")
                raw = self.rfile.read(int(length))
                try:
                    body = json.loads(raw)
                    check_depth(body)
                except (ValueError, RecursionError):
                    raise _Refused(400, "BadRequest", "the body is not JSON") from None
                except Invalid as exc:
                    raise _Refused(400, "BadRequest", str(exc)) from None
                return body

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _stream(self, route: _Route, selector: _Selector, query: dict[str, list[str]]) -> None:
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
                    mock._watch(route, selector, query, write)
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

        self._server = ThreadingHTTPServer((self._host, port), Handler)
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kube-api-mock", daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._port is not None
        return f"http://{self._host}:{self._port}"

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

