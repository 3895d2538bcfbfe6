"""IPAM of one node: addresses from per-node blocks of pools kept in the Store.

How an ADD gets its address, in the common case with one Store transaction:
the node keeps its blocks (and their mod_revisions) in memory, picks the lowest
free offset of its first block with room, and commits

    if block.mod_revision == cached and handle does not exist:
        put block (offset -> handle), put handle
    else:
        get block, get handle

A repeated ADD finds its handle (in memory, or in the failure branch) and gets
the same address back. When the node's blocks are full it claims a new block
with the allocation already in it (compare: the block key does not exist), so a
claim is one transaction too. When a pool has no unclaimed block left, the node
borrows a free address from another node's block (same CAS on that block).

Invariants, whatever crashes:
* An address has at most one owner: the block record is the only place an
  allocation lives, and every change to it is a compare-and-swap on its
  mod_revision. The handle record is written and deleted in the same
  transaction as the block, so the two never disagree.
* A released address is not handed out again for ``cooldown`` seconds (wall
  time stored in the block, so it holds across agent restarts and nodes).
* Release is idempotent: an unknown handle is success.

It must not know about CNI, netlink or OVS; it talks to the world only through
the Store and Runtime ports.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from cni.pools import (
    BLOCKS,
    POOLS,
    Block,
    Handle,
    PodRef,
    Pool,
    block_key,
    handle_id,
    handle_key,
)
from foundation.logic.mutex import Mutex
from foundation.ports import Compare, DeleteOp, GetOp, PutOp, Runtime, Store

NO_POD = PodRef()


class IpamError(Exception):
    """Base of IPAM's own errors."""


class PoolExhausted(IpamError):
    def __init__(self, pools: Sequence[str]) -> None:
        super().__init__(f"no free address in pool(s) {', '.join(pools) or '(none defined)'}")
        self.pools = tuple(pools)


class UnknownPool(IpamError):
    def __init__(self, name: str) -> None:
        super().__init__(f"pool {name!r} does not exist")
        self.name = name


class TooMuchContention(IpamError):
    """Compare-and-swap kept failing; the caller may retry later."""


@dataclass(frozen=True)
class Allocation:
    address: IPv4Address
    pool: Pool
    block: IPv4Network
    handle: str
    existing: bool = False  # the handle already had this address (a repeated ADD)

    @property
    def cidr(self) -> str:
        """The address with the pool's prefix length, as a CNI result wants it."""
        return f"{self.address}/{self.pool.cidr.prefixlen}"


@dataclass
class IpamStats:
    transactions: int = 0
    conflicts: int = 0
    blocks_claimed: int = 0
    borrowed: int = 0
    fast_repeats: int = 0


@dataclass(frozen=True)
class _Stray:
    """A handle record whose allocation no longer exists."""

    mod_revision: int


@dataclass
class _Cached:
    block: Block
    mod_revision: int


