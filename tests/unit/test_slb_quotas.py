"""slb-core's quotas and paged lists on the sim Store (issue 9, item 4).

Quotas: domains per owner, upstreams per domain and record size, by the caller's role;
a refused write writes nothing. Pages: ListDomains / ListGroups in pages (AIP-158),
one snapshot per listing, bounded in count and bytes, with tokens that cannot be
aimed at another listing.
"""

from __future__ import annotations

import dataclasses

import pytest

from cni.pools import Pool
from control.auth import Principal
from control.slb_core import (
    OWNED,
    Conflict,
    InvalidArgument,
    Limits,
    NotFound,
    QuotaExceeded,
    Quotas,
    SlbCore,
    clip,
)
from foundation.logic.slb_domain import domain_key
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")
QUOTAS = Quotas(user=Limits(2, 2, 400), admin=Limits(3, 3, 4000))


class World:
    def __init__(self, quotas: Quotas = QUOTAS, page_bytes: int = 1 << 20) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.core = SlbCore(self.server.client("control", latency=0.001), self.rt, quotas=quotas,
                            page_bytes=page_bytes)
        self.run(self.core.create_group(ADMIN, "web"))
        self.run(self.core.create_group(ADMIN, "api"))
        pool = Pool.parse("pods", "10.0.0.0/16", 100, "10.0.255.254", [])
        self.run(self.server.client("cnictl").put(pool.key, pool.to_bytes()))

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def snapshot(self):
        return self.server.revision, {kv.key: kv.value for kv in self.server._range("/", True).kvs}

    def fails(self, error: type[Exception], coro) -> Exception:
        before = self.snapshot()
        with pytest.raises(error) as caught:
            self.run(coro)
        assert self.snapshot() == before, "a refused call must write nothing"
        return caught.value


def site(name: str, group: str = "web", **fields) -> dict:
    return {"name": name, "group": group, **fields}


@pytest.fixture
def w() -> World:
    return World()


# ------------------------------------------------------------------ quotas


def test_an_owner_holds_at_most_its_quota_of_domains_over_all_groups(w):
    w.run(w.core.put_domain(ALICE, site("a.example.com")))
    w.run(w.core.put_domain(ALICE, site("b.example.com", "api")))
    err = w.fails(QuotaExceeded, w.core.put_domain(ALICE, site("c.example.com")))
    assert err.quota == "domains_per_owner" and "alice already holds 2 domains" in str(err)
    assert "quota domains_per_owner exceeded" in str(err) and "user" in str(err)
    w.run(w.core.put_domain(BOB, site("c.example.com")))  # another owner's count
    # Replacing a domain one holds is not a new domain.
    w.run(w.core.put_domain(ALICE, site("a.example.com", listen=8080)))
    # Deleting one gives the room back.
    w.run(w.core.delete_domain(ALICE, "api", "b.example.com"))
    w.run(w.core.put_domain(ALICE, site("d.example.com")))
    held = sorted(kv.key for kv in w.server._range(OWNED, True).kvs)
    assert held == [f"{OWNED}alice/web/a.example.com", f"{OWNED}alice/web/d.example.com",
                    f"{OWNED}bob/web/c.example.com"]


def test_admins_have_their_own_limits_and_moving_a_domain_moves_its_count(w):
    w.run(w.core.put_domain(ALICE, site("a.example.com")))
    w.run(w.core.put_domain(ALICE, site("b.example.com")))
    w.run(w.core.put_domain(ADMIN, site("c.example.com", owner="alice")))  # admin limit: 3
    err = w.fails(QuotaExceeded, w.core.put_domain(ADMIN, site("d.example.com", owner="alice")))
    assert err.quota == "domains_per_owner" and "role admin" in str(err)
    w.run(w.core.put_domain(ADMIN, site("c.example.com", owner="bob")))  # given to bob
    assert {kv.key for kv in w.server._range(OWNED, True).kvs} == {
        f"{OWNED}alice/web/a.example.com", f"{OWNED}alice/web/b.example.com", f"{OWNED}bob/web/c.example.com"}
    w.fails(QuotaExceeded, w.core.put_domain(ALICE, site("d.example.com")))


