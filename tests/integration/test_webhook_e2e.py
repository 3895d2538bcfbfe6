"""Builds on push, end to end: GitLab's Push Hook POSTed to a real ``leengine-control --http-address`` on real etcd.

A person binds a GitLab project's branch to an app with ``leengine app hook`` (Master of the app); the test
then plays GitLab: real HTTP POSTs of GitLab's Push Hook JSON (object_kind, ref, before, after, checkout_sha,
project.path_with_namespace and git_http_url, commits, user_username) with the secret in ``X-Gitlab-Token``.
A build agent (``node.build_agent.BuildAgent``, the real agent code over the real etcd, with a Builder that
takes 3 s and records what it built) builds the queued tasks.

Deliveries: a push, 5 duplicate deliveries of it at once, a newer push (cancels the older build, which the
agent stops), the control service SIGKILLed with a delivery in flight (twice: once frozen before it read the
request, once a few milliseconds into it), restarted, the pushes delivered again (5 times each), bad
deliveries (each refused with its status, etcd's revision unchanged). Then: exactly one task claim and one
result per commit, no superseded build completed, and every answer within 1 s (p50 and max printed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.webhooks import branch_key, decode_head
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.logic.build_task import IDS, RESULTS, TASKS, Result
from foundation.ports.builder import BuildOutcome, BuildRequest, StepTiming
from lab.etcd import running_etcd
from lab.kube_mock import KubeApiMock
from lab.processes import freeze
from leengine.etcd_options import open_store
from node.build_agent import BuildAgent, BuildAgentConfig
from tests.integration.test_platform_grpc import _free_port, _script

pytestmark = pytest.mark.etcd

TOKENS = {"ops": "ops-token-0123456789", "mia": "mia-token-0123456789abcdef", "dev": "dev-token-0123456789abcd"}
PROJECT, APP, BRANCH = "team/shop", "shop", "main"
COMMITS = [f"{n:x}" * 40 for n in range(1, 6)]  # 1111…, 2222…, …
BUILD_SECONDS = 3.0


def push(commit: str | None, before: str) -> dict[str, Any]:
    """GitLab's Push Hook body (docs.gitlab.com, "Webhook events", push events)."""
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": commit or "0" * 40,
        "ref": f"refs/heads/{BRANCH}", "ref_protected": True, "checkout_sha": commit, "message": None,
        "user_id": 4, "user_name": "Mia", "user_username": "mia", "user_email": "", "user_avatar": "",
        "project_id": 15,
        "project": {"id": 15, "name": "Shop", "description": "", "web_url": f"http://gitlab.example/{PROJECT}",
                    "avatar_url": None, "git_ssh_url": f"git@gitlab.example:{PROJECT}.git",
                    "git_http_url": f"http://gitlab.example/{PROJECT}.git", "namespace": "team",
                    "visibility_level": 0, "path_with_namespace": PROJECT, "default_branch": BRANCH,
                    "ci_config_path": None, "homepage": f"http://gitlab.example/{PROJECT}",
                    "url": f"git@gitlab.example:{PROJECT}.git", "ssh_url": f"git@gitlab.example:{PROJECT}.git",
                    "http_url": f"http://gitlab.example/{PROJECT}.git"},
        "commits": [{"id": commit, "message": "a change\n", "title": "a change",
                     "timestamp": "2026-11-30T10:00:00+00:00", "url": f"http://gitlab.example/{PROJECT}/-/commit/"
                     f"{commit}", "author": {"name": "Mia", "email": "mia@example.com"}, "added": [],
                     "modified": ["app.py"], "removed": []}] if commit else [],
        "total_commits_count": 1 if commit else 0, "push_options": {},
        "repository": {"name": "Shop", "url": f"git@gitlab.example:{PROJECT}.git", "description": "",
                       "homepage": f"http://gitlab.example/{PROJECT}",
                       "git_http_url": f"http://gitlab.example/{PROJECT}.git",
                       "git_ssh_url": f"git@gitlab.example:{PROJECT}.git", "visibility_level": 0},
    }


class SlowBuilder:
    """A Builder that takes BUILD_SECONDS and records each build it started and finished (cancelled: not)."""

    host = "build-1"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []

    async def build(self, request: BuildRequest, log: Any) -> BuildOutcome:
        self.started.append(request.commit)
        await asyncio.sleep(BUILD_SECONDS)
        self.finished.append(request.commit)
        return BuildOutcome(f"registry.local/{APP}/{APP}:{request.commit}",
                            (StepTiming("compile", BUILD_SECONDS),), False)


