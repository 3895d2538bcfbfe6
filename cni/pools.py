"""IP pools and blocks: the records IPAM keeps in the Store, their validation and their keys.

A **pool** is one IPv4 subnet of a Cell with its own VLAN and gateway (e.g. a /22,
1,024 addresses). It is cut into **blocks** of ``block_size`` contiguous addresses
(16 by default); a node claims whole blocks and allocates pod addresses from them.
Addresses that are never handed out: the pool's network and broadcast addresses,
its gateway and the pool's ``exclude`` list.

Keys (see docs/keys.md)::

    /ipam/pools/{pool}                  Pool record (JSON)
    /ipam/blocks/{pool}/{a.b.c.d}-{len} Block record: owner node, allocations, recent releases
    /ipam/handles/{containerID}/{if}    Handle record: which address (container, interface) holds
    /ipam/leaks/{a.b.c.d}               a suspected leak seen by cnictl check

Every name that becomes part of a key is validated before: pool and node names here,
container IDs and interface names by the CNI request parser (``cni/spec.py``), so no
user string can step outside its prefix. This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

R = TypeVar("R")

POOLS = "/ipam/pools/"
BLOCKS = "/ipam/blocks/"
HANDLES = "/ipam/handles/"
LEAKS = "/ipam/leaks/"

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")  # a Kubernetes node name (DNS subdomain)
DEFAULT_BLOCK_SIZE = 16
MIN_PREFIXLEN = 8  # a pool is at most a /8: its blocks are listed and claimed one by one
MAX_EXCLUDE = 4096  # addresses in a pool's exclude list
MAX_POOL_RECORD = 1 << 20  # bytes: a pool record is ~150 (~75 KiB with MAX_EXCLUDE addresses); etcd allows 1.5 MiB
# Ranges no pod address may come from (RFC 6890): a pool overlapping one is refused.
_SPECIAL_RANGES = (
    (IPv4Network("0.0.0.0/8"), "'this network' (unspecified)"),
    (IPv4Network("127.0.0.0/8"), "loopback"),
    (IPv4Network("169.254.0.0/16"), "link-local"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("240.0.0.0/4"), "reserved (and the broadcast address)"),
)


class InvalidRecord(ValueError):
    """A record read from the Store cannot be decoded or breaks its own rules.

    Every decoder of this module raises only this (whatever went wrong inside: deeply
    nested JSON, wrong types, numbers too large to parse), so a reader can set the one
    record aside instead of crashing on it.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid {kind} record: {reason}")
        self.kind = kind
        self.reason = reason


# An etcd value is at most 1.5 MiB; none of ours comes near. What is echoed of a bad one is cut.
_MAX_ECHO = 200
_MAX_HANDLE_ID = 512  # a container ID (<= 1024 bytes by our parser is generous) + "/" + an ifname


