"""The SLB path under endpoint churn: propagation time, throughput, and the confd pattern beside it.

Everything is started here (root only): a private etcd, four back-end pods in network
namespaces (``lab.slb``: veth pairs, 198.19.100-103.2, asyncio HTTP servers answering
their own name), the real ``leengine-slb-agent`` daemon with its private Nginx (lua module),
and slb-core (admin principal) writing to etcd. Load is ``wrk`` on loopback.

1. **Propagation**: ``--changes`` times, the domain's only upstream moves to another pod
   through ``SlbCore.set_upstreams``; we time "write starts → a fresh request through Nginx
   is answered by the new pod", polling with a new connection every ~1 ms. Target p99 <= 100 ms.
2. **Throughput under churn**: wrk (keep-alive, 2 threads, 50 connections) for ``--seconds``
   against our Nginx with a static config, and again while an upstream change is written
   every 100 ms; interleaved rounds (every other one in reverse order), medians.
   Ratio churn / static, target >= 0.95, zero errors.
3. **The confd pattern** (the baseline): a separate plain Nginx whose upstream servers are
   written into its config file; on every change the whole file is rendered, checked
   (``nginx -t``) and Nginx reloaded (``nginx -s reload``), exactly confd's
   ``check_cmd`` + ``reload_cmd``; 10 changes/s for the same time; ratio against the same
   Nginx with a static config, reloads and socket errors beside ours.

Reloads are counted from each Nginx's error log ("signal 1 (SIGHUP) received").
Only ratios are the point; absolute rates are this machine's (2 CPUs shared by wrk, Nginx,
the back-ends, etcd and the agent).

Run: .venv/bin/python -m bench.slb [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import median, save, show
from control.auth import Principal
from control.slb_core import SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.etcd_store import EtcdStore
from foundation.adapters.nginx_proxy import find_nginx
from foundation.logic.slb_domain import Upstream
from lab.etcd import running_etcd
from lab.nginx import free_port, make_prefix
from lab.slb import AgentProcess, PodBackends, Wrk, WrkResult, reconfigurations, stop_process

ADMIN = Principal("ops", "admin")
GROUP = "bench"
APP = "app.example.com"
TOKEN = f"{os.getpid() % 0x10000:04x}"


async def fetch(port: int, host: str) -> bytes:
    """One GET on a fresh connection; the body (empty on any error)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return b""
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 2)
        head, _, body = data.partition(b"\r\n\r\n")
        return body if head.startswith(b"HTTP/1.1 200") else b""
    except (OSError, TimeoutError):
        return b""
    finally:
        writer.close()


async def propagation(core: SlbCore, pods: PodBackends, port: int, changes: int) -> list[float]:
    latencies = []
    for i in range(changes):
        pod = pods.pods[(i + 1) % len(pods.pods)]
        want = pod.name.encode() + b" "
        started = time.perf_counter()
        await core.set_upstreams(ADMIN, GROUP, APP, [str(pod.upstream)])
        deadline = started + 5
        while not (await fetch(port, APP)).startswith(want):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"change {i}: {pod.name} not serving after 5 s")
            await asyncio.sleep(0.001)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return latencies


async def load(port: int, seconds: float, change=None, every: float = 0.1) -> tuple[WrkResult, int]:
    """wrk for ``seconds``; meanwhile ``await change(i)`` every ``every`` s when given. (result, changes)."""
    wrk = Wrk(port, [APP], threads=2, connections=50, duration=seconds)
    done = asyncio.create_task(asyncio.to_thread(wrk.wait))
    made = 0
    try:
        if change is not None:
            start = time.monotonic()
            while not done.done() and time.monotonic() - start < seconds:
                await change(made)
                made += 1
                next_at = start + made * every
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        return await done, made
    finally:
        wrk.close()


# --------------------------------------------------------------------------- the confd pattern

