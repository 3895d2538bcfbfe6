"""Exclusive claims on keys by compare-and-swap, and a node that registers under a lease.

A claim is a key whose value names its owner. ``claim`` creates it only if it does
not exist (create_revision == 0); ``release`` deletes it only if the caller still
owns it (value == owner), so a late release can never free a key that someone else
has claimed since. The claims demo (sim/demo.py) is built on these two transactions;
IPAM is not: it claims blocks inside the transaction that commits a batch of
allocations (cni/ipam.py), with compares of its own.

``LeasedMembership`` keeps a node's lease alive; when the node dies the lease
expires and every key attached to it disappears in one revision. ``stay_registered``
is the loop the SLB and build agents run on it: join, keep alive, join again after a
lost lease or a failed join. It must not know which store or runtime is behind the ports.
"""

from __future__ import annotations

from collections.abc import Callable

from foundation.ports import Compare, DeleteOp, LeaseNotFound, PutOp, Runtime, Store, StoreError


async def claim(store: Store, key: str, owner: bytes, *, lease: int = 0) -> bool:
    """Create ``key`` with value ``owner`` unless it exists. True when we won."""
    result = await store.txn([Compare.missing(key)], [PutOp(key, owner, lease)])
    return result.succeeded


async def release(store: Store, key: str, owner: bytes) -> bool:
    """Delete ``key`` only while ``owner`` still holds it. True when it was ours."""
    result = await store.txn([Compare.value_is(key, owner)], [DeleteOp(key)])
    return result.succeeded


class LeasedMembership:
    """A node's lease plus its member key, kept alive at a third of the TTL."""

    def __init__(self, store: Store, runtime: Runtime, key: str, value: bytes, *, ttl: int) -> None:
        self.store = store
        self.runtime = runtime
        self.key = key
        self.value = value
        self.ttl = ttl
        self.lease_id = 0
        self.lost = runtime.event()  # set when the lease is gone (expired while we were away)

    async def join(self) -> int:
        lease = await self.store.grant(self.ttl)
        self.lease_id = lease.id
        await self.store.put(self.key, self.value, lease=lease.id)
        return lease.id

    async def keep_alive(self) -> None:
        """Refresh the lease until cancelled; a refresh that fails is retried until the TTL runs out."""
        interval = self.ttl / 3
        last_ok = self.runtime.now()
        while True:
            await self.runtime.sleep(interval)
            try:
                await self.store.keepalive(self.lease_id)
                last_ok = self.runtime.now()
            except LeaseNotFound:
                self.lost.set()
                return
            except StoreError:
                # etcd unreachable: keep trying while the lease may still be alive on the server.
                if self.runtime.now() - last_ok >= self.ttl:
                    self.lost.set()
                    return


async def stay_registered(store: Store, runtime: Runtime, key: str, value: bytes, *, ttl: int, retry: float,
                          on_store_error: Callable[[], None]) -> None:
    """Keep ``key`` = ``value`` under a live lease until cancelled; never returns.

    A join that fails (etcd away) calls ``on_store_error`` and is tried again after
    ``retry`` seconds; a lost lease (it expired while etcd was out of reach) is
    replaced by a new one: whoever waits on the key sees the member come back.
    """
    while True:
        member = LeasedMembership(store, runtime, key, value, ttl=ttl)
        try:
            await member.join()
        except StoreError:
            on_store_error()
            await runtime.sleep(retry)
            continue
        await member.keep_alive()  # returns when the lease is lost: join again
