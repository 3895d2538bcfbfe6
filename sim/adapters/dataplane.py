"""The sim Dataplane adapter: one node's veths and OVS ports as records, with injectable failures.

It keeps what a real node would have (the port on the bridge with its VLAN tag
and external_ids, the pod interface with its address, route and MTU) so CHECK and
GC see the same picture they would see for real, and it keeps the port's
promises: attach is all or nothing, detach is idempotent. Failures: a netns that
does not exist (or is the node's own, ``HOST_NETNS``), a step that fails on the
next attach (``fail_next``; with ``leave_behind`` its undo fails too), a node whose
runtime died (every interface gone at once). Cost model: an attach takes ``attach_seconds +
attach_per_in_flight x`` (the other attaches in flight on its ``Machine`` as it begins: the
lab's nodes contend for one machine's cores, and its ADD grows with the ADDs in flight), a
detach ``detach_seconds``, of virtual time (with a ``runtime``; 0, the default, waits for
nothing and adds no event, so runs without a cost model keep their traces); fitted from the
lab's CNI ADD latency and in-flight counts by ``leengine lab fit`` (lab/fit.py). Dataplanes
given one ``Machine`` share its count; without one each is its own machine. An attach is in
flight from its start to its end, failed or cancelled included. It must not know IPAM or CNI.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundation.ports.dataplane import (
    AttachedInterface,
    Attachment,
    DataplaneError,
    InvalidNetns,
    NetnsNotFound,
    PortRecord,
    host_ifname,
)
from foundation.ports.runtime import Runtime

# Paths that name the node's own network namespace (where the agent runs): never a pod's.
HOST_NETNS = ("/proc/self/ns/net", "/proc/1/ns/net", "/proc/thread-self/ns/net")
STEPS = ("open netns", "create veth", "add OVS port", "configure pod interface", "delete veth")


@dataclass(eq=False)
class Machine:
    """The cores some dataplanes share: how many attaches are in flight on them now."""

    attaching: int = 0


@dataclass
class _Plumbed:
    attachment: Attachment
    mac: str


class SimDataplane:
    def __init__(self, node: str, runtime: Runtime | None = None, *, attach_seconds: float = 0.0,
                 detach_seconds: float = 0.0, attach_per_in_flight: float = 0.0,
                 machine: Machine | None = None) -> None:
        self.node = node
        self.runtime = runtime
        self.attach_seconds = attach_seconds if runtime is not None else 0.0
        self.attach_per_in_flight = attach_per_in_flight if runtime is not None else 0.0
        self.machine = machine or Machine()
        self.detach_seconds = detach_seconds if runtime is not None else 0.0
        self.netns: set[str] = set()  # namespaces that exist on this node
        self.interfaces: dict[tuple[str, str], _Plumbed] = {}  # (container, ifname) -> what attach made
        self.bridges: set[str] = {"br-int"}
        self.fail_next: str | None = None  # a step from STEPS: the next attach fails there
        self.leave_behind = False  # fail_next's undo fails too: the interface stays, and the error says so
        self.attaches = 0
        self.detaches = 0

    # ---- what the world does to the node
    def add_netns(self, path: str) -> None:
        self.netns.add(path)

    def remove_netns(self, path: str) -> None:
        self.netns.discard(path)
        for key in [k for k, p in self.interfaces.items() if p.attachment.netns == path]:
            del self.interfaces[key]  # the pod end died with its namespace; the host end goes with it (veth)

    def crash(self) -> None:
        """The host or its container runtime died: every namespace and interface is gone."""
        self.netns.clear()
        self.interfaces.clear()

    # ---- the port
    def _step(self, step: str) -> None:
        if self.fail_next == step:
            self.fail_next = None
            error = DataplaneError(step, "injected failure")
            if self.leave_behind and step != "open netns":
                error.undone = False
                error.add_note("undo: delete veth failed: injected failure")
            raise error

    def _netns(self, netns: str) -> None:
        if netns in HOST_NETNS:
            raise InvalidNetns(netns, f"{netns} is the node's own network namespace, not a pod's")
        if netns not in self.netns:
            raise NetnsNotFound(netns)

    async def check_netns(self, netns: str) -> None:
        self._netns(netns)

    async def attach(self, attachment: Attachment) -> AttachedInterface:
        self._step("open netns")
        self._netns(attachment.netns)
        if (self.attach_seconds or self.attach_per_in_flight) and self.runtime is not None:
            others = self.machine.attaching
            self.machine.attaching += 1
            try:
                await self.runtime.sleep(self.attach_seconds + self.attach_per_in_flight * others)
            finally:
                self.machine.attaching -= 1
            self._netns(attachment.netns)  # the netns may have gone meanwhile (its runtime died)
        mac = "0a:58:" + ":".join(f"{b:02x}" for b in bytes.fromhex(attachment.host_ifname[2:10]))
        try:
            self._step("create veth")
            if attachment.bridge not in self.bridges:
                raise DataplaneError("add OVS port", f"bridge {attachment.bridge} does not exist")
            self._step("add OVS port")
            self._step("configure pod interface")  # nothing is recorded before every step passed: all or nothing
        except DataplaneError as exc:
            if not exc.undone:  # the undo failed: what it could not remove is still there
                self.interfaces[(attachment.container_id, attachment.ifname)] = _Plumbed(attachment, mac)
            raise
        self.attaches += 1
        self.interfaces[(attachment.container_id, attachment.ifname)] = _Plumbed(attachment, mac)
        return AttachedInterface(attachment.host_ifname, "02:" + mac[3:], attachment.ifname, mac, attachment.netns)

    async def detach(self, container_id: str, ifname: str, netns: str | None) -> None:
        self._step("delete veth")
        if self.detach_seconds and self.runtime is not None:
            await self.runtime.sleep(self.detach_seconds)
        self.detaches += 1
        self.interfaces.pop((container_id, ifname), None)

    async def check(self, attachment: Attachment) -> list[str]:
        plumbed = self.interfaces.get((attachment.container_id, attachment.ifname))
        if plumbed is None:
            return [f"port {host_ifname(attachment.container_id, attachment.ifname)} is not on any bridge"]
        have, problems = plumbed.attachment, []
        for name in ("bridge", "vlan", "address", "gateway", "mtu", "netns"):
            if getattr(have, name) != getattr(attachment, name):
                problems.append(f"{name} is {getattr(have, name)}, expected {getattr(attachment, name)}")
        return problems

    async def ports(self, bridge: str) -> list[PortRecord]:
        return [PortRecord(p.attachment.host_ifname, bridge, p.attachment.vlan, cid, ifname, p.attachment.netns)
                for (cid, ifname), p in self.interfaces.items() if p.attachment.bridge == bridge]
