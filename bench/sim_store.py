"""Sim Store throughput: get / put / CAS-txn operations per second of wall time, 1,000 simulated clients.

Every client is an ``async def`` loop on the sim runtime with its own client
connection (1 ms round trip), doing OPS operations of one kind; the three kinds run
back to back in one process. Reported: operations per wall second and, as context,
the same loop with zero latency (no sleeps: the store's own cost).

Run: .venv/bin/python -m bench.sim_store [--rounds 3]
"""

from __future__ import annotations

import argparse

from bench.common import interleaved, median, save, show, timed
from foundation.ports import Compare, PutOp
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

CLIENTS = 1000
OPS = 50


def workload(kind: str, latency: float) -> int:
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt, trace=False)

    async def client_loop(i: int) -> None:
        store = server.client(f"c{i}", latency=latency)
        key = f"/bench/{i % 100:03d}/{i}"
        await store.put(key, b"0")
        for n in range(OPS):
            if kind == "get":
                await store.get(key)
            elif kind == "put":
                await store.put(key, b"%d" % n)
            else:  # get + compare-and-swap on mod_revision, as IPAM claims do
                current = await store.get(key)
                await store.txn([Compare.mod_is(key, current.mod_revision)], [PutOp(key, b"%d" % n)])

    for i in range(CLIENTS):
        rt.spawn(client_loop(i), name=f"c{i}")
    rt.run()
    return CLIENTS * OPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {}
    for kind in ("get", "put", "get+cas"):
        for latency in (0.001, 0.0):
            variants[f"{kind}@{latency}"] = (lambda k, lat: lambda: timed(lambda: workload(k, lat)))(kind, latency)
    rates = interleaved(variants, args.rounds)
    result = {"clients": CLIENTS, "ops_per_client": OPS, "per_s": {k: median(v) for k, v in rates.items()},
              "rounds": rates}
    show(f"Sim Store, {CLIENTS} simulated clients (median of {args.rounds} rounds)",
         ["operation", "ops/wall s, 1 ms RTT", "ops/wall s, no latency"],
         [[k, result["per_s"][f"{k}@0.001"], result["per_s"][f"{k}@0.0"]] for k in ("get", "put", "get+cas")])
    print("get+cas counts the get and the txn as one operation")
    print(f"saved {save('sim_store', result)}")


if __name__ == "__main__":
    main()
