"""The lab's build farm as a deploy sees it: a commit of the app's repository, built by the real farm.

The twin of ``sim/farm.py``'s ``release`` + its results observer, against a live lab:

* ``AppRepos``: one git repository per app under ``DIR/repos/<app>`` (the directory the
  build hosts' ``--repos`` names, lab/services.py): a tiny ``build.sh`` that writes
  ``out/start.sh``. Each release is a new commit (a ``VERSION`` file changed), so the
  farm builds a real new commit id, as a developer's push would give it. git runs with an
  argument list; the app name is a DNS label (checked), never a shell word.
* ``LabFarm.release(app)``: a new commit, ``SubmitBuild`` to the control service's Builds API
  as the lab's admin (gRPC, TLS, bearer token), then a wait for the task's result; returns
  the pushed image or None (no build agent: the submit is refused and counted as
  ``unsubmitted``; a failed build; no result within ``timeout``), as ``Farm.release`` does.
* ``LabFarm.observe()``: a real watch of ``/build/results/`` on the lab's etcd (resumed after
  the last revision seen when it breaks): when each build finished, whoever waited for it,
  exactly as the sim's observer. ``builds`` maps task -> ``BuildSeen`` (the sim's record)
  in the run's clock; ``unfinished``/``submitted`` are what the ``builds-finish`` check and
  its probe read, ``seconds()`` the ``build_seconds`` samples (submit to result, builds done,
  in order of submission), ``metrics()`` the sim's ``builds_*`` figures.

It must not know Kubernetes, Nginx or the faults; the controller decides when to deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundation.logic.build_task import RESULTS, Result, TaskError
from foundation.ports import StoreError
from foundation.ports.store import Store
from lab.kube_objects import is_dns_label
from sim.farm import BuildSeen
from sim.metrics import percentile

log = logging.getLogger("leengine.lab.farm")

BUILD_SCRIPT = """\
set -e
mkdir -p out /cache/deps
v=$(cat VERSION)
printf 'echo %s %s\\n' "$APP" "$v" > out/start.sh
"""


class FarmError(RuntimeError):
    """The lab's repositories could not be prepared (git failed)."""


class AppRepos:
    """``DIR/repos/<app>``: a git repository per app, one commit per release."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases: dict[str, int] = {}

    def path(self, app: str) -> Path:
        if not is_dns_label(app):
            raise ValueError(f"not an app name: {app[:70]!r}")
        return self.root / app

    def _git(self, repo: Path, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=leengine lab",
                               "-c", "user.email=lab@leengine.invalid", "-c", "commit.gpgsign=false", *args],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise FarmError(f"git {args[0]} in {repo}: {done.stderr.strip()[-300:]}")
        return done.stdout.strip()

    def ensure(self, app: str) -> Path:
        """The app's repository, made with its first commit if it is not there yet."""
        repo = self.path(app)
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            self._git(repo, "init", "--quiet")
            (repo / "build.sh").write_text(BUILD_SCRIPT.replace("$APP", app))
            (repo / "VERSION").write_text("r0\n")
            self._git(repo, "add", "build.sh", "VERSION")
            self._git(repo, "commit", "--quiet", "-m", f"{app} r0")
        return repo

    def next_commit(self, app: str) -> str:
        """A new commit of the app (its next release); its full id."""
        repo = self.ensure(app)
        n = self.releases.get(app, 0) + 1
        self.releases[app] = n
        (repo / "VERSION").write_text(f"r{n}\n")
        self._git(repo, "commit", "--quiet", "--allow-empty", "-am", f"{app} r{n}")
        return self._git(repo, "rev-parse", "HEAD")


class BuildsAdmin:
    """The Builds API of the control service as the lab's admin (the deploy pipeline's principal)."""

    def __init__(self, target: str, token: str, ca: bytes, *, timeout: float = 10.0) -> None:
        import grpc

        from control.generated.leengine.control.v1 import builds_pb2, builds_pb2_grpc

        self.pb = builds_pb2
        self.grpc = grpc
        self.channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca))
        self.stub = builds_pb2_grpc.BuildsStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    async def submit(self, app: str, commit: str) -> str:
        """The task id; ``SubmitRefused`` when the service refuses (no build agent, etcd away, ...)."""
        try:
            build = await self.stub.SubmitBuild(self.pb.SubmitBuildRequest(app=app, commit=commit),
                                                metadata=self.metadata, timeout=self.timeout)
        except self.grpc.aio.AioRpcError as exc:
            raise SubmitRefused(f"{exc.code().name}: {exc.details()}"[:300]) from None
        return str(build.task)

    async def close(self) -> None:
        await self.channel.close()


