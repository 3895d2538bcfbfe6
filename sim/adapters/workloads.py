"""The sim Workloads adapter: one Cell's namespaces and replication controllers, over the sim's Kubernetes.

It holds the objects as a real API server read through ``KubeWorkloads`` would answer
them (the conformance suite runs both): one resource version counter per Cell, a write
that changes nothing is no write (no new version), specs checked against the port's
bounds, deleting a namespace deletes its controllers, a controller needs its namespace.
While the Cell's API server is cut off (``cluster.available`` False, the same switch the
Cell's ``SimCluster`` answers by) every call raises ``ClusterUnavailable``.

Driving pods: after every change of a namespace's controllers, ``on_change(app,
versions)`` is called with every controller of the namespace as ``{version: (replicas,
image)}`` (empty when none is left); the world passes ``Kubernetes.set_versions`` bound to
the Cell (sim/kube.py runs pods per version). ``set_ready(namespace, name, n)`` is how the
world (or a test) reports ready replicas. ``deleted_at`` keeps when each controller was
last deleted (``runtime.now()``; for checks that time a revert). It must not know any agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.runtime import Runtime
from foundation.ports.workloads import (
    DNS_LABEL,
    MAX_REPLICAS,
    ControllerInfo,
    ControllerSpec,
    WorkloadNotFound,
    check_spec,
)
from sim.adapters.cluster import SimCluster

OnChange = Callable[[str, Mapping[str, tuple[int, str]]], None]  # (app, {version: (replicas, image)})


class SimWorkloads:
    def __init__(self, cluster: SimCluster, *, runtime: Runtime | None = None, latency: float = 0.0,
                 on_change: OnChange | None = None) -> None:
        self.cluster = cluster
        self.runtime = runtime
        self.latency = latency  # seconds each call takes (needs ``runtime``)
        self.on_change = on_change
        self.namespaces: dict[str, None] = {}  # ordered set
        self.controllers: dict[tuple[str, str], ControllerInfo] = {}
        self.version = 0
        self.writes = 0  # calls that changed something (a test tells a no-op apply from a write)
        self.deleted_at: dict[tuple[str, str], float] = {}  # (namespace, controller) -> when last deleted

    @property
    def endpoint(self) -> str:
        return self.cluster.endpoint

    async def _call(self) -> None:
        if self.runtime is not None and self.latency > 0:
            await self.runtime.sleep(self.latency)
        if not self.cluster.available:
            raise ClusterUnavailable(self.endpoint, "API server down")

    def _bump(self) -> str:
        self.version += 1
        self.writes += 1
        return str(self.version)

    def _changed(self, namespace: str) -> None:
        if self.on_change is None:
            return
        self.on_change(namespace, {c.spec.version: (c.spec.replicas, c.spec.image)
                                   for (ns, _), c in sorted(self.controllers.items())
                                   if ns == namespace and c.spec is not None})

    def _deleted(self, key: tuple[str, str]) -> None:
        if self.runtime is not None:
            self.deleted_at[key] = self.runtime.now()

    @staticmethod
    def _label(what: str, name: str) -> None:
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            raise ValueError(f"{what}: {name!r:.60} is not a DNS label")

    # ---- namespaces
    async def ensure_namespace(self, name: str) -> bool:
        self._label("namespace", name)
        await self._call()
        if name in self.namespaces:
            return False
        self.namespaces[name] = None
        self._bump()
        return True

    async def list_namespaces(self) -> list[str]:
        await self._call()
        return sorted(self.namespaces)

    async def delete_namespace(self, name: str) -> bool:
        self._label("namespace", name)
        await self._call()
        if name not in self.namespaces:
            return False
        for key in [k for k in self.controllers if k[0] == name]:
            del self.controllers[key]
            self._deleted(key)
        del self.namespaces[name]
        self._bump()
        self._changed(name)
        return True

    # ---- replication controllers
    async def apply_controller(self, spec: ControllerSpec) -> ControllerInfo:
        check_spec(spec)
        await self._call()
        if spec.app not in self.namespaces:
            raise WorkloadNotFound(self.endpoint, f"namespace {spec.app}")
        key = (spec.app, spec.name)
        current = self.controllers.get(key)
        if current is not None and current.spec == spec:
            return current
        info = ControllerInfo(spec.app, spec.name, spec, current.ready_replicas if current else 0, self._bump())
        self.controllers[key] = info
        self._changed(spec.app)
        return info

    async def get_controller(self, namespace: str, name: str) -> ControllerInfo | None:
        self._label("namespace", namespace)
        self._label("name", name)
        await self._call()
        return self.controllers.get((namespace, name))

    async def list_controllers(self, namespace: str) -> list[ControllerInfo]:
        self._label("namespace", namespace)
        await self._call()
        return [c for (ns, _), c in sorted(self.controllers.items()) if ns == namespace]

    async def scale_controller(self, namespace: str, name: str, replicas: int) -> ControllerInfo:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas: {replicas!r:.30} is not a whole number from 0 to {MAX_REPLICAS}")
        self._label("namespace", namespace)
        self._label("name", name)
        await self._call()
        current = self.controllers.get((namespace, name))
        if current is None:
            raise WorkloadNotFound(self.endpoint, f"replication controller {namespace}/{name}")
        if current.spec is None or current.spec.replicas == replicas:
            return current
        spec = ControllerSpec(current.spec.app, current.spec.version, current.spec.image, replicas,
                              current.spec.cpu_millis, current.spec.memory_mib, current.spec.env, current.spec.port)
        info = ControllerInfo(namespace, name, spec, min(current.ready_replicas, replicas), self._bump())
        self.controllers[(namespace, name)] = info
        self._changed(namespace)
        return info

    async def delete_controller(self, namespace: str, name: str) -> bool:
        self._label("namespace", namespace)
        self._label("name", name)
        await self._call()
        if self.controllers.pop((namespace, name), None) is None:
            return False
        self._deleted((namespace, name))
        self._bump()
        self._changed(namespace)
        return True

    # ---- the world's side
    def set_ready(self, namespace: str, name: str, ready: int) -> None:
        """The controller's status: ``ready`` of its pods pass their readiness probe."""
        current = self.controllers.get((namespace, name))
        if current is not None and current.ready_replicas != ready:
            self.version += 1
            self.controllers[(namespace, name)] = ControllerInfo(namespace, name, current.spec, ready,
                                                                 str(self.version))
