"""The real Dataplane adapter against real Open vSwitch (userspace datapath), veths and network namespaces.

Topology: two "nodes" = two OVS bridges (datapath netdev) joined through a trunk
bridge by patch ports; "pods" = network namespaces this test makes with unique
names. Traffic goes only to addresses inside those namespaces (198.18.0.0/15, the
benchmarking range), with bounded ping counts and timeouts. Everything a test makes
is removed by fixture finalizers, also when the test fails. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from foundation.adapters.ovs_dataplane import EXT_CONTAINER_ID, EXT_IFNAME, EXT_NETNS, OvsDataplane
from foundation.ports.dataplane import Attachment, DataplaneError, InvalidNetns, NetnsNotFound, host_ifname
from lab.processes import freeze

TOKEN = f"{os.getpid() % 0x10000:04x}"  # keeps names unique between concurrent runs; bridge names <= 15 bytes
NODE0, NODE1, TRUNK = f"lz{TOKEN}n0", f"lz{TOKEN}n1", f"lz{TOKEN}tr"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return sh(*prefix, "link", "show", "dev", name, check=False).returncode == 0


def gone_soon(name: str, netns: str | None = None, within: float = 2.0) -> bool:
    """True once ``name`` no longer exists: detach leaves the veth's deletion to a background reaper."""
    deadline = time.monotonic() + within
    while link_exists(name, netns):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def ping(netns: str, address: str) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", netns, "ping", "-c", "3", "-W", "1", "-i", "0.2", address, check=False)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def topology(ovs_server):
    """Two node bridges and a trunk bridge, patched together; removed at the end."""

    async def build() -> None:
        async with OvsDataplane(ovs_server.db, timeout=5) as dp:
            for bridge in (NODE0, NODE1, TRUNK):
                await dp.ensure_bridge(bridge)
            await dp.connect_bridges(NODE0, TRUNK)
            await dp.connect_bridges(NODE1, TRUNK)

    async def teardown() -> None:
        async with OvsDataplane(ovs_server.db, timeout=5) as dp:
            for bridge in (NODE0, NODE1, TRUNK):
                await dp.delete_bridge(bridge)

    try:
        run(build())
        yield ovs_server
    finally:
        run(teardown())


class Lab:
    """Pods (netns) and attachments of one test; ``cleanup()`` removes them all."""

    _ids = itertools.count()

    def __init__(self, ovs, dp: OvsDataplane) -> None:
        self.ovs = ovs
        self.dp = dp
        self.netns: list[str] = []
        self.attachments: list[Attachment] = []

    def pod(self) -> str:
        name = f"lz{TOKEN}p{next(self._ids)}"
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")  # lo is the runtime's job, not the dataplane's
        return name

    def attachment(self, netns: str, bridge: str, vlan: int, address: str, **kw) -> Attachment:
        att = Attachment(
            container_id=f"{netns}-{next(self._ids)}",
            netns=f"/var/run/netns/{netns}",
            ifname="eth0",
            bridge=bridge,
            vlan=vlan,
            address=address,
            gateway=str(ipaddress.ip_interface(address).network[1]),  # nobody answers there: pods talk to pods
            **kw,
        )
        self.attachments.append(att)
        return att

    def pod_link(self, att: Attachment) -> dict:
        return json.loads(sh("ip", "-n", self.name(att), "-j", "link", "show", "dev", att.ifname).stdout)[0]

    @staticmethod
    def name(att: Attachment) -> str:
        return os.path.basename(att.netns)

    def port_names(self, bridge: str) -> list[str]:
        return self.ovs.vsctl("list-ports", bridge).split()

    def cleanup(self) -> None:
        async def detach_all() -> None:
            for att in self.attachments:
                await self.dp.detach(att.container_id, att.ifname, att.netns)

        try:
            run(detach_all())
        finally:
            for name in self.netns:
                sh("ip", "netns", "del", name, check=False)
            for att in self.attachments:  # a veth whose netns is gone has gone with it; this is belt and braces
                sh("ip", "link", "del", att.host_ifname, check=False)


@pytest.fixture
def lab(topology):
    dp = OvsDataplane(topology.db, timeout=5)
    lab = Lab(topology, dp)
    try:
        yield lab
    finally:
        try:
            lab.cleanup()
        finally:
            run(dp.close())


