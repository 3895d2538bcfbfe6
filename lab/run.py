"""``leengine lab run SCENARIO --seed N --out OUT``: a scenario file replayed on a live lab, in real time.

The lab's twin of sim/runner.py + sim/world.py's run: the scenario is loaded
(``sim.scenario.load_scenario``) and scaled (``sim.scenario_lab.lab_scaled``), the lab in
``--dir`` is used if it runs that scenario (same sha256 in ``lab.json``), else brought up,
and then, with t = 0 at the start and the scenario's (scaled) seconds as real seconds:

* one Nginx group per spec group and one SLB domain per app (``{app}.example.com`` unless
  the app names one; owner = the app) are created through the control service's gRPC as
  the lab's admin; discovery (a lab process) pushes the pods' addresses as upstreams;
* the lab's persistent controller (``python -m lab.controller``, started by ``lab up``) is
  stopped for the run and the pods left on the nodes are stopped (CNI DEL): the run starts from
  a clean slate, as the sim's Region boots; it is started again afterwards and adopts the run's pods;
* ``lab.controller.Controller`` (the same class, in-process, told of faults by the schedule)
  places replicas on the nodes of each app's Cells and asks the node runtimes to run them on
  the app's port; it replaces dead pods and plays the scenario's churn; with build hosts a
  deploy first builds a new commit of the app on the real farm (lab/farm.py: SubmitBuild,
  buildah, the lab's registry) and rolls only what was built;
* ``lab.load.Load`` sends each app's requests per second through its group's Nginx hosts;
* ``lab.faults.Schedule`` applies every fault at its time and undoes it at its end;
* ``lab.observe`` watches etcd's ``/ipam/`` history, samples the pods' namespaces against
  etcd's handles every ``sample_every`` seconds, runs cnictl's check + release cron, and
  probes the lab at every liveness deadline;
* at the end the checks (lab/checks.py) are judged, every daemon's ``/metrics`` is scraped
  into ``OUT/metrics/<proc>.prom`` and ``OUT/report.json`` is written (lab/report.py).

The report's samples: ``cni_add_seconds`` (the runtime's measure of each ADD exec),
``reload_seconds`` and ``propagation_seconds`` (the SLB agents' own histograms, one sample per
observation from their ``/metrics`` scraped every 0.25 s: lab/observe.py ``HistogramSampler``;
the same spans the sim samples), ``drain_seconds`` (a drain record to its outcome),
``build_seconds`` (submit to result, builds done). ``lab.served_after_ready_seconds`` is the end
to end check of propagation: a pod turning ready to its name first answered through Nginx.
Beside them, what the seconds are of: ``lab.machine_load`` (the 1-minute load over the run)
and ``lab.reference_rates`` (the machine's raw rates just before and after it: lab/reference.py).

``LiveLab`` is the one place that turns the faults' and the controller's primitives into
the other lab modules' calls (lab/plan.py names, lab/supervisor.py processes, lab/fabric.py
cuts, the links socket, the runtimes' sockets, the Cells' APIs, the control service).
Its assumptions about modules written beside it are marked ``CONTRACT`` below.

It must not know how a bridge is made or a process started (lab/fabric.py, lab/services.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.ipam import Ipam, IpamError
from cni.pools import Pool
from control.apps import app_key, decode_app
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.ports import StoreError
from foundation.ports.metrics import SLB_PROPAGATION_SECONDS, SLB_RELOAD_SECONDS
from foundation.ports.store import Store
from lab.checks import judge_all, liveness_deadlines
from lab.controller import Controller
from lab.farm import AppRepos, BuildsAdmin, LabFarm
from lab.faults import Schedule
from lab.load import Load
from lab.observe import (
    EtcdAudit,
    HistogramSampler,
    LeakCron,
    Observations,
    RegionPods,
    duplicates,
    handle_addresses,
    netns_addresses,
    reloads_in_log,
)
from lab.platform import LabPlatform, platform_summary
from lab.pod_actions import RUNTIME_TIMEOUT, RuntimePods, http_json, json_line
from lab.reference import reference_rates
from lab.replication import Replication, replication_of
from lab.report import LabTotals, lab_report, write_report
from sim.checks import Probe
from sim.faults import last_fault_end, occurrences
from sim.metrics import percentile, pool_use
from sim.scenario import Scenario
from sim.spec import AppSpec, RegionSpec

log = logging.getLogger("leengine.lab.run")

# ------------------------------------------------------------------ process names (lab/services.py's launches)


def cni_agent_process(node: str) -> str:
    return f"cni-{node}"


def runtime_process(node: str) -> str:
    return f"runtime-{node}"


def slb_process(host: str) -> str:
    """The Nginx host's SLB agent; ``services.kill`` with SIGKILL takes its Nginx master too."""
    return f"slb-{host}"


