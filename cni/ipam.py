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
* A handle names its node. This node never hands out, reports or frees the
  allocation of a handle another node holds (same container ID sent to two
  nodes): ``allocate`` and ``lookup`` raise ``HeldElsewhere``, ``release``
  leaves it alone.
* An address this node allocated but never plumbed (the ADD failed) goes back
  without cool-down (``release(..., cool_down=False)``): nothing can have
  learnt it, and a burst of failing ADDs must not exhaust a pool.
* Every record read back is decoded defensively (``cni.pools`` raises only
  ``InvalidRecord``): a bad one is logged and set aside (a block is never used
  nor claimed, a pool is unknown), and a request that needs it fails with
  ``CorruptRecord`` naming the key; nothing read from etcd crashes the agent.

Metrics (the Metrics port, ``foundation/ports/metrics.py``): the gauges of addresses in
use and blocks per (pool, this node) and the pools' sizes are set from the cache after
every load, allocation and release (a pool that disappears is set to 0 once); the
allocation latency of each ADD's share (runtime clock, successes only) and every lost
compare-and-swap are recorded as they happen. Recording reads no Store and costs no
runtime event.

It must not know about CNI, netlink or OVS; it talks to the world only through
the Store, Runtime and Metrics ports.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from cni.pools import (
    BLOCKS,
    POOLS,
    Block,
    Handle,
    InvalidRecord,
    PodRef,
    Pool,
    block_key,
    handle_id,
    handle_key,
    parse_block_key,
)
from foundation.logic.mutex import Mutex
from foundation.ports import Compare, DeleteOp, GetOp, KeyValue, PutOp, Runtime, Store, StoreError, StoreUnavailable
from foundation.ports.metrics import (
    IPAM_ALLOCATION_SECONDS,
    IPAM_ALLOCATIONS_IN_USE,
    IPAM_BLOCKS,
    IPAM_CAS_CONFLICTS,
    IPAM_IPPOOL_SIZE,
    NO_METRICS,
    Metrics,
)

NO_POD = PodRef()
log = logging.getLogger(__name__)


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


class HeldElsewhere(IpamError):
    """(container, interface) holds an address on another node: nothing here may touch it."""

    def __init__(self, handle: str, node: str, address: IPv4Address, here: str) -> None:
        super().__init__(f"{handle} holds {address} on node {node}, not on {here}; DEL it on {node} first")
        self.handle, self.node, self.address = handle, node, address


