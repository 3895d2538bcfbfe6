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
* ``HistogramSampler``: per-observation samples of a histogram the agents export, for the
  distributions ``leengine compare`` holds against the sim's: it scrapes the SLB agents'
  ``/metrics`` every ``every`` seconds (0.25 s) and turns each series' ``_count``/``_sum``
  increase into samples: one increase of 1 is that observation exactly (the SLB agent
  reloads at most once a second, ``min_reload_interval``); an increase of k > 1 between two
  scrapes gives k samples of their mean (counted in ``averaged``). Why not the buckets:
  they only bound a value (0.25/0.5/1 s apart up there); why not the logs: Nginx's error
  log has whole seconds and the agent does not log its durations. ``slb_reload_seconds``
  is exactly the sim's ``reload_seconds`` (test + reload + confirmation of one batch) and
  ``slb_propagation_seconds`` its ``propagation_seconds`` (the agent's share: the record
  change received to that revision in force), so the lab's samples measure the same spans
  as the sim's. A series that first shows after a source's first scrape counts from zero (a
  labelled histogram is exposed from its first observation on: the boot's first reload may
  come after the first scrape). What was counted before the first scrape (``lab up``) is not a sample, except
  for the kinds given ``from_zero`` when the lab was brought up for this run (``lab run``'s first
  run on a lab: the boot's reloads are the run's, as the sim's Region boots in its run).
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
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


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


# ------------------------------------------------------------------ histograms' observations


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (source, sorted labels)


def histogram_totals(text: str, name: str) -> dict[tuple[tuple[str, str], ...], tuple[float, float]]:
    """``labels -> (count, sum)`` of histogram ``name`` in a Prometheus text exposition."""
    found: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = SAMPLE_LINE.match(line)
        if m is None or m.group(1) not in (f"{name}_count", f"{name}_sum"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        totals = found.setdefault(labels, [0.0, 0.0])
        totals[0 if m.group(1).endswith("_count") else 1] = value
    return {labels: (c, s) for labels, (c, s) in found.items()}


@dataclass
class HistogramSamples:
    """Samples of one histogram drawn from scrapes' increases (see the module's docstring)."""

    name: str
    samples: list[float] = field(default_factory=list)
    exact: int = 0
    averaged: int = 0
    last: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    # Sources whose first scrape counts from zero: the lab was brought up for this run, so what the
    # agents observed since they started (the boot's reloads) is the run's, as the sim's boot is.
    from_zero: set[str] = field(default_factory=set)
    # Sources whose baseline scrape was taken: a series they show for the first time after it was born
    # after it (a labelled histogram is exposed from its first observation on), so it counts from zero.
    baselined: set[str] = field(default_factory=set)

    def update(self, source: str, text: str) -> None:
        zero = source in self.from_zero or source in self.baselined
        self.from_zero.discard(source)
        self.baselined.add(source)
        for labels, (count, total) in histogram_totals(text, self.name).items():
            key = (source, labels)
            before = self.last.get(key, (0.0, 0.0) if zero else None)
            self.last[key] = (count, total)
            if before is None:
                continue  # the baseline: what was observed before the run is not a sample
            grew, added = round(count - before[0]), total - before[1]
            if grew <= 0:
                continue  # nothing new, or the agent restarted (its counters began again): a new baseline
            if grew == 1:
                self.exact += 1
            else:
                self.averaged += grew
            self.samples.extend([max(0.0, added / grew)] * grew)

    def forget(self, source: str) -> None:
        """``source`` did not answer: its next answer is a new baseline (it may have restarted, or not)."""
        self.baselined.discard(source)
        for key in [k for k in self.last if k[0] == source]:
            del self.last[key]


class HistogramSampler:
    """Scrapes ``urls`` (process -> its /metrics) every ``every`` seconds into one ``HistogramSamples`` per name."""

    def __init__(self, urls: dict[str, str], names: dict[str, str], *, every: float = 0.25,
                 timeout: float = 2.0, from_zero: Iterable[str] = ()) -> None:
        """``from_zero``: sample kinds whose counts since the agents started are samples (``HistogramSamples``)."""
        self.urls = urls
        zero = set(from_zero)
        self.histograms = {key: HistogramSamples(name, from_zero=set(urls) if key in zero else set())
                           for key, name in names.items()}  # sample kind -> histogram
        self.every = every
        self.timeout = timeout
        self.failed_scrapes = 0

    def _scrape(self, url: str) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:  # the lab plan's http:// URLs
                return str(answer.read(16 * 1024 * 1024).decode("utf-8", errors="replace"))
        except (OSError, ValueError):
            return None

    async def once(self) -> None:
        texts = await asyncio.gather(*(asyncio.to_thread(self._scrape, url) for url in self.urls.values()))
        for source, text in zip(self.urls, texts, strict=True):
            if text is None:
                self.failed_scrapes += 1  # a host down (nginx-host-loss): its next answer starts a new baseline
                for h in self.histograms.values():
                    h.forget(source)
                continue
            for h in self.histograms.values():
                h.update(source, text)

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self.every)

    def samples(self, kind: str) -> list[float]:
        return list(self.histograms[kind].samples)

    def summary(self) -> dict[str, Any]:
        return {kind: {"histogram": h.name, "exact": h.exact, "averaged": h.averaged}
                for kind, h in self.histograms.items()} | {"failed_scrapes": self.failed_scrapes}


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
    # the platform (lab/platform.py): what it observed, the bad versions' first failed requests (lab/load.py),
    # the platform apps' Cells, the gray releases' apps and the Cell outages' windows
    platform: Any = None  # lab.platform.Observed, or None without platform apps
    first_error: dict[tuple[str, str], float] = field(default_factory=dict)
    platform_cells: dict[str, tuple[str, ...]] = field(default_factory=dict)
    release_apps: list[str] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
