"""Background churn of a running Region: rolling deploys and scale events at seeded Poisson times.

Each kind of event is a Poisson process of its ``*_per_hour`` rate over the (app, Cell)
pairs that have replicas. Every draw of an event (its gap, its pair, a scale's direction and
victim) comes from ``ChurnDraws``: one seeded stream per kind of event, in a fixed order per
event, which the lab's controller (lab/controller.py) draws from too, so a simulated and a lab
run of one scenario and seed play the same churn (the same deploys of the same pairs at the
same times), not two samples of it. At most one
deploy or scale-down works on a pair at a time (``rolling``), and a pair whose Cell is
cut off is skipped (traced). A deploy builds the app's next commit on the farm first
when the Region has one. It acts only through the Kubernetes emulation's public
methods (sim/kube.py) and must not know the traffic, the faults or the checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sim.adapters.runtime import SimRuntime, seeded_stream
from sim.farm import Farm
from sim.kube import Key, Kubernetes

T = TypeVar("T")


@dataclass(frozen=True)
class ChurnEvent:
    """One churn event's draws: the gap before it, its pair's index, a scale's direction and victim."""

    gap: float
    pick: int
    up: bool
    victim: float  # in [0, 1): which of the ready pods a scale-down removes (see ``choose``)

    def choose(self, pods: Sequence[T]) -> T:
        """The victim among ``pods`` (non-empty), from a draw made before it was known how many there are."""
        return pods[min(int(self.victim * len(pods)), len(pods) - 1)]


class ChurnDraws:
    """The seeded draws of one kind of churn (``"deploy"`` or ``"scale"``), shared by the sim and the lab.

    Each event draws four numbers in one fixed order, whatever the event turns out to do, so
    the n-th event is the same in every run of the seed, simulated or live.
    """

    def __init__(self, seed: int, kind: str) -> None:
        self.stream = seeded_stream(seed, f"churn-{kind}")

    def next(self, per_hour: float, pairs: int) -> ChurnEvent:
        r = self.stream
        return ChurnEvent(r.expovariate(per_hour / 3600.0), r.randrange(pairs), r.random() < 0.5, r.random())


Action = Callable[[Key, ChurnEvent], Awaitable[None]]


class Churn:
    def __init__(self, runtime: SimRuntime, kube: Kubernetes, farm: Farm, *, tick: float, seed: int = 0) -> None:
        self.runtime = runtime
        self.seed = seed
        self.kube = kube
        self.farm = farm
        self.tick = tick
        self.rolling: set[Key] = set()  # (app, Cell) a deploy or scale-down is working on

    async def run(self, per_hour: float, action: Action, kind: str) -> None:
        """Events at exponential gaps (a Poisson process of ``per_hour``), each on a seeded (app, Cell)."""
        rt = self.runtime
        keys = [k for k in sorted(self.kube.pods) if self.kube.apps[k[0]].replicas > 0]
        if not keys:
            return
        draws = ChurnDraws(self.seed, kind)
        while True:
            event = draws.next(per_hour, len(keys))
            await rt.sleep(event.gap)
            key = keys[event.pick]
            if key in self.rolling or self.kube.cells[key[1]].out:
                rt.trace("churn-skipped", app=key[0], cell=key[1])
                continue
            self.rolling.add(key)
            rt.spawn(self._one(action, key, event), name=f"churn/{key[0]}/{key[1]}")

    async def _one(self, action: Action, key: Key, event: ChurnEvent) -> None:
        try:
            await action(key, event)
        finally:
            self.rolling.discard(key)

    async def deploy(self, key: Key, event: ChurnEvent | None = None, *, timeout: float = 120.0) -> None:
        """A rolling replacement: one new pod at a time (surge 1); when it is ready, drain and delete an old one."""
        rt, kube = self.runtime, self.kube
        app, cell = kube.apps[key[0]], kube.cells[key[1]]
        if self.farm.enabled:
            image = await self.farm.release(app.name)
            if image is None:
                return  # nothing to roll out: the build failed or never ran
            kube.images[app.name] = image  # the controller's template: replacements run it too
        old = [p for p in kube.pods[key] if p.in_api]
        rt.trace("deploy", app=app.name, cell=cell.spec.name, pods=len(old))
        for victim in old:
            if not victim.in_api:
                continue  # died and was evicted meanwhile: the controller replaced it already
            new = kube.new_pod(app, cell)
            kube.pods[key].append(new)
            deadline = rt.now() + timeout
            while not new.ready and new.in_api and rt.now() < deadline:
                await rt.sleep(self.tick)
            if not new.ready:
                rt.trace("deploy-stalled", app=app.name, cell=cell.spec.name)
                return  # the new version does not come up: stop rolling (the controller keeps the count)
            await kube.delete_pod(victim)

    async def scale(self, key: Key, event: ChurnEvent) -> None:
        """One replica more or fewer (between half and twice the spec's count, at least one);
        a scale-down drains the removed pod before deleting it."""
        rt, kube = self.runtime, self.kube
        base = kube.apps[key[0]].replicas
        now = kube.replicas[key]
        low, high = max(1, base // 2), max(1, base * 2)
        up = event.up
        if (up and now >= high) or (not up and now <= low):
            up = not up
        kube.replicas[key] = now + (1 if up else -1)
        rt.trace("scale", app=key[0], cell=key[1], replicas=kube.replicas[key])
        if up:
            kube.mark_dirty(key)
            return
        pods = [p for p in kube.pods[key] if p.in_api]
        if len(pods) <= kube.replicas[key]:
            return
        ready = [p for p in pods if p.ready] or pods
        await kube.delete_pod(event.choose(ready))
