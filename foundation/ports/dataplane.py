"""The Dataplane port: one node's pod network plumbing.

For each pod interface the dataplane makes a veth pair: the pod end is moved into
the pod's network namespace and named ``ifname`` (``eth0``), gets the address,
the default route via the pool's gateway and the MTU, and optionally announces
itself with a gratuitous ARP; the host end is an **access port** of the node's
OVS bridge tagged with the pool's VLAN, and the port records the container ID,
netns and interface in its OVSDB ``external_ids`` so that CHECK, GC and a
restarted agent can find it again.

Invariants every adapter keeps:
* ``attach`` is all or nothing: if a step fails, what it already made is removed
  before the error is raised (``DataplaneError`` with the step that failed). If
  removing something failed too, the error says so (``undone`` is False): the
  address may still sit on a leftover interface.
* A pod's netns must be a network namespace and not the node's own (the one the
  agent runs in): ``check_netns`` says so before anything is made (the agent asks
  before it allocates an address), and ``attach`` checks again. A path that is
  not one (a FIFO, a device, a directory, another kind of namespace) is
  ``InvalidNetns`` and never blocks the caller; a missing one ``NetnsNotFound``.
* ``detach`` is idempotent: a port, veth or netns already gone is success.
* When ``detach`` returns the port is off the bridge: its OVSDB row is gone, so
  nothing is forwarded to it any more. The veth pair may outlive the call for a
  moment (an adapter may leave its deletion, which is slow in the kernel, to the
  background; it is gone "shortly", or at once). Until then it is nobody's:
  ``check`` reports it missing, ``ports`` does not list it, and an ``attach`` that
  needs one of its names (the same container and ifname, or the same ifname in the
  same netns) waits for the deletion rather than fail with "already exists".
  ``close()`` finishes pending deletions, waiting at most the adapter's timeout. A
  background deletion that fails is logged (and may be retried), never raised from
  a later call. If the pod's netns is deleted meanwhile, its veth goes with it.
* ``check`` reports every difference from the expected attachment; it changes
  nothing.
* The host-side interface name is derived from (container ID, ifname) only, so a
  retried ADD or a DEL after an agent restart finds the same interface.

It must not know about IPAM, pools in etcd or the CNI wire format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class DataplaneError(Exception):
    """A dataplane step failed; ``step`` names it (e.g. "create veth", "add OVS port").

    ``undone``: False when ``attach`` could not remove all it had made (a leftover may
    still carry the address); True otherwise.
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.undone = True


class InvalidNetns(DataplaneError):
    """The path given as a pod's netns is not usable as one; ``reason`` says why."""

    def __init__(self, netns: str, reason: str) -> None:
        super().__init__("open netns", reason)
        self.netns = netns


class NetnsNotFound(InvalidNetns):
    def __init__(self, netns: str) -> None:
        super().__init__(netns, f"network namespace {netns} does not exist")


@dataclass(frozen=True, slots=True)
class Attachment:
    """What one pod interface should look like."""

    container_id: str
    netns: str  # path, e.g. /var/run/netns/pod-1 or /proc/1234/ns/net
    ifname: str  # inside the pod, e.g. eth0
    bridge: str  # the node's OVS bridge
    vlan: int  # access tag of the host-side port, 1..4094
    address: str  # CIDR notation, e.g. 10.20.0.17/22
    gateway: str  # default route, e.g. 10.20.0.1
    mtu: int = 1500
    gratuitous_arp: bool = False

    @property
    def host_ifname(self) -> str:
        return host_ifname(self.container_id, self.ifname)


@dataclass(frozen=True, slots=True)
class AttachedInterface:
    """What ``attach`` made: enough for a CNI result's ``interfaces`` list."""

    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    netns: str


@dataclass(frozen=True, slots=True)
class PortRecord:
    """An OVS port this node's agent made, as found on the bridge (for GC and restarts)."""

    host_ifname: str
    bridge: str
    vlan: int | None
    container_id: str
    ifname: str
    netns: str


@runtime_checkable
class Dataplane(Protocol):
    async def check_netns(self, netns: str) -> None:
        """Succeed if ``netns`` is a pod network namespace (not the node's own); ``InvalidNetns`` if not.

        Quick and side-effect free: it never blocks on what the path names.
        """

    async def attach(self, attachment: Attachment) -> AttachedInterface: ...

    async def detach(self, container_id: str, ifname: str, netns: str | None) -> None:
        """Take the port off the bridge and delete the veth pair (maybe in the background); succeed if gone.

        ``netns`` may be None (a GC that does not know it): the pair is found by its host end.
        """

    async def check(self, attachment: Attachment) -> list[str]:
        """Differences from ``attachment`` (address, route, port, VLAN tag, MTU); empty when all is well."""

    async def ports(self, bridge: str) -> list[PortRecord]:
        """Every port on ``bridge`` that carries our external_ids."""


def host_ifname(container_id: str, ifname: str) -> str:
    """A stable host-side name of at most 15 bytes (the kernel's IFNAMSIZ - 1).

    "le" + 11 hex digits of SHA-256(container ID / ifname): collisions among the
    pods of one node are negligible (2^44 space) and the name survives restarts.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"le{digest[:11]}"
