"""The Store port's conformance suite: the same test bodies against real etcd and the sim store.

Each body asserts etcd v3 behaviour an agent relies on: revisions, txn atomicity,
compare-and-swap, watch order and resume, compaction, leases, prefix delete and
typed errors. A difference between the adapters is a bug in one of them.
"""

from __future__ import annotations

import pytest

from foundation.ports import (
    CompactedError,
    Compare,
    DeleteOp,
    DeleteResult,
    GetOp,
    LeaseNotFound,
    PutOp,
    PutResult,
    RangeResult,
    StoreError,
    StoreUnavailable,
)


async def _next_events(watch, count, runtime, timeout=10.0):
    events = []

    async def collect():
        async for event in watch:
            events.append(event)
            if len(events) == count:
                return

    await runtime.wait_for(collect(), timeout)
    return events


def test_revision_grows_by_one_per_write_transaction(store_harness):
    async def body(h):
        s = h.store
        start = await s.revision()
        put = await s.put(h.key("a"), b"1")
        assert put.revision == start + 1
        txn = await s.txn([], [PutOp(h.key("b"), b"2"), PutOp(h.key("c"), b"3"), PutOp(h.key("d"), b"4")])
        assert txn.succeeded and txn.revision == start + 2
        kvs = (await s.range(h.prefix)).kvs
        assert [kv.mod_revision for kv in kvs] == [start + 1, start + 2, start + 2, start + 2]
        # Reads, failed compares with no failure ops, and deletes of nothing write nothing.
        await s.get(h.key("a"))
        failed = await s.txn([Compare.value_is(h.key("a"), b"other")], [PutOp(h.key("a"), b"x")])
        assert not failed.succeeded and failed.revision == start + 2
        gone = await s.delete(h.key("nothing-here"))
        assert gone.deleted == 0
        assert await s.revision() == start + 2
        # A prefix delete of three keys is one write.
        deleted = await s.delete(h.prefix, prefix=True)
        assert deleted.deleted == 4 and deleted.revision == start + 3
        assert await s.revision() == start + 3

    store_harness.run(body)


def test_key_metadata_versions_and_recreation(store_harness):
    async def body(h):
        s, k = h.store, h.key("k")
        first = await s.put(k, b"v1")
        second = await s.put(k, b"v2", prev_kv=True)
        kv = await s.get(k)
        assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (b"v2", 2, first.revision,
                                                                                 second.revision)
        assert second.prev is not None and second.prev.value == b"v1"
        assert (await s.put(k, b"v2b")).prev is None  # only when asked, as in etcd
        await s.put(k, b"v2")
        await s.delete(k)
        assert await s.get(k) is None
        again = await s.put(k, b"v3")
        kv = await s.get(k)
        assert (kv.version, kv.create_revision) == (1, again.revision)

    store_harness.run(body)


def test_range_is_sorted_bounded_and_limited(store_harness):
    async def body(h):
        s = h.store
        for name in ["b", "a", "c", "ab"]:
            await s.put(h.key(f"in/{name}"), name.encode())
        await s.put(h.key("in-sibling"), b"not under in/")
        result = await s.range(h.key("in/"))
        assert isinstance(result, RangeResult)
        assert [kv.key for kv in result.kvs] == [h.key(f"in/{n}") for n in ["a", "ab", "b", "c"]]
        assert result.revision == await s.revision()
        limited = await s.range(h.key("in/"), limit=2)
        assert [kv.value for kv in limited.kvs] == [b"a", b"ab"]

    store_harness.run(body)


