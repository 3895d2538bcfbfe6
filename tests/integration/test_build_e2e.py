"""The build farm end to end: the scheduler on a real etcd, two ``leengine-build-agent`` daemons building
with git + buildah into a real registry, and one of them killed (-9) in the middle of a build.

Needs root (buildah's chroot isolation), etcd, docker-registry, buildah, busybox-static and git;
a missing one fails the test. Everything (repos, checkouts, buildah stores, the registry) is made by
the test and removed afterwards; keys under /build/ are wiped before it starts. Builds name full
commit ids (``make_repo`` returns them); etcd demands the session's client certificate.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control.builds import BuildScheduler
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.logic.build_task import BUILD, Task, rank_hosts, task_key
from foundation.ports import DeleteOp
from lab.registry import running_registry
from leengine.etcd_options import open_store

HOSTS = ("build-a", "build-b")
AGENT = Path(sys.executable).parent / "leengine-build-agent"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def make_repo(repos: Path) -> dict[str, str]:
    """Three commits of shop; returns version -> full commit id."""
    repo = repos / "shop"
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet")
    ids = {}
    for version, pause, extra in (("v1", 0, ""), ("v2", 6, ""),  # v2 compiles long enough to be killed mid-way
                                  ("v3", 0, "ln -s /etc/shadow out/passwords\n")):  # v3 plants a host link
        (repo / "build.sh").write_text(f"set -e\nmkdir -p out /cache/deps\nsleep {pause}\n"
                                       f"echo 'echo shop {version}' > out/start.sh\n{extra}")
        git(repo, "add", "build.sh")
        git(repo, "commit", "--quiet", "-m", version)
        ids[version] = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                      capture_output=True, text=True).stdout.strip()
    return ids


@pytest.fixture
def farm(etcd_server, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the build agent runs buildah with chroot isolation: run the integration tier as root")
    repos = tmp_path / "repos"
    ids = make_repo(repos)
    with running_registry() as registry:
        agents: dict[str, subprocess.Popen[bytes]] = {}
        logs: dict[str, Path] = {}
        for host in HOSTS:
            logs[host] = tmp_path / f"{host}.log"
            agents[host] = subprocess.Popen(
                [str(AGENT), "--host", host, "--etcd", etcd_server.endpoint, *etcd_server.client_args,
                 "--repos", str(repos),
                 "--workdir", str(tmp_path / host), "--registry", registry.address,
                 "--storage", str(tmp_path / f"{host}-storage"), "--ttl", "3"],
                stdout=logs[host].open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield registry, agents, logs, etcd_server, ids
        finally:
            for proc in agents.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            # The killed agent's build ran in its own process group (its own session): end it too.
            subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)], check=False)


def test_the_agents_build_what_is_queued_and_a_killed_host_hands_its_task_over(farm):
    registry, agents, logs, etcd, ids = farm

    def tails() -> str:
        return "\n".join(f"--- {h}\n{p.read_text()[-1500:]}" for h, p in logs.items())

    async def main():
        store = await open_store(etcd.endpoint, etcd.client_tls)
        try:
            await store.txn([], [DeleteOp(BUILD, prefix=True)])  # nothing left from another run
            scheduler = BuildScheduler(store, AsyncioRuntime(), every=0.5)
            deadline = time.monotonic() + 30
            while await scheduler.agents() != list(HOSTS):
                assert time.monotonic() < deadline, f"agents did not register\n{tails()}"
                await asyncio.sleep(0.1)
            first = await scheduler.wait(await scheduler.submit("shop", ids["v1"]), timeout=120)
            assert first is not None, tails()
            home = rank_hosts("shop", list(HOSTS))[0]
            heir = next(h for h in HOSTS if h != home)
            reassigner = asyncio.create_task(scheduler.reassign_forever())
            try:
                task = await scheduler.submit("shop", ids["v2"])
                deadline = time.monotonic() + 30
                while True:  # wait until the home host is compiling it
                    kv = await store.get(task_key(home, task))
                    if kv is not None and Task.from_bytes(kv.value).state == "running":
                        break
                    assert time.monotonic() < deadline, f"v2 never started on {home}\n{tails()}"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)
                agents[home].send_signal(signal.SIGKILL)  # mid-compile: no result, no more keepalives
                second = await scheduler.wait(task, timeout=120)
            finally:
                reassigner.cancel()
            hostile = await scheduler.wait(await scheduler.submit("shop", ids["v3"]), timeout=120)
            return home, heir, first, second, hostile, scheduler.stats.moved
        finally:
            await store.close()

    home, heir, first, second, hostile, moved = asyncio.run(main())
    assert (first.state, first.host, first.attempt) == ("done", home, 1), first
    assert first.image == f"{registry.address}/shop/shop:{ids['v1']}" and not first.cache_hit
    assert [s for s, _ in first.steps] == ["clone", "compile", "image", "push"]
    assert second is not None and (second.state, second.host, second.attempt) == ("done", heir, 2), second
    assert moved == 1
    # v3's script linked /etc/shadow into out/: the build failed, saying why, and nothing was pushed.
    assert hostile is not None and hostile.state == "failed", hostile
    assert hostile.error.startswith("image: out/passwords is a symbolic link"), hostile.error
    assert registry.tags("shop/shop") == sorted([ids["v1"], ids["v2"]])
