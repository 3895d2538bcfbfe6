"""A 1,000-pod burst in simulation: 100 apps x 10 replicas over 10 nodes, every pod through the real CNI agent.

Each node runs the real ``CniAgent`` + ``Ipam`` on the sim Store (2 ms etcd round
trip + up to 1 ms jitter) and the sim Dataplane. At t=0 the scheduler places the
1,000 pods round-robin; each node's kubelet makes the pod's sandbox (netns, 50 ms)
and calls CNI ADD, all pods of a node concurrently as kubelet's pod workers do.
Reported: virtual time until every pod has an address, wall time, allocation
latency percentiles in virtual time, transactions and conflicts, and a check
that all 1,000 addresses are distinct.

Run: .venv/bin/python -m bench.ipam_sim_burst [--apps 100] [--replicas 10] [--nodes 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import save, show
from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import Pool
from cni.request import CniRequest
from node.cni_agent import CniAgent, NodeConfig
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

NETWORK = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int"}
SANDBOX_SECONDS = 0.05


def burst(apps: int, replicas: int, nodes: int, seed: int) -> dict:
    rt = SimRuntime(seed=seed)
    server = MemoryStore(rt, trace=False)
    rt.run_until_complete(add_pool(server.client("cnictl"), Pool.parse("cell1-a", "10.20.0.0/20", vlan=100)))
    agents, dataplanes = [], []
    for n in range(nodes):
        name = f"node-{n:02d}"
        dataplane = SimDataplane(name)
        client = server.client(name, latency=0.002, jitter=0.001)
        agent = CniAgent(Ipam(client, rt, name), dataplane, rt, NodeConfig(name))
        rt.run_until_complete(agent.start())
        agents.append(agent)
        dataplanes.append(dataplane)
    start = rt.now()
    latencies: list[float] = []
    addresses: list[str] = []

    async def kubelet_starts_pod(node: int, app: int, replica: int) -> None:
        pod = f"app{app:03d}-{replica}"
        netns = f"/var/run/netns/{pod}"
        await rt.sleep(SANDBOX_SECONDS)
        dataplanes[node].add_netns(netns)
        asked = rt.now()
        result = await agents[node].add(CniRequest(
            "ADD", "1.0.0", NETWORK, f"sandbox-{pod}", netns, "eth0",
            args={"K8S_POD_NAMESPACE": f"app{app:03d}", "K8S_POD_NAME": pod}))
        latencies.append(rt.now() - asked)
        addresses.append(result["ips"][0]["address"])

    async def scheduler() -> None:
        tasks = []
        for i in range(apps * replicas):
            app, replica = divmod(i, replicas)
            tasks.append(rt.spawn(kubelet_starts_pod(i % nodes, app, replica), name=f"pod-{i}"))
        for task in tasks:
            await task.join()

    wall0 = time.perf_counter()
    rt.run_until_complete(scheduler())
    wall = time.perf_counter() - wall0
    ipams = [a.ipam for a in agents]
    return {
        "pods": apps * replicas, "nodes": nodes, "virtual_seconds": rt.now() - start, "wall_seconds": wall,
        "add_p50_ms": statistics.median(latencies) * 1000,
        "add_p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "distinct_addresses": len(set(addresses)),
        "transactions": sum(i.stats.transactions for i in ipams),
        "conflicts": sum(i.stats.conflicts for i in ipams),
        "blocks_claimed": sum(i.stats.blocks_claimed for i in ipams),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = burst(args.apps, args.replicas, args.nodes, args.seed)
    show(f"{result['pods']}-pod burst over {args.nodes} nodes (simulated)", ["measure", "value"], [
        ["virtual time until every pod has an address (s)", result["virtual_seconds"]],
        ["wall time (s)", result["wall_seconds"]],
        ["ADD latency p50 / p99 (virtual ms)", f"{result['add_p50_ms']:.1f} / {result['add_p99_ms']:.1f}"],
        ["distinct addresses", result["distinct_addresses"]],
        ["store transactions / conflicts / blocks claimed",
         f"{result['transactions']} / {result['conflicts']} / {result['blocks_claimed']}"],
    ])
    print(f"saved {save('ipam_sim_burst', result)}")


if __name__ == "__main__":
    main()