def test_racing_creates_cannot_pass_the_domain_quota_together():
    world = World()
    world.run(world.core.put_domain(ALICE, site("a.example.com")))

    async def race():
        tasks = [world.rt.spawn(world.core.put_domain(ALICE, site(f"r{i}.example.com", group)), name=f"r{i}")
                 for i, group in enumerate(["web", "api", "web", "api"])]
        outcomes = []
        for task in tasks:
            try:
                outcomes.append(await task.join())
            except QuotaExceeded as exc:
                outcomes.append(exc)
        return outcomes

    outcomes = world.run(race())
    assert sum(not isinstance(o, QuotaExceeded) for o in outcomes) == 1
    assert len([kv for kv in world.server._range(f"{OWNED}alice/", True).kvs]) == 2
    names = [kv.key for kv in world.server._range("/slb/", True).kvs if "/domains/" in kv.key]
    assert len(names) == 2


def test_upstreams_per_domain_is_the_callers_quota(w):
    w.run(w.core.put_domain(ADMIN, site("a.example.com", owner="alice")))
    servers = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
    err = w.fails(QuotaExceeded, w.core.set_upstreams(DISCOVERY, "web", "a.example.com", servers))
    assert err.quota == "upstreams_per_domain" and "4 upstreams" in str(err) and "at most 3" in str(err)
    w.run(w.core.set_upstreams(DISCOVERY, "web", "a.example.com", servers[:3]))
    err = w.fails(QuotaExceeded, w.core.put_domain(ADMIN, site("b.example.com", upstreams=servers)))
    assert err.quota == "upstreams_per_domain"


def test_a_record_larger_than_the_quota_is_refused(w):
    headers = {f"x-h{i}": "v" * 30 for i in range(12)}  # ~500 bytes: over the user's 400
    err = w.fails(QuotaExceeded, w.core.put_domain(ALICE, site("a.example.com", locations=[
        {"path": "/", "set_headers": headers}])))
    assert err.quota == "record_bytes" and "may store at most 400" in str(err)
    w.run(w.core.put_domain(ADMIN, site("a.example.com", owner="alice", locations=[
        {"path": "/", "set_headers": headers}])))  # the admin's limit is higher


def test_limits_parse_from_the_server_option():
    base = Limits(100, 1024, 16384)
    assert Limits.parse("domains=5, record_bytes=10", base) == Limits(5, 1024, 10)
    assert Limits.parse("", base) == base
    for bad in ("domains=-1", "dom=1", "upstreams=x", "upstreams=٣", "domains"):
        with pytest.raises(ValueError, match="quota"):
            Limits.parse(bad, base)


# ------------------------------------------------------------------ pages


def _all_pages(world: World, group: str, page_size: int):
    pages, token = [], ""
    while True:
        page = world.run(world.core.list_domains_page(ALICE, group, page_size=page_size, page_token=token))
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def test_list_domains_pages_cover_the_group_once_in_order_at_one_revision():
    world = World(Quotas(user=Limits(0, 0, 0), admin=Limits(0, 0, 0)))
    names = [f"d{i:03d}.example.com" for i in range(25)]
    for name in names:
        world.run(world.core.put_domain(ALICE, site(name)))
    world.run(world.core.put_domain(ALICE, site("other.example.com", "api")))
    first = world.run(world.core.list_domains_page(ALICE, "web", page_size=10))
    assert [d.domain.name for d in first.domains] == names[:10] and first.next_page_token
    # Changes after the first page do not reach the later pages of this listing.
    world.run(world.core.delete_domain(ALICE, "web", names[15]))
    world.run(world.core.put_domain(ALICE, site("d010a.example.com")))
    rest, token = [], first.next_page_token
    while token:
        page = world.run(world.core.list_domains_page(ALICE, "web", page_size=10, page_token=token))
        assert page.revision == first.revision
        rest.extend(d.domain.name for d in page.domains)
        token = page.next_page_token
    assert rest == names[10:]
    # A new listing sees them.
    now = [d.domain.name for p in _all_pages(world, "web", 7) for d in p.domains]
    assert now == sorted([*names[:15], *names[16:], "d010a.example.com"])


def test_a_group_larger_than_a_grpc_message_is_listed_in_pages_under_the_byte_budget():
    world = World(Quotas(user=Limits(0, 0, 0), admin=Limits(0, 0, 0)), page_bytes=1 << 20)
    servers = [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(4096)]
    big = world.run(world.core.put_domain(ADMIN, site("big00.example.com", upstreams=servers))).domain
    writer = world.server.client("writer")
    for i in range(1, 70):  # the review's 70 domains x 4,096 upstreams: about 5.6 MB (written as slb-core would)
        record = dataclasses.replace(big, name=f"big{i:02d}.example.com")
        world.run(writer.put(record.key, record.to_bytes()))
    total = sum(len(kv.value) for kv in world.server._range("/slb/web/domains/", True).kvs)
    assert total > 4 << 20
    pages = _all_pages(world, "web", 1000)
    assert len(pages) > 4
    assert [d.domain.name for p in pages for d in p.domains] == [f"big{i:02d}.example.com" for i in range(70)]
    for page in pages:
        assert sum(len(world.server._range(domain_key("web", d.domain.name), False).kvs[0].value)
                   for d in page.domains) <= 1 << 20
        assert all(len(d.domain.upstreams) == 4096 for d in page.domains)


