"""lab/fabric.py for real: bridges, VLAN trunks between Cells, the router, cutting a Cell off and back; removal.

Every test runs inside a throwaway network namespace of its own (``machine_netns``), which
plays the machine's root netns: one ovs-vswitchd with a userspace datapath per netns is all
the kernel allows (its ``ovs-netdev`` tap), so a lab beside another test's private OVS must
live in another netns. Pods are made by hand (a veth on a node bridge with the pool's VLAN).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.adapters.ovs_dataplane import _ETHTOOL_STXCSUM, _ethtool_value
from lab.fabric import Fabric, OvsCtl, leftovers, remove, start_ovs
from lab.plan import LabPlan, plan_lab
from lab.record import LabInfo, LabRecord, stop_pids, tagged_pids
from tests.unit.test_lab_plan import region

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def machine_netns() -> Iterator[str]:
    """Run the block (this thread and the processes it starts) in a fresh netns; delete it afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError("the lab's integration tests need root")
    name = f"ltst-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        _setns(home)
        os.close(home)
        os.close(target)
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def fabric_up(plan: LabPlan) -> Iterator[Fabric]:
    record = LabRecord(plan.dir)
    record.create(LabInfo(plan.id, "test", "", time.time(), plan.summary(), mgmt_cidr=plan.mgmt_cidr))
    try:
        start_ovs(plan, record)
        fabric = Fabric(plan, record)
        fabric.make()
        yield fabric
    finally:
        remove(plan.id, plan.dir)
        stop_pids(tagged_pids(plan.id), plan.id)
        remove(plan.id, plan.dir)


def make_pod(plan: LabPlan, name: str, node: str, vlan: int, address: str, gateway: str) -> str:
    """A pod by hand: netns ``le-<id>-p-<name>``, a veth on the node's bridge as an access port of ``vlan``."""
    ns = plan.pod_netns(name)
    host, peer = f"{plan.ifname_prefix}p{name}", f"{plan.ifname_prefix}p{name}n"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer], check=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _ethtool_value(s, peer, _ETHTOOL_STXCSUM, 0)
    subprocess.run(["ip", "link", "set", peer, "netns", ns], check=True)
    subprocess.run(["ip", "link", "set", host, "up"], check=True)
    batch = f"link set lo up\nlink set {peer} up\naddr add {address} dev {peer}\nroute add default via {gateway}\n"
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    OvsCtl(plan.ovs_dir).vsctl("add-port", plan.nodes[node].bridge, host, f"tag={vlan}")
    return ns


def reaches(ns: str, ip: str, attempts: int = 4) -> bool:
    for _ in range(attempts):  # the first ping may spend its second on ARP through several bridges
        if subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", "-q", ip],
                          capture_output=True).returncode == 0:
            return True
    return False


def test_pods_vlans_router_and_cell_cut(tmp_path: Path) -> None:
    with machine_netns():
        plan = plan_lab(region(cells=2, nodes=2, groups=1, hosts=1, build_hosts=0), secrets.token_hex(2),
                        tmp_path / "lab")
        with fabric_up(plan) as fabric:
            ovs = OvsCtl(plan.ovs_dir)
            for b in plan.bridges:
                assert ovs.vsctl("get", "Bridge", b, "datapath_type").strip() == "netdev"
                assert ovs.vsctl("get", "Bridge", b, "external_ids:leengine-lab").strip().strip('"') == plan.id
            assert ovs.vsctl("get", "Port", plan.hosts["etcd1"].veth, "tag").strip() == "4000"
            assert ovs.vsctl("get", "Port", plan.router.ports[1].veth, "tag").strip() == "101"

            # two pods of VLAN 101 in two Cells reach each other; a pod of VLAN 102 in the same subnet does not
            a = make_pod(plan, "a", "c1-n001", 101, "10.1.0.10/22", "10.1.0.1")
            b = make_pod(plan, "b", "c2-n001", 101, "10.1.0.11/22", "10.1.0.1")
            c = make_pod(plan, "c", "c2-n002", 102, "10.1.0.12/22", "10.1.0.1")
            assert reaches(a, "10.1.0.11") and reaches(b, "10.1.0.10")
            assert not reaches(a, "10.1.0.12", attempts=2) and not reaches(c, "10.1.0.10", attempts=1)

            # the Nginx host reaches a pod through the router; hosts reach each other on the management VLAN
            nginx = plan.hosts["g0-nginx-1"].netns
            assert reaches(nginx, "10.1.0.10")
            assert reaches(nginx, plan.hosts["api-c1"].mgmt_ip) and reaches(nginx, plan.hosts["etcd2"].mgmt_ip)

            # a Cell cut off: its pod and its API are unreachable, the other Cell's are not; restore brings them back
            fabric.cut_cell("c1")
            assert fabric.cell_is_cut("c1")
            assert not reaches(nginx, "10.1.0.10", attempts=2)
            assert not reaches(nginx, plan.hosts["api-c1"].mgmt_ip, attempts=1)
            assert reaches(nginx, "10.1.0.11") and reaches(nginx, plan.hosts["api-c2"].mgmt_ip)
            fabric.restore_cell("c1")
            assert not fabric.cell_is_cut("c1")
            assert reaches(nginx, "10.1.0.10") and reaches(nginx, plan.hosts["api-c1"].mgmt_ip)
            # the root netns (where node agents, links and the lab command live) reaches every host
            assert subprocess.run(["ping", "-c1", "-W2", "-q", plan.hosts["etcd3"].mgmt_ip],
                                  capture_output=True).returncode == 0

        left = leftovers(plan.id, plan.dir)
        assert left == {"netns": [], "interfaces": [], "bridges": []}
        assert tagged_pids(plan.id) == []


