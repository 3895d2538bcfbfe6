"""What a simulated Region is made of: the plain, validated description a scenario file turns into.

``sim/scenario.py`` parses a YAML scenario into these frozen dataclasses (naming file,
line and field on any error); ``sim/world.py`` builds and runs a Region from them.
Nothing here runs anything: it is the contract between the two. Besides the data types
it holds what each kind means to both sides: the fault and check kinds (the world's
tables, sim/faults.py and sim/checks.py, have exactly these), what a fault kind's
``target`` selects (``FAULT_TARGETS``; sim/targets.py lists and indexes the targets),
which kinds take each kind-specific parameter (``FAULT_PARAMS``), and the names of
nodes, Nginx hosts and build hosts.

Times are virtual seconds from the start of the run. A **selector** picks fault
targets by name, label, count or percentage: ``{"names": [...]}``,
``{"labels": {"rack": "r1"}}``, ``{"count": 5}`` or ``{"percent": 10}`` (count and
percent draw from the run's seeded random source, among the targets the other
selector fields leave).

The ``MAX_*`` bounds below are the largest Region a scenario may describe (docs/sim.md
states each next to its field): they keep a validated spec one the world can build in
bounded memory and time, and they are checked *before* anything is expanded (an app's
``count``, a Cell's nodes). ``TargetIndex`` answers what validating a selector asks (is
this a target, its labels, how many carry these labels) without listing the targets,
so a selector costs the same for 10 nodes as for 10,000 (sim/targets.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

Labels = dict[str, frozenset[str]]  # a target's labels: name -> values (an app has one `cell` per Cell)

MAX_NODES_PER_CELL = 600  # LeEngine's rule: one Kubernetes cluster, at most ~600 nodes

# Upper bounds of a scenario (docs/sim.md, next to each field). The bench's largest Region
# (bench/sim_scale.py: 10 Cells x 600 nodes, 100,000 pods, /12 pools, 24 h) fits within them.
MAX_SEED = 2**63 - 1
MAX_SECONDS = 7 * 24 * 3600.0  # a run, a fault, a period, a deadline: at most one virtual week
MAX_ETCD_LATENCY = 10.0  # seconds of etcd round trip
MAX_CELLS = 100
MAX_REGION_NODES = 10_000  # nodes over all Cells
MAX_POOLS_PER_CELL = 16
MIN_POOL_PREFIX = 12  # a pool is at most a /12 (1,048,576 addresses)
MAX_LABELS = 32  # labels of a Cell, labels of a selector
MAX_GROUPS = 64
MAX_HOSTS_PER_GROUP = 100
MAX_BUILD_HOSTS = 1000
MAX_APPS = 10_000  # after `count` is expanded
MAX_REPLICAS = 10_000  # pods per app and Cell
MAX_PODS = 200_000  # replicas x Cells, summed over the apps
MAX_REQUESTS_PER_SECOND = 1_000_000.0  # per app
MAX_EVENTS_PER_HOUR = 36_000.0  # churn: deploys, scale events (10 a second)
MAX_FAULTS = 200
MAX_FACTOR = 1000.0  # etcd-slow
MAX_CHANGES = 100_000  # reload-storm
MIN_EVERY = 1.0  # a repeated fault's period, seconds: at most one repetition a second
MAX_CHECKS = 100
MAX_RELEASES = 100  # the platform block's gray releases
MAX_STEPS = 16  # a release's steps
MAX_PLATFORM_APPS = 64  # apps deployed through the platform (each is a few etcd records and a release loop)
MAX_LIMIT = 1e12  # the bound of a max-* check
MAX_PUSHES = 1000  # the `pushes:` block's entries (each may repeat `every` seconds)
MAX_DELIVERIES = 100  # webhook-duplicate: deliveries of one Push Hook
CRASH_POINTS = ("before-txn", "after-txn", "either")  # webhook-receiver-crash: where the receiver dies

FaultKind = Literal[
    "host-crash",  # hosts die: their pods die with them, no CNI DEL (leaked addresses); optional return
    "runtime-death",  # the container runtime of hosts dies: pods and their netns gone, the host stays
    "cell-outage",  # a whole Cell (machine room) is cut off: its nodes and API server unreachable
    "etcd-slow",  # the selected clients' round trips to etcd take `factor` times longer (their link)
    "etcd-unavailable",  # the selected clients (or everyone) cannot reach etcd
    "reload-storm",  # `changes` config changes to domains of a group within the duration
    "nginx-host-loss",  # Nginx hosts of a group die (their share of the load fails over)
    "pool-exhaustion",  # a pool is shrunk to `free` remaining addresses (others taken by a squatter)
    "builder-crash",  # build hosts die (mid-build): their leases expire, their tasks move to other hosts
    "bad-version",  # a platform app's version answers `error_rate` of its requests with 5xx (x latency_factor slower)
    "webhook-duplicate",  # GitLab delivers each Push Hook of the selected apps `deliveries` times (sim/webhooks.py)
    "webhook-receiver-crash",  # the hook receiver dies before its etcd txn or after it, before answering; GitLab
    #                            redelivers after `redeliver_after` s
]


FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class Selector:
    names: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    count: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class PoolSpec:
    name: str
    cidr: str
    vlan: int
    block_size: int = 16


@dataclass(frozen=True)
class CellSpec:
    name: str
    nodes: int
    pools: tuple[PoolSpec, ...]
    node_labels: tuple[tuple[str, str], ...] = ()  # labels every node of the Cell carries (e.g. room)
    racks: int = 1  # nodes are spread over racks: label rack=r1..rN


@dataclass(frozen=True)
class GroupSpec:
    """An Nginx cluster of the Region."""

    name: str
    hosts: int


@dataclass(frozen=True)
class AppSpec:
    name: str  # the app's namespace
    cells: tuple[str, ...]
    replicas: int  # per Cell
    group: str  # the Nginx group serving its domain
    domain: str = ""  # default: "{name}.example.com"
    port: int = 8080
    start_seconds: float = 2.0  # container start after the sandbox has its address
    readiness_seconds: float = 3.0  # until the readiness probe passes
    requests_per_second: float = 10.0  # client load on its domain
    count_index: int = 0  # k of the copies ``{name}-k`` of an app given ``count`` (1..count); 0: no count
    platform: bool = False  # deployed through the platform (control/apps.py, versions v1..), not by the world

    @property
    def served_domain(self) -> str:
        """The domain its clients ask for: ``domain``, else ``{name}.example.com``."""
        return self.domain or f"{self.name}.example.com"


@dataclass(frozen=True)
class FaultSpec:
    kind: FaultKind
    at: float
    duration: float | None = None  # None: permanent (or until the run ends)
    target: Selector = field(default_factory=Selector)
    every: float | None = None  # repeat on this schedule (seconds) until the run ends
    # kind-specific parameters
    factor: float = 10.0  # etcd-slow
    changes: int = 100  # reload-storm
    free: int = 0  # pool-exhaustion
    pool: str = ""  # pool-exhaustion
    group: str = ""  # reload-storm, nginx-host-loss
    app: str = ""  # bad-version: a platform app
    version: str = "next"  # bad-version: "v<N>", or "next": the first version deployed after the fault begins
    error_rate: float = 0.0  # bad-version: share of that version's requests answered 5xx (0..1)
    latency_factor: float = 1.0  # bad-version: its requests take this many times as long
    deliveries: int = 2  # webhook-duplicate: how many times each Push Hook is delivered
    crash_point: str = "either"  # webhook-receiver-crash: "before-txn" | "after-txn" | "either" (drawn per delivery)
    redeliver_after: float = 10.0  # webhook-receiver-crash: GitLab's delay before it delivers an unanswered hook again
    line: int = 0  # where it stands in the scenario file, for messages
    # ``at: {uniform: [low, high]}`` / ``duration: {uniform: [...]}``: drawn per seed (sim/fault_times.py);
    # until drawn, ``at`` is the low end and ``duration`` the high end. Once drawn they stay, for the report.
    at_range: tuple[float, float] | None = None
    duration_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class ChurnSpec:
    """Background changes while the Region runs: deploys (rolling replacement) and scaling."""

    deploys_per_hour: float = 0.0
    scale_events_per_hour: float = 0.0


CheckKind = Literal[
    "no-duplicate-address",  # safety: never two owners of an address (audited from the Store's history)
    "domains-keep-serving",  # safety: never a domain without a ready upstream while one exists in another Cell
    "leaks-found-and-released",  # liveness: after faults end, cnictl check finds every leak and release frees it
    "apps-serve-again",  # liveness: after faults end, every app serves again within `within` seconds
    "max-failed-requests",  # at most `limit` failed requests over the run
    "max-reloads",  # at most `limit` reloads per Nginx host
    "builds-finish",  # liveness: after faults end, every build submitted has finished within `within` seconds
    "release-reverted-within",  # a bad version's first error -> its share 0 and its controllers gone: <= `within` s
    "no-orphan-versions",  # at the end, every Cell's controllers of a platform app == its active version records
    "activity-consistent",  # platform changes: 0 without an activity record, 0 records without one; counts recount
    "release-completed",  # every gray release completed (paused, not reverted, while a Cell was cut off); old gone
    "one-build-per-commit",  # every (repo, commit) queued once, at most one result, no push from a superseded attempt
]


CHECK_KINDS: tuple[str, ...] = get_args(CheckKind)


@dataclass(frozen=True)
class ReleaseSpec:
    """A gray release the world makes of a platform app: deploy the next version at ``at``, then release it.

    The fields after ``at`` are ``control.releases.Releases.start``'s own (docs/platform.md).
    """

    app: str
    at: float
    steps: tuple[int, ...] = (1, 10, 50, 100)  # the new version's share, percent, step by step
    bake_seconds: float = 60.0
    check_seconds: float = 10.0
    max_error_increase: float = 0.05
    max_latency_ratio: float = 2.0
    bad_checks: int = 2
    min_requests: int = 10
    line: int = 0


@dataclass(frozen=True)
class PushSpec:
    """Commits pushed to an app's branch (the ``pushes:`` block): at ``at`` (and every ``every`` seconds), GitLab
    sends a Push Hook of a new commit to the control service's receiver, bound to (the app's project, ``branch``)."""

    app: str
    at: float
    branch: str = "main"
    every: float | None = None
    line: int = 0


@dataclass(frozen=True)
class CheckSpec:
    kind: CheckKind
    within: float = 120.0  # liveness deadline after the last fault ends
    limit: float = 0.0


# --------------------------------------------------------------------------- cost models
# What the sim adapters charge in virtual time. The defaults here are the code's; the shipped
# scenarios read scenarios/costs.yaml (fitted from lab reports by ``leengine lab fit``), and a
# scenario's ``costs:`` block overrides single fields (sim/scenario_costs.py parses both).


@dataclass(frozen=True)
class DataplaneCosts:
    attach_seconds: float = 0.0  # plumbing a pod interface (veth, OVS port, address), on top of IPAM's round trips
    detach_seconds: float = 0.0
    # + this per other attach in flight on the machine as it begins (the lab's nodes share one machine's cores:
    # a Region-wide count at lab scale, sim/world.py; each node its own machine at full scale)
    attach_per_in_flight: float = 0.0


@dataclass(frozen=True)
class StoreCosts:
    latency: float = 0.002  # etcd round trip, seconds (a scenario's top-level ``etcd_latency`` wins)
    jitter: float = 0.0  # extra round trip, uniform in [0, jitter)
    # + this for a write (a put, delete, txn with a write, lease grant or revoke, compaction): the raft
    # round and the members' WAL fsync a read does not wait for (lab: a put took ~4x a get)
    commit_seconds: float = 0.0


@dataclass(frozen=True)
class BuilderCosts:
    clone_seconds: float = 5.0
    compile_cold: float = 180.0  # the repo's dependency cache cold on this host
    compile_warm: float = 40.0
    image_seconds: float = 20.0
    jitter: float = 0.1  # each step varies by +-jitter (relative)
    image_mb: float = 200.0  # pushed image size
    registry_mb_per_second: float = 100.0  # push and pull bandwidth
    pull_base_seconds: float = 1.0  # a node's pull: base + image_mb / bandwidth


@dataclass(frozen=True)
class ProxyCosts:
    # Fitted to bench/nginx_reload_curve.py (100 / 1,000 / 5,000 domains): test ~ 9 ms + 0.28 ms/domain,
    # apply ~ test + 0.111 s + 0.23 ms/domain.
    upstream_seconds: float = 0.0006
    test_base: float = 0.009
    test_per_domain: float = 0.00028
    reload_base: float = 0.111
    reload_per_domain: float = 0.00023


@dataclass(frozen=True)
class CostSpec:
    dataplane: DataplaneCosts = field(default_factory=DataplaneCosts)
    store: StoreCosts = field(default_factory=StoreCosts)
    builder: BuilderCosts = field(default_factory=BuilderCosts)
    proxy: ProxyCosts = field(default_factory=ProxyCosts)


# --------------------------------------------------------------------------- the lab's scaling
# A scenario's ``lab:`` block: how to shrink it to one machine (sim/scenario_lab.py parses it and
# applies it with ``lab_scaled``). ``None`` fields leave that part of the scenario as it is.


@dataclass(frozen=True)
class LabSpec:
    nodes_per_cell: int | None = None  # cap of every Cell's nodes
    racks_per_cell: int | None = None  # cap of every Cell's racks
    hosts_per_group: int | None = None  # cap of every Nginx group's hosts
    build_hosts: int | None = None  # cap of topology.build_hosts
    max_count: int | None = None  # copies kept of an app given ``count`` (the first ones)
    max_replicas: int | None = None  # cap of an app's replicas per Cell
    max_requests_per_second: float | None = None  # cap of an app's client load
    time_scale: float = 1.0  # 0 < x <= 1: multiplies every time of the scenario (see sim/scenario_lab.py)
    line: int = 0  # where the block stands in the scenario file, for messages


@dataclass(frozen=True)
class RegionSpec:
    name: str
    seed: int
    duration: float
    cells: tuple[CellSpec, ...]
    groups: tuple[GroupSpec, ...]
    apps: tuple[AppSpec, ...]
    faults: tuple[FaultSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    releases: tuple[ReleaseSpec, ...] = ()  # the ``platform:`` block's gray releases, by time
    pushes: tuple[PushSpec, ...] = ()  # the ``pushes:`` block: commits pushed to apps' branches (GitLab hooks)
    traffic_every: float = 0.0  # SLB agents' per-version traffic records, seconds apart (0: none; platform: 5)
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    etcd_latency: float = 0.002  # round trip, seconds
    cooldown: float = 30.0  # IPAM cool-down of released addresses
    leak_check_every: float = 60.0  # cnictl check run by an operator cron
    leak_grace: float = 60.0
    build_hosts: int = 0  # the Region's build farm (0: deploys roll out without building)
    source: str = ""  # the scenario file, for reports
    costs: CostSpec = field(default_factory=CostSpec)  # the sim adapters' cost models
    lab: LabSpec | None = None  # the scenario's ``lab:`` block, if it has one
    lab_costs: CostSpec | None = None  # costs of the lab's stand-ins (costs.yaml ``lab_costs:``), for lab scale
    scale: Literal["full", "lab"] = "full"  # "lab": ``sim.scenario_lab.lab_scaled`` applied the lab block


# --------------------------------------------------------------------------- fault targets
# One definition of what each fault kind's ``target`` selects, its names and labels: the
# validator checks selectors against it and the world draws targets from it, so both agree.

FAULT_TARGETS: dict[str, str] = {
    "host-crash": "nodes",
    "runtime-death": "nodes",
    "etcd-slow": "etcd clients",
    "etcd-unavailable": "etcd clients",
    "cell-outage": "cells",
    "nginx-host-loss": "nginx hosts",
    "reload-storm": "apps",
    "pool-exhaustion": "none",
    "builder-crash": "build hosts",
    "bad-version": "none",  # its `app` names the platform app
    "webhook-duplicate": "apps",  # whose Push Hooks are delivered `deliveries` times
    "webhook-receiver-crash": "none",  # the control service's one hook receiver
}

# The kind-specific parameters of a fault, and the kinds that take each (the validator refuses them elsewhere).
FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "factor": ("etcd-slow",),
    "changes": ("reload-storm",),
    "free": ("pool-exhaustion",),
    "pool": ("pool-exhaustion",),
    "group": ("reload-storm", "nginx-host-loss"),
    "app": ("bad-version",),
    "version": ("bad-version",),
    "error_rate": ("bad-version",),
    "latency_factor": ("bad-version",),
    "deliveries": ("webhook-duplicate",),
    "crash_point": ("webhook-receiver-crash",),
    "redeliver_after": ("webhook-receiver-crash",),
}

CONTROL_CLIENTS = ("slb-core", "discovery", "cnictl")  # the control plane's own etcd clients
BUILD_SCHEDULER = "build-scheduler"  # the control plane's build scheduler, when there is a build farm


def node_name(cell: str, i: int) -> str:
    """The name of node ``i`` (1-based) of a Cell, as selectors and the world use it."""
    return f"{cell}-n{i:03d}"


def build_host_name(i: int) -> str:
    """The name of build host ``i`` (1-based)."""
    return f"build-{i}"


def nginx_host_name(group: str, i: int) -> str:
    """The name of Nginx host ``i`` (1-based) of a group."""
    return f"{group}-nginx-{i}"
