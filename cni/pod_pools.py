"""The registered pod pools, as slb-core and the SLB agents read them: where an upstream may point.

cnictl registers every pod subnet at ``/ipam/pools/{pool}`` (the record of
``cni/pools.py``: ``{"name","cidr","vlan","gateway","exclude","block_size"}``). A load
balancer's upstream must be an address a pod can hold: inside a registered pool and
not the pool's network, broadcast or gateway address nor one of its ``exclude``
addresses (infrastructure lives there). Anything else (etcd's client port, the Nginx
host itself, some other private service) is refused by slb-core and dropped by the
SLB agent, which must not trust what it reads from etcd.

The records are decoded by the one pool decoder (``Pool.from_bytes``), so IPAM,
cnictl and load balancing agree on which records are valid. A record that does not
decode, or sits under a key naming another pool, is skipped and named in
``PodPools.invalid`` (its addresses are then not usable), never an exception.
``PodPools.of(kvs, revision)`` builds the set from a range read of ``POOLS``;
``PoolCache`` keeps the last one and rebuilds only when the records changed.

Pure: no I/O, no clock. It is the pod-networking concern's answer to "is this a pod
address?"; it must not know domains beyond the ``Upstream`` it is asked about.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from cni.pools import POOL_NAME, POOLS, InvalidRecord, Pool
from foundation.logic.slb_domain import Upstream, show

__all__ = ["POOLS", "PodPool", "PodPools", "PoolCache", "PoolRecordError", "parse_pool"]


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
    try:
        pool = Pool.from_bytes(raw)
    except InvalidRecord as exc:
        raise PoolRecordError(f"{key}: {exc.reason}") from None
    if pool.name != name:
        raise PoolRecordError(f"{key}: holds pool {show(pool.name)}")
    return PodPool(name, pool.cidr, frozenset(int(a) for a in pool.reserved()))


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