def test_fabric_up_and_down_time_of_the_reference_lab(tmp_path: Path) -> None:
    """3 Cells x 4 nodes, 2 Nginx hosts, 1 build host, 3 etcd members: OVS + fabric up, then removal (figures)."""
    with machine_netns():
        plan = plan_lab(region(cells=3, nodes=4, groups=1, hosts=2, build_hosts=1), secrets.token_hex(2),
                        tmp_path / "lab")
        record = LabRecord(plan.dir)
        record.create(LabInfo(plan.id, "test", "", time.time(), plan.summary(), mgmt_cidr=plan.mgmt_cidr))
        t0 = time.monotonic()
        start_ovs(plan, record)
        t1 = time.monotonic()
        Fabric(plan, record).make()
        t2 = time.monotonic()
        try:
            assert subprocess.run(["ip", "netns", "exec", plan.hosts["g0-nginx-2"].netns, "ping", "-c1", "-W2", "-q",
                                   plan.hosts["etcd1"].mgmt_ip], capture_output=True).returncode == 0
        finally:
            t3 = time.monotonic()
            removed = remove(plan.id, plan.dir)
            stop_pids(tagged_pids(plan.id), plan.id)
            remove(plan.id, plan.dir)
            t4 = time.monotonic()
        print(f"\nreference lab fabric: OVS start {t1 - t0:.2f} s, fabric make {t2 - t1:.2f} s "
              f"({len(plan.bridges)} bridges, {len(plan.hosts) + 1} netns), removal {t4 - t3:.2f} s")
        assert len(removed["bridges"]) == len(plan.bridges)
        assert leftovers(plan.id, plan.dir) == {"netns": [], "interfaces": [], "bridges": []}
        assert t2 - t0 < 30 and t4 - t3 < 15


@pytest.mark.parametrize("hostile", ["le-xxxx-other", "../../etc", "lother0", "eth0"])
def test_removal_touches_only_what_carries_the_id(tmp_path: Path, hostile: str) -> None:
    """A hostile intent log names things of another lab: removal by tag leaves them alone."""
    with machine_netns():
        lab_id, other = secrets.token_hex(2), "f0f0"
        foreign_ns, foreign_link = f"le-{other}-x", f"l{other}x"
        try:
            subprocess.run(["ip", "netns", "add", foreign_ns], check=True)
            subprocess.run(["ip", "link", "add", foreign_link, "type", "veth", "peer", "name", f"{foreign_link}p"],
                           check=True)
            record = LabRecord(tmp_path / "lab")
            record.create(LabInfo(lab_id, "test", "", time.time(), {}))
            record.intend_many([{"kind": "netns", "name": foreign_ns}, {"kind": "veth", "name": foreign_link},
                                {"kind": "netns", "name": hostile}, {"kind": "dir", "name": "/etc"}])
            from lab.lab import down_lab

            report = down_lab(tmp_path / "lab")
            assert report.clean and report.netns == [] and report.interfaces == []
            assert foreign_ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert subprocess.run(["ip", "link", "show", foreign_link], capture_output=True).returncode == 0
            assert Path("/etc/passwd").exists()
        finally:
            subprocess.run(["ip", "netns", "del", foreign_ns], check=False)
            subprocess.run(["ip", "link", "del", foreign_link], check=False)
