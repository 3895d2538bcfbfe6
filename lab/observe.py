"""What a live lab shows, gathered for the checks: addresses, leaks, reloads, serving at deadlines.

The observers of a lab run (the twin of what sim/world.py records for sim/checks.py):

* ``EtcdAudit``: ``sim.audit.Auditor`` (the sim's own duplicate-address auditor) fed by a
  real watch of ``/ipam/`` from revision 1 on the lab's etcd; a broken watch resumes just
  after the last revision it saw. It also knows which pods died without CNI DEL
  (``killed``), so it sees which leaks went away.
* ``netns_addresses`` / ``duplicates``: the IPv4 addresses really configured in each pod's
  network namespace (``ip -n NS -j addr``), held against etcd's handle records: an address
  with two owning pods anywhere (two namespaces, two handles, or a namespace and another
  pod's handle) is a duplicate.
* ``LeakCron``: the operator's cron, cnictl's ``check_leaks`` then ``release_certain``
  (cni/admin.py, unchanged) every ``leak_check_every`` seconds against etcd and every
  Cell's API; a round that cannot list a Cell or reach etcd is skipped and counted.
* ``reloads_in_log``: Nginx reloads counted from a host's error log (one "signal 1
  (SIGHUP) received" notice per reload).
* ``Observations``: everything the checks judge, filled by the driver (lab/run.py).

It must not change the lab, except cnictl's release, which is the cron's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni import admin
from cni.admin import AdminError
from cni.pools import HANDLES, Handle, InvalidRecord
from foundation.ports import StoreError
from foundation.ports.cluster import ClusterUnavailable, PodInfo, PodInventory
from foundation.ports.metrics import NO_METRICS, Metrics
from foundation.ports.runtime import Runtime
from foundation.ports.store import Store
from sim.audit import Auditor
from sim.checks import Probe

log = logging.getLogger("leengine.lab.observe")

NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
SIGHUP_NOTICE = re.compile(rb"signal 1 \(SIGHUP\) received")


# ------------------------------------------------------------------ addresses


def netns_addresses(netns: str, *, timeout: float = 5.0) -> list[str]:
    """The IPv4 addresses configured in a network namespace, loopback excepted ([] when it is gone)."""
    if not NETNS_NAME.fullmatch(netns):
        raise ValueError(f"not a network namespace name: {netns[:40]!r}")
    try:
        out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return parse_ip_addr_json(out.stdout)


def parse_ip_addr_json(text: str) -> list[str]:
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return []
    found = []
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or link.get("ifname") == "lo":
            continue
        for info in link.get("addr_info") or []:
            if isinstance(info, dict) and info.get("family") == "inet" and isinstance(info.get("local"), str):
                found.append(info["local"])
    return found


def duplicates(in_netns: dict[str, list[str]], handles: Iterable[tuple[str, str]]) -> list[str]:
    """Every address owned by two pods: ``in_netns`` pod -> addresses, ``handles`` (address, pod) from etcd."""
    owners: dict[str, set[str]] = {}
    for pod, addresses in in_netns.items():
        for address in addresses:
            owners.setdefault(address, set()).add(pod)
    for address, pod in handles:
        owners.setdefault(address, set()).add(pod)
    return [f"{address} owned by {', '.join(sorted(pods))}" for address, pods in sorted(owners.items())
            if len(pods) > 1]


async def handle_addresses(store: Store) -> list[tuple[str, str]]:
    """(address, pod name) of every handle record in etcd (records that do not decode are skipped)."""
    out = []
    for kv in (await store.range(HANDLES)).kvs:
        try:
            handle = Handle.from_bytes(kv.value)
        except InvalidRecord:  # cnictl reports bad records; the audit skips them
            continue
        out.append((str(handle.address), handle.pod.name))
    return out


# ------------------------------------------------------------------ the etcd audit


class EtcdAudit:
    """The sim's Auditor over the lab's real etcd history of /ipam/."""

    def __init__(self, store: Store, *, retry: float = 1.0) -> None:
        self.store = store
        self.retry = retry
        self.auditor = Auditor()
        self.after = 0

    async def run(self) -> None:
        while True:
            try:
                async with self.store.watch("/ipam/", start_revision=self.after + 1) as watch:
                    async for event in watch:
                        self.auditor.on_event(event)
                        self.after = event.revision
            except StoreError:
                pass
            await asyncio.sleep(self.retry)


# ------------------------------------------------------------------ cnictl's cron


class RegionPods:
    """The pods and nodes of every Cell's API (what cnictl reads); one Cell out of reach fails the listing."""

    def __init__(self, cells: Sequence[PodInventory]) -> None:
        self.cells = list(cells)

    @property
    def endpoint(self) -> str:
        return ",".join(c.endpoint for c in self.cells)

    async def list_pods(self) -> list[PodInfo]:
        pods: list[PodInfo] = []
        for cell in self.cells:
            pods.extend(await cell.list_pods())
        return pods

    async def list_nodes(self) -> list[str]:
        nodes: list[str] = []
        for cell in self.cells:
            nodes.extend(await cell.list_nodes())
        return nodes


