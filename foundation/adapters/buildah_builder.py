"""The real Builder adapter: git + buildah (chroot isolation, vfs storage) + a Docker registry.

One build, four steps, each a subprocess with an argument list (never a shell line):

* **clone**: ``git clone`` of ``{repos}/{repo}`` into a fresh checkout, then a detached
  checkout of the commit;
* **compile**: the repo's ``build.sh`` runs in a build container (``buildah from
  scratch`` plus a static busybox as its shell and tools) with the checkout mounted at
  ``/src`` and this host's dependency cache of the repo at ``/cache``; it leaves what
  the image needs in ``/src/out``. The cache counts as warm when it holds anything
  before the step (a previous build of the repo on this host filled it);
* **image**: a ``scratch`` image with busybox at ``/bin/busybox`` and ``out/`` at
  ``/app``, entry point ``/bin/busybox sh /app/start.sh``, committed as
  ``{registry}/{app}:{commit}``;
* **push**: ``buildah push`` to the registry.

A failing step raises ``BuildFailed`` naming it, with the last lines of its output. The
checkout and the containers are removed whatever happens; the cache stays.
Inputs are checked again here (the task record checked them already): the repo must
stay under ``repos``, the commit and app must be plain names, so nothing user-given
becomes an option or a path outside the build's own directories.
It must not know etcd, tasks or scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundation.logic.build_task import APP_NAME, COMMIT, REPO
from foundation.ports.builder import BuildFailed, BuildOutcome, BuildRequest, StepTiming

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, the whole userland


@dataclass(frozen=True)
class BuildahConfig:
    host: str
    repos: Path  # repositories to clone from: {repos}/{repo}
    workdir: Path  # checkouts ({workdir}/src/…) and dependency caches ({workdir}/cache/{repo})
    registry: str  # host:port of the registry
    storage: Path | None = None  # a private buildah store (--root/--runroot); None: buildah's default
    tls_verify: bool = False  # a lab registry on loopback speaks plain HTTP
    step_timeout: float = 1800.0


class BuildahBuilder:
    def __init__(self, config: BuildahConfig) -> None:
        self.config = config

    @property
    def host(self) -> str:
        return self.config.host

    def _buildah(self, *args: str) -> list[str]:
        command = ["buildah"]
        if self.config.storage is not None:
            command += ["--root", str(self.config.storage / "root"), "--runroot", str(self.config.storage / "run"),
                        "--storage-driver", "vfs"]
        return [*command, *args]

    async def _run(self, step: str, argv: list[str]) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
        except FileNotFoundError:
            raise BuildFailed(step, f"{argv[0]} is not installed") from None
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self.config.step_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BuildFailed(step, f"{argv[0]} took longer than {self.config.step_timeout:g} s") from None
        text = output.decode(errors="replace")
        if proc.returncode != 0:
            tail = " | ".join(line for line in text.strip().splitlines()[-5:])
            raise BuildFailed(step, f"exit status {proc.returncode}: {tail}"[:1000])
        return text.strip()

    def _checked(self, request: BuildRequest) -> Path:
        for name, value, pattern in (("app", request.app, APP_NAME), ("commit", request.commit, COMMIT),
                                     ("repo", request.repo, REPO)):
            if not pattern.fullmatch(value):
                raise BuildFailed("clone", f"{name} {value!r} is not a plain name")
        source = (self.config.repos / request.repo).resolve()
        if not source.is_relative_to(self.config.repos.resolve()) or ".." in request.repo.split("/"):
            raise BuildFailed("clone", f"repo {request.repo!r} is outside {self.config.repos}")
        if not source.exists():
            raise BuildFailed("clone", f"no repository {request.repo!r} under {self.config.repos}")
        return source

    async def build(self, request: BuildRequest, log: Callable[[str], None]) -> BuildOutcome:
        source = self._checked(request)
        work = self.config.workdir / "src" / f"{request.app}-{request.commit}"
        cache = self.config.workdir / "cache" / request.repo.replace("/", "_")
        reference = f"{self.config.registry}/{request.app}:{request.commit}"
        containers: list[str] = []
        steps: list[StepTiming] = []

        async def step(name: str, *commands: list[str]) -> str:
            started = time.monotonic()
            out = ""
            for argv in commands:
                out = await self._run(name, argv)
            seconds = time.monotonic() - started
            steps.append(StepTiming(name, seconds))
            log(f"{name}: {seconds:.2f}s")
            return out

        try:
            shutil.rmtree(work, ignore_errors=True)
            work.parent.mkdir(parents=True, exist_ok=True)
            cache.mkdir(parents=True, exist_ok=True)
            await step("clone", ["git", "clone", "--quiet", "--no-checkout", "--", str(source), str(work)],
                       ["git", "-C", str(work), "checkout", "--quiet", "--detach", request.commit, "--"])
            cache_hit = any(cache.iterdir())
            (work / "out").mkdir(exist_ok=True)
            started = time.monotonic()
            builder = await self._run("compile", self._buildah("from", "--quiet", "scratch"))
            containers.append(builder)
            await self._run("compile", self._buildah("copy", "--quiet", builder, str(BUSYBOX), "/bin/busybox"))
            # busybox as /bin/sh and friends inside the container: the build script's userland.
            await self._run("compile", self._buildah("run", "--isolation", "chroot", builder, "/bin/busybox",
                                                     "--install", "-s", "/bin"))
            await self._run("compile", self._buildah("run", "--isolation", "chroot", "-v", f"{work}:/src",
                                                     "-v", f"{cache}:/cache", "--workingdir", "/src", builder,
                                                     "/bin/sh", "/src/build.sh"))
            steps.append(StepTiming("compile", time.monotonic() - started))
            log(f"compile: {steps[-1].seconds:.2f}s (cache {'warm' if cache_hit else 'cold'})")
            started = time.monotonic()
            image = await self._run("image", self._buildah("from", "--quiet", "scratch"))
            containers.append(image)
            await self._run("image", self._buildah("copy", "--quiet", image, str(BUSYBOX), "/bin/busybox"))
            await self._run("image", self._buildah("copy", "--quiet", image, str(work / "out"), "/app"))
            await self._run("image", self._buildah("config", "--entrypoint",
                                                   '["/bin/busybox", "sh", "/app/start.sh"]', "--label",
                                                   f"leengine.commit={request.commit}", image))
            await self._run("image", self._buildah("commit", "--quiet", image, reference))
            steps.append(StepTiming("image", time.monotonic() - started))
            log(f"image: {steps[-1].seconds:.2f}s")
            await step("push", self._buildah("push", "--quiet", f"--tls-verify={str(self.config.tls_verify).lower()}",
                                             reference, f"docker://{reference}"))
            return BuildOutcome(reference, tuple(steps), cache_hit)
        finally:
            for container in containers:
                with contextlib.suppress(BuildFailed):
                    await self._run("cleanup", self._buildah("rm", container))
            shutil.rmtree(work, ignore_errors=True)
