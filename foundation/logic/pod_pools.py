"""The registered pod pools, as slb-core and the SLB agents read them: where an upstream may point.

cnictl registers every pod subnet at ``/ipam/pools/{pool}`` (``cni/pools.py`` writes
the record: ``{"name","cidr","vlan","gateway","exclude","block_size"}``). A load
balancer's upstream must be an address a pod can hold: inside a registered pool and
not the pool's network, broadcast or gateway address nor one of its ``exclude``
addresses (infrastructure lives there). Anything else (etcd's client port, the Nginx
host itself, some other private service) is refused by slb-core and dropped by the
SLB agent, which must not trust what it reads from etcd.

This module parses the pool records again, defensively and on its own: agents import
ports and ``foundation.logic`` only (never ``cni/``), and a record that does not parse
is skipped and named in ``PodPools.invalid`` (its addresses are then not usable),
never an exception. ``PodPools.of(kvs, revision)`` builds the set from a range read of
``POOLS``; ``PoolCache`` keeps the last one and rebuilds only when the records changed.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from foundation.logic.slb_domain import Upstream, load_json, show

POOLS = "/ipam/pools/"  # the same prefix as cni.pools.POOLS (docs/keys.md)
POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_RECORD = 1 << 16  # bytes; a pool record is ~150 (a long exclude list stays far below this)
MAX_EXCLUDE = 4096
MIN_PREFIXLEN = 8  # a pod pool is at most a /8 (cnictl's blocks are claimed one by one)
# Where no pod lives: "this network", loopback, link-local, multicast and the reserved 240/4 + broadcast.
NOT_PODS = tuple(IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"))


class PoolRecordError(ValueError):
    """A pool record does not parse; the message names the key and what is wrong."""


@dataclass(frozen=True)
class PodPool:
    name: str
    network: IPv4Network
    unusable: frozenset[int]  # network, broadcast, gateway, excluded addresses (as integers)

    def holds(self, address: IPv4Address) -> bool:
        return address in self.network and int(address) not in self.unusable


def parse_pool(key: str, raw: bytes) -> PodPool:
    """One ``/ipam/pools/{pool}`` record; ``PoolRecordError`` for anything cnictl would not have written."""
    name = key.removeprefix(POOLS)
    if not POOL_NAME.fullmatch(name):
        raise PoolRecordError(f"{show(key)}: not a pool key")
    if len(raw) > MAX_RECORD:
        raise PoolRecordError(f"{key}: record of {len(raw)} bytes (at most {MAX_RECORD})")
    try:
        data = load_json(raw)
    except ValueError as exc:
        raise PoolRecordError(f"{key}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoolRecordError(f"{key}: not a JSON object")
    if data.get("name") != name:
        raise PoolRecordError(f"{key}: holds pool {show(data.get('name'))}")
    network = _network(key, data.get("cidr"))
    if not MIN_PREFIXLEN <= network.prefixlen <= 30 or any(network.overlaps(n) for n in NOT_PODS):
        raise PoolRecordError(f"{key}: {network} is not a pod subnet (a /{MIN_PREFIXLEN} to /30 outside "
                              "0/8, 127/8, 169.254/16 and 224/3)")
    unusable = {int(network.network_address), int(network.broadcast_address)}
    gateway = _address(key, "gateway", data.get("gateway"))
    if gateway not in network:
        raise PoolRecordError(f"{key}: gateway {gateway} is outside {network}")
    unusable.add(int(gateway))
    exclude = data.get("exclude", [])
    if not isinstance(exclude, list) or len(exclude) > MAX_EXCLUDE:
        raise PoolRecordError(f"{key}: exclude is not a list of at most {MAX_EXCLUDE} addresses")
    unusable.update(int(_address(key, "exclude", item)) for item in exclude)
    return PodPool(name, network, frozenset(unusable))


def _network(key: str, text: Any) -> IPv4Network:
    if not isinstance(text, str) or not text.isascii() or len(text) > 18:
        raise PoolRecordError(f"{key}: cidr {show(text)} is not an IPv4 network")
    try:
        return IPv4Network(text, strict=True)
    except ValueError:
        raise PoolRecordError(f"{key}: cidr {show(text)} is not an IPv4 network") from None


def _address(key: str, what: str, text: Any) -> IPv4Address:
    if not isinstance(text, str) or not text.isascii() or len(text) > 15:
        raise PoolRecordError(f"{key}: {what} {show(text)} is not an IPv4 address")
    try:
        return IPv4Address(text)
    except ValueError:
        raise PoolRecordError(f"{key}: {what} {show(text)} is not an IPv4 address") from None


@dataclass(frozen=True)
class PodPools:
    """The registered pools at one Store revision; ``invalid``: records that did not parse (key → why)."""

    pools: tuple[PodPool, ...] = ()
    revision: int = 0
    invalid: tuple[tuple[str, str], ...] = ()
    _starts: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @staticmethod
    def of(kvs: Iterable[Any], revision: int) -> PodPools:
        """From the key-values of a range read of ``POOLS`` (anything with ``.key`` and ``.value``)."""
        pools, invalid = [], []
        for kv in kvs:
            try:
                pools.append(parse_pool(kv.key, kv.value))
            except PoolRecordError as exc:
                invalid.append((kv.key, str(exc)))
        pools.sort(key=lambda p: int(p.network.network_address))
        return PodPools(tuple(pools), revision, tuple(invalid),
                        tuple(int(p.network.network_address) for p in pools))

    def pool_of(self, host: str) -> PodPool | None:
        """The pool whose pod addresses include ``host`` (a dotted quad), or None."""
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return None
        # Pools do not overlap (cnictl refuses it): the last one starting at or below the address
        # is the only candidate. Forged records may overlap: then any pool holding it counts.
        index = bisect.bisect_right(self._starts, int(address))
        if index and self.pools[index - 1].holds(address):
            return self.pools[index - 1]
        return next((pool for pool in self.pools[: max(index - 1, 0)] if pool.holds(address)), None)

    def outside(self, upstreams: Iterable[Upstream]) -> tuple[Upstream, ...]:
        """The upstreams no pod can hold: outside every registered pool, or on a reserved address of one."""
        return tuple(u for u in upstreams if self.pool_of(u.host) is None)


class PoolCache:
    """The last ``PodPools`` built, rebuilt only when the records (keys and mod_revisions) differ."""

    def __init__(self) -> None:
        self._signature: tuple[tuple[str, int], ...] | None = None
        self.pools = PodPools()

    def update(self, kvs: Iterable[Any], revision: int) -> PodPools:
        kvs = list(kvs)
        signature = tuple((kv.key, kv.mod_revision) for kv in kvs)
        if signature != self._signature:
            self.pools, self._signature = PodPools.of(kvs, revision), signature
        elif revision > self.pools.revision:
            self.pools = PodPools(self.pools.pools, revision, self.pools.invalid, self.pools._starts)
        return self.pools