class CorruptRecord(IpamError):
    """A record this request needs is invalid in the Store (set aside; an operator must repair it)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


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
    batched: int = 0  # allocations committed together with others


@dataclass(eq=False)
class _Request:
    """One ADD waiting for its address; whoever serves its batch fills in the outcome."""

    container_id: str
    ifname: str
    pools: tuple[str, ...]
    pod: PodRef
    network: str
    result: Allocation | None = None
    error: BaseException | None = None
    done: bool = False
    cancelled: bool = False  # the caller gave up: serve no more

    @property
    def handle(self) -> str:
        return handle_id(self.container_id, self.ifname)


@dataclass(frozen=True)
class _Stray:
    """A handle record whose allocation no longer exists."""

    mod_revision: int


@dataclass(frozen=True)
class _Located:
    """Where a handle's allocation is: its block (as of ``mod_revision``) and offset, and its record's revision."""

    block: Block
    mod_revision: int
    offset: int
    handle_revision: int


@dataclass(frozen=True)
class _Foreign:
    """A handle record of another node's allocation."""

    record: Handle


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
    max_batch: int = 32  # etcd allows 128 operations per transaction: 32 handles + their blocks fit
    stats: IpamStats = field(default_factory=IpamStats)
    metrics: Metrics = NO_METRICS

    def __post_init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self._blocks: dict[str, _Cached] = {}  # our blocks by key, in claim order
        self._lock = Mutex(self.runtime)
        self._waiting: list[_Request] = []
        # Blocks seen claimed by other nodes: a guess skips them. Only a hint; a stale entry
        # (the block was freed by gc) merely costs a guess, the range read still finds it.
        self._foreign: set[str] = set()
        # Where this node starts looking for a free block: spread nodes over the pool so
        # that fifty nodes claiming at once do not all race for the first free block.
        self._start = zlib.crc32(self.node.encode())
        self._invalid_pools: dict[str, str] = {}  # pool name -> why its record was set aside
        self._reported: dict[tuple[str, int], None] = {}  # invalid records logged already (key, mod_revision)
        self._published: dict[str, None] = {}  # pools whose gauges this node has set (to zero them when gone)

    # ------------------------------------------------------------------ decoding what the Store holds
    def _set_aside(self, key: str, mod_revision: int, reason: str) -> None:
        """Log an invalid record once per version; the caller skips it."""
        if (key, mod_revision) in self._reported:
            return
        if len(self._reported) >= 4096:  # bounded: a flood of bad records cannot grow memory
            self._reported.clear()
        self._reported[(key, mod_revision)] = None
        log.warning("set aside an invalid IPAM record %s (revision %d): %s", key, mod_revision, reason)
        self.runtime.trace("ipam-invalid-record", key=key, error=reason)

    def _decode_block(self, kv: KeyValue) -> Block | None:
        """The block record ``kv``, or None (logged) when it is invalid or not the block its key names."""
        try:
            block = Block.from_bytes(kv.value)
            if block.key != kv.key:
                raise InvalidRecord("block", f"it describes {block.key}")
            pool = self._pools.get(block.pool)
            if pool is not None and (block.cidr.prefixlen != pool.block_prefixlen
                                     or not block.cidr.subnet_of(pool.cidr)):
                raise InvalidRecord("block", f"{block.cidr} is not a block of pool {pool.name} ({pool.cidr})")
        except (InvalidRecord, ValueError) as exc:  # ValueError: a key parse_block_key cannot read
            self._set_aside(kv.key, kv.mod_revision, str(exc))
            return None
        return block

    def decode_handle(self, kv: KeyValue) -> Handle | None:
        """The handle record ``kv``, or None (logged) when it is invalid or not the handle its key names."""
        try:
            record = Handle.from_bytes(kv.value)
            if record.key != kv.key:
                raise InvalidRecord("handle", f"it describes {record.key}")
        except InvalidRecord as exc:
            self._set_aside(kv.key, kv.mod_revision, str(exc))
            return None
        return record

    async def _handle_record(self, handle: str) -> tuple[Handle, int] | None:
        """The Store's record of ``handle`` with its mod_revision; None if absent; ``CorruptRecord`` if invalid."""
        key = handle_key(handle)
        kv = await self.store.get(key)
        if kv is None:
            return None
        record = self.decode_handle(kv)
        if record is None:
            raise CorruptRecord(key, "the handle record is invalid (set aside)")
        return record, kv.mod_revision

    # ------------------------------------------------------------------ state
    async def load(self) -> None:
        """Read the pools and this node's blocks (on start, or after losing track)."""
        await self.refresh_pools()
        found = await self.store.range(BLOCKS)
        self._blocks = {}
        for kv in found.kvs:
            block = self._decode_block(kv)
            if block is None:
                self._foreign.add(kv.key)  # never ours to use, nor to claim
            elif block.node == self.node:
                self._blocks[kv.key] = _Cached(block, kv.mod_revision)
        self._publish()

    async def refresh_pools(self) -> dict[str, Pool]:
        found = await self.store.range(POOLS)
        pools: dict[str, Pool] = {}
        invalid: dict[str, str] = {}
        for kv in found.kvs:
            name = kv.key.removeprefix(POOLS)
            try:
                pool = Pool.from_bytes(kv.value)
                if pool.key != kv.key:
                    raise InvalidRecord("pool", f"it describes pool {pool.name}")
            except InvalidRecord as exc:
                self._set_aside(kv.key, kv.mod_revision, str(exc))
                invalid[name] = str(exc)
                continue
            pools[pool.name] = pool
        self._pools, self._invalid_pools = pools, invalid
        for pool in pools.values():
            self.metrics.set(IPAM_IPPOOL_SIZE, pool.capacity(), pool=pool.name)
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
            if missing[0] in self._invalid_pools:
                raise CorruptRecord(f"{POOLS}{missing[0]}", self._invalid_pools[missing[0]])
            raise UnknownPool(missing[0])
        return [self._pools[name] for name in wanted]

    # ------------------------------------------------------------------ allocate
    async def allocate(self, container_id: str, ifname: str, *, pools: Sequence[str] = (), pod: PodRef = NO_POD,
                       network: str = "") -> Allocation:
        """The address of (container, interface): the one it already has, or a new one.

        Requests of one node are served one batch at a time: whoever holds the lock takes
        every request waiting (up to ``max_batch``) and commits them together when its
        blocks have room, so a burst of pods costs one transaction per batch, not per pod.
        """
        started = self.runtime.now()
        request = _Request(container_id, ifname, tuple(pools), pod, network)
        self._waiting.append(request)
        try:
            while not request.done:
                async with self._lock:
                    if request.done:
                        break
                    batch = self._waiting[: self.max_batch]
                    del self._waiting[: len(batch)]
                    if not batch:  # with the lock held, an unserved request must be waiting: never spin
                        raise RuntimeError(f"IPAM lost the request of {request.handle}")
                    try:
                        await self._serve(batch)
                    finally:
                        self._publish()  # once per batch, by whoever served it
        finally:
            if not request.done:  # our caller gave up: nobody is to allocate for us any more
                request.cancelled = True
                if request in self._waiting:
                    self._waiting.remove(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        self.metrics.observe(IPAM_ALLOCATION_SECONDS, self.runtime.now() - started, node=self.node)
        return request.result

    def _publish(self) -> None:
        """Set this node's gauges of every pool from the cache (what its blocks hold, borrowers' included).

        Pools in sorted order, so that a sim run records its series in one order; a pool
        published before and now gone (deleted, or its last block lost) is set to 0 once.
        """
        in_use = dict.fromkeys(self._pools, 0)
        blocks = dict.fromkeys(self._pools, 0)
        for cached in self._blocks.values():
            name = cached.block.pool
            in_use[name] = in_use.get(name, 0) + len(cached.block.allocations)
            blocks[name] = blocks.get(name, 0) + 1
        for name in self._published:
            in_use.setdefault(name, 0)
            blocks.setdefault(name, 0)
        for name in sorted(in_use):
            self.metrics.set(IPAM_ALLOCATIONS_IN_USE, in_use[name], pool=name, node=self.node)
            self.metrics.set(IPAM_BLOCKS, blocks[name], pool=name, node=self.node)
        self._published = {name: None for name in sorted(in_use) if name in self._pools or blocks[name]}

    async def _serve(self, batch: list[_Request]) -> None:
        """Serve every live request of ``batch``; each gets its own result or error, never another's."""

        def live() -> list[_Request]:
            return [r for r in batch if not r.done and not r.cancelled]

        try:
            try:
                for attempt in range(4):
                    pending = live()
                    if len(pending) < 2:
                        break
                    outcome = await self._commit_batch(pending)
                    if outcome == "done":
                        break
                    if outcome == "conflict" and attempt > 0:
                        # Guessing keeps hitting other nodes' blocks: read which blocks are taken.
                        await self._learn_claimed(pending[0].pools)
                for request in live():
                    try:
                        request.result = await self._allocate_single(request)
                    except (IpamError, StoreError) as exc:
                        if isinstance(exc, StoreUnavailable):
                            raise  # etcd is out of reach: the others would each wait a deadline in turn
                        request.error = exc
                    request.done = True
            except StoreUnavailable as exc:
                for request in live():
                    request.error, request.done = exc, True
        finally:
            # Cancelled half way (our own caller gave up): the live others go back to the head of the queue.
            self._waiting[:0] = live()

    async def _learn_claimed(self, wanted: Sequence[str]) -> None:
        try:
            candidates = self._candidates(wanted)
        except IpamError:
            return  # the one-by-one path reports it to each request
        for pool in candidates:
            for kv in (await self.store.range(f"{BLOCKS}{pool.name}/")).kvs:
                self._remember(kv.key, kv)

    async def _commit_batch(self, batch: list[_Request]) -> str:
        """Allocate as many of ``batch`` as fit in one transaction.

        Returns "conflict" (a race was lost; the blocks involved were re-read), "partial"
        (some were allocated, room ran out) or "done" (all allocated, or batching does not
        apply: mixed networks, repeated ADDs, fewer than two fit).
        """
        if len({r.pools for r in batch}) != 1 or len({r.handle for r in batch}) != len(batch) \
                or any(self._find_cached(r.handle) for r in batch):
            return "done"  # mixed networks or repeated ADDs: the one-by-one path handles them
        try:
            pools = self._candidates(batch[0].pools)
        except (UnknownPool, CorruptRecord):
            return "done"  # the one-by-one path gives each request its own error
        names = {pool.name for pool in pools}
        now = self.runtime.wall_time()
        touched: dict[str, tuple[int, Block]] = {}  # block key -> (mod_revision to compare, new content)
        planned: list[tuple[_Request, Block, int]] = []

        def fill(block: Block, mod_revision: int) -> None:
            usable = self._pools[block.pool].usable_in_block(block.cidr)
            updated = None
            while len(planned) < len(batch):
                current = updated or block
                offset = current.free_offset(usable, now, self.cooldown)
                if offset is None:
                    break
                request = batch[len(planned)]
                updated = Block(current.pool, current.cidr, current.node,
                                {**current.allocations, offset: request.handle}, current.released)
                planned.append((request, updated, offset))
            if updated is not None:
                updated.forget_old_releases(now, self.cooldown)
                touched[block.key] = (mod_revision, updated)

        for cached in list(self._blocks.values()):
            if cached.block.pool in names:
                fill(cached.block, cached.mod_revision)
        # Not enough room: claim the next blocks in the same transaction (compare: they do not exist).
        while len(planned) < len(batch) and pools:
            cidr = self._next_block_guess(pools[0], also_taken=touched)
            if cidr is None:
                break
            fill(Block(pools[0].name, cidr, self.node), 0)
        if len(planned) < 2:
            return "done"
        records = [Handle(r.container_id, r.ifname, block.address(offset), block.pool, self.node, r.pod, r.network,
                          now) for r, block, offset in planned]
        self.stats.transactions += 1
        result = await self.store.txn(
            [Compare.mod_is(key, mod_revision) for key, (mod_revision, _) in touched.items()]
            + [Compare.missing(h.key) for h in records],
            [PutOp(key, updated.to_bytes()) for key, (_, updated) in touched.items()]
            + [PutOp(h.key, h.to_bytes()) for h in records],
            [GetOp(key) for key in touched],
        )
        if not result.succeeded:
            # Another node claimed a block we guessed, or wrote one we borrow from: learn the
            # blocks' current state and plan again. (A handle that exists means a repeated ADD;
            # the one-by-one path recognises it after three tries.)
            self.stats.conflicts += 1
            self.metrics.inc(IPAM_CAS_CONFLICTS, node=self.node)
            for index, key in enumerate(touched):  # the failure branch read each touched block
                self._remember(key, result.read(index).first())
            return "conflict"
        for key, (mod_revision, updated) in touched.items():
            self._blocks[key] = _Cached(updated, result.revision)
            self.stats.blocks_claimed += mod_revision == 0
        self.stats.batched += len(planned)
        for request, block, offset in planned:
            request.result = self._allocation(block, offset, request.handle)
            request.done = True
        return "partial" if len(planned) < len(batch) else "done"

    async def _allocate_single(self, request: _Request) -> Allocation:
        pools, handle = request.pools, request.handle
        if not self._pools or any(name not in self._pools for name in pools):
            await self.refresh_pools()
        candidates = self._candidates(pools)
        repeat = self._find_cached(handle)
        if repeat is not None:
            # Our block holds it, but a node that borrowed from our block holds its own
            # handles in it too: only a handle record naming this node makes it a repeat.
            known = await self._handle_record(handle)
            if known is not None and known[0].node != self.node:
                raise HeldElsewhere(handle, known[0].node, known[0].address, self.node)
            self.stats.fast_repeats += 1
            cached, offset = repeat
            return replace(self._allocation(cached.block, offset, handle), existing=True)
        # The record to write; address and pool are filled in by whichever block has room.
        template = Handle(request.container_id, request.ifname, IPv4Address(0), "", self.node, request.pod,
                          request.network, self.runtime.wall_time())
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
        if guess and candidates:
            first = candidates[0]
            cidr = self._next_block_guess(first)
            if cidr is not None:
                return await self._commit(Block(first.name, cidr, self.node), 0,
                                          first.usable_in_block(cidr)[0], handle, template)
        for pool in candidates:
            claimed = await self.store.range(f"{BLOCKS}{pool.name}/")
            taken = {kv.key: kv for kv in claimed.kvs}
            adopted = False
            for key, kv in taken.items():
                block = self._decode_block(kv)
                if block is None or block.node != self.node:
                    self._foreign.add(key)
                elif key not in self._blocks:  # ours but unknown to us: a restart raced a claim
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
                    block = self._decode_block(kv)
                    if block is None:
                        continue
                    offset = block.free_offset(pool.usable_in_block(block.cidr), now, self.cooldown)
                    if offset is not None:
                        self.stats.borrowed += 1
                        return await self._commit(block, kv.mod_revision, offset, handle, template)
        raise PoolExhausted([pool.name for pool in candidates])

    def _next_block_guess(self, pool: Pool, also_taken: Collection[str] = ()) -> IPv4Network | None:
        """The block after this node's last block of ``pool`` (or at its start offset), if usable.

        ``also_taken``: keys of blocks this node is about to claim (a batch claims several).
        """
        ours = [c.block.cidr for c in self._blocks.values() if c.block.pool == pool.name]
        ours += [parse_block_key(key)[1] for key in also_taken if parse_block_key(key)[0] == pool.name
                 and key not in self._blocks]
        first = int(pool.cidr.network_address)
        index = ((int(ours[-1].network_address) - first) // pool.block_size + 1) if ours else self._start
        for step in range(min(pool.block_count, 64)):  # skip blocks we know other nodes hold
            cidr = pool.block_at((index + step) % pool.block_count)
            key = block_key(pool.name, cidr)
            if key in self._blocks or key in also_taken:
                return None  # wrapped around to our own blocks: the pool is (nearly) full, read it
            if key not in self._foreign and pool.usable_in_block(cidr):
                return cidr
        return None

    def _unclaimed_block(self, pool: Pool, taken: Collection[str]) -> tuple[Block, int] | None:
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
        self.metrics.inc(IPAM_CAS_CONFLICTS, node=self.node)
        current_block, existing_handle = result.read(0).first(), result.read(1).first()
        self._remember(block.key, current_block)
        if existing_handle is not None:  # a repeated ADD whose allocation we did not have cached
            known = self.decode_handle(existing_handle)
            if known is None:
                raise CorruptRecord(existing_handle.key, "the handle record is invalid (set aside)")
            if known.node != self.node:
                raise HeldElsewhere(handle, known.node, known.address, self.node)
            owner_pool = self._pools.get(known.pool) or pool
            return Allocation(known.address, owner_pool, owner_pool.block_of(known.address), handle, existing=True)
        return None

    def _remember(self, key: str, kv: KeyValue | None) -> None:
        """Update our cache of ``key`` from what the Store just told us."""
        if kv is None:
            self._blocks.pop(key, None)
            return
        block = self._decode_block(kv)
        if block is not None and block.node == self.node:
            self._blocks[key] = _Cached(block, kv.mod_revision)
        else:
            self._blocks.pop(key, None)
            self._foreign.add(key)

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
        """The address (container, interface) holds according to the Store (not our cache), or None.

        ``HeldElsewhere`` when another node holds it; ``CorruptRecord`` when a record it needs is invalid.
        """
        handle = handle_id(container_id, ifname)
        located = await self._locate(handle, use_cache=False)
        if located is None or isinstance(located, _Stray):
            return None
        if isinstance(located, _Foreign):
            raise HeldElsewhere(handle, located.record.node, located.record.address, self.node)
        return self._allocation(located.block, located.offset, handle)

    # ------------------------------------------------------------------ release
    async def release(self, container_id: str, ifname: str, *, cool_down: bool = True) -> Allocation | None:
        """Free the address of (container, interface); None if it had none here (idempotent).

        Another node's allocation of the same (container, interface) is left alone (None).
        ``cool_down=False`` only for an address that was never plumbed (a failed ADD's undo):
        it may be handed out again at once. ``CorruptRecord`` when a record it needs is invalid.
        """
        handle = handle_id(container_id, ifname)
        async with self._lock:
            try:
                return await self._release_locked(handle, cool_down)
            finally:
                self._publish()

    async def _release_locked(self, handle: str, cool_down: bool) -> Allocation | None:
        for _ in range(self.max_attempts):
            located = await self._locate(handle, use_cache=True)
            if located is None:
                return None
            if isinstance(located, _Foreign):
                self.runtime.trace("ipam-release-foreign", handle=handle, node=located.record.node)
                return None
            if isinstance(located, _Stray):
                # The handle points at no allocation (its block was freed by gc):
                # remove the record alone, unless someone rewrote it meanwhile.
                key = handle_key(handle)
                await self.store.txn([Compare.mod_is(key, located.mod_revision)], [DeleteOp(key)])
                return None
            done = await self._free(located, handle, cool_down)
            if done is not None:
                return done
        raise TooMuchContention(f"gave up releasing {handle} after {self.max_attempts} conflicting attempts")

    async def _locate(self, handle: str, *, use_cache: bool) -> _Located | _Stray | _Foreign | None:
        """Find a handle's allocation: its record in the Store, then its block (ours cached, if allowed)."""
        found = await self._handle_record(handle)
        if found is None:
            # No record, yet one of our blocks holds the handle (a record deleted by hand): nobody
            # else claims the address, so it is freed as before (the compare: still no record).
            cached = self._find_cached(handle) if use_cache else None
            return _Located(cached[0].block, cached[0].mod_revision, cached[1], 0) if cached else None
        record, handle_revision = found
        if record.node != self.node:
            return _Foreign(record)
        if use_cache:
            cached = self._find_cached(handle)
            if cached is not None and cached[0].block.address(cached[1]) == record.address:
                return _Located(cached[0].block, cached[0].mod_revision, cached[1], handle_revision)
        pool = self._pools.get(record.pool) or (await self.refresh_pools()).get(record.pool)
        if pool is None:
            if record.pool in self._invalid_pools:
                raise CorruptRecord(f"{POOLS}{record.pool}", self._invalid_pools[record.pool])
            return _Stray(handle_revision)
        key = block_key(pool.name, pool.block_of(record.address))
        block_kv = await self.store.get(key)
        if block_kv is None:
            return _Stray(handle_revision)
        block = self._decode_block(block_kv)
        if block is None:
            raise CorruptRecord(key, "the block record is invalid (set aside)")
        offset = block.offset(record.address)
        if block.allocations.get(offset) != handle:
            return _Stray(handle_revision)
        return _Located(block, block_kv.mod_revision, offset, handle_revision)

    async def _free(self, located: _Located, handle: str, cool_down: bool = True) -> Allocation | None:
        block, mod_revision, offset = located.block, located.mod_revision, located.offset
        now = self.runtime.wall_time()
        allocations = {o: h for o, h in block.allocations.items() if o != offset}
        released = {o: t for o, t in block.released.items() if o != offset}
        if cool_down:
            released[offset] = now
        updated = Block(block.pool, block.cidr, block.node, allocations, released)
        updated.forget_old_releases(now, self.cooldown)
        self.stats.transactions += 1
        result = await self.store.txn(
            # The handle too: its record is the one we read (no release and re-ADD elsewhere since).
            [Compare.mod_is(block.key, mod_revision), Compare.mod_is(handle_key(handle), located.handle_revision)],
            [PutOp(block.key, updated.to_bytes()), DeleteOp(handle_key(handle))],
            [GetOp(block.key)],
        )
        if result.succeeded:
            if updated.node == self.node:
                self._blocks[block.key] = _Cached(updated, result.revision)
            return self._allocation(updated, offset, handle) if block.pool in self._pools else None
        self.stats.conflicts += 1
        self.metrics.inc(IPAM_CAS_CONFLICTS, node=self.node)
        self._remember(block.key, result.read(0).first())
        return None
