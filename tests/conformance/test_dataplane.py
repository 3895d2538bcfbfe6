"""The Dataplane port's conformance suite: the same test bodies against real OVS and the sim dataplane.

``dataplane_harness`` runs ``async def body(h)`` either on the sim runtime with a
``SimDataplane`` or on asyncio with an ``OvsDataplane`` against the session's private
Open vSwitch (``ovs_server``), on a bridge of its own (datapath netdev) and in network
namespaces made with ``ip netns add`` under unique names; the runner removes the bridge
and the namespaces afterwards, also when the test fails. Each body asserts only what
the port promises: e.g. a detached veth may outlive ``detach`` for a moment on the real
adapter, so the bodies look at ``ports()`` and ``check()``, never at the kernel.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from foundation.adapters.ovs_dataplane import OvsDataplane
from foundation.ports.dataplane import (
    Attachment,
    DataplaneError,
    InvalidNetns,
    NetnsNotFound,
    PortRecord,
    host_ifname,
)
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime

TOKEN = f"{os.getpid() % 0x10000:04x}"  # names unique between concurrent runs; bridge names <= 15 bytes
_ids = itertools.count()
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass
class DataplaneHarness:
    """What a body gets: the dataplane, a bridge of its own and a way to make pod namespaces."""

    kind: str
    dataplane: object
    bridge: str
    make_netns: Callable[[], str]  # a new namespace that exists; returns its path
    missing_netns: str  # a namespace path that does not exist

    def attachment(self, netns: str, *, vlan: int = 10, address: str = "198.18.7.2/24", **kw) -> Attachment:
        return Attachment(container_id=f"lc{TOKEN}-{next(_ids)}", netns=netns, ifname="eth0", bridge=self.bridge,
                          vlan=vlan, address=address, gateway="198.18.7.1", **kw)


def _sh(*argv: str) -> None:
    subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=True)


class _SimRunner:
    kind = "sim"

    def run(self, body: Callable[[DataplaneHarness], Awaitable[None]]) -> None:
        runtime = SimRuntime(seed=1)
        dp = SimDataplane("node-1")
        bridge = f"lc{TOKEN}b{next(_ids)}"
        dp.bridges.add(bridge)

        def make_netns() -> str:
            path = f"/var/run/netns/lc{TOKEN}p{next(_ids)}"
            dp.add_netns(path)
            return path

        harness = DataplaneHarness("sim", dp, bridge, make_netns, f"/var/run/netns/lc{TOKEN}gone{next(_ids)}")
        runtime.run_until_complete(body(harness), limit=3600)


class _OvsRunner:
    kind = "ovs"

    def __init__(self, ovs) -> None:
        self.ovs = ovs

    def run(self, body: Callable[[DataplaneHarness], Awaitable[None]]) -> None:
        bridge = f"lc{TOKEN}b{next(_ids)}"
        made: list[str] = []

        def make_netns() -> str:
            name = f"lc{TOKEN}p{next(_ids)}"
            _sh("ip", "netns", "add", name)
            made.append(name)
            return f"/var/run/netns/{name}"

        async def main() -> None:
            dp = OvsDataplane(self.ovs.db, timeout=5)
            try:
                await dp.ensure_bridge(bridge, "netdev")
                harness = DataplaneHarness("ovs", dp, bridge, make_netns,
                                           f"/var/run/netns/lc{TOKEN}gone{next(_ids)}")
                await asyncio.wait_for(body(harness), 60)
            finally:
                try:
                    await dp.delete_bridge(bridge)  # takes every port left on it
                finally:
                    await dp.close()  # finishes pending veth deletions

        try:
            asyncio.run(main())
        finally:
            for name in made:  # a veth whose netns goes goes with it
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


@pytest.fixture(params=["sim", "ovs"])
def dataplane_harness(request):
    if request.param == "sim":
        return _SimRunner()
    return _OvsRunner(request.getfixturevalue("ovs_server"))


# --------------------------------------------------------------------------- bodies


def test_attach_returns_the_derived_host_ifname_and_macs_and_check_is_clean(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        att = h.attachment(h.make_netns())
        iface = await dp.attach(att)
        assert iface.host_ifname == host_ifname(att.container_id, att.ifname) == att.host_ifname
        assert len(iface.host_ifname.encode()) <= 15
        assert (iface.pod_ifname, iface.netns) == (att.ifname, att.netns)
        for mac in (iface.host_mac, iface.pod_mac):
            assert MAC.match(mac), mac
            assert int(mac[:2], 16) & 1 == 0  # unicast
        assert iface.host_mac != iface.pod_mac
        assert await dp.check(att) == []
        await dp.detach(att.container_id, att.ifname, att.netns)

    dataplane_harness.run(body)


def test_ports_lists_an_attachment_with_its_records(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        assert await dp.ports(h.bridge) == []
        first = h.attachment(h.make_netns(), vlan=10, address="198.18.7.2/24")
        second = h.attachment(h.make_netns(), vlan=20, address="198.18.7.3/24")
        await dp.attach(first)
        await dp.attach(second)
        ports = sorted(await dp.ports(h.bridge), key=lambda p: p.container_id)
        assert ports == sorted([PortRecord(a.host_ifname, h.bridge, a.vlan, a.container_id, a.ifname, a.netns)
                                for a in (first, second)], key=lambda p: p.container_id)
        for att in (first, second):
            await dp.detach(att.container_id, att.ifname, att.netns)
        assert await dp.ports(h.bridge) == []

    dataplane_harness.run(body)


def test_detach_is_idempotent_and_the_port_is_gone_when_it_returns(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        att = h.attachment(h.make_netns())
        await dp.attach(att)
        await dp.detach(att.container_id, att.ifname, att.netns)
        await dp.detach(att.container_id, att.ifname, att.netns)  # already gone: success
        await dp.detach(att.container_id, att.ifname, None)  # a GC that does not know the netns
        assert await dp.ports(h.bridge) == []
        problems = await dp.check(att)
        assert problems and any(att.host_ifname in p for p in problems)
        # The names are free again (a background deletion is waited for, never an "already exists").
        again = await dp.attach(att)
        assert again.host_ifname == att.host_ifname and await dp.check(att) == []
        await dp.detach(att.container_id, att.ifname, att.netns)

    dataplane_harness.run(body)


def test_attach_into_a_missing_netns_raises_netns_not_found_and_leaves_nothing(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        att = h.attachment(h.missing_netns)
        with pytest.raises(NetnsNotFound) as err:
            await dp.attach(att)
        assert err.value.netns == att.netns and err.value.step == "open netns"
        assert att.netns in str(err.value)
        assert await dp.ports(h.bridge) == []
        await dp.detach(att.container_id, att.ifname, att.netns)  # nothing there: still success

    dataplane_harness.run(body)


def test_check_netns_accepts_a_pod_netns_and_refuses_a_missing_one_and_the_nodes_own(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        await dp.check_netns(h.make_netns())  # a pod's: fine
        with pytest.raises(NetnsNotFound) as err:
            await dp.check_netns(h.missing_netns)
        assert err.value.netns == h.missing_netns and err.value.step == "open netns"
        with pytest.raises(InvalidNetns) as err:
            await dp.check_netns("/proc/self/ns/net")  # the agent's own namespace is never a pod's
        assert not isinstance(err.value, NetnsNotFound) and "own network namespace" in str(err.value)
        att = h.attachment("/proc/self/ns/net")
        with pytest.raises(InvalidNetns):
            await dp.attach(att)  # attach checks again, whoever calls it
        assert await dp.ports(h.bridge) == []

    dataplane_harness.run(body)


def test_attach_onto_a_missing_bridge_names_the_step_and_leaves_nothing(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        netns = h.make_netns()
        att = replace(h.attachment(netns), bridge=f"lc{TOKEN}nob{next(_ids)}")
        with pytest.raises(DataplaneError) as err:
            await dp.attach(att)
        assert not isinstance(err.value, NetnsNotFound)
        assert err.value.step == "add OVS port" and att.bridge in str(err.value)
        assert await dp.ports(h.bridge) == [] and await dp.ports(att.bridge) == []
        assert await dp.check(att)  # nothing of it is there
        # All or nothing: the same names attach cleanly onto the bridge that exists.
        good = replace(att, bridge=h.bridge)
        await dp.attach(good)
        assert await dp.check(good) == []
        await dp.detach(good.container_id, good.ifname, good.netns)

    dataplane_harness.run(body)


def test_check_reports_a_different_vlan_and_changes_nothing(dataplane_harness):
    async def body(h):
        dp = h.dataplane
        att = h.attachment(h.make_netns(), vlan=10)
        await dp.attach(att)
        problems = await dp.check(replace(att, vlan=20))
        assert len(problems) == 1, problems
        assert "vlan" in problems[0].lower() and "10" in problems[0] and "20" in problems[0]
        assert await dp.check(att) == []  # check changed nothing
        assert [p.vlan for p in await dp.ports(h.bridge)] == [10]
        await dp.detach(att.container_id, att.ifname, att.netns)

    dataplane_harness.run(body)
