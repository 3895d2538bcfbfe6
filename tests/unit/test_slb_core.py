"""slb-core's rules on the sim Store: groups, domains, who may change what, CAS, upstreams, status."""

from __future__ import annotations

import json

import pytest

from cni.pools import Pool
from control.auth import Principal
from control.slb_core import (
    GROUP_INDEX,
    AlreadyExists,
    Conflict,
    CorruptRecord,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SlbCore,
    meta_key,
)
from foundation.logic.slb_domain import Domain, DomainStatus, domain_key, status_key
from foundation.ports import PutOp, StoreUnavailable
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")


class World:
    """One sim runtime, one in-memory etcd, slb-core on a client of it."""

    def __init__(self, latency: float = 0.001) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.core = SlbCore(self.server.client("control", latency=latency), self.rt)

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def contents(self) -> dict[str, tuple[bytes, int]]:
        return {kv.key: (kv.value, kv.mod_revision) for kv in self.server._range("/", True).kvs}

    def snapshot(self):
        return self.server.revision, self.contents()

    def stored(self, group: str, name: str) -> Domain:
        return Domain.from_bytes(self.contents()[domain_key(group, name)][0])

    def fails(self, error: type[Exception], coro) -> Exception:
        """Run ``coro``, expect ``error``, and check that nothing at all was written."""
        before = self.snapshot()
        with pytest.raises(error) as caught:
            self.run(coro)
        assert self.snapshot() == before, "a refused call must write nothing"
        return caught.value


def web(**fields) -> dict:
    data = {"name": "shop.example.com", "group": "web", "locations": [{"path": "/"}]}
    data.update(fields)
    return data


def add_pool(world: World, name: str = "pods", cidr: str = "10.0.0.0/16", gateway: str = "10.0.255.254",
             exclude: tuple[str, ...] = ()) -> None:
    """Register a pod pool as cnictl does (the record of ``cni.pools``)."""
    pool = Pool.parse(name, cidr, 100, gateway, list(exclude))
    world.run(world.server.client("cnictl").put(pool.key, pool.to_bytes()))


@pytest.fixture
def w() -> World:
    world = World()
    world.run(world.core.create_group(ADMIN, "web", "public sites"))
    add_pool(world)  # 10.0.0.0/16: every upstream of these tests is a pod address
    return world


# ------------------------------------------------------------------ groups


def test_create_group_writes_meta_and_index_once():
    world = World()
    called_at = world.rt.wall_time()
    group = world.run(world.core.create_group(ADMIN, "web", "public sites"))
    keys = world.contents()
    meta = json.loads(keys[meta_key("web")][0])
    assert meta == {"name": "web", "description": "public sites", "created_by": "ops", "created_at": called_at}
    assert keys[f"{GROUP_INDEX}web"] == (b"", group.revision)
    assert group.revision == keys[meta_key("web")][1] == world.server.revision
    err = world.fails(AlreadyExists, world.core.create_group(ADMIN, "web", "again"))
    assert err.revision == group.revision


@pytest.mark.parametrize("who", [ALICE, DISCOVERY])
def test_only_admins_create_and_delete_groups(w, who):
    err = w.fails(PermissionDenied, w.core.create_group(who, "internal"))
    assert who.name in str(err) and "admin" in str(err)
    w.fails(PermissionDenied, w.core.delete_group(who, "web"))


@pytest.mark.parametrize(("name", "description", "field"), [
    ("Web", "", "name"), ("-web", "", "name"), ("a" * 64, "", "name"), ("web/x", "", "name"),
    ("ok", "x" * 257, "description"), ("ok", "line\nbreak", "description"),
])
def test_bad_group_fields_are_invalid_arguments_naming_the_field(name, description, field):
    world = World()
    err = world.fails(InvalidArgument, world.core.create_group(ADMIN, name, description))
    assert err.field == field and str(err).startswith(f"{field}: ")


def test_list_groups_is_sorted_and_reads_every_meta(w):
    for name in ("internal", "api"):
        w.run(w.core.create_group(ADMIN, name))
    groups = w.run(w.core.list_groups(ALICE))
    assert [g.name for g in groups] == ["api", "internal", "web"]
    assert groups[2].description == "public sites" and groups[2].created_by == "ops"
    assert w.run(w.core.get_group(BOB, "web")).revision == groups[2].revision


def test_delete_group_refuses_while_it_has_domains_then_removes_everything_of_it(w):
    w.run(w.core.create_group(ADMIN, "web2"))  # a prefix neighbour that must survive
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.server.client("agent").put(status_key("web", "nginx-1", "shop.example.com"), DomainStatus(3).to_bytes()))
    err = w.fails(FailedPrecondition, w.core.delete_group(ADMIN, "web"))
    assert "shop.example.com" in str(err)
    w.run(w.core.delete_domain(ALICE, "web", "shop.example.com"))
    revision = w.run(w.core.delete_group(ADMIN, "web"))
    assert revision == w.server.revision
    assert [k for k in w.contents() if "/web/" in k or k.endswith("/web")] == []  # meta, index, leftover status
    assert meta_key("web2") in w.contents()
    w.fails(NotFound, w.core.delete_group(ADMIN, "web"))
    w.fails(NotFound, w.core.put_domain(ADMIN, web()))


