"""The objects the lab's Kubernetes API serves: what a valid write is, and the Endpoints pods imply.

Pure functions over JSON values (no I/O, no locks, no clock: the caller passes the time
stamp): ``lab/kube_mock.py`` calls them under its lock for every write it serves.

* **Validation** (``pod_from``/``node_from``): a write is checked as the real API server
  checks it, and only the fields the lab uses are kept (unknown fields are pruned, as the
  API server prunes them): names and namespaces are DNS labels (RFC 1123, at most 63
  characters), label keys and values follow Kubernetes' label syntax, ``podIP`` is an IP
  address, phases and condition statuses are from their fixed sets, and every list is
  bounded. A bad write raises ``Invalid`` (HTTP 422, the field named), never stores a half
  object. Every stored object therefore decodes with the ``kubernetes`` client.
* **Merge patch** (``merge_patch``): RFC 7386, which is also what a strategic merge patch
  means for the fields kept here except lists (a patch's ``conditions`` replaces the list).
* **The endpoints controller** (``endpoints_subsets``): the Endpoints of an app (pods
  labelled ``app=<app>`` in one namespace) list, in address order, the addresses of its
  Ready pods on known Ready nodes under ``addresses`` and the other addressed pods under
  ``notReadyAddresses``; a pod without an address is not listed.

It must not know HTTP, threads or who writes (the lab kubelet, a fault driver, a test).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")

POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
CONDITION_STATUSES = ("True", "False", "Unknown")
MAX_LABELS = 64
MAX_CONDITIONS = 16
MAX_CONTAINERS = 16
MAX_NESTING = 32


class Invalid(Exception):
    """A write the API refuses: ``code`` 422 (a field is wrong) or 400 (not an object at all)."""

    def __init__(self, field: str, message: str, *, code: int = 422) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.code = code


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and DNS_LABEL.fullmatch(value) is not None


def check_dns_label(field: str, value: object) -> str:
    if not is_dns_label(value):
        raise Invalid(field, f"{_short(value)} is not a DNS label (lowercase letters, digits and '-', "
                             "at most 63 characters, starting and ending with a letter or digit)")
    return value  # type: ignore[return-value]  # is_dns_label proved it is a str


def _short(value: object, limit: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _object(field: str, value: object, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise Invalid(field, "must be an object")
    return value


def _string(field: str, value: object, *, limit: int = 253) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Invalid(field, f"must be a string of at most {limit} characters")
    return value


def _labels(field: str, value: object) -> dict[str, str]:
    labels = _object(field, value)
    if len(labels) > MAX_LABELS:
        raise Invalid(field, f"at most {MAX_LABELS} labels")
    for key, val in labels.items():
        prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        if not _LABEL_NAME.fullmatch(name) or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))):
            raise Invalid(f"{field}", f"{_short(key)} is not a valid label key")
        if not isinstance(val, str) or not _LABEL_VALUE.fullmatch(val):
            raise Invalid(f"{field}.{key}", f"{_short(val)} is not a valid label value")
    return dict(labels)


def _ip(field: str, value: object) -> str | None:
    if value in (None, ""):
        return None
    try:
        return str(ipaddress.ip_address(_string(field, value, limit=45)))
    except ValueError:
        raise Invalid(field, f"{_short(value)} is not an IP address") from None


def _conditions(field: str, value: object) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CONDITIONS:
        raise Invalid(field, f"must be a list of at most {MAX_CONDITIONS} conditions")
    seen: dict[str, dict[str, str]] = {}
    for i, cond in enumerate(value):
        cond = _object(f"{field}[{i}]", cond, optional=False)
        kind = cond.get("type")
        if not isinstance(kind, str) or not _LABEL_NAME.fullmatch(kind):
            raise Invalid(f"{field}[{i}].type", f"{_short(kind)} is not a condition type")
        status = cond.get("status")
        if status not in CONDITION_STATUSES:
            raise Invalid(f"{field}[{i}].status", f"must be one of {', '.join(CONDITION_STATUSES)}")
        seen[kind] = {"type": kind, "status": status}  # a repeated type: the last one wins
    return list(seen.values())


def _meta(field: str, value: object, *, namespace: str | None, name: str | None) -> dict[str, Any]:
    """The metadata a write may set; ``namespace``/``name`` from the URL, when it has them, must agree."""
    meta = _object(field, value)
    got_name = meta.get("name", name)
    if name is not None and got_name != name:
        raise Invalid(f"{field}.name", f"{_short(got_name)} does not match the name in the URL ({name})",
                      code=400)
    out: dict[str, Any] = {"name": check_dns_label(f"{field}.name", got_name)}
    if namespace is not None:
        got_ns = meta.get("namespace", namespace)
        if got_ns != namespace:
            raise Invalid(f"{field}.namespace", f"{_short(got_ns)} does not match the namespace in the URL "
                                                f"({namespace})", code=400)
        out["namespace"] = check_dns_label(f"{field}.namespace", got_ns)
    labels = _labels(f"{field}.labels", meta.get("labels"))
    if labels:
        out["labels"] = labels
    return out


def check_depth(value: object, field: str = "body") -> None:
    """Refuse JSON nested deeper than anything the lab's objects need (no recursion on hostile input)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            raise Invalid(field, f"nested deeper than {MAX_NESTING} levels", code=400)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def pod_from(body: object, *, namespace: str, name: str | None = None) -> dict[str, Any]:
    """A Pod as the lab stores it, from a create/replace body (or a patched object); ``Invalid`` if not one."""
    obj = _object("body", body, optional=False)
    kind = obj.get("kind", "Pod")
    if kind != "Pod":
        raise Invalid("kind", f"{_short(kind)}: expected Pod", code=400)
    meta = _meta("metadata", obj.get("metadata"), namespace=namespace, name=name)
    spec = _object("spec", obj.get("spec"), optional=False)
    node = spec.get("nodeName") or ""
    if node:
        check_dns_label("spec.nodeName", node)
    containers = spec.get("containers")
    if not isinstance(containers, list) or not 1 <= len(containers) <= MAX_CONTAINERS:
        raise Invalid("spec.containers", f"a list of 1 to {MAX_CONTAINERS} containers is required")
    kept = []
    for i, container in enumerate(containers):
        container = _object(f"spec.containers[{i}]", container, optional=False)
        image = container.get("image")
        if not isinstance(image, str) or not _IMAGE.fullmatch(image):
            raise Invalid(f"spec.containers[{i}].image", f"{_short(image)} is not an image reference")
        kept.append({"name": check_dns_label(f"spec.containers[{i}].name", container.get("name")), "image": image})
    status = _object("status", obj.get("status"))
    phase = status.get("phase") or "Pending"
    if phase not in POD_PHASES:
        raise Invalid("status.phase", f"must be one of {', '.join(POD_PHASES)}")
    ip = _ip("status.podIP", status.get("podIP"))
    out_status: dict[str, Any] = {"phase": phase, "conditions": _conditions("status.conditions",
                                                                               status.get("conditions"))}
    if ip:
        out_status["podIP"] = ip
        out_status["podIPs"] = [{"ip": ip}]
    host_ip = _ip("status.hostIP", status.get("hostIP"))
    if host_ip:
        out_status["hostIP"] = host_ip
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"nodeName": node, "containers": kept} if node else {"containers": kept},
            "status": out_status}


