"""The Workloads port's conformance suite: the same bodies against the real adapter and the sim Cell.

``workloads_harness`` runs ``async def body(h)`` either on the sim runtime with a
``SimWorkloads`` over a ``SimCluster``, or on asyncio with a ``KubeWorkloads`` (the official
``kubernetes`` client) against ``lab/kube_mock.py`` on loopback. ``h.tamper(ns, name)``
edits a controller behind the port's back (a hand edit: another container image, a
second container), ``h.cut_off()``/``h.restore()`` take the API server away and back.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.k8s_workloads import KubeWorkloads
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.workloads import ControllerInfo, ControllerSpec, WorkloadNotFound
from lab.kube_mock import KubeApiMock
from sim.adapters.cluster import SimCluster
from sim.adapters.runtime import SimRuntime
from sim.adapters.workloads import SimWorkloads

TIMEOUT = 2.0
IMAGE = "registry.local:5000/shop:" + "a" * 40
OTHER = "registry.local:5000/shop:" + "b" * 40


def spec(version: str = "v1", replicas: int = 3, **changes: object) -> ControllerSpec:
    fields: dict[str, object] = {"app": "shop", "version": version, "image": IMAGE, "replicas": replicas,
                                 "cpu_millis": 500, "memory_mib": 256, "env": (("MODE", "prod"), ("B", "")),
                                 "port": 8080}
    fields.update(changes)
    return ControllerSpec(**fields)  # type: ignore[arg-type]


@dataclass
class Harness:
    kind: str
    workloads: SimWorkloads | KubeWorkloads
    runtime: object
    tamper: Callable[[str, str], None]
    cut_off: Callable[[], None]
    restore: Callable[[], None]
    writes: Callable[[], int]  # writes the API server took so far


def _run_sim(body: Callable[[Harness], Awaitable[None]]) -> None:
    runtime = SimRuntime(seed=1)
    cell = SimCluster("cell-a", runtime)
    workloads = SimWorkloads(cell, runtime=runtime, latency=0.002)

    def tamper(namespace: str, name: str) -> None:
        workloads.version += 1
        workloads.controllers[(namespace, name)] = ControllerInfo(namespace, name, None, 0, str(workloads.version))

    def restore() -> None:
        cell.available = True

    harness = Harness("sim", workloads, runtime, tamper, cell.cut_off, restore, lambda: workloads.writes)
    runtime.run_until_complete(body(harness), limit=3600)


def _run_kube(body: Callable[[Harness], Awaitable[None]]) -> None:
    with KubeApiMock() as mock:
        def tamper(namespace: str, name: str) -> None:
            patch = {"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "evil/miner:latest"}, {"name": "side", "image": "evil/side"}]}}}}
            request = urllib.request.Request(
                f"{mock.url}/api/v1/namespaces/{namespace}/replicationcontrollers/{name}",
                data=json.dumps(patch).encode(), method="PATCH",
                headers={"Content-Type": "application/merge-patch+json"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 200

        def writes() -> int:
            return sum(1 for r in list(mock.requests) if r.split(" ", 1)[0] in ("create", "update", "patch", "delete"))

        async def main() -> None:
            workloads = KubeWorkloads(host=mock.url, timeout=TIMEOUT)
            harness = Harness("kube", workloads, AsyncioRuntime(seed=1), tamper, mock.cut_off, mock.restore,
                              writes)
            try:
                await asyncio.wait_for(body(harness), 60)
            finally:
                await workloads.close()

        asyncio.run(main())


@pytest.fixture(params=["sim", "kube"])
def run(request):
    return _run_sim if request.param == "sim" else _run_kube


# --------------------------------------------------------------------------- bodies


def test_namespaces_are_made_once_listed_and_deleted_idempotently(run):
    async def body(h: Harness) -> None:
        w = h.workloads
        assert await w.ensure_namespace("shop") is True
        assert await w.ensure_namespace("shop") is False  # exists: fine, nothing written
        assert await w.ensure_namespace("blog") is True
        assert await w.list_namespaces() == ["blog", "shop"]
        await w.apply_controller(spec())
        assert await w.delete_namespace("shop") is True
        assert await w.delete_namespace("shop") is False  # a second delete is no error
        assert await w.list_namespaces() == ["blog"]
        assert await w.get_controller("shop", "shop-v1") is None  # went with its namespace

    run(body)


def test_apply_creates_then_changes_only_what_differs(run):
    async def body(h: Harness) -> None:
        w = h.workloads
        await w.ensure_namespace("shop")
        first = await w.apply_controller(spec())
        assert (first.namespace, first.name, first.spec) == ("shop", "shop-v1", spec())
        writes = h.writes()
        again = await w.apply_controller(spec())  # already so: no write, same resource version
        assert again.resource_version == first.resource_version and h.writes() == writes
        changed = await w.apply_controller(spec(image=OTHER, env=(("MODE", "gray"),)))
        assert changed.spec == spec(image=OTHER, env=(("MODE", "gray"),))
        assert changed.resource_version != first.resource_version
        await w.apply_controller(spec("v2", replicas=0))
        listed = await w.list_controllers("shop")
        assert [(c.name, c.spec) for c in listed] == [("shop-v1", changed.spec), ("shop-v2", spec("v2", 0))]
        assert await w.get_controller("shop", "shop-v1") == listed[0]

    run(body)


def test_scale_sets_the_count_and_a_missing_controller_or_namespace_is_not_found(run):
    async def body(h: Harness) -> None:
        w = h.workloads
        await w.ensure_namespace("shop")
        await w.apply_controller(spec())
        scaled = await w.scale_controller("shop", "shop-v1", 7)
        assert scaled.spec == spec(replicas=7)
        assert (await w.get_controller("shop", "shop-v1")).spec == spec(replicas=7)
        with pytest.raises(WorkloadNotFound):
            await w.scale_controller("shop", "shop-v9", 1)
        with pytest.raises(WorkloadNotFound):
            await w.apply_controller(spec(app="nowhere"))
        assert await w.delete_controller("shop", "shop-v1") is True
        assert await w.delete_controller("shop", "shop-v1") is False
        assert await w.list_controllers("shop") == []

    run(body)


def test_a_controller_edited_by_hand_reads_as_foreign_and_apply_puts_it_back(run):
    async def body(h: Harness) -> None:
        w = h.workloads
        await w.ensure_namespace("shop")
        await w.apply_controller(spec())
        h.tamper("shop", "shop-v1")
        seen = await w.get_controller("shop", "shop-v1")
        assert seen is not None and seen.spec is None  # not what the port wrote: no guess at what it means
        assert [c.spec for c in await w.list_controllers("shop")] == [None]
        fixed = await w.apply_controller(spec())
        assert fixed.spec == spec() and (await w.get_controller("shop", "shop-v1")).spec == spec()

    run(body)


@pytest.mark.parametrize("bad", [
    {"image": "registry.local/shop:latest"},  # a tag is a full commit id, never a ref
    {"image": "Registry/shop:" + "a" * 40},
    {"replicas": 1001}, {"replicas": -1}, {"replicas": True}, {"cpu_millis": 0}, {"memory_mib": 10**9},
    {"port": 0}, {"port": 70000},
    {"env": tuple((f"V{i}", "x") for i in range(65))},
    {"env": (("1BAD", "x"),)}, {"env": (("A", "x"), ("A", "y"))}, {"env": (("A", "line\nbreak"),)},
    {"app": "Shop"}, {"app": "a" * 41}, {"version": "v0"}, {"version": "latest"},
])
def test_a_spec_out_of_bounds_is_refused_before_any_call(run, bad):
    async def body(h: Harness) -> None:
        w = h.workloads
        await w.ensure_namespace("shop")
        writes = h.writes()
        with pytest.raises(ValueError):
            await w.apply_controller(spec(**bad))
        for call in (lambda: w.scale_controller("shop", "shop-v1", 1001),
                     lambda: w.ensure_namespace("../etc"), lambda: w.delete_controller("shop", "a/b")):
            with pytest.raises(ValueError):
                await call()
        assert h.writes() == writes and await w.list_controllers("shop") == []

    run(body)


def test_api_server_down_raises_cluster_unavailable_and_state_survives(run):
    async def body(h: Harness) -> None:
        w = h.workloads
        await w.ensure_namespace("shop")
        await w.apply_controller(spec())
        h.cut_off()
        calls = (lambda: w.ensure_namespace("blog"), w.list_namespaces, lambda: w.apply_controller(spec("v2")),
                 lambda: w.get_controller("shop", "shop-v1"), lambda: w.list_controllers("shop"),
                 lambda: w.scale_controller("shop", "shop-v1", 1), lambda: w.delete_controller("shop", "shop-v1"),
                 lambda: w.delete_namespace("shop"))
        for call in calls:
            with pytest.raises(ClusterUnavailable) as err:
                await call()
            assert err.value.endpoint == w.endpoint
        h.restore()
        assert await w.list_namespaces() == ["shop"]
        assert [c.spec for c in await w.list_controllers("shop")] == [spec()]

    run(body)
