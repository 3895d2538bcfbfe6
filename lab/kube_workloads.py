"""Namespaces and replication controllers as the lab's Kubernetes API serves them: what a valid write is.

Pure functions over JSON values, beside ``lab/kube_objects.py`` (pods and nodes), called
by ``lab/kube_mock.py`` under its lock for every write: a bad write raises ``Invalid``
(HTTP 422 naming the field, 400 when it is no object) and stores nothing. Only the fields
the platform uses are kept (the API server prunes unknown ones too), each bounded:

* a **Namespace**: a DNS-label name, labels; its status is ``{"phase": "Active"}``;
* a **ReplicationController**: ``spec.replicas`` 0..``MAX_REPLICAS`` (default 1), a
  non-empty ``selector`` that the pod template's labels must match (as the real API
  checks), 1..16 containers with a DNS-label name, an image reference, at most 16
  ``containerPort``s (1..65535), at most ``MAX_ENV`` env variables (C-identifier-like
  names, unique, string values of at most 32 KiB) and ``resources`` whose requests and
  limits are ``cpu``/``memory`` quantities; ``status`` (``replicas``, ``readyReplicas``)
  is set only through the ``/status`` subresource, as on a real API server.

It must not know HTTP, threads or who writes.
"""

from __future__ import annotations

import re
from typing import Any

from lab.kube_objects import Invalid, _meta, check_dns_label  # _meta: one grammar of metadata for every kind

MAX_REPLICAS = 10_000
MAX_CONTAINERS = 16
MAX_PORTS = 16
MAX_ENV = 128
MAX_ENV_VALUE = 32 * 1024
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]{0,252}")
_QUANTITY = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")


def _obj(field: str, value: object, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise Invalid(field, "must be an object")
    return value


def _count(field: str, value: object, high: int, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise Invalid(field, f"must be a whole number from 0 to {high}")
    return value


def _list(field: str, value: object, high: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > high:
        raise Invalid(field, f"must be a list of at most {high} items")
    return value


def _kind(obj: dict[str, Any], kind: str) -> None:
    got = obj.get("kind", kind)
    if got != kind:
        raise Invalid("kind", f"{got!r:.60}: expected {kind}", code=400)


def namespace_from(body: object, *, name: str | None = None) -> dict[str, Any]:
    """A Namespace as the lab stores it, from a create/replace body; ``Invalid`` if not one."""
    obj = _obj("body", body, optional=False)
    _kind(obj, "Namespace")
    meta = _meta("metadata", obj.get("metadata"), namespace=None, name=name)
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": meta, "spec": {}, "status": {"phase": "Active"}}


def _resources(field: str, value: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part, quantities in _obj(field, value).items():
        if part not in ("requests", "limits"):
            raise Invalid(f"{field}.{part:.30}", "only requests and limits are supported")
        kept = {}
        for resource, quantity in _obj(f"{field}.{part}", quantities).items():
            if resource not in ("cpu", "memory"):
                raise Invalid(f"{field}.{part}.{resource:.30}", "only cpu and memory are supported")
            if not isinstance(quantity, str) or not _QUANTITY.fullmatch(quantity):
                raise Invalid(f"{field}.{part}.{resource}", f"{quantity!r:.40} is not a quantity")
            kept[resource] = quantity
        if kept:
            out[part] = kept
    return out


def _container(field: str, value: object) -> dict[str, Any]:
    container = _obj(field, value, optional=False)
    image = container.get("image")
    if not isinstance(image, str) or not _IMAGE.fullmatch(image):
        raise Invalid(f"{field}.image", f"{image!r:.80} is not an image reference")
    out: dict[str, Any] = {"name": check_dns_label(f"{field}.name", container.get("name")), "image": image}
    ports = []
    for i, port in enumerate(_list(f"{field}.ports", container.get("ports"), MAX_PORTS)):
        number = _obj(f"{field}.ports[{i}]", port, optional=False).get("containerPort")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise Invalid(f"{field}.ports[{i}].containerPort", "must be a port number from 1 to 65535")
        ports.append({"containerPort": number})
    if ports:
        out["ports"] = ports
    env, names = [], set()
    for i, var in enumerate(_list(f"{field}.env", container.get("env"), MAX_ENV)):
        var = _obj(f"{field}.env[{i}]", var, optional=False)
        name, val = var.get("name"), var.get("value", "")
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or name in names:
            raise Invalid(f"{field}.env[{i}].name", f"{name!r:.60} is not a valid (unique) variable name")
        if not isinstance(val, str) or len(val) > MAX_ENV_VALUE:
            raise Invalid(f"{field}.env[{i}].value", f"must be a string of at most {MAX_ENV_VALUE} characters")
        names.add(name)
        env.append({"name": name, "value": val})
    if env:
        out["env"] = env
    resources = _resources(f"{field}.resources", container.get("resources"))
    if resources:
        out["resources"] = resources
    return out


def controller_from(body: object, *, namespace: str, name: str | None = None) -> dict[str, Any]:
    """A ReplicationController as the lab stores it (its status left to the caller); ``Invalid`` if not one."""
    obj = _obj("body", body, optional=False)
    _kind(obj, "ReplicationController")
    meta = _meta("metadata", obj.get("metadata"), namespace=namespace, name=name)
    spec = _obj("spec", obj.get("spec"), optional=False)
    replicas = _count("spec.replicas", spec.get("replicas"), MAX_REPLICAS, default=1)
    selector = _meta("spec.selector", {"labels": _obj("spec.selector", spec.get("selector"))},
                     namespace=None, name="x").get("labels", {})
    if not selector:
        raise Invalid("spec.selector", "a non-empty selector is required")
    template = _obj("spec.template", spec.get("template"), optional=False)
    pod_meta = _obj("spec.template.metadata", template.get("metadata"))
    labels = _meta("spec.template.metadata", {"labels": pod_meta.get("labels")}, namespace=None,
                   name="x").get("labels", {})
    if any(labels.get(k) != v for k, v in selector.items()):
        raise Invalid("spec.template.metadata.labels", "`selector` does not match template `labels`")
    pod_spec = _obj("spec.template.spec", template.get("spec"), optional=False)
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not 1 <= len(containers) <= MAX_CONTAINERS:
        raise Invalid("spec.template.spec.containers", f"a list of 1 to {MAX_CONTAINERS} containers is required")
    kept = [_container(f"spec.template.spec.containers[{i}]", c) for i, c in enumerate(containers)]
    if len({c["name"] for c in kept}) != len(kept):
        raise Invalid("spec.template.spec.containers", "container names must be unique")
    status = _obj("status", obj.get("status"))
    return {"kind": "ReplicationController", "apiVersion": "v1", "metadata": meta,
            "spec": {"replicas": replicas, "selector": selector,
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": kept}}},
            "status": {"replicas": _count("status.replicas", status.get("replicas"), MAX_REPLICAS),
                       "readyReplicas": _count("status.readyReplicas", status.get("readyReplicas"), MAX_REPLICAS)}}