@pytest.mark.parametrize("offset", [i * 0.001 for i in range(12)])
def test_a_domain_created_while_its_group_is_deleted_is_never_orphaned(offset):
    """delete_group reads meta, then domains, then CASes the meta; a create in between moves the meta."""
    world = World()
    world.run(world.core.create_group(ADMIN, "web"))
    deleter = SlbCore(world.server.client("deleter", latency=0.004), world.rt)
    creator = SlbCore(world.server.client("creator", latency=0.001), world.rt)
    outcome = {}

    async def delete():
        try:
            outcome["delete"] = await deleter.delete_group(ADMIN, "web")
        except (FailedPrecondition, NotFound) as exc:
            outcome["delete"] = type(exc).__name__

    async def create():
        await world.rt.sleep(offset)
        try:
            outcome["create"] = (await creator.put_domain(ALICE, web())).revision
        except NotFound:
            outcome["create"] = "NotFound"

    async def both():
        tasks = [world.rt.spawn(delete(), name="delete"), world.rt.spawn(create(), name="create")]
        for task in tasks:
            await task.join()

    world.run(both())
    keys = world.contents()
    domain_there, group_there = domain_key("web", "shop.example.com") in keys, meta_key("web") in keys
    assert domain_there <= group_there, f"orphaned domain: {outcome}"
    assert (outcome["delete"] == "FailedPrecondition") == domain_there
    assert (outcome["create"] == "NotFound") == (not domain_there)


# ------------------------------------------------------------------ domains: validation


@pytest.mark.parametrize(("fields", "field"), [
    ({"name": "Shop.Example.com"}, "name"),
    ({"name": "shop_example.com"}, "name"),
    ({"name": "-shop.example.com"}, "name"),
    ({"name": "shop.example.com;"}, "name"),
    ({"group": "Web"}, "group"),
    ({"listen": 0}, "listen"),
    ({"listen": 70000}, "listen"),
    ({"locations": [{"path": "/", "set_headers": {"X-A": "a;b"}}]}, "locations.set_headers"),
    ({"locations": [{"path": "/", "set_headers": {"X-A": 'a"b'}}]}, "locations.set_headers"),
    ({"locations": [{"path": "/", "set_headers": {"X-A": "$host"}}]}, "locations.set_headers"),
    ({"locations": [{"path": "/", "set_headers": {"X A": "b"}}]}, "locations.set_headers"),
    ({"locations": [{"path": "/", "set_headers": {"X-A": "ok\n"}}]}, "locations.set_headers"),
    ({"name": "shop.example.com\n"}, "name"),
    ({"locations": [{"path": "/a b"}]}, "locations.path"),
    ({"locations": [{"path": "/", "read_timeout": 0}]}, "locations.read_timeout"),
    ({"locations": [{"path": "/"}, {"path": "/"}]}, "locations"),
    ({"settings": {"worker_processes": "4"}}, "settings"),
    ({"settings": {"client_max_body_size": "1g;"}}, "settings.client_max_body_size"),
    ({"upstreams": ["10.0.0.1"]}, "upstreams"),
    ({"upstreams": ["10.0.0.1:0"]}, "upstreams"),
    ({"owner": "Not An Owner"}, "owner"),
    ({"extra": 1}, "domain"),
])
def test_invalid_domains_are_refused_naming_the_field(w, fields, field):
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(**fields)))
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ")


def test_reads_validate_names_too(w):
    assert w.fails(InvalidArgument, w.core.get_domain(ALICE, "web", "x;y")).field == "name"
    assert w.fails(InvalidArgument, w.core.list_domains(ALICE, "WEB")).field == "group"
    assert w.fails(InvalidArgument, w.core.get_status(ALICE, "web", "../x")).field == "domain"
    assert w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "a b", [])).field == "domain"
    assert w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(), expected_revision=-1)).field == "expected_revision"


# ------------------------------------------------------------------ domains: create, read, replace


def test_admin_creates_a_domain_atomically_with_the_group_meta(w):
    meta_before = w.contents()[meta_key("web")]
    stored = w.run(w.core.put_domain(ADMIN, web(owner="alice", settings={"client_max_body_size": "10m"})))
    keys = w.contents()
    assert keys[domain_key("web", "shop.example.com")] == (stored.domain.to_bytes(), stored.revision)
    assert keys[meta_key("web")] == (meta_before[0], stored.revision)  # same value, moved in the same txn
    assert stored.domain.owner == "alice" and stored.domain.settings == (("client_max_body_size", "10m"),)
    got = w.run(w.core.get_domain(DISCOVERY, "web", "shop.example.com"))
    assert got == stored
    listed, revision = w.run(w.core.list_domains(BOB, "web"))
    assert listed == [stored] and revision == w.server.revision


