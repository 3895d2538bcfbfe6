"""A simulated Region built from a ``RegionSpec``: the wiring of its parts, and how it boots and runs.

The real agent code runs here on the sim adapters: every node has a ``CniAgent`` over
its own ``Ipam`` (etcd client with the spec's latency) and a ``SimDataplane``; every
Nginx host runs an ``SlbAgent`` on a ``SimProxy``; ``SlbCore`` owns groups and domains;
one ``Discovery`` follows every Cell's endpoints. The parts around them, one module each:

* sim/topology.py — the nouns (nodes, pods, Cells, Nginx hosts) and how Cells are built;
* sim/kube.py — Kubernetes: replication controllers, scheduler, kubelets, node controller;
* sim/traffic.py — the clients: requests per second and app, served or failed;
* sim/churn.py — rolling deploys and scale events;
* sim/cnictl_cron.py — the operator's cron: cnictl check + release;
* sim/metrics.py — counters and the sampled series; every sample is also the scrape of
  ``agent_metrics`` (a ``SimMetrics``, ``SampledMetrics`` here: the Metrics port every agent here records into, the
  same series the real daemons export, written by the runner as ``metrics.om``);
* sim/faults.py — the fault table (kind -> apply, undo) and its schedule;
* sim/checks.py — the check table (name -> verdict) and the liveness probes;
* sim/report.py — the report;
* sim/audit.py — the duplicate-address audit; sim/farm.py — the build farm;
* sim/webhooks.py — GitLab's pushes and Push Hooks, the control service's hook receiver
  (``control.webhooks``) in-process (only when the spec has ``pushes``);
* sim/platform.py — the platform's apps (``platform: true``), deployed through
  ``control.apps`` and released by ``control.releases`` (only when the spec has such apps).

``Region(spec, runtime)`` builds everything and starts nothing; ``boot()`` spawns the
Region's set-up and its tasks, ``run_until(t)`` advances virtual time, ``run()`` does
both to ``spec.duration`` and ends the trace with every verdict and the totals (two runs
with one ``trace_sha256`` also agree on what they measured).

Determinism: every choice draws from ``runtime.random``; collections are ordered; the
order of spawns, traces and Store writes is the order of the code (moving code between
these modules must not reorder them: tests/sim/test_trace_stability.py pins the hashes).
It must not import real adapters (import-linter contract).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cni.admin import add_pool
from cni.pools import Pool
from control.discovery import Binding, Discovery
from control.slb_core import SlbCore
from foundation.ports import StoreError
from node.cni_agent import CniAgent, NodeConfig
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.cluster import RegionCluster
from sim.adapters.control import SimControlClient
from sim.adapters.dataplane import Machine, SimDataplane
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime, seeded_stream
from sim.adapters.store import MemoryStore, SimStoreClient
from sim.audit import Auditor
from sim.checks import CheckResult, Probe, judge, liveness_deadlines, probe_at
from sim.churn import Churn
from sim.cnictl_cron import LeakCron
from sim.farm import Farm
from sim.fault_times import draw_fault_times
from sim.faults import run_fault
from sim.kube import Kubernetes
from sim.metrics import Metrics, SampledMetrics, Sampler, pool_use
from sim.platform import Platform
from sim.report import report, report_json
from sim.spec import AppSpec, RegionSpec, nginx_host_name
from sim.topology import ADMIN, Cell, IpamFactory, NginxHost, Node, build_cell, default_ipam
from sim.traffic import Traffic
from sim.webhooks import Webhooks

__all__ = ["Region", "report_json", "run_region"]


class Region:
    def __init__(self, spec: RegionSpec, runtime: SimRuntime, *, ipam_factory: IpamFactory = default_ipam,
                 tick: float = 1.0, metrics_every: float = 10.0, node_grace: float = 40.0,
                 kubelet_retry: float = 2.0, reload_failure_fraction: float = 0.02,
                 propagation_grace: float = 2.0, publish_grace: float = 60.0) -> None:
        # Fault times given as ranges are drawn for this seed (their own stream): every part sees the drawn spec
        self.spec = spec = draw_fault_times(spec)
        self.runtime = runtime
        self.fault_targets = seeded_stream(spec.seed, "fault-targets")  # the lab draws the same (sim/faults.py)
        self.ipam_factory = ipam_factory
        self.tick = tick
        self.store = MemoryStore(runtime)
        self.clients: dict[str, SimStoreClient] = {}  # every etcd client, by name: what etcd faults select
        self.metrics = Metrics()
        # The Metrics port of every agent of the Region (created before the Cells: their nodes'
        # agents take it); the Sampler scrapes it. Recording adds no event: hashes unchanged.
        self.agent_metrics = SampledMetrics(runtime)  # also keeps the samples compare needs (sim/metrics.py)
        self.auditor = Auditor()
        self.pools: dict[str, Pool] = {}
        self.cells: dict[str, Cell] = {}
        self.nodes: dict[str, Node] = {}
        machine = Machine() if spec.scale == "lab" else None  # the lab's nodes share one machine's cores
        for cell_spec in spec.cells:
            cell = build_cell(cell_spec, runtime, self.pools, self.client, self._agent, spec.costs.dataplane,
                              machine)
            self.cells[cell_spec.name] = cell
            self.nodes.update((node.name, node) for node in cell.nodes)
        self.apps: dict[str, AppSpec] = {app.name: app for app in spec.apps}
        self.domains = {app.name: app.served_domain for app in spec.apps}
        self.hosts: dict[str, NginxHost] = {}
        for group in spec.groups:
            for i in range(group.hosts):
                name = nginx_host_name(group.name, i + 1)
                proxy = SimProxy(runtime, name, **asdict(spec.costs.proxy))  # the fitted reload curve
                self.hosts[name] = NginxHost(name, group.name, proxy, self.client(name))
        self.slb = SlbCore(self.client("slb-core"), runtime)
        self.cnictl = self.client("cnictl")
        self.farm = Farm(runtime, self.store, spec.build_hosts, self.client, tick=tick,  # sim/farm.py
                         metrics=self.agent_metrics, costs=spec.costs.builder)
        bindings = [Binding(a.name, a.name, a.port, a.group, self.domains[a.name]) for a in spec.apps]
        discovery_etcd = self.client("discovery")  # slb-core in-process as discovery, and its drain records
        self.discovery = Discovery({n: c.cluster for n, c in self.cells.items()},
                                   SimControlClient(SlbCore(discovery_etcd, runtime)), discovery_etcd, runtime,
                                   bindings, metrics=self.agent_metrics)
        self.kube = Kubernetes(runtime, self.cells, self.apps, metrics=self.metrics, auditor=self.auditor,
                               discovery=self.discovery, pull_seconds=self.farm.registry.pull_seconds,
                               new_agent=self._node_agent, on_reachability=self._reachability_changed,
                               tick=tick, node_grace=node_grace, kubelet_retry=kubelet_retry)
        self.traffic = Traffic(runtime, self.apps, self.domains, spec.groups, self.hosts, self.cells,
                               self.kube.pods, self.kube.pod_by_ip, self.metrics, tick=tick,
                               reload_failure_fraction=reload_failure_fraction, propagation_grace=propagation_grace,
                               publish_grace=publish_grace)
        for host in self.hosts.values():
            host.proxy.on_change = self.traffic.touch_domain
        # Only a Region with platform apps has the platform (its etcd clients, its Cells' Workloads).
        self.platform = Platform(runtime, self.store, self.client, self.cells, self.kube, self.traffic, self.apps,
                                 self.domains, spec.releases, spec.duration) if any(a.platform for a in spec.apps) \
            else None
        # Only a Region with pushes has GitLab and the hook receiver (its etcd client, its draws).
        self.webhooks = Webhooks(runtime, spec.seed, spec.pushes, self.client("webhook-receiver"), self.farm,
                                 spec.duration) if spec.pushes else None
        self.churn = Churn(runtime, self.kube, self.farm, tick=tick, seed=spec.seed)
        self.cron = LeakCron(runtime, self.cnictl, RegionCluster([c.cluster for c in self.cells.values()]),
                             self.metrics, every=spec.leak_check_every, grace=spec.leak_grace,
                             series=self.agent_metrics)
        self.sampler = Sampler(runtime, self.metrics, self.hosts, self.pools, self.auditor, self.leaked,
                               every=metrics_every, series=self.agent_metrics)
        self.fault_windows: list[tuple[float, float, str]] = []  # (start, declared end, kind) of every fault
        self.probes: dict[float, Probe] = {}  # liveness deadline -> the Region then
        self.storm_changes = 0  # domain changes made by reload storms (each a distinct header value)
        self.squatters = 0  # pool-exhaustion squatters so far (each its own etcd client)

    # ------------------------------------------------------------------ construction
    def client(self, name: str) -> SimStoreClient:
        """A new etcd client of the Region (the spec's latency), listed in ``clients`` for etcd faults."""
        client = self.store.client(name, latency=self.spec.etcd_latency, jitter=self.spec.costs.store.jitter,
                                   commit=self.spec.costs.store.commit_seconds, timeout=5.0)
        self.clients[name] = client
        return client

    def _agent(self, client: SimStoreClient, dataplane: SimDataplane, node: str) -> CniAgent:
        ipam = self.ipam_factory(client, self.runtime, node, self.spec.cooldown)
        ipam.metrics = self.agent_metrics  # the factory's signature predates metrics; every Ipam has the field
        return CniAgent(ipam, dataplane, self.runtime, NodeConfig(node), metrics=self.agent_metrics)

    def _node_agent(self, node: Node) -> CniAgent:
        return self._agent(node.client, node.dataplane, node.name)

    def _reachability_changed(self, *apps: str) -> None:
        self.traffic.reachability_changed(*apps)

    def start_slb_agent(self, host: NginxHost) -> None:
        agent = SlbAgent(host.client, host.proxy, self.runtime,
                         # a Region with platform apps: per-version traffic records and request metrics
                         SlbAgentConfig(host.group, host.name, traffic_every=self.spec.traffic_every,
                                        request_metrics_every=self.spec.traffic_every),
                         metrics=self.agent_metrics)
        host.task = self.runtime.spawn(agent.run(), name=f"slb-agent/{host.name}")

    # ------------------------------------------------------------------ running
    def boot(self) -> None:
        """Spawn the Region's set-up (pools, groups, domains) and every task it runs; nothing runs until time does."""
        self.runtime.spawn(self._boot(), name="region/boot")

    def run_until(self, t: float) -> None:
        """Advance virtual time to ``t``."""
        self.runtime.run(until=t)

    def run(self) -> None:
        """Boot, run until ``spec.duration``, and end the trace with the verdicts and the totals."""
        self.boot()
        self.run_until(self.spec.duration)
        for verdict in self.checks():
            self.runtime.trace("check", name=verdict.name, passed=verdict.passed, detail=verdict.detail)
        m = self.metrics
        self.runtime.trace("totals", ok=m.ok, failed=m.failed, leaks_found=m.leaks_found,
                           leaks_released=m.leaks_released, allocations=len(m.allocations))

    async def _boot(self) -> None:
        rt = self.runtime
        rt.spawn(self._audit(), name="region/auditor")
        for pool in self.pools.values():
            await add_pool(self.cnictl, pool)
        for group in self.spec.groups:
            await self.slb.create_group(ADMIN, group.name)
        for app in self.spec.apps:
            await self.slb.put_domain(ADMIN, {"name": self.domains[app.name], "group": app.group, "owner": app.name})
        for host in self.hosts.values():
            self.start_slb_agent(host)
        rt.spawn(self.discovery.run(), name="discovery")
        rt.spawn(self.kube.controller(), name="region/controller")
        rt.spawn(self.traffic.run(), name="region/clients")
        rt.spawn(self.cron.run(), name="region/cnictl-cron")
        self.farm.start()
        rt.spawn(self.sampler.run(), name="region/metrics")
        churn = self.spec.churn
        if churn.deploys_per_hour > 0:
            rt.spawn(self.churn.run(churn.deploys_per_hour, self.churn.deploy, "deploy"), name="region/churn-deploys")
        if churn.scale_events_per_hour > 0:
            rt.spawn(self.churn.run(churn.scale_events_per_hour, self.churn.scale, "scale"), name="region/churn-scale")
        if self.platform is not None:
            self.platform.start()
        if self.webhooks is not None:
            self.webhooks.start()
        for i, fault in enumerate(self.spec.faults):
            rt.spawn(run_fault(self, fault), name=f"region/fault-{i}-{fault.kind}")
        for deadline in liveness_deadlines(self):
            rt.spawn(probe_at(self, deadline), name="region/liveness-probe")

    async def _audit(self) -> None:
        """The auditor is an observer, not part of the system: no fault selects its client, and a
        watch broken by an etcd outage resumes just after the last revision it saw."""
        client = self.store.client("auditor", latency=0.0)
        after = 0
        while True:
            try:
                async with client.watch("/ipam/", start_revision=after + 1) as watch:
                    async for event in watch:
                        self.auditor.on_event(event)
                        after = event.revision
            except StoreError:
                pass
            await self.runtime.sleep(self.tick)

    # ------------------------------------------------------------------ what it shows
    def checks(self) -> list[CheckResult]:
        """Every check of the spec, judged now (sim/checks.py)."""
        return [judge(self, check) for check in self.spec.checks]

    def leaked(self) -> int:
        """Addresses allocated to a pod (per the Store) whose pod is not alive."""
        return self.kube.leaked()

    def pool_use(self) -> dict[str, float]:
        return pool_use(self.pools, self.auditor)

    def report(self) -> dict[str, Any]:
        return report(self)


def run_region(spec: RegionSpec, **options: Any) -> tuple[dict[str, Any], Region]:
    """Build a Region on a fresh runtime seeded by ``spec.seed``, run it, return (report, region)."""
    region = Region(spec, SimRuntime(spec.seed), **options)
    region.run()
    return region.report(), region