def test_range_pages_with_start_after_at_one_revision(store_harness):
    """Paging a prefix: ``start_after`` continues after a key, ``revision`` reads the past."""
    async def body(h):
        s = h.store
        for name in ["a", "b", "c", "d", "e"]:
            await s.put(h.key(f"p/{name}"), name.encode())
        await s.put(h.key("p0"), b"a sibling, not under p/")
        first = await s.range(h.key("p/"), limit=2)
        assert [kv.value for kv in first.kvs] == [b"a", b"b"]
        snapshot = first.revision
        # Changes after the first page: a later page read at its revision does not see them.
        await s.put(h.key("p/c"), b"changed")
        await s.delete(h.key("p/d"))
        await s.put(h.key("p/bb"), b"new")
        second = await s.range(h.key("p/"), limit=2, start_after=first.kvs[-1].key, revision=snapshot)
        assert [kv.value for kv in second.kvs] == [b"c", b"d"] and second.revision == snapshot
        assert second.kvs[0].mod_revision < snapshot + 1
        third = await s.range(h.key("p/"), limit=2, start_after=second.kvs[-1].key, revision=snapshot)
        assert [kv.value for kv in third.kvs] == [b"e"]
        # Now: the changes are there; start_after outside the prefix or past its end.
        now = await s.range(h.key("p/"), start_after=h.key("p/b"))
        assert [kv.value for kv in now.kvs] == [b"new", b"changed", b"e"] and now.revision == await s.revision()
        assert (await s.range(h.key("p/"), start_after=h.key("a"))).kvs[0].value == b"a"
        assert (await s.range(h.key("p/"), start_after=h.key("p/z"))).kvs == ()
        # A compacted revision is a typed error; a future one an error.
        await s.compact(await s.revision())
        with pytest.raises(CompactedError):
            await s.range(h.key("p/"), revision=snapshot)
        with pytest.raises(StoreError):
            await s.range(h.key("p/"), revision=await s.revision() + 1000)

    store_harness.run(body)


def test_range_returns_a_prefix_larger_than_one_grpc_message(store_harness):
    """6 MiB under one prefix (gRPC's receive limit is 4 MiB): one complete, sorted answer."""
    async def body(h):
        s = h.store
        value = b"x" * (1 << 19)  # 512 KiB
        for i in range(12):
            await s.put(h.key(f"big/{i:02d}"), value + bytes([i]))
        got = await s.range(h.key("big/"))
        assert [kv.key for kv in got.kvs] == [h.key(f"big/{i:02d}") for i in range(12)]
        assert all(kv.value == value + bytes([i]) for i, kv in enumerate(got.kvs))
        assert got.revision == await s.revision()
        assert len((await s.range(h.key("big/"), limit=11)).kvs) == 11
        # Deleting all of it is one answer too: the deleted values come back only when asked for
        # (with them, etcd's answer would pass the limit after the keys were already gone).
        gone = await s.delete(h.key("big/"), prefix=True)
        assert (gone.deleted, gone.prev) == (12, ())
        assert (await s.range(h.key("big/"))).kvs == ()

    store_harness.run(body)


def test_txn_is_atomic_and_runs_exactly_one_branch(store_harness):
    async def body(h):
        s = h.store
        a, b, c = h.key("a"), h.key("b"), h.key("c")
        await s.put(a, b"1")
        ok = await s.txn(
            [Compare.value_is(a, b"1"), Compare(a, "version", "==", 1)],
            [PutOp(b, b"from-success"), PutOp(c, b"from-success"), GetOp(a)],
            [PutOp(b, b"from-failure")],
        )
        assert ok.succeeded
        assert isinstance(ok.responses[0], PutResult) and isinstance(ok.responses[2], RangeResult)
        assert ok.responses[2].kvs[0].value == b"1"
        kb, kc = await s.get(b), await s.get(c)
        assert kb.value == kc.value == b"from-success"
        assert kb.mod_revision == kc.mod_revision == ok.revision
        bad = await s.txn(
            [Compare.value_is(a, b"1"), Compare(a, "version", ">", 5)],
            [PutOp(b, b"never")],
            [DeleteOp(c), GetOp(b)],
        )
        assert not bad.succeeded
        assert isinstance(bad.responses[0], DeleteResult) and bad.responses[0].deleted == 1
        assert bad.responses[1].kvs[0].value == b"from-success"
        assert await s.get(c) is None
        # etcd refuses a txn that writes one key twice; nothing of it is applied.
        before = await s.revision()
        with pytest.raises(StoreError):
            await s.txn([], [PutOp(h.key("d"), b"1"), PutOp(h.key("d"), b"2")])
        assert await s.get(h.key("d")) is None and await s.revision() == before

    store_harness.run(body)


