"""The sim Store's write cost: a write waits for its commit (etcd's raft round and WAL fsync), a read does not.

What `lab fit` sets from the lab's timed gets and puts (costs.store.latency, commit_seconds):
a get takes the round trip, a put, delete, writing txn, lease grant or revoke the round trip
plus the commit, a txn of reads only the round trip; watchers see a write once it is committed;
an etcd-slow fault (a slow link) slows the round trip, not the members' commit; a write whose
answer comes after the deadline may have been applied, as in life, and one etcd loses
while committing is not."""

from __future__ import annotations

import pytest

from foundation.ports import Compare, DeleteOp, PutOp, StoreUnavailable
from foundation.ports.store import GetOp
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

LATENCY, COMMIT = 0.002, 0.006


def timed(rt: SimRuntime, request) -> float:
    async def run() -> float:
        started = rt.now()
        await request
        return rt.now() - started
    return rt.run_until_complete(run())


def test_a_write_takes_the_round_trip_plus_the_commit_and_a_read_the_round_trip() -> None:
    rt = SimRuntime(seed=1)
    store = MemoryStore(rt, trace=False).client("agent", latency=LATENCY, commit=COMMIT)
    assert timed(rt, store.put("/k", b"1")) == pytest.approx(LATENCY + COMMIT)
    assert timed(rt, store.get("/k")) == pytest.approx(LATENCY)
    assert timed(rt, store.range("/")) == pytest.approx(LATENCY)
    assert timed(rt, store.txn([Compare.mod_is("/k", 0)], [PutOp("/k", b"2")], [GetOp("/k")])) == \
        pytest.approx(LATENCY + COMMIT)  # it may write: it goes through raft
    assert timed(rt, store.txn([], [GetOp("/k")], [])) == pytest.approx(LATENCY)  # a read-only txn does not
    assert timed(rt, store.delete("/k")) == pytest.approx(LATENCY + COMMIT)
    assert timed(rt, store.txn([Compare.mod_is("/k", 99)], [], [DeleteOp("/k")])) == \
        pytest.approx(LATENCY + COMMIT)  # a write in either branch makes it a write
    lease = rt.run_until_complete(store.grant(10))
    assert rt.now() == pytest.approx(8 * LATENCY + 5 * COMMIT)  # the grant too: everything above, summed
    assert timed(rt, store.keepalive(lease.id)) == pytest.approx(LATENCY)  # the leader answers, no raft round
    assert timed(rt, store.revoke(lease.id)) == pytest.approx(LATENCY + COMMIT)
    rt.run_until_complete(store.put("/k", b"3"))
    assert timed(rt, store.compact(1)) == pytest.approx(LATENCY + COMMIT)


def test_watchers_see_a_write_when_it_is_committed_and_a_slow_link_slows_the_round_trip_only() -> None:
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt, trace=False)
    writer = server.client("writer", latency=LATENCY, commit=COMMIT)
    watcher = server.client("watcher", latency=LATENCY)

    async def seen_at() -> float:
        async with watcher.watch("/k") as events:
            rt.spawn(writer.put("/k", b"1"), name="write")
            async for _ in events:
                return rt.now()
        raise AssertionError("the watch ended")

    started = rt.now()
    # there (LATENCY/2) + commit, then the event travels to the watcher (LATENCY/2)
    assert rt.run_until_complete(seen_at()) - started == pytest.approx(LATENCY + COMMIT)
    writer.slow_down(10)
    assert timed(rt, writer.put("/k", b"2")) == pytest.approx(10 * LATENCY + COMMIT)


def test_a_write_past_the_deadline_commits_unanswered_unless_etcd_goes_down_first() -> None:
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt, trace=False)
    slow = server.client("slow", latency=LATENCY, commit=6.0, timeout=5.0)  # committed at 6.001 s, client gone at 5
    with pytest.raises(StoreUnavailable, match="deadline"):
        rt.run_until_complete(slow.put("/slow", b"1"))
    late = server.client("late", latency=0.01, commit=4.993, timeout=5.0)  # committed at 4.998 s, answer at 5.003
    with pytest.raises(StoreUnavailable, match="deadline"):
        rt.run_until_complete(late.put("/late", b"1"))
    reader = server.client("reader")
    rt.run_until_complete(rt.sleep(2.0))
    assert rt.run_until_complete(reader.get("/slow")).value == b"1"  # as ambiguous as in life
    assert rt.run_until_complete(reader.get("/late")).value == b"1"

    lost = server.client("lost", latency=LATENCY, commit=COMMIT)

    async def down_while_committing() -> None:
        await rt.sleep(LATENCY / 2 + COMMIT / 2)
        server.set_available(False)

    rt.spawn(down_while_committing(), name="etcd-down")
    with pytest.raises(StoreUnavailable, match="server down"):
        rt.run_until_complete(lost.put("/lost", b"1"))
    server.set_available(True)
    assert rt.run_until_complete(reader.get("/lost")) is None  # etcd went down before it committed
