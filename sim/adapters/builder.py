"""The sim Builder adapter and the Region's registry: build steps as durations, and the registry's access rules.

``SimBuilder`` (one per build host) sleeps each step's duration on the virtual clock:
clone, compile (``compile_cold`` the first time a repo is built on this host,
``compile_warm`` once its dependency cache is there), image, and a push whose time
grows with the image size. Each duration varies by ±``jitter`` (drawn from the run's
seeded random source). The cache lives on the host's disk: it survives a crash of
the build agent. ``fail_step`` makes the next build fail at that step.

``SimRegistry`` holds the pushed images (repository ``{app}/{app}``, tag the full commit id:
``foundation.logic.build_task.image_repository``); a node pulls an image once
(``pull_seconds``) and keeps it. It decides every push and pull with the **same** access
policy as the real token endpoint, ``control.registry_policy.granted``:

* a push carries the build attempt's credentials (``BuildRequest.push_user`` /
  ``push_secret``: ``build$TASK`` and the task record's push secret); ``authenticate``
  turns them into a ``Caller`` -- the farm wires ``control.build_credentials.build_caller``
  over the sim Store, the fence itself -- and the push is accepted only if ``granted``
  gives ``push`` on the repository. The check happens as the push begins (a client asks
  for its token before it uploads): a zombie agent whose task moved gets no token and
  its push fails at once (``BuildFailed("push", ...)``), counted in ``pushes_refused``.
  Every push, accepted or refused, is recorded (``PushSeen``: when, at which Store
  revision, the SHA-256 of the secret offered -- never the secret) for the
  ``one-build-per-commit`` check. Without ``authenticate`` (unit tests of the farm) the
  registry has no auth and accepts every push, as a registry without ``auth:`` does.
* a node pulls as a robot of the image's group with ``pull`` only (what a Cell's nodes
  are given), or anonymously from a public group (``visibility``; no entry: private, as
  ``control.image_groups`` says of a group without a record). A pull the policy refuses is
  counted in ``pulls_refused`` (and still charged: the kubelet's retries are not modelled).
  References of another registry (the platform's images) are not this registry's to judge.

Defaults are plausible orders of magnitude for a Java/Go service on LeEngine-era hardware,
not measurements: the real adapter (foundation/adapters/buildah_builder.py) runs the same
conformance suite (tests/conformance/test_builder.py).
It must not know the agent, tasks or the Store (credentials are checked by ``authenticate``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from control.registry_policy import Caller, Scope, granted
from foundation.logic.build_task import image_repository
from foundation.ports import StoreError
from foundation.ports.builder import BuildFailed, BuildOutcome, BuildRequest, StepTiming
from foundation.ports.runtime import Runtime

Authenticate = Callable[[str, str], Awaitable[Caller | None]]  # HTTP Basic (user, password) -> who, or None
ANONYMOUS = Caller("anonymous")


class PushRefused(Exception):
    """The registry refused a push: no token for these credentials, or no push right on the repository."""


@dataclass(frozen=True)
class PushSeen:
    """One push as the registry saw it (for the checks; never the secret itself)."""

    at: float
    revision: int  # the Store's revision when the credentials were checked (0: no Store behind the registry)
    repository: str
    tag: str
    user: str
    secret_sha256: str  # SHA-256 (hex) of the password offered ("" without one)
    accepted: bool
    why: str = ""  # why it was refused


@dataclass
class SimRegistry:
    name: str = "registry.region"
    image_mb: float = 200.0
    bandwidth_mb_s: float = 100.0  # node <-> registry
    pull_base: float = 1.0
    images: dict[str, float] = field(default_factory=dict)  # reference -> size in MB
    authenticate: Authenticate | None = None  # None: a registry without token auth (accepts every push)
    revision: Callable[[], int] = lambda: 0  # the Store's revision now, recorded with each push
    visibility: dict[str, str] = field(default_factory=dict)  # image group -> "public" | "private" (none: private)
    pushes: list[PushSeen] = field(default_factory=list)
    pushes_refused: int = 0
    pulls_refused: int = 0

    def reference(self, app: str, commit: str) -> str:
        return f"{self.name}/{image_repository(app)}:{commit}"

    def _visibility(self, repository: str) -> str:
        return self.visibility.get(repository.partition("/")[0], "private")

    async def authorize_push(self, repository: str, tag: str, user: str, password: str, now: float) -> None:
        """The token request before an upload: raises ``PushRefused`` unless the credentials may push here."""
        if self.authenticate is None:
            return
        revision = self.revision()
        try:
            caller = await self.authenticate(user, password) if user else ANONYMOUS
        except StoreError as exc:  # the token endpoint cannot read etcd: a 5xx, no token
            self.pushes_refused += 1
            self.pushes.append(PushSeen(now, revision, repository, tag, user, "", False, "token endpoint: etcd away"))
            raise PushRefused(f"{repository}:{tag}: the token endpoint failed ({type(exc).__name__})") from None
        actions = () if caller is None else granted(caller, Scope("repository", repository, ("pull", "push")),
                                                    visibility=self._visibility(repository), role=None)
        secret = hashlib.sha256(password.encode()).hexdigest() if password else ""
        if "push" not in actions:
            why = "no token for these credentials (401)" if caller is None else "push not granted (denied)"
            self.pushes_refused += 1
            self.pushes.append(PushSeen(now, revision, repository, tag, user, secret, False, why))
            raise PushRefused(f"{repository}:{tag}: {why}")
        self.pushes.append(PushSeen(now, revision, repository, tag, user, secret, True))

    def store_image(self, reference: str, size_mb: float) -> None:
        self.images[reference] = size_mb

    def push(self, reference: str, size_mb: float) -> None:
        """An image put there without a build (tests): no access check."""
        self.store_image(reference, size_mb)

    def pull_allowed(self, reference: str) -> bool:
        """Whether a node may pull ``reference`` of this registry: a robot of the image's group (pull only), or a
        public group; other registries' references are not judged here (True)."""
        if not reference.startswith(f"{self.name}/"):
            return True
        repository = reference.removeprefix(f"{self.name}/").rpartition(":")[0]
        group = repository.partition("/")[0]
        robot = Caller("robot", f"nodes-{group}", robot_scope=("image_group", group), robot_actions=("pull",))
        try:
            scope = Scope("repository", repository, ("pull",))
        except ValueError:  # not an image group/name: nothing a robot of a group can pull
            return False
        return "pull" in granted(robot, scope, visibility=self._visibility(repository), role=None)

    def pull_seconds(self, reference: str) -> float:
        if self.authenticate is not None and not self.pull_allowed(reference):
            self.pulls_refused += 1
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
        try:  # the token first (as a registry client asks before it uploads): a fenced attempt fails at once
            await self.registry.authorize_push(image_repository(request.app), request.commit, request.push_user,
                                               request.push_secret, self.runtime.now())
        except PushRefused as exc:
            log(f"push: refused: {exc}")
            raise BuildFailed("push", f"the registry refused the push: {exc}") from None
        steps.append(await self._step("push", size / self.registry.bandwidth_mb_s, log))
        self.registry.store_image(reference, size)
        return BuildOutcome(reference, tuple(steps), hit)
