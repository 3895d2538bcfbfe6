"""IPAM over the sim Store: blocks per node, one transaction per ADD, idempotence, cool-down, exhaustion, races."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.admin import add_pool
from cni.ipam import Ipam, PoolExhausted, UnknownPool
from cni.pools import BLOCKS, HANDLES, Block, Handle, PodRef, Pool, PoolConfigError
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

POOL = Pool.parse("cell1-a", "10.20.0.0/22", vlan=100, gateway="10.20.0.1")


def world(*pools: Pool, latency: float = 0.001):
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    admin = server.client("cnictl")

    async def setup():
        for pool in pools or (POOL,):
            await add_pool(admin, pool)

    rt.run_until_complete(setup())
    return rt, server, lambda node, **kw: Ipam(server.client(node, latency=latency), rt, node, **kw)


def test_first_add_claims_a_block_and_takes_its_first_usable_address():
    rt, server, make = world()
    ipam = make("node-1")

    async def main():
        await ipam.load()
        return await ipam.allocate("c1", "eth0", pod=PodRef("ns", "web-1", "uid-1"))

    alloc = rt.run_until_complete(main())
    assert alloc.address in POOL.cidr and alloc.address not in POOL.reserved()
    assert alloc.cidr == f"{alloc.address}/22"
    blocks = [Block.from_bytes(kv.value) for kv in server._range(BLOCKS, True).kvs]
    assert [(b.node, b.cidr.prefixlen, b.allocations) for b in blocks] == [("node-1", 28, {
        int(alloc.address) - int(blocks[0].cidr.network_address): "c1/eth0"})]
    handle = Handle.from_bytes(server._range(HANDLES, True).kvs[0].value)
    assert (handle.address, handle.pod, handle.node) == (alloc.address, PodRef("ns", "web-1", "uid-1"), "node-1")
    assert ipam.stats.transactions == 1  # claim + allocation in one transaction


def test_common_case_is_one_transaction_and_a_repeated_add_gets_the_same_address():
    rt, _server, make = world()
    ipam = make("node-1")

    async def main():
        await ipam.load()
        first = [await ipam.allocate(f"c{i}", "eth0") for i in range(5)]
        txns = ipam.stats.transactions
        again = await ipam.allocate("c3", "eth0")
        assert ipam.stats.transactions == txns  # answered from memory
        restarted = make("node-1")  # a new agent process: nothing in memory
        await restarted.load()
        after_restart = await restarted.allocate("c3", "eth0")
        return first, again, after_restart, txns

    first, again, after_restart, txns = rt.run_until_complete(main())
    assert txns == 5
    assert len({a.address for a in first}) == 5
    assert again.address == after_restart.address == first[3].address


def test_a_full_block_makes_the_node_claim_another():
    rt, server, make = world()
    ipam = make("node-1")

    async def main():
        await ipam.load()
        return [await ipam.allocate(f"c{i}", "eth0") for i in range(40)]

    allocations = rt.run_until_complete(main())
    assert len({a.address for a in allocations}) == 40
    blocks = {a.block for a in allocations}
    assert len(blocks) == 3  # 16 + 16 + 8: none of node-1's blocks holds a reserved address
    owners = {Block.from_bytes(kv.value).node for kv in server._range(BLOCKS, True).kvs}
    assert owners == {"node-1"}


def test_release_is_idempotent_and_the_address_cools_down_before_reuse():
    rt, server, make = world()
    ipam = make("node-1", cooldown=30.0)

    async def main():
        await ipam.load()
        gone = await ipam.allocate("old", "eth0")
        assert (await ipam.release("old", "eth0")).address == gone.address
        assert await ipam.release("old", "eth0") is None  # again: nothing to do, no error
        assert await ipam.release("never-existed", "eth0") is None
        soon = await ipam.allocate("new1", "eth0")
        await rt.sleep(31)
        later = await ipam.allocate("new2", "eth0")
        return gone, soon, later

    gone, soon, later = rt.run_until_complete(main())
    assert soon.address != gone.address  # within the cool-down
    assert later.address == gone.address  # lowest free offset again once it has cooled down
    assert not server._range(f"{HANDLES}old/", True).kvs


def test_fifty_nodes_allocating_at_once_never_share_an_address():
    rt, server, make = world(latency=0.002)
    nodes = [make(f"node-{i:02d}") for i in range(50)]
    results: list = []

    async def node_burst(ipam):
        await ipam.load()
        for i in range(12):
            results.append(await ipam.allocate(f"{ipam.node}-c{i}", "eth0"))

    async def main():
        tasks = [rt.spawn(node_burst(n), name=n.node) for n in nodes]
        for t in tasks:
            await t.join()

    rt.run_until_complete(main())
    assert len(results) == 600
    assert len({a.address for a in results}) == 600
    for kv in server._range(BLOCKS, True).kvs:  # every allocation sits in a block of its own node
        block = Block.from_bytes(kv.value)
        assert all(h.startswith(block.node + "-") for h in block.allocations.values())
    assert sum(n.stats.conflicts for n in nodes) < 100  # spread start offsets keep claim races rare


def test_exhaustion_borrows_first_then_fails_with_a_typed_error_and_a_new_pool_helps():
    small = Pool.parse("tiny", "10.30.0.0/28", vlan=200, gateway="10.30.0.1", block_size=4)
    rt, server, make = world(small)
    a, b = make("node-a"), make("node-b")

    async def main():
        await a.load()
        await b.load()
        got = [await a.allocate(f"a{i}", "eth0") for i in range(8)]
        got += [await b.allocate(f"b{i}", "eth0") for i in range(5)]  # 13 = 16 - network, broadcast, gateway
        with pytest.raises(PoolExhausted, match="tiny"):
            await b.allocate("b-too-many", "eth0")
        with pytest.raises(UnknownPool):
            await b.allocate("x", "eth0", pools=["nope"])
        await add_pool(server.client("cnictl"), Pool.parse("tiny-2", "10.30.1.0/28", vlan=201, block_size=4))
        more = await b.allocate("b-too-many", "eth0")  # a pool added later is found
        return got, more

    got, more = rt.run_until_complete(main())
    assert len({g.address for g in got}) == 13
    assert b.stats.borrowed > 0
    assert more.pool.name == "tiny-2" and more.pool.vlan == 201


def test_a_lost_reply_then_a_retried_add_gives_the_same_address():
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    rt.run_until_complete(add_pool(server.client("cnictl"), POOL))
    flaky = server.client("node-1", latency=0.001, timeout=1.0)
    ipam = Ipam(flaky, rt, "node-1")

    async def main():
        from foundation.ports import StoreUnavailable

        await ipam.load()
        flaky.latency = 3.0  # the request reaches etcd, the answer comes after the deadline
        with pytest.raises(StoreUnavailable):
            await ipam.allocate("c1", "eth0")
        flaky.latency = 0.001
        return await ipam.allocate("c1", "eth0")

    alloc = rt.run_until_complete(main())
    handles = server._range(HANDLES, True).kvs
    assert len(handles) == 1 and Handle.from_bytes(handles[0].value).address == alloc.address


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cidr": "10.0.0.0/33"}, "cidr"),
        ({"cidr": "10.0.0.1/24"}, "cidr"),  # host bits set
        ({"vlan": 0}, "vlan"),
        ({"vlan": 4095}, "vlan"),
        ({"block_size": 12}, "block_size"),
        ({"block_size": 512, "cidr": "10.0.0.0/24"}, "block_size"),
        ({"gateway": "10.9.9.9"}, "gateway"),
        ({"exclude": ["10.0.9.1"]}, "exclude"),
        ({"name": "Bad_Name"}, "pool name"),
    ],
)
def test_bad_pool_definitions_name_the_field(kwargs, field):
    args = {"name": "p", "cidr": "10.0.0.0/22", "vlan": 10, "gateway": None, "exclude": (), "block_size": 16}
    args.update(kwargs)
    with pytest.raises(PoolConfigError) as err:
        Pool.parse(**args)
    assert err.value.field == field


def test_overlapping_pools_and_reused_vlans_are_refused():
    rt, server, _make = world()
    admin = server.client("cnictl2")

    async def main():
        with pytest.raises(PoolConfigError, match="overlaps pool cell1-a"):
            await add_pool(admin, Pool.parse("other", "10.20.2.0/24", vlan=300))
        with pytest.raises(PoolConfigError, match="VLAN 100"):
            await add_pool(admin, Pool.parse("other", "10.21.0.0/24", vlan=100))
        with pytest.raises(PoolConfigError, match="already exists"):
            await add_pool(admin, Pool.parse("cell1-a", "10.22.0.0/24", vlan=301))

    rt.run_until_complete(main())
    assert [kv.key for kv in server._range("/ipam/pools/", True).kvs] == ["/ipam/pools/cell1-a"]


def test_block_geometry():
    assert POOL.block_of(IPv4Address("10.20.1.37")) == IPv4Network("10.20.1.32/28")
    assert len(POOL.blocks()) == 64
    assert POOL.capacity() == 1024 - 3
    assert POOL.usable_in_block(IPv4Network("10.20.0.0/28")) == list(range(2, 16))


def test_a_burst_on_one_node_is_committed_in_batches():
    rt, server, make = world(latency=0.002)
    ipam = make("node-1")

    async def main():
        await ipam.load()
        tasks = [rt.spawn(ipam.allocate(f"c{i}", "eth0"), name=f"add-{i}") for i in range(40)]
        return [await t.join() for t in tasks]

    allocations = rt.run_until_complete(main())
    assert len({a.address for a in allocations}) == 40
    assert ipam.stats.transactions <= 4  # 40 pods, 3 blocks: a handful of transactions, not 40
    assert ipam.stats.batched >= 35
    handles = {Handle.from_bytes(kv.value).id: Handle.from_bytes(kv.value).address
               for kv in server._range(HANDLES, True).kvs}
    assert handles == {f"c{i}/eth0": a.address for i, a in enumerate(allocations)}


def test_cancelling_the_request_that_serves_a_batch_loses_no_other_request():
    rt, _server, make = world(latency=0.002)
    ipam = make("node-1")

    async def main():
        await ipam.load()
        await ipam.allocate("warm", "eth0")  # the node has a block: the next batch is one transaction
        tasks = [rt.spawn(ipam.allocate(f"c{i}", "eth0"), name=f"add-{i}") for i in range(10)]
        # c0 takes the lock alone (2 ms round trip); meanwhile c1..c9 queue up, and c1 serves
        # them as one batch from t=2 ms. At 2.5 ms that batch's transaction is in flight.
        await rt.sleep(0.0025)
        assert len(ipam._waiting) == 0 and ipam._lock.locked()
        tasks[1].cancel()
        results = [await tasks[0].join()]
        for task in tasks[2:]:
            results.append(await task.join())
        return results

    results = rt.run_until_complete(main())
    assert len({a.address for a in results}) == 9
