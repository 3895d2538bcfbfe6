"""What a config change costs a real Nginx as domains grow, and what an in-place upstream change costs.

For each size (100, 1,000, 5,000 domains by default) a fresh private Nginx
(``lab.nginx.running_nginx``, 2 workers, lua module) gets that many
simple domains in one apply (all on one loopback port, server_name-routed, one
upstream each). Then, ``--rounds`` times, one domain's location changes
(read_timeout), which needs a reload, and we time:

* ``test``: ``NginxProxy.test`` (scratch tree + bind probe + ``nginx -t``);
* ``apply``: ``NginxProxy.apply`` (write, ``nginx -t``, SIGHUP, confirmation that the
  new generation answers and every old worker is shutting down);
* ``nginx -t``: the bare ``nginx -t -q`` of the live tree, so ``apply - nginx -t``
  is the reload + confirmation alone;
* ``apply w/o -t``: the change back with ``retest_on_apply=False`` (the master's own
  parse at reload is the only check; a refusal is caught from its ``[emerg]``).

``bulk apply`` (all domains at once into an empty Nginx) also creates one file per
domain, which on this machine's disk is most of it at 5,000.

A least-squares line through the medians gives ``base + per_domain * domains`` for
each, the shape of the sim Proxy's cost model (``sim/adapters/proxy.py``).

Upstream latency: on the smallest and the largest size, ``--changes`` times, one
domain's only server flips between two loopback back-ends through
``set_upstreams``; we time the call alone and "call → first proxied answer from the
new back-end" (polling through Nginx on a keep-alive connection). No reload
happens (checked). Absolute times are this machine's; the ratios are the point.

Run: .venv/bin/python -m bench.nginx_reload_curve [--sizes 100,1000,5000] [--rounds 3] [--changes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import http.server
import statistics
import subprocess
import time

from bench.common import median, save, show
from foundation.adapters.nginx_proxy import NginxProxy, find_nginx
from foundation.logic.slb_domain import Domain
from lab.nginx import LoopbackBackend, free_port, running_nginx

Backend = LoopbackBackend


def make_domain(i: int, port: int, backend: Backend, read_timeout: int = 60) -> Domain:
    return Domain.parse({"name": f"d{i}.bench.example", "group": "bench", "owner": "bench", "listen": port,
                         "locations": [{"path": "/", "read_timeout": read_timeout,
                                        "set_headers": {"X-Bench": str(i)}}],
                         "upstreams": [f"127.0.0.1:{backend.port}"]})


def bare_nginx_t(proxy: NginxProxy) -> float:
    started = time.perf_counter()
    subprocess.run([find_nginx(), "-t", "-q", "-p", f"{proxy.prefix}/", "-c", "conf/nginx.conf"], check=True,
                   capture_output=True)
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def upstream_latency(proxy: NginxProxy, port: int, name: str, a: Backend, b: Backend,
                           changes: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    calls, serves, polls = [], [], []
    reloads = await proxy.reloads()
    try:
        for n in range(changes):
            target = b if n % 2 == 0 else a
            started = time.perf_counter()
            await proxy.set_upstreams(name, (target.upstream,))
            called = time.perf_counter()
            count = 0
            while True:  # blocking on purpose: nothing else runs on this loop
                count += 1
                conn.request("GET", "/", headers={"Host": name})
                resp = conn.getresponse()
                if resp.read() == str(target.port).encode():
                    break
            serves.append(time.perf_counter() - started)
            calls.append(called - started)
            polls.append(count)
    finally:
        conn.close()
    assert await proxy.reloads() == reloads, "an upstream change reloaded nginx"
    ms = 1000.0
    return {"changes": changes, "call_ms_median": median(calls) * ms, "call_ms_p99": percentile(calls, 0.99) * ms,
            "serve_ms_median": median(serves) * ms, "serve_ms_p99": percentile(serves, 0.99) * ms,
            "polls_max": max(polls)}


async def one_size(domains: int, rounds: int, changes: int, with_upstreams: bool) -> dict:
    a, b = Backend(), Backend()
    port = free_port()
    try:
        async with running_nginx(confirm_timeout=60.0) as proxy:
            started = time.perf_counter()
            await proxy.apply({f"d{i}.bench.example": make_domain(i, port, a) for i in range(domains)})
            bulk = time.perf_counter() - started
            tests, applies, lean, bare = [], [], [], []
            for r in range(rounds):
                change = {"d0.bench.example": make_domain(0, port, a, read_timeout=30 + r)}
                t0 = time.perf_counter()
                error = await proxy.test(change)
                t1 = time.perf_counter()
                assert error is None, error
                outcome = await proxy.apply(change)
                t2 = time.perf_counter()
                assert outcome.domains == domains
                tests.append(t1 - t0)
                applies.append(t2 - t1)
                bare.append(await asyncio.to_thread(bare_nginx_t, proxy))
                proxy.retest_on_apply = False  # the same change back, without apply's own nginx -t
                t3 = time.perf_counter()
                await proxy.apply({"d0.bench.example": make_domain(0, port, a, read_timeout=60)})
                lean.append(time.perf_counter() - t3)
                proxy.retest_on_apply = True
            result = {"domains": domains, "bulk_apply_s": bulk, "test_s": median(tests), "apply_s": median(applies),
                      "nginx_t_s": median(bare), "reload_confirm_s": median(applies) - median(bare),
                      "apply_no_retest_s": median(lean),
                      "test_plus_apply_s": median(tests) + median(applies), "rounds": rounds,
                      "reloads": await proxy.reloads()}
            if with_upstreams:
                result["upstream"] = await upstream_latency(proxy, port, f"d{domains // 2}.bench.example", a, b,
                                                            changes)
            return result
    finally:
        a.close()
        b.close()


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = base + slope * x``."""
    if len(xs) < 2:
        return ys[0], 0.0
    slope, base = statistics.linear_regression(xs, ys)
    return base, slope


