"""cnictl's logic against the simulation: a host crash leaks addresses, check finds them, release frees them."""

from __future__ import annotations

from cni import admin
from cni.admin import add_pool
from cni.agent import CniAgent, NodeConfig
from cni.ipam import Ipam
from cni.pools import BLOCKS, HANDLES, Block, Pool
from cni.request import CniRequest
from foundation.ports.cluster import PodInfo
from sim.adapters.cluster import SimCluster
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

POOL = Pool.parse("cell1-a", "10.20.0.0/22", vlan=100, gateway="10.20.0.1")
NET = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "pools": ["cell1-a"]}


def test_host_crash_leaks_are_suspect_then_certain_then_released_and_gc_waits_for_cool_down():
    rt = SimRuntime(seed=3)
    server = MemoryStore(rt)
    cnictl = server.client("cnictl")
    cluster = SimCluster("cell1")
    rt.run_until_complete(add_pool(cnictl, POOL))
    nodes = {}
    for name in ("node-1", "node-2"):
        cluster.add_node(name)
        dataplane = SimDataplane(name)
        nodes[name] = (CniAgent(Ipam(server.client(name, latency=0.001), rt, name, cooldown=60), dataplane, rt,
                                NodeConfig(name)), dataplane)
        rt.run_until_complete(nodes[name][0].start())

    async def main():
        for i in range(6):  # three pods on each node
            name = f"node-{i % 2 + 1}"
            agent, dataplane = nodes[name]
            dataplane.add_netns(f"/ns/web-{i}")
            result = await agent.add(CniRequest("ADD", "1.0.0", NET, f"sandbox-{i}", f"/ns/web-{i}", "eth0",
                                                args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": f"web-{i}"}))
            cluster.put_pod(PodInfo("shop", f"web-{i}", f"uid-{i}", name, result["ips"][0]["address"].split("/")[0]))
        assert (await admin.check_leaks(cnictl, cluster, rt, grace=30)).leaks == ()
        # node-2 crashes: its pods die with it, no DEL ever comes; the API forgets them; the node leaves.
        nodes["node-2"][1].crash()
        for i in (1, 3, 5):
            cluster.remove_pod("shop", f"web-{i}")
        cluster.remove_node("node-2")
        first = await admin.check_leaks(cnictl, cluster, rt, grace=30)
        await rt.sleep(10)
        early = await admin.check_leaks(cnictl, cluster, rt, grace=30)
        await rt.sleep(25)
        second = await admin.check_leaks(cnictl, cluster, rt, grace=30)
        released, skipped = await admin.release_certain(cnictl, rt)
        gc_now = await admin.gc(cnictl, cluster, rt, cooldown=60)
        await rt.sleep(61)
        gc_later = await admin.gc(cnictl, cluster, rt, cooldown=60)
        return first, early, second, released, skipped, gc_now, gc_later

    first, early, second, released, skipped, gc_now, gc_later = rt.run_until_complete(main())
    assert sorted(leak.handle for leak in first.leaks) == ["sandbox-1/eth0", "sandbox-3/eth0", "sandbox-5/eth0"]
    assert {leak.node for leak in first.leaks} == {"node-2"} and not any(leak.certain for leak in first.leaks)
    assert not any(leak.certain for leak in early.leaks)  # 10 s < grace: still suspects
    assert all(leak.certain for leak in second.leaks) and len(second.leaks) == 3
    assert sorted(r.handle for r in released) == ["sandbox-1/eth0", "sandbox-3/eth0", "sandbox-5/eth0"]
    assert skipped == []
    assert gc_now.blocks_freed == []  # node-2's block is empty, but its releases are cooling down
    assert len(gc_later.blocks_freed) == 1
    handles = sorted(kv.key.removeprefix(HANDLES) for kv in server._range(HANDLES, True).kvs)
    assert handles == ["sandbox-0/eth0", "sandbox-2/eth0", "sandbox-4/eth0"]
    assert {Block.from_bytes(kv.value).node for kv in server._range(BLOCKS, True).kvs} == {"node-1"}