def test_an_empty_owner_means_the_caller(w):
    assert w.run(w.core.put_domain(ADMIN, web())).domain.owner == "ops"
    assert w.run(w.core.put_domain(ALICE, web(name="a.example.com", owner=""))).domain.owner == "alice"


def test_missing_things_are_not_found(w):
    w.fails(NotFound, w.core.put_domain(ADMIN, web(group="nope")))
    w.fails(NotFound, w.core.get_domain(ALICE, "web", "nope.example.com"))
    w.fails(NotFound, w.core.list_domains(ALICE, "nope"))
    w.fails(NotFound, w.core.delete_domain(ADMIN, "web", "nope.example.com"))
    w.fails(NotFound, w.core.set_upstreams(DISCOVERY, "web", "nope.example.com", ["10.0.0.1:80"]))
    w.fails(NotFound, w.core.get_status(ALICE, "web", "nope.example.com"))
    w.fails(NotFound, w.core.get_group(ALICE, "nope"))


def test_domain_names_are_unique_per_group_not_globally(w):
    w.run(w.core.create_group(ADMIN, "internal"))
    a = w.run(w.core.put_domain(ALICE, web(), expected_revision=0))
    b = w.run(w.core.put_domain(BOB, web(group="internal"), expected_revision=0))
    assert (a.domain.owner, b.domain.owner) == ("alice", "bob")
    err = w.fails(AlreadyExists, w.core.put_domain(BOB, web(), expected_revision=0))
    assert err.revision == a.revision


def test_replacing_with_the_same_record_writes_nothing(w):
    stored = w.run(w.core.put_domain(ALICE, web()))
    before = w.snapshot()
    again = w.run(w.core.put_domain(ALICE, web(owner="alice")))
    assert again.revision == stored.revision and w.snapshot() == before


# ------------------------------------------------------------------ who may change what


def test_discovery_writes_nothing_but_upstreams(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.fails(PermissionDenied, w.core.put_domain(DISCOVERY, web(name="d.example.com")))
    w.fails(PermissionDenied, w.core.delete_domain(DISCOVERY, "web", "shop.example.com"))
    revision = w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.1:80"]))
    assert revision == w.server.revision


def test_a_user_creates_domains_only_for_itself_and_without_settings(w):
    err = w.fails(PermissionDenied, w.core.put_domain(ALICE, web(owner="bob")))
    assert "alice" in str(err) and "bob" in str(err)
    err = w.fails(PermissionDenied, w.core.put_domain(ALICE, web(settings={"client_max_body_size": "10m"})))
    assert "client_max_body_size" in str(err) and "admin" in str(err)


def test_a_user_changes_only_its_own_domains(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.fails(PermissionDenied, w.core.put_domain(BOB, web(listen=8080)))  # owner '' = bob ≠ stored owner alice
    w.fails(PermissionDenied, w.core.put_domain(BOB, web(owner="alice", listen=8080)))  # not bob's to write as alice
    w.fails(PermissionDenied, w.core.delete_domain(BOB, "web", "shop.example.com"))
    w.fails(PermissionDenied, w.core.set_upstreams(BOB, "web", "shop.example.com", ["10.0.0.1:80"]))
    w.fails(PermissionDenied, w.core.put_domain(ALICE, web(owner="bob")))  # cannot give it away either
    assert w.run(w.core.put_domain(ALICE, web(listen=8080))).domain.listen == 8080
    w.run(w.core.put_domain(ADMIN, web(owner="alice", listen=8080, upstreams_by="owner")))  # the admin allows it
    assert w.run(w.core.set_upstreams(ALICE, "web", "shop.example.com", ["10.0.0.9:80"])) == w.server.revision
    # An admin may take it over or give it to anyone.
    assert w.run(w.core.put_domain(ADMIN, web(owner="bob", listen=8080,
                                             upstreams=["10.0.0.9:80"]))).domain.owner == "bob"
    w.fails(PermissionDenied, w.core.delete_domain(ALICE, "web", "shop.example.com"))
    w.run(w.core.delete_domain(BOB, "web", "shop.example.com"))
    assert domain_key("web", "shop.example.com") not in w.contents()


def test_a_user_update_must_carry_the_admin_settings_unchanged(w):
    settings = {"client_max_body_size": "10m", "keepalive_timeout": "30s"}
    w.run(w.core.put_domain(ADMIN, web(owner="alice", settings=settings)))
    for changed in ({}, {"client_max_body_size": "10m"}, {**settings, "client_max_body_size": "1m"},
                    {**settings, "proxy_http_version": "1.1"}):
        err = w.fails(PermissionDenied, w.core.put_domain(ALICE, web(listen=8080, settings=changed)))
        assert "settings" in str(err)
    stored = w.run(w.core.put_domain(ALICE, web(listen=8080, settings=settings)))
    assert stored.domain.listen == 8080 and dict(stored.domain.settings) == settings
    assert w.run(w.core.put_domain(ADMIN, web(owner="alice", settings={}))).domain.settings == ()


# ------------------------------------------------------------------ optimistic concurrency


def test_expected_revision_guards_replace_and_delete(w):
    first = w.run(w.core.put_domain(ALICE, web(), expected_revision=0))
    second = w.run(w.core.put_domain(ALICE, web(listen=81), expected_revision=first.revision))
    assert second.revision > first.revision
    err = w.fails(Conflict, w.core.put_domain(ALICE, web(listen=82), expected_revision=first.revision))
    assert (err.expected, err.actual) == (first.revision, second.revision)
    err = w.fails(Conflict, w.core.delete_domain(ALICE, "web", "shop.example.com", expected_revision=first.revision))
    assert err.actual == second.revision
    w.run(w.core.delete_domain(ALICE, "web", "shop.example.com", expected_revision=second.revision))
    err = w.fails(Conflict, w.core.put_domain(ALICE, web(), expected_revision=second.revision))  # gone meanwhile
    assert err.actual == 0


def test_two_writers_with_the_same_expected_revision_one_wins(w):
    base = w.run(w.core.put_domain(ALICE, web()))
    results = {}

    async def writer(name: str, listen: int):
        core = SlbCore(w.server.client(name, latency=0.002), w.rt)
        try:
            results[name] = (await core.put_domain(ALICE, web(listen=listen), expected_revision=base.revision)).revision
        except Conflict as exc:
            results[name] = exc

    async def both():
        tasks = [w.rt.spawn(writer("one", 81), name="one"), w.rt.spawn(writer("two", 82), name="two")]
        for task in tasks:
            await task.join()

    w.run(both())
    winners = [r for r in results.values() if isinstance(r, int)]
    assert len(winners) == 1 and sum(isinstance(r, Conflict) for r in results.values()) == 1
    assert w.contents()[domain_key("web", "shop.example.com")][1] == winners[0]


# ------------------------------------------------------------------ upstreams


def test_set_upstreams_changes_only_the_upstreams(w):
    original = w.run(w.core.put_domain(ADMIN, web(
        owner="alice", listen=8080, settings={"proxy_http_version": "1.1"},
        locations=[{"path": "/", "read_timeout": 5, "set_headers": {"X-Env": "prod"}}, {"path": "/api"}],
        upstreams=["10.0.0.1:80"])))
    revision = w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com",
                                          ["10.0.0.3:80", "10.0.0.2:80", "10.0.0.3:80"]))
    stored = w.stored("web", "shop.example.com")
    assert [str(u) for u in stored.upstreams] == ["10.0.0.2:80", "10.0.0.3:80"]  # sorted, no duplicates
    assert stored.with_upstreams(()) == original.domain.with_upstreams(())
    assert revision == w.contents()[domain_key("web", "shop.example.com")][1] > original.revision
    before = w.snapshot()  # the same servers again: nothing is written, the same revision returns
    assert w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.2:80", "10.0.0.3:80"])) == revision
    assert w.snapshot() == before
    assert w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", [])) > revision
    assert w.stored("web", "shop.example.com").upstreams == ()