# --------------------------------------------------------------------------- connectivity


def test_same_vlan_across_nodes_talks_and_other_vlans_do_not(lab):
    a, b, c = lab.pod(), lab.pod(), lab.pod()
    att_a = lab.attachment(a, NODE0, 101, "198.18.1.2/24")
    att_b = lab.attachment(b, NODE1, 101, "198.18.1.3/24")
    att_c = lab.attachment(c, NODE1, 102, "198.18.1.4/24")  # same subnet, other VLAN: must be unreachable

    async def body():
        for att in (att_a, att_b, att_c):
            await lab.dp.attach(att)

    run(body())
    same = ping(a, "198.18.1.3")
    assert same.returncode == 0, same.stdout + same.stderr
    assert " 0% packet loss" in same.stdout
    other = ping(a, "198.18.1.4")
    assert other.returncode != 0
    assert "100% packet loss" in other.stdout
    back = ping(c, "198.18.1.2")
    assert back.returncode != 0


def test_tcp_works_between_pods_on_the_userspace_datapath(lab):
    # A veth hands frames to vswitchd with the TCP checksum still unfilled unless TX
    # checksum offload is off on the pod end; ping passes either way, TCP does not.
    a, b = lab.pod(), lab.pod()
    att_a = lab.attachment(a, NODE0, 103, "198.18.3.2/24")
    att_b = lab.attachment(b, NODE1, 103, "198.18.3.3/24")
    run(lab.dp.attach(att_a))
    run(lab.dp.attach(att_b))
    server = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('198.18.3.3', 9000)); s.listen(1); s.settimeout(10)\n"
            "print('ready', flush=True)\n"
            "c,_=s.accept(); c.settimeout(10); c.sendall(b'x' * 1_000_000); c.close()\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        client = sh("ip", "netns", "exec", a, sys.executable, "-c", (
            "import socket\n"
            "s=socket.create_connection(('198.18.3.3', 9000), timeout=5); n=0\n"
            "while (b := s.recv(65536)): n += len(b)\n"
            "print(n)\n"
        ), check=False, timeout=20)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "1000000"
    finally:
        server.kill()
        server.wait()


# --------------------------------------------------------------------------- what attach made


def test_port_is_an_access_port_with_our_external_ids(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 104, "198.18.4.2/24")
    made = run(lab.dp.attach(att))
    port = att.host_ifname
    assert made.host_ifname == port == host_ifname(att.container_id, "eth0")
    assert lab.ovs.vsctl("get", "Port", port, "tag").strip() == "104"
    assert lab.ovs.vsctl("get", "Port", port, "trunks").strip() == "[]"
    assert port in lab.port_names(NODE0)
    ids = {key: lab.ovs.vsctl("get", "Port", port, f'external_ids:"{key}"').strip().strip('"')
           for key in (EXT_CONTAINER_ID, EXT_IFNAME, EXT_NETNS)}
    assert ids == {EXT_CONTAINER_ID: att.container_id, EXT_IFNAME: "eth0", EXT_NETNS: att.netns}
    assert int(lab.ovs.vsctl("get", "Interface", port, "ofport")) > 0  # vswitchd really took it
    records = run(lab.dp.ports(NODE0))
    mine = [r for r in records if r.container_id == att.container_id]
    assert len(mine) == 1 and (mine[0].host_ifname, mine[0].vlan, mine[0].netns) == (port, 104, att.netns)
    assert all(not r.host_ifname.startswith(("patch-", "lz")) for r in records)  # patch and internal ports are not ours


