"""The real Builder adapter: git + buildah (chroot isolation, vfs storage) + a Docker registry.

One build, four steps, each a subprocess with an argument list (never a shell line):

* **clone**: ``git clone --no-hardlinks`` of ``{repos}/{repo}`` into a fresh checkout
  (copies: the checkout is handed to the build script, which must not share an inode
  with the repository store), then a detached checkout of the commit, which must be a
  full commit id and must be what ``HEAD`` then is;
* **compile**: the repo's ``build.sh`` runs in a build container (``buildah from
  scratch`` plus a static busybox as its shell and tools) with the checkout mounted at
  ``/src`` and this host's dependency cache of the repo at ``/cache``; it leaves what
  the image needs in ``/src/out``. The cache counts as warm when it holds anything
  before the step (a previous build of the repo on this host filled it). The script
  runs as ``nobody`` with every capability dropped (a root script could leave the
  chroot), in a PID namespace of its own (``unshare --pid``: buildah is its init, so
  nothing the script started survives the step); chroot isolation shares the host's
  network, so what a build host can reach a build script can reach (see
  docs/architecture.md);
* **image**: ``out/`` is first copied, as root, into a fresh staging directory that
  only root can reach, walking it by directory file descriptors and opening every
  entry with ``O_NOFOLLOW``: anything under ``out`` that is not a regular file or a
  directory (a symbolic link, a FIFO, a socket, a device), ``out`` itself being one,
  more than ``MAX_OUT_ENTRIES`` entries or nesting deeper than ``MAX_OUT_DEPTH`` fails
  the build and nothing is imaged. The script ran as nobody and may have planted a
  link to a root-only host file (``out -> /etc/shadow``) after the pre-compile check,
  or left a process that swaps one in during the copy: reading by descriptor, never by
  path, means only bytes of files that are really under ``out`` are read, whatever
  races. Modes keep their ``0o755`` bits (no set-id bits), owners become root. Then a
  ``scratch`` image with busybox at ``/bin/busybox`` and the staged copy at ``/app``,
  entry point ``/bin/busybox sh /app/start.sh``, is committed as
  ``{registry}/{app}/{app}:{commit}`` (``image_repository``: the app's own image group);
* **push**: ``buildah push`` to the registry, with the attempt's credentials
  (``build$TASK`` and its push secret) in a 0600 ``--authfile`` inside a private
  temporary directory, removed after the push; never on a command line. The registry's
  token endpoint honours them only while the attempt is current: an agent that lost
  its task (frozen past its lease, then resumed) is refused the push.

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
import base64
import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from foundation.logic.build_task import APP_NAME, COMMIT, PUSH_SECRET, REPO, TASK_ID, image_repository
from foundation.ports.builder import BuildFailed, BuildOutcome, BuildRequest, StepTiming

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, the whole userland
NOBODY = 65534  # build scripts run as this uid/gid, without capabilities
CONTAIN = ("unshare", "--pid", "--fork", "--kill-child", "--")  # the compile step's own PID namespace
MAX_OUT_ENTRIES = 100_000  # files and directories under out/ that an image may hold
MAX_OUT_DEPTH = 64  # directory levels under out/ (each level holds one open descriptor while copied)


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

    @contextlib.contextmanager
    def _authfile(self, request: BuildRequest) -> Iterator[Path | None]:
        """The attempt's registry credentials as a containers-auth.json, for one push; None without any.

        Never on a command line (``ps`` shows argv to every user): a 0600 file in a fresh 0700
        directory, made only now (the build script, which ran as nobody, has ended) and removed
        when the push ends, whatever happens.
        """
        if not request.push_user and not request.push_secret:
            yield None
            return
        user = request.push_user.removeprefix("build$")
        if not request.push_user.startswith("build$") or not TASK_ID.fullmatch(user) \
                or not PUSH_SECRET.fullmatch(request.push_secret):
            raise BuildFailed("push", "the push credentials are not build$TASK and a 32-hex secret")
        token = base64.b64encode(f"{request.push_user}:{request.push_secret}".encode()).decode()
        private = Path(tempfile.mkdtemp(prefix="leengine-push-"))  # mode 0700, root's
        try:
            path = private / "auth.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"auths": {self.config.registry: {"auth": token}}}, out)
            yield path
        finally:
            shutil.rmtree(private, ignore_errors=True)

    async def build(self, request: BuildRequest, log: Callable[[str], None]) -> BuildOutcome:
        source = self._checked(request)
        work = self.config.workdir / "src" / f"{request.app}@{request.commit}"
        # One cache per repo; the name is escaped so that two repos can never share one.
        cache = self.config.workdir / "cache" / request.repo.replace("%", "%25").replace("/", "%2F")
        stage = self.config.workdir / "stage" / f"{request.app}@{request.commit}"  # root only: what is imaged
        reference = f"{self.config.registry}/{image_repository(request.app)}:{request.commit}"
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
            shutil.rmtree(stage, ignore_errors=True)
            work.parent.mkdir(parents=True, exist_ok=True)
            stage.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(stage.parent, 0o700)
            cache.mkdir(parents=True, exist_ok=True)
            await self._run(current, ["git", "clone", "--quiet", "--no-checkout", "--no-hardlinks", "--",
                                      str(source), str(work)])
            await self._run(current, ["git", "-C", str(work), "checkout", "--quiet", "--detach", request.commit, "--"])
            head = await self._run(current, ["git", "-C", str(work), "rev-parse", "--verify", "HEAD"])
            if head != request.commit:  # e.g. the id of a tag object: the image must be tagged with what it is
                raise BuildFailed(current, f"{request.commit} is not a commit (it checks out as {head[:64]})")
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
            # In a PID namespace of its own (buildah is its init): when the step ends, the kernel kills
            # whatever the script left running (chroot isolation alone lets a `cmd &` outlive the build).
            await self._run(current, [*CONTAIN, *self._buildah(
                "run", "--isolation", "chroot", "--cap-drop", "all", "--user", f"{NOBODY}:{NOBODY}",
                "-v", f"{work}:/src", "-v", f"{cache}:/cache", "--workingdir", "/src", builder,
                "/bin/sh", "/src/build.sh")])
            done(current, f" (cache {'warm' if cache_hit else 'cold'})")
            current = "image"
            entries = _stage_out(work, stage)  # only what the build made, read by descriptor (no link followed)
            image = f"{prefix}{request.app}-{request.commit}-image"
            await self._run(current, self._buildah("from", "--quiet", "--name", image, "scratch"))
            await self._run(current, self._buildah("copy", "--quiet", image, str(BUSYBOX), "/bin/busybox"))
            await self._run(current, self._buildah("copy", "--quiet", image, str(stage), "/app"))
            await self._run(current, self._buildah("config", "--entrypoint", '["/bin/busybox", "sh", "/app/start.sh"]',
                                                   "--label", f"leengine.commit={request.commit}", image))
            await self._run(current, self._buildah("commit", "--quiet", image, reference))
            done(current, f" ({entries} entries)")
            current = "push"
            with self._authfile(request) as authfile:
                await self._run(current, self._buildah("push", "--quiet",
                                                       f"--tls-verify={str(self.config.tls_verify).lower()}",
                                                       *(("--authfile", str(authfile)) if authfile else ()),
                                                       reference, f"docker://{reference}"))
            done(current)
            return BuildOutcome(reference, tuple(steps), cache_hit)
        except OSError as exc:  # a full disk, an unwritable workdir, no more processes: the build fails, not us
            raise BuildFailed(current, f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(BuildFailed, OSError):
                await self._sweep(prefix)
                await self._run("cleanup", self._buildah("rmi", "--force", reference))  # pushed: the registry has it
            shutil.rmtree(work, ignore_errors=True)  # rmtree works by descriptor: it follows no planted link
            shutil.rmtree(stage, ignore_errors=True)

    async def _sweep(self, prefix: str) -> None:
        """Remove this host's build containers: those of a finished build, or of an agent killed mid-build."""
        listed = await self._run("cleanup", self._buildah("containers", "--format", "{{.ContainerName}}"))
        for name in sorted(n for n in listed.split() if n.startswith(prefix)):
            await self._run("cleanup", self._buildah("rm", name))