def test_compare_on_missing_key(store_harness):
    async def body(h):
        s, k = h.store, h.key("missing")
        # A value compare on a missing key is false whatever the operator (etcd semantics) ...
        for op in ("==", "!="):
            assert not (await s.txn([Compare(k, "value", op, b"x")], [PutOp(k, b"1")])).succeeded
        # ... the other targets see zeros.
        assert (await s.txn([Compare(k, "version", "==", 0), Compare(k, "mod", "==", 0)], [])).succeeded
        assert (await s.txn([Compare.missing(k)], [PutOp(k, b"created")])).succeeded
        assert not (await s.txn([Compare.missing(k)], [PutOp(k, b"again")])).succeeded
        assert (await s.get(k)).value == b"created"

    store_harness.run(body)


def test_cas_conflict_has_exactly_one_winner(store_harness):
    async def body(h):
        k = h.key("block")
        other = await h.new_client("other")
        await h.store.put(k, b"free")
        seen = (await h.store.get(k)).mod_revision
        seen_by_other = (await other.get(k)).mod_revision
        mine = await h.store.txn([Compare.mod_is(k, seen)], [PutOp(k, b"mine")], [GetOp(k)])
        theirs = await other.txn([Compare.mod_is(k, seen_by_other)], [PutOp(k, b"theirs")], [GetOp(k)])
        assert mine.succeeded and not theirs.succeeded
        assert theirs.responses[0].kvs[0].value == b"mine"
        assert (await h.store.get(k)).value == b"mine"

    store_harness.run(body)


def test_concurrent_claims_never_give_two_owners(store_harness):
    async def body(h):
        rt = h.runtime
        clients = [await h.new_client(f"c{i}") for i in range(8)]
        keys = [h.key(f"slot/{i}") for i in range(4)]

        async def contend(i, client):
            won = []
            for key in keys:
                result = await client.txn([Compare.missing(key)], [PutOp(key, f"c{i}".encode())])
                if result.succeeded:
                    won.append(key)
            return won

        tasks = [rt.spawn(contend(i, c), name=f"contender-{i}") for i, c in enumerate(clients)]
        winners = [await t.join() for t in tasks]
        all_won = sorted(k for won in winners for k in won)
        assert all_won == sorted(keys)  # every slot has exactly one winner
        for i, won in enumerate(winners):
            for key in won:
                assert (await h.store.get(key)).value == f"c{i}".encode()

    store_harness.run(body)


def test_watch_is_ordered_and_resumes_without_gap(store_harness):
    async def body(h):
        s = h.store
        start = await s.revision()
        async with s.watch(h.prefix, start_revision=start + 1) as watch:
            for i in range(10):
                await s.put(h.key(f"k{i % 3}"), str(i).encode())
            await s.delete(h.key("k0"))
            events = await _next_events(watch, 11, h.runtime)
        assert [e.revision for e in events] == list(range(start + 1, start + 12))
        assert [e.type for e in events] == ["put"] * 10 + ["delete"]
        assert events[3].kv.value == b"3" and events[3].kv.key == h.key("k0")
        assert events[-1].kv.key == h.key("k0")
        # Resume from the revision after the last one seen: nothing missed, nothing twice.
        last = events[-1].revision
        for i in range(5):
            await s.put(h.key("later"), str(i).encode())
        async with s.watch(h.prefix, start_revision=last + 1) as resumed:
            more = await _next_events(resumed, 5, h.runtime)
        assert [e.revision for e in more] == list(range(last + 1, last + 6))
        assert [e.kv.value for e in more] == [b"0", b"1", b"2", b"3", b"4"]

    store_harness.run(body)


