"""The SLB agent's resync reads its group in pages, one snapshot (issue 9, item 4).

A big group (70 domains x 1,024 upstreams; the real etcd adapter's part of the review's
4 MB case is tests/conformance/test_store.py) is loaded by a fresh agent without any
read asking for the whole group; changes made while the resync reads are not lost
(the watch resumes right after the snapshot's revision).
"""

from __future__ import annotations

import dataclasses

from cni.pools import Pool
from foundation.logic.slb_domain import Domain, domains_prefix
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

GROUP = "public"
SERVERS = [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(1024)]


class CountingStore:
    """The agent's store, remembering every range read: (limit asked, keys answered)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.reads: list[tuple[str, int, int]] = []
        self.on_read = None  # called after each read of the domains (to change things between pages)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def range(self, prefix, **kwargs):
        result = await self.inner.range(prefix, **kwargs)
        self.reads.append((prefix, kwargs.get("limit", 0), len(result.kvs)))
        if self.on_read is not None and prefix == domains_prefix(GROUP):
            await self.on_read()
        return result


def test_a_fresh_agent_loads_a_big_group_in_pages_at_one_revision():
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt)
    admin = server.client("slb-core", latency=0.001)
    pool = Pool.parse("pods", "10.0.0.0/16", vlan=100, gateway="10.0.255.254")
    first = Domain.parse({"name": "big00.example.com", "group": GROUP, "owner": "alice", "upstreams": SERVERS})

    async def fill():
        await admin.put(pool.key, pool.to_bytes())
        for i in range(70):
            record = dataclasses.replace(first, name=f"big{i:02d}.example.com")
            await admin.put(record.key, record.to_bytes())

    rt.run_until_complete(fill())
    total = sum(len(kv.value) for kv in server._range(domains_prefix(GROUP), True).kvs)
    assert total > 1 << 20

    store = CountingStore(server.client("nginx-1", latency=0.001))
    changed = []

    async def change_between_pages():
        if not changed:  # once, after the first page: a deletion and a new domain the snapshot does not hold
            changed.append(True)
            await admin.delete(f"{domains_prefix(GROUP)}big69.example.com")
            late = dataclasses.replace(first, name="late.example.com", upstreams=first.upstreams[:1])
            await admin.put(late.key, late.to_bytes())

    store.on_read = change_between_pages
    proxy = SimProxy(rt, "nginx-1")
    agent = SlbAgent(store, proxy, rt, SlbAgentConfig(GROUP, "nginx-1", resync_page=16))

    async def main():
        task = rt.spawn(agent.run(), name="slb-agent")
        await rt.sleep(30)
        task.cancel()

    rt.run_until_complete(main(), limit=3600)
    domain_reads = [(limit, got) for prefix, limit, got in store.reads if prefix == domains_prefix(GROUP)]
    assert domain_reads and all(0 < limit <= 16 and got <= 16 for limit, got in domain_reads)
    assert len(domain_reads) >= 5  # 70 domains in pages of 16
    expected = {f"big{i:02d}.example.com" for i in range(69)} | {"late.example.com"}
    assert set(proxy.live) == expected  # the resync's snapshot, then the watch's changes
    assert all(len(proxy.serving(f"big{i:02d}.example.com")) == 1024 for i in range(69))
    assert agent.stats.resyncs == 1
