"""The real Builder's guard rails (root, buildah, git, docker-registry): what a build script may not do,
what a hostile commit cannot break, and what a cancelled build leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from foundation.adapters.buildah_builder import NOBODY, BuildahBuilder, BuildahConfig
from foundation.ports.builder import BuildFailed, BuildRequest
from leengine.registry_server import running_registry


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def commit(repos: Path, app: str, version: str, files: dict[str, str]) -> BuildRequest:
    repo = repos / app
    if not repo.exists():
        repo.mkdir(parents=True)
        git(repo, "init", "--quiet")
    for name, text in files.items():
        (repo / name).write_text(text)
        git(repo, "add", name)
    git(repo, "commit", "--quiet", "--allow-empty", "-m", version)
    git(repo, "tag", version)
    return BuildRequest(app, app, version)


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the buildah builder runs as root (chroot isolation): run the integration tier as root")
    with running_registry() as registry:
        builder = BuildahBuilder(BuildahConfig("build-1", tmp_path / "repos", tmp_path / "work", registry.address))
        yield builder, tmp_path / "repos", tmp_path / "work"


def test_the_build_script_runs_as_nobody_without_the_power_to_leave_its_chroot(lab):
    builder, repos, work = lab
    script = ("set -e\nid -u > /cache/uid\n"
              "if chroot / /bin/true 2>/dev/null; then echo escaped > /cache/escaped; fi\n"
              "echo 'echo hi' > out/start.sh\n")
    outcome = asyncio.run(builder.build(commit(repos, "shop", "v1", {"build.sh": script}), lambda _: None))
    cache = work / "cache" / "shop"
    assert (cache / "uid").read_text().strip() == str(NOBODY)
    assert not (cache / "escaped").exists()  # chroot needs CAP_SYS_CHROOT: dropped
    assert outcome.image.endswith("/shop:v1")


def test_a_commit_with_a_file_named_out_fails_its_compile_cleanly(lab):
    builder, repos, _ = lab
    request = commit(repos, "shop", "v1", {"build.sh": "echo 'echo hi' > out/start.sh\n", "out": "not a dir"})
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request, lambda _: None))
    assert info.value.step == "compile" and "'out'" in str(info.value)


def test_a_cancelled_build_kills_its_script_and_leaves_no_container_or_checkout(lab):
    builder, repos, work = lab
    request = commit(repos, "shop", "v1", {"build.sh": "sleep 30\n"})

    async def main() -> None:
        task = asyncio.create_task(builder.build(request, lambda _: None))
        for _ in range(200):  # until the script runs
            if subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True).returncode == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the build script never started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True).returncode == 1  # no script left
    listed = subprocess.run(builder._buildah("containers", "--format", "{{.ContainerName}}"), capture_output=True,
                            text=True, check=True).stdout.split()
    assert not [n for n in listed if n.startswith("leengine-build-1-")]
    assert not list((work / "src").iterdir())
