"""A minimal synchronous rtnetlink client for what every ADD and DEL asks: a veth pair, an address, a route, a group.

pyroute2 (0.9) spends ~0.4 ms of Python per request and ~0.7 ms per socket (its sync API
drives an asyncio loop per call), against ~10 µs for the same message packed with
``struct``; an ADD makes a socket in the pod's netns and sends four requests, so on a busy
two-core node that was a quarter of the agent's ADD. ``OvsDataplane`` sends those requests
here and keeps pyroute2 for everything that reads the kernel's answers in detail (CHECK,
GC, the undo and fallback paths, the reaper).

Invariants: one request in flight per socket (the dataplane's worker thread owns both of
its sockets); every request asks for an acknowledgement and reads until it, so a request
that returns was applied, and one that failed raises pyroute2's ``NetlinkError(errno)``:
callers handle one exception type for both libraries. A socket works in the network
namespace it was created in (the caller makes it there). Replies of other sequence
numbers are skipped. Each read waits at most ``timeout`` seconds (``OSError``).

It must not know OVS, IPAM, the CNI or which interfaces are whose.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_ECHO, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x8, 0x200, 0x400
_RTM_NEWLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 20, 24
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK = 1, 3, 4, 5
_IFLA_LINKINFO, _IFLA_GROUP, _IFLA_NET_NS_FD = 18, 27, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_OIF, _RTA_GATEWAY = 4, 5
_IFF_UP = 0x1
_RT_TABLE_MAIN, _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 4, 0, 1  # what pyroute2 sent
_HEADER = struct.Struct("=LHHLL")  # struct nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        offset += (length + 3) & ~3
    return found


def _ifname(name: str) -> bytes:
    return _attr(_IFLA_IFNAME, name.encode() + b"\0")


class Rtnl:
    """One NETLINK_ROUTE socket (bound here; closed with ``close()`` or ``with``)."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; the messages the kernel sent back before its ACK (echoes), as (type, payload)."""
        self._seq += 1
        seq = self._seq
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
                       + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, reply_kind, _flags, reply_seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                if reply_seq == seq:
                    payload = data[offset + _HEADER.size:offset + length]
                    if reply_kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload)
                        if code:
                            raise NetlinkError(-code, os.strerror(-code))
                        return replies
                    replies.append((reply_kind, payload))
                offset += (length + 3) & ~3

    def create_veth(self, host: str, peer: str, *, mtu: int, peer_netns_fd: int,
                    peer_mac: str) -> tuple[str | None, int | None]:
        """A veth pair: ``host`` here and up, ``peer`` born down in the netns ``peer_netns_fd`` with ``peer_mac``.

        (A peer born up would make the kernel echo its RTM_NEWLINK into the peer's netns, where this
        socket does not exist: the whole request fails with ENOTCONN.)

        Returns the host end's MAC and the peer's ifindex (in its netns) from the kernel's echo, or
        (None, None) if the kernel sent none (an old kernel): the caller looks them up.
        """
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + _ifname(peer) + _attr(
            _IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)) + _attr(_IFLA_MTU, struct.pack("=I", mtu)) + _attr(
            _IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
        linkinfo = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer_info))
        body = (_IFINFO.pack(0, 0, 0, _IFF_UP, _IFF_UP) + _ifname(host) + _attr(_IFLA_MTU, struct.pack("=I", mtu))
                + _attr(_IFLA_LINKINFO, linkinfo))
        for kind, payload in self.request(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL | _NLM_F_ECHO, body):
            attrs = _attrs(payload, _IFINFO.size)
            if kind == _RTM_NEWLINK and attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0") == host.encode():
                mac = attrs.get(_IFLA_ADDRESS)
                link = attrs.get(_IFLA_LINK)
                return (mac.hex(":") if mac else None), (struct.unpack("=i", link)[0] if link else None)
        return None, None

    def add_address(self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        """``ip addr add ADDRESS/PREFIX dev INDEX`` (no broadcast, global scope)."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed = address.ip.packed
        body = (struct.pack("=BBBBI", family, address.network.prefixlen, 0, _RT_SCOPE_UNIVERSE, index)
                + _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed))
        self.request(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def add_default_route(self, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address, oif: int) -> None:
        """``ip route add default via GATEWAY dev OIF proto static`` in the main table."""
        family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
        body = (struct.pack("=BBBBBBBBI", family, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC, _RT_SCOPE_UNIVERSE,
                            _RTN_UNICAST, 0)
                + _attr(_RTA_GATEWAY, gateway.packed) + _attr(_RTA_OIF, struct.pack("=I", oif)))
        self.request(_RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        """``ip link set INDEX up``."""
        self.request(_RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, _IFF_UP, _IFF_UP))

    def set_group(self, ifname: str, group: int) -> None:
        """``ip link set IFNAME group GROUP``; ``NetlinkError(ENODEV)`` if there is no such link."""
        self.request(_RTM_NEWLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _ifname(ifname)
                     + _attr(_IFLA_GROUP, struct.pack("=I", group)))
