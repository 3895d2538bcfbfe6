"""The CNI agent on sim adapters: results, undo on failure, idempotent DEL, CHECK, GC, STATUS, error codes."""

from __future__ import annotations

import pytest

from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import HANDLES, Pool
from cni.request import CniError, CniRequest
from node.cni_agent import CniAgent, NodeConfig
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

POOL = Pool.parse("cell1-a", "10.20.0.0/22", vlan=100, gateway="10.20.0.1")
NET = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int", "pools": ["cell1-a"]}


def request(command, container="c1", netns="/var/run/netns/p1", **kw):
    return CniRequest(command, "1.0.0", kw.pop("network", NET), container, netns, "eth0",
                      args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": f"web-{container}"}, **kw)


@pytest.fixture
def node():
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    rt.run_until_complete(add_pool(server.client("cnictl"), POOL))
    client = server.client("node-1", latency=0.001, timeout=1.0)
    dataplane = SimDataplane("node-1")
    dataplane.add_netns("/var/run/netns/p1")
    dataplane.add_netns("/var/run/netns/p2")
    agent = CniAgent(Ipam(client, rt, "node-1"), dataplane, rt, NodeConfig("node-1"))
    rt.run_until_complete(agent.start())

    class Node:
        pass

    n = Node()
    n.rt, n.server, n.client, n.dataplane, n.agent = rt, server, client, dataplane, agent
    n.run = rt.run_until_complete
    n.handles = lambda: [kv.key for kv in server._range(HANDLES, True).kvs]
    return n


def test_add_returns_a_cni_result_and_plumbs_a_vlan_tagged_port(node):
    result = node.run(node.agent.add(request("ADD")))
    address = result["ips"][0]["address"]
    assert address.endswith("/22") and result["ips"][0]["gateway"] == "10.20.0.1"
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.20.0.1"}]
    host, pod = result["interfaces"]
    assert pod == {"name": "eth0", "mac": pod["mac"], "sandbox": "/var/run/netns/p1"}
    assert result["ips"][0]["interface"] == 1
    plumbed = node.dataplane.interfaces[("c1", "eth0")].attachment
    assert (plumbed.vlan, plumbed.address, plumbed.bridge, plumbed.host_ifname) == (100, address, "br-int",
                                                                                     host["name"])


def test_repeated_add_returns_the_same_address(node):
    first = node.run(node.agent.add(request("ADD")))
    again = node.run(node.agent.add(request("ADD")))
    assert first["ips"] == again["ips"]
    assert len(node.handles()) == 1 and len(node.dataplane.interfaces) == 1


@pytest.mark.parametrize("step", ["create veth", "add OVS port", "configure pod interface"])
def test_add_that_fails_while_plumbing_releases_its_address(node, step):
    node.dataplane.fail_next = step
    with pytest.raises(CniError) as err:
        node.run(node.agent.add(request("ADD")))
    assert err.value.code == 101 and step in err.value.details
    assert node.handles() == [] and node.dataplane.interfaces == {}
    ok = node.run(node.agent.add(request("ADD", container="c2", netns="/var/run/netns/p2")))
    assert ok["ips"][0]["address"]  # the next ADD works, and may reuse nothing half-made


def test_add_into_a_missing_netns_is_an_env_error_and_leaves_nothing(node):
    with pytest.raises(CniError) as err:
        node.run(node.agent.add(request("ADD", netns="/var/run/netns/nope")))
    assert err.value.code == 4 and "does not exist" in err.value.details
    assert node.handles() == [] and node.dataplane.interfaces == {}


def test_etcd_unreachable_mid_add_is_try_again_later_and_nothing_is_half_created(node):
    node.client.partition()
    with pytest.raises(CniError) as err:
        node.run(node.agent.add(request("ADD")))
    assert err.value.code == 11 and "sim:etcd/node-1" in err.value.details
    assert node.handles() == [] and node.dataplane.interfaces == {}
    node.client.heal()
    assert node.run(node.agent.add(request("ADD")))["ips"]


def test_del_is_idempotent_even_without_netns_or_allocation(node):
    node.run(node.agent.add(request("ADD")))
    node.run(node.agent.delete(request("DEL")))
    node.run(node.agent.delete(request("DEL")))  # again
    node.run(node.agent.delete(request("DEL", netns="")))  # runtime lost the netns
    node.run(node.agent.delete(request("DEL", container="never-added")))
    assert node.handles() == [] and node.dataplane.interfaces == {}


def test_check_passes_then_names_the_difference(node):
    result = node.run(node.agent.add(request("ADD")))
    node.run(node.agent.check(request("CHECK", prev_result=result)))
    wrong = {**result, "ips": [{"address": "10.20.3.3/22", "gateway": "10.20.0.1", "interface": 1}]}
    with pytest.raises(CniError) as err:
        node.run(node.agent.check(request("CHECK", prev_result=wrong)))
    assert err.value.code == 103 and "10.20.3.3/22" in err.value.details
    node.dataplane.interfaces[("c1", "eth0")].attachment = _retag(node, 999)
    with pytest.raises(CniError) as err:
        node.run(node.agent.check(request("CHECK", prev_result=result)))
    assert err.value.code == 103 and "vlan is 999, expected 100" in err.value.details
    with pytest.raises(CniError) as err:
        node.run(node.agent.check(request("CHECK")))
    assert err.value.code == 7


def _retag(node, vlan):
    from dataclasses import replace

    plumbed = node.dataplane.interfaces[("c1", "eth0")]
    return replace(plumbed.attachment, vlan=vlan)


def test_gc_removes_what_the_runtime_no_longer_lists(node):
    node.run(node.agent.add(request("ADD", container="keep", netns="/var/run/netns/p1")))
    node.run(node.agent.add(request("ADD", container="stale", netns="/var/run/netns/p2")))
    node.run(node.agent.gc(request("GC", container="", netns="", valid_attachments=(("keep", "eth0"),))))
    assert node.handles() == ["/ipam/handles/keep/eth0"]
    assert list(node.dataplane.interfaces) == [("keep", "eth0")]


def test_status_reports_readiness(node):
    node.run(node.agent.status(request("STATUS")))
    with pytest.raises(CniError) as err:
        node.run(node.agent.status(request("STATUS", network={**NET, "pools": ["missing"]})))
    assert err.value.code == 50
    node.client.partition()
    with pytest.raises(CniError) as err:
        node.run(node.agent.status(request("STATUS")))
    assert err.value.code == 50 and "etcd" in err.value.msg


def test_exhaustion_is_code_100(node):
    tiny = Pool.parse("tiny", "10.30.0.0/30", vlan=7, gateway="10.30.0.1", block_size=4)
    node.run(add_pool(node.server.client("cnictl"), tiny))
    net = {**NET, "pools": ["tiny"]}
    node.run(node.agent.add(request("ADD", network=net)))  # 10.30.0.2: the only usable address
    with pytest.raises(CniError) as err:
        node.run(node.agent.add(request("ADD", container="c2", netns="/var/run/netns/p2", network=net)))
    assert err.value.code == 100 and "tiny" in err.value.details


def test_a_del_whose_unplumbing_fails_reports_it_and_a_retried_del_finishes(node):
    node.run(node.agent.add(request("ADD")))
    node.dataplane.fail_next = "delete veth"
    with pytest.raises(CniError) as err:
        node.run(node.agent.delete(request("DEL")))
    assert err.value.code == 101 and "delete veth" in err.value.details
    assert list(node.dataplane.interfaces) == [("c1", "eth0")]  # still plumbed: the runtime will retry
    node.run(node.agent.delete(request("DEL")))
    assert node.handles() == [] and node.dataplane.interfaces == {}


def test_a_del_overtaking_a_slow_add_waits_for_it_and_leaves_nothing():
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    rt.run_until_complete(add_pool(server.client("cnictl"), POOL))
    dataplane = SimDataplane("node-1")
    dataplane.add_netns("/var/run/netns/p1")
    slow = server.client("node-1", latency=0.5, timeout=5)  # etcd is slow today
    agent = CniAgent(Ipam(slow, rt, "node-1"), dataplane, rt, NodeConfig("node-1"))
    rt.run_until_complete(agent.start())

    async def main():
        add = rt.spawn(agent.add(request("ADD")), name="add")
        await rt.sleep(0.1)  # the runtime gave up on the ADD and sends DEL while it still runs
        await agent.delete(request("DEL"))
        return await add.join()

    rt.run_until_complete(main())
    assert not server._range(HANDLES, True).kvs and dataplane.interfaces == {}


def test_check_reads_the_store_not_the_agents_memory(node):
    from cni.admin import release_address

    result = node.run(node.agent.add(request("ADD")))
    node.run(release_address(node.server.client("cnictl"), node.rt, result["ips"][0]["address"].split("/")[0],
                             force=True))
    with pytest.raises(CniError) as err:
        node.run(node.agent.check(request("CHECK", prev_result=result)))
    assert err.value.code == 103 and "no address" in err.value.msg


def test_gc_collects_by_node_not_by_block_owner():
    # node-b borrows from node-a's block; node-a's GC must not touch node-b's pod,
    # and node-b's GC must collect its borrowed address when its pod is gone.
    tiny = Pool.parse("tiny", "10.30.0.0/28", vlan=200, gateway="10.30.0.1", block_size=4)
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    rt.run_until_complete(add_pool(server.client("cnictl"), tiny))
    net = {**NET, "pools": ["tiny"]}
    agents = {}
    for name in ("node-a", "node-b"):
        dataplane = SimDataplane(name)
        for i in range(13):
            dataplane.add_netns(f"/ns/{i}")
        agents[name] = CniAgent(Ipam(server.client(name, latency=0.001), rt, name), dataplane, rt, NodeConfig(name))
        rt.run_until_complete(agents[name].start())
    a, b = agents["node-a"], agents["node-b"]

    def req(command, container="", netns="", **kw):
        return CniRequest(command, "1.1.0", net, container, netns, "eth0" if container else "", **kw)

    async def main():
        for i in range(11):  # node-a claims every block of the pool
            await a.add(req("ADD", f"a{i}", f"/ns/{i}"))
        await b.add(req("ADD", "b0", "/ns/0"))
        assert b.ipam.stats.borrowed == 1
        await a.gc(req("GC", valid_attachments=tuple((f"a{i}", "eth0") for i in range(11))))
        assert "/ipam/handles/b0/eth0" in [kv.key for kv in server._range(HANDLES, True).kvs]
        await b.gc(req("GC", valid_attachments=()))  # node-b's pod is gone

    rt.run_until_complete(main())
    held = sorted(kv.key for kv in server._range(HANDLES, True).kvs)
    assert held == sorted(f"/ipam/handles/a{i}/eth0" for i in range(11))