def _decode(kind: str, raw: bytes, build: Callable[[dict[str, Any]], R]) -> R:
    """``build(json)`` or ``InvalidRecord``: any failure of a decode is the record's fault, never the reader's."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise InvalidRecord(kind, f"not a JSON object but {type(data).__name__}")
        return build(data)
    except InvalidRecord:
        raise
    except Exception as exc:  # RecursionError, KeyError, TypeError, ValueError (e.g. a 5,000-digit int), ...
        text = str(exc)
        text = text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."
        raise InvalidRecord(kind, f"{type(exc).__name__}: {text}") from None


def _str(kind: str, data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise InvalidRecord(kind, f"{name} is {'not a string' if name in data else 'missing'}")
    return value


def _number(kind: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InvalidRecord(kind, f"{name} is not a finite number")
    return float(value)


def _offset(kind: str, text: Any, size: int) -> int:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 10 \
            or not 0 <= int(text) < size:
        raise InvalidRecord(kind, f"offset {str(text)[:20]!r} is not an offset within the block")
    return int(text)


class PoolConfigError(ValueError):
    """A pool definition is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _dumps(data: dict[str, Any]) -> bytes:
    # Sorted keys and no spaces: the same record always has the same bytes (stable traces, CAS on value).
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def check_name(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        raise PoolConfigError(kind, f"invalid {kind} {value!r}")
    return value


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: IPv4Network
    vlan: int
    gateway: IPv4Address
    exclude: frozenset[IPv4Address] = frozenset()
    block_size: int = DEFAULT_BLOCK_SIZE

    @staticmethod
    def parse(name: str, cidr: str, vlan: int, gateway: str | None = None, exclude: list[str] | tuple[str, ...] = (),
              block_size: int = DEFAULT_BLOCK_SIZE) -> Pool:
        """Validate user input into a Pool; ``PoolConfigError`` names the first bad field."""
        check_name("pool name", name, POOL_NAME)
        try:
            network = IPv4Network(cidr, strict=True)
        except ValueError as exc:
            raise PoolConfigError("cidr", f"{cidr!r} is not an IPv4 network in CIDR notation ({exc})") from None
        if network.prefixlen > 30:
            raise PoolConfigError("cidr", f"{cidr} is too small for pods (at most /30)")
        for special, what in _SPECIAL_RANGES:
            if network.overlaps(special):
                raise PoolConfigError("cidr", f"{network} overlaps {special}, {what}: pods cannot use it")
        if network.prefixlen < MIN_PREFIXLEN:
            raise PoolConfigError("cidr", f"{cidr} is too large for a pool (at least /{MIN_PREFIXLEN})")
        if isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094:
            raise PoolConfigError("vlan", f"VLAN must be an integer in 1..4094, got {vlan!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 4 \
                or block_size & (block_size - 1):
            raise PoolConfigError("block_size", f"block size must be a power of two >= 4, got {block_size!r}")
        if block_size > network.num_addresses:
            raise PoolConfigError(
                "block_size", f"block size {block_size} is larger than the pool ({network.num_addresses} addresses)")
        try:
            gw = IPv4Address(gateway) if gateway else next(network.hosts())
        except ValueError:
            raise PoolConfigError("gateway", f"{gateway!r} is not an IPv4 address") from None
        if gw not in network or gw in (network.network_address, network.broadcast_address):
            raise PoolConfigError("gateway", f"gateway {gw} is not a host address of {network}")
        if len(exclude) > MAX_EXCLUDE:
            raise PoolConfigError("exclude", f"at most {MAX_EXCLUDE} addresses, got {len(exclude)}")
        excluded = set()
        for item in exclude:
            try:
                address = IPv4Address(item)
            except ValueError:
                raise PoolConfigError("exclude", f"{item!r} is not an IPv4 address") from None
            if address not in network:
                raise PoolConfigError("exclude", f"{address} is outside {network}")
            excluded.add(address)
        return Pool(name, network, vlan, gw, frozenset(excluded), block_size)

    # ---- geometry
    @property
    def block_prefixlen(self) -> int:
        return 32 - (self.block_size.bit_length() - 1)

    @property
    def block_count(self) -> int:
        return self.cidr.num_addresses // self.block_size

    def block_at(self, index: int) -> IPv4Network:
        # Arithmetic, not ipaddress.subnets(): a /16 has 4,096 blocks and this is on the ADD path.
        return IPv4Network((int(self.cidr.network_address) + index * self.block_size, self.block_prefixlen))

    def blocks(self) -> list[IPv4Network]:
        return [self.block_at(i) for i in range(self.block_count)]

    def block_of(self, address: IPv4Address) -> IPv4Network:
        return IPv4Network((int(address) & ~(self.block_size - 1), self.block_prefixlen))

    def reserved(self) -> frozenset[IPv4Address]:
        """Addresses of the pool never handed to a pod."""
        return self.exclude | {self.cidr.network_address, self.cidr.broadcast_address, self.gateway}

    @cached_property
    def _reserved_ints(self) -> frozenset[int]:
        return frozenset(int(a) for a in self.reserved())

    def usable_in_block(self, block: IPv4Network) -> list[int]:
        """Offsets within ``block`` that may be allocated, ascending."""
        base = int(block.network_address)
        return [i for i in range(self.block_size) if base + i not in self._reserved_ints]

    def capacity(self) -> int:
        return self.cidr.num_addresses - len(self.reserved())

    def overlaps(self, other: Pool) -> bool:
        return self.cidr.overlaps(other.cidr)

    # ---- records
    @property
    def key(self) -> str:
        return f"{POOLS}{self.name}"

    def to_bytes(self) -> bytes:
        return _dumps({"name": self.name, "cidr": str(self.cidr), "vlan": self.vlan, "gateway": str(self.gateway),
                       "exclude": sorted(str(a) for a in self.exclude), "block_size": self.block_size})

    @staticmethod
    def from_bytes(raw: bytes) -> Pool:
        """Decode a pool record; ``InvalidRecord`` for anything ``parse`` would refuse, or worse.

        The one decoder of pool records: IPAM, cnictl, slb-core and the SLB agents
        (``cni/pod_pools.py``) all read them through it.
        """
        if len(raw) > MAX_POOL_RECORD:
            raise InvalidRecord("pool", f"{len(raw)} bytes (at most {MAX_POOL_RECORD})")

        def build(data: dict[str, Any]) -> Pool:
            exclude = data.get("exclude", [])
            if not isinstance(exclude, list) or not all(isinstance(item, str) for item in exclude):
                raise InvalidRecord("pool", "exclude is not a list of strings")
            return Pool.parse(_str("pool", data, "name"), _str("pool", data, "cidr"), data["vlan"],
                              _str("pool", data, "gateway"), exclude,
                              data.get("block_size", DEFAULT_BLOCK_SIZE))

        return _decode("pool", raw, build)


def block_key(pool: str, block: IPv4Network) -> str:
    return f"{BLOCKS}{pool}/{block.network_address}-{block.prefixlen}"


def parse_block_key(key: str) -> tuple[str, IPv4Network]:
    pool, _, cidr = key.removeprefix(BLOCKS).partition("/")
    address, _, length = cidr.partition("-")
    return pool, IPv4Network(f"{address}/{length}")


@dataclass
class Block:
    """A node's block: which offsets are allocated to which handle, which were released when."""

    pool: str
    cidr: IPv4Network
    node: str
    allocations: dict[int, str] = field(default_factory=dict)  # offset -> handle id "containerID/ifname"
    released: dict[int, float] = field(default_factory=dict)  # offset -> wall time of release

    @property
    def key(self) -> str:
        return block_key(self.pool, self.cidr)

    def address(self, offset: int) -> IPv4Address:
        return self.cidr.network_address + offset

    def offset(self, address: IPv4Address) -> int:
        return int(address) - int(self.cidr.network_address)

    def free_offset(self, usable: list[int], now: float, cooldown: float) -> int | None:
        """The lowest usable offset neither allocated nor released less than ``cooldown`` ago."""
        for offset in usable:
            if offset in self.allocations:
                continue
            released_at = self.released.get(offset)
            if released_at is not None and now - released_at < cooldown:
                continue
            return offset
        return None

    def forget_old_releases(self, now: float, cooldown: float) -> None:
        self.released = {o: t for o, t in self.released.items() if now - t < cooldown}

    def to_bytes(self) -> bytes:
        return _dumps({"pool": self.pool, "cidr": str(self.cidr), "node": self.node,
                       "allocations": {str(o): h for o, h in sorted(self.allocations.items())},
                       "released": {str(o): t for o, t in sorted(self.released.items())}})

    @staticmethod
    def from_bytes(raw: bytes) -> Block:
        """Decode a block record; ``InvalidRecord`` unless every field is what this module writes."""

        def build(data: dict[str, Any]) -> Block:
            pool, node = _str("block", data, "pool"), _str("block", data, "node")
            if not POOL_NAME.fullmatch(pool):
                raise InvalidRecord("block", f"pool {pool[:_MAX_ECHO]!r} is not a pool name")
            if not NODE_NAME.fullmatch(node):
                raise InvalidRecord("block", f"node {node[:_MAX_ECHO]!r} is not a node name")
            cidr = _network(_str("block", data, "cidr"))
            allocations, released = data.get("allocations", {}), data.get("released", {})
            if not isinstance(allocations, dict) or not isinstance(released, dict):
                raise InvalidRecord("block", "allocations or released is not an object")
            size = cidr.num_addresses
            held: dict[int, str] = {}
            for o, h in allocations.items():
                if not isinstance(h, str) or "/" not in h or len(h) > _MAX_HANDLE_ID:
                    raise InvalidRecord("block", f"allocation {str(o)[:20]!r} names no handle")
                held[_offset("block", o, size)] = h
            cooling = {_offset("block", o, size): _number("block", "a release time", t) for o, t in released.items()}
            return Block(pool, cidr, node, held, cooling)

        return _decode("block", raw, build)


def handle_id(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def handle_key(handle: str) -> str:
    return f"{HANDLES}{handle}"


@dataclass(frozen=True)
class PodRef:
    """Which pod an address was given to, from CNI_ARGS (kubelet passes these)."""

    namespace: str = ""
    name: str = ""
    uid: str = ""

    @staticmethod
    def from_cni_args(args: dict[str, str]) -> PodRef:
        return PodRef(args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", ""), args.get("K8S_POD_UID", ""))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else "-"


@dataclass(frozen=True)
class Handle:
    """The record of one (container, interface)'s address."""

    container_id: str
    ifname: str
    address: IPv4Address
    pool: str
    node: str
    pod: PodRef
    network: str = ""
    allocated_at: float = 0.0

    @property
    def id(self) -> str:
        return handle_id(self.container_id, self.ifname)

    @property
    def key(self) -> str:
        return handle_key(self.id)

    def to_bytes(self) -> bytes:
        return _dumps({"container_id": self.container_id, "ifname": self.ifname, "address": str(self.address),
                       "pool": self.pool, "node": self.node, "network": self.network,
                       "pod": {"namespace": self.pod.namespace, "name": self.pod.name, "uid": self.pod.uid},
                       "allocated_at": self.allocated_at})

    @staticmethod
    def from_bytes(raw: bytes) -> Handle:
        """Decode a handle record; ``InvalidRecord`` unless every field is what this module writes."""

        def build(data: dict[str, Any]) -> Handle:
            kind = "handle"
            container_id, ifname = _str(kind, data, "container_id"), _str(kind, data, "ifname")
            if not container_id or not ifname or "/" in container_id or "/" in ifname \
                    or len(container_id) + len(ifname) >= _MAX_HANDLE_ID:
                raise InvalidRecord(kind, "container_id or ifname is not what a CNI request may carry")
            pool, node = _str(kind, data, "pool"), _str(kind, data, "node")
            if not POOL_NAME.fullmatch(pool):
                raise InvalidRecord(kind, f"pool {pool[:_MAX_ECHO]!r} is not a pool name")
            if not NODE_NAME.fullmatch(node):
                raise InvalidRecord(kind, f"node {node[:_MAX_ECHO]!r} is not a node name")
            pod = data.get("pod") or {}
            if not isinstance(pod, dict):
                raise InvalidRecord(kind, "pod is not an object")
            return Handle(container_id, ifname, _address(_str(kind, data, "address")), pool, node,
                          PodRef(_str(kind, pod, "namespace", ""), _str(kind, pod, "name", ""),
                                 _str(kind, pod, "uid", "")),
                          _str(kind, data, "network", ""),
                          _number(kind, "allocated_at", data.get("allocated_at", 0.0)))

        return _decode("handle", raw, build)


# Records are read by the thousand (a leak check reads every handle and block): parsing the
# same few addresses and networks again dominated it. Both types are immutable, so sharing is safe.
_address = lru_cache(maxsize=1 << 18)(IPv4Address)
_network = lru_cache(maxsize=1 << 16)(IPv4Network)


def parse_address(text: str) -> IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise PoolConfigError("address", f"{text!r} is not an IPv4 address") from None
