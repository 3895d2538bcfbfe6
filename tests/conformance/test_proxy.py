"""The Proxy port's conformance suite: the same test bodies against a private Nginx and the sim proxy.

``proxy_harness`` runs ``async def body(h)`` either on the sim runtime with a ``SimProxy``
or on asyncio with an ``NginxProxy`` started by ``lab.nginx.running_nginx``
on loopback, with back-ends that are tiny HTTP servers answering their own port.
``h.serves(domain)`` is what a request for the domain reaches right now, as a set of
``host:port`` upstreams: for the sim its ``serving()``, for Nginx the answers of a few
requests through it. ``h.split(domain, n)`` counts where ``n`` requests went (sim: its
``pick()``; Nginx: ``n`` requests through it), for the weights. ``h.held_port()`` gives
a port this Proxy refuses to listen on: a socket the test holds (real) or the sim's
``rejects``. Only what the port promises is asserted: e.g. a refused ``apply`` raises
``ProxyError`` (the real adapter's is a ``ReloadFailed`` after a rollback, which counts
reloads; the sim refuses before one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import http.server
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest

from foundation.logic.slb_domain import Domain, Upstream
from foundation.ports.proxy import ProxyError, SavedState
from lab.nginx import LoopbackBackend, free_port, running_nginx
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime

REQUESTS = 8  # per serves(): enough for round-robin over three back-ends to show each
# How far a back-end's share of requests may be from its weight's share: each Nginx worker splits
# exactly (smooth weighted round robin), but requests reach the workers unevenly.
SHARE_SLACK = 0.06


@dataclass
class ProxyHarness:
    """What a body gets: the proxy, three back-ends, fresh listen ports, and what serves a domain."""

    kind: str
    proxy: object
    backends: list[Upstream]
    new_port: Callable[[], int]
    _serves: Callable[[str, int], Awaitable[set[str]]]
    held_port: Callable[[], contextlib.AbstractContextManager[int]]
    _split: Callable[[str, int, int], Awaitable[collections.Counter[str]]]
    pause: Callable[[], Awaitable[None]]  # a short wait on the harness's clock
    listen: dict[str, int] = field(default_factory=dict)

    def domain(self, name: str, *servers: Upstream, port: int | None = None) -> Domain:
        listen = self.listen.setdefault(name, port or self.new_port())
        return Domain.parse({"name": name, "group": "web", "owner": "team-a", "listen": listen,
                             "locations": [{"path": "/", "read_timeout": 5}],
                             "upstreams": [str(s) for s in servers]})

    async def serves(self, name: str) -> set[str]:
        return await self._serves(name, self.listen[name])

    async def split(self, name: str, requests: int) -> collections.Counter[str]:
        """``host:port`` -> how many of ``requests`` requests for ``name`` it answered."""
        return await self._split(name, self.listen[name], requests)


# --------------------------------------------------------------------------- sim


class _SimRunner:
    kind = "sim"

    def run(self, body: Callable[[ProxyHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        proxy = SimProxy(runtime, "slb-1")
        ports = itertools.count(18080)

        async def serves(name: str, port: int) -> set[str]:
            return {str(u) for u in proxy.serving(name)}

        async def split(name: str, port: int, requests: int) -> collections.Counter[str]:
            picks = [proxy.pick(name) for _ in range(requests)]
            for upstream in picks:  # the client model's part: each request answered at once
                proxy.answered(name, upstream, 200 if upstream is not None else 503, 0.001)
            return collections.Counter(u.address for u in picks if u is not None)

        @contextlib.contextmanager
        def held_port() -> Iterator[int]:
            port = next(ports)

            def rejects(domain: Domain) -> str | None:
                if domain.listen == port:
                    return f"[emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use)"
                return None

            before, proxy.rejects = proxy.rejects, rejects
            try:
                yield port
            finally:
                proxy.rejects = before

        backends = [Upstream("127.0.0.1", 19000 + i) for i in range(3)]
        harness = ProxyHarness("sim", proxy, backends, lambda: next(ports), serves, held_port, split,
                               lambda: runtime.sleep(0.01))
        runtime.run_until_complete(body(harness), limit=3600)


# --------------------------------------------------------------------------- nginx


_Backend = LoopbackBackend


def _ask(port: int, name: str, requests: int = REQUESTS) -> collections.Counter[str]:
    """Send ``requests`` requests for ``name`` through Nginx; how many each back-end answered."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(requests):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": name})
            resp = conn.getresponse()
            text = resp.read().decode()
        except ConnectionRefusedError:
            return collections.Counter()  # nothing listens there: the domain is not served
        finally:
            conn.close()
        if resp.status == 200:
            seen[f"127.0.0.1:{text}"] += 1
    return seen


