"""The real Workloads adapter: namespaces and replication controllers through the official ``kubernetes`` client.

Connects as ``KubeCluster`` does (explicit ``host`` and optional bearer token, a
kubeconfig, or the in-cluster service account). The client is synchronous: each call
runs in a worker thread with a deadline (``timeout``), no urllib3 retries, so a dead API
server fails within the deadline as ``ClusterUnavailable`` naming the endpoint.

Bodies are plain JSON (``controller_body``); answers are read raw (``_preload_content=
False``) and decoded by ``controller_of``, which accepts only what ``controller_body``
writes (labels, selector, one container, its env, port and resources as ``{n}m`` /
``{n}Mi``): anything else (a controller edited by hand, a corrupt object) is a
``ControllerInfo`` whose ``spec`` is None, so ``apply_controller`` replaces it and
nothing crashes on it.

``apply_controller`` reads, then creates (201) or replaces with the read
``resourceVersion`` (a 409 means someone wrote in between: read and try again, a few
times); a controller that already matches is not written. Scale is a JSON merge patch of
``spec.replicas``. Deletes answer False on 404. Refusals (4xx but 404/409) are
``WorkloadRejected`` with the API's message. It must not know apps' records or etcd.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from foundation.adapters.k8s_cluster import api_configuration, read_json
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.workloads import (
    DNS_LABEL,
    MAX_REPLICAS,
    ControllerInfo,
    ControllerSpec,
    WorkloadNotFound,
    WorkloadRejected,
    check_spec,
)

log = logging.getLogger(__name__)
APP_LABEL = "leengine-app"  # on the namespaces this adapter makes
CONTAINER = "app"
MERGE_PATCH = "application/merge-patch+json"
ATTEMPTS = 4  # replace attempts when someone else keeps writing the controller
_CPU = re.compile(r"([1-9][0-9]{0,7})(m?)")
_MEMORY = re.compile(r"([1-9][0-9]{0,15})(|Ki|Mi|Gi|Ti)")
_BINARY = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _label(what: str, name: str) -> str:
    """A name that goes into a URL path: a DNS label, or ``ValueError`` before any request."""
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        raise ValueError(f"{what}: {name!r:.60} is not a DNS label")
    return name


def controller_body(spec: ControllerSpec, resource_version: str = "") -> dict[str, Any]:
    """The ReplicationController object of ``spec`` (with ``resourceVersion`` for a replace)."""
    labels = spec.labels
    resources = {"cpu": f"{spec.cpu_millis}m", "memory": f"{spec.memory_mib}Mi"}
    container: dict[str, Any] = {"name": CONTAINER, "image": spec.image, "ports": [{"containerPort": spec.port}],
                                 "resources": {"requests": dict(resources), "limits": dict(resources)}}
    if spec.env:
        container["env"] = [{"name": name, "value": value} for name, value in spec.env]
    meta: dict[str, Any] = {"name": spec.name, "namespace": spec.app, "labels": dict(labels)}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"kind": "ReplicationController", "apiVersion": "v1", "metadata": meta,
            "spec": {"replicas": spec.replicas, "selector": dict(labels),
                     "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}}}}


def _cpu_millis(text: object) -> int | None:
    """``500m`` or whole cores (``2``: an API server writes 2000m back as 2)."""
    match = _CPU.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    return int(match.group(1)) * (1 if match.group(2) else 1000)


def _memory_mib(text: object) -> int | None:
    """``256Mi``, ``1Gi``, ``1048576Ki`` or bytes, when a whole number of MiB (an API server canonicalises)."""
    match = _MEMORY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    size = int(match.group(1)) * _BINARY[match.group(2)]
    return size >> 20 if size % (1 << 20) == 0 else None


def _spec_of(obj: dict[str, Any]) -> ControllerSpec | None:
    """The spec ``controller_body`` wrote for ``obj``, or None (module docstring).

    Lenient where an API server adds defaults (a port's ``protocol``, the pod's policies)
    or canonicalises (``1000m`` back as ``1``); strict on what names and selects the pods.
    """
    meta, spec = obj.get("metadata"), obj.get("spec")
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        return None
    labels = meta.get("labels")
    template = spec.get("template")
    pod_meta = template.get("metadata") if isinstance(template, dict) else None
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(labels, dict) or not isinstance(containers, list) or len(containers) != 1 \
            or not isinstance(pod_meta, dict):
        return None
    app, version = labels.get("app"), labels.get("version")
    container = containers[0]
    if not isinstance(app, str) or not isinstance(version, str) or not isinstance(container, dict) \
            or container.get("name") != CONTAINER:
        return None
    ports, resources, env = container.get("ports"), container.get("resources"), container.get("env") or []
    requests = resources.get("requests") if isinstance(resources, dict) else None
    limits = resources.get("limits") if isinstance(resources, dict) else None
    if not isinstance(ports, list) or len(ports) != 1 or not isinstance(ports[0], dict) \
            or not isinstance(requests, dict) or requests != limits or not isinstance(env, list):
        return None
    pairs = []
    for item in env:
        if not isinstance(item, dict) or set(item) - {"name", "value"}:
            return None  # valueFrom and the like: not written by this port
        pairs.append((item.get("name"), item.get("value", "")))
    try:
        decoded = check_spec(ControllerSpec(
            app=app, version=version, image=container.get("image"),  # type: ignore[arg-type]  # check_spec checks
            replicas=spec.get("replicas", 1), cpu_millis=_cpu_millis(requests.get("cpu")),  # type: ignore[arg-type]
            memory_mib=_memory_mib(requests.get("memory")), env=tuple(pairs),  # type: ignore[arg-type]
            port=ports[0].get("containerPort")))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    wanted = decoded.labels
    if meta.get("name") != decoded.name or meta.get("namespace") != decoded.app or labels != wanted \
            or spec.get("selector") != wanted or pod_meta.get("labels") != wanted:
        return None
    return decoded


def controller_of(obj: object) -> ControllerInfo | None:
    """A ReplicationController (JSON) as the port's record; None when it has no name at all."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return None
    meta = obj["metadata"]
    namespace, name, version = meta.get("namespace"), meta.get("name"), meta.get("resourceVersion", "")
    if not isinstance(namespace, str) or not isinstance(name, str) or not isinstance(version, str):
        return None
    status = obj.get("status")
    ready = status.get("readyReplicas", 0) if isinstance(status, dict) else 0
    if isinstance(ready, bool) or not isinstance(ready, int) or not 0 <= ready <= 1_000_000:
        ready = 0
    try:
        spec = _spec_of(obj)
    except RecursionError:
        spec = None
    return ControllerInfo(namespace, name, spec, ready, version)


