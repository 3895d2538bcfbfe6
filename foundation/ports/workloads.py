"""The Workloads port: what the control service writes in one Cell's Kubernetes API.

An app is a **namespace** in each of its Cells; a version of it is **one replication
controller** per Cell in that namespace, named ``{app}-{version}``, labelled
``app=<app>, version=<version>`` (its pod template too, so the app's Endpoints, which
discovery follows, take in the pods of every version). The Cluster port reads a Cell
(pods, endpoints); this port writes it, and reads back only what it wrote.

Every write is **idempotent** and **declarative**, which is what lets the control
service repair a crash between its etcd record and the Cell (``control/apps.py``):

* ``ensure_namespace`` creates the namespace when missing (an existing one is fine);
* ``apply_controller`` makes the controller exactly ``spec`` (create, or replace what
  differs; nothing when it already matches);
* ``scale_controller`` sets the replica count of an existing controller;
* ``delete_controller`` / ``delete_namespace`` answer ``False`` when there was nothing
  to delete (a second delete is no error). Deleting a namespace deletes what it holds.

Errors: ``ClusterUnavailable`` (the Cluster port's, naming the endpoint) when the API
server does not answer; ``WorkloadRejected`` when it refuses a write (a field it finds
invalid); ``WorkloadNotFound`` when the namespace of a controller to apply, or a
controller to scale, does not exist; ``ValueError`` (before any call) for a spec or
count outside the bounds below. Whatever is read back (a controller someone edited by hand) is
decoded and checked: one that is not a controller this port could have written reads as
``ControllerInfo.spec is None`` (``apply_controller`` then replaces it), never a crash.

The data types (``ControllerSpec``, ``ControllerInfo``) and their bounds live here, so
both adapters refuse the same specs. It must not know etcd, apps' records or which
adapter is behind it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from foundation.ports.cluster import ClusterUnavailable

__all__ = [
    "ClusterUnavailable",
    "ControllerInfo",
    "ControllerSpec",
    "WorkloadNotFound",
    "WorkloadRejected",
    "Workloads",
    "check_spec",
    "controller_name",
]

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# repository[:port]/path:tag, the tag a full commit id (a build's image is tagged by its commit)
IMAGE = re.compile(r"(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*){0,8})"
                   r":(?P<tag>[0-9a-f]{40})")
MAX_IMAGE = 255
MAX_REPLICAS = 1000  # per Cell
MAX_ENV = 64
MAX_ENV_VALUE = 4096
MAX_CPU_MILLIS = 64_000
MAX_MEMORY_MIB = 256 * 1024


class WorkloadRejected(Exception):
    """The API server refused a write; ``reason`` says what it answered (e.g. ``HTTP 422 Invalid: ...``)."""

    def __init__(self, endpoint: str, what: str, reason: str) -> None:
        super().__init__(f"Kubernetes API at {endpoint} refused {what}: {reason}")
        self.endpoint = endpoint
        self.what = what
        self.reason = reason


class WorkloadNotFound(Exception):
    def __init__(self, endpoint: str, what: str) -> None:
        super().__init__(f"{what} does not exist in the Kubernetes API at {endpoint}")
        self.endpoint = endpoint
        self.what = what


def controller_name(app: str, version: str) -> str:
    """The replication controller of ``version`` of ``app`` (in namespace ``app``)."""
    return f"{app}-{version}"


@dataclass(frozen=True, slots=True)
class ControllerSpec:
    """One version of an app in one Cell: what its replication controller runs."""

    app: str  # the namespace
    version: str  # "v<N>"
    image: str  # repository:<40 hex commit id>
    replicas: int
    cpu_millis: int
    memory_mib: int
    env: tuple[tuple[str, str], ...] = ()  # (name, value), names unique, in the order given
    port: int = 8080

    @property
    def name(self) -> str:
        return controller_name(self.app, self.version)

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "version": self.version}


@dataclass(frozen=True, slots=True)
class ControllerInfo:
    """A controller as the API server holds it: ``spec`` None when it is not one this port writes."""

    namespace: str
    name: str
    spec: ControllerSpec | None
    ready_replicas: int = 0  # as the controller's status reports them
    resource_version: str = ""


def check_spec(spec: ControllerSpec) -> ControllerSpec:
    """``spec`` if every field is within the port's bounds, else ``ValueError`` naming the field."""
    if not isinstance(spec.app, str) or len(spec.app) > 40 or not DNS_LABEL.fullmatch(spec.app):
        raise ValueError(f"app: {spec.app!r:.60} is not a DNS label of at most 40 characters")
    if not isinstance(spec.version, str) or not re.fullmatch(r"v[1-9][0-9]{0,8}", spec.version):
        raise ValueError(f"version: {spec.version!r:.60} is not v<N>")
    if not isinstance(spec.image, str) or len(spec.image) > MAX_IMAGE or not IMAGE.fullmatch(spec.image):
        raise ValueError(f"image: {spec.image!r:.80} is not repository:<40-hex commit id>")
    bounds: tuple[tuple[str, object, int, int], ...] = (
        ("replicas", spec.replicas, 0, MAX_REPLICAS), ("cpu_millis", spec.cpu_millis, 1, MAX_CPU_MILLIS),
        ("memory_mib", spec.memory_mib, 1, MAX_MEMORY_MIB), ("port", spec.port, 1, 65535))
    for field, number, low, high in bounds:
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise ValueError(f"{field}: {number!r:.30} is not a whole number from {low} to {high}")
    if not isinstance(spec.env, tuple) or len(spec.env) > MAX_ENV:
        raise ValueError(f"env: at most {MAX_ENV} variables")
    seen: set[str] = set()
    for item in spec.env:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError("env: each variable is a (name, value) pair")
        name, value = item
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise ValueError(f"env: {name!r:.60} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)")
        if name in seen:
            raise ValueError(f"env: {name} is given twice")
        seen.add(name)
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or not value.isprintable():
            raise ValueError(f"env: the value of {name} must be at most {MAX_ENV_VALUE} printable characters")
    return spec


@runtime_checkable
class Workloads(Protocol):
    """One Cell's namespaces and replication controllers, written idempotently (module docstring)."""

    @property
    def endpoint(self) -> str: ...

    async def ensure_namespace(self, name: str) -> bool:
        """Create namespace ``name`` (labelled ``leengine-app=<name>``) unless it exists; True if created."""
        ...

    async def list_namespaces(self) -> list[str]:
        """The namespaces this port made (labelled ``leengine-app``), sorted."""
        ...

    async def delete_namespace(self, name: str) -> bool:
        """Delete the namespace and everything in it; False when it did not exist."""
        ...

    async def apply_controller(self, spec: ControllerSpec) -> ControllerInfo:
        """Make ``spec.name`` in namespace ``spec.app`` exactly ``spec`` (``ValueError`` if out of bounds)."""
        ...

    async def get_controller(self, namespace: str, name: str) -> ControllerInfo | None:
        """The controller, or None when it does not exist."""
        ...

    async def list_controllers(self, namespace: str) -> list[ControllerInfo]:
        """Every replication controller of the namespace, sorted by name."""
        ...

    async def scale_controller(self, namespace: str, name: str, replicas: int) -> ControllerInfo:
        """Set the replica count (0..MAX_REPLICAS); ``WorkloadNotFound`` when the controller does not exist."""
        ...

    async def delete_controller(self, namespace: str, name: str) -> bool:
        """Delete the controller; False when it did not exist."""
        ...
