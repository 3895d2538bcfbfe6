"""Faults of the sim store: latency, slowness, deadlines, partitions and a server outage, on the virtual clock."""

from __future__ import annotations

import pytest

from foundation.ports import StoreUnavailable
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore


def _world():
    rt = SimRuntime(seed=1)
    return rt, MemoryStore(rt)


def test_latency_is_a_round_trip_and_slowness_multiplies_it():
    rt, server = _world()
    client = server.client("n1", latency=0.010, timeout=5)

    async def main():
        t0 = rt.now()
        await client.put("/k", b"v")
        normal = rt.now() - t0
        client.slowness = 50
        t1 = rt.now()
        await client.get("/k")
        return normal, rt.now() - t1

    normal, slow = rt.run_until_complete(main())
    assert normal == pytest.approx(0.010)
    assert slow == pytest.approx(0.5)


def test_a_request_slower_than_the_deadline_fails_but_may_have_been_applied():
    rt, server = _world()
    client = server.client("n1", latency=3.0, timeout=2.0)  # 1.5 s there, 1.5 s back

    async def main():
        t0 = rt.now()
        with pytest.raises(StoreUnavailable, match="deadline"):
            await client.put("/k", b"applied?")
        return rt.now() - t0

    assert rt.run_until_complete(main()) == pytest.approx(2.0)
    assert server._range("/k", False).kvs[0].value == b"applied?"  # reached the server: ambiguous, as in life


def test_partition_cuts_one_client_and_breaks_its_watches_only():
    rt, server = _world()
    cut, fine = server.client("cut", timeout=1.0), server.client("fine", timeout=1.0)

    async def main():
        watch = cut.watch("/p/")
        cut.partition()
        with pytest.raises(StoreUnavailable, match="sim:etcd/cut"):
            await watch.__anext__()
        with pytest.raises(StoreUnavailable):
            await cut.get("/p/a")
        await fine.put("/p/a", b"1")
        cut.heal()
        return (await cut.get("/p/a")).value

    assert rt.run_until_complete(main()) == b"1"


def test_server_down_fails_every_client_until_it_returns():
    rt, server = _world()
    a, b = server.client("a", timeout=1.0), server.client("b", timeout=1.0)

    async def main():
        server.set_available(False)
        for client in (a, b):
            with pytest.raises(StoreUnavailable, match="server down"):
                await client.put("/k", b"x")
        server.set_available(True)
        await a.put("/k", b"y")
        return (await b.get("/k")).value, rt.now()

    value, now = rt.run_until_complete(main())
    assert value == b"y" and now == pytest.approx(2.0)
