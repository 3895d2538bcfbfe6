"""Every adapter fits its port: statically (mypy checks this file) and at run time (isinstance).

``_every_adapter_is_its_port`` is never called: it exists so that mypy (run by ./test.sh over
this file, see [tool.mypy] in pyproject.toml) checks each assignment of an adapter to its port
type, member by member, signatures included. The tests below then build the adapters that
are cheap to build and check them against the ``runtime_checkable`` ports, which only
looks for the members' names: the static check is the strong one, this catches a port
member renamed in an adapter the static run does not see (e.g. a subclass made in a test).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from control.platform_shares import SlbShares
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.buildah_builder import BuildahBuilder, BuildahConfig
from foundation.adapters.etcd_store import EtcdStore
from foundation.adapters.grpc_control import GrpcControlClient
from foundation.adapters.k8s_cluster import KubeCluster
from foundation.adapters.k8s_workloads import KubeWorkloads
from foundation.adapters.nginx_proxy import NginxProxy
from foundation.adapters.ovs_dataplane import OvsDataplane
from foundation.adapters.prom_metrics import PromMetrics
from foundation.ports.builder import Builder
from foundation.ports.cluster import Cluster, PodInventory
from foundation.ports.control import ControlClient
from foundation.ports.dataplane import Dataplane
from foundation.ports.metrics import Metrics, NoMetrics
from foundation.ports.proxy import Proxy
from foundation.ports.runtime import Event, Queue, Runtime, Task
from foundation.ports.store import Store
from foundation.ports.traffic_shares import TrafficShares
from foundation.ports.workloads import Workloads
from sim.adapters.builder import SimBuilder, SimRegistry
from sim.adapters.cluster import RegionCluster, SimCluster
from sim.adapters.control import SimControlClient
from sim.adapters.dataplane import SimDataplane
from sim.adapters.metrics import SimMetrics
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore, SimStoreClient
from sim.adapters.workloads import SimWorkloads


def _every_adapter_is_its_port(
    asyncio_runtime: AsyncioRuntime, sim_runtime: SimRuntime,
    etcd: EtcdStore, sim_store: SimStoreClient,
    kube: KubeCluster, sim_cluster: SimCluster, region: RegionCluster,
    ovs: OvsDataplane, sim_dataplane: SimDataplane,
    nginx: NginxProxy, sim_proxy: SimProxy,
    buildah: BuildahBuilder, sim_builder: SimBuilder,
    grpc_control: GrpcControlClient, sim_control: SimControlClient,
    prom_metrics: PromMetrics, sim_metrics: SimMetrics, no_metrics: NoMetrics,
    kube_workloads: KubeWorkloads, sim_workloads: SimWorkloads,
    slb_shares: SlbShares,
) -> None:
    """Checked by mypy, never run: an adapter that stops fitting its port fails ./test.sh."""
    runtimes: list[Runtime] = [asyncio_runtime, sim_runtime]
    stores: list[Store] = [etcd, sim_store]
    clusters: list[Cluster] = [kube, sim_cluster]
    inventories: list[PodInventory] = [*clusters, region]  # cnictl reads a Region's Cells as one
    dataplanes: list[Dataplane] = [ovs, sim_dataplane]
    proxies: list[Proxy] = [nginx, sim_proxy]
    builders: list[Builder] = [buildah, sim_builder]
    controls: list[ControlClient] = [grpc_control, sim_control]
    metrics: list[Metrics] = [prom_metrics, sim_metrics, no_metrics]
    workloads: list[Workloads] = [kube_workloads, sim_workloads]
    shares: list[TrafficShares] = [slb_shares]  # slb-core in-process: the control service's and the sim's
    for runtime in runtimes:  # what a runtime hands out fits the port's smaller protocols too
        task: Task[object] = runtime.spawn(runtime.sleep(0), name="t")
        queue: Queue[int] = runtime.queue()
        event: Event = runtime.event()
        del task, queue, event
    del stores, inventories, dataplanes, proxies, builders, controls, metrics, workloads, shares


def test_runtimes_fit_the_runtime_port() -> None:
    sim = SimRuntime(seed=1)
    assert isinstance(sim, Runtime)

    async def main() -> None:
        real = AsyncioRuntime(seed=1)
        assert isinstance(real, Runtime)

    asyncio.run(main())


def test_stores_fit_the_store_port() -> None:
    runtime = SimRuntime(seed=1)
    client = SimStoreClient(MemoryStore(runtime), "c", latency=0.001, jitter=0.0, timeout=1.0)
    assert isinstance(client, Store)
    # The real adapter builds its gRPC channel lazily: nothing listens on port 1, nothing is dialled.
    assert isinstance(EtcdStore("127.0.0.1:1"), Store)


def test_clusters_fit_the_cluster_port() -> None:
    assert isinstance(SimCluster("cell"), Cluster)
    assert isinstance(KubeCluster(host="http://127.0.0.1:1", token="t"), Cluster)
    region = RegionCluster([SimCluster("cell-1"), SimCluster("cell-2")])
    assert isinstance(region, PodInventory) and not isinstance(region, Cluster)


def test_dataplanes_fit_the_dataplane_port() -> None:
    assert isinstance(SimDataplane("node-1"), Dataplane)
    assert issubclass(OvsDataplane, Dataplane)  # building one opens an OVSDB connection


def test_proxies_fit_the_proxy_port(tmp_path: Path) -> None:
    assert isinstance(SimProxy(SimRuntime(seed=1), "nginx-1"), Proxy)
    assert isinstance(NginxProxy(tmp_path / "nginx"), Proxy)  # nothing starts before start()


def test_builders_fit_the_builder_port(tmp_path: Path) -> None:
    sim = SimBuilder(SimRuntime(seed=1), "build-1", SimRegistry())
    assert isinstance(sim, Builder)
    real = BuildahBuilder(BuildahConfig(host="build-1", repos=tmp_path / "repos", workdir=tmp_path / "work",
                                        registry="127.0.0.1:5000"))
    assert isinstance(real, Builder)
    assert sim.host == real.host == "build-1"


def test_control_clients_fit_the_control_client_port() -> None:
    from control.slb_core import SlbCore

    runtime = SimRuntime(seed=1)
    assert isinstance(SimControlClient(SlbCore(MemoryStore(runtime).client("c"), runtime)), ControlClient)
    # The gRPC channel is opened on the first call: nothing listens on port 1, nothing is dialled.
    assert isinstance(GrpcControlClient("127.0.0.1:1", "t" * 16), ControlClient)


def test_metrics_fit_the_metrics_port() -> None:
    from foundation.ports.metrics import NO_METRICS

    assert isinstance(PromMetrics(), Metrics) and isinstance(SimMetrics(SimRuntime(seed=1)), Metrics)
    assert isinstance(NO_METRICS, Metrics)


def test_workloads_fit_the_workloads_port() -> None:
    assert isinstance(SimWorkloads(SimCluster("cell")), Workloads)
    assert isinstance(KubeWorkloads(host="http://127.0.0.1:1", token="t"), Workloads)  # nothing dialled