@pytest.mark.parametrize("servers", [["10.0.0.1"], ["host:80"], ["10.0.0.1:99999"], "10.0.0.1:80",
                                     [f"10.0.{i // 256}.{i % 256}:80" for i in range(4097)]])
def test_bad_upstreams_name_the_servers_field(w, servers):
    w.run(w.core.put_domain(ALICE, web()))
    err = w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", servers))
    assert err.field == "servers"


def test_set_upstreams_racing_a_user_update_loses_neither(w):
    """Read-modify-CAS: when the user's replace lands between the read and the write, discovery reads again."""
    w.run(w.core.put_domain(ALICE, web()))
    discovery = SlbCore(w.server.client("discovery", latency=0.010), w.rt)
    user = SlbCore(w.server.client("alice", latency=0.001), w.rt)
    before = w.server.revision

    async def both():
        up = w.rt.spawn(discovery.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.7:80"]), name="disc")
        await w.rt.sleep(0.006)  # discovery's read has happened, its CAS has not
        await user.put_domain(ALICE, web(listen=8080))
        return await up.join()

    revision = w.run(both())
    stored = w.stored("web", "shop.example.com")
    assert stored.listen == 8080 and [str(u) for u in stored.upstreams] == ["10.0.0.7:80"]
    assert revision == w.server.revision == before + 2  # the user's write, then discovery's retried write


# ------------------------------------------------------------------ status


def test_status_lists_each_host_for_one_domain(w):
    stored = w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.put_domain(ALICE, web(name="other.example.com")))
    agent = w.server.client("agents")

    async def report():
        await agent.put(status_key("web", "nginx-2", "shop.example.com"),
                        DomainStatus(stored.revision - 1, "nginx -t failed: x", stored.revision, 12.5).to_bytes())
        await agent.put(status_key("web", "nginx-1", "shop.example.com"),
                        DomainStatus(stored.revision, "", stored.revision, 12.0).to_bytes())
        await agent.put(status_key("web", "nginx-1", "other.example.com"), DomainStatus(1).to_bytes())
        await agent.put(status_key("web", "nginx-3", "shop.example.com"), b"{not json")

    w.run(report())
    status = w.run(w.core.get_status(DISCOVERY, "web", "shop.example.com"))
    assert status.revision == stored.revision
    assert [(h.host, h.applied_revision, h.wanted_revision, h.error, h.at) for h in status.hosts[:2]] == [
        ("nginx-1", stored.revision, stored.revision, "", 12.0),
        ("nginx-2", stored.revision - 1, stored.revision, "nginx -t failed: x", 12.5)]
    assert status.hosts[2].host == "nginx-3" and "unreadable" in status.hosts[2].error
    w.run(w.core.delete_domain(ALICE, "web", "shop.example.com"))
    after = w.run(w.core.get_status(ALICE, "web", "shop.example.com"))
    assert after.revision == 0 and len(after.hosts) == 3  # deleted; the hosts still report it