def test_watch_sees_only_its_prefix_and_one_txn_shares_a_revision(store_harness):
    async def body(h):
        s = h.store
        async with s.watch(h.key("mine/")) as watch:
            await h.runtime.sleep(0.2)  # let a real watch register before writing
            await s.put(h.key("other/x"), b"no")
            txn = await s.txn([], [PutOp(h.key("mine/a"), b"1"), PutOp(h.key("mine/b"), b"2")])
            events = await _next_events(watch, 2, h.runtime)
        assert [e.kv.key for e in events] == [h.key("mine/a"), h.key("mine/b")]
        assert {e.revision for e in events} == {txn.revision}

    store_harness.run(body)


def test_watch_from_compacted_revision_raises_typed_error(store_harness):
    async def body(h):
        s = h.store
        first = await s.put(h.key("c"), b"1")
        await s.put(h.key("c"), b"2")
        third = await s.put(h.key("c"), b"3")
        await s.compact(third.revision)
        with pytest.raises(CompactedError) as err:
            async with s.watch(h.prefix, start_revision=first.revision) as watch:
                await _next_events(watch, 1, h.runtime)
        assert err.value.compact_revision == third.revision
        assert err.value.requested_revision == first.revision
        # The compaction revision itself is still watchable.
        async with s.watch(h.prefix, start_revision=third.revision) as watch:
            events = await _next_events(watch, 1, h.runtime)
        assert events[0].kv.value == b"3" and events[0].revision == third.revision

    store_harness.run(body)


def test_lease_expiry_deletes_keys_and_emits_delete_events(store_harness):
    async def body(h):
        s, rt = h.store, h.runtime
        lease = await s.grant(2)
        assert lease.ttl >= 2
        await s.put(h.key("b"), b"2", lease=lease.id)
        await s.put(h.key("a"), b"1", lease=lease.id)
        await s.put(h.key("plain"), b"stays")
        assert (await s.get(h.key("a"))).lease == lease.id
        after = await s.revision()
        async with s.watch(h.prefix, start_revision=after + 1) as watch:
            started = rt.now()
            events = await _next_events(watch, 2, rt, timeout=lease.ttl + 10)
            waited = rt.now() - started
        assert waited >= lease.ttl - 1.0  # not before the TTL ...
        assert [e.type for e in events] == ["delete", "delete"]
        assert [e.kv.key for e in events] == [h.key("a"), h.key("b")]  # etcd deletes a lease's keys in key order
        assert events[0].revision == events[1].revision  # ... and all of its keys in one revision
        assert await s.get(h.key("a")) is None and (await s.get(h.key("plain"))).value == b"stays"
        with pytest.raises(LeaseNotFound):
            await s.keepalive(lease.id)

    store_harness.run(body)


def test_keepalive_holds_a_lease_and_revoke_deletes_its_keys(store_harness):
    async def body(h):
        s, rt = h.store, h.runtime
        lease = await s.grant(2)
        await s.put(h.key("held"), b"1", lease=lease.id)
        for _ in range(8):  # 4 s, twice the TTL
            await rt.sleep(0.5)
            assert await s.keepalive(lease.id) >= 1
        assert (await s.get(h.key("held"))).value == b"1"
        await s.revoke(lease.id)
        assert await s.get(h.key("held")) is None
        with pytest.raises(LeaseNotFound):
            await s.revoke(lease.id)
        with pytest.raises(LeaseNotFound):
            await s.put(h.key("orphan"), b"x", lease=lease.id)
        assert await s.get(h.key("orphan")) is None

    store_harness.run(body)


def test_prefix_delete_removes_exactly_the_prefix(store_harness):
    async def body(h):
        s = h.store
        for key in ["dir/a", "dir/b/c", "dir/b/d", "dirt", "other"]:
            await s.put(h.key(key), b"x")
        deleted = await s.delete(h.key("dir/"), prefix=True)
        assert (deleted.deleted, deleted.prev) == (3, ())  # the deleted values only when asked for
        left = [kv.key for kv in (await s.range(h.prefix)).kvs]
        assert left == [h.key("dirt"), h.key("other")]
        await s.put(h.key("dir/e"), b"y")
        asked = await s.delete(h.key("dir/"), prefix=True, prev_kv=True)
        assert [(kv.key, kv.value) for kv in asked.prev] == [(h.key("dir/e"), b"y")]
        in_txn = await s.txn([], [DeleteOp(h.key("dirt"), prev_kv=True), DeleteOp(h.key("other"))])
        assert [[kv.value for kv in r.prev] for r in in_txn.responses] == [[b"x"], []]

    store_harness.run(body)


