"""The Builder port's conformance suite: the same test bodies against buildah + a registry and the sim builder.

``builder_harness`` runs ``async def body(h)`` on the sim runtime with a ``SimBuilder``
or on asyncio with a ``BuildahBuilder`` (root: chroot isolation, a private vfs store, a
throwaway ``docker-registry`` on loopback, git repositories made by the test).
``h.commit(app, version)`` makes a commit whose build succeeds (the request names it by
its full commit id, the only kind of commit a build takes), ``h.broken(app)`` one
whose compile step fails; ``h.pushed(reference)`` asks the registry. Only what the
port promises is asserted: four timed steps, the image in the registry under
``{app}:{commit}``, the cache warm on the second build of a repo on the same host,
and a failure that names its step.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.ports.builder import STEPS, BuildFailed, BuildRequest
from sim.adapters.builder import SimBuilder, SimRegistry
from sim.adapters.runtime import SimRuntime

BUILD_SH = """set -e
mkdir -p /cache/deps out
[ -f /cache/deps/fetched ] || echo "fetched once" > /cache/deps/fetched
cp /cache/deps/fetched out/deps
echo "echo {app} {version}" > out/start.sh
"""


@dataclass
class BuilderHarness:
    kind: str
    builder: object
    commit: Callable[[str, str], BuildRequest]
    broken: Callable[[str], BuildRequest]
    pushed: Callable[[str], bool]
    reference: Callable[[str, str], str]  # where app:commit lands in this registry


def _fake_id(app: str, version: str) -> str:
    return hashlib.sha1(f"{app} {version}".encode()).hexdigest()


class _SimRunner:
    kind = "sim"

    def run(self, body: Callable[[BuilderHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        registry = SimRegistry()
        builder = SimBuilder(runtime, "build-1", registry)

        def broken(app: str) -> BuildRequest:
            builder.fail_step = "compile"
            return BuildRequest(app, app, _fake_id(app, "broken"))

        harness = BuilderHarness("sim", builder, lambda app, version: BuildRequest(app, app, _fake_id(app, version)),
                                 broken,
                                 lambda ref: ref in registry.images, registry.reference)
        runtime.run_until_complete(body(harness), limit=36000)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   check=True, capture_output=True)


class _BuildahRunner:
    kind = "buildah"

    def run(self, body: Callable[[BuilderHarness], Awaitable[None]]) -> None:
        if os.geteuid() != 0:
            pytest.fail("the buildah builder runs as root (chroot isolation): run the integration tiers as root")
        from foundation.adapters.buildah_builder import BuildahBuilder, BuildahConfig
        from lab.registry import running_registry

        with running_registry() as registry, tempfile.TemporaryDirectory(prefix="leengine-build-") as tmp:
            root = Path(tmp)
            repos = root / "repos"

            def commit(app: str, version: str, script: str | None = None) -> BuildRequest:
                repo = repos / app
                if not repo.exists():
                    repo.mkdir(parents=True)
                    _git(repo, "init", "--quiet")
                (repo / "build.sh").write_text(script or BUILD_SH.format(app=app, version=version))
                _git(repo, "add", "build.sh")
                _git(repo, "commit", "--quiet", "--allow-empty", "-m", version)
                head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                                      text=True).stdout.strip()
                return BuildRequest(app, app, head)

            def broken(app: str) -> BuildRequest:
                return commit(app, "broken", "echo 'cc: error: no such file' >&2\nexit 3\n")

            def pushed(reference: str) -> bool:
                repository, _, tag = reference.removeprefix(f"{registry.address}/").partition(":")
                return tag in registry.tags(repository)

            builder = BuildahBuilder(BuildahConfig("build-1", repos, root / "work", registry.address,
                                                   storage=root / "storage"))
            harness = BuilderHarness("buildah", builder, commit, broken, pushed,
                                     lambda app, commit: f"{registry.address}/{app}/{app}:{commit}")
            asyncio.run(asyncio.wait_for(body(harness), 300))


@pytest.fixture(params=["sim", "buildah"])
def builder_harness(request):
    return {"sim": _SimRunner, "buildah": _BuildahRunner}[request.param]()


def test_a_build_runs_four_timed_steps_and_pushes_app_colon_commit(builder_harness):
    async def body(h: BuilderHarness) -> None:
        lines: list[str] = []
        request = h.commit("shop", "v1")
        outcome = await h.builder.build(request, lines.append)
        assert [s.step for s in outcome.steps] == list(STEPS)
        assert all(s.seconds > 0 for s in outcome.steps)
        assert outcome.image == h.reference("shop", request.commit) and h.pushed(outcome.image)
        assert len(lines) == 4 and lines[0].startswith("clone: ")
        assert not outcome.cache_hit  # nothing was ever built here

    builder_harness.run(body)


def test_the_second_build_of_a_repo_on_one_host_finds_its_cache_warm(builder_harness):
    async def body(h: BuilderHarness) -> None:
        first = await h.builder.build(h.commit("shop", "v1"), lambda _: None)
        second = await h.builder.build(h.commit("shop", "v2"), lambda _: None)
        other = await h.builder.build(h.commit("blog", "v1"), lambda _: None)
        assert (first.cache_hit, second.cache_hit, other.cache_hit) == (False, True, False)
        assert h.pushed(first.image) and h.pushed(second.image) and first.image != second.image

    builder_harness.run(body)


def test_a_failing_compile_raises_build_failed_naming_the_step_and_pushes_nothing(builder_harness):
    async def body(h: BuilderHarness) -> None:
        request = h.broken("shop")
        with pytest.raises(BuildFailed) as info:
            await h.builder.build(request, lambda _: None)
        assert info.value.step == "compile" and str(info.value).startswith("compile: ")
        assert not h.pushed(h.reference(request.app, request.commit))

    builder_harness.run(body)