# ------------------------------------------------------------------ store trouble


def test_a_record_written_by_someone_else_that_does_not_parse_is_a_corrupt_record(w):
    key = domain_key("web", "bad.example.com")
    w.run(w.server.client("other").txn([], [PutOp(key, b'{"name": "bad.example.com"}')]))
    err = w.fails(CorruptRecord, w.core.get_domain(ALICE, "web", "bad.example.com"))
    assert err.key == key
    w.fails(CorruptRecord, w.core.put_domain(ALICE, web(name="bad.example.com")))  # cannot prove ownership
    assert w.run(w.core.put_domain(ADMIN, web(name="bad.example.com"))).domain.owner == "ops"  # admins may repair


def test_an_unreachable_store_is_store_unavailable_and_nothing_is_written(w):
    w.server.set_available(False)
    for call in (w.core.put_domain(ADMIN, web()), w.core.create_group(ADMIN, "api"),
                 w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", []), w.core.list_groups(ALICE)):
        w.fails(StoreUnavailable, call)


@pytest.mark.parametrize("server", ["127.0.0.1:9145", "0.0.0.0:80", "169.254.169.254:80", "224.0.0.1:80",
                                    "240.0.0.1:80"])
def test_upstreams_that_point_nginx_at_itself_or_nowhere_are_refused(w, server):
    # e.g. a user aiming its domain at the Nginx host's own lua admin endpoint or a local etcd
    w.run(w.core.put_domain(ALICE, web(owner="alice")))
    err = w.fails(InvalidArgument, w.core.set_upstreams(ALICE, "web", "shop.example.com", [server]))
    assert err.field == "servers" and "not a pod address" in str(err)
    err = w.fails(InvalidArgument, w.core.put_domain(ALICE, web(owner="alice", upstreams=[server])))
    assert err.field == "upstreams"


def test_a_domain_name_too_long_for_a_file_name_is_refused(w):
    long_name = ".".join(["a" * 60] * 4) + ".com"  # 247 characters: a DNS name, not a file name
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(name=long_name)))
    assert err.field == "name"


# ------------------------------------------------------------------ issue 9: upstreams only into pod pools


@pytest.mark.parametrize("server", ["192.168.7.10:2379", "10.1.0.5:2379", "10.0.255.254:80", "10.0.0.0:80",
                                    "10.0.255.255:80", "10.0.3.3:2379"])
def test_upstreams_outside_the_registered_pod_pools_are_refused_for_everyone(w, server):
    # etcd's client port on some host that is no pod; the pool's gateway, network and broadcast
    # addresses; an address the pool excludes (10.0.3.3, see below).
    add_pool(w, "other", "10.2.0.0/24", "10.2.0.1")
    w.run(w.server.client("cnictl").put("/ipam/pools/pods", Pool.parse(
        "pods", "10.0.0.0/16", 100, "10.0.255.254", ["10.0.3.3"]).to_bytes()))
    w.run(w.core.put_domain(ADMIN, web(owner="alice", upstreams_by="owner")))
    for who in (DISCOVERY, ADMIN, ALICE):
        err = w.fails(InvalidArgument, w.core.set_upstreams(who, "web", "shop.example.com", ["10.0.0.7:80", server]))
        assert err.field == "servers" and server in str(err) and "pod pool" in str(err)
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(owner="alice", upstreams=[server])))
    assert err.field == "upstreams" and server in str(err)
    assert w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.7:80", "10.2.0.9:80"])) > 0


def test_a_pool_registered_later_is_usable_at_once(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.9.0.5:80"]))
    add_pool(w, "late", "10.9.0.0/24", "10.9.0.1")
    w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.9.0.5:80"]))
    assert [str(u) for u in w.stored("web", "shop.example.com").upstreams] == ["10.9.0.5:80"]
    w.run(w.server.client("cnictl").delete("/ipam/pools/late"))
    w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.9.0.6:80"]))


def test_without_any_pool_no_upstream_is_accepted():
    world = World()
    world.run(world.core.create_group(ADMIN, "web"))
    world.run(world.core.put_domain(ADMIN, web()))
    err = world.fails(InvalidArgument, world.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.7:80"]))
    assert err.field == "servers"
    assert world.run(world.core.set_upstreams(DISCOVERY, "web", "shop.example.com", [])) > 0  # none is fine


def test_a_corrupt_pool_record_makes_its_addresses_unusable_not_the_service(w):
    cnictl = w.server.client("cnictl")
    w.run(cnictl.put("/ipam/pools/broken", b"[" * 100_000))
    w.run(cnictl.put("/ipam/pools/wide", b'{"name":"wide","cidr":"0.0.0.0/0","gateway":"0.0.0.1"}'))
    w.run(w.core.put_domain(ALICE, web()))
    w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["192.168.1.1:2379"]))
    assert w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.7:80"])) > 0


