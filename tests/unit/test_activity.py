"""Activity records and daily counts on the sim Store: one record and one count per change, in its transaction;
newest-first pages over one snapshot; counts equal to a recount; hostile records set aside."""

from __future__ import annotations

import json

import pytest

from control import activity as a
from control.auth import Principal
from control.members import Action, Resource
from foundation.ports import KeyValue, PutOp
from foundation.ports import control as port
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ALICE = Principal("alice", "user")
SHOP = Resource("app", "shop")
DAY0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class World:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def change(self, resource: Resource, action: Action, at: float, request_id: str, key: str = "/test/x") -> int:
        """A change (a put of ``key``) with its activity, in one transaction; its revision."""
        write = a.activity_ops(ALICE, action, resource, f"did {action}", at, request_id=request_id)
        result = self.run(self.store.txn([*write.compares], [PutOp(key, request_id.encode()), *write.ops]))
        assert result.succeeded
        return result.revision


def test_one_change_puts_its_record_and_bumps_its_day_count_in_the_same_revision():
    world = World()
    revision = world.change(SHOP, Action.APP_SCALE, DAY0 + 5, "req-1")
    (record,) = world.server._range(a.ACTIVITY, True).kvs
    assert record.mod_revision == revision
    assert json.loads(record.value) == {"id": "req-1", "at": DAY0 + 5, "who": "alice", "role": "user",
                                        "action": "app.scale", "kind": "app", "name": "shop", "result": "did app.scale"}
    (count,) = world.server._range(a.COUNTS, True).kvs
    assert count.key == "/platform/counts/2026-01-01/app/app.scale" and count.mod_revision == revision
    world.change(SHOP, Action.APP_SCALE, DAY0 + 6, "req-2")
    world.change(Resource("app", "other"), Action.APP_SCALE, DAY0 + 7, "req-3")
    world.change(SHOP, Action.APP_SCALE, DAY0 + 86_400, "req-4")  # the next day
    assert world.run(a.daily_counts(world.store)) == {("2026-01-01", "app", "app.scale"): 3,
                                                      ("2026-01-02", "app", "app.scale"): 1}
    assert world.run(a.daily_counts(world.store, "2026-01-02")) == {("2026-01-02", "app", "app.scale"): 1}
    again = world.run(a.recount(world.store))
    assert again.equal and again.records == 4


def test_a_request_id_reused_in_the_same_millisecond_fails_the_write_instead_of_overwriting():
    world = World()
    world.change(SHOP, Action.APP_SCALE, DAY0, "req-1")
    write = a.activity_ops(ALICE, Action.APP_SCALE, SHOP, "again", DAY0, request_id="req-1")
    before = world.server.revision
    assert not world.run(world.store.txn(write.compares, [PutOp("/test/x", b"2"), *write.ops])).succeeded
    assert world.server.revision == before and world.run(a.recount(world.store)).equal


@pytest.mark.parametrize("request_id,result", [("", "ok"), ("a b", "ok"), ("x" * 65, "ok"), ("ok", "x" * 201),
                                               ("ok", "line\nbreak"), (None, "ok")])
def test_bad_fields_are_invalid_arguments(request_id, result):
    with pytest.raises(port.InvalidArgument):
        a.activity_ops(ALICE, Action.APP_SCALE, SHOP, result, DAY0, request_id=request_id)


def test_pages_are_newest_first_and_one_snapshot():
    world = World()
    image = Resource("image", "grp/web")
    for i in range(7):
        world.change(image, Action.IMAGE_PUSH, DAY0 + i, f"r{i}")
    world.change(Resource("image", "grp/web2"), Action.IMAGE_PUSH, DAY0 + 9, "other")  # a sibling: not listed
    first = world.run(a.read_activity(world.store, image, page_size=3))
    assert [r.request_id for r in first.records] == ["r6", "r5", "r4"] and first.next_page_token
    world.change(image, Action.IMAGE_PUSH, DAY0 + 100, "late")  # after the first page: not in this listing
    seen = list(first.records)
    token = first.next_page_token
    while token:
        page = world.run(a.read_activity(world.store, image, page_size=3, page_token=token))
        assert page.revision == first.revision
        seen += page.records
        token = page.next_page_token
    assert [r.request_id for r in seen] == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    fresh = world.run(a.read_activity(world.store, image))
    assert fresh.records[0].request_id == "late" and fresh.next_page_token == ""
    with pytest.raises(port.InvalidArgument):  # a token of another resource's listing
        world.run(a.read_activity(world.store, Resource("app", "shop"), page_token=first.next_page_token))
    for bad in ("garbage", "x" * 2000, 7):
        with pytest.raises(port.InvalidArgument):
            world.run(a.read_activity(world.store, image, page_token=bad))
    with pytest.raises(port.InvalidArgument):
        world.run(a.read_activity(world.store, image, page_size=-1))


def test_a_compacted_snapshot_is_a_conflict():
    world = World()
    for i in range(3):
        world.change(SHOP, Action.APP_SCALE, DAY0 + i, f"r{i}")
    first = world.run(a.read_activity(world.store, SHOP, page_size=1))
    world.change(SHOP, Action.APP_SCALE, DAY0 + 9, "r9")
    world.run(world.store.compact(world.server.revision))
    with pytest.raises(port.Conflict):
        world.run(a.read_activity(world.store, SHOP, page_size=1, page_token=first.next_page_token))


@pytest.mark.parametrize("value", [b"", b"{}", b"[" * 100_000, b"\xff", b'{"id":1}',
                                   json.dumps({"id": "r0", "at": DAY0, "who": "alice", "role": "user",
                                               "action": "app.scale", "kind": "app", "name": "other",
                                               "result": "ok"}).encode()])
def test_a_hostile_record_is_skipped_by_pages_and_the_recount(value):
    world = World()
    world.change(SHOP, Action.APP_SCALE, DAY0 + 1, "good")
    key = f"{a.activity_prefix('app', 'shop')}{10**15 - 1 - round(DAY0 * 1000):015d}-r0"
    world.run(world.store.put(key, value))
    page = world.run(a.read_activity(world.store, SHOP))
    assert [r.request_id for r in page.records] == ["good"] and page.invalid == (key,)
    again = world.run(a.recount(world.store))
    assert again.invalid == (key,) and again.records == 1 and again.equal


def test_bad_count_keys_are_skipped():
    for key in ("/platform/counts/2026-1-1/app/app.scale", "/platform/counts/2026-01-01/db/app.scale",
                "/platform/counts/2026-01-01/app/scale"):
        with pytest.raises(a.InvalidActivity):
            a.decode_count(KeyValue(key, b"", 1, 1, 1))


def test_the_recount_reads_many_records_in_chunks():
    world = World()
    for i in range(a.READ_CHUNK * 2 + 5):
        world.change(Resource("app", f"app{i % 3}"), Action.VERSION_DEPLOY, DAY0 + i * 10, f"r{i}")
    again = world.run(a.recount(world.store))
    assert again.records == a.READ_CHUNK * 2 + 5 and again.equal
    assert again.counts == {("2026-01-01", "app", "version.deploy"): a.READ_CHUNK * 2 + 5}
