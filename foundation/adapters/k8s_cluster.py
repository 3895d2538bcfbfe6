"""The real Cluster adapter: a Cell's Kubernetes API server through the official ``kubernetes`` client.

Connects with a kubeconfig (``kubeconfig=`` path, or the in-cluster service
account when none is given) or with an explicit ``host`` (and optional bearer
token), which is how the tests reach the Kubernetes API mock server. The client
is synchronous, so each call runs in a worker thread with a deadline; failures
become ``ClusterUnavailable`` naming the endpoint.

Endpoints are read as raw JSON (``_preload_content=False``), so the deprecated
typed Endpoints models are never built. A watch runs one worker thread that reads
the chunked stream of ``list_endpoints_for_all_namespaces(watch=True)`` and feeds
an asyncio queue. Each stream asks the server to end it after ``watch_timeout``
seconds (``timeoutSeconds``); the thread then resumes from the last version it saw
(events and bookmarks carry it), as client-go's reflector does, so the watch only
ends through ``close()`` or an error: ``ResourceExpired`` on 410 Gone,
``ClusterUnavailable`` when a stream cannot be opened or breaks. Bounds: response
headers within ``timeout``; silence on an open stream within ``watch_timeout +
timeout`` (the server must have ended it by then); ``close()`` shuts the socket
under the reader and waits at most ``timeout`` for the thread.

The silence bound is set on the stream's socket once its headers are in. Where that
socket lives depends on how the server streams: a real API server keeps the connection
alive (chunked, no ``Connection: close``), so it is still the connection's; a server that
answers ``Connection: close`` makes ``http.client`` hand the socket to the response and
drop it from the connection. Both are looked up; if neither is found (a future urllib3),
a warning says so once, and idle watches are then reopened every ``timeout`` seconds.

Each ready address's app version (``Endpoints.ready_versions``, gray releases) is read from
its ``targetRef``: a pod of replication controller ``{app}-{version}`` is named
``{app}-{version}-{suffix}`` (``version_of_pod``); a pod named otherwise has version "".

Corrupt input is invalid, never a crash: an Endpoints object that is not one (a field of
the wrong type, an address that is not an IP) is logged and skipped, in a listing and in
a watch; a body or event line that is not JSON (however deeply nested) is a
``ClusterUnavailable`` (the consumer lists again).
It must not know who reads the pods or why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeGuard, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPResponse
from urllib3.exceptions import HTTPError

from foundation.ports.cluster import (
    ClusterUnavailable,
    Endpoints,
    EndpointsEvent,
    PodInfo,
    ResourceExpired,
    ip_order,
    sorted_ready,
)

_END = object()  # queue sentinel: the watch is over
log = logging.getLogger(__name__)
_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)  # what a corrupt JSON body raises
_widen_warned = False
POD_OF_VERSION = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?-(?P<version>v[0-9]{1,9})-[a-z0-9]{1,16}")


def _valid_ip(ip: object) -> TypeGuard[str]:
    if not isinstance(ip, str) or len(ip) > 45:
        return False
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def version_of_pod(name: object) -> str:
    """The app version a pod runs, from its name: a pod of replication controller ``{app}-{version}`` is
    ``{app}-{version}-{suffix}`` (version ``v<N>``, suffix the controller's random letters); "" otherwise."""
    match = POD_OF_VERSION.fullmatch(name) if isinstance(name, str) and len(name) <= 253 else None
    return match.group("version") if match else ""


def endpoints_of(obj: Any) -> Endpoints:
    """An Endpoints object (JSON) as the port's record: unique ready and not-ready IPs, sorted.

    Each ready address's version comes from its ``targetRef`` (kind Pod): ``version_of_pod``
    of its name; an address without one has version "" (``ready_versions`` is () when none has).

    ``ValueError`` (naming the field) when it is not a well-formed Endpoints object: the
    caller skips it rather than guess what a half-readable object meant.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"not an object: {_short(obj)}")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"metadata: not an object: {_short(meta)}")
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        raise ValueError(f"metadata: namespace and name must be strings ({_short(namespace)}, {_short(name)})")
    subsets = obj.get("subsets") or []
    if not isinstance(subsets, list):
        raise ValueError(f"{namespace}/{name}: subsets: not a list")
    ready: list[tuple[str, str]] = []  # (ip, version)
    not_ready: set[str] = set()
    for subset in subsets:
        if not isinstance(subset, dict):
            raise ValueError(f"{namespace}/{name}: subsets: an item is not an object")
        for field in ("addresses", "notReadyAddresses"):
            addresses = subset.get(field) or []
            if not isinstance(addresses, list):
                raise ValueError(f"{namespace}/{name}: {field}: not a list")
            for address in addresses:
                ip = address.get("ip") if isinstance(address, dict) else None
                if not _valid_ip(ip):
                    raise ValueError(f"{namespace}/{name}: {field}: {_short(ip)} is not an IP address")
                if field == "addresses":
                    ref = address.get("targetRef")
                    pod = ref.get("name") if isinstance(ref, dict) and ref.get("kind") == "Pod" else None
                    ready.append((ip, version_of_pod(pod)))
                else:
                    not_ready.add(ip)
    ready_ips, versions = sorted_ready(ready)
    return Endpoints(namespace, name, ready_ips, tuple(sorted(not_ready, key=ip_order)), versions)


def api_configuration(host: str | None, token: str | None, kubeconfig: str | None) -> client.Configuration:
    """The client configuration of one API server: ``host`` (+ bearer ``token``), else a kubeconfig, else in-cluster.

    Shared by every adapter over the Kubernetes API (this one, k8s_workloads.py).
    """
    configuration = client.Configuration()
    if host:
        configuration.host = host
        if token:
            configuration.api_key = {"authorization": f"Bearer {token}"}
    elif kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 0  # a dead API server must fail within the deadline, not after urllib3's retries
    return configuration


def read_json(method: Any, timeout: float, **kwargs: Any) -> Any:
    """Call the client's ``method`` (blocking: run it in a worker thread) and parse its raw body as JSON.

    Raw JSON, not the client's models: faster, and a hostile field cannot crash their deserializer.
    """
    resp = method(_request_timeout=timeout, _preload_content=False, **kwargs)
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


class KubeCluster:
    def __init__(self, *, host: str | None = None, token: str | None = None, kubeconfig: str | None = None,
                 timeout: float = 10.0, watch_timeout: int = 300) -> None:
        configuration = api_configuration(host, token, kubeconfig)
        self._endpoint = configuration.host
        self._client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(self._client)
        self.timeout = timeout
        self.watch_timeout = watch_timeout

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def close(self) -> None:
        """Drop the pooled connections (watches are closed by their own ``close()``)."""
        await asyncio.to_thread(self._client.close)

    def _error(self, exc: Exception) -> ClusterUnavailable:
        if isinstance(exc, ApiException):
            return ClusterUnavailable(self._endpoint, f"HTTP {exc.status} {exc.reason}")
        return ClusterUnavailable(self._endpoint, str(exc) or type(exc).__name__)

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, _request_timeout=self.timeout, **kwargs)
        except (ApiException, HTTPError, OSError) as exc:
            raise self._error(exc) from None

    async def _call_json(self, method: Any, **kwargs: Any) -> Any:
        """``method``'s response body as plain JSON, read in the worker thread too."""
        try:
            return await asyncio.to_thread(read_json, method, self.timeout, **kwargs)
        except (ApiException, HTTPError, OSError) as exc:
            raise self._error(exc) from None
        except (ValueError, RecursionError) as exc:  # not JSON: a proxy's error page, a truncated body
            raise ClusterUnavailable(self._endpoint, f"unreadable response: {type(exc).__name__}") from None

    async def list_pods(self) -> list[PodInfo]:
        pods = await self._call(self._api.list_pod_for_all_namespaces)
        result = []
        for pod in pods.items:
            status = pod.status
            conditions = (status.conditions or []) if status else []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            result.append(PodInfo(
                namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid or "",
                node=(pod.spec.node_name or "") if pod.spec else "",
                ip=(status.pod_ip or "") if status else "", phase=(status.phase or "") if status else "",
                ready=ready,
            ))
        return result

    async def list_nodes(self) -> list[str]:
        nodes = await self._call(self._api.list_node)
        return [node.metadata.name for node in nodes.items]

    async def list_endpoints(self) -> tuple[list[Endpoints], str]:
        listing = await self._call_json(self._api.list_endpoints_for_all_namespaces)
        if not isinstance(listing, dict):
            raise ClusterUnavailable(self._endpoint, "unreadable response: not an EndpointsList")
        meta = listing.get("metadata") or {}
        objects = listing.get("items") or []
        version = meta.get("resourceVersion", "") if isinstance(meta, dict) else None
        if not isinstance(objects, list) or not isinstance(version, str | int) or isinstance(version, bool):
            raise ClusterUnavailable(self._endpoint, "unreadable response: not an EndpointsList")
        items = []
        for obj in objects:
            try:
                items.append(endpoints_of(obj))
            except ValueError as exc:
                log.warning("%s: skipping an invalid Endpoints object: %s", self._endpoint, exc)
        items.sort(key=lambda e: (e.namespace, e.service))
        return items, str(version)

    def watch_endpoints(self, resource_version: str) -> KubeEndpointsWatch:
        return KubeEndpointsWatch(self, resource_version)


class KubeEndpointsWatch:
    """The port's ``EndpointsWatch``: a worker thread streams the watch into an asyncio queue.

    The thread starts on the first ``__anext__`` (on that event loop). ``close()``
    may be called from any task, any number of times.
    """

    def __init__(self, cluster: KubeCluster, resource_version: str) -> None:
        self._cluster = cluster
        self.resource_version = resource_version  # the last one seen; where a new stream resumes
        self._lock = threading.Lock()
        self._closed = False
        self._ended = False  # the thread reported its end (error or close)
        self._resp: Any = None  # the open stream, shut down by close()
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[Any] | None = None

    def __aiter__(self) -> KubeEndpointsWatch:
        return self

    async def __anext__(self) -> EndpointsEvent:
        if self._closed or self._ended:
            raise StopAsyncIteration
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, args=(loop, self._queue), daemon=True,
                                            name=f"endpoints-watch {self._cluster.endpoint}")
            self._thread.start()
        item = await self._queue.get()
        if self._closed or item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return cast(EndpointsEvent, item)  # the worker emits events, errors and _END only

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            resp, self._resp = self._resp, None
        if resp is not None:
            self._shutdown(resp)
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, self._cluster.timeout)
        if self._queue is not None:
            self._queue.put_nowait(_END)  # wakes a reader in another task

    @staticmethod
    def _shutdown(resp: Any) -> None:
        """Wake the thread blocked reading ``resp``: closing alone does not interrupt a recv."""
        with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
            resp.shutdown()

    # ---- the worker thread
    def _run(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        def emit(item: Any) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return False
            return True

        try:
            while not self._closed:
                for event in self._stream():
                    if self._closed or not emit(event):
                        return
        except ClusterUnavailable as exc:
            if not self._closed:
                emit(exc)
        except Exception as exc:  # a bug or an input nobody foresaw: the consumer relists, it does not crash
            if not self._closed:
                log.warning("%s: endpoints watch failed: %r", self._cluster.endpoint, exc)
                emit(ClusterUnavailable(self._cluster.endpoint, f"watch failed: {type(exc).__name__}"))
        except BaseException as exc:  # it must reach the consumer either way
            if not self._closed:
                emit(exc)

    def _stream(self) -> Iterator[EndpointsEvent]:
        """One watch request, from ``resource_version`` until the server ends it."""
        cluster = self._cluster
        try:
            # _preload_content=False: the raw urllib3 response, not the V1EndpointsList of the hints.
            resp = cast(HTTPResponse, cluster._api.list_endpoints_for_all_namespaces(
                watch=True, resource_version=self.resource_version, timeout_seconds=cluster.watch_timeout,
                allow_watch_bookmarks=True, _preload_content=False,
                _request_timeout=(cluster.timeout, cluster.timeout)))
        except ApiException as exc:
            if exc.status == 410:
                raise ResourceExpired(cluster.endpoint, self.resource_version, str(exc.reason)) from None
            raise cluster._error(exc) from None
        except (HTTPError, OSError) as exc:
            raise cluster._error(exc) from None
        with self._lock:
            if self._closed:
                resp.release_conn()
                return
            self._resp = resp
        try:
            self._widen_read_timeout(resp, cluster.watch_timeout + cluster.timeout)
            for line in _lines(resp.stream(amt=None, decode_content=False)):
                event = self._event(line)
                if event is not None:
                    yield event
                if self._closed:
                    return
        except (HTTPError, OSError) as exc:
            if not self._closed:
                raise ClusterUnavailable(cluster.endpoint, f"watch stream broke: {exc}") from None
        finally:
            with self._lock:
                self._resp = None
            resp.close()  # never back to the pool half-read
            resp.release_conn()

    @staticmethod
    def _widen_read_timeout(resp: Any, seconds: float) -> bool:
        """Headers came within ``timeout``; the body may rightly stay silent until the server's own timeout.

        Kept alive (how a real API server streams), the socket is still the connection's;
        after ``Connection: close``, ``http.client`` moved it into the response's reader.
        """
        global _widen_warned
        sock = _stream_socket(resp)
        if sock is None:
            if not _widen_warned:
                _widen_warned = True
                log.warning("cannot find the socket of an endpoints watch to widen its read timeout: idle "
                            "watches will be reopened every request timeout")
            return False
        sock.settimeout(seconds)
        return True

    def _event(self, line: str) -> EndpointsEvent | None:
        endpoint = self._cluster.endpoint
        if not line.strip():
            return None
        try:
            event = json.loads(line)
            kind, obj = event["type"], event.get("object") or {}
        except _UNREADABLE as exc:  # a broken stream, not one bad object: list again
            raise ClusterUnavailable(endpoint, f"unreadable watch event: {type(exc).__name__}") from None
        if not isinstance(obj, dict) or not isinstance(kind, str):
            log.warning("%s: skipping an invalid watch event: %s", endpoint, _short(event))
            return None
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResourceExpired(endpoint, self.resource_version, str(obj.get("message", "")))
            raise ClusterUnavailable(endpoint, f"watch error {obj.get('code')} {obj.get('reason')}: "
                                               f"{obj.get('message')}")
        meta = obj.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if isinstance(version, str | int) and not isinstance(version, bool) and version:
            self.resource_version = str(version)
        if kind not in ("ADDED", "MODIFIED", "DELETED"):  # BOOKMARK: only the version moves
            return None
        try:
            return EndpointsEvent(kind, endpoints_of(obj))
        except ValueError as exc:
            log.warning("%s: skipping an invalid %s event: %s", endpoint, kind, exc)
            return None


def _stream_socket(resp: Any) -> Any:
    """The socket a streaming response reads from, wherever urllib3 and http.client left it."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        return sock
    reader = getattr(getattr(resp, "_original_response", None), "fp", None)  # http.client's buffered reader
    raw = getattr(reader, "raw", None)  # socket.SocketIO
    return getattr(raw, "_sock", None)


def _lines(chunks: Iterable[bytes | str]) -> Iterator[str]:
    """Split a chunked body into lines as they arrive (a watch event is one JSON line)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer.extend(chunk.encode() if isinstance(chunk, str) else chunk)
        while (newline := buffer.find(b"\n")) != -1:
            line = bytes(buffer[:newline]).decode("utf-8", errors="replace")
            del buffer[:newline + 1]
            yield line
    if buffer.strip():
        yield bytes(buffer).decode("utf-8", errors="replace")