# ------------------------------------------------------------------ issue 9: who sets upstreams


def test_a_user_sets_upstreams_only_where_an_admin_allowed_the_owner(w):
    w.run(w.core.put_domain(ALICE, web()))
    err = w.fails(PermissionDenied, w.core.set_upstreams(ALICE, "web", "shop.example.com", ["10.0.0.7:80"]))
    assert "discovery" in str(err) and "upstreams_by" in str(err)
    # Not through PutDomain either: new upstreams, or allowing itself, are refused.
    err = w.fails(PermissionDenied, w.core.put_domain(ALICE, web(upstreams=["10.0.0.7:80"])))
    assert "discovery" in str(err)
    err = w.fails(PermissionDenied, w.core.put_domain(ALICE, web(upstreams_by="owner")))
    assert "upstreams_by" in str(err)
    w.fails(PermissionDenied, w.core.put_domain(ALICE, web(name="new.example.com", upstreams=["10.0.0.7:80"])))
    w.fails(PermissionDenied, w.core.put_domain(ALICE, web(name="new.example.com", upstreams_by="owner")))
    # Discovery's servers survive the owner's edits (sent back or left out).
    w.run(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", ["10.0.0.7:80"]))
    assert [str(u) for u in w.run(w.core.put_domain(ALICE, web(listen=8080))).domain.upstreams] == ["10.0.0.7:80"]
    w.run(w.core.put_domain(ALICE, web(listen=8081, upstreams=["10.0.0.7:80"])))
    assert [str(u) for u in w.stored("web", "shop.example.com").upstreams] == ["10.0.0.7:80"]
    # The admin lets the owner set them; the record keeps the rule, and Bob still may not.
    w.run(w.core.put_domain(ADMIN, web(owner="alice", listen=8081, upstreams_by="owner")))
    assert w.run(w.core.set_upstreams(ALICE, "web", "shop.example.com", ["10.0.0.8:80"])) == w.server.revision
    assert w.stored("web", "shop.example.com").upstreams_by == "owner"
    w.fails(PermissionDenied, w.core.set_upstreams(BOB, "web", "shop.example.com", ["10.0.0.9:80"]))
    w.run(w.core.put_domain(ALICE, web(listen=8081, upstreams_by="owner", upstreams=["10.0.0.9:80"])))
    assert [str(u) for u in w.stored("web", "shop.example.com").upstreams] == ["10.0.0.9:80"]


def test_upstreams_by_defaults_to_discovery_and_is_left_out_of_the_record(w):
    stored = w.run(w.core.put_domain(ADMIN, web()))
    raw = w.contents()[domain_key("web", "shop.example.com")][0]
    assert stored.domain.upstreams_by == "discovery" and b"upstreams_by" not in raw
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(upstreams_by="anyone")))
    assert err.field == "upstreams_by"


# ------------------------------------------------------------------ issue 9: ASCII digits only


@pytest.mark.parametrize("server", ["10.0.0.1:\u00b2", "10.0.0.1:\u0668\u0660", "10.0.0.1:\uff18\uff10",
                                    "\u0661\u0660.0.0.1:80", "10.0.0.1: 80", "10.0.0.1:+80", "10.0.0.1:80\n",
                                    "010.0.0.1:80", "10.0.0.1:0080000"])
def test_ports_and_addresses_are_ascii_digits_only(w, server):
    w.run(w.core.put_domain(ALICE, web()))
    err = w.fails(InvalidArgument, w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", [server]))
    assert err.field == "servers"
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(upstreams=[server])))
    assert err.field == "upstreams"


@pytest.mark.parametrize("value", ["\u0661\u0660m", "10\u00b2", "\uff11\uff10s"])
def test_numeric_settings_are_ascii_digits_only(w, value):
    err = w.fails(InvalidArgument, w.core.put_domain(ADMIN, web(settings={"client_max_body_size": value})))
    assert err.field == "settings.client_max_body_size"


# ------------------------------------------------------------------ issue 9: corrupt records