def test_page_tokens_and_sizes_are_checked(w):
    for i in range(3):
        w.run(w.core.put_domain(ADMIN, site(f"d{i}.example.com")))
    page = w.run(w.core.list_domains_page(ALICE, "web", page_size=1))
    assert len(page.domains) == 1 and page.next_page_token
    err = w.fails(InvalidArgument, w.core.list_domains_page(ALICE, "api", page_token=page.next_page_token))
    assert err.field == "page_token" and "listing of web, not api" in str(err)
    err = w.fails(InvalidArgument, w.core.list_domains_page(ALICE, "web", page_token="x" * 100_000))
    assert err.field == "page_token" and len(str(err)) < 300 and "(100000 bytes)" in str(err)
    groups = w.run(w.core.list_groups_page(ALICE, page_size=1))
    w.fails(InvalidArgument, w.core.list_domains_page(ALICE, "web", page_token=groups.next_page_token))
    assert w.fails(InvalidArgument, w.core.list_domains_page(ALICE, "web", page_size=-1)).field == "page_size"
    w.fails(NotFound, w.core.list_domains_page(ALICE, "nope"))
    big = w.run(w.core.list_domains_page(ALICE, "web", page_size=10**9))  # lowered to the maximum
    assert len(big.domains) == 3 and big.next_page_token == ""


def test_a_listing_whose_snapshot_was_compacted_must_start_again(w):
    for i in range(3):
        w.run(w.core.put_domain(ADMIN, site(f"d{i}.example.com")))
    page = w.run(w.core.list_domains_page(ALICE, "web", page_size=1))
    w.run(w.server.client("x").put("/other", b"1"))
    w.server.compact(w.server.revision)
    err = w.fails(Conflict, w.core.list_domains_page(ALICE, "web", page_size=1, page_token=page.next_page_token))
    assert "list again from the first page" in str(err)


def test_list_groups_pages(w):
    for i in range(5):
        w.run(w.core.create_group(ADMIN, f"g{i}"))
    names, token = [], ""
    while True:
        page = w.run(w.core.list_groups_page(BOB, page_size=2, page_token=token))
        assert len(page.groups) <= 2
        names.extend(g.name for g in page.groups)
        token = page.next_page_token
        if not token:
            break
    assert names == ["api", "g0", "g1", "g2", "g3", "g4", "web"]


def test_corrupt_records_are_skipped_by_pages(w):
    w.run(w.core.put_domain(ADMIN, site("a.example.com")))
    w.run(w.server.client("x").put(domain_key("web", "b.example.com"), b"[" * 10_000))
    w.run(w.core.put_domain(ADMIN, site("c.example.com")))
    page = w.run(w.core.list_domains_page(ALICE, "web"))
    assert [d.domain.name for d in page.domains] == ["a.example.com", "c.example.com"]


def test_clip_cuts_echoed_values():
    assert clip("short") == "short"
    assert clip("é" * 100) == "é" * 64 + "…(200 bytes)"
    assert clip(10**5000).startswith("<a int")
    assert len(clip(list(range(100_000)))) < 100
    w = World()
    w.run(w.server.client("x").put("/unused", b""))
    err = w.fails(InvalidArgument, w.core.put_domain(ALICE, site("a.example.com", owner="x" * 1_000_000)))
    assert len(str(err)) < 400
    err = w.fails(InvalidArgument, w.core.list_domains_page(ALICE, "web", page_size="9" * 100_000))
    assert len(str(err)) < 400


def test_writes_by_others_do_not_reach_the_store_through_the_quota_keys(w):
    # The index is slb-core's: a domain written straight into the store is nobody's count,
    # and deleting it through slb-core removes nothing else.
    w.run(w.server.client("x").put(domain_key("web", "raw.example.com"),
                                   b'{"name":"raw.example.com","group":"web","owner":"alice"}'))
    w.run(w.core.put_domain(ALICE, site("a.example.com")))
    w.run(w.core.put_domain(ALICE, site("b.example.com")))
    w.run(w.core.delete_domain(ALICE, "web", "raw.example.com"))
    assert len(w.server._range(f"{OWNED}alice/", True).kvs) == 2