CONFD_CONF = """\
daemon off;
master_process on;
worker_processes 2;
{user}
pid logs/nginx.pid;
error_log logs/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    upstream app {{
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {host};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class ConfdNginx:
    """A plain Nginx driven the confd way: render the whole file, ``nginx -t``, ``nginx -s reload``."""

    def __init__(self, servers: list[Upstream]) -> None:
        self.nginx = find_nginx()
        self.prefix = make_prefix()
        self.port = free_port()
        for sub in ("conf", "logs", "temp"):
            (self.prefix / sub).mkdir()
        shutil.chown(self.prefix / "temp", "www-data")
        self.render(servers)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while not (self.prefix / "logs" / "nginx.pid").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"confd nginx did not start: {(self.prefix / 'logs' / 'error.log').read_text()}")
            time.sleep(0.02)
        time.sleep(0.2)

    def command(self, *extra: str) -> list[str]:
        return [self.nginx, "-p", f"{self.prefix}/", "-c", "conf/nginx.conf", *extra]

    def render(self, servers: list[Upstream]) -> None:
        text = CONFD_CONF.format(user="user www-data;" if os.geteuid() == 0 else "", port=self.port, host=APP,
                                 servers="\n".join(f"        server {s};" for s in servers))
        tmp = self.prefix / "conf" / "nginx.conf.tmp"
        tmp.write_text(text)
        tmp.rename(self.prefix / "conf" / "nginx.conf")

    def change(self, servers: list[Upstream]) -> None:
        self.render(servers)
        subprocess.run(self.command("-t", "-q"), check=True, capture_output=True)  # confd's check_cmd
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True)  # confd's reload_cmd

    def reloads(self) -> int:
        return reconfigurations(self.prefix)

    def close(self) -> None:
        stop_process(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)


# --------------------------------------------------------------------------- the run


def summary(results: list[tuple[WrkResult, int, int]]) -> dict:
    return {"rps": median([r.rps for r, _, _ in results]), "rps_rounds": [r.rps for r, _, _ in results],
            "requests": sum(r.requests for r, _, _ in results),
            "socket_errors": sum(r.socket_errors for r, _, _ in results),
            "non2xx": sum(r.non2xx for r, _, _ in results), "changes": sum(c for _, c, _ in results),
            "reloads": sum(n for _, _, n in results)}


async def bench(args: argparse.Namespace, etcd_endpoint: str, pods: PodBackends, agent: AgentProcess,
                confd: ConfdNginx, port: int) -> dict:
    store = await EtcdStore.open(etcd_endpoint)
    core = SlbCore(store, AsyncioRuntime())
    ups = [pod.upstream for pod in pods.pods]
    pools = pods.pools(f"bench{TOKEN}")  # upstreams must be pod addresses of a registered pool
    try:
        for pool in pools:
            await store.put(pool.key, pool.to_bytes())
        await core.create_group(ADMIN, GROUP)
        await core.put_domain(ADMIN, {"name": APP, "group": GROUP, "listen": port, "upstreams": [str(ups[0])]})
        deadline = time.monotonic() + 20
        while not (await fetch(port, APP)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{APP} not served:\n{agent.log_tail()}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

        reloads_before = agent.reconfigurations()
        latencies = await propagation(core, pods, port, args.changes)
        quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
        prop = {"changes": len(latencies), "p50_ms": statistics.median(latencies), "p99_ms": quantiles[98],
                "max_ms": max(latencies), "reloads": agent.reconfigurations() - reloads_before}

        async def ours_change(i: int) -> None:
            await core.set_upstreams(ADMIN, GROUP, APP, [str(ups[i % 4]), str(ups[(i + 1) % 4])])

        async def confd_change(i: int) -> None:
            await asyncio.to_thread(confd.change, [ups[i % 4], ups[(i + 1) % 4]])

        await core.set_upstreams(ADMIN, GROUP, APP, [str(u) for u in ups[:2]])
        await asyncio.to_thread(confd.change, ups[:2])
        await asyncio.sleep(0.5)
        runs: dict[str, list[tuple[WrkResult, int, int]]] = {k: [] for k in
                                                             ("ours static", "ours churn", "confd static",
                                                              "confd churn")}
        variants = [("ours static", port, None, agent.reconfigurations),
                    ("ours churn", port, ours_change, agent.reconfigurations),
                    ("confd static", confd.port, None, confd.reloads),
                    ("confd churn", confd.port, confd_change, confd.reloads)]
        for round_ in range(args.rounds):  # every other round backwards: order effects cancel out
            for name, target, change, reloads in variants if round_ % 2 == 0 else variants[::-1]:
                before = reloads()
                result, made = await load(target, args.seconds, change)
                await asyncio.sleep(0.3)
                runs[name].append((result, made, reloads() - before))
                await asyncio.sleep(0.5)
        return {"propagation": prop, "latencies_ms": latencies,
                "throughput": {name: summary(r) for name, r in runs.items()}}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer changes, shorter and fewer rounds")
    parser.add_argument("--changes", type=int, default=None, help="propagation samples (default 100)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per wrk run (default 8)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    args.changes = args.changes or (30 if args.quick else 100)
    args.seconds = args.seconds or (3 if args.quick else 8)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if os.geteuid() != 0:
        raise SystemExit("bench.slb needs root (network namespaces, nginx workers as www-data)")

    with running_etcd() as etcd:
        pods = PodBackends(4, tag=f"lb{TOKEN}", subnet_base=100)
        agent = AgentProcess(group=GROUP, host="bench-1", etcd=etcd.endpoint)
        confd = None
        try:
            agent.start()
            confd = ConfdNginx([pod.upstream for pod in pods.pods[:2]])
            data = asyncio.run(bench(args, etcd.endpoint, pods, agent, confd, free_port()))
        finally:
            if confd is not None:
                confd.close()
            agent.close()
            pods.close()

    t = data["throughput"]
    ours_ratio = t["ours churn"]["rps"] / t["ours static"]["rps"]
    confd_ratio = t["confd churn"]["rps"] / t["confd static"]["rps"]
    data["ratios"] = {"ours_churn_over_static": ours_ratio, "confd_churn_over_static": confd_ratio}
    data["settings"] = {"changes": args.changes, "seconds": args.seconds, "rounds": args.rounds,
                        "change_every_s": 0.1, "wrk": "2 threads, 50 connections, keep-alive"}
    path = save("slb", data)
    p = data["propagation"]
    show("SLB propagation: set_upstreams -> new pod answering (ms)", ["changes", "p50", "p99", "max", "reloads"],
         [[p["changes"], p["p50_ms"], p["p99_ms"], p["max_ms"], p["reloads"]]])
    rows = []
    for name in ("ours static", "ours churn", "confd static", "confd churn"):
        s = t[name]
        base = t["ours static" if name.startswith("ours") else "confd static"]["rps"]
        rows.append([name, s["rps"], s["rps"] / base, s["changes"], s["reloads"], s["socket_errors"], s["non2xx"]])
    show(f"wrk under endpoint churn (10 changes/s, {args.seconds:g} s x {args.rounds} rounds)",
         ["variant", "req/s (median)", "ratio", "changes", "reloads", "socket errors", "non-2xx"], rows)
    print(f"saved {Path(path)}")


if __name__ == "__main__":
    main()