def _chown_tree(root: Path, uid: int) -> None:
    """Give ``root`` and everything under it to ``uid`` (links themselves, never what they point to).

    By directory descriptors (``os.fwalk``): the cache was written by earlier build scripts, and
    a process one of them left behind could swap a directory for a link to ``/etc`` mid-walk.
    """
    os.lchown(root, uid, uid)
    for _, dirs, files, fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _refuse(where: str, mode: int) -> BuildFailed:
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file or directory")
    return BuildFailed("image", f"{where} is {kind}: an image holds only regular files and directories "
                                f"the build made (a link could reach the build host's files)")


def _open_dir(name: str, parent: int, where: str, expected: os.stat_result | None) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:  # ELOOP: a link; ENOTDIR: swapped for a file since we looked
        raise BuildFailed("image", f"{where} changed while it was copied or is no directory ({exc.strerror})") from None
    seen = os.fstat(fd)
    if not stat.S_ISDIR(seen.st_mode) or (expected is not None and not os.path.samestat(seen, expected)):
        os.close(fd)
        raise BuildFailed("image", f"{where} changed while it was copied")
    return fd


def _stage_out(work: Path, stage: Path, owner: int = NOBODY) -> int:
    """Copy ``work/out`` into the fresh directory ``stage`` (root's); returns how many entries it holds.

    Every entry is looked at with ``lstat`` relative to its directory's descriptor and opened with
    ``O_NOFOLLOW`` (files also ``O_NONBLOCK``: a FIFO swapped in cannot block us), then checked
    again on the descriptor: a link or special file anywhere, or an entry that changed between the
    two looks, is a ``BuildFailed`` of the image step. Nothing is read by path below ``work``.
    Any OS error on the way (an entry that vanished, a full disk) is a ``BuildFailed`` too.
    A regular file must belong to ``owner``, the build's user (its checkout is given to it
    before the compile): a hard link the script made to a file of someone else's keeps that
    owner, and is refused even where the kernel's ``protected_hardlinks`` is off.
    """
    try:
        return _stage(work, stage, owner)
    except OSError as exc:
        raise BuildFailed("image", f"copying out failed: {exc.strerror or exc} "
                                   f"({str(exc.filename)[-200:]!r}; did something change it meanwhile?)") from None