class KubeWorkloads:
    def __init__(self, *, host: str | None = None, token: str | None = None, kubeconfig: str | None = None,
                 timeout: float = 10.0) -> None:
        configuration = api_configuration(host, token, kubeconfig)
        self._endpoint = configuration.host
        self._client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(self._client)
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    # ---- one call
    async def _json(self, method: Callable[..., Any], what: str, *, missing_ok: bool = False,
                    **kwargs: Any) -> Any:
        """``method``'s answer as JSON; None on 404 when ``missing_ok``; typed errors otherwise."""
        try:
            return await asyncio.to_thread(read_json, method, self.timeout, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise self._refusal(exc, what) from None
        except (HTTPError, OSError) as exc:
            raise ClusterUnavailable(self._endpoint, str(exc) or type(exc).__name__) from None
        except (ValueError, RecursionError) as exc:
            raise ClusterUnavailable(self._endpoint, f"unreadable response: {type(exc).__name__}") from None

    def _refusal(self, exc: ApiException, what: str) -> Exception:
        status = exc.status or 0
        message = ""
        try:
            body = json.loads(exc.body) if exc.body else {}
            message = str(body.get("message", ""))[:300] if isinstance(body, dict) else ""
        except (ValueError, RecursionError):
            pass
        reason = f"HTTP {status} {exc.reason}" + (f": {message}" if message else "")
        if status == 404:
            return WorkloadNotFound(self._endpoint, what)
        if 400 <= status < 500 and status not in (408, 429):
            return WorkloadRejected(self._endpoint, what, reason)
        return ClusterUnavailable(self._endpoint, reason)

    # ---- namespaces
    async def ensure_namespace(self, name: str) -> bool:
        _label("namespace", name)
        if await self._json(self._api.read_namespace, f"namespace {name}", missing_ok=True, name=name) is not None:
            return False
        body = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name, "labels": {APP_LABEL: name}}}
        try:
            await self._json(self._api.create_namespace, f"namespace {name}", body=body)
        except WorkloadRejected as exc:
            if "HTTP 409" in exc.reason:  # created meanwhile: what we wanted
                return False
            raise
        return True

    async def list_namespaces(self) -> list[str]:
        listing = await self._json(self._api.list_namespace, "namespaces", label_selector=APP_LABEL)
        items = listing.get("items") if isinstance(listing, dict) else None
        if not isinstance(items, list):
            raise ClusterUnavailable(self._endpoint, "unreadable response: not a NamespaceList")
        names = []
        for item in items:
            meta = item.get("metadata") if isinstance(item, dict) else None
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(name, str):
                names.append(name)
        return sorted(names)

    async def delete_namespace(self, name: str) -> bool:
        _label("namespace", name)
        return await self._json(self._api.delete_namespace, f"namespace {name}", missing_ok=True,
                                name=name) is not None

    # ---- replication controllers
    async def get_controller(self, namespace: str, name: str) -> ControllerInfo | None:
        _label("namespace", namespace)
        _label("name", name)
        obj = await self._json(self._api.read_namespaced_replication_controller,
                               f"replication controller {namespace}/{name}", missing_ok=True,
                               name=name, namespace=namespace)
        return None if obj is None else controller_of(obj)

    async def list_controllers(self, namespace: str) -> list[ControllerInfo]:
        _label("namespace", namespace)
        listing = await self._json(self._api.list_namespaced_replication_controller,
                                   f"replication controllers of {namespace}", namespace=namespace)
        items = listing.get("items") if isinstance(listing, dict) else None
        if not isinstance(items, list):
            raise ClusterUnavailable(self._endpoint, "unreadable response: not a ReplicationControllerList")
        found = [info for info in map(controller_of, items) if info is not None]
        return sorted(found, key=lambda c: c.name)

    async def apply_controller(self, spec: ControllerSpec) -> ControllerInfo:
        check_spec(spec)
        what = f"replication controller {spec.app}/{spec.name}"
        for _ in range(ATTEMPTS):
            current = await self.get_controller(spec.app, spec.name)
            try:
                if current is None:
                    obj = await self._json(self._api.create_namespaced_replication_controller, what,
                                           namespace=spec.app, body=controller_body(spec))
                elif current.spec == spec:
                    return current
                else:
                    obj = await self._json(self._api.replace_namespaced_replication_controller, what,
                                           name=spec.name, namespace=spec.app,
                                           body=controller_body(spec, current.resource_version))
            except WorkloadRejected as exc:
                if "HTTP 409" in exc.reason:  # created or changed meanwhile: read again
                    continue
                raise
            info = controller_of(obj)
            if info is None:
                raise ClusterUnavailable(self._endpoint, f"unreadable answer to the write of {what}")
            return info
        raise ClusterUnavailable(self._endpoint, f"{what} kept changing while applying it")

    async def scale_controller(self, namespace: str, name: str, replicas: int) -> ControllerInfo:
        _label("namespace", namespace)
        _label("name", name)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas: {replicas!r:.30} is not a whole number from 0 to {MAX_REPLICAS}")
        obj = await self._json(self._api.patch_namespaced_replication_controller,
                               f"replication controller {namespace}/{name}", name=name, namespace=namespace,
                               body={"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)
        info = controller_of(obj)
        if info is None:
            raise ClusterUnavailable(self._endpoint, f"unreadable answer to the scale of {namespace}/{name}")
        return info

    async def delete_controller(self, namespace: str, name: str) -> bool:
        _label("namespace", namespace)
        _label("name", name)
        return await self._json(self._api.delete_namespaced_replication_controller,
                                f"replication controller {namespace}/{name}", missing_ok=True,
                                name=name, namespace=namespace) is not None