@dataclass
class LeakStats:
    checks: int = 0
    skipped: int = 0
    found: int = 0  # distinct certain leaks
    released: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    released_handles: set[str] = field(default_factory=set)


class LeakCron:
    """``cnictl check`` + ``cnictl release`` every ``every`` seconds (cni/admin.py, as the sim's cron runs it)."""

    def __init__(self, store: Store, cluster: PodInventory, runtime: Runtime, *, every: float, grace: float,
                 metrics: Metrics = NO_METRICS) -> None:
        self.store = store
        self.cluster = cluster
        self.runtime = runtime
        self.every = every
        self.grace = grace
        self.metrics = metrics
        self.stats = LeakStats()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.once()

    async def once(self) -> None:
        s = self.stats
        try:
            report = await admin.check_leaks(self.store, self.cluster, self.runtime, grace=self.grace,
                                             metrics=self.metrics)
            released, _ = await admin.release_certain(self.store, self.runtime, metrics=self.metrics)
        except (ClusterUnavailable, AdminError, StoreError) as exc:
            s.skipped += 1
            log.info("leak check skipped: %s", exc)
            return
        s.checks += 1
        s.seen.update((leak.address, leak.handle) for leak in report.certain)
        s.found = len(s.seen)
        s.released += len(released)
        s.released_handles.update(r.handle for r in released)


# ------------------------------------------------------------------ reloads


def reloads_in_log(error_log: Path) -> int:
    """Reloads an Nginx master did, from its error log (0 when there is no log yet)."""
    with contextlib.suppress(OSError):
        return len(SIGHUP_NOTICE.findall(error_log.read_bytes()))
    return 0


# ------------------------------------------------------------------ what the checks read


@dataclass
class Observations:
    """Everything the lab's checks judge (lab/checks.py), filled by the run driver."""

    duration: float
    faults_end: float  # the last fault's declared end (sim.faults.last_fault_end)
    audit_violations: list[str] = field(default_factory=list)  # the etcd history's duplicate owners
    netns_duplicates: list[str] = field(default_factory=list)  # from the pods' namespaces + handles, sampled
    duplicate_samples: int = 0  # how many times namespaces and handles were compared
    serving_violations: int = 0
    serving_examples: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    reloads: dict[str, int] = field(default_factory=dict)  # Nginx host -> reloads
    leaks: LeakStats = field(default_factory=LeakStats)
    leaks_gone: dict[str, str] = field(default_factory=dict)  # handle of a killed pod -> address, once released
    probes: dict[float, Probe] = field(default_factory=dict)  # liveness deadline -> the lab then
    builds_submitted: int = 0  # before the faults ended
    builds_observed: bool = False  # the lab ran builds (else builds-finish says it could not judge)
    extra: dict[str, Any] = field(default_factory=dict)