class _NginxRunner:
    kind = "nginx"

    def run(self, body: Callable[[ProxyHarness], Awaitable[None]]) -> None:
        async def serves(name: str, port: int) -> set[str]:
            return set(await asyncio.to_thread(_ask, port, name))

        async def split(name: str, port: int, requests: int) -> collections.Counter[str]:
            return await asyncio.to_thread(_ask, port, name, requests)

        @contextlib.contextmanager
        def held_port() -> Iterator[int]:
            with socket.socket() as squatter:  # another process's socket, as far as Nginx can tell
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                yield squatter.getsockname()[1]

        async def main() -> None:
            backends = [_Backend() for _ in range(3)]
            try:
                async with running_nginx(confirm_timeout=8.0) as proxy:  # nginx retries a failed bind ~2.5 s
                    harness = ProxyHarness("nginx", proxy, [b.upstream for b in backends], free_port, serves,
                                           held_port, split, lambda: asyncio.sleep(0.01))
                    await asyncio.wait_for(body(harness), 60)
            finally:
                for backend in backends:
                    backend.close()

        asyncio.run(main())


@pytest.fixture(params=["sim", "nginx"])
def proxy_harness(request):
    return _SimRunner() if request.param == "sim" else _NginxRunner()


# --------------------------------------------------------------------------- bodies


def test_a_new_domain_is_in_force_after_exactly_one_reload(proxy_harness):
    async def body(h):
        p, (b1, _, _) = h.proxy, h.backends
        shop = h.domain("shop.example.com", b1)
        start = await p.reloads()
        assert await h.serves("shop.example.com") == set()
        assert await p.test({"shop.example.com": shop}) is None
        assert await p.reloads() == start and await h.serves("shop.example.com") == set()  # test changes nothing
        outcome = await p.apply({"shop.example.com": shop})
        assert await p.reloads() == start + 1
        assert outcome.domains == 1 and outcome.seconds > 0
        assert await h.serves("shop.example.com") == {str(b1)}

    proxy_harness.run(body)


def test_set_upstreams_changes_what_serves_without_a_reload(proxy_harness):
    async def body(h):
        p, (b1, b2, b3) = h.proxy, h.backends
        await p.apply({"shop.example.com": h.domain("shop.example.com", b1)})
        reloads = await p.reloads()
        await p.set_upstreams("shop.example.com", (b2, b3))
        assert await h.serves("shop.example.com") == {str(b2), str(b3)}
        await p.set_upstreams("shop.example.com", ())
        assert await h.serves("shop.example.com") == set()
        await p.set_upstreams("shop.example.com", (b1,))
        assert await h.serves("shop.example.com") == {str(b1)}
        assert await p.reloads() == reloads
        with pytest.raises(ProxyError):
            await p.set_upstreams("other.example.com", (b1,))  # not a live domain

    proxy_harness.run(body)


def test_a_refused_change_fails_test_and_apply_and_the_old_config_stays_in_force(proxy_harness):
    async def body(h):
        p, (b1, b2, _) = h.proxy, h.backends
        await p.apply({"shop.example.com": h.domain("shop.example.com", b1)})
        with h.held_port() as taken:
            blocked = h.domain("api.example.com", b2, port=taken)
            error = await p.test({"api.example.com": blocked})
            assert error is not None and "api.example.com" in error and "Address already in use" in error
            with pytest.raises(ProxyError):
                await p.apply({"api.example.com": blocked})
            assert await h.serves("shop.example.com") == {str(b1)}
        assert await h.serves("api.example.com") == set()  # never in force
        assert await h.serves("shop.example.com") == {str(b1)}
        await p.apply({"api.example.com": blocked})  # once the port is free the same change goes through
        assert await h.serves("api.example.com") == {str(b2)}

    proxy_harness.run(body)


