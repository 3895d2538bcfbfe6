"""CHECK's error codes on the sim agent (issue 9): a dataplane that cannot look is 101, a missing netns 4, not 5."""

from __future__ import annotations

import pytest

from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import Pool
from cni.request import DATAPLANE_FAILURE, INVALID_ENV, CniError, CniRequest
from foundation.ports.dataplane import DataplaneError, NetnsNotFound
from node.cni_agent import CniAgent, NodeConfig
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

POOL = Pool.parse("cell1-a", "10.20.0.0/22", vlan=100, gateway="10.20.0.1")
NET = {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int", "pools": ["cell1-a"]}


def request(command, **kw):
    return CniRequest(command, "1.0.0", NET, "c1", "/var/run/netns/p1", "eth0",
                      args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-1"}, **kw)


@pytest.mark.parametrize(("error", "code"), [(DataplaneError("read ports", "ovsdb gone"), DATAPLANE_FAILURE),
                                             (NetnsNotFound("/var/run/netns/p1"), INVALID_ENV)])
def test_a_dataplane_error_during_check_gets_its_cni_code(error, code):
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    rt.run_until_complete(add_pool(server.client("cnictl"), POOL))
    dataplane = SimDataplane("node-1")
    dataplane.add_netns("/var/run/netns/p1")
    agent = CniAgent(Ipam(server.client("node-1", latency=0.001), rt, "node-1"), dataplane, rt, NodeConfig("node-1"))
    rt.run_until_complete(agent.start())
    result = rt.run_until_complete(agent.add(request("ADD")))

    async def broken_check(attachment):
        raise error

    dataplane.check = broken_check
    with pytest.raises(CniError) as info:
        rt.run_until_complete(agent.check(request("CHECK", prev_result=result)))
    assert info.value.code == code and str(error) in info.value.details
