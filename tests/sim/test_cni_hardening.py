"""Issue 9 (hardening), CNI agent and IPAM on sim adapters.

* Failed ADDs do not exhaust a pool: an address that was never plumbed goes back
  without cool-down, and a bad CNI_NETNS fails before any etcd write.
* An ADD on one node never touches another node's allocation of the same container.
* Invalid IPAM records in etcd are set aside; a command that needs one gets code 105.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.admin import add_pool
from cni.ipam import Ipam
from cni.pools import BLOCKS, HANDLES, POOLS, Block, Handle, InvalidRecord, Pool, block_key
from cni.request import CniError, CniRequest
from node.cni_agent import CniAgent, NodeConfig
from sim.adapters.dataplane import SimDataplane
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

SMALL = Pool.parse("small", "10.40.0.0/26", vlan=140, gateway="10.40.0.1")  # 61 usable addresses, 4 blocks
NET = {"cniVersion": "1.1.0", "name": "leengine", "type": "leengine-cni", "bridge": "br-int", "pools": ["small"]}


class World:
    """One etcd, pools added by cnictl, and any number of nodes (agent + sim dataplane)."""

    def __init__(self, *pools: Pool, cooldown: float = 60.0) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.cooldown = cooldown
        self.nodes: dict[str, CniAgent] = {}
        for pool in pools or (SMALL,):
            self.run(add_pool(self.server.client("cnictl"), pool))

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def node(self, name: str, netns: int = 100) -> CniAgent:
        dataplane = SimDataplane(name)
        for i in range(netns):
            dataplane.add_netns(f"/run/netns/p{i}")
        agent = CniAgent(Ipam(self.server.client(name, latency=0.001), self.rt, name, cooldown=self.cooldown),
                         dataplane, self.rt, NodeConfig(name))
        self.run(agent.start())
        self.nodes[name] = agent
        return agent

    def records(self, prefix: str) -> dict[str, bytes]:
        return {kv.key: kv.value for kv in self.server._range(prefix, True).kvs}

    def put(self, key: str, value: bytes) -> None:
        self.run(self.server.client("vandal").put(key, value))


def req(command: str, container: str = "c1", netns: str = "/run/netns/p1", network=None, **kw) -> CniRequest:
    return CniRequest(command, "1.1.0", network or NET, container, netns, "eth0" if container else "",
                      args={"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": f"web-{container}"}, **kw)


def cni_error(world: World, coro) -> CniError:
    with pytest.raises(CniError) as err:
        world.run(coro)
    return err.value


# --------------------------------------------------------------------------- item 6


def test_forty_adds_failing_in_the_dataplane_leave_a_slash_26_whole_for_forty_good_ones():
    world = World()
    a = world.node("node-a")
    for i in range(40):
        a.dataplane.fail_next = "create veth"
        error = cni_error(world, a.add(req("ADD", f"bad{i}", f"/run/netns/p{i}")))
        assert error.code == 101 and "create veth" in error.details
    assert world.records(HANDLES) == {} and a.dataplane.interfaces == {}
    blocks = [Block.from_bytes(v) for v in world.records(BLOCKS).values()]
    assert all(not b.allocations and not b.released for b in blocks)  # nothing held, nothing cooling down
    addresses = {world.run(a.add(req("ADD", f"good{i}", f"/run/netns/p{i}")))["ips"][0]["address"] for i in range(40)}
    assert len(addresses) == 40 and len(world.records(HANDLES)) == 40


@pytest.mark.parametrize("netns, msg", [("/run/netns/nope", "CNI_NETNS does not exist"),
                                        ("/proc/self/ns/net", "CNI_NETNS is not a pod network namespace")])
def test_an_add_with_a_bad_netns_fails_before_any_etcd_write(netns, msg):
    world = World()
    a = world.node("node-a")
    revision = world.server.revision
    error = cni_error(world, a.add(req("ADD", netns=netns)))
    assert (error.code, error.msg) == (4, msg) and netns in error.details
    assert world.server.revision == revision  # not even a block claim and its undo
    assert world.records(BLOCKS) == {} and world.records(HANDLES) == {}


def test_an_address_that_was_plumbed_or_may_still_be_cools_down_after_a_failed_add():
    world = World()
    a = world.node("node-a")
    first = world.run(a.add(req("ADD", "c1", "/run/netns/p1")))["ips"][0]["address"]
    a.dataplane.fail_next = "add OVS port"  # a repeated ADD that fails: the address was plumbed before
    assert cni_error(world, a.add(req("ADD", "c1", "/run/netns/p1"))).code == 101
    a.dataplane.fail_next, a.dataplane.leave_behind = "configure pod interface", True  # its undo failed
    error = cni_error(world, a.add(req("ADD", "c2", "/run/netns/p2")))
    assert error.code == 101 and "undo" in str(error.details) + "".join(getattr(error.__cause__, "__notes__", []))
    [block] = [Block.from_bytes(v) for v in world.records(BLOCKS).values()]
    cooling = sorted(str(block.address(o)) for o in block.released)
    assert block.allocations == {} and len(cooling) == 2 and first.split("/")[0] in cooling
    a.dataplane.leave_behind = False
    again = world.run(a.add(req("ADD", "c3", "/run/netns/p3")))["ips"][0]["address"].split("/")[0]
    assert again not in cooling


# --------------------------------------------------------------------------- item 7


def test_an_add_for_a_container_another_node_holds_is_refused_and_touches_nothing():
    world = World()
    a, b = world.node("node-a"), world.node("node-b")
    held = world.run(b.add(req("ADD", "x", "/run/netns/p1")))["ips"][0]["address"]
    handles, blocks, revision = world.records(HANDLES), world.records(BLOCKS), world.server.revision
    for step in (None, "create veth"):  # plumbing would succeed, or fail (the old undo freed B's address)
        a.dataplane.fail_next = step
        error = cni_error(world, a.add(req("ADD", "x", "/run/netns/p2")))
        assert error.code == 104 and "node-b" in error.msg and held.split("/")[0] in error.details
    a.dataplane.fail_next = None
    assert a.dataplane.interfaces == {}
    check = cni_error(world, a.check(req("CHECK", "x", "/run/netns/p2", prev_result={"ips": [{"address": held}]})))
    assert check.code == 104 and "node-b" in check.details
    world.run(a.delete(req("DEL", "x", "/run/netns/p2")))  # the runtime DELs after the failed ADD: harmless
    assert world.records(HANDLES) == handles and world.records(BLOCKS) == blocks
    assert world.server.revision == revision
    assert json.loads(handles["/ipam/handles/x/eth0"])["node"] == "node-b"
    world.run(b.check(req("CHECK", "x", "/run/netns/p1", prev_result={"ips": [{"address": held}]})))


def test_a_borrowed_address_in_our_block_is_not_a_repeated_add_of_ours():
    tiny = Pool.parse("tiny", "10.30.0.0/28", vlan=200, gateway="10.30.0.1", block_size=4)
    world = World(tiny)
    net = {**NET, "pools": ["tiny"]}
    a, b = world.node("node-a"), world.node("node-b")
    for i in range(11):  # node-a claims every block of the pool; two addresses stay free
        world.run(a.add(req("ADD", f"a{i}", f"/run/netns/p{i}", network=net)))
    held = world.run(b.add(req("ADD", "x", "/run/netns/p1", network=net)))["ips"][0]["address"]
    assert b.ipam.stats.borrowed == 1
    a = world.node("node-a")  # restarted: its blocks, read back, hold x/eth0 (node-b's)
    assert any("x/eth0" in block.allocations.values() for block in a.ipam.owned_blocks())
    handles, blocks = world.records(HANDLES), world.records(BLOCKS)
    for step in (None, "create veth"):
        a.dataplane.fail_next = step
        error = cni_error(world, a.add(req("ADD", "x", "/run/netns/p12", network=net)))
        assert error.code == 104 and "node-b" in error.msg and held.split("/")[0] in error.details
    world.run(a.delete(req("DEL", "x", "/run/netns/p12", network=net)))
    assert world.records(HANDLES) == handles and world.records(BLOCKS) == blocks
    assert a.dataplane.interfaces == {}


# --------------------------------------------------------------------------- item 3

NESTED = b"[" * 100_000 + b"]" * 100_000
HOSTILE = [
    NESTED,
    b'{"pool": {"pool": ' * 5000 + b"1" + b"}" * 10000,
    b"1" * 5000,  # a 5,000-digit integer
    b"\xff\xfe",
    b'{"pool": 7, "cidr": [], "node": null}',
    json.dumps({"pool": "small", "cidr": "10.40.0.0/28", "node": "node-a", "allocations": {"9" * 6000: "c/eth0"}}
               ).encode(),
    json.dumps({"pool": "small", "cidr": "10.40.0.0/28", "node": "node-a", "released": {"3": 1e308 * 10}}).encode(),
]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("decode", [Pool.from_bytes, Block.from_bytes, Handle.from_bytes],
                         ids=["pool", "block", "handle"])
def test_every_decoder_turns_hostile_bytes_into_invalid_record(decode, raw):
    with pytest.raises(InvalidRecord) as err:
        decode(raw)
    assert len(str(err.value)) < 400  # what is echoed is cut


def _json_values():
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                                               inner, max_size=4),
                        max_leaves=20)


_FIELDS = ["pool", "cidr", "node", "allocations", "released", "container_id", "ifname", "address", "name",
           "vlan", "gateway", "exclude", "block_size", "pod", "network", "allocated_at"]
_GOOD = {"pool": "small", "cidr": "10.40.0.0/28", "node": "node-a", "allocations": {"2": "c/eth0"},
         "released": {"3": 1.0}, "container_id": "c", "ifname": "eth0", "address": "10.40.0.2", "name": "small",
         "vlan": 140, "gateway": "10.40.0.1", "exclude": [], "block_size": 16, "pod": {}, "network": "n",
         "allocated_at": 1.0}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _json_values(), max_size=6), st.booleans())
def test_decoders_never_raise_anything_but_invalid_record(overrides, start_good):
    raw = json.dumps({**(_GOOD if start_good else {}), **overrides}).encode()
    for decode in (Pool.from_bytes, Block.from_bytes, Handle.from_bytes):
        try:
            decoded = decode(raw)
        except InvalidRecord:
            continue
        assert type(decoded).from_bytes(decoded.to_bytes()) == decoded  # what decodes, re-encodes the same


def test_invalid_records_are_set_aside_and_only_what_needs_them_fails():
    world = World(SMALL, Pool.parse("other", "10.50.0.0/24", vlan=150, gateway="10.50.0.1"))
    a = world.node("node-a")
    kept = world.run(a.add(req("ADD", "kept", "/run/netns/p1")))["ips"][0]["address"]
    mine = {block.key for block in a.ipam.owned_blocks()}
    garbled, impostor = [key for key in (block_key("small", cidr) for cidr in SMALL.blocks()) if key not in mine][:2]
    world.put(f"{POOLS}broken", NESTED)
    world.put(garbled, b'{"pool": "small", "node": "node-a", "cidr": 12}')
    world.put(impostor, json.dumps(  # a block of ours, it says, but another one, outside its pool
        {"pool": "small", "cidr": "8.8.8.0/28", "node": "node-a", "allocations": {}}).encode())
    world.put(f"{HANDLES}corrupt/eth0", b"1" * 5000)
    world.put(f"{HANDLES}kept/eth0", NESTED)  # a live pod's handle was overwritten
    restarted = world.node("node-a")  # the agent restarts on top of all this: no crash
    assert {block.key for block in restarted.ipam.owned_blocks()} == mine
    ok = world.run(restarted.add(req("ADD", "new", "/run/netns/p2")))["ips"][0]["address"]
    assert ok != kept and not ok.startswith("8.8.8.")
    error = cni_error(world, restarted.add(req("ADD", "b", "/run/netns/p3", network={**NET, "pools": ["broken"]})))
    assert error.code == 105 and f"{POOLS}broken" in error.details and "RecursionError" in error.details
    error = cni_error(world, restarted.add(req("ADD", "corrupt", "/run/netns/p4")))
    assert error.code == 105 and f"{HANDLES}corrupt/eth0" in error.details
    error = cni_error(world, restarted.check(req("CHECK", "kept", prev_result={"ips": [{"address": kept}]})))
    assert error.code == 105 and f"{HANDLES}kept/eth0" in error.details
    world.run(restarted.delete(req("DEL", "corrupt", "/run/netns/p4")))  # DEL finishes; the record stays for cnictl
    assert world.records(HANDLES)[f"{HANDLES}corrupt/eth0"] == b"1" * 5000
    world.run(restarted.gc(req("GC", "", "", valid_attachments=(("new", "eth0"),))))
    assert f"{HANDLES}new/eth0" in world.records(HANDLES)
    world.run(restarted.status(req("STATUS", "", "")))
    # Many ADDs later the invalid blocks were never claimed over nor allocated from.
    for i in range(5, 25):  # the two good blocks' worth
        world.run(restarted.add(req("ADD", f"n{i}", f"/run/netns/p{i}")))
    assert world.records(BLOCKS)[garbled] == b'{"pool": "small", "node": "node-a", "cidr": 12}'
    assert all(not a.startswith("8.8.8.") for a in (json.loads(v).get("address", "") for k, v in
                                                    world.records(HANDLES).items() if not k.endswith(("corrupt/eth0",
                                                                                                        "kept/eth0"))))


def test_a_burst_of_adds_naming_an_invalid_pool_each_get_105_and_the_agent_serves_on():
    world = World()
    world.put(f"{POOLS}broken", b'{"name": "broken", "cidr": "10.60.0.0/24", "gateway": "10.60.0.1", "vlan": "100"}')
    a = world.node("node-a")
    broken = {**NET, "pools": ["broken"]}

    async def burst():
        tasks = [world.rt.spawn(a.add(req("ADD", f"c{i}", f"/run/netns/p{i}", network=broken)), name=f"add {i}")
                 for i in range(5)]
        outcomes = []
        for task in tasks:
            try:
                outcomes.append(await task.join())
            except CniError as exc:
                outcomes.append(exc)
        return outcomes

    outcomes = world.run(burst())
    assert all(isinstance(o, CniError) and o.code == 105 and f"{POOLS}broken" in o.details and "vlan" in o.details
               for o in outcomes), outcomes
    assert world.records(HANDLES) == {} and world.records(BLOCKS) == {}
    assert world.run(a.add(req("ADD", "fine", "/run/netns/p9")))["ips"]
