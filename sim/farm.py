"""The simulated Region's build farm: build hosts running the real build agent, the registry, the scheduler.

Each build host runs ``node.build_agent.BuildAgent`` on a ``SimBuilder`` (durations with
the cache warm or cold) with its own etcd client; the control plane's
``control.builds.BuildScheduler`` places tasks and moves them off dead hosts; the
``SimRegistry`` holds the pushed images, which nodes pull once; it checks each push's build credentials
with ``control.build_credentials.build_caller`` over the Region's Store (a zombie's push is refused). A deploy asks
``release(app)`` for the image of the app's next commit (release ``n`` of an app is the
full commit id ``release_commit(app, n)``: the scheduler takes full ids only). An observer
watches ``/build/results/`` so that the ``builds-finish`` check knows when each build
finished, whoever waited for it.

It must not know Kubernetes, Nginx or the Region's requests: the world (``sim/world.py``)
decides when to deploy and what a crash of a build host means for its faults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.build_credentials import build_caller
from control.builds import BuildError, BuildScheduler
from foundation.logic.build_task import RESULTS, Result, TaskError
from foundation.ports import StoreError
from foundation.ports.metrics import NO_METRICS, Metrics
from node.build_agent import BuildAgent, BuildAgentConfig
from sim.adapters.builder import SimBuilder, SimRegistry
from sim.adapters.runtime import SimRuntime, SimTask
from sim.adapters.store import MemoryStore, SimStoreClient
from sim.metrics import percentile
from sim.spec import BUILD_SCHEDULER, BuilderCosts, build_host_name


@dataclass(eq=False)
class BuildHost:
    name: str
    builder: SimBuilder
    client: SimStoreClient
    agent: BuildAgent | None = None
    task: SimTask | None = None
    alive: bool = True
    dropped: int = 0  # late results dropped by this host's previous agents (before crashes)


@dataclass
class BuildSeen:
    submitted: float
    finished: float | None = None
    state: str = ""  # done | failed, once finished
    cache_hit: bool = False


def release_commit(app: str, n: int) -> str:
    """The commit id of the app's ``n``-th release: a stable 40-hex name, as git would give one."""
    return hashlib.sha1(f"{app} r{n}".encode()).hexdigest()


