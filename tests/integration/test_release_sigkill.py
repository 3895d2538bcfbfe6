"""A gray release survives a SIGKILLed control service: real etcd, two Kubernetes API mocks, real leengine-control.

The test plays the Nginx hosts: it writes their traffic records (``foundation.logic.slb_traffic``,
the SLB agents' format) into etcd every 0.2 s, two hosts whose cumulative counts per version
grow with the domain's traffic shares as slb-core holds them (``/slb/web/shares/…``). A person
drives the release with ``leengine app``. The control service is SIGKILLed once the release's
second step (50 %) has begun and baked a little; a new one started on the same etcd and Cells
must go on from the recorded step (the shares never fall back to 10 %) and complete: the old
version's controllers are gone in both Cells, the new one's stay, and the activity log holds the
user's start and the controller's steps and completion.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from control.activity import ACTIVITY
from control.activity import decode as decode_activity
from control.auth import Principal
from control.releases import decode_release, release_key
from control.slb_core import SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.k8s_workloads import KubeWorkloads
from foundation.logic.slb_shares import decode_shares, shares_key
from foundation.logic.slb_traffic import HostTraffic, VersionCounts, encode_traffic, traffic_key
from lab.etcd import running_etcd
from lab.kube_mock import KubeApiMock
from leengine.etcd_options import open_store
from tests.integration.test_platform_grpc import _free_port, _script

pytestmark = pytest.mark.etcd

TOKENS = {"ops": "ops-token-0123456789", "carol": "carol-token-0123456789abc"}
IMAGE = "registry.local:5000/shop:" + "a" * 40
IMAGE2 = "registry.local:5000/shop:" + "b" * 40
GROUP, DOMAIN, APP = "web", "shop.example.com", "shop"
HOSTS = ("nginx-1", "nginx-2")


def test_a_release_continues_from_its_recorded_step_after_sigkill(tmp_path: Path, tls_certs) -> None:
    certs = tls_certs
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKENS['ops']} ops admin\n{TOKENS['carol']} carol user\n")
    tokens.chmod(0o600)
    for name, token in TOKENS.items():
        (tmp_path / f"{name}.token").write_text(token + "\n")
        (tmp_path / f"{name}.token").chmod(0o600)

    with running_etcd(certs=certs) as etcd_server, KubeApiMock() as cell_a, KubeApiMock() as cell_b:
        cells = tmp_path / "cells.yaml"
        cells.write_text(f"cells:\n  cell-a: {{api: '{cell_a.url}'}}\n  cell-b: {{api: '{cell_b.url}'}}\n")
        port = _free_port()
        command = [*_script("leengine-control", "leengine.control_server"), "--tokens", str(tokens),
                   "--etcd", etcd_server.endpoint, *etcd_server.client_args, "--listen", f"127.0.0.1:{port}",
                   "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--cells", str(cells),
                   "--reconcile-seconds", "1"]
        procs: list[subprocess.Popen[str]] = []

        def control() -> subprocess.Popen[str]:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(proc)
            return proc

        def leengine(user: str, *args: str) -> str:
            done = subprocess.run([*_script("leengine", "leengine.cli"), "app", *args, "--control",
                                   f"127.0.0.1:{port}", "--token-file", str(tmp_path / f"{user}.token"),
                                   "--control-ca", str(certs.ca_cert)],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
            return done.stdout

        def wait_serving(proc: subprocess.Popen[str]) -> None:
            deadline = time.monotonic() + 60
            while True:
                probe = subprocess.run([*_script("leengine", "leengine.cli"), "app", "list", "--control",
                                        f"127.0.0.1:{port}", "--token-file", str(tmp_path / "carol.token"),
                                        "--control-ca", str(certs.ca_cert), "--timeout", "2"],
                                       capture_output=True, text=True, timeout=60, check=False)
                if probe.returncode == 0:
                    return
                assert proc.poll() is None and time.monotonic() < deadline, (probe.stderr, proc.poll())
                time.sleep(0.3)

        async def main() -> None:
            store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=5.0)
            runtime = AsyncioRuntime()
            ops = Principal("ops", "admin")
            core = SlbCore(store, runtime)
            await core.create_group(ops, GROUP)
            await core.put_domain(ops, {"name": DOMAIN, "group": GROUP, "owner": "carol",
                                        "locations": [{"path": "/"}]})
            counts = {h: {"v1": [0, 0, 0.0], "v2": [0, 0, 0.0]} for h in HOSTS}

            async def shares() -> dict[str, int] | None:
                kv = await store.get(shares_key(GROUP, DOMAIN))
                return decode_shares(kv.value) if kv is not None else None

            async def release() -> object:
                kv = await store.get(release_key(APP))
                return decode_release(kv) if kv is not None else None

            async def feed() -> None:
                """Two Nginx hosts, 50 requests per 0.2 s each, split by the shares; v2 a little slower, no errors."""
                while True:
                    await asyncio.sleep(0.2)
                    now = await shares() or {}
                    for host in HOSTS:
                        for version, latency in (("v1", 0.010), ("v2", 0.012)):
                            n = now.get(version, 0) // 2
                            c = counts[host][version]
                            c[0] += n
                            c[2] += n * latency
                        record = HostTraffic(host, 0, time.monotonic(), {DOMAIN: {
                            v: VersionCounts(c[0], c[1], c[2]) for v, c in counts[host].items()}})
                        await store.put(traffic_key(GROUP, host), encode_traffic(record))

            async def until(what, predicate, limit: float = 60.0):
                deadline = time.monotonic() + limit
                while True:
                    value = await what()
                    if predicate(value):
                        return value
                    assert time.monotonic() < deadline, f"not reached in {limit} s: {value}"
                    await asyncio.sleep(0.1)

            async def controllers(mock: KubeApiMock) -> list[str]:
                workloads = KubeWorkloads(host=mock.url, timeout=5)
                try:
                    return sorted(c.name for c in await workloads.list_controllers(APP))
                finally:
                    await workloads.close()

            first = control()
            await asyncio.to_thread(wait_serving, first)
            await asyncio.to_thread(leengine, "carol", "create", APP, "--cell", "cell-a", "--cell", "cell-b",
                                    "--domain", f"{GROUP}/{DOMAIN}")
            await asyncio.to_thread(leengine, "carol", "deploy", APP, "--image", IMAGE, "--replicas", "1")
            await asyncio.to_thread(leengine, "carol", "deploy", APP, "--image", IMAGE2)
            assert await shares() == {"v1": 100, "v2": 0}  # deployed, not released: no traffic for v2
            feeder = asyncio.create_task(feed())
            started = json.loads(await asyncio.to_thread(
                leengine, "carol", "release", APP, "v2", "--steps", "10,50,100", "--bake", "3", "--check", "0.5",
                "--min-requests", "5", "--max-latency-ratio", "2", "--json"))
            assert started["release"]["state"] == "running" and started["shares"] == {"v1": 90, "v2": 10}

            at_kill = await until(release, lambda r: r.step == 1 and r.baked >= 0.5, limit=30)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            at_kill = await release()  # what the record says once nothing writes it any more
            assert at_kill.state == "running" and at_kill.step == 1, at_kill
            assert await shares() == {"v1": 50, "v2": 50}

            second = control()
            seen: list[dict[str, int] | None] = []

            async def watch_shares() -> None:
                while True:
                    seen.append(await shares())
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch_shares())
            await asyncio.to_thread(wait_serving, second)
            done = await until(release, lambda r: r.state == "completed", limit=60)
            watcher.cancel()
            feeder.cancel()
            assert done.step == 2 and done.checks > at_kill.checks and done.bad == 0
            assert all(s is None or s.get("v2", 100) >= 50 for s in seen), "a share fell back below 50 %"
            assert await shares() == {"v2": 100}
            assert await controllers(cell_a) == [f"{APP}-v2"] and await controllers(cell_b) == [f"{APP}-v2"]
            shown = await asyncio.to_thread(leengine, "carol", "show", APP)
            assert "release of v2 over v1: completed" in shown
            records = [decode_activity(kv) for kv in (await store.range(f"{ACTIVITY}app/{APP}/")).kvs]
            actions = [(r.action, r.who) for r in reversed(records)]
            assert ("release.start", "carol") in actions
            assert actions.count(("release.step", "release-controller")) == 2
            assert actions[-1] == ("release.complete", "release-controller")
            second.send_signal(signal.SIGTERM)
            output, _ = second.communicate(timeout=30)
            assert second.returncode == 0, output
            await store.close()

        try:
            asyncio.run(asyncio.wait_for(main(), 240))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