def test_saved_state_round_trips_with_revision_and_domains(proxy_harness):
    async def body(h):
        p, (b1, b2, b3) = h.proxy, h.backends
        assert await p.load_state() == SavedState()
        state = SavedState(42, {"shop.example.com": h.domain("shop.example.com", b1, b2),
                                "api.example.com": h.domain("api.example.com", b3)})
        await p.save_state(state)
        loaded = await p.load_state()
        assert loaded.revision == 42 and dict(loaded.domains) == dict(state.domains)
        await p.save_state(SavedState(43, {"api.example.com": state.domains["api.example.com"]}))
        loaded = await p.load_state()
        assert loaded.revision == 43 and list(loaded.domains) == ["api.example.com"]

    proxy_harness.run(body)


def test_apply_none_removes_a_domain(proxy_harness):
    async def body(h):
        p, (b1, b2, _) = h.proxy, h.backends
        await p.apply({"shop.example.com": h.domain("shop.example.com", b1),
                       "api.example.com": h.domain("api.example.com", b2)})
        assert await h.serves("api.example.com") == {str(b2)}
        reloads = await p.reloads()
        outcome = await p.apply({"api.example.com": None})
        assert await p.reloads() == reloads + 1 and outcome.domains == 1
        assert await h.serves("api.example.com") == set()
        assert await h.serves("shop.example.com") == {str(b1)}

    proxy_harness.run(body)


def test_weights_split_the_requests_in_place_and_weight_zero_gets_none(proxy_harness):
    async def body(h):
        p, (b1, b2, b3) = h.proxy, h.backends
        await p.apply({"shop.example.com": h.domain("shop.example.com", b1, b2, b3)})
        reloads = await p.reloads()
        requests = 200
        even = await h.split("shop.example.com", requests)
        assert set(even) == {b.address for b in (b1, b2, b3)}
        assert all(abs(n - requests / 3) <= SHARE_SLACK * requests for n in even.values()), even
        weights = {b1: 6, b2: 3, b3: 1}
        await p.set_upstreams("shop.example.com", tuple(replace(b, weight=w, version=f"v{w}")
                                                       for b, w in weights.items()))
        split = await h.split("shop.example.com", requests)
        for backend, weight in weights.items():  # each share within SHARE_SLACK of weight / sum(weights)
            assert abs(split[backend.address] / requests - weight / 10) <= SHARE_SLACK, split
        await p.set_upstreams("shop.example.com", (replace(b1, weight=0), replace(b2, weight=1000), b3))
        split = await h.split("shop.example.com", requests)
        assert split[b1.address] == 0 and split[b2.address] + split[b3.address] == requests, split
        assert abs(split[b3.address] - requests / 1001) <= SHARE_SLACK * requests, split
        await p.set_upstreams("shop.example.com", (replace(b1, weight=0),))
        assert await h.serves("shop.example.com") == set()  # weight 0 everywhere: nothing takes new requests
        assert await p.reloads() == reloads  # every weight change was in place

    proxy_harness.run(body)


def test_request_counts_are_kept_per_domain_and_upstream_version(proxy_harness):
    async def body(h):
        p, (b1, b2, _) = h.proxy, h.backends
        v1, v2 = replace(b1, version="v1"), replace(b2, weight=3, version="v2")
        await p.apply({"gray.example.com": h.domain("gray.example.com", v1, v2),
                       "empty.example.com": h.domain("empty.example.com")})
        split = await h.split("gray.example.com", 40)
        assert await h.split("empty.example.com", 2) == {}
        for _ in range(500):  # Nginx counts in the log phase, after the answer is sent
            counts = await p.request_counts()
            if sum(c.requests for c in counts.values()) == 42:
                break
            await h.pause()
        assert set(counts) == {("gray.example.com", "v1"), ("gray.example.com", "v2"), ("empty.example.com", "")}
        assert counts[("gray.example.com", "v1")].by_class == {"2xx": split[b1.address]}
        assert counts[("gray.example.com", "v2")].by_class == {"2xx": split[b2.address]}
        assert split[b1.address] + split[b2.address] == 40 and abs(split[b2.address] - 30) <= 4, split
        assert counts[("empty.example.com", "")].by_class == {"5xx": 2}
        assert all(c.seconds >= 0 for c in counts.values())

    proxy_harness.run(body)
