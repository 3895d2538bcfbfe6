"""The sim Builder adapter and the Region's registry: build steps as durations, with the cache warm or cold.

``SimBuilder`` (one per build host) sleeps each step's duration on the virtual clock:
clone, compile (``compile_cold`` the first time a repo is built on this host,
``compile_warm`` once its dependency cache is there), image, and a push whose time
grows with the image size. Each duration varies by ±``jitter`` (drawn from the run's
seeded random source). The cache lives on the host's disk: it survives a crash of
the build agent. ``fail_step`` makes the next build fail at that step.

``SimRegistry`` holds the pushed images; a node pulls an image once (``pull_seconds``)
and keeps it. Defaults are plausible orders of magnitude for a Java/Go service on
LeEngine-era hardware, not measurements: the real adapter (foundation/adapters/buildah_builder.py)
runs the same conformance suite (tests/conformance/test_builder.py).
It must not know the agent, tasks or the Store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from foundation.ports.builder import BuildFailed, BuildOutcome, BuildRequest, StepTiming
from foundation.ports.runtime import Runtime


@dataclass
class SimRegistry:
    name: str = "registry.region"
    image_mb: float = 200.0
    bandwidth_mb_s: float = 100.0  # node <-> registry
    pull_base: float = 1.0
    images: dict[str, float] = field(default_factory=dict)  # reference -> size in MB

    def reference(self, app: str, commit: str) -> str:
        return f"{self.name}/{app}:{commit}"

    def push(self, reference: str, size_mb: float) -> None:
        self.images[reference] = size_mb

    def pull_seconds(self, reference: str) -> float:
        return self.pull_base + self.images.get(reference, self.image_mb) / self.bandwidth_mb_s


@dataclass
class SimBuilder:
    runtime: Runtime
    name: str
    registry: SimRegistry
    clone_seconds: float = 5.0
    compile_cold: float = 180.0
    compile_warm: float = 40.0
    image_seconds: float = 20.0
    jitter: float = 0.1
    warm: set[str] = field(default_factory=set)  # repos whose dependency cache is on this host
    fail_step: str | None = None
    builds: int = 0

    @property
    def host(self) -> str:
        return self.name

    async def _step(self, step: str, seconds: float, log: Callable[[str], None]) -> StepTiming:
        if self.fail_step == step:
            self.fail_step = None
            raise BuildFailed(step, f"exit status 1 (injected on {self.name})")
        seconds *= 1.0 + self.runtime.random.uniform(-self.jitter, self.jitter)
        await self.runtime.sleep(seconds)
        log(f"{step}: {seconds:.1f}s")
        return StepTiming(step, seconds)

    async def build(self, request: BuildRequest, log: Callable[[str], None]) -> BuildOutcome:
        self.builds += 1
        hit = request.repo in self.warm
        reference = self.registry.reference(request.app, request.commit)
        size = self.registry.image_mb
        steps = [await self._step("clone", self.clone_seconds, log),
                 await self._step("compile", self.compile_warm if hit else self.compile_cold, log)]
        self.warm.add(request.repo)  # the compile filled the cache, whatever happens next
        steps.append(await self._step("image", self.image_seconds, log))
        steps.append(await self._step("push", size / self.registry.bandwidth_mb_s, log))
        self.registry.push(reference, size)
        return BuildOutcome(reference, tuple(steps), hit)
