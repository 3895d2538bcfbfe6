"""The lab's network: its private Open vSwitch, bridges, namespaces, veths and router, made from a ``LabPlan``.

``start_ovs(plan, record)`` starts the lab's own ovsdb-server + ovs-vswitchd in ``DIR/ovs``
(lab/ovs.py's ``OvsServer``, detached, tagged ``LEENGINE_LAB=<id>``, pid files in ``DIR/pids``):
a lab never depends on, nor touches, a system Open vSwitch. ``Fabric(plan, record).make()``
builds the layout of lab/plan.py: bridges (``datapath_type=netdev``,
``external_ids:leengine-lab=<id>``) and patch trunks, one netns per host with its veth on the
management VLAN, the root's management veth, and the router netns (``ip_forward=1``, one
access port per pool VLAN holding the pool's gateway); the Nginx hosts route the pools via the
router. ``cut_cell``/``restore_cell`` delete/re-add a Cell's patch pair to the core.
``remove(lab_id, lab_dir)`` deletes what carries the id: bridges whose external_ids say so,
netns ``le-<id>-*``, kernel interfaces ``l<id>*``.

Invariants:

* Every intent is in ``made.jsonl`` (fsynced) before the thing is made, so ``remove`` after a
  crash mid-way still finds it; and ``remove`` scans by tag as well, trusting no record alone.
* Commands are argv lists (no shell); names come from the plan (validated there) and are
  checked again against the id before removal. Calls are batched: one ``ovs-vsctl`` with many
  ``--`` commands, ``ip -batch`` for the root netns and one per host netns.
* TX checksum offload is off on every veth end that sends into the userspace (netdev) datapath
  (as foundation/adapters/ovs_dataplane.py does for pods): vswitchd would forward unfilled
  checksums and TCP would break.

It must not know which services run on the hosts, nor the Kubernetes or etcd protocols.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from foundation.adapters.ovs_dataplane import _ETHTOOL_STXCSUM, _ethtool_value  # the one ethtool ioctl
from lab.ovs import OvsServer, find_ovs, find_schema
from lab.plan import LabPlan, check_lab_id, ifname_prefix, netns_prefix
from lab.record import LAB_ENV, LabRecord, ProcessEntry, names_ifname_of, names_netns_of

OVS_PROCESSES = ("ovsdb-server", "ovs-vswitchd")
LAB_TAG = "leengine-lab"  # the external_ids key of the lab's bridges
IP = "ip"
COMMAND_TIMEOUT = 60.0


class FabricError(RuntimeError):
    """A step of making or removing the lab network failed (the message names the step and the tool's error)."""


def _run(argv: list[str], what: str, stdin: str | None = None, env: dict[str, str] | None = None,
         check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FabricError(f"{what}: {type(exc).__name__}: {exc}") from None
    if check and done.returncode != 0:
        raise FabricError(f"{what} failed ({done.returncode}): {' '.join(done.stderr.split())[:500]}")
    return done


def ip_batch(lines: list[str], what: str, netns: str | None = None, force: bool = False) -> None:
    """One ``ip [-n NS] [-force] -batch -`` with ``lines`` (each an ip command without the leading ``ip``)."""
    if not lines:
        return
    argv = [IP, *(["-n", netns] if netns else []), *(["-force"] if force else []), "-batch", "-"]
    _run(argv, what, stdin="\n".join(lines) + "\n", check=not force)


# --------------------------------------------------------------------------- Open vSwitch


class LabOvs(OvsServer):
    """The lab's private OVS: ``OvsServer`` in ``DIR/ovs`` with the lab's tag in its environment."""

    def __init__(self, plan_id: str, workdir: Path) -> None:
        super().__init__(find_ovs(), find_schema(), workdir)
        self.lab_id = check_lab_id(plan_id)

    def _env(self) -> dict[str, str]:
        return {**super()._env(), LAB_ENV: self.lab_id}


class OvsCtl:
    """``ovs-vsctl`` against a lab's private database (no process handles: usable from ``lab down`` too)."""

    def __init__(self, ovs_dir: Path) -> None:
        self.dir = Path(ovs_dir)
        self.db = f"unix:{self.dir / 'db.sock'}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
            env[var] = str(self.dir)
        return env

    def answers(self) -> bool:
        """Whether the lab's ovsdb-server is there and answers."""
        if not (self.dir / "db.sock").exists():
            return False
        try:
            self.vsctl("--no-wait", "show", timeout=3.0)
        except FabricError:
            return False
        return True

    def vsctl(self, *args: str, timeout: float = 30.0) -> str:
        argv = [find_ovs()["ovs-vsctl"], f"--db={self.db}", f"--timeout={max(1, int(timeout))}", *args]
        return _run(argv, f"ovs-vsctl {' '.join(args[:6])}{' ...' if len(args) > 6 else ''}", env=self._env(),
                    timeout=timeout + 5).stdout

    def batch(self, commands: list[list[str]], *, wait: bool = True, timeout: float = 60.0) -> None:
        """Many ovs-vsctl commands in one call and one OVSDB transaction (``--`` between them)."""
        if not commands:
            return
        args: list[str] = [] if wait else ["--no-wait"]
        for c in commands:
            args += ["--", *c]
        self.vsctl(*args, timeout=timeout)

    def lab_bridges(self, lab_id: str) -> list[str]:
        """Bridges whose ``external_ids:leengine-lab`` is ``lab_id``."""
        out = self.vsctl("--format=json", "--columns=name,external_ids", "list", "Bridge", timeout=10.0)
        try:
            rows = json.loads(out).get("data", [])
        except (ValueError, AttributeError):
            raise FabricError("ovs-vsctl list Bridge: unreadable JSON") from None
        found = []
        for row in rows:
            try:
                name, ids = row[0], dict(row[1][1])
            except (TypeError, IndexError, ValueError):
                continue
            if ids.get(LAB_TAG) == lab_id and names_ifname_of(lab_id, name):
                found.append(name)
        return found


def foreign_userspace_switch() -> str | None:
    """A description of another ovs-vswitchd's userspace datapath in this netns, or None.

    Every vswitchd with a netdev datapath opens one tap called ``ovs-netdev`` in its netns, so only
    one can run per netns: a second one starts but fails every bridge ("creating tap device
    failed: Device or resource busy") and nothing is forwarded.
    """
    done = _run([IP, "-o", "link", "show", "ovs-netdev"], "look for ovs-netdev", check=False)
    if done.returncode != 0:
        return None
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry.name}/comm").read_text().strip() == "ovs-vswitchd":
                    pids.append(entry.name)
    return f"ovs-vswitchd pid {', '.join(pids) or '?'}"


def start_ovs(plan: LabPlan, record: LabRecord) -> LabOvs:
    """Start the lab's private OVS (recorded first); return once vswitchd applied its database.

    Refused (``FabricError``) while another userspace-datapath vswitchd runs in this netns: it
    would make every bridge of the lab fail silently.
    """
    if len(str(plan.ovs_dir / "db.sock")) > 100:
        raise FabricError(f"lab directory {plan.dir} is too long for OVS's unix sockets (sun_path is 108 bytes)")
    other = foreign_userspace_switch()
    if other is not None:
        raise FabricError(f"another Open vSwitch userspace datapath runs in this network namespace ({other}); only "
                          "one can: stop it (or run the lab in another netns: ip netns exec NS leengine lab up)")
    record.intend("dir", str(plan.ovs_dir))
    record.intend_many([{"kind": "process", "name": p, "pidfile": str(plan.ovs_dir / f"{p}.pid")}
                        for p in OVS_PROCESSES])
    plan.ovs_dir.mkdir(parents=True, exist_ok=True)
    ovs = LabOvs(plan.id, plan.ovs_dir)
    try:
        ovs.start()
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        raise FabricError(f"starting the lab's Open vSwitch in {plan.ovs_dir}: {exc}") from None
    for p in OVS_PROCESSES:
        record.pids_dir.mkdir(parents=True, exist_ok=True)
        plan.pidfile(p).write_text(f"{ovs.pid(p)}\n")
        record.add_process(ProcessEntry(p, str(plan.pidfile(p)), str(plan.ovs_dir / f"{p}.log")))
    return ovs


# --------------------------------------------------------------------------- the fabric


def _tx_checksum_off(ifnames: list[str]) -> None:
    """Switch TX checksum offload off on root-netns interfaces (before they move into their netns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in ifnames:
            try:
                _ethtool_value(s, name, _ETHTOOL_STXCSUM, 0)
            except OSError as exc:
                raise FabricError(f"disable TX checksum offload on {name}: {exc}") from None


class Fabric:
    """The network of one lab plan."""

    def __init__(self, plan: LabPlan, record: LabRecord) -> None:
        self.plan = plan
        self.record = record
        self.ovs = OvsCtl(plan.ovs_dir)

    def _tag(self) -> str:
        return f"external_ids:{LAB_TAG}={self.plan.id}"

    def make(self) -> None:
        """Build every bridge, patch, netns, veth and route of the plan (recorded before each batch)."""
        p = self.plan
        pairs = [(h.veth, h.veth_peer, h.netns) for h in p.hosts.values()]
        pairs += [(port.veth, port.veth_peer, p.router.netns) for port in p.router.ports]
        namespaces = [h.netns for h in p.hosts.values()] + [p.router.netns]
        self.record.intend_many(
            [{"kind": "netns", "name": ns} for ns in namespaces]
            + [{"kind": "veth", "name": a, "peer": b, "netns": ns} for a, b, ns in pairs]
            + [{"kind": "veth", "name": p.root_veth_peer, "peer": p.root_veth, "netns": None}]
            + [{"kind": "bridge", "name": b} for b in p.bridges])

        # 1. namespaces and veth pairs, both ends in the root netns first
        lines = [f"netns add {ns}" for ns in namespaces]
        lines += [f"link add {a} type veth peer name {b}" for a, b, _ in pairs]
        lines.append(f"link add {p.root_veth_peer} type veth peer name {p.root_veth}")
        ip_batch(lines, "make the lab's namespaces and veths")
        _tx_checksum_off([b for _, b, _ in pairs] + [p.root_veth])
        lines = [f"link set {b} netns {ns}" for _, b, ns in pairs]
        lines += [f"link set {a} up" for a, _, _ in pairs]
        lines += [f"link set {p.root_veth_peer} up", f"link set {p.root_veth} up",
                  f"addr add {p.root_mgmt_ip}/{self._prefixlen()} dev {p.root_veth}"]
        ip_batch(lines, "move the veths into their namespaces")

        # 2. inside each namespace: loopback, its port, its address and routes
        for h in p.hosts.values():
            ns_lines = ["link set lo up", f"link set {h.veth_peer} up",
                        f"addr add {h.mgmt_ip}/{self._prefixlen()} dev {h.veth_peer}"]
            if h.role == "nginx-host":  # clients' requests go to pods through the router
                ns_lines += [f"route add {pool.cidr} via {p.router.mgmt_ip}" for pool in p.pools]
            ip_batch(ns_lines, f"set up host {h.name}'s network", netns=h.netns)
        router_lines = ["link set lo up"]
        for port in p.router.ports:
            router_lines += [f"link set {port.veth_peer} up", f"addr add {port.address} dev {port.veth_peer}"]
        ip_batch(router_lines, "set up the router's ports", netns=p.router.netns)
        _run([IP, "netns", "exec", p.router.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
             "enable forwarding in the router")

        # 3. bridges, patches and access ports: one ovs-vsctl, one transaction
        self.ovs.batch(self._ovs_commands())

    def _prefixlen(self) -> int:
        return int(self.plan.mgmt_cidr.split("/")[1])

    def _ovs_commands(self) -> list[list[str]]:
        p = self.plan
        cmds: list[list[str]] = []
        for b in p.bridges:
            cmds += [["--may-exist", "add-br", b], ["set", "Bridge", b, "datapath_type=netdev", self._tag()]]
        for c in p.cells.values():
            cmds += self._patch(p.core_bridge, c.core_patch, c.fabric, c.fabric_patch)
        for n in p.nodes.values():
            cmds += self._patch(n.bridge, n.uplink, p.cells[n.cell].fabric, n.downlink)
        for h in p.hosts.values():
            cmds.append(["--may-exist", "add-port", h.bridge, h.veth, f"tag={p.mgmt_vlan}"])
        for port in p.router.ports:
            cmds.append(["--may-exist", "add-port", p.core_bridge, port.veth, f"tag={port.vlan}"])
        cmds.append(["--may-exist", "add-port", p.core_bridge, p.root_veth_peer, f"tag={p.mgmt_vlan}"])
        return cmds

    @staticmethod
    def _patch(bridge_a: str, port_a: str, bridge_b: str, port_b: str) -> list[list[str]]:
        """A patch pair between two bridges: a trunk (no tag), every VLAN crosses it."""
        return [["--may-exist", "add-port", bridge_a, port_a], ["set", "Interface", port_a, "type=patch",
                                                               f"options:peer={port_b}"],
                ["--may-exist", "add-port", bridge_b, port_b], ["set", "Interface", port_b, "type=patch",
                                                               f"options:peer={port_a}"]]

    def cut_cell(self, cell: str) -> None:
        """Cut a Cell off: delete its patch pair to the core (its nodes, pods and API become unreachable)."""
        c = self.plan.cells[cell]
        self.ovs.batch([["--if-exists", "del-port", self.plan.core_bridge, c.core_patch],
                        ["--if-exists", "del-port", c.fabric, c.fabric_patch]])

    def restore_cell(self, cell: str) -> None:
        """Join a Cell again: re-add its patch pair to the core."""
        c = self.plan.cells[cell]
        self.ovs.batch(self._patch(self.plan.core_bridge, c.core_patch, c.fabric, c.fabric_patch))

    def cell_is_cut(self, cell: str) -> bool:
        c = self.plan.cells[cell]
        return c.core_patch not in self.ovs.vsctl("list-ports", self.plan.core_bridge).split()


# --------------------------------------------------------------------------- removal


def remove_bridges(lab_id: str, lab_dir: Path) -> list[str]:
    """Delete the bridges of the lab's OVS whose external_ids carry ``lab_id`` (none if its OVS is gone)."""
    ovs = OvsCtl(Path(lab_dir) / "ovs")
    if not ovs.answers():
        return []
    bridges = ovs.lab_bridges(check_lab_id(lab_id))
    ovs.batch([["--if-exists", "del-br", b] for b in bridges])
    return bridges


def lab_netns(lab_id: str) -> list[str]:
    """The netns whose names start with ``le-<id>-``."""
    out = _run([IP, "netns", "list"], "list namespaces").stdout
    return [name for line in out.splitlines() if (name := line.split(" ", 1)[0]) and names_netns_of(lab_id, name)]


def lab_links(lab_id: str) -> list[str]:
    """The root netns's interfaces whose names start with ``l<id>``."""
    out = _run([IP, "-o", "link", "show"], "list interfaces").stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if names_ifname_of(lab_id, name):
                names.append(name)
    return names


def remove_kernel(lab_id: str) -> dict[str, list[str]]:
    """Delete the lab's namespaces and its interfaces left in the root netns (veths, stray taps)."""
    check_lab_id(lab_id)
    namespaces = lab_netns(lab_id)
    ip_batch([f"netns del {ns}" for ns in namespaces], "delete the lab's namespaces", force=True)
    links = lab_links(lab_id)
    ip_batch([f"link del {name}" for name in links], "delete the lab's interfaces", force=True)
    return {"netns": namespaces, "interfaces": links}


def remove(lab_id: str, lab_dir: Path) -> dict[str, list[str]]:
    """Delete every bridge, netns and interface tagged with ``lab_id`` (bridges first, while OVS runs)."""
    bridges = remove_bridges(lab_id, lab_dir)
    return {"bridges": bridges, **remove_kernel(lab_id)}


def leftovers(lab_id: str, lab_dir: Path | None = None) -> dict[str, Any]:
    """What still carries the lab's id: netns, interfaces, bridges (if its OVS answers). For tests and status."""
    out: dict[str, Any] = {"netns": lab_netns(lab_id), "interfaces": lab_links(lab_id), "bridges": []}
    if lab_dir is not None:
        ovs = OvsCtl(Path(lab_dir) / "ovs")
        if ovs.answers():
            out["bridges"] = ovs.lab_bridges(lab_id)
    return out


__all__ = ["Fabric", "FabricError", "LabOvs", "OvsCtl", "ifname_prefix", "leftovers", "netns_prefix", "remove",
           "remove_bridges", "remove_kernel", "start_ovs"]
