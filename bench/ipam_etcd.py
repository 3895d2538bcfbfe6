"""IPAM allocation throughput: 50 node agents against one real etcd vs raw etcd doing the same transaction.

"agents": 50 ``Ipam`` instances (one per simulated node, each with its own etcd
connection, as 50 node agents would have) allocate ``--pods`` addresses each,
concurrently, from one /16 pool with blocks of 16: block claims, CAS conflicts
and all. Every allocation's latency is recorded; afterwards every address is
checked to be unique (block records and handle records both).

"raw": 50 workers with the bare aetcd client issue the transaction shape of the
common-case ADD, on their own keys: compare a block's mod_revision and a handle's
absence, put the block (same JSON size) and the handle. No IPAM logic: this is
what etcd itself can do on this machine.

Ratio = agents rate / raw rate (target >= 0.8). Rounds alternate to share noise.

Run: .venv/bin/python -m bench.ipam_etcd [--agents 50] [--pods 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aetcd
from aetcd import rpc

from bench.common import median, save, show
from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import BLOCKS, HANDLES, Block, Handle, PodRef, Pool
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.etcd_store import EtcdStore
from lab.etcd import running_etcd

POOL = Pool.parse("bench", "10.128.0.0/16", vlan=10, gateway="10.128.0.1")


async def agents_round(endpoint: str, agents: int, pods: int, round_no: int) -> dict:
    admin = await EtcdStore.open(endpoint)
    await admin.delete("/ipam/", prefix=True)
    await add_pool(admin, POOL)
    stores = [await EtcdStore.open(endpoint) for _ in range(agents)]
    ipams = [Ipam(store, AsyncioRuntime(seed=i), f"node-{i:03d}") for i, store in enumerate(stores)]
    for ipam in ipams:
        await ipam.load()
    latencies: list[float] = []

    async def node(ipam: Ipam) -> None:
        for p in range(pods):
            t0 = time.perf_counter()
            await ipam.allocate(f"r{round_no}-{ipam.node}-{p}", "eth0", pod=PodRef("bench", f"{ipam.node}-{p}"))
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(node(ipam) for ipam in ipams))
    elapsed = time.perf_counter() - started
    # Zero duplicates, checked from the Store: every block offset and every handle address is unique.
    block_addresses = [str(b.address(o)) for b in (Block.from_bytes(kv.value)
                                                    for kv in (await admin.range(BLOCKS)).kvs) for o in b.allocations]
    handle_addresses = [str(Handle.from_bytes(kv.value).address) for kv in (await admin.range(HANDLES)).kvs]
    total = agents * pods
    result = {
        "allocations": total, "per_s": total / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "duplicates": (len(block_addresses) - len(set(block_addresses))) + (
            len(handle_addresses) - len(set(handle_addresses))),
        "missing": total - len(set(block_addresses)),
        "conflicts": sum(i.stats.conflicts for i in ipams),
        "blocks_claimed": sum(i.stats.blocks_claimed for i in ipams),
        "transactions": sum(i.stats.transactions for i in ipams),
    }
    for store in stores:
        await store.close()
    await admin.close()
    return result


async def raw_round(endpoint: str, agents: int, pods: int, round_no: int) -> dict:
    host, port = endpoint.split(":")
    clients = [aetcd.Client(host=host, port=int(port)) for _ in range(agents)]
    for client in clients:
        await client.connect()
    block = Block("bench", POOL.blocks()[0], "node-000", {o: f"container-{o}/eth0" for o in range(2, 10)})
    latencies: list[float] = []

    async def worker(w: int, client: aetcd.Client) -> None:
        block_key = f"/raw/{round_no}/blocks/{w}".encode()
        await client.put(block_key, block.to_bytes())
        mod = (await client.get(block_key)).mod_revision
        for p in range(pods):
            handle = Handle(f"r{round_no}-{w}-{p}", "eth0", POOL.cidr.network_address + p, "bench", f"node-{w}",
                            PodRef("bench", f"{w}-{p}"))
            handle_key = f"/raw/{round_no}/handles/{handle.id}".encode()
            # etcd's own Txn RPC through aetcd's stub: the header's revision is the block's next
            # mod_revision, so the worker needs no extra read, exactly like the IPAM agent.
            request = rpc.TxnRequest(
                compare=[rpc.Compare(key=block_key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                     mod_revision=mod),
                         rpc.Compare(key=handle_key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                                     create_revision=0)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=block_key, value=block.to_bytes())),
                         rpc.RequestOp(request_put=rpc.PutRequest(key=handle_key, value=handle.to_bytes()))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=block_key)),
                         rpc.RequestOp(request_range=rpc.RangeRequest(key=handle_key))],
            )
            t0 = time.perf_counter()
            response = await client.kvstub.Txn(request)
            latencies.append(time.perf_counter() - t0)
            assert response.succeeded
            mod = response.header.revision

    started = time.perf_counter()
    await asyncio.gather(*(worker(w, c) for w, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.close()
    total = agents * pods
    return {"allocations": total, "per_s": total / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--pods", type=int, default=40, help="allocations per agent per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"agents": [], "raw": []}
    with running_etcd() as server:
        for r in range(args.rounds):
            runs["agents"].append(asyncio.run(agents_round(server.endpoint, args.agents, args.pods, r)))
            runs["raw"].append(asyncio.run(raw_round(server.endpoint, args.agents, args.pods, r)))
    agents_rate = median([r["per_s"] for r in runs["agents"]])
    raw_rate = median([r["per_s"] for r in runs["raw"]])
    result = {
        "agents": args.agents, "pods_per_agent": args.pods, "ratio": agents_rate / raw_rate,
        "agents_per_s": agents_rate, "raw_per_s": raw_rate,
        "agents_p99_ms": median([r["p99_ms"] for r in runs["agents"]]),
        "raw_p99_ms": median([r["p99_ms"] for r in runs["raw"]]),
        "duplicates": sum(r["duplicates"] for r in runs["agents"]),
        "missing": sum(r["missing"] for r in runs["agents"]),
        "rounds": runs,
    }
    show(f"IPAM: {args.agents} agents × {args.pods} allocations vs raw etcd, same txn shape "
         f"(median of {args.rounds} rounds)", ["", "allocations/s", "p50 ms", "p99 ms"],
         [["IPAM agents", agents_rate, median([r["p50_ms"] for r in runs["agents"]]), result["agents_p99_ms"]],
          ["raw etcd txn", raw_rate, median([r["p50_ms"] for r in runs["raw"]]), result["raw_p99_ms"]]])
    print(f"ratio agents/raw = {result['ratio']:.3f}; duplicates {result['duplicates']}, missing {result['missing']}; "
          f"conflicts per round {[r['conflicts'] for r in runs['agents']]}")
    print(f"saved {save('ipam_etcd', result)}")


if __name__ == "__main__":
    main()
