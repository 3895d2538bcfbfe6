"""The platform in a simulated Region: apps deployed through ``control.apps``, releases run by ``control.releases``.

For the apps a scenario marks ``platform: true`` the world does not make pods itself: this
module creates each app (in its Cells, with its group and domain), deploys v1 through
``Apps`` (one ``SimWorkloads`` per Cell, whose controllers ``sim/kube.py`` runs as pods per
version), reconciles every app on a period as the control service does, runs the
``Releases`` controller loop, and at each release of the ``platform:`` block deploys the
app's next version and starts its gray release. Traffic shares are written through
slb-core (``SlbShares``: the ``TrafficShares`` the entry point wires, acting as the
platform principal), so discovery's upstreams are weighed by them on every Nginx host.

It also observes, for the checks (sim/checks.py) and the report, without changing
anything: the shares of each platform domain over time and the releases' states over
time (two watches, like the auditor's: no fault selects their client), and at the end
of the run (``FINAL_MARGIN`` before it) the version records, every Cell's controllers
and the activity recount (``control.activity.recount``).

The calls are the control service's own code, as the ``sim-owner`` user (the apps'
Owner); a call that fails (etcd away, a Cell cut off) is retried as a client would,
with the same request id. Everything is deterministic (no draw, ordered collections).
It must not import real adapters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control.activity import Recount, recount
from control.apps import Apps, Draft, decode_version, versions_prefix
from control.auth import Principal
from control.platform_shares import SlbShares
from control.releases import RELEASES, InvalidRelease, Releases, decode_release
from control.slb_core import SlbCore
from foundation.logic.slb_shares import SharesError, decode_shares, shares_key, shares_prefix
from foundation.ports import StoreError
from foundation.ports import control as port
from foundation.ports.workloads import controller_name
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore, SimStoreClient
from sim.adapters.workloads import SimWorkloads
from sim.checks import Final, PlatformSeen
from sim.kube import Kubernetes
from sim.spec import AppSpec, ReleaseSpec
from sim.topology import Cell
from sim.traffic import Traffic

OWNER = Principal("sim-owner", "user")  # who creates, deploys and releases the platform apps
RECONCILE_SECONDS = 30.0  # the control service's reconcile period (leengine-control --reconcile-seconds)
API_LATENCY = 0.005  # seconds a call to a Cell's API server takes
RETRY_SECONDS = 5.0  # a failed call is tried again after this (a client's retry)
MAX_TRIES = 60
FINAL_MARGIN = 1.0  # the final look at the Region, this long before the run ends


def image_of(app: str, number: int, registry: str = "registry.sim:5000") -> str:
    """The image of version ``number`` of ``app``: a registry reference tagged with a commit id (40 hex), the
    same commit in the sim and the lab (which passes its own registry's name)."""
    return f"{registry}/{app}:{hashlib.sha1(f'{app}-{number}'.encode()).hexdigest()}"


@dataclass
class Observed:
    shares: dict[str, list[tuple[float, dict[str, int] | None]]] = field(default_factory=dict)  # app -> timeline
    releases: dict[str, list[tuple[float, str, int, str]]] = field(default_factory=dict)  # app -> (t, state, %, new)
    deployed: dict[tuple[str, str], float] = field(default_factory=dict)  # (app, version) -> when its deploy returned
    calls_failed: int = 0  # platform calls that failed and were retried
    final: Final | None = None


class Platform:
    def __init__(self, runtime: SimRuntime, store: MemoryStore, client: Callable[[str], SimStoreClient],
                 cells: dict[str, Cell], kube: Kubernetes, traffic: Traffic, apps: dict[str, AppSpec],
                 domains: dict[str, str], releases: tuple[ReleaseSpec, ...], duration: float) -> None:
        self.runtime = runtime
        self.store = store
        self.kube = kube
        self.traffic = traffic
        self.specs = {name: spec for name, spec in apps.items() if spec.platform}
        self.domains = domains
        self.release_specs = releases
        self.duration = duration
        self.workloads: dict[str, SimWorkloads] = {}
        for name, cell in cells.items():
            self.workloads[name] = SimWorkloads(cell.cluster, runtime=runtime, latency=API_LATENCY,
                                                on_change=self._on_change(name))
        kube.on_ready = self._on_ready
        self.shares = SlbShares(SlbCore(client("platform-slb"), runtime))
        etcd = client("platform")  # the control service's etcd client (its faults: role control)
        self.apps = Apps(etcd, runtime, self.workloads, shares=self.shares)
        self.releases = Releases(etcd, runtime, self.apps, self.shares, self.workloads)
        self.observed = Observed()
        self._requests = 0

    @property
    def enabled(self) -> bool:
        return bool(self.specs)

    def _on_change(self, cell: str) -> Callable[[str, Mapping[str, tuple[int, str]]], None]:
        def changed(app: str, versions: Mapping[str, tuple[int, str]]) -> None:
            self.kube.set_versions((app, cell), versions)
        return changed

    def _on_ready(self, cell: str, app: str, version: str, ready: int) -> None:
        self.workloads[cell].set_ready(app, controller_name(app, version), ready)

    def _request_id(self, what: str) -> str:
        self._requests += 1
        return f"sim-{what}-{self._requests}"[:64]

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Spawn the platform's tasks: set-up, the reconciler, the release loop, the releases, the observers."""
        if not self.enabled:
            return
        rt = self.runtime
        rt.spawn(self._setup(), name="platform/setup")
        rt.spawn(self._reconciler(), name="platform/reconciler")
        rt.spawn(self.releases.run(), name="platform/releases")
        for i, release in enumerate(self.release_specs):
            rt.spawn(self._release(release), name=f"platform/release-{i}-{release.app}")
        observer = self.store.client("platform-observer", latency=0.0)
        for group in sorted({spec.group for spec in self.specs.values()}):
            rt.spawn(self._watch_shares(observer, group), name=f"platform/observe-shares/{group}")
        rt.spawn(self._watch_releases(observer), name="platform/observe-releases")
        rt.spawn(self._final(observer), name="platform/final")

    async def _retry(self, what: str, call: Callable[[], Awaitable[object]],
                     applied: Callable[[], Awaitable[bool]]) -> None:
        """``call()`` until it succeeds, as a client retries: after a failure that may have been applied
        (etcd away, an answer lost, a lost race), ``applied()`` says whether it was, and then it is done."""
        for attempt in range(MAX_TRIES):
            try:
                if attempt and await applied():
                    return
                await call()
                return
            except (StoreError, port.Unavailable, port.Conflict) as exc:
                self.observed.calls_failed += 1
                self.runtime.trace("platform-call-failed", what=what, error=type(exc).__name__)
                await self.runtime.sleep(RETRY_SECONDS)
        raise RuntimeError(f"platform call {what} kept failing")

    async def _versions(self, app: str) -> dict[str, str]:
        """The app's version records: name -> state ({} when the app does not exist yet)."""
        try:
            view = await self.apps.show(OWNER, app)
        except port.NotFound:
            return {}
        return {v.version.name: v.version.state for v in view.versions}

    async def _exists(self, app: str) -> bool:
        try:
            await self.apps.show(OWNER, app)
        except port.NotFound:
            return False
        return True

    async def _setup(self) -> None:
        for spec in self.specs.values():
            await self._create(spec)
            await self._deploy(spec, 1)

    async def _create(self, spec: AppSpec) -> None:
        request_id = self._request_id(f"create-{spec.name}")
        await self._retry(f"create {spec.name}", lambda: self.apps.create_app(
            OWNER, spec.name, list(spec.cells), production=False, group=spec.group, domain=self.domains[spec.name],
            request_id=request_id), lambda: self._exists(spec.name))

    async def _deploy(self, spec: AppSpec, number: int) -> str:
        """Deploy version ``number`` of the app (replicas per Cell as the spec says); its name."""
        version = f"v{number}"
        request_id = self._request_id(f"deploy-{spec.name}")
        draft = Draft(image=image_of(spec.name, number), replicas=spec.replicas)

        async def applied() -> bool:
            return version in await self._versions(spec.name)

        await self._retry(f"deploy {spec.name}", lambda: self.apps.deploy(OWNER, spec.name, draft,
                                                                          request_id=request_id), applied)
        self.observed.deployed[(spec.name, version)] = self.runtime.now()
        self.traffic.deployed(spec.name, version)
        self.runtime.trace("platform-deployed", app=spec.name, version=version)
        return version

    async def _reconciler(self) -> None:
        while True:
            await self.runtime.sleep(RECONCILE_SECONDS)
            try:
                await self.apps.reconcile_all()
            except (StoreError, port.ControlError) as exc:
                self.runtime.trace("platform-reconcile-failed", error=type(exc).__name__)

    async def _release(self, release: ReleaseSpec) -> None:
        await self.runtime.sleep(max(0.0, release.at - self.runtime.now()))
        version = await self._deploy(self.specs[release.app], await self._next_number(release.app))
        request_id = self._request_id(f"release-{release.app}")

        async def applied() -> bool:
            try:
                return (await self.releases.get(OWNER, release.app)).release.new == version
            except port.NotFound:
                return False

        await self._retry(f"release {release.app}", lambda: self.releases.start(
            OWNER, release.app, version, steps=release.steps, bake_seconds=release.bake_seconds,
            check_seconds=release.check_seconds, max_error_increase=release.max_error_increase,
            max_latency_ratio=release.max_latency_ratio, bad_checks=release.bad_checks,
            min_requests=release.min_requests, request_id=request_id), applied)

    async def _next_number(self, app: str) -> int:
        """The number the app's next version gets (its record's ``next_version``)."""
        for _ in range(MAX_TRIES):
            try:
                return (await self.apps.show(OWNER, app)).app.next_version
            except (StoreError, port.Unavailable) as exc:
                self.observed.calls_failed += 1
                self.runtime.trace("platform-call-failed", what=f"show {app}", error=type(exc).__name__)
                await self.runtime.sleep(RETRY_SECONDS)
        raise RuntimeError(f"app {app} kept failing to read")

    # ------------------------------------------------------------------ what it shows
    def seen(self) -> PlatformSeen:
        """What the run showed, for the platform's checks (sim/checks.py)."""
        gone = {}
        for name, spec in self.specs.items():
            for cell in spec.cells:
                workloads = self.workloads[cell]
                for (ns, controller), at in workloads.deleted_at.items():
                    if ns == name and (ns, controller) not in workloads.controllers:
                        gone[(name, controller.removeprefix(f"{name}-"), cell)] = at
        # A bad version that never reached a Cell (cut off while it was deployed, and reverted before the next
        # reconcile brought it there: sweep-release-cell-cut) has nothing to delete there: gone from its first
        # error, not "still there" (a false release-reverted-within failure found by that sweep).
        for (name, version), first in self.traffic.first_error.items():
            if name not in self.specs:
                continue
            for cell in self.specs[name].cells:
                key = (name, controller_name(name, version))
                workloads = self.workloads[cell]
                if key not in workloads.controllers and key not in workloads.deleted_at:
                    gone.setdefault((name, version, cell), first)
        return PlatformSeen({name: spec.cells for name, spec in self.specs.items()}, dict(self.traffic.first_error),
                            self.observed.shares, self.observed.releases, gone, self.observed.final)

    def summary(self) -> dict[str, Any]:
        """The report's ``platform`` section: requests per version, releases and shares over time, retries."""
        o, t = self.observed, self.traffic
        return {
            "versions": {f"{app} {v}": {"requests": n, "failed": failed, "deployed_at": o.deployed.get((app, v))}
                         for (app, v), (n, failed) in sorted(t.versions.items())},
            "requests_failed_by_versions": sum(failed for _, failed in t.versions.values()),
            "first_error": {f"{app} {v}": at for (app, v), at in sorted(t.first_error.items())},
            "releases": {app: [{"at": round(at, 3), "state": state, "percent": percent, "version": new}
                               for at, state, percent, new in timeline]
                         for app, timeline in sorted(o.releases.items())},
            "shares": {app: [{"at": round(at, 3), "shares": shares} for at, shares in timeline]
                       for app, timeline in sorted(o.shares.items())},
            "calls_retried": o.calls_failed,
        }

    # ------------------------------------------------------------------ observers
    async def _watch_shares(self, client: SimStoreClient, group: str) -> None:
        apps_of = {shares_key(spec.group, self.domains[name]): name for name, spec in self.specs.items()
                   if spec.group == group}
        after = 0
        while True:
            try:
                async with client.watch(shares_prefix(group), start_revision=after + 1) as watch:
                    async for event in watch:
                        after = event.revision
                        app = apps_of.get(event.kv.key)
                        if app is None:
                            continue
                        shares: dict[str, int] | None = None
                        if event.type == "put":
                            try:
                                shares = decode_shares(event.kv.value)
                            except SharesError:
                                shares = None
                        self.observed.shares.setdefault(app, []).append((self.runtime.now(), shares))
            except StoreError:
                pass
            await self.runtime.sleep(1.0)

    async def _watch_releases(self, client: SimStoreClient) -> None:
        after = 0
        while True:
            try:
                async with client.watch(RELEASES, start_revision=after + 1) as watch:
                    async for event in watch:
                        after = event.revision
                        if event.type != "put":
                            continue
                        try:
                            release = decode_release(event.kv)
                        except InvalidRelease:
                            continue
                        timeline = self.observed.releases.setdefault(release.app, [])
                        mark = (self.runtime.now(), release.state, release.percent, release.new)
                        if not timeline or timeline[-1][1:] != mark[1:]:
                            timeline.append(mark)
            except StoreError:
                pass
            await self.runtime.sleep(1.0)

    async def _final(self, client: SimStoreClient) -> None:
        """The version records, every Cell's controllers and the activity recount, just before the end."""
        await self.runtime.sleep(max(0.0, self.duration - FINAL_MARGIN - self.runtime.now()))
        active: dict[str, set[str]] = {}
        deleting: dict[str, set[str]] = {}
        controllers: dict[tuple[str, str], set[str]] = {}
        counted: Recount | None = None
        try:
            for name in self.specs:
                active[name], deleting[name] = set(), set()
                for kv in (await client.range(versions_prefix(name))).kvs:
                    version = decode_version(kv)
                    (active if version.state == "active" else deleting)[name].add(version.name)
            counted = await recount(client)
        except StoreError:
            pass  # etcd away at the end: the checks say so
        for name, spec in self.specs.items():
            for cell in spec.cells:
                controllers[(name, cell)] = {n for (ns, n) in self.workloads[cell].controllers if ns == name}
        self.observed.final = Final(self.runtime.now(), active, deleting, controllers, counted)