@dataclass
class Ipam:
    store: Store
    runtime: Runtime
    node: str
    cooldown: float = 60.0
    borrow: bool = True
    max_attempts: int = 32
    stats: IpamStats = field(default_factory=IpamStats)

    def __post_init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self._blocks: dict[str, _Cached] = {}  # our blocks by key, in claim order
        self._lock = Mutex(self.runtime)
        # Where this node starts looking for a free block: spread nodes over the pool so
        # that fifty nodes claiming at once do not all race for the first free block.
        self._start = zlib.crc32(self.node.encode())

    # ------------------------------------------------------------------ state
    async def load(self) -> None:
        """Read the pools and this node's blocks (on start, or after losing track)."""
        await self.refresh_pools()
        found = await self.store.range(BLOCKS)
        self._blocks = {}
        for kv in found.kvs:
            block = Block.from_bytes(kv.value)
            if block.node == self.node:
                self._blocks[kv.key] = _Cached(block, kv.mod_revision)

    async def refresh_pools(self) -> dict[str, Pool]:
        found = await self.store.range(POOLS)
        self._pools = {pool.name: pool for pool in (Pool.from_bytes(kv.value) for kv in found.kvs)}
        return self._pools

    @property
    def pools(self) -> dict[str, Pool]:
        return dict(self._pools)

    def owned_blocks(self) -> list[Block]:
        return [c.block for c in self._blocks.values()]

    def owned_handles(self) -> dict[str, IPv4Address]:
        """Handle id -> address of every allocation in this node's blocks."""
        return {h: c.block.address(o) for c in self._blocks.values() for o, h in c.block.allocations.items()}

    def _candidates(self, wanted: Sequence[str]) -> list[Pool]:
        if not wanted:
            return [self._pools[name] for name in sorted(self._pools)]
        missing = [name for name in wanted if name not in self._pools]
        if missing:
            raise UnknownPool(missing[0])
        return [self._pools[name] for name in wanted]

    # ------------------------------------------------------------------ allocate
    async def allocate(self, container_id: str, ifname: str, *, pools: Sequence[str] = (), pod: PodRef = NO_POD,
                       network: str = "") -> Allocation:
        """The address of (container, interface): the one it already has, or a new one."""
        handle = handle_id(container_id, ifname)
        async with self._lock:
            if not self._pools or any(name not in self._pools for name in pools):
                await self.refresh_pools()
            candidates = self._candidates(pools)
            repeat = self._find_cached(handle)
            if repeat is not None:
                self.stats.fast_repeats += 1
                cached, offset = repeat
                return replace(self._allocation(cached.block, offset, handle), existing=True)
            # The record to write; address and pool are filled in by whichever block has room.
            template = Handle(container_id, ifname, IPv4Address(0), "", self.node, pod, network,
                              self.runtime.wall_time())
            refreshed = False
            for attempt in range(self.max_attempts):
                try:
                    result = await self._allocate_once(candidates, handle, template, guess=attempt == 0)
                except PoolExhausted:
                    # A pool added since we last looked is worth one more try (when none was named).
                    if pools or refreshed:
                        raise
                    refreshed, before = True, set(self._pools)
                    if set(await self.refresh_pools()) == before:
                        raise
                    candidates = self._candidates(pools)
                    continue
                if result is not None:
                    return result
            raise TooMuchContention(f"gave up allocating for {handle} after {self.max_attempts} conflicting attempts")

    async def _allocate_once(self, candidates: list[Pool], handle: str, template: Handle,
                             guess: bool) -> Allocation | None:
        """One attempt: None when a race was lost (caches refreshed, try again).

        With ``guess``, a node whose blocks are full first tries to claim the block after
        its last one without reading which blocks are taken: in a pool with room that is
        right almost always, and makes a claim one transaction instead of a range + one.
        """
        now = self.runtime.wall_time()
        names = {pool.name for pool in candidates}
        for cached in self._blocks.values():
            if cached.block.pool not in names:
                continue
            pool = self._pools[cached.block.pool]
            offset = cached.block.free_offset(pool.usable_in_block(cached.block.cidr), now, self.cooldown)
            if offset is not None:
                return await self._commit(cached.block, cached.mod_revision, offset, handle, template)
        if guess:
            pool = candidates[0] if candidates else None
            cidr = self._next_block_guess(pool) if pool else None
            if pool is not None and cidr is not None:
                return await self._commit(Block(pool.name, cidr, self.node), 0,
                                          pool.usable_in_block(cidr)[0], handle, template)
        for pool in candidates:
            claimed = await self.store.range(f"{BLOCKS}{pool.name}/")
            taken = {kv.key: kv for kv in claimed.kvs}
            adopted = False
            for key, kv in taken.items():  # ours but unknown to us: a restart raced a claim
                block = Block.from_bytes(kv.value)
                if block.node == self.node and key not in self._blocks:
                    self._blocks[key] = _Cached(block, kv.mod_revision)
                    adopted = True
            if adopted:
                return None  # look at the adopted blocks first
            fresh = self._unclaimed_block(pool, taken)
            if fresh is not None:
                block, offset = fresh
                return await self._commit(block, 0, offset, handle, template)
            if self.borrow:
                for kv in claimed.kvs:
                    block = Block.from_bytes(kv.value)
                    offset = block.free_offset(pool.usable_in_block(block.cidr), now, self.cooldown)
                    if offset is not None:
                        self.stats.borrowed += 1
                        return await self._commit(block, kv.mod_revision, offset, handle, template)
        raise PoolExhausted([pool.name for pool in candidates])

    def _next_block_guess(self, pool: Pool) -> IPv4Network | None:
        """The block after this node's last block of ``pool`` (or at its start offset), if usable."""
        ours = [c.block.cidr for c in self._blocks.values() if c.block.pool == pool.name]
        first = int(pool.cidr.network_address)
        index = ((int(ours[-1].network_address) - first) // pool.block_size + 1) if ours else self._start
        cidr = pool.block_at(index % pool.block_count)
        if block_key(pool.name, cidr) in self._blocks or not pool.usable_in_block(cidr):
            return None
        return cidr

    def _unclaimed_block(self, pool: Pool, taken: dict[str, object]) -> tuple[Block, int] | None:
        count = pool.block_count
        for i in range(count):
            cidr = pool.block_at((self._start + i) % count)
            if block_key(pool.name, cidr) in taken:
                continue
            usable = pool.usable_in_block(cidr)
            if usable:
                return Block(pool.name, cidr, self.node), usable[0]
        return None

    async def _commit(self, block: Block, mod_revision: int, offset: int, handle: str,
                      template: Handle) -> Allocation | None:
        """CAS one allocation into ``block``; None when we lost the race (state refreshed)."""
        pool = self._pools[block.pool]
        now = self.runtime.wall_time()
        updated = Block(block.pool, block.cidr, block.node, {**block.allocations, offset: handle}, dict(block.released))
        updated.forget_old_releases(now, self.cooldown)
        h = replace(template, address=block.address(offset), pool=block.pool)
        self.stats.transactions += 1
        result = await self.store.txn(
            [Compare.mod_is(block.key, mod_revision), Compare.missing(h.key)],
            [PutOp(block.key, updated.to_bytes()), PutOp(h.key, h.to_bytes())],
            [GetOp(block.key), GetOp(h.key)],
        )
        if result.succeeded:
            if updated.node == self.node:
                self._blocks[block.key] = _Cached(updated, result.revision)
            self.stats.blocks_claimed += mod_revision == 0
            return Allocation(block.address(offset), pool, block.cidr, handle)
        self.stats.conflicts += 1
        current_block, existing_handle = result.responses[0].first(), result.responses[1].first()
        self._remember(block.key, current_block)
        if existing_handle is not None:  # a repeated ADD whose allocation we did not have cached
            known = Handle.from_bytes(existing_handle.value)
            owner_pool = self._pools.get(known.pool) or pool
            return Allocation(known.address, owner_pool, owner_pool.block_of(known.address), handle, existing=True)
        return None

    def _remember(self, key: str, kv) -> None:
        """Update our cache of ``key`` from what the Store just told us."""
        if kv is None:
            self._blocks.pop(key, None)
            return
        block = Block.from_bytes(kv.value)
        if block.node == self.node:
            self._blocks[key] = _Cached(block, kv.mod_revision)
        else:
            self._blocks.pop(key, None)

    def _find_cached(self, handle: str) -> tuple[_Cached, int] | None:
        for cached in self._blocks.values():
            for offset, owner in cached.block.allocations.items():
                if owner == handle:
                    return cached, offset
        return None

    def _allocation(self, block: Block, offset: int, handle: str) -> Allocation:
        pool = self._pools[block.pool]
        return Allocation(block.address(offset), pool, block.cidr, handle)

    async def lookup(self, container_id: str, ifname: str) -> Allocation | None:
        """The address (container, interface) holds, or None."""
        handle = handle_id(container_id, ifname)
        found = self._find_cached(handle)
        if found is not None:
            return self._allocation(found[0].block, found[1], handle)
        located = await self._locate(handle)
        if located is None or isinstance(located, _Stray):
            return None
        block, _, offset = located
        return self._allocation(block, offset, handle)

    # ------------------------------------------------------------------ release
    async def release(self, container_id: str, ifname: str) -> Allocation | None:
        """Free the address of (container, interface); None if it had none (idempotent)."""
        handle = handle_id(container_id, ifname)
        async with self._lock:
            for _ in range(self.max_attempts):
                found = self._find_cached(handle)
                if found is not None:
                    cached, offset = found
                    block, mod_revision = cached.block, cached.mod_revision
                else:
                    located = await self._locate(handle)
                    if located is None:
                        return None
                    if isinstance(located, _Stray):
                        # The handle points at no allocation (its block was freed by gc):
                        # remove the record alone, unless someone rewrote it meanwhile.
                        key = handle_key(handle)
                        await self.store.txn([Compare.mod_is(key, located.mod_revision)], [DeleteOp(key)])
                        return None
                    block, mod_revision, offset = located
                done = await self._free(block, mod_revision, offset, handle)
                if done is not None:
                    return done
            raise TooMuchContention(f"gave up releasing {handle} after {self.max_attempts} conflicting attempts")

    async def _locate(self, handle: str) -> tuple[Block, int, int] | _Stray | None:
        """Find a handle's allocation in the Store (it is not in one of our blocks)."""
        kv = await self.store.get(handle_key(handle))
        if kv is None:
            return None
        record = Handle.from_bytes(kv.value)
        pool = self._pools.get(record.pool) or (await self.refresh_pools()).get(record.pool)
        if pool is None:
            return _Stray(kv.mod_revision)
        block_kv = await self.store.get(block_key(pool.name, pool.block_of(record.address)))
        if block_kv is None:
            return _Stray(kv.mod_revision)
        block = Block.from_bytes(block_kv.value)
        offset = block.offset(record.address)
        if block.allocations.get(offset) != handle:
            return _Stray(kv.mod_revision)
        return block, block_kv.mod_revision, offset

    async def _free(self, block: Block, mod_revision: int, offset: int, handle: str) -> Allocation | None:
        now = self.runtime.wall_time()
        allocations = {o: h for o, h in block.allocations.items() if o != offset}
        updated = Block(block.pool, block.cidr, block.node, allocations, {**block.released, offset: now})
        updated.forget_old_releases(now, self.cooldown)
        self.stats.transactions += 1
        result = await self.store.txn(
            [Compare.mod_is(block.key, mod_revision)],
            [PutOp(block.key, updated.to_bytes()), DeleteOp(handle_key(handle))],
            [GetOp(block.key)],
        )
        if result.succeeded:
            if updated.node == self.node:
                self._blocks[block.key] = _Cached(updated, result.revision)
            return self._allocation(updated, offset, handle) if block.pool in self._pools else None
        self.stats.conflicts += 1
        self._remember(block.key, result.responses[0].first())
        return None

