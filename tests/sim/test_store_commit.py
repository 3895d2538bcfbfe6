"""The sim Store's write cost: a write waits for its commit (etcd's raft round and WAL fsync), a read does not.

What `lab fit` sets from the lab's timed gets and puts (costs.store.latency, commit_seconds):
a get takes the round trip, a put, delete, writing txn, lease grant or revoke the round trip
plus the commit, a txn of reads only the round trip; watchers see a write once it is committed;
an etcd-slow fault (a slow link) slows the round trip, not the members' commit; and a write whose answer comes after the deadline may have
been applied, as in life."""

from __future__ import annotations

import pytest

from foundation.ports import Compare, PutOp, StoreUnavailable
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
    lease = rt.run_until_complete(store.grant(10))
    assert timed(rt, store.keepalive(lease.id)) == pytest.approx(LATENCY)  # the leader answers, no raft round
    assert timed(rt, store.revoke(lease.id)) == pytest.approx(LATENCY + COMMIT)


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


def test_a_commit_past_the_deadline_is_not_applied_and_one_ending_before_it_is_applied_but_unanswered() -> None:
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt, trace=False)
    never = server.client("never", latency=LATENCY, commit=6.0, timeout=5.0)
    with pytest.raises(StoreUnavailable, match="deadline"):
        rt.run_until_complete(never.put("/never", b"1"))
    late = server.client("late", latency=0.01, commit=4.993, timeout=5.0)  # committed at 4.998 s, answer at 5.003
    with pytest.raises(StoreUnavailable, match="deadline"):
        rt.run_until_complete(late.put("/late", b"1"))
    reader = server.client("reader")
    assert rt.run_until_complete(reader.get("/never")) is None
    assert rt.run_until_complete(reader.get("/late")).value == b"1"  # as ambiguous as in life
