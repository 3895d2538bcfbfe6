"""The platform in a lab run: platform apps deployed and released through the real control service.

The lab's twin of ``sim/platform.py``. For the apps a scenario marks ``platform: true`` the
lab's controller makes no pods (lab/controller.py); instead, as a person would, this module
drives ``leengine app`` (the real CLI, over TLS, as the lab's admin, who becomes each app's
Owner) against the lab's ``leengine-control``:

* at the start: ``app create APP --cell ... --domain GROUP/DOMAIN --non-production`` and
  ``app deploy APP --image ... --replicas N --port P`` (v1); the control service writes the
  replication controllers into the Cells' APIs, lab/replication.py runs their pods, discovery
  pushes them (tagged with their version), slb-core weighs them by the traffic shares;
* at each release of the ``platform:`` block: ``app deploy APP --image ...`` (the next version,
  a new commit id) then ``app release APP vN --steps ... --bake ... --check ...``; the
  control service's release controller (control/releases.py) does the rest from the SLB
  agents' per-version traffic records.

A call that fails is retried after ``RETRY_SECONDS`` unless etcd shows it was applied.

It observes, for the checks (lab/checks.py), without changing anything: every
``OBSERVE_EVERY`` seconds the shares record of each platform domain, the release records
(state, percent, new version) and the controllers of every Cell (when one goes away); at
``duration - FINAL_MARGIN`` the version records, every Cell's controllers and the activity
recount (``control.activity.recount``); and at the end every etcd event since the run began
(the activity check's history). The bad versions' first failed requests are the load
generator's (lab/load.py: a 500 whose body names a pod of that version).

It must not know how pods are made or faults applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.activity import Recount, recount
from control.apps import app_key, decode_app, decode_version, versions_prefix
from control.releases import RELEASES, InvalidRelease, decode_release
from foundation.logic.slb_shares import SharesError, decode_shares, shares_key
from foundation.ports import StoreError, WatchEvent
from foundation.ports.store import Store
from foundation.ports.workloads import controller_name
from lab.container_runtime import KubeClient, RuntimeError_
from sim.checks import Final, PlatformSeen
from sim.platform import image_of
from sim.spec import AppSpec, ReleaseSpec

log = logging.getLogger("leengine.lab.platform")

RETRY_SECONDS = 3.0
MAX_TRIES = 40
OBSERVE_EVERY = 0.5
FINAL_MARGIN = 5.0  # the final look reads etcd and both Cells: done before the run ends and cancels it
CLI_TIMEOUT = 60.0
LAB_REGISTRY = "registry.lab:5000"  # the name in a version's image (version N's commit is the sim's: image_of)


@dataclass
class Observed:
    shares: dict[str, list[tuple[float, dict[str, int] | None]]] = field(default_factory=dict)  # app -> timeline
    releases: dict[str, list[tuple[float, str, int, str]]] = field(default_factory=dict)  # app -> (t, state, %, new)
    deployed: dict[tuple[str, str], float] = field(default_factory=dict)  # (app, version) -> its deploy returned
    controllers_gone: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (app, Cell, rc) -> when
    controllers_seen: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (app, Cell) -> last listed
    calls_failed: int = 0
    final: Final | None = None
    history: list[WatchEvent] = field(default_factory=list)  # every etcd event of the run (activity check)
    history_complete: bool = False

    def seen(self, cells: Mapping[str, tuple[str, ...]], first_error: Mapping[tuple[str, str], float]) -> PlatformSeen:
        """What the run showed, for the platform's verdicts (sim/checks.py, the sim's own): the controllers
        gone keyed (app, version, Cell) as the sim's, from (app, Cell, controller) here."""
        gone = {(app, rc.removeprefix(f"{app}-"), cell): at for (app, cell, rc), at in self.controllers_gone.items()}
        # A bad version never seen in a Cell whose controllers were listed (cut off across its deploy, reverted
        # before a reconcile brought it there) has nothing to delete there: gone from its first error, as
        # sim/platform.py's seen() says. A Cell never listed tells nothing: not gone.
        for (app, version), first in first_error.items():
            for cell in cells.get(app, ()):
                listed = self.controllers_seen.get((app, cell))
                if listed is not None and controller_name(app, version) not in listed:
                    gone.setdefault((app, version, cell), first)
        apps = dict.fromkeys([*cells, *(app for app, _ in first_error)])
        return PlatformSeen({app: tuple(cells.get(app, ())) for app in apps}, dict(first_error), self.shares,
                            self.releases, gone, self.final)


class CallFailed(RuntimeError):
    pass


