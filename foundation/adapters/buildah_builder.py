"""The real Builder adapter: git + buildah (chroot isolation, vfs storage) + a Docker registry.

One build, four steps, each a subprocess with an argument list (never a shell line):

* **clone**: ``git clone`` of ``{repos}/{repo}`` into a fresh checkout, then a detached
  checkout of the commit;
* **compile**: the repo's ``build.sh`` runs in a build container (``buildah from
  scratch`` plus a static busybox as its shell and tools) with the checkout mounted at
  ``/src`` and this host's dependency cache of the repo at ``/cache``; it leaves what
  the image needs in ``/src/out``. The cache counts as warm when it holds anything
  before the step (a previous build of the repo on this host filled it). The script
  runs as ``nobody`` with every capability dropped (a root script could leave the
  chroot); chroot isolation shares the host's network, so what a build host can
  reach a build script can reach (see docs/architecture.md);
* **image**: a ``scratch`` image with busybox at ``/bin/busybox`` and ``out/`` at
  ``/app``, entry point ``/bin/busybox sh /app/start.sh``, committed as
  ``{registry}/{app}:{commit}``;
* **push**: ``buildah push`` to the registry.

A failing step raises ``BuildFailed`` naming it, with the last lines of its output; so
does any OS error on the way (a full disk, a file where a directory belongs). A step's
subprocess is killed when the build is cancelled; the checkout, the containers and the
local copy of the image are removed when the build ends, and containers a killed agent
left behind (named ``leengine-{host}-…``) are removed before the next build. The
dependency cache stays.
Inputs are checked again here (the task record checked them already): the repo must
stay under ``repos``, the commit and app must be plain names, so nothing user-given
becomes an option or a path outside the build's own directories.
It must not know etcd, tasks or scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundation.logic.build_task import APP_NAME, COMMIT, REPO
from foundation.ports.builder import BuildFailed, BuildOutcome, BuildRequest, StepTiming

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, the whole userland
NOBODY = 65534  # build scripts run as this uid/gid, without capabilities


@dataclass(frozen=True)
class BuildahConfig:
    host: str
    repos: Path  # repositories to clone from: {repos}/{repo}
    workdir: Path  # checkouts ({workdir}/src/…) and dependency caches ({workdir}/cache/{repo})
    registry: str  # host:port of the registry
    storage: Path | None = None  # the buildah store (vfs, --root/--runroot); None: {workdir}/storage
    tls_verify: bool = False  # a lab registry on loopback speaks plain HTTP
    step_timeout: float = 1800.0


class BuildahBuilder:
    def __init__(self, config: BuildahConfig) -> None:
        self.config = config
        self._swept = False  # leftovers of a previous (killed) agent removed, once per process

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def storage(self) -> Path:
        return self.config.storage or self.config.workdir / "storage"

    def _buildah(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.storage / "root"), "--runroot", str(self.storage / "run"),
                "--storage-driver", "vfs", *args]

    async def _run(self, step: str, argv: list[str]) -> str:
        try:
            # Its own process group: buildah's chroot helper outlives a killed buildah, not a killed group.
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise BuildFailed(step, f"{argv[0]} is not installed") from None
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self.config.step_timeout)
        except BaseException as exc:  # timed out, or the build was cancelled: the step must not run on
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                raise BuildFailed(step, f"{argv[0]} took longer than {self.config.step_timeout:g} s") from None
            raise
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
        work = self.config.workdir / "src" / f"{request.app}@{request.commit}"
        # One cache per repo; the name is escaped so that two repos can never share one.
        cache = self.config.workdir / "cache" / request.repo.replace("%", "%25").replace("/", "%2F")
        reference = f"{self.config.registry}/{request.app}:{request.commit}"
        prefix = f"leengine-{self.host}-"
        steps: list[StepTiming] = []
        current = "clone"
        started = time.monotonic()

        def done(name: str, note: str = "") -> None:
            nonlocal started
            steps.append(StepTiming(name, time.monotonic() - started))
            log(f"{name}: {steps[-1].seconds:.2f}s{note}")
            started = time.monotonic()

        try:
            if not self._swept:
                await self._sweep(prefix)
                self._swept = True
            shutil.rmtree(work, ignore_errors=True)
            work.parent.mkdir(parents=True, exist_ok=True)
            cache.mkdir(parents=True, exist_ok=True)
            await self._run(current, ["git", "clone", "--quiet", "--no-checkout", "--", str(source), str(work)])
            await self._run(current, ["git", "-C", str(work), "checkout", "--quiet", "--detach", request.commit, "--"])
            done(current)
            current = "compile"
            cache_hit = any(cache.iterdir())
            out = work / "out"
            if out.is_symlink() or (out.exists() and not out.is_dir()):
                raise BuildFailed(current, "the commit has an 'out' that is not a directory (it is the build's output)")
            out.mkdir(exist_ok=True)
            for path in (work, cache):  # the script runs as nobody: it may write its checkout and its cache
                _chown_tree(path, NOBODY)
            builder = f"{prefix}{request.app}-{request.commit}-compile"
            await self._run(current, self._buildah("from", "--quiet", "--name", builder, "scratch"))
            await self._run(current, self._buildah("copy", "--quiet", builder, str(BUSYBOX), "/bin/busybox"))
            # busybox as /bin/sh and friends inside the container: the build script's userland.
            await self._run(current, self._buildah("run", "--isolation", "chroot", builder, "/bin/busybox",
                                                    "--install", "-s", "/bin"))
            await self._run(current, self._buildah(
                "run", "--isolation", "chroot", "--cap-drop", "all", "--user", f"{NOBODY}:{NOBODY}",
                "-v", f"{work}:/src", "-v", f"{cache}:/cache", "--workingdir", "/src", builder,
                "/bin/sh", "/src/build.sh"))
            done(current, f" (cache {'warm' if cache_hit else 'cold'})")
            current = "image"
            image = f"{prefix}{request.app}-{request.commit}-image"
            await self._run(current, self._buildah("from", "--quiet", "--name", image, "scratch"))
            await self._run(current, self._buildah("copy", "--quiet", image, str(BUSYBOX), "/bin/busybox"))
            await self._run(current, self._buildah("copy", "--quiet", image, str(out), "/app"))
            await self._run(current, self._buildah("config", "--entrypoint", '["/bin/busybox", "sh", "/app/start.sh"]',
                                                   "--label", f"leengine.commit={request.commit}", image))
            await self._run(current, self._buildah("commit", "--quiet", image, reference))
            done(current)
            current = "push"
            await self._run(current, self._buildah("push", "--quiet",
                                                   f"--tls-verify={str(self.config.tls_verify).lower()}",
                                                   reference, f"docker://{reference}"))
            done(current)
            return BuildOutcome(reference, tuple(steps), cache_hit)
        except OSError as exc:  # a full disk, an unwritable workdir, no more processes: the build fails, not us
            raise BuildFailed(current, f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(BuildFailed, OSError):
                await self._sweep(prefix)
                await self._run("cleanup", self._buildah("rmi", "--force", reference))  # pushed: the registry has it
            shutil.rmtree(work, ignore_errors=True)

    async def _sweep(self, prefix: str) -> None:
        """Remove this host's build containers: those of a finished build, or of an agent killed mid-build."""
        listed = await self._run("cleanup", self._buildah("containers", "--format", "{{.ContainerName}}"))
        for name in sorted(n for n in listed.split() if n.startswith(prefix)):
            await self._run("cleanup", self._buildah("rm", name))


def _chown_tree(root: Path, uid: int) -> None:
    """Give ``root`` and everything under it to ``uid`` (links themselves, never what they point to)."""
    os.lchown(root, uid, uid)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(directory, name), uid, uid)
