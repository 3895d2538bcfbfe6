"""Fenced builds end to end: a build agent frozen past its lease (SIGSTOP) cannot push once its task has moved.

Real etcd, two ``leengine-build-agent`` daemons (git + buildah), Debian's ``docker-registry`` with token auth
(``lab.registry.running_registry(auth=...)``) behind ``leengine registry-gate``, and ``leengine-control
--http-address`` serving the registry's ``/token`` (its reassigner and the test's both move build tasks).
The build script sleeps; the agent compiling it is frozen past its lease TTL, a reassigner moves the task to the
other agent (attempt 2, a fresh push secret), which builds and pushes. Then:

* the frozen agent's credentials (attempt 1's secret, read from the task record before the move: exactly what
  the zombie holds) get 401 from ``/token``, ``skopeo`` pushing with them is refused by the registry, and so
  is the agent's own push path (``BuildahBuilder``: the credentials in its authfile, ``buildah push``);
* the zombie is resumed (SIGCONT): whatever it does (its watch sees the task gone and cancels the build, or it
  reaches its push and is refused), the tag still holds the attempt-2 image, the registry has that one tag,
  and exactly one result exists (attempt 2, the other host). In practice the agent's watch of its running task
  (node/build_agent.py) cancels the build on resume, before its push step; the credentials are the fence for a
  zombie that gets to push anyway (a watch that missed the delete), which is why skopeo shows them refused.

Needs root (buildah chroot), etcd, docker-registry, buildah, busybox-static, git and skopeo; a missing one fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from control.builds import BuildScheduler
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.buildah_builder import BuildahBuilder, BuildahConfig
from foundation.logic.build_task import (
    BUILD,
    RESULTS,
    Result,
    Task,
    image_repository,
    rank_hosts,
    result_key,
    task_key,
)
from foundation.ports import DeleteOp
from foundation.ports.builder import BuildFailed, BuildRequest
from lab.nginx import free_port
from lab.processes import stop_child
from lab.registry import RegistryAuth, running_registry
from leengine.control_http import DEFAULT_ISSUER, DEFAULT_SERVICE
from leengine.etcd_options import open_store
from leengine.registry_key_cmd import make_key_files
from tests.integration.test_registry_gate import oci_layout

HOSTS = ("build-a", "build-b")
AGENT = Path(sys.executable).parent / "leengine-build-agent"
LEENGINE = Path(sys.executable).parent / "leengine"
CONTROL = Path(sys.executable).parent / "leengine-control"
ADMIN_TOKEN = "fence-admin-token-0123456789abcdef"
TTL = 2  # seconds: the frozen agent's registration expires soon after it stops
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(repos: Path, marker: str) -> str:
    """One commit of shop whose build sleeps long enough to freeze its agent mid-compile; its full id."""
    repo = repos / "shop"
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet")
    # The stamp differs per build (two attempts make two images); the marker makes the sleep findable.
    (repo / "build.sh").write_text(f"set -e\nmkdir -p out\nsleep 6 # {marker}\ndate +%s%N > out/stamp\n"
                                   "echo 'echo shop' > out/start.sh\n")
    git(repo, "add", "build.sh")
    git(repo, "commit", "--quiet", "-m", "v1")
    return git(repo, "rev-parse", "HEAD")


class TokenService:
    """``leengine-control --http-address`` serving ``/token`` (its reassigner moves build tasks too)."""

    def __init__(self, etcd, key: Path, cert: Path, tmp: Path) -> None:
        self.port = free_port()
        tokens = tmp / "tokens"
        tokens.write_text(f"{ADMIN_TOKEN} ops admin\n")
        tokens.chmod(0o600)
        self.log = tmp / "control.log"
        self.command = [str(CONTROL), "--tokens", str(tokens), "--etcd", etcd.endpoint, *etcd.client_args,
                        "--listen", f"127.0.0.1:{free_port()}", "--http-address", f"127.0.0.1:{self.port}",
                        "--registry-key", str(key), "--registry-cert", str(cert), "--reconcile-seconds", "3600"]

    def __enter__(self) -> TokenService:
        self.proc = subprocess.Popen(self.command, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/token?service={DEFAULT_SERVICE}"
                urllib.request.urlopen(url, timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                assert time.monotonic() < deadline, "leengine-control's /token did not answer in 60 s"
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        stop_child(self.proc)

    def token(self, user: str, password: str, scope: str) -> tuple[int, dict]:
        query = urllib.parse.urlencode({"service": DEFAULT_SERVICE, "scope": scope})
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/token?{query}",
                                         headers={"Authorization": f"Basic {basic}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def digest_of(address: str, tokens: TokenService, name: str, tag: str) -> str | None:
    """The tag's manifest digest, asked as the admin through ``address`` (None: no such tag)."""
    status, answer = tokens.token("ops", ADMIN_TOKEN, f"repository:{name}:pull")
    assert status == 200, answer
    request = urllib.request.Request(f"http://{address}/v2/{name}/manifests/{tag}", method="HEAD",
                                     headers={"Authorization": f"Bearer {answer['token']}",
                                              "Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def tags_of(address: str, tokens: TokenService, name: str) -> list[str]:
    status, answer = tokens.token("ops", ADMIN_TOKEN, f"repository:{name}:pull")
    assert status == 200, answer
    request = urllib.request.Request(f"http://{address}/v2/{name}/tags/list",
                                     headers={"Authorization": f"Bearer {answer['token']}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return sorted(json.load(reply).get("tags") or [])


@pytest.fixture
def fenced_farm(etcd_server, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the build agent runs buildah with chroot isolation: run the integration tier as root")
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (apt-get install skopeo)")
    marker = f"leengine-fence-{os.getpid()}-{time.monotonic_ns()}"
    commit = make_repo(tmp_path / "repos", marker)
    key, cert, _ = make_key_files(tmp_path / "keys")
    with TokenService(etcd_server, key, cert, tmp_path) as tokens:
        auth = RegistryAuth(realm=f"http://127.0.0.1:{tokens.port}/token", service=DEFAULT_SERVICE,
                            issuer=DEFAULT_ISSUER, rootcertbundle=cert)
        with running_registry(auth=auth) as registry:
            gate_address = f"127.0.0.1:{free_port()}"
            procs: dict[str, subprocess.Popen[bytes]] = {}
            logs = {name: tmp_path / f"{name}.log" for name in ("gate", *HOSTS)}
            procs["gate"] = subprocess.Popen(
                [str(LEENGINE), "registry-gate", "--listen", gate_address, "--upstream", f"http://{registry.address}",
                 "--log-level", "info"], stdout=logs["gate"].open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            for host in HOSTS:
                procs[host] = subprocess.Popen(
                    [str(AGENT), "--host", host, "--etcd", etcd_server.endpoint, *etcd_server.client_args,
                     "--repos", str(tmp_path / "repos"), "--workdir", str(tmp_path / host),
                     "--registry", gate_address, "--storage", str(tmp_path / f"{host}-storage"),
                     "--ttl", str(TTL), "--log-level", "debug"],
                    stdout=logs[host].open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
            try:
                logs["control"] = tokens.log
                yield tokens, registry, gate_address, procs, logs, etcd_server, commit, tmp_path
            finally:
                for proc in procs.values():
                    if proc.poll() is None:
                        with_signal(proc, signal.SIGCONT)  # a frozen process does not act on SIGTERM
                    stop_child(proc)
                # A build the agents left running ran in its own session: end it too (by its unique marker).
                subprocess.run(["pkill", "-KILL", "-f", marker], check=False)


def with_signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signum)


def test_an_agent_frozen_past_its_lease_cannot_push_after_its_task_moved(fenced_farm):
    tokens, _, gate, procs, logs, etcd, commit, tmp_path = fenced_farm
    repository = image_repository("shop")
    task_id = f"shop@{commit}"

    def tails() -> str:
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-2500:]}" for name, path in logs.items())

    async def main() -> tuple[str, str, Task, Task, Result | None, int]:
        store = await open_store(etcd.endpoint, etcd.client_tls)
        try:
            await store.txn([], [DeleteOp(BUILD, prefix=True)])
            scheduler = BuildScheduler(store, AsyncioRuntime(), every=0.5)
            deadline = time.monotonic() + 30
            while await scheduler.agents() != list(HOSTS):
                assert time.monotonic() < deadline, f"agents did not register\n{tails()}"
                await asyncio.sleep(0.1)
            home = rank_hosts("shop", list(HOSTS))[0]
            heir = next(h for h in HOSTS if h != home)
            reassigner = asyncio.create_task(scheduler.reassign_forever())
            try:
                assert await scheduler.submit("shop", commit) == task_id
                deadline = time.monotonic() + 60
                while True:  # wait until the home host is compiling it
                    kv = await store.get(task_key(home, task_id))
                    if kv is not None and (first := Task.from_bytes(kv.value)).state == "running":
                        break
                    assert time.monotonic() < deadline, f"the build never started on {home}\n{tails()}"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)
                with_signal(procs[home], signal.SIGSTOP)  # frozen mid-compile: no keepalives, no etcd reads
                deadline = time.monotonic() + 30
                while True:  # its lease expires; the reassigner moves the task to the heir: attempt 2
                    kv = await store.get(task_key(heir, task_id))
                    if kv is not None:
                        second = Task.from_bytes(kv.value)
                        break
                    assert time.monotonic() < deadline, f"the task never moved to {heir}\n{tails()}"
                    await asyncio.sleep(0.1)
                # The fence itself, while attempt 2 builds (no result yet, which would refuse every secret): the
                # zombie's secret gets no token, the heir's current one does.
                scope = f"repository:{image_repository('shop')}:pull,push"
                fenced = await asyncio.to_thread(tokens.token, f"build${task_id}", first.push_secret, scope)
                current = await asyncio.to_thread(tokens.token, f"build${task_id}", second.push_secret, scope)
                assert await store.get(result_key(task_id)) is None, "attempt 2 finished before the fence was asked"
                assert (fenced[0], current[0]) == (401, 200), (fenced, current)
                result = await scheduler.wait(task_id, timeout=180)
            finally:
                reassigner.cancel()
            return home, heir, first, second, result, scheduler.stats.moved
        finally:
            await store.close()

    home, heir, first, second, result, moved = asyncio.run(main())
    assert moved <= 1 and (first.attempt, second.attempt) == (1, 2)  # leengine-control's reassigner may move it
    assert first.push_secret and second.push_secret and first.push_secret != second.push_secret
    assert result is not None and (result.state, result.host, result.attempt) == ("done", heir, 2), (result, tails())
    assert result.image == f"{gate}/{repository}:{commit}"
    held = digest_of(gate, tokens, repository, commit)
    assert held is not None, tails()

    # The zombie's credentials (attempt 1's secret, read before the move): no token, and a real client's push with
    # them is refused. (The heir's are spent too: its result is written.)
    for secret in (first.push_secret, second.push_secret):
        status, answer = tokens.token(f"build${task_id}", secret, f"repository:{repository}:pull,push")
        assert status == 401, answer
    image = oci_layout(tmp_path / "zombie-image", "what a zombie would push")
    pushed = subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                             "--dest-creds", f"build${task_id}:{first.push_secret}", f"oci:{image}:latest",
                             f"docker://{gate}/{repository}:{commit}"], capture_output=True, text=True, timeout=120)
    assert pushed.returncode != 0
    assert "401" in pushed.stderr or "unauthorized" in pushed.stderr.lower(), pushed.stderr
    # The zombie's own push path (BuildahBuilder: the authfile, buildah push) with its credentials: refused.
    zombie = BuildahBuilder(BuildahConfig("zombie", tmp_path / "repos", tmp_path / "zombie", gate,
                                          storage=tmp_path / "zombie-storage"))
    with pytest.raises(BuildFailed) as refused:
        asyncio.run(zombie.build(BuildRequest("shop", "shop", commit, f"build${task_id}", first.push_secret),
                                 lambda _: None))
    assert refused.value.step == "push", refused.value
    assert "unauthorized" in str(refused.value).lower() or "401" in str(refused.value), refused.value
    assert not list((tmp_path / "zombie").glob("**/auth.json"))  # the authfile lives outside the workdir, and went

    # Resume the zombie: it must not change the tag nor write a second result.
    with_signal(procs[home], signal.SIGCONT)
    deadline = time.monotonic() + 90
    zombie_log = logs[home]
    while not any(word in zombie_log.read_text(errors="replace")
                  for word in ("build-cancelled", "build-dropped", "build-finished")):
        assert procs[home].poll() is None, f"the resumed agent died\n{tails()}"
        assert time.monotonic() < deadline, f"the resumed agent never ended its build\n{tails()}"
        time.sleep(0.5)
    outcome = zombie_log.read_text(errors="replace")
    print(f"zombie ({home}) outcome:", [line for line in outcome.splitlines() if "build-" in line][-3:])
    assert "build-finished" not in outcome, tails()  # no result from attempt 1

    async def results() -> list[Result]:
        store = await open_store(etcd.endpoint, etcd.client_tls)
        try:
            return [Result.from_bytes(kv.value) for kv in (await store.range(RESULTS)).kvs]
        finally:
            await store.close()

    assert [(r.task, r.host, r.attempt, r.state) for r in asyncio.run(results())] == [(task_id, heir, 2, "done")]
    assert digest_of(gate, tokens, repository, commit) == held
    assert tags_of(gate, tokens, repository) == [commit]