CORRUPT = {
    "deep-list": b"[" * 100_000,
    "deep-object": b'{"a":' * 100_000,
    "nested-field": json.dumps({"name": "bad.example.com", "group": "web", "owner": "alice",
                                "settings": json.loads('{"a":' * 50 + "1" + "}" * 50)}).encode(),
    "nested-headers": json.dumps({"name": "bad.example.com", "group": "web", "locations": [
        {"path": "/", "set_headers": {"X-A": json.loads('{"a":' * 50 + "1" + "}" * 50)}}]}).encode(),
    "huge-int": b'{"name":"bad.example.com","group":"web","listen":' + b"9" * 5000 + b"}",
    "big-int": b'{"name":"bad.example.com","group":"web","listen":' + b"9" * 4000 + b"}",
    "wrong-types": b'{"name":["bad"],"group":{"web":1},"listen":"80","upstreams":"10.0.0.1:80"}',
    "not-utf8": b'{"name":"\xff\xfe"}',
    "unicode-port": '{"name":"bad.example.com","group":"web","upstreams":["10.0.0.1:\u0668\u0660"]}'.encode(),
    "other-key": b'{"name":"other.example.com","group":"web"}',
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_domain_record_is_a_corrupt_record_and_lists_skip_it(w, kind):
    key = domain_key("web", "bad.example.com")
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.server.client("other").put(key, CORRUPT[kind]))
    err = w.fails(CorruptRecord, w.core.get_domain(ALICE, "web", "bad.example.com"))
    assert err.key == key and len(str(err)) < 1000
    listed, _ = w.run(w.core.list_domains(ALICE, "web"))
    assert [d.domain.name for d in listed] == ["shop.example.com"]
    w.fails(CorruptRecord, w.core.set_upstreams(DISCOVERY, "web", "bad.example.com", []))
    w.fails(CorruptRecord, w.core.delete_domain(ALICE, "web", "bad.example.com"))
    assert w.run(w.core.put_domain(ADMIN, web(name="bad.example.com"))).domain.owner == "ops"  # admins repair it


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"revision":' + b"9" * 5000 + b"}", b'{"revision":"\xd9\xa8"}',
                                 b'{"revision":true}', b'{"revision":1,"at":"x"}', b'{"revision":1,"error":[1]}',
                                 b'[1]'])
def test_a_corrupt_status_record_is_reported_as_unreadable(w, raw):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.server.client("agent").put(status_key("web", "nginx-1", "shop.example.com"), raw))
    status = w.run(w.core.get_status(ALICE, "web", "shop.example.com"))
    assert [(h.host, h.applied_revision) for h in status.hosts] == [("nginx-1", 0)]
    assert "unreadable" in status.hosts[0].error and len(status.hosts[0].error) < 1000


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"name":"web","created_at":' + b"9" * 5000 + b"}", b'[]',
                                 b'{"name":"web","description":{"a":1}}', b'{"name":"Bad Name"}'])
def test_a_corrupt_group_meta_is_a_corrupt_record(w, raw):
    w.run(w.server.client("other").put(meta_key("web"), raw))
    err = w.fails(CorruptRecord, w.core.get_group(ALICE, "web"))
    assert err.key == meta_key("web")
    w.fails(CorruptRecord, w.core.list_groups(ALICE))


# ------------------------------------------------------------------ traffic shares (issue 13, gray releases)

PLATFORM = Principal("platform", "platform")  # the release controller's service role (control.auth)
SHOP = ("web", "shop.example.com")
SHARES_KEY = "/slb/web/shares/shop.example.com"
TWO_VERSIONS = ["10.0.0.1:80 version=v1", "10.0.0.2:80 version=v1", "10.0.0.3:80 version=v2"]


def weights(w: World) -> dict[str, int]:
    return {u.address: u.weight for u in w.stored(*SHOP).upstreams}


@pytest.mark.parametrize("who", [PLATFORM, ADMIN])
def test_set_shares_writes_the_record_and_the_weights_in_one_transaction(w, who):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, TWO_VERSIONS))
    before = w.server.revision
    revision = w.run(w.core.set_shares(who, *SHOP, {"v1": 90, "v2": 10}))
    assert revision == w.server.revision == before + 1  # one transaction
    contents = w.contents()
    assert contents[SHARES_KEY] == (b'{"shares":{"v1":90,"v2":10}}', revision)
    assert contents[domain_key(*SHOP)][1] == revision
    # v1: 90 % over 2 servers (45 each), v2: 10 % on 1: 1000 for the largest, 10/45 of it for v2
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 222}
    assert w.run(w.core.get_shares(ALICE, *SHOP)) == {"v1": 90, "v2": 10}
    snapshot = w.snapshot()  # the same shares again: nothing written, the same revision
    assert w.run(w.core.set_shares(who, *SHOP, {"v2": 10, "v1": 90})) == revision
    assert w.snapshot() == snapshot


@pytest.mark.parametrize("who", [ALICE, DISCOVERY, Principal("platform", "user")])
def test_only_admins_and_the_platform_set_shares(w, who):
    w.run(w.core.put_domain(ALICE, web()))
    w.fails(PermissionDenied, w.core.set_shares(who, *SHOP, {"v1": 100}))


@pytest.mark.parametrize("shares", [{}, {"v1": 50}, {"v1": 50.5, "v2": 49.5}, {"V1": 100}, {"v1": True},
                                    {f"v{i}": 5 for i in range(20)}, [["v1", 100]]])
def test_invalid_shares_are_an_invalid_argument_naming_shares(w, shares):
    w.run(w.core.put_domain(ALICE, web()))
    err = w.fails(InvalidArgument, w.core.set_shares(ADMIN, *SHOP, shares))
    assert err.field == "shares"