def build_agent_process(host: str) -> str:
    return f"build-agent-{host}"


BOOT_PLAYED = "run-played.{id}"  # in the lab directory: a run was played on lab {id} (its boot was counted)
CONTROLLER_PROCESS = "kube-controller"  # the persistent controller (python -m lab.controller), if the lab runs one


def pause_controller(lab: Any, timeout: float = 10.0) -> bool:
    """Stop the lab's persistent controller for the run (one controller at a time); True if it ran."""
    from lab.supervisor import Supervisor

    return Supervisor(Path(lab.plan.dir), lab.plan.id).stop(CONTROLLER_PROCESS, timeout)


def resume_controller(lab: Any) -> None:
    """Start it again after the run: it adopts the run's pods and keeps the lab serving."""
    from lab import services

    try:
        services.start(lab, CONTROLLER_PROCESS)
    except Exception as exc:  # the run's report stands; the lab is left without its controller, said loudly
        log.error("the lab's controller did not start again: %s (start it: leengine lab up again, or "
                  "python -m lab.controller --dir %s)", exc, lab.plan.dir)


# ------------------------------------------------------------------ the control service, as the lab's admin


class ControlAdmin:
    """Groups and domains through the control service's gRPC (TLS, bearer token of an admin)."""

    def __init__(self, target: str, token: str, ca: bytes, *, timeout: float = 10.0) -> None:
        import grpc

        from control.generated.leengine.control.v1 import slb_pb2, slb_pb2_grpc

        self.pb = slb_pb2
        self.grpc = grpc
        self.channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca))
        self.stub = slb_pb2_grpc.SlbCoreStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self.domains: dict[str, tuple[str, str]] = {}  # app -> (group, domain)

    async def set_up(self, spec: RegionSpec) -> None:
        """One group per spec group, one domain per app (as sim/world.py's boot); existing ones are kept."""
        pb = self.pb
        for group in spec.groups:
            with contextlib.suppress(self.grpc.aio.AioRpcError):  # ALREADY_EXISTS: a reused lab
                await self.stub.CreateGroup(pb.CreateGroupRequest(name=group.name), metadata=self.metadata,
                                            timeout=self.timeout)
        # All at once, as the sim's boot puts them before its agents start: one after the other they
        # spanned more than the SLB agents' batch window and cost each Nginx host two boot reloads.
        await asyncio.gather(*(self.put_domain(app) for app in spec.apps))

    async def put_domain(self, app: AppSpec) -> None:
        """The app's domain (``{app}.example.com`` unless it names one), owned by the app; an existing one is kept."""
        pb = self.pb
        domain = app.served_domain
        self.domains[app.name] = (app.group, domain)
        try:
            await self.stub.PutDomain(pb.PutDomainRequest(
                domain=pb.Domain(name=domain, group=app.group, owner=app.name), expected_revision=0),
                metadata=self.metadata, timeout=self.timeout)
        except self.grpc.aio.AioRpcError as exc:
            if exc.code() != self.grpc.StatusCode.ALREADY_EXISTS:
                raise

    async def touch_domain(self, app: str, n: int) -> bool:
        """A reload storm's change: a header of the domain's location set to ``n`` (as sim/faults.py's storm)."""
        pb = self.pb
        group, name = self.domains[app]
        try:
            current = await self.stub.GetDomain(pb.GetDomainRequest(group=group, name=name), metadata=self.metadata,
                                                timeout=self.timeout)
            domain = pb.Domain()
            domain.CopyFrom(current)
            if not domain.locations:
                domain.locations.append(pb.Location(path="/"))
            domain.locations[0].set_headers["X-Sim-Storm"] = str(n)
            await self.stub.PutDomain(pb.PutDomainRequest(domain=domain, expected_revision=current.revision),
                                      metadata=self.metadata, timeout=self.timeout)
            return True
        except self.grpc.aio.AioRpcError as exc:  # a lost race with discovery: that change is skipped
            log.info("storm change to %s skipped: %s", name, exc.code())
            return False

    async def close(self) -> None:
        await self.channel.close()


# ------------------------------------------------------------------ the live lab


@dataclass
class Squatter:
    ipam: Ipam
    taken: list[str] = field(default_factory=list)


