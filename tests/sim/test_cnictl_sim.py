"""cnictl's logic against the simulation: leaks found and freed; release asks the Cluster; bad records skipped."""

from __future__ import annotations

import pytest

from cni import admin
from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import BLOCKS, HANDLES, LEAKS, POOLS, Block, Pool, PoolConfigError
from cni.request import CniRequest
from foundation.ports.cluster import PodInfo
from node.cni_agent import CniAgent, NodeConfig
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


# --- issue 9: release asks the Cluster; unreadable records are reported and skipped; durations are checked ----------

class Cell:
    """One node's agent, a cnictl store client and the Cell's API, on the sim."""

    def __init__(self) -> None:
        self.rt = SimRuntime(seed=5)
        self.server = MemoryStore(self.rt)
        self.cnictl = self.server.client("cnictl")
        self.cluster = SimCluster("cell1")
        self.cluster.add_node("node-1")
        self.run(add_pool(self.cnictl, POOL))
        self.dataplane = SimDataplane("node-1")
        self.agent = CniAgent(Ipam(self.server.client("node-1", latency=0.001), self.rt, "node-1", cooldown=60),
                              self.dataplane, self.rt, NodeConfig("node-1"))
        self.run(self.agent.start())

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def start_pod(self, i: int) -> str:
        self.dataplane.add_netns(f"/ns/web-{i}")
        result = self.run(self.agent.add(CniRequest("ADD", "1.0.0", NET, f"sandbox-{i}", f"/ns/web-{i}", "eth0",
                                                    args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": f"web-{i}"})))
        address = result["ips"][0]["address"].split("/")[0]
        self.cluster.put_pod(PodInfo("shop", f"web-{i}", f"uid-{i}", "node-1", address))
        return address

    def handles(self) -> list[str]:
        return sorted(kv.key.removeprefix(HANDLES) for kv in self.server._range(HANDLES, True).kvs)

    def release(self, address: str, **kw):
        return self.run(admin.release_address(self.cnictl, self.rt, address, **kw))


def test_release_of_a_live_pods_address_is_refused_and_frees_nothing():
    cell = Cell()
    live, other = cell.start_pod(0), cell.start_pod(1)
    with pytest.raises(admin.ReleaseRefused) as refused:
        cell.release(live, cluster=cell.cluster)
    assert "pod shop/web-0 still runs it" in str(refused.value) and "sandbox-0/eth0" in str(refused.value)
    assert "node node-1" in str(refused.value)
    assert cell.handles() == ["sandbox-0/eth0", "sandbox-1/eth0"]
    # The next ADD must not get the live pod's address.
    assert cell.start_pod(2) not in (live, other)


def test_release_is_refused_while_the_handles_pod_runs_even_before_its_ip_is_reported():
    cell = Cell()
    address = cell.start_pod(0)
    cell.cluster.put_pod(PodInfo("shop", "web-0", "uid-0", "node-1", ""))  # the API has no pod IP yet
    with pytest.raises(admin.ReleaseRefused, match="pod shop/web-0 still runs it"):
        cell.release(address, cluster=cell.cluster)
    assert cell.handles() == ["sandbox-0/eth0"]


def test_release_of_a_gone_pods_address_frees_it_and_says_what_it_did():
    cell = Cell()
    address = cell.start_pod(0)
    cell.start_pod(1)
    cell.cluster.remove_pod("shop", "web-0")
    released = cell.release(address, cluster=cell.cluster)
    assert str(released) == f"released {address} (handle sandbox-0/eth0, node node-1)"
    assert cell.handles() == ["sandbox-1/eth0"]


def test_release_without_the_cluster_is_refused_unless_forced():
    cell = Cell()
    address = cell.start_pod(0)
    with pytest.raises(admin.AdminError, match="needs the Kubernetes API"):
        cell.release(address)
    assert cell.handles() == ["sandbox-0/eth0"]
    forced = cell.release(address, force=True)
    assert forced.forced and str(forced).endswith("without checking the cluster (--force)")
    assert cell.handles() == []


def test_release_against_an_api_that_lists_no_pods_is_refused():
    cell = Cell()
    address = cell.start_pod(0)
    cell.cluster.remove_pod("shop", "web-0")
    with pytest.raises(admin.ReleaseRefused, match="lists no pods"):
        cell.release(address, cluster=cell.cluster)
    assert cell.handles() == ["sandbox-0/eth0"]


NESTED = b"[" * 100_000 + b"]" * 100_000


def test_unreadable_records_are_reported_and_skipped_by_every_reader():
    cell = Cell()
    address = cell.start_pod(0)
    cell.start_pod(1)
    cell.cluster.remove_pod("shop", "web-1")
    cell.run(cell.cnictl.put(f"{BLOCKS}cell1-a/10.20.3.0-28", NESTED))
    cell.run(cell.cnictl.put(f"{HANDLES}ghost/eth0", b'{"container_id": 7}'))
    cell.run(cell.cnictl.put(f"{POOLS}broken", b'{"name": "broken", "cidr": [1]}'))
    cell.run(cell.cnictl.put(f"{LEAKS}10.20.0.99", NESTED))

    invalid: list = []
    usage = cell.run(admin.pool_usage(cell.cnictl, invalid))
    assert [(u.pool.name, u.allocated) for u in usage] == [("cell1-a", 2)]
    assert sorted(i.key for i in invalid) == [f"{BLOCKS}cell1-a/10.20.3.0-28", f"{POOLS}broken"]

    report = cell.run(admin.check_leaks(cell.cnictl, cell.cluster, cell.rt, grace=0))
    assert [leak.handle for leak in report.leaks] == ["sandbox-1/eth0"]
    assert sorted(i.key for i in report.invalid) == [f"{BLOCKS}cell1-a/10.20.3.0-28", f"{HANDLES}ghost/eth0",
                                                      f"{LEAKS}10.20.0.99"]
    assert all(len(i.reason) < 300 for i in report.invalid)
    # The unreadable leak record was cnictl's scratch data: replaced by what this check saw.
    assert [kv.key for kv in cell.server._range(LEAKS, True).kvs] == [f"{LEAKS}{report.leaks[0].address}"]

    released, skipped = cell.run(admin.release_certain(cell.cnictl, cell.rt))
    assert [r.handle for r in released] == ["sandbox-1/eth0"] and skipped == []

    report = cell.run(admin.gc(cell.cnictl, cell.cluster, cell.rt, cooldown=0))
    assert [i.key for i in report.invalid] == [f"{BLOCKS}cell1-a/10.20.3.0-28"]
    # A block nobody can read may hold any handle: gc removes no "stray" handle meanwhile.
    assert report.stray_handles == [] and "ghost/eth0" in cell.handles()
    assert address in str(cell.release(address, force=True))


def test_an_unreadable_pool_record_blocks_adding_pools_with_a_clear_error():
    cell = Cell()
    cell.run(cell.cnictl.put(f"{POOLS}broken", NESTED))
    with pytest.raises(admin.AdminError, match=f"invalid record {POOLS}broken: .*fix or delete that record first"):
        cell.run(add_pool(cell.cnictl, Pool.parse("cell1-b", "10.21.0.0/24", vlan=101)))


def test_a_leak_record_of_the_wrong_shape_is_skipped_by_release_certain():
    cell = Cell()
    cell.run(cell.cnictl.put(f"{LEAKS}10.20.0.7", b'{"certain": true, "handle": ["x"], "first_seen": 1}'))
    released, skipped = cell.run(admin.release_certain(cell.cnictl, cell.rt))
    assert released == [] and skipped == [f"invalid record {LEAKS}10.20.0.7: "
                                          "ValueError: not a leak record {handle, first_seen, certain, pool}"]


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1e12])
def test_grace_and_cooldown_must_be_finite_and_not_negative(value):
    cell = Cell()
    with pytest.raises(admin.AdminError, match="grace must be a number of seconds from 0"):
        cell.run(admin.check_leaks(cell.cnictl, cell.cluster, cell.rt, grace=value))
    with pytest.raises(admin.AdminError, match="cooldown must be a number of seconds from 0"):
        cell.run(admin.gc(cell.cnictl, cell.cluster, cell.rt, cooldown=value))


@pytest.mark.parametrize("cidr", ["127.0.0.0/24", "169.254.0.0/24", "224.0.0.0/24", "240.0.0.0/24", "0.0.0.0/24",
                                  "255.255.255.0/24", "126.0.0.0/7", "239.255.255.252/30"])
def test_pools_in_special_ranges_are_refused(cidr):
    with pytest.raises(PoolConfigError) as err:
        Pool.parse("special", cidr, vlan=7)
    assert err.value.field == "cidr" and "pods cannot use it" in str(err.value)