def test_unreachable_store_raises_typed_error_naming_endpoint_in_bounded_time(store_harness):
    async def body(h):
        s, rt = h.store, h.runtime
        await s.put(h.key("before"), b"1")
        await h.cut_off()
        try:
            started = rt.now()
            with pytest.raises(StoreUnavailable) as err:
                await s.put(h.key("during"), b"lost?")
            assert rt.now() - started <= h.timeout + 2.0
            assert err.value.endpoint == s.endpoint
            assert s.endpoint in str(err.value)
        finally:
            await h.heal()
        assert (await s.get(h.key("before"))).value == b"1"
        await s.put(h.key("after"), b"2")
        assert (await s.get(h.key("after"))).value == b"2"

    store_harness.run(body)


def test_watch_from_a_future_revision_skips_what_comes_before_it(store_harness):
    async def body(h):
        s = h.store
        now = await s.revision()
        async with s.watch(h.prefix, start_revision=now + 3) as watch:
            for i in range(4):
                await s.put(h.key(f"k{i}"), b"x")
            events = await _next_events(watch, 2, h.runtime)
        assert [e.revision for e in events] == [now + 3, now + 4]

    store_harness.run(body)


def test_closing_a_watch_from_another_task_ends_the_readers_iteration(store_harness):
    async def body(h):
        s, rt = h.store, h.runtime
        watch = s.watch(h.prefix)
        await watch.__aenter__()

        async def reader():
            async for _ in watch:
                pass
            return "ended"

        task = rt.spawn(reader(), name="reader")
        await rt.sleep(0.2)
        await watch.close()
        assert await rt.wait_for(task.join(), 5) == "ended"

    store_harness.run(body)


def test_every_result_of_a_txn_carries_its_revision(store_harness):
    async def body(h):
        s = h.store
        result = await s.txn([], [PutOp(h.key("a"), b"1"), GetOp(h.key("a")), DeleteOp(h.key("nothing"))])
        assert [r.revision for r in result.responses] == [result.revision] * 3
        assert result.responses[1].kvs[0].value == b"1"  # a read sees the txn's own earlier write

    store_harness.run(body)


def test_duplicate_keys_in_the_branch_not_taken_are_refused_too(store_harness):
    async def body(h):
        before = await h.store.revision()
        with pytest.raises(StoreError):
            await h.store.txn([], [PutOp(h.key("ok"), b"1")], [PutOp(h.key("d"), b"1"), PutOp(h.key("d"), b"2")])
        assert await h.store.get(h.key("ok")) is None and await h.store.revision() == before

    store_harness.run(body)


def test_a_server_outage_does_not_expire_leases_it_gives_them_a_full_ttl(store_harness):
    async def body(h):
        s, rt = h.store, h.runtime
        lease = await s.grant(3)
        await s.put(h.key("member"), b"up", lease=lease.id)
        await h.outage(True)
        await rt.sleep(6)  # twice the TTL with nobody able to keep the lease alive
        await h.outage(False)
        kv = None
        for _ in range(40):  # the client reconnects within a few seconds
            try:
                kv = await s.get(h.key("member"))
                break
            except StoreUnavailable:
                await rt.sleep(0.25)
        assert kv is not None and kv.value == b"up"
        await rt.wait_for(_until_gone(s, h.key("member"), rt), lease.ttl + 10)  # not kept alive: now it expires

    store_harness.run(body)


async def _until_gone(store, key, runtime):
    while await store.get(key) is not None:
        await runtime.sleep(0.25)