class SubmitRefused(Exception):
    """The Builds API did not queue the build (the sim's ``BuildError``/``StoreError`` on submit)."""


class LabFarm:
    """Releases through the real farm and the results it really wrote, in the run's clock."""

    def __init__(self, repos: AppRepos, builds: Any, store: Store, clock: Callable[[], float], *,
                 retry: float = 1.0) -> None:
        self.repos = repos
        self.builds_api = builds  # BuildsAdmin (or a fake with ``async submit(app, commit) -> task``)
        self.store = store
        self.clock = clock
        self.retry = retry
        self.builds: dict[str, BuildSeen] = {}  # task -> what the run saw of it
        self.unsubmitted = 0
        self.failed_commits = 0  # repositories that could not take a commit
        self.results: dict[str, Result] = {}  # task -> its result record, as read
        self._finished: dict[str, asyncio.Future[Result]] = {}
        self.after = 0

    # ---- the observer
    async def observe(self) -> None:
        while True:
            try:
                async with self.store.watch(RESULTS, start_revision=self.after + 1) as watch:
                    async for event in watch:
                        self.after = event.revision
                        if event.type == "put":
                            self.on_result(event.kv.value)
            except StoreError:
                pass
            await asyncio.sleep(self.retry)

    def on_result(self, raw: bytes) -> None:
        try:
            result = Result.from_bytes(raw)
        except TaskError:
            return  # not the real agents' writing: nothing to count
        self.results.setdefault(result.task, result)
        seen = self.builds.setdefault(result.task, BuildSeen(self.clock()))
        if seen.finished is None:
            seen.finished, seen.state, seen.cache_hit = self.clock(), result.state, result.cache_hit
        waiter = self._finished.get(result.task)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    # ---- a deploy's release
    async def release(self, app: str, *, timeout: float = 3600.0) -> str | None:
        try:
            commit = await asyncio.to_thread(self.repos.next_commit, app)
        except (FarmError, OSError, subprocess.TimeoutExpired) as exc:
            self.failed_commits += 1
            log.warning("release of %s: %s", app, exc)
            return None
        try:
            task = await self.builds_api.submit(app, commit)
        except SubmitRefused as exc:
            self.unsubmitted += 1
            log.info("build of %s@%s not submitted: %s", app, commit[:12], exc)
            return None
        self.builds.setdefault(task, BuildSeen(self.clock()))
        waiter = self._finished.setdefault(task, asyncio.get_running_loop().create_future())
        if task in self.results and not waiter.done():  # the result came before we looked
            waiter.set_result(self.results[task])
        try:
            result = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            log.info("build %s: no result within %gs", task, timeout)
            return None
        finally:
            self._finished.pop(task, None)
        if result.state != "done":
            log.info("build %s failed: %s", task, result.error[:200])
            return None
        return result.image

    # ---- what the checks and the report read
    def unfinished(self, submitted_by: float) -> list[str]:
        return sorted(t for t, b in self.builds.items() if b.submitted <= submitted_by and b.finished is None)

    def submitted(self, by: float) -> int:
        return sum(1 for b in self.builds.values() if b.submitted <= by)

    def seconds(self) -> list[float]:
        """``build_seconds``: submit to result of the builds done, in order of submission (sim/report.py's)."""
        return [b.finished - b.submitted for b in self.builds.values() if b.state == "done" and b.finished is not None]

    def metrics(self) -> dict[str, Any]:
        took = sorted(self.seconds())
        builds = self.builds.values()
        return {"builds_submitted": len(self.builds), "builds_done": len(took),
                "builds_failed": sum(1 for b in builds if b.state == "failed"),
                "builds_unsubmitted": self.unsubmitted,
                "builds_cache_hits": sum(1 for b in builds if b.state == "done" and b.cache_hit),
                "build_p50": percentile(took, 0.5, 3), "build_p99": percentile(took, 0.99, 3)}

    def results_summary(self) -> list[dict[str, Any]]:
        """Each finished build as its result says: host, attempt, state, cache, steps' seconds (the figures)."""
        return [{"task": r.task, "host": r.host, "attempt": r.attempt, "state": r.state, "cache_hit": r.cache_hit,
                 "steps": {name: round(seconds, 3) for name, seconds in r.steps}, "error": r.error[:200],
                 "seconds": _took(self.builds.get(t))} for t, r in self.results.items()]

    async def close(self) -> None:
        for waiter in self._finished.values():
            if not waiter.done():
                waiter.cancel()
        with contextlib.suppress(Exception):
            await self.builds_api.close()


def _took(seen: BuildSeen | None) -> float | None:
    return None if seen is None or seen.finished is None else round(seen.finished - seen.submitted, 3)