class LiveLab(RuntimePods):
    """``LabOps`` (lab/faults.py) and ``PodActions`` (lab/controller.py, lab/pod_actions.py) over a running lab."""

    def __init__(self, spec: RegionSpec, lab: Any, store: Store, control: Any, runtime: AsyncioRuntime,
                 audit: EtcdAudit) -> None:
        from lab import services

        super().__init__(lab.plan, store, requested_by="leengine lab run")
        self.services = services
        self.spec = spec
        self.lab = lab  # lab.lab.Lab
        self.plan = lab.plan
        self.fabric = lab.fabric
        self.store = store
        self.control = control  # ControlAdmin
        self.runtime = runtime
        self.audit = audit
        self.controller: Controller | None = None
        self.replication: Replication | None = None  # the platform's pods (lab/replication.py), set by the run
        self.load: Load | None = None
        self.squatters = 0
        self.runtimes_down: set[str] = set()

    # ---- processes
    async def _kill(self, name: str) -> None:
        await asyncio.to_thread(self.services.kill, self.lab, name)

    async def _start(self, name: str) -> None:
        await asyncio.to_thread(self.services.start, self.lab, name)

    # ---- LabOps: nodes
    def node_alive(self, node: str) -> bool:
        return self.controller is not None and self.controller.nodes[node].alive

    def runtime_alive(self, node: str) -> bool:
        return node not in self.runtimes_down

    async def kill_node_processes(self, node: str) -> None:
        await self._kill(cni_agent_process(node))
        await self._kill(runtime_process(node))

    async def kill_pods_hard(self, node: str) -> list[str]:
        """SIGKILL every pod's httpd and delete its netns: the host's memory is gone, no CNI DEL ever comes."""
        assert self.controller is not None
        pods = [p for p in self.controller.nodes[node].pods.values() if p.alive]
        for pod in pods:
            await _kill_netns_processes(self.plan.pod_netns(pod.name))
            await _run("ip", "netns", "delete", self.plan.pod_netns(pod.name))
        return [p.name for p in pods]

    async def set_node_ready(self, node: str, ready: bool) -> None:
        cell = self.plan.nodes[node].cell
        url = f"{self.plan.cells[cell].api_url}/api/v1/nodes/{node}/status"
        body = {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        with contextlib.suppress(OSError):
            await asyncio.to_thread(http_json, "PATCH", url, body, content_type="application/merge-patch+json")

    async def remove_dead_ports(self, node: str) -> int:
        """The node bridge's ports whose interface is gone (pods killed without DEL), removed."""
        bridge = self.plan.nodes[node].bridge
        ports = (await _run("ovs-vsctl", f"--db={self.plan.ovs_db}", "list-ports", bridge)).split()
        gone = [p for p in ports if p.startswith("veth") or p.startswith("le")]
        dead = [p for p in gone if not Path(f"/sys/class/net/{p}").exists()]
        for port in dead:
            await _run("ovs-vsctl", f"--db={self.plan.ovs_db}", "--if-exists", "del-port", bridge, port)
        return len(dead)

    async def start_node_processes(self, node: str) -> None:
        await self._start(cni_agent_process(node))
        await self._start(runtime_process(node))
        self.runtimes_down.discard(node)

    async def runtime_kill_all(self, node: str) -> list[str]:
        answer = await json_line(self.plan.runtime_socket(node), {"op": "kill_all"}, timeout=RUNTIME_TIMEOUT)
        await self._kill(runtime_process(node))
        self.runtimes_down.add(node)
        return [str(p) for p in answer.get("killed", [])]

    async def start_runtime(self, node: str) -> None:
        await self._start(runtime_process(node))
        self.runtimes_down.discard(node)

    def node_down(self, node: str, pods: list[str]) -> None:
        assert self.controller is not None
        self.controller.node_down(node, pods)
        self.audit.auditor.killed.update(self.controller.killed)

    def node_up(self, node: str) -> None:
        assert self.controller is not None
        self.controller.node_up(node)

    def runtime_down(self, node: str, pods: list[str]) -> None:
        assert self.controller is not None
        self.controller.runtime_down(node, pods)
        self.audit.auditor.killed.update(self.controller.killed)

    def runtime_up(self, node: str) -> None:
        assert self.controller is not None
        self.controller.runtime_up(node)

    # ---- Cells
    def cell_nodes(self, cell: str) -> list[str]:
        return list(self.plan.cells[cell].nodes)

    async def cut_fabric(self, cell: str) -> None:
        await asyncio.to_thread(self.fabric.cut_cell, cell)

    async def restore_fabric(self, cell: str) -> None:
        await asyncio.to_thread(self.fabric.restore_cell, cell)

    async def cut_api(self, cell: str) -> None:
        """Nothing more to do: the API host's port is on the Cell's fabric, cut with it (lab/plan.py)."""

    async def restore_api(self, cell: str) -> None:
        """Restored with the fabric."""

    def cell_out(self, cell: str, out: bool) -> None:
        assert self.controller is not None
        self.controller.cell_out(cell, out)

    # ---- etcd
    async def set_links(self, clients: list[str], state: str, seconds: float = 0.0) -> None:
        links = sorted({self.plan.etcd_client_link(c) for c in clients})
        await asyncio.to_thread(self.services.set_links, self.lab, links, state, seconds)

    def etcd_members(self) -> list[str]:
        return list(self.plan.etcd_members)

    async def stop_member(self, name: str) -> None:
        await asyncio.to_thread(self.services.stop_member, self.lab, name)

    async def start_member(self, name: str) -> None:
        await asyncio.to_thread(self.services.start_member, self.lab, name)

    # ---- Nginx hosts, domains
    def host_lost(self, host: str) -> bool:
        return self.load is not None and host in self.load.unused

    async def kill_nginx_host(self, host: str) -> None:
        await self._kill(slb_process(host))

    async def start_nginx_host(self, host: str) -> None:
        await self._start(slb_process(host))

    def clients_use_host(self, host: str, use: bool) -> None:
        if self.load is not None:
            self.load.use_host(host, use)

    async def storm_change(self, app: str, n: int) -> bool:
        return bool(await self.control.touch_domain(app, n))

    # ---- pools, builds
    async def allocated(self, pool: str) -> int:
        """Addresses of ``pool`` allocated now (the run's audit of etcd's history knows)."""
        return self.audit.auditor.allocated.get(pool, 0)

    async def squat(self, pool: str, free: int) -> Squatter:
        """A squatter takes every free address of the pool but ``free``, under its own node name (as the sim's)."""
        self.squatters += 1
        n = self.squatters
        squatter = Squatter(Ipam(self.store, self.runtime, f"squatter-{n}", cooldown=self.spec.cooldown))
        spec_pool = next(p for c in self.spec.cells for p in c.pools if p.name == pool)
        capacity = Pool.parse(spec_pool.name, spec_pool.cidr, spec_pool.vlan, block_size=spec_pool.block_size)
        want = capacity.capacity() - await self.allocated(pool) - free

        async def take(container: str) -> None:
            with contextlib.suppress(IpamError, StoreError):
                await squatter.ipam.allocate(container, "eth0", pools=[pool])
                squatter.taken.append(container)

        i = 0
        while want > 0:
            chunk = min(want, 64)
            await asyncio.gather(*(take(f"squat-{n}-{i + k}") for k in range(chunk)))
            i += chunk
            want -= chunk
        return squatter

    async def unsquat(self, squatter: Squatter) -> None:
        async def give(container: str) -> None:
            with contextlib.suppress(IpamError, StoreError):
                await squatter.ipam.release(container, "eth0")

        for start in range(0, len(squatter.taken), 64):
            await asyncio.gather(*(give(c) for c in squatter.taken[start:start + 64]))

    async def break_version(self, app: str, version: str, error_rate: float) -> list[str]:
        """bad-version: the app's version (or "next": the first numbered at or above the app record's
        ``next_version`` now) answers errors (lab/replication.py); what ``mend_version`` undoes."""
        replication = self.replication or replication_of(self.plan)  # by hand: the running pods only
        if version == "next":
            kv = await self.store.get(app_key(app))
            lowest = decode_app(kv).next_version if kv is not None else 1
            replication.break_next(app, lowest, error_rate)
        else:
            await replication.set_errors(app, version, error_rate)
        return [app, version]

    async def mend_version(self, broken: list[str]) -> None:
        await (self.replication or replication_of(self.plan)).mend(broken[0], broken[1])

    async def kill_builder(self, host: str) -> None:
        await self._kill(build_agent_process(host))

    async def start_builder(self, host: str) -> None:
        await self._start(build_agent_process(host))


async def _run(*argv: str, timeout: float = 30.0) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ""
    return out.decode(errors="replace")


async def _kill_netns_processes(netns: str) -> None:
    """SIGKILL every process of a pod's netns (``ip netns pids``: the httpd)."""
    for pid in (await _run("ip", "netns", "pids", netns)).split():
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


# ------------------------------------------------------------------ the run


@dataclass
class RunState:
    """What the driver keeps while the scenario runs (the observations' raw material)."""

    leaked_max: int = 0
    netns_duplicates: list[str] = field(default_factory=list)
    duplicate_samples: int = 0
    series: list[dict[str, Any]] = field(default_factory=list)
    probes: dict[float, Probe] = field(default_factory=dict)
    leaked_at: dict[float, dict[str, int]] = field(default_factory=dict)  # deadline -> leaked pods then
    machine_load: list[float] = field(default_factory=list)  # the machine's 1-minute load, every sample
    etcd_puts: list[float] = field(default_factory=list)  # seconds of one put, through a client's link
    etcd_gets: list[float] = field(default_factory=list)  # seconds of one get of that key, through the same link


ROUND_TRIP_KEY = "/lab/round-trip"  # written once a second by the run (what the sim's store latency is fitted to)


async def time_etcd(store: Store, state: RunState, *, every: float = 1.0) -> None:
    """Once a second, the seconds of one put and one get through the same kind of link the agents use.

    What the sim's store costs are fitted to: a get is a round trip (``store.latency``), a put
    that plus a raft round and the members' WAL fsync (``store.commit_seconds``), as an IPAM
    transaction is. A failed request (an etcd fault of the scenario) is not a sample."""
    while True:
        await asyncio.sleep(every)
        for request, seconds in ((lambda: store.put(ROUND_TRIP_KEY, b"1"), state.etcd_puts),
                                 (lambda: store.get(ROUND_TRIP_KEY), state.etcd_gets)):
            started = time.monotonic()
            try:
                await request()
            except StoreError:
                continue
            seconds.append(time.monotonic() - started)


def machine_load_summary(loads: list[float]) -> dict[str, Any]:
    """What ``lab fit`` and ``compare`` read (lab.compare.machine_load): the lab's timings move with it."""
    ordered = sorted(loads)
    return {"cpus": os.cpu_count() or 1, "samples": len(ordered),
            "load1_min": ordered[0] if ordered else None,
            "load1_median": percentile(ordered, 0.5, 2) if ordered else None,
            "load1_max": ordered[-1] if ordered else None}


def leaked(controller: Controller, audit: EtcdAudit) -> int:
    """Addresses etcd holds for pods that are not alive (the sim's ``Kubernetes.leaked``)."""
    return sum(leaked_pods(controller, audit).values())


def leaked_pods(controller: Controller, audit: EtcdAudit) -> dict[str, int]:
    """Pod -> addresses etcd holds for it, of the pods that are not alive (what ``leaked`` sums)."""
    held = audit.auditor.pod_handles
    return {f"{pod[0]}/{pod[1]}": held[pod] for pod in sorted(controller.dead) if held.get(pod, 0)}


async def sample_addresses(lab: LiveLab, controller: Controller, state: RunState) -> None:
    """Addresses in the live pods' namespaces against etcd's handles: any address with two owners is recorded."""
    pods = controller.live_pods()
    in_netns = {p.name: await asyncio.to_thread(netns_addresses, lab.plan.pod_netns(p.name)) for p in pods}
    try:
        handles = await handle_addresses(lab.store)
    except StoreError:
        return
    state.duplicate_samples += 1
    for found in duplicates(in_netns, handles):
        if found not in state.netns_duplicates:
            state.netns_duplicates.append(found)


async def observe(lab: LiveLab, controller: Controller, load: Load, state: RunState, clock: Any, *,
                  every: float) -> None:
    """Every ``every`` seconds: a sample of the series, leaked addresses, the namespace/handle comparison."""
    last = {"ok": 0, "failed": 0}
    pools = {p.name: Pool.parse(p.name, p.cidr, p.vlan, block_size=p.block_size)
             for c in lab.spec.cells for p in c.pools}
    while True:
        await asyncio.sleep(every)
        state.machine_load.append(round(os.getloadavg()[0], 2))
        now = leaked(controller, lab.audit)
        state.leaked_max = max(state.leaked_max, now)
        with contextlib.suppress(Exception):
            await sample_addresses(lab, controller, state)
        state.series.append({"t": round(clock(), 3), "ok": load.log.ok - last["ok"],
                             "failed": load.log.failed - last["failed"], "leaked": now,
                             "pool_use": pool_use(pools, lab.audit.auditor)})
        last = {"ok": load.log.ok, "failed": load.log.failed}


async def probe_at(lab: LiveLab, controller: Controller, load: Load, state: RunState, clock: Any,
                   deadline: float, farm: LabFarm | None = None, faults_end: float = 0.0) -> None:
    await asyncio.sleep(max(0.0, deadline - clock()))
    unfinished = tuple(farm.unfinished(submitted_by=faults_end)) if farm is not None else ()
    not_serving = await load.not_serving()
    state.probes[deadline] = Probe(round(clock(), 3), tuple(not_serving), leaked(controller, lab.audit), unfinished)
    state.leaked_at[deadline] = leaked_pods(controller, lab.audit)


def scrape_metrics(urls: dict[str, str], out: Path, timeout: float = 3.0) -> dict[str, str]:
    """Every daemon's /metrics at the end into ``OUT/metrics/<proc>.prom``; returns proc -> file or error."""
    target = out / "metrics"
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for proc, url in sorted(urls.items()):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:  # the plan's http:// URLs only
                (target / f"{proc}.prom").write_bytes(answer.read(16 * 1024 * 1024))
            written[proc] = f"metrics/{proc}.prom"
        except OSError as exc:
            written[proc] = f"error: {exc}"[:200]
    return written


async def run_scenario(scenario: Scenario, spec: RegionSpec, lab: LiveLab, out: Path, *, code_version: dict[str, Any],
                       metrics_urls: dict[str, str], reload_logs: dict[str, Path], sample_every: float = 10.0,
                       cells_api: Any = None, farm_of: Callable[[Callable[[], float]], LabFarm] | None = None,
                       boot_in_run: bool = False) -> dict[str, Any]:
    """Play the scaled scenario on the running lab (already set up: groups and domains exist) and report.

    ``farm_of(clock)``: the lab's build farm client when the spec has build hosts (deploys build first).
    ``boot_in_run``: the lab was brought up for this run, so its boot (the Nginx hosts' reloads of the
    first domains) is counted in it, as the sim's run counts its Region's boot; else the reloads and
    reload durations are counted from the run's start."""
    loop = asyncio.get_running_loop()
    # The machine's speed just before and after the run (lab/reference.py): its seconds are read with them.
    rates_before = await asyncio.to_thread(reference_rates)
    wall = time.monotonic()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    controller = Controller(spec, lab, clock, seed=spec.seed)
    lab.controller = controller
    farm = farm_of(clock) if farm_of is not None and spec.build_hosts else None
    if farm is not None:
        controller.release = farm.release
    addresses = {h: lab.plan.hosts[h].mgmt_ip for hosts in lab.plan.groups.values() for h in hosts}
    domains = {a.name: a.served_domain for a in spec.apps}
    # The platform's replication controllers (lab/replication.py): pods of the versions deployed in the run.
    replication = replication_of(lab.plan, seed=spec.seed, node_grace=controller.node_grace)
    lab.replication = replication

    def ready_elsewhere(app: str, now: float, grace: float) -> bool:
        return controller.ready_elsewhere(app, now, grace) or replication.ready_elsewhere(app, grace, controller.out)

    load = Load(spec.apps, spec.groups, domains, addresses, clock, ready_elsewhere)
    lab.load = load
    # Platform apps (lab/platform.py): created, deployed and released through leengine app, observed for the checks.
    platform = LabPlatform(spec, lab.store, {c.name: c.api_url for c in lab.plan.cells.values()},
                           {**os.environ, **lab.services.lab_environment(lab.lab)}, clock, domains)
    state = RunState()
    cron = LeakCron(lab.store, cells_api, lab.runtime, every=spec.leak_check_every, grace=spec.leak_grace)
    schedule = Schedule(lab, t0, spec.seed)
    end = last_fault_end(spec.faults, spec.duration)
    slb_metrics = {proc: url for proc, url in metrics_urls.items() if proc.startswith("slb-")}
    agents = HistogramSampler(slb_metrics, {"reload_seconds": SLB_RELOAD_SECONDS.name,
                                            "propagation_seconds": SLB_PROPAGATION_SECONDS.name},
                              from_zero=("reload_seconds",) if boot_in_run else ())
    await agents.once()  # the baseline: what lab up's agents counted is not this run's (but the boot's reloads)
    reloads_before = {h: 0 if boot_in_run else reloads_in_log(p) for h, p in sorted(reload_logs.items())}
    tasks = [loop.create_task(lab.audit.run(), name="lab/audit"),
             loop.create_task(replication.run(), name="lab/replication-controllers"),
             loop.create_task(platform.run(), name="lab/platform"),
             loop.create_task(agents.run(), name="lab/agent-histograms"),
             loop.create_task(controller.run(), name="lab/controller"),
             loop.create_task(load.run(spec.duration), name="lab/load"),
             loop.create_task(cron.run(), name="lab/cnictl-cron"),
             loop.create_task(observe(lab, controller, load, state, clock, every=sample_every), name="lab/observe"),
             loop.create_task(time_etcd(lab.store, state), name="lab/etcd-round-trips"),
             loop.create_task(schedule.run(), name="lab/faults")]
    if farm is not None:
        tasks.append(loop.create_task(farm.observe(), name="lab/build-observer"))
    tasks += [loop.create_task(controller.run_churn(spec.churn.deploys_per_hour, "deploy"), name="lab/deploys"),
              loop.create_task(controller.run_churn(spec.churn.scale_events_per_hour, "scale"), name="lab/scale")]
    tasks += [loop.create_task(probe_at(lab, controller, load, state, clock, d, farm, end), name="lab/probe")
              for d in liveness_deadlines(spec.checks, end, spec.duration)]
    try:
        await asyncio.sleep(max(0.0, spec.duration - clock()))
        probes = [t for t in tasks if t.get_name() == "lab/probe"]
        if probes:
            await asyncio.wait(probes, timeout=30.0)
    finally:
        await schedule.finish()
        for task in tasks:
            task.cancel()
        for task in tasks:
            if task.get_name() == "lab/platform" and task.done() and not task.cancelled() and task.exception():
                log.error("the platform's driver failed: %r", task.exception())
        await asyncio.gather(*tasks, return_exceptions=True)
        await controller.stop()
        with contextlib.suppress(Exception):
            await platform.history()
        if farm is not None:
            await farm.close()
    elapsed = clock()
    obs = Observations(duration=spec.duration, faults_end=end,
                       audit_violations=list(lab.audit.auditor.violations),
                       netns_duplicates=state.netns_duplicates, duplicate_samples=state.duplicate_samples,
                       serving_violations=load.log.serving_violations,
                       serving_examples=load.log.serving_examples, ok=load.log.ok, failed=load.log.failed,
                       reloads={h: reloads_in_log(p) - reloads_before[h] for h, p in sorted(reload_logs.items())},
                       leaks=cron.stats, leaks_gone=dict(lab.audit.auditor.leaks_gone), probes=state.probes,
                       builds_submitted=farm.submitted(by=end) if farm is not None else 0,
                       builds_observed=farm is not None,
                       platform=platform.observed if platform.enabled else None,
                       first_error=dict(load.log.first_error),
                       platform_cells={name: a.cells for name, a in platform.specs.items()},
                       release_apps=[r.app for r in platform.release_specs],
                       outages=[(at, at + (f.duration or spec.duration)) for f in spec.faults
                                if f.kind == "cell-outage" for at in occurrences(f, spec.duration)])
    verdicts = judge_all(obs, spec.checks)
    c = controller.counts
    pods = {p.name: p for pods_ in controller.pods.values() for p in pods_}
    # End to end, as clients see it: a pod ready -> its name first answered through Nginx (the
    # endpoints controller, discovery's push, slb-core, etcd's watch, the agent, Nginx): checks that
    # what the agents count as "in force" is served. The agents' share is ``propagation_seconds``.
    served_after_ready = [load.log.first_served[name] - p.ready_at for name, p in pods.items()
                          if name in load.log.first_served and load.log.first_served[name] >= p.ready_at]
    pools = {p.name: Pool.parse(p.name, p.cidr, p.vlan, block_size=p.block_size)
             for cell in spec.cells for p in cell.pools}
    totals = LabTotals(ok=load.log.ok, failed=load.log.failed, failed_no_answer=load.log.failed_no_answer,
                       add_errors=c.add_errors, leaked_max=state.leaked_max,
                       leaked_now=leaked(controller, lab.audit), leaks_found=cron.stats.found,
                       leaks_released=cron.stats.released, leak_checks=cron.stats.checks,
                       leak_checks_skipped=cron.stats.skipped, pool_use=pool_use(pools, lab.audit.auditor),
                       reloads=obs.reloads, pods_started=c.pods_started + replication.counts.started,
                       pods_died=c.pods_died, pods_deleted=c.pods_deleted + replication.counts.stopped,
                       pods_alive=len(controller.live_pods()),
                       faults=len(schedule.windows), store_revision=lab.audit.after, series=state.series,
                       builds=farm.metrics() if farm is not None else {},
                       registry_images=len({r.image for r in farm.results.values() if r.state == "done"})
                       if farm is not None else 0,
                       add_in_flight=[*c.add_in_flight, *replication.counts.add_in_flight],
                       samples={"cni_add_seconds": [*c.add_seconds, *replication.counts.add_seconds],
                                "propagation_seconds": agents.samples("propagation_seconds"),
                                "reload_seconds": agents.samples("reload_seconds"),
                                "drain_seconds": list(c.drain_seconds),
                                "build_seconds": farm.seconds() if farm is not None else [],
                                "etcd_put_seconds": list(state.etcd_puts),
                                "etcd_get_seconds": list(state.etcd_gets)})
    files = await asyncio.to_thread(scrape_metrics, metrics_urls, out)
    rates_after = await asyncio.to_thread(reference_rates)  # after every count and scrape: it takes ~0.5 s
    report = lab_report(scenario, spec, verdicts, totals, code_version=code_version, elapsed=elapsed,
                        wall_seconds=time.monotonic() - wall,
                        lab={"id": lab.plan.id, "dir": str(lab.plan.dir), "metrics": files,
                             "faults": [vars(e) for e in schedule.events],
                             "duplicate_samples": state.duplicate_samples,
                             "published": load.log.published,
                             "boot_in_run": boot_in_run,
                             "machine_load": machine_load_summary(state.machine_load),
                             "reference_rates": {"before": rates_before, "after": rates_after}
                             if rates_before and rates_after else None,
                             "leaked_at_deadlines": {f"{d:g}": pods for d, pods in sorted(state.leaked_at.items())},
                             "leaked_at_end": leaked_pods(controller, lab.audit),
                             "samples_from": agents.summary(),
                             "builds": farm.results_summary() if farm is not None else [],
                             "platform": platform_summary(platform, load),
                             "served_after_ready_seconds": [round(v, 6) for v in served_after_ready],
                             "served_after_ready_p50": percentile(sorted(served_after_ready), 0.5, 3),
                             "ready_pods_not_seen_by_clients": sorted(n for n, p in pods.items()
                                                         if p.ready and n not in load.log.first_served)[:50]})
    write_report(out, report, state.series)
    return report


# ------------------------------------------------------------------ the command's entry


class LabRunError(RuntimeError):
    """The lab run could not start or finish (one line for the command)."""


def open_lab(scenario: Scenario, directory: Path) -> tuple[Any, bool]:
    """The live lab in ``directory`` if it runs this scenario file (same sha256), else a new one: (lab, made)."""
    from lab.lab import Lab, lab_is_live
    from lab.record import LabRecord

    record = LabRecord(directory.absolute())
    if record.exists() and lab_is_live(record) is not None:
        info = record.load()
        if info.scenario_sha256 != scenario.sha256:
            raise LabRunError(f"{directory} holds a live lab of another scenario ({info.scenario}); "
                              "run `leengine lab down` first or give another --dir")
        return Lab.load(directory), False
    return Lab.up(directory, Path(scenario.path)), True


async def run_lab(scenario: Scenario, spec: RegionSpec, lab: Any, out: Path, *,
                  code_version: dict[str, Any]) -> dict[str, Any]:
    """Connect to the lab's etcd (the cnictl links), its Cells' APIs and its control service, then play the spec."""
    from foundation.adapters.k8s_cluster import KubeCluster
    from lab import services
    from leengine.etcd_options import EtcdClientTls, open_store

    certs = services.files(lab).certs
    tls = EtcdClientTls(Path(certs.ca_cert), Path(certs.client_cert), Path(certs.client_key))
    store = await open_store(services.etcd_endpoint(lab.plan, "cnictl"), tls, timeout=5.0)
    cells = [KubeCluster(host=cell.api_url, timeout=5.0) for cell in lab.plan.cells.values()]
    control = ControlAdmin(lab.plan.control_address, services.admin_token(lab), certs.ca_cert.read_bytes())
    runtime = AsyncioRuntime(spec.seed)
    audit = EtcdAudit(store)
    live = LiveLab(spec, lab, store, control, runtime, audit)
    paused = await asyncio.to_thread(pause_controller, lab)
    try:
        # A clean slate, so the run starts as the sim's Region does (every pod booted at t = 0): the
        # pods a previous run or the persistent controller left are stopped (CNI DEL each).
        cleared = await asyncio.gather(*(live.clear_node(node) for node in lab.plan.nodes))
        if sum(cleared):
            log.info("stopped %d pod(s) left on the lab before the run", sum(cleared))
        await control.set_up(spec)
        metrics = {name: m.url for name, m in lab.plan.ports.metrics.items()}
        logs = {h: services.files(lab).nginx_prefix(h) / "logs" / "error.log"
                for hosts in lab.plan.groups.values() for h in hosts}
        repos = AppRepos(services.files(lab).repos)
        for app in spec.apps:  # the build hosts clone from here: every app's repository exists first
            await asyncio.to_thread(repos.ensure, app.name)

        def farm_of(clock: Callable[[], float]) -> LabFarm:
            builds = BuildsAdmin(lab.plan.control_address, services.admin_token(lab), certs.ca_cert.read_bytes())
            return LabFarm(repos, builds, store, clock)

        # The first run on a lab counts the lab's boot (its first reloads) as the sim counts its Region's.
        played = Path(lab.plan.dir) / BOOT_PLAYED.format(id=lab.plan.id)
        boot_in_run = not played.exists()
        played.touch()
        return await run_scenario(scenario, spec, live, out, code_version=code_version, metrics_urls=metrics,
                                  reload_logs=logs, cells_api=RegionPods(cells), farm_of=farm_of,
                                  boot_in_run=boot_in_run)
    finally:
        if paused:
            await asyncio.to_thread(resume_controller, lab)
        await control.close()
        for cell in cells:
            with contextlib.suppress(Exception):
                await cell.close()
        await store.close()