def _stage(work: Path, stage: Path, owner: int) -> int:
    top = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        first = os.stat("out", dir_fd=top, follow_symlinks=False)
        if not stat.S_ISDIR(first.st_mode):
            raise _refuse("out", first.st_mode)
        source = _open_dir("out", top, "out", first)
    finally:
        os.close(top)
    # Depth first, one frame per open directory: at most 2 × MAX_OUT_DEPTH descriptors, however wide.
    frames: list[tuple[int, int, list[str], str, int]] = []
    try:
        stage.mkdir(mode=0o700)
        target = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        os.fchmod(target, stat.S_IMODE(first.st_mode) & 0o755)  # /app's mode; the parent keeps others out
        frames.append((source, target, sorted(os.listdir(source), reverse=True), "out", 0))
        source = -1  # the frame owns it now
        count = 0
        while frames:
            src, dst, names, where, depth = frames[-1]
            if not names:
                frames.pop()
                os.close(src)
                os.close(dst)
                continue
            name = names.pop()
            path = f"{where}/{name}"[-300:]  # for messages only
            count += 1
            if count > MAX_OUT_ENTRIES:
                raise BuildFailed("image", f"out holds more than {MAX_OUT_ENTRIES} entries")
            info = os.stat(name, dir_fd=src, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                if depth + 1 > MAX_OUT_DEPTH:
                    raise BuildFailed("image", f"{path[:200]} nests deeper than {MAX_OUT_DEPTH} directories")
                inner = _open_dir(name, src, path, info)
                try:
                    os.mkdir(name, 0o700, dir_fd=dst)
                    made = _open_dir(name, dst, f"the staged {path}", None)
                except BaseException:
                    os.close(inner)
                    raise
                frames.append((inner, made, [], path, depth + 1))
                os.fchmod(made, stat.S_IMODE(info.st_mode) & 0o755)
                frames[-1][2].extend(sorted(os.listdir(inner), reverse=True))
            elif stat.S_ISREG(info.st_mode):
                _copy_file(name, src, dst, path, info, owner)
            else:
                raise _refuse(path, info.st_mode)
        return count
    finally:
        if source >= 0:
            os.close(source)
        for src, dst, *_ in frames:
            os.close(src)
            os.close(dst)


def _copy_file(name: str, src: int, dst: int, where: str, expected: os.stat_result, owner: int) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src)
    except OSError as exc:  # ELOOP: swapped for a link since we looked
        raise BuildFailed("image", f"{where} changed while it was copied ({exc.strerror})") from None
    try:
        seen = os.fstat(fd)
        if not stat.S_ISREG(seen.st_mode) or not os.path.samestat(seen, expected):
            raise BuildFailed("image", f"{where} changed while it was copied")
        if seen.st_uid != owner:
            raise BuildFailed("image", f"{where} is not the build's own file (owner uid {seen.st_uid}, a hard link "
                                       "to a host file?): out may hold only what the build made")
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
        try:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fchmod(out, stat.S_IMODE(seen.st_mode) & 0o755)
        finally:
            os.close(out)
    finally:
        os.close(fd)