def test_shares_of_a_missing_domain_are_not_found_and_none_until_set(w):
    w.fails(NotFound, w.core.set_shares(ADMIN, *SHOP, {"v1": 100}))
    w.run(w.core.put_domain(ALICE, web()))
    assert w.run(w.core.get_shares(ALICE, *SHOP)) is None
    with pytest.raises(InvalidArgument):
        w.run(w.core.get_shares(ALICE, "web", "../x"))


def test_set_upstreams_applies_the_shares_and_without_shares_keeps_weights_as_sent(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, TWO_VERSIONS))
    assert set(weights(w).values()) == {1}  # no shares record: as discovery sent them
    w.run(w.core.set_shares(PLATFORM, *SHOP, {"v1": 100, "v2": 0}))
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 0}
    # discovery pushes weight 1 everywhere; what lands is weighed by the shares (a new v2 pod gets 0 too)
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, [*TWO_VERSIONS, "10.0.0.4:80 version=v2"]))
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 0, "10.0.0.4:80": 0}
    before = w.snapshot()  # the same servers again: weighed the same, nothing written
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, [*TWO_VERSIONS, "10.0.0.4:80 version=v2"]))
    assert w.snapshot() == before
    w.run(w.core.set_shares(PLATFORM, *SHOP, {"v1": 0, "v2": 100}))
    assert weights(w) == {"10.0.0.1:80": 0, "10.0.0.2:80": 0, "10.0.0.3:80": 1000, "10.0.0.4:80": 1000}
    # every v2 pod gone: nobody left with a share, so every server gets weight 1 rather than none
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, TWO_VERSIONS[:2]))
    assert weights(w) == {"10.0.0.1:80": 1, "10.0.0.2:80": 1}


def test_set_upstreams_racing_set_shares_loses_neither(w):
    """discovery read the old shares; the shares change before its CAS: it reads again and weighs by the new."""
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.set_upstreams(DISCOVERY, *SHOP, TWO_VERSIONS))
    w.run(w.core.set_shares(PLATFORM, *SHOP, {"v1": 100, "v2": 0}))
    discovery = SlbCore(w.server.client("discovery", latency=0.010), w.rt)
    platform = SlbCore(w.server.client("platform", latency=0.001), w.rt)

    async def both():
        up = w.rt.spawn(discovery.set_upstreams(DISCOVERY, *SHOP, [*TWO_VERSIONS, "10.0.0.4:80 version=v2"]),
                        name="disc")
        await w.rt.sleep(0.006)  # discovery's read has happened, its CAS has not
        await platform.set_shares(PLATFORM, *SHOP, {"v1": 50, "v2": 50})
        return await up.join()

    w.run(both())
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 1000, "10.0.0.4:80": 1000}
    w.run(w.core.set_shares(PLATFORM, *SHOP, {"v1": 99, "v2": 1}))
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 10, "10.0.0.4:80": 10}


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"shares":{"v1":' + b"9" * 5000 + b"}}", b'{"shares":{"v1":99}}',
                                 b"\xff", b'{"shares":{"v1":true}}', b"null"])
def test_a_corrupt_shares_record_is_a_corrupt_record_and_set_shares_repairs_it(w, raw):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.server.client("other").put(SHARES_KEY, raw))
    err = w.fails(CorruptRecord, w.core.get_shares(ALICE, *SHOP))
    assert err.key == SHARES_KEY and len(str(err)) < 1000
    w.fails(CorruptRecord, w.core.set_upstreams(DISCOVERY, *SHOP, TWO_VERSIONS))
    w.run(w.core.set_shares(ADMIN, *SHOP, {"v1": 100}))
    assert w.run(w.core.get_shares(ALICE, *SHOP)) == {"v1": 100}


def test_deleting_a_domain_deletes_its_shares(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.set_shares(ADMIN, *SHOP, {"v1": 100}))
    w.run(w.core.delete_domain(ALICE, *SHOP))
    assert SHARES_KEY not in w.contents()
    w.run(w.core.put_domain(ALICE, web()))
    assert w.run(w.core.get_shares(ALICE, *SHOP)) is None


def test_put_domain_weighs_the_upstreams_it_writes_by_the_shares(w):
    w.run(w.core.put_domain(ALICE, web()))
    w.run(w.core.set_shares(PLATFORM, *SHOP, {"v1": 100, "v2": 0}))
    w.run(w.core.put_domain(ADMIN, web(owner="alice", upstreams=TWO_VERSIONS)))
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 0}
    revision = w.contents()[domain_key(*SHOP)][1]
    w.run(w.core.put_domain(ALICE, web(listen=8080)))  # the owner edits the domain: the weights stay
    assert weights(w) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 1000, "10.0.0.3:80": 0}
    assert w.stored(*SHOP).listen == 8080 and w.contents()[domain_key(*SHOP)][1] > revision
    w.run(w.server.client("other").put(SHARES_KEY, b"{"))
    w.fails(CorruptRecord, w.core.put_domain(ALICE, web(listen=8081)))