def test_push_hooks_build_each_commit_once_through_duplicates_and_a_killed_receiver(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['ops']} ops admin\n{TOKENS['mia']} mia user\n{TOKENS['dev']} dev user\n")
    tokens.chmod(0o600)
    for name, token in TOKENS.items():
        (tmp_path / f"{name}.token").write_text(token + "\n")
        (tmp_path / f"{name}.token").chmod(0o600)

    with running_etcd() as etcd_server, KubeApiMock() as cell_a, KubeApiMock() as cell_b:
        cells = tmp_path / "cells.yaml"
        cells.write_text(f"cells:\n  cell-a: {{api: '{cell_a.url}'}}\n  cell-b: {{api: '{cell_b.url}'}}\n")
        grpc_port, http_port = _free_port(), _free_port()
        hook_url = f"http://127.0.0.1:{http_port}/hooks/gitlab"
        command = [*_script("leengine-control", "leengine.control_server"), "--tokens", str(tokens),
                   "--etcd", etcd_server.endpoint, *etcd_server.client_args, "--listen", f"127.0.0.1:{grpc_port}",
                   "--http-address", f"127.0.0.1:{http_port}", "--cells", str(cells)]
        procs: list[subprocess.Popen[str]] = []

        def control() -> subprocess.Popen[str]:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(proc)
            return proc

        def leengine(user: str, *args: str, code: int = 0) -> str:
            done = subprocess.run([*_script("leengine", "leengine.cli"), "app", *args, "--control",
                                   f"127.0.0.1:{grpc_port}", "--token-file", str(tmp_path / f"{user}.token"),
                                   "--plaintext"], capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == code, (args, done.stdout, done.stderr)
            return done.stdout + done.stderr

        async def main() -> None:
            store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=5.0)
            builder = SlowBuilder()
            agent = BuildAgent(store, builder, AsyncioRuntime(), BuildAgentConfig("build-1", ttl=5))
            agent_task = asyncio.create_task(agent.run())
            timings: list[float] = []
            answers: list[tuple[str, int, dict[str, Any]]] = []

            async def http_up(limit: float = 60.0) -> None:
                deadline = time.monotonic() + limit
                async with aiohttp.ClientSession() as session:
                    while True:
                        try:
                            async with session.get(f"http://127.0.0.1:{http_port}/hooks/gitlab") as reply:
                                if reply.status == 405:  # served (POST only)
                                    return
                        except aiohttp.ClientError:
                            pass
                        assert time.monotonic() < deadline and procs[-1].poll() is None, "HTTP never came up"
                        await asyncio.sleep(0.2)

            async def deliver(session: aiohttp.ClientSession, body: bytes, *, token: str,
                              content_type: str = "application/json", label: str = "") -> tuple[int, dict]:
                started = time.monotonic()
                async with session.post(hook_url, data=body, headers={
                        "Content-Type": content_type, "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token,
                        "X-Gitlab-Event-UUID": f"uuid-{len(timings)}", "User-Agent": "GitLab/17.5.0"}) as reply:
                    answer = await reply.json(content_type=None)
                    timings.append(time.monotonic() - started)
                    answers.append((label, reply.status, answer))
                    return reply.status, answer

            async def ids() -> list[str]:
                return sorted(kv.key.removeprefix(IDS) for kv in (await store.range(IDS)).kvs)

            async def results() -> dict[str, Result]:
                return {kv.key.removeprefix(RESULTS): Result.from_bytes(kv.value)
                        for kv in (await store.range(RESULTS)).kvs}

            control()
            await http_up()
            await asyncio.to_thread(leengine, "mia", "create", APP, "--cell", "cell-a", "--cell", "cell-b")
            await asyncio.to_thread(leengine, "mia", "members", "add", APP, "dev", "developer")
            refused = await asyncio.to_thread(leengine, "dev", "hook", APP, "--project", PROJECT, code=1)
            assert "PERMISSION_DENIED" in refused and "hook.manage needs master" in refused, refused
            bound = json.loads(await asyncio.to_thread(leengine, "mia", "hook", APP, "--project", PROJECT,
                                                       "--branch", BRANCH, "--json"))
            secret = bound["secret"]
            assert bound["url"] == hook_url and len(secret) == 48 and bound["binding"]["project"] == PROJECT
            text = await asyncio.to_thread(leengine, "mia", "hook", APP, "--project", PROJECT, "--branch", BRANCH)
            assert hook_url in text and "Secret token:" in text
            secret = text.split("Secret token:")[1].split()[0]  # binding again rotated it: the printed one holds
            c1, c2, c3, c4, c5 = COMMITS

            async with aiohttp.ClientSession() as session:
                # A push, then five duplicate deliveries of it at once: one task.
                status, answer = await deliver(session, json.dumps(push(c1, "0" * 40)).encode(), token=secret)
                assert (status, answer["outcome"]) == (200, "queued"), answer
                dups = await asyncio.gather(*(deliver(session, json.dumps(push(c1, "0" * 40)).encode(),
                                                      token=secret) for _ in range(5)))
                assert [(s, a["outcome"]) for s, a in dups] == [(200, "duplicate")] * 5
                assert await ids() == [f"{APP}@{c1}"]
                await asyncio.sleep(1.0)  # the agent is building c1
                # A newer push cancels the build of c1, which the agent stops.
                status, answer = await deliver(session, json.dumps(push(c2, c1)).encode(), token=secret)
                assert (status, answer["outcome"], answer["cancelled"]) == (200, "queued", [f"{APP}@{c1}"]), answer

                # Bad deliveries: each refused with its status, nothing written (once the agent runs c2: quiet).
                deadline = time.monotonic() + 10
                while c2 not in builder.started:
                    assert time.monotonic() < deadline, builder.started
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                revision = (await store.range("/never/")).revision
                good = json.dumps(push(c3, c2)).encode()
                bad = [(401, good, "wrong-secret", "application/json"),
                       (404, json.dumps({**push(c3, c2), "project": {"path_with_namespace": "team/other"}}).encode(),
                        secret, "application/json"),
                       (400, json.dumps({**push(c3, c2), "checkout_sha": c3[:12]}).encode(), secret,
                        "application/json"),
                       (400, json.dumps({**push(c3, c2), "checkout_sha": "HEAD"}).encode(), secret,
                        "application/json"),
                       (400, b'{"object_kind": "push", ', secret, "application/json"),
                       (415, good, secret, "application/x-www-form-urlencoded"),
                       (413, b"{" + b" " * (2 << 20) + b"}", secret, "application/json")]
                for expected, body, token, content_type in bad:
                    status, answer = await deliver(session, body, token=token, content_type=content_type,
                                                   label=f"bad {expected}")
                    assert status == expected, (expected, answer)
                status, answer = await deliver(session, json.dumps(push(None, c2)).encode(), token=secret)
                assert (status, answer["outcome"]) == (200, "ignored")  # the branch deleted
                assert (await store.range("/never/")).revision == revision, "a refused delivery wrote to etcd"

            # The receiver killed with a delivery in flight: frozen before it read the request, then killed.
            async def killed_mid_delivery(body: bytes, delay: float | None) -> None:
                victim = procs[-1]
                if delay is None:
                    assert victim.poll() is None  # alive and not reaped: its pid is still its own
                    freeze(victim.pid)
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                    flight = asyncio.create_task(session.post(hook_url, data=body, headers={
                        "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
                        "X-Gitlab-Token": secret}))
                    await asyncio.sleep(0.3 if delay is None else delay)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(timeout=10)
                    try:
                        reply = await flight
                        reply.release()
                    except (TimeoutError, aiohttp.ClientError):
                        pass  # no answer: GitLab would deliver it again
                control()
                await http_up()

            await killed_mid_delivery(json.dumps(push(c3, c2)).encode(), None)
            await killed_mid_delivery(json.dumps(push(c4, c3)).encode(), 0.004)
            async with aiohttp.ClientSession() as session:
                for commit, before in ((c3, c2), (c4, c3)):  # GitLab delivers both again, five times each
                    again = [await deliver(session, json.dumps(push(commit, before)).encode(), token=secret)
                             for _ in range(5)]
                    assert all(s == 200 for s, _ in again), again
                    assert [a["outcome"] for _, a in again].count("queued") <= 1, again
                    print(f"\nredelivered {commit[:4]}… after the kill: {[a['outcome'] for _, a in again]}")
                status, answer = await deliver(session, json.dumps(push(c5, c4)).encode(), token=secret)
                assert (status, answer["outcome"]) == (200, "queued"), answer

            deadline = time.monotonic() + 30
            while f"{APP}@{c5}" not in await results():
                assert time.monotonic() < deadline, await results()
                await asyncio.sleep(0.2)
            claimed, done = await ids(), await results()
            assert claimed == sorted(f"{APP}@{c}" for c in COMMITS), claimed  # one claim per commit
            assert sorted(done) == claimed  # one result per commit
            assert (await store.range(TASKS)).kvs == ()
            assert done[f"{APP}@{c5}"].state == "done"
            for commit in (c1, c2, c3, c4):  # each superseded: cancelled unless it finished first
                assert done[f"{APP}@{commit}"].state in ("cancelled", "done"), done[f"{APP}@{commit}"]
            assert done[f"{APP}@{c1}"].state == "cancelled" and c1 not in builder.finished
            assert agent.stats.cancelled >= 1
            assert all(builder.finished.count(c) <= 1 for c in COMMITS)
            assert [c for c in builder.finished if done[f"{APP}@{c}"].state == "cancelled"] == []
            head = decode_head((await store.range(branch_key(APP, BRANCH))).kvs[0])
            assert head.commit == c5

            p50, worst = statistics.median(timings), max(timings)
            states = ", ".join(f"{c[:4]}…={done[APP + '@' + c].state}" for c in COMMITS)
            print(f"\nwebhook answers: {len(timings)} deliveries, p50 {p50 * 1000:.1f} ms, "
                  f"max {worst * 1000:.1f} ms; results: {states}")
            assert worst < 1.0, f"an answer took {worst:.3f} s"
            agent_task.cancel()
            procs[-1].send_signal(signal.SIGTERM)
            output, _ = procs[-1].communicate(timeout=30)
            assert procs[-1].returncode == 0, output
            await store.close()

        try:
            asyncio.run(asyncio.wait_for(main(), 300))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