def node_from(body: object, *, name: str | None = None) -> dict[str, Any]:
    """A Node as the lab stores it; with no Ready condition it is Ready (a kubelet registering itself)."""
    obj = _object("body", body, optional=False)
    kind = obj.get("kind", "Node")
    if kind != "Node":
        raise Invalid("kind", f"{_short(kind)}: expected Node", code=400)
    meta = _meta("metadata", obj.get("metadata"), namespace=None, name=name)
    spec = _object("spec", obj.get("spec"))
    unschedulable = spec.get("unschedulable", False)
    if not isinstance(unschedulable, bool):
        raise Invalid("spec.unschedulable", "must be true or false")
    status = _object("status", obj.get("status"))
    conditions = _conditions("status.conditions", status.get("conditions"))
    if not any(c["type"] == "Ready" for c in conditions):
        conditions.append({"type": "Ready", "status": "True"})
    return {"kind": "Node", "apiVersion": "v1", "metadata": meta,
            "spec": {"unschedulable": True} if unschedulable else {}, "status": {"conditions": conditions}}


def merge_patch(target: object, patch: object) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in obj["status"].get("conditions", ()))


def pod_app(pod: dict[str, Any]) -> str | None:
    app = pod["metadata"].get("labels", {}).get("app")
    return app if is_dns_label(app) else None


def endpoints_subsets(pods: list[dict[str, Any]], node: Callable[[str], dict[str, Any] | None],
                      port: int) -> list[Any]:
    """The ``subsets`` of an app's Endpoints, as the endpoints controller computes them (module docstring);
    ``node(name)`` is the stored Node of that name, or None."""
    ready: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[str, Any]]] = []
    not_ready: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, dict[str, Any]]] = []
    for pod in pods:
        ip = pod["status"].get("podIP")
        if not ip or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        node_name = pod["spec"].get("nodeName", "")
        node_obj = node(node_name) if node_name else None
        entry = {"ip": ip, "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"],
                                         "name": pod["metadata"]["name"], "uid": pod["metadata"].get("uid", "")}}
        if node_name:
            entry["nodeName"] = node_name
        good = (pod["status"].get("phase") == "Running" and condition_true(pod, "Ready")
                and node_obj is not None and condition_true(node_obj, "Ready"))
        (ready if good else not_ready).append((ipaddress.ip_address(ip), entry))
    if not ready and not not_ready:
        return []
    subset: dict[str, Any] = {}
    if ready:
        subset["addresses"] = [e for _, e in sorted(ready, key=lambda x: (x[0].version, x[0]))]
    if not_ready:
        subset["notReadyAddresses"] = [e for _, e in sorted(not_ready, key=lambda x: (x[0].version, x[0]))]
    subset["ports"] = [{"port": port, "protocol": "TCP"}]
    return [subset]