def test_pod_has_address_mtu_and_default_route(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 105, "198.18.5.2/24", mtu=1400)
    made = run(lab.dp.attach(att))
    link = lab.pod_link(att)
    assert link["mtu"] == 1400
    assert link["address"] == made.pod_mac
    assert "UP" in link["flags"]
    addrs = json.loads(sh("ip", "-n", pod, "-j", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"]
    assert {(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"} == {("198.18.5.2", 24)}
    routes = json.loads(sh("ip", "-n", pod, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("198.18.5.1", "eth0")]
    host = json.loads(sh("ip", "-j", "link", "show", "dev", att.host_ifname).stdout)[0]
    assert host["mtu"] == 1400 and "UP" in host["flags"]
    assert host["address"] == made.host_mac


# --------------------------------------------------------------------------- check


def test_check_is_empty_when_good_and_names_each_difference(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 106, "198.18.6.2/24")
    run(lab.dp.attach(att))
    assert run(lab.dp.check(att)) == []

    lab.ovs.vsctl("set", "Port", att.host_ifname, "tag=999")
    diffs = run(lab.dp.check(att))
    assert len(diffs) == 1 and "VLAN tag 999, expected 106" in diffs[0]
    assert lab.ovs.vsctl("get", "Port", att.host_ifname, "tag").strip() == "999"  # check changed nothing

    sh("ip", "-n", pod, "addr", "del", "198.18.6.2/24", "dev", "eth0")  # the default route goes with it
    diffs = run(lab.dp.check(att))
    assert any("address 198.18.6.2/24 missing on eth0" in d for d in diffs), diffs
    assert any(f"default route via {att.gateway} missing" in d for d in diffs), diffs
    assert any("VLAN tag 999" in d for d in diffs), diffs

    sh("ip", "-n", pod, "link", "set", "eth0", "mtu", "1300")
    assert any("has MTU 1300, expected 1500" in d for d in run(lab.dp.check(att)))

    sh("ip", "-n", pod, "link", "del", "eth0")  # takes the host end with it
    diffs = run(lab.dp.check(att))
    assert any(f"interface eth0 in {att.netns} missing" in d for d in diffs), diffs
    assert any(f"host interface {att.host_ifname} missing" in d for d in diffs), diffs

    run(lab.dp.detach(att.container_id, "eth0", att.netns))
    diffs = run(lab.dp.check(att))
    assert any(f"OVS port {att.host_ifname} missing" in d for d in diffs), diffs


# --------------------------------------------------------------------------- detach


def test_detach_twice_leaves_no_port_and_no_veth(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE1, 107, "198.18.7.2/24")
    run(lab.dp.attach(att))
    assert link_exists(att.host_ifname) and link_exists("eth0", pod)
    for _ in range(2):
        run(lab.dp.detach(att.container_id, "eth0", att.netns))
        assert att.host_ifname not in lab.port_names(NODE1)
        assert gone_soon(att.host_ifname)
        assert gone_soon("eth0", pod)
    assert att.container_id not in {r.container_id for r in run(lab.dp.ports(NODE1))}


def test_detach_after_the_netns_is_gone_and_without_netns(lab):
    pod, other = lab.pod(), lab.pod()
    gone = lab.attachment(pod, NODE0, 108, "198.18.8.2/24")
    host_only = lab.attachment(other, NODE0, 108, "198.18.8.3/24")
    run(lab.dp.attach(gone))
    run(lab.dp.attach(host_only))
    sh("ip", "netns", "del", pod)  # the pod's sandbox vanished before DEL came
    run(lab.dp.detach(gone.container_id, "eth0", gone.netns))
    run(lab.dp.detach(host_only.container_id, "eth0", None))  # netns unknown: host side only
    ports = lab.port_names(NODE0)
    assert gone.host_ifname not in ports and host_only.host_ifname not in ports
    assert gone_soon(gone.host_ifname) and gone_soon(host_only.host_ifname)
    assert gone_soon("eth0", other)  # the veth pair goes as one


# --------------------------------------------------------------------------- failures


def test_attach_into_missing_netns_raises_and_leaves_nothing(lab):
    att = lab.attachment(f"lz{TOKEN}nope", NODE0, 109, "198.18.9.2/24")
    before = lab.port_names(NODE0)
    with pytest.raises(NetnsNotFound) as err:
        run(lab.dp.attach(att))
    assert err.value.step == "open netns" and att.netns in str(err.value)
    assert lab.port_names(NODE0) == before
    assert not link_exists(att.host_ifname)


def test_a_fifo_as_netns_is_refused_at_once_and_the_worker_keeps_serving(lab, tmp_path):
    fifo = tmp_path / "not-a-netns"
    os.mkfifo(fifo)
    att = lab.attachment(lab.pod(), NODE0, 119, "198.18.19.2/24")
    bad = Attachment(**{**{f: getattr(att, f) for f in Attachment.__slots__}, "container_id": f"lz{TOKEN}-fifo",
                        "netns": str(fifo)})
    before = lab.port_names(NODE0)

    async def attempts() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(InvalidNetns) as err:
            await asyncio.wait_for(lab.dp.attach(bad), 5)
        return time.monotonic() - started, str(err.value)

    try:
        took, message = run(attempts())
    finally:
        # Had an open blocked on the FIFO, a writer releases it (so a failure here cannot hang the run).
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert took < 1.0 and "FIFO" in message and str(fifo) in message
    with pytest.raises(InvalidNetns):
        run(asyncio.wait_for(lab.dp.check_netns(str(fifo)), 5))
    assert lab.port_names(NODE0) == before and not link_exists(bad.host_ifname)
    # The one worker thread is free: the next attach works at once.
    run(asyncio.wait_for(lab.dp.attach(att), 10))
    assert run(lab.dp.check(att)) == []


@pytest.mark.parametrize("path, why", [
    ("/proc/self/ns/net", "own network namespace"),
    ("/proc/self/ns/mnt", "another kind"),
    ("/dev/null", "character device"),
    ("{tmp}/regular-file", "not on nsfs"),
    ("{tmp}", "directory"),
])
def test_what_is_not_a_pod_netns_is_refused_with_the_reason_and_leaves_nothing(lab, path, why, tmp_path):
    (tmp_path / "regular-file").write_text("not a namespace\n")  # the test's own, so every case runs everywhere
    path = path.format(tmp=tmp_path)
    att = Attachment(container_id=f"lz{TOKEN}-host", netns=path, ifname=f"lz{TOKEN}h", bridge=NODE0, vlan=120,
                     address="198.18.20.2/24", gateway="198.18.20.1")
    before = lab.port_names(NODE0)
    for call in (lab.dp.check_netns(path), lab.dp.attach(att)):
        with pytest.raises(InvalidNetns) as err:
            run(asyncio.wait_for(call, 5))
        assert err.value.step == "open netns" and why in str(err.value) and path in str(err.value)
        assert not isinstance(err.value, NetnsNotFound)
    assert lab.port_names(NODE0) == before
    assert not link_exists(att.host_ifname) and not link_exists(att.ifname)  # nothing in the host netns either
    assert any(why in problem for problem in run(lab.dp.check(att)))
    run(lab.dp.detach(att.container_id, att.ifname, path))  # DEL: nothing of ours there, success
    assert not link_exists(att.ifname)


def test_attach_failing_midway_undoes_veth_and_port(lab):
    pod = lab.pod()
    # No such bridge: fails at the last step, after the veth is configured in the pod.
    att = lab.attachment(pod, f"lz{TOKEN}xx", 110, "198.18.10.2/24")
    with pytest.raises(DataplaneError) as err:
        run(lab.dp.attach(att))
    assert err.value.step == "add OVS port"
    assert "does not exist" in err.value.reason
    assert not link_exists(att.host_ifname)
    assert not link_exists("eth0", pod)
    assert [link["ifname"] for link in json.loads(sh("ip", "-n", pod, "-j", "link").stdout)] == ["lo"]
    assert "Port" not in lab.ovs.vsctl("--if-exists", "get", "Port", att.host_ifname, "name")


def test_second_attach_is_refused_and_keeps_the_first(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 111, "198.18.11.2/24")
    run(lab.dp.attach(att))
    with pytest.raises(DataplaneError) as err:
        run(lab.dp.attach(att))
    assert err.value.step == "create veth" and "already exists" in err.value.reason
    assert run(lab.dp.check(att)) == []  # the undo removed nothing it had not made


def test_bad_gateway_fails_at_its_step_and_undoes(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 112, "198.18.12.2/24")
    bad = Attachment(**{**{f: getattr(att, f) for f in att.__dataclass_fields__}, "gateway": "203.0.113.1"})
    with pytest.raises(DataplaneError) as err:
        run(lab.dp.attach(bad))
    assert err.value.step == "add default route"
    assert not link_exists(att.host_ifname) and not link_exists("eth0", pod)
    assert att.host_ifname not in lab.port_names(NODE0)


# --------------------------------------------------------------------------- gratuitous ARP

_ARP_LISTENER = """
import socket, struct, sys, time
want, seconds = socket.inet_aton(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
print("ready", flush=True)
deadline = time.monotonic() + seconds
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        frame = s.recv(2048)
    except TimeoutError:
        break
    op, sha, spa, tha, tpa = struct.unpack("!6xH6s4s6s4s", frame[14:42])
    if spa == want and tpa == want:
        print(f"garp op={op} sha={sha.hex(':')} from={socket.inet_ntoa(spa)}", flush=True)
        sys.exit(0)
print("none", flush=True)
"""


def _listen_for_garp(netns: str, address: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _ARP_LISTENER, address,
                             str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_gratuitous_arp_reaches_a_pod_on_the_same_vlan(lab):
    watcher, pod, quiet = lab.pod(), lab.pod(), lab.pod()
    run(lab.dp.attach(lab.attachment(watcher, NODE1, 113, "198.18.13.9/24")))
    announced = lab.attachment(pod, NODE0, 113, "198.18.13.2/24", gratuitous_arp=True)
    silent = lab.attachment(quiet, NODE0, 113, "198.18.13.3/24")  # control: no option, no announcement

    listener = _listen_for_garp(watcher, "198.18.13.2", 5.0)
    try:
        made = run(lab.dp.attach(announced))
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
    assert out.strip() == f"garp op=1 sha={made.pod_mac} from=198.18.13.2"

    listener = _listen_for_garp(watcher, "198.18.13.3", 1.0)
    try:
        run(lab.dp.attach(silent))
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
    assert out.strip() == "none"


def test_leftover_port_of_ours_is_replaced_and_a_foreign_one_is_not(lab):
    # After a node reboot the veths are gone but OVSDB still holds their ports.
    pod, other = lab.pod(), lab.pod()
    att = lab.attachment(pod, NODE0, 114, "198.18.14.2/24")
    lab.ovs.vsctl("add-port", NODE1, att.host_ifname, "tag=7", "--", "set", "Port", att.host_ifname,
                  f'external_ids:"{EXT_CONTAINER_ID}"="{att.container_id}"')
    run(lab.dp.attach(att))
    assert run(lab.dp.check(att)) == []
    assert att.host_ifname in lab.port_names(NODE0) and att.host_ifname not in lab.port_names(NODE1)

    foreign = lab.attachment(other, NODE0, 114, "198.18.14.3/24")
    lab.ovs.vsctl("add-port", NODE1, foreign.host_ifname)  # same name, no external_ids: someone else's
    with pytest.raises(DataplaneError) as err:
        run(lab.dp.attach(foreign))
    assert err.value.step == "add OVS port" and "not ours" in err.value.reason
    assert not link_exists(foreign.host_ifname) and not link_exists("eth0", other)
    assert foreign.host_ifname in lab.port_names(NODE1)  # left alone
    lab.ovs.vsctl("del-port", NODE1, foreign.host_ifname)


def test_unreachable_ovsdb_fails_fast_naming_the_step_and_makes_nothing(lab, tmp_path):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 115, "198.18.15.2/24")

    async def body():
        async with OvsDataplane(f"unix:{tmp_path}/nothing.sock", timeout=1) as dp:
            await dp.attach(att)

    started = time.monotonic()
    with pytest.raises(DataplaneError) as err:
        run(body())
    assert time.monotonic() - started < 5
    assert err.value.step == "connect OVSDB" and "nothing.sock" in err.value.reason
    assert not link_exists(att.host_ifname) and not link_exists("eth0", pod)


def test_hung_vswitchd_times_out_and_attach_leaves_no_port_row(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 116, "198.18.16.2/24")
    vswitchd = lab.ovs.pid("ovs-vswitchd")

    async def body():
        async with OvsDataplane(lab.ovs.db, timeout=1) as dp:
            await dp.attach(att)

    try:
        freeze(vswitchd)  # inside the try: SIGSTOP is sent even if freeze raises
        started = time.monotonic()
        with pytest.raises(DataplaneError) as err:
            run(body())
        elapsed = time.monotonic() - started
    finally:
        os.kill(vswitchd, signal.SIGCONT)
    assert elapsed < 6
    assert err.value.step == "add OVS port" and "ovs-vswitchd did not apply" in err.value.reason
    # The undo removed the row: deleting a port does not wait for vswitchd, so it works while it hangs.
    assert att.host_ifname not in lab.port_names(NODE0)
    assert not any("undo" in note and "failed" in note for note in getattr(err.value, "__notes__", []))
    assert not link_exists(att.host_ifname) and not link_exists("eth0", pod)
    run(lab.dp.attach(att))  # vswitchd is back: the same attach now works
    assert run(lab.dp.check(att)) == []


def test_netns_given_as_a_process_path(lab):
    # What a container runtime passes: /proc/PID/ns/net of the sandbox's first process.
    sandbox = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        netns = f"/proc/{sandbox.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(netns) == os.readlink("/proc/self/ns/net"):  # unshare has not run yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        att = Attachment(container_id=f"lz{TOKEN}-proc", netns=netns, ifname="eth0", bridge=NODE0, vlan=117,
                         address="198.18.17.2/24", gateway="198.18.17.1")
        lab.attachments.append(att)
        run(lab.dp.attach(att))
        assert run(lab.dp.check(att)) == []
        assert lab.ovs.vsctl("get", "Port", att.host_ifname, f'external_ids:"{EXT_NETNS}"').strip() == f'"{netns}"'
    finally:
        sandbox.kill()
        sandbox.wait()
    run(lab.dp.detach(att.container_id, "eth0", netns))  # the process and its netns are gone: still success
    assert att.host_ifname not in lab.port_names(NODE0)
    assert gone_soon(att.host_ifname)
    with pytest.raises(NetnsNotFound):
        run(lab.dp.attach(att))


# --------------------------------------------------------------------------- background veth deletion


def test_detach_returns_with_the_port_gone_and_the_veth_disowned(lab):
    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 118, "198.18.18.2/24")
    run(lab.dp.attach(att))

    async def detach_then_look():
        await lab.dp.detach(att.container_id, "eth0", att.netns)
        # Right away, whether or not the kernel has finished deleting the veth yet:
        return await lab.dp.check(att), await lab.dp.ports(NODE0)

    diffs, ports = run(detach_then_look())
    assert att.host_ifname not in lab.port_names(NODE0)  # the port is gone at once: nothing forwards to it
    assert att.container_id not in {p.container_id for p in ports}
    assert any(f"OVS port {att.host_ifname} missing" in d for d in diffs), diffs
    assert any(f"host interface {att.host_ifname} missing" in d for d in diffs), diffs
    assert any(f"interface eth0 in {att.netns} missing" in d for d in diffs), diffs
    assert not any("address" in d or "MTU" in d or "route" in d for d in diffs), diffs  # a dying veth is not judged
    assert gone_soon(att.host_ifname) and gone_soon("eth0", pod)


def test_attach_right_after_detach_waits_for_the_deletion(lab):
    a, b = lab.pod(), lab.pod()
    att = lab.attachment(a, NODE0, 119, "198.18.19.2/24")
    peer = lab.attachment(b, NODE1, 119, "198.18.19.3/24")
    run(lab.dp.attach(peer))
    run(lab.dp.attach(att))
    other = lab.attachment(a, NODE0, 119, "198.18.19.4/24")  # another container, same netns and ifname

    async def churn():
        for _ in range(3):  # the same container again (a repeated ADD does exactly this) ...
            await lab.dp.detach(att.container_id, "eth0", att.netns)
            await lab.dp.attach(att)
        await lab.dp.detach(att.container_id, "eth0", att.netns)
        await lab.dp.attach(other)  # ... and the next sandbox in a netns whose eth0 is still being deleted
        return await lab.dp.check(other)

    assert run(churn()) == []
    answer = ping(a, "198.18.19.3")
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert att.host_ifname not in lab.port_names(NODE0) and gone_soon(att.host_ifname)


def test_close_finishes_pending_deletions(lab):
    pods = [lab.pod() for _ in range(8)]
    atts = [lab.attachment(pod, NODE1, 120, f"198.18.20.{i + 2}/24") for i, pod in enumerate(pods)]

    async def body():
        async with OvsDataplane(lab.ovs.db, timeout=5) as dp:
            for att in atts:
                await dp.attach(att)
            for att in atts:  # a burst: the reaper deletes what queues up meanwhile as one batch
                await dp.detach(att.container_id, "eth0", att.netns)

    run(body())
    for att, pod in zip(atts, pods, strict=True):  # close() has returned: not "soon", now
        assert not link_exists(att.host_ifname)
        assert not link_exists("eth0", pod)


def test_netns_deleted_right_after_detach_leaves_nothing(lab, caplog):
    pods = [lab.pod() for _ in range(2)]
    with_netns = lab.attachment(pods[0], NODE0, 121, "198.18.21.2/24")
    without = lab.attachment(pods[1], NODE0, 121, "198.18.21.3/24")
    run(lab.dp.attach(with_netns))
    run(lab.dp.attach(without))
    caplog.set_level("WARNING", logger="foundation.adapters.ovs_dataplane")

    async def body():
        await lab.dp.detach(with_netns.container_id, "eth0", with_netns.netns)
        await lab.dp.detach(without.container_id, "eth0", None)  # a GC that knows no netns
        for pod in pods:  # what the runtime does right after DEL: the veths vanish by themselves
            sh("ip", "netns", "del", pod)

    run(body())
    assert gone_soon(with_netns.host_ifname) and gone_soon(without.host_ifname)
    run(lab.dp.detach(with_netns.container_id, "eth0", with_netns.netns))  # and a late DEL still succeeds
    assert not [r for r in caplog.records if r.name == "foundation.adapters.ovs_dataplane"]  # "not found" is done
    assert with_netns.host_ifname not in lab.port_names(NODE0) and without.host_ifname not in lab.port_names(NODE0)


def test_a_veth_left_doomed_by_a_crashed_agent_gives_way_to_the_next_attach(lab):
    from foundation.adapters.ovs_dataplane import _REAP_GROUP

    pod = lab.pod()
    att = lab.attachment(pod, NODE0, 123, "198.18.23.2/24")
    run(lab.dp.attach(att))
    # What an agent killed between DEL's answer and its reaper's round leaves: no port row,
    # a veth marked doomed, and no reaper that knows about it.
    lab.ovs.vsctl("del-port", NODE0, att.host_ifname)
    sh("ip", "link", "set", "dev", att.host_ifname, "group", str(_REAP_GROUP))

    async def restarted_agent():
        async with OvsDataplane(lab.ovs.db, timeout=5) as dp:
            await dp.attach(att)  # the runtime retries the sandbox: the names are taken by nobody's veth
            return await dp.check(att)

    assert run(restarted_agent()) == []
    link = json.loads(sh("ip", "-d", "-j", "link", "show", "dev", att.host_ifname).stdout)[0]
    assert link.get("group") in ("default", 0, "0")  # a new veth, not the doomed one


def test_a_failed_deletion_is_retried_once_and_never_raised_later(lab, caplog, monkeypatch):
    import errno as _errno

    from pyroute2.netlink.exceptions import NetlinkError

    from foundation.adapters import ovs_dataplane

    pods = [lab.pod() for _ in range(3)]
    flaky, stuck, later = (lab.attachment(pod, NODE1, 122, f"198.18.22.{i + 2}/24") for i, pod in enumerate(pods))
    for att in (flaky, stuck):
        run(lab.dp.attach(att))
    real = ovs_dataplane._Reaper._deleted
    failures = {"flaky": 1, "stuck": 99}

    def deleted(ipr, **spec):  # the kernel refuses: once for one veth, always for the other
        name = ipr.link("get", index=spec["index"])[0].get("IFLA_IFNAME") if "index" in spec else None
        key = {flaky.host_ifname: "flaky", stuck.host_ifname: "stuck"}.get(name, "batch")
        if key == "batch" or failures.get(key, 0) > 0:
            failures[key] = failures.get(key, 0) - 1
            raise NetlinkError(_errno.EBUSY, "injected")
        return real(ipr, **spec)

    monkeypatch.setattr(ovs_dataplane._Reaper, "_deleted", staticmethod(deleted))
    caplog.set_level("WARNING", logger="foundation.adapters.ovs_dataplane")
    run(lab.dp.detach(flaky.container_id, "eth0", flaky.netns))
    run(lab.dp.detach(stuck.container_id, "eth0", stuck.netns))
    assert gone_soon(flaky.host_ifname)  # the retry deleted it
    deadline = time.monotonic() + 5
    while not any(r.levelname == "ERROR" and stuck.host_ifname in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.01)
    assert any(r.levelname == "WARNING" and flaky.host_ifname in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    run(lab.dp.attach(later))  # unrelated calls after the failure: no error surfaces in them
    run(lab.dp.detach(later.container_id, "eth0", later.netns))
    assert run(lab.dp.check(later)) != []
    # What the reaper gave up on is still marked doomed: any later round deletes it.
    assert gone_soon(stuck.host_ifname) and gone_soon(later.host_ifname)