class Farm:
    def __init__(self, runtime: SimRuntime, store: MemoryStore, hosts: int,
                 client: Callable[[str], SimStoreClient], *, tick: float = 1.0,
                 metrics: Metrics = NO_METRICS, costs: BuilderCosts | None = None) -> None:
        self.runtime = runtime
        self.agent_metrics = metrics  # the Metrics port of the scheduler and every build agent
        self.store = store
        self.tick = tick
        costs = costs or BuilderCosts()
        # The registry's token endpoint reads etcd as the control service does (build_caller: the fence); its
        # client has no latency (the push's own time covers the token request), so checking adds no event.
        registry_etcd = store.client("registry-auth", latency=0.0)
        self.registry = SimRegistry(image_mb=costs.image_mb, bandwidth_mb_s=costs.registry_mb_per_second,
                                    pull_base=costs.pull_base_seconds,
                                    authenticate=lambda user, password: build_caller(registry_etcd, user, password),
                                    revision=lambda: store.revision)
        self.hosts = {name: BuildHost(name, SimBuilder(runtime, name, self.registry, clone_seconds=costs.clone_seconds,
                                                       compile_cold=costs.compile_cold,
                                                       compile_warm=costs.compile_warm,
                                                       image_seconds=costs.image_seconds, jitter=costs.jitter),
                                      client(name))
                      for name in (build_host_name(i) for i in range(1, hosts + 1))}
        self.scheduler = BuildScheduler(client(BUILD_SCHEDULER), runtime, metrics=metrics) if hosts else None
        self.builds: dict[str, BuildSeen] = {}  # task -> what the world saw of it
        self.unsubmitted = 0  # deploys that found no build agent (or no etcd)
        self._releases: dict[str, int] = {}  # app -> deploys so far

    @property
    def enabled(self) -> bool:
        return self.scheduler is not None

    def start(self) -> None:
        if self.scheduler is None:
            return
        for host in self.hosts.values():
            self._start_agent(host)
        self.runtime.spawn(self.scheduler.reassign_forever(), name="build-scheduler")
        self.runtime.spawn(self._observe(), name="region/build-observer")

    def _start_agent(self, host: BuildHost) -> None:
        host.agent = BuildAgent(host.client, host.builder, self.runtime, BuildAgentConfig(host.name),
                                metrics=self.agent_metrics)
        host.task = self.runtime.spawn(host.agent.run(), name=f"build-agent/{host.name}")

    async def _observe(self) -> None:
        """An observer (no fault selects it): when each build finished, whoever waited for it or not."""
        client = self.store.client("build-observer", latency=0.0)
        after = 0
        while True:
            try:
                async with client.watch(RESULTS, start_revision=after + 1) as watch:
                    async for event in watch:
                        after = event.revision
                        if event.type != "put":
                            continue
                        try:
                            result = Result.from_bytes(event.kv.value)
                        except TaskError:
                            continue  # not the real agents' writing: nothing the world can count
                        seen = self.builds.setdefault(result.task, BuildSeen(result.submitted_at))
                        seen.finished, seen.state, seen.cache_hit = self.runtime.now(), result.state, \
                            result.cache_hit
            except StoreError:
                pass
            await self.runtime.sleep(self.tick)

    async def release(self, app: str, *, timeout: float = 3600.0) -> str | None:
        """Build the app's next commit and wait for it: the image to roll out, or None."""
        rt = self.runtime
        assert self.scheduler is not None
        self._releases[app] = self._releases.get(app, 0) + 1
        commit = release_commit(app, self._releases[app])
        try:
            task = await self.scheduler.submit(app, commit)
            self.builds.setdefault(task, BuildSeen(rt.now()))
            result = await self.scheduler.wait(task, timeout=timeout)
        except (BuildError, StoreError) as exc:  # no build agent, no etcd, a corrupt result
            self.unsubmitted += 1
            rt.trace("deploy-build-failed", app=app, commit=commit, error=type(exc).__name__)
            return None
        if result is None or result.state != "done":
            rt.trace("deploy-build-failed", app=app, commit=commit, error=result.error if result else "timeout")
            return None
        return result.image

    def crash(self, names: list[str]) -> list[BuildHost]:
        """The hosts die mid-build: no result, no keepalive; their leases expire and their tasks move."""
        crashed = [self.hosts[n] for n in names if self.hosts[n].alive]
        for host in crashed:
            host.alive = False
            if host.task is not None:
                host.task.cancel()
            if host.agent is not None:
                host.dropped += host.agent.stats.dropped
                host.agent = None
        return crashed

    def come_back(self, hosts: list[BuildHost]) -> None:
        for host in hosts:
            host.alive = True  # its disk kept the dependency caches
            self._start_agent(host)

    def unfinished(self, submitted_by: float) -> list[str]:
        return sorted(t for t, b in self.builds.items() if b.submitted <= submitted_by and b.finished is None)

    def submitted(self, by: float) -> int:
        return sum(1 for b in self.builds.values() if b.submitted <= by)

    def metrics(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {}
        builds = self.builds.values()
        took = sorted(b.finished - b.submitted for b in builds if b.state == "done" and b.finished is not None)
        return {"builds_submitted": len(self.builds), "builds_done": len(took),
                "builds_failed": sum(1 for b in builds if b.state == "failed"),
                "builds_unsubmitted": self.unsubmitted,
                "builds_cache_hits": sum(1 for b in builds if b.state == "done" and b.cache_hit),
                "build_p50": percentile(took, 0.5, 3), "build_p99": percentile(took, 0.99, 3),
                "builds_moved": self.scheduler.stats.moved,
                "builds_dropped": sum(h.dropped + (h.agent.stats.dropped if h.agent else 0)
                                      for h in self.hosts.values()),
                "registry_pushes_refused": self.registry.pushes_refused,  # zombies fenced off (sim/adapters/builder.py)
                "registry_pulls_refused": self.registry.pulls_refused}
