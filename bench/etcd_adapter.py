"""Real Store adapter vs the bare aetcd client: put and get+CAS rates, concurrency 1 and 32.

Both talk to the same throwaway etcd (started here on loopback, data on tmpfs),
each over its own connection, in interleaved rounds. "bare" is aetcd's own API
(``client.put``, ``client.get`` + ``client.transaction``); "adapter" is
``EtcdStore`` (``put``, ``get`` + ``txn`` with a mod_revision compare), which sets a
deadline on every call and converts every answer to the port's types.
Overhead = 1 - adapter rate / bare rate.

Run: .venv/bin/python -m bench.etcd_adapter [--rounds 5] [--ops 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aetcd

from bench.common import median, save, show
from foundation.adapters.etcd_store import EtcdStore
from foundation.ports import Compare, PutOp
from lab.etcd import running_etcd


async def run_ops(op, concurrency: int, total: int) -> float:
    """Run ``op(worker, n)`` ``total`` times split over ``concurrency`` tasks; return ops/s."""
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        for n in range(per_worker):
            await op(w, n)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


def bare_ops(client: aetcd.Client):
    async def put(w, n):
        await client.put(b"/bench/bare/%d" % w, b"%d" % n)

    async def get_cas(w, n):
        key = b"/bench/bare/%d" % w
        current = await client.get(key)
        await client.transaction(
            compare=[client.transactions.mod(key) == current.mod_revision],
            success=[client.transactions.put(key, b"%d" % n)],
            failure=[],
        )

    return {"put": put, "get+cas": get_cas}


def adapter_ops(store: EtcdStore):
    async def put(w, n):
        await store.put(f"/bench/adapter/{w}", b"%d" % n)

    async def get_cas(w, n):
        key = f"/bench/adapter/{w}"
        current = await store.get(key)
        await store.txn([Compare.mod_is(key, current.mod_revision)], [PutOp(key, b"%d" % n)])

    return {"put": put, "get+cas": get_cas}


async def bench(endpoint: str, rounds: int, ops: int) -> dict:
    host, port = endpoint.split(":")
    bare_client = aetcd.Client(host=host, port=int(port))
    await bare_client.connect()
    store = await EtcdStore.open(endpoint)
    bare, adapter = bare_ops(bare_client), adapter_ops(store)
    for w in range(32):  # get+cas needs the keys to exist
        await bare_client.put(b"/bench/bare/%d" % w, b"0")
        await store.put(f"/bench/adapter/{w}", b"0")
    results = {}
    for kind in ("put", "get+cas"):
        for concurrency in (1, 32):
            rates = {"bare": [], "adapter": []}
            for _ in range(rounds):
                rates["bare"].append(await run_ops(bare[kind], concurrency, ops))
                rates["adapter"].append(await run_ops(adapter[kind], concurrency, ops))
            b, a = median(rates["bare"]), median(rates["adapter"])
            results[f"{kind}@{concurrency}"] = {"bare_per_s": b, "adapter_per_s": a, "ratio": a / b,
                                                 "overhead": 1 - a / b, "rounds": rates}
    await store.close()
    await bare_client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=2000, help="operations per variant per round")
    args = parser.parse_args()
    with running_etcd() as server:
        results = asyncio.run(bench(server.endpoint, args.rounds, args.ops))
    show(f"etcd adapter vs bare aetcd (median of {args.rounds} interleaved rounds, {args.ops} ops each)",
         ["operation @ concurrency", "bare ops/s", "adapter ops/s", "adapter ÷ bare", "overhead"],
         [[k, v["bare_per_s"], v["adapter_per_s"], v["ratio"], f"{v['overhead']:+.1%}"] for k, v in results.items()])
    print(f"saved {save('etcd_adapter', {'ops': args.ops, 'results': results})}")


if __name__ == "__main__":
    main()
