"""The duplicate-address audit of a simulated Region: an observer of the Store's /ipam/ history.

It follows every write under ``/ipam/`` from revision 1 (the world feeds it the watch's
events) and keeps who owns each address, which pod holds which handles, pool use, and
every duplicate owner ever seen: the evidence of the ``no-duplicate-address`` check. It
is not part of the system under test: it must not write anything, and it must not know
the agents (only the record formats of ``cni.pools``).
"""

from __future__ import annotations

from cni.pools import BLOCKS, HANDLES, Block, Handle
from foundation.ports.store import WatchEvent


class Auditor:
    """Follows /ipam/ from revision 1: address owners, pool use, and every duplicate owner ever seen.

    Two witnesses of a duplicate: a handle record for an address another live handle
    still holds, and a block write that gives an offset to a new handle in the same
    revision that takes it from the old one (no release between).
    """

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}  # address -> handle id (live handle records)
        self.handle_address: dict[str, str] = {}
        self.handle_pod: dict[str, tuple[str, str]] = {}
        self.pod_handles: dict[tuple[str, str], int] = {}  # (namespace, pod) -> live handles
        self.blocks: dict[str, dict[int, str]] = {}
        self.block_pool: dict[str, str] = {}
        self.allocated: dict[str, int] = {}  # pool -> addresses allocated
        self.violations: list[str] = []
        self.killed: set[tuple[str, str]] = set()  # pods that died without CNI DEL (the world tells)
        self.leaks_gone: dict[str, str] = {}  # handle of a killed pod -> its address, once released

    def _count(self, pod: tuple[str, str], delta: int) -> None:
        n = self.pod_handles.get(pod, 0) + delta
        if n:
            self.pod_handles[pod] = n
        else:
            self.pod_handles.pop(pod, None)

    def on_event(self, event: WatchEvent) -> None:
        key = event.kv.key
        if key.startswith(HANDLES):
            handle = key.removeprefix(HANDLES)
            if event.type == "put":
                record = Handle.from_bytes(event.kv.value)
                address = str(record.address)
                holder = self.owner.get(address)
                if holder is not None and holder != handle:
                    self.violations.append(f"rev {event.revision}: {address} given to {handle} while {holder} "
                                           "still holds it")
                self.owner[address] = handle
                self.handle_address[handle] = address
                pod = (record.pod.namespace, record.pod.name)
                before = self.handle_pod.get(handle)
                if before != pod:
                    if before is not None:
                        self._count(before, -1)
                    self._count(pod, 1)
                self.handle_pod[handle] = pod
            else:
                released = self.handle_address.pop(handle, None)
                released_by = self.handle_pod.pop(handle, None)
                if released_by is not None:
                    self._count(released_by, -1)
                    if released_by in self.killed:
                        self.leaks_gone[handle] = released or "?"
                if released is not None and self.owner.get(released) == handle:
                    del self.owner[released]
        elif key.startswith(BLOCKS):
            old = self.blocks.get(key, {})
            if event.type == "put":
                block = Block.from_bytes(event.kv.value)
                new = block.allocations
                self.block_pool[key] = block.pool
                for offset, handle in new.items():
                    if old.get(offset) not in (None, handle):
                        self.violations.append(f"rev {event.revision}: {block.address(offset)} in {key} passed from "
                                               f"{old[offset]} to {handle} without a release")
                self.blocks[key] = dict(new)
            else:
                new = {}
                self.blocks.pop(key, None)
            pool = self.block_pool.get(key, "")
            self.allocated[pool] = self.allocated.get(pool, 0) + len(new) - len(old)