class LabPlatform:
    def __init__(self, spec: Any, store: Store, cells: dict[str, str], env: dict[str, str],
                 clock: Callable[[], float], domains: dict[str, str]) -> None:
        self.spec = spec  # sim.spec.RegionSpec (scaled)
        self.store = store
        self.kube = {cell: KubeClient(url) for cell, url in cells.items()}
        self.env = env  # leengine lab env: the control service, its CA, the admin's token
        self.clock = clock
        self.domains = domains
        self.specs: dict[str, AppSpec] = {a.name: a for a in spec.apps if getattr(a, "platform", False)}
        self.release_specs: tuple[ReleaseSpec, ...] = tuple(getattr(spec, "releases", ()))
        self.observed = Observed()
        self.start_revision = 0

    @property
    def enabled(self) -> bool:
        return bool(self.specs)

    # ------------------------------------------------------------------ the CLI
    async def _app(self, *argv: str) -> Any:
        """``leengine app ARGV --json``: its answer; ``CallFailed`` with its one-line error."""
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "leengine"), "app", *argv, "--json", env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CallFailed(f"leengine app {argv[0]}: no answer within {CLI_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            raise CallFailed(err.decode(errors="replace").strip()[-300:] or f"exit {proc.returncode}")
        with contextlib.suppress(ValueError):
            return json.loads(out)
        return None

    async def _retry(self, what: str, argv: list[str], applied: Callable[[], Any]) -> None:
        for attempt in range(MAX_TRIES):
            try:
                if attempt and await applied():
                    return
                await self._app(*argv)
                return
            except (CallFailed, StoreError, OSError) as exc:
                self.observed.calls_failed += 1
                log.warning("platform call %s failed (try %d): %s", what, attempt + 1, exc)
                await asyncio.sleep(RETRY_SECONDS)
        raise CallFailed(f"platform call {what} kept failing")

    async def _versions(self, app: str) -> dict[str, str]:
        return {(v := decode_version(kv)).name: v.state for kv in (await self.store.range(versions_prefix(app))).kvs}

    async def _next_number(self, app: str) -> int:
        kv = await self.store.get(app_key(app))
        return decode_app(kv).next_version if kv is not None else 1

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Set up, then the releases at their times; observe all along (cancelled at the run's end)."""
        if not self.enabled:
            return
        self.start_revision = (await self.store.range("/platform/", limit=1)).revision
        tasks = [asyncio.get_running_loop().create_task(self._observe(), name="platform/observe"),
                 asyncio.get_running_loop().create_task(self._final(), name="platform/final")]
        try:
            for spec in self.specs.values():
                await self._create(spec)
                await self._deploy(spec, 1)
            await asyncio.gather(*(self._release(r) for r in self.release_specs))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _create(self, spec: AppSpec) -> None:
        async def applied() -> bool:
            return await self.store.get(app_key(spec.name)) is not None

        await self._retry(f"create {spec.name}", ["create", spec.name, *[x for c in spec.cells for x in ("--cell", c)],
                                                  "--non-production", "--domain",
                                                  f"{spec.group}/{self.domains[spec.name]}"], applied)

    async def _deploy(self, spec: AppSpec, number: int) -> str:
        version = f"v{number}"

        async def applied() -> bool:
            return version in await self._versions(spec.name)

        argv = ["deploy", spec.name, "--image", image_of(spec.name, number, LAB_REGISTRY)]
        if number == 1:
            argv += ["--replicas", str(spec.replicas), "--port", str(spec.port)]
        await self._retry(f"deploy {spec.name} {version}", argv, applied)
        self.observed.deployed[(spec.name, version)] = self.clock()
        log.info("platform: %s %s deployed at t=%.1f", spec.name, version, self.clock())
        return version

    async def _release(self, release: ReleaseSpec) -> None:
        await asyncio.sleep(max(0.0, release.at - self.clock()))
        version = await self._deploy(self.specs[release.app], await self._next_number(release.app))

        async def applied() -> bool:
            kv = await self.store.get(f"{RELEASES}{release.app}")
            with contextlib.suppress(InvalidRelease):
                return kv is not None and decode_release(kv).new == version
            return False

        await self._retry(f"release {release.app} {version}", [
            "release", release.app, version, "--steps", ",".join(str(s) for s in release.steps),
            "--bake", f"{release.bake_seconds:g}", "--check", f"{release.check_seconds:g}",
            "--max-error-increase", f"{release.max_error_increase:g}",
            "--max-latency-ratio", f"{release.max_latency_ratio:g}", "--bad-checks", str(release.bad_checks),
            "--min-requests", str(release.min_requests)], applied)
        log.info("platform: release of %s %s started at t=%.1f", release.app, version, self.clock())

    # ------------------------------------------------------------------ observing
    async def _observe(self) -> None:
        while True:
            with contextlib.suppress(StoreError, OSError, ValueError):
                await self._look()
            await asyncio.sleep(OBSERVE_EVERY)

    async def _look(self) -> None:
        now = self.clock()
        for name, spec in self.specs.items():
            kv = await self.store.get(shares_key(spec.group, self.domains[name]))
            shares: dict[str, int] | None = None
            if kv is not None:
                with contextlib.suppress(SharesError):
                    shares = decode_shares(kv.value)
            timeline = self.observed.shares.setdefault(name, [])
            if not timeline or timeline[-1][1] != shares:
                timeline.append((now, shares))
        for kv in (await self.store.range(RELEASES)).kvs:
            try:
                release = decode_release(kv)
            except InvalidRelease:
                continue
            marks = self.observed.releases.setdefault(release.app, [])
            mark = (now, release.state, release.percent, release.new)
            if not marks or marks[-1][1:] != mark[1:]:
                marks.append(mark)
        for name, spec in self.specs.items():
            for cell in spec.cells:
                names = await self._controllers(name, cell)
                if names is None:
                    continue  # the Cell's API away: nothing seen
                before = self.observed.controllers_seen.get((name, cell), set())
                for gone in before - names:
                    self.observed.controllers_gone.setdefault((name, cell, gone), now)
                for back in names - before:
                    self.observed.controllers_gone.pop((name, cell, back), None)
                self.observed.controllers_seen[(name, cell)] = names

    async def _controllers(self, app: str, cell: str) -> set[str] | None:
        try:
            listing = await self.kube[cell].expect("GET", f"/api/v1/namespaces/{app}/replicationcontrollers",
                                                   ok=(200, 404))
        except RuntimeError_:
            return None
        items = listing.get("items") if isinstance(listing, dict) else None
        return {str(rc["metadata"]["name"]) for rc in items or ()}

    async def _final(self) -> None:
        await asyncio.sleep(max(0.0, self.spec.duration - FINAL_MARGIN - self.clock()))
        active: dict[str, set[str]] = {}
        deleting: dict[str, set[str]] = {}
        controllers: dict[tuple[str, str], set[str]] = {}
        counted: Recount | None = None
        try:
            for name in self.specs:
                versions = await self._versions(name)
                active[name] = {v for v, state in versions.items() if state == "active"}
                deleting[name] = {v for v, state in versions.items() if state != "active"}
            counted = await recount(self.store)
        except (StoreError, ValueError) as exc:
            log.warning("platform: the final look at etcd failed: %s", exc)
        for name, spec in self.specs.items():
            for cell in spec.cells:
                names = await self._controllers(name, cell)
                controllers[(name, cell)] = names if names is not None else {"(API unreachable)"}
        self.observed.final = Final(self.clock(), active, deleting, controllers, counted)

    async def history(self) -> None:
        """Every etcd event from the run's start to now (the activity check reads it)."""
        if not self.enabled:
            return
        end = (await self.store.range("/platform/", limit=1)).revision
        events: list[WatchEvent] = []
        try:
            async with self.store.watch("/", start_revision=self.start_revision + 1) as watch:
                async with asyncio.timeout(60):
                    while not events or events[-1].revision < end:
                        events.append(await watch.__anext__())
                # the last revision's other events come in the same answer: read until a pause
                with contextlib.suppress(TimeoutError):
                    while True:
                        event = await asyncio.wait_for(watch.__anext__(), 1.0)
                        if event.revision > end:
                            break
                        events.append(event)
        except (TimeoutError, StoreError) as exc:
            log.warning("platform: etcd's history of the run not read to its end: %s", exc)
            self.observed.history = events
            return
        self.observed.history = events
        self.observed.history_complete = True


def platform_summary(platform: LabPlatform, load: Any) -> dict[str, Any]:
    """The report's ``lab.platform``: what the platform did and what the clients saw of its apps, per second."""
    if not platform.enabled:
        return {}
    o = platform.observed
    return {"deployed": {f"{a} {v}": round(t, 3) for (a, v), t in sorted(o.deployed.items())},
            "releases": {app: [[round(t, 3), s, p, v] for t, s, p, v in marks] for app, marks in o.releases.items()},
            "shares": {app: [[round(t, 3), s] for t, s in marks] for app, marks in o.shares.items()},
            "controllers_gone": {f"{a} {c} {rc}": round(t, 3) for (a, c, rc), t in sorted(o.controllers_gone.items())},
            "first_error": {f"{a} {v}": round(t, 3) for (a, v), t in sorted(load.log.first_error.items())},
            "errors_by_version": {f"{a} {v}": n for (a, v), n in sorted(load.log.errors_by_version.items())},
            "requests_per_second": {app: {str(sec): apps[app] for sec, apps in sorted(load.log.per_second.items())
                                          if app in apps} for app in platform.specs},
            "calls_failed": o.calls_failed, "history_events": len(o.history),
            "history_complete": o.history_complete}