async def main_async(sizes: list[int], rounds: int, changes: int) -> dict:
    results = []
    for n, size in enumerate(sizes):
        results.append(await one_size(size, rounds, changes, with_upstreams=n in (0, len(sizes) - 1)))
    xs = [float(r["domains"]) for r in results]
    model = {}
    for key in ("test_s", "apply_s", "nginx_t_s", "reload_confirm_s", "apply_no_retest_s"):
        base, per = fit(xs, [r[key] for r in results])
        model[key.removesuffix("_s")] = {"base_s": base, "per_domain_s": per}
    return {"sizes": results, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    data = asyncio.run(main_async(sizes, args.rounds, args.changes))
    path = save("nginx_reload_curve", {"workers": 2, **data})
    show("Nginx config change vs domains (median of rounds, seconds)",
         ["domains", "bulk apply", "test()", "apply()", "nginx -t", "reload+confirm", "test+apply",
          "apply w/o -t"],
         [[r["domains"], r["bulk_apply_s"], r["test_s"], r["apply_s"], r["nginx_t_s"], r["reload_confirm_s"],
           r["test_plus_apply_s"], r["apply_no_retest_s"]] for r in data["sizes"]])
    show("In-place upstream change (ms)", ["domains", "call median", "call p99", "serving median", "serving p99"],
         [[r["domains"], r["upstream"]["call_ms_median"], r["upstream"]["call_ms_p99"],
           r["upstream"]["serve_ms_median"], r["upstream"]["serve_ms_p99"]] for r in data["sizes"] if "upstream" in r])
    show("Linear model: base + per_domain x domains", ["cost", "base s", "per domain µs"],
         [[k, v["base_s"], v["per_domain_s"] * 1e6] for k, v in data["model"].items()])
    print(f"saved {path}")


if __name__ == "__main__":
    main()
