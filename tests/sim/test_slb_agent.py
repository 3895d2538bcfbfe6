"""The SLB agent on sim adapters: in-place upstreams, batched reloads, bad domains set aside, restarts, outages."""

from __future__ import annotations

import json

import pytest

from cni.pools import Pool
from foundation.logic.slb_domain import Domain, DomainStatus, Upstream, domain_key, status_prefix
from foundation.logic.slb_traffic import VersionCounts, decode_traffic
from foundation.ports.proxy import SavedState
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

GROUP = "public"


def domain(name: str, *servers: str, **extra) -> Domain:
    return Domain.parse({"name": name, "group": GROUP, "owner": "shop", "upstreams": list(servers), **extra})


class World:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.admin = self.server.client("slb-core", latency=0.001)
        self.agent_store = self.server.client("nginx-1", latency=0.001)
        self.proxy = SimProxy(self.rt, "nginx-1")
        self.agent: SlbAgent | None = None
        self.task = None
        # Where every test's upstreams live (the gateway out of their way: it is no pod address).
        self.rt.run_until_complete(self.add_pool("pods", "10.0.0.0/16", gateway="10.0.255.254"))

    async def add_pool(self, name: str, cidr: str, gateway: str | None = None) -> int:
        pool = Pool.parse(name, cidr, vlan=100, gateway=gateway)
        return (await self.admin.put(pool.key, pool.to_bytes())).revision

    def start_agent(self, **config) -> SlbAgent:
        self.agent = SlbAgent(self.agent_store, self.proxy, self.rt, SlbAgentConfig(GROUP, "nginx-1", **config))
        self.task = self.rt.spawn(self.agent.run(), name="slb-agent")
        return self.agent

    def stop_agent(self) -> None:
        self.task.cancel()

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    async def put(self, d: Domain) -> int:
        return (await self.admin.put(d.key, d.to_bytes())).revision

    def statuses(self) -> dict[str, DomainStatus]:
        prefix = status_prefix(GROUP)
        return {kv.key.removeprefix(prefix).removesuffix("/nginx-1"): DomainStatus.from_bytes(kv.value)
                for kv in self.server._range(prefix, True).kvs if kv.key.endswith("/nginx-1")}


@pytest.fixture
def world():
    return World()


def test_startup_applies_every_domain_with_one_reload_and_reports_status(world):
    async def main():
        revs = [await world.put(domain(f"app{i}.example.com", f"10.0.0.{i}:8080")) for i in range(10)]
        world.start_agent()
        await world.rt.sleep(1)
        return revs

    revs = world.run(main())
    assert world.proxy.reload_count == 1 and set(world.proxy.live) == {f"app{i}.example.com" for i in range(10)}
    assert world.proxy.serving("app3.example.com") == (Upstream("10.0.0.3", 8080),)
    statuses = world.statuses()
    assert statuses["app3.example.com"].revision == revs[3] and statuses["app3.example.com"].error == ""


def test_upstream_only_changes_are_applied_in_place_without_any_reload(world):
    async def main():
        await world.put(domain("shop.example.com", "10.0.0.1:80"))
        world.start_agent()
        await world.rt.sleep(1)
        base = domain("shop.example.com")
        last = 0
        for i in range(1000):
            last = await world.put(base.with_upstreams((Upstream(f"10.0.{i // 250}.{i % 250 + 2}", 80),)))
            await world.rt.sleep(0.01)
        await world.rt.sleep(1)
        return last

    last = world.run(main())
    assert world.proxy.reload_count == 1  # the start-up one only
    assert world.proxy.serving("shop.example.com") == (Upstream("10.0.3.251", 80),)
    assert world.agent.stats.in_place == 1000
    assert world.statuses()["shop.example.com"].revision == last


def test_a_burst_of_config_changes_is_one_reload(world):
    async def main():
        world.start_agent(debounce=0.05, max_wait=0.5)
        await world.rt.sleep(1)
        for i in range(20):
            await world.put(domain(f"new{i}.example.com", "10.0.0.1:80"))
        await world.rt.sleep(2)

    world.run(main())
    assert world.proxy.reload_count == 1  # nothing to load at start; one reload for the whole burst
    assert len(world.proxy.live) == 20


def test_max_wait_bounds_the_batch_under_a_steady_stream(world):
    async def main():
        world.start_agent(debounce=0.05, max_wait=0.3, min_reload_interval=0)
        await world.rt.sleep(1)
        for i in range(50):  # a change every 20 ms: the debounce alone would never fire
            await world.put(domain(f"s{i}.example.com", "10.0.0.1:80"))
            await world.rt.sleep(0.02)
        await world.rt.sleep(1)

    world.run(main())
    reloads = world.proxy.reload_count
    assert 3 <= reloads <= 6  # ~1 s of changes in batches of at most 0.3 s (+ reload time)
    assert len(world.proxy.live) == 50


def test_a_bad_domain_is_set_aside_the_others_apply_and_it_still_gets_upstreams(world):
    # This Nginx cannot listen on 8443 (another process holds it): nginx -t of such a domain fails.
    world.proxy.rejects = lambda d: 'bind() to 0.0.0.0:8443 failed (98: Address in use)' if d.listen == 8443 else None

    async def main():
        good = domain("bad.example.com", "10.0.0.1:80")
        await world.put(good)
        world.start_agent()
        await world.rt.sleep(1)
        bad_rev = await world.put(domain("bad.example.com", "10.0.0.1:80", listen=8443))
        for i in range(4):
            await world.put(domain(f"ok{i}.example.com", "10.0.0.2:80"))
        await world.rt.sleep(2)
        status = world.statuses()["bad.example.com"]
        assert "8443" in status.error and status.wanted_revision == bad_rev
        upstream_rev = await world.put(domain("bad.example.com", "10.0.0.9:80", listen=8443))
        await world.rt.sleep(1)
        return good, upstream_rev

    _good, upstream_rev = world.run(main())
    assert {f"ok{i}.example.com" for i in range(4)} <= set(world.proxy.live)
    assert world.proxy.live["bad.example.com"].listen == 80  # last good config still in force
    assert world.proxy.serving("bad.example.com") == (Upstream("10.0.0.9", 80),)  # new upstreams anyway
    status = world.statuses()["bad.example.com"]
    assert status.error and status.wanted_revision == upstream_rev


def test_an_undecodable_record_is_reported_not_applied(world):
    async def main():
        world.start_agent()
        await world.rt.sleep(1)
        await world.admin.put(domain_key(GROUP, "junk.example.com"), b"{not json")
        await world.admin.put(domain_key(GROUP, "evil.example.com"), json.dumps(
            {"name": "evil.example.com", "group": GROUP, "owner": "x",
             "locations": [{"path": "/", "set_headers": {"X": "a; return 200"}}]}).encode())
        await world.rt.sleep(1)

    world.run(main())
    statuses = world.statuses()
    assert "invalid domain record" in statuses["junk.example.com"].error
    assert "set_headers" in statuses["evil.example.com"].error
    assert "evil.example.com" not in world.proxy.live and world.proxy.reload_count == 0


def test_a_failed_reload_keeps_the_last_good_config_reports_it_and_is_retried(world):
    async def main():
        await world.put(domain("a.example.com", "10.0.0.1:80"))
        world.start_agent(retry=2.0)
        await world.rt.sleep(1)
        world.proxy.fail_next_reload = True  # the host, not the domain, is at fault this once
        rev = await world.put(domain("a.example.com", "10.0.0.1:80", listen=8080))
        await world.rt.sleep(1)
        during = (world.proxy.live["a.example.com"].listen, world.statuses()["a.example.com"])
        await world.rt.sleep(3)
        return rev, during

    rev, (listen_during, status_during) = world.run(main())
    assert listen_during == 80 and "reload failed" in status_during.error  # last good config kept, reported
    assert world.proxy.live["a.example.com"].listen == 8080  # ... and the change was not lost: retried
    assert world.statuses()["a.example.com"] == DomainStatus(rev, "", rev, world.statuses()["a.example.com"].at)


def test_restart_serves_saved_state_and_resumes_from_its_revision(world):
    async def main():
        await world.put(domain("a.example.com", "10.0.0.1:80"))
        world.start_agent()
        await world.rt.sleep(1)
        world.stop_agent()
        await world.rt.sleep(0.1)
        # While the agent is down: an upstream change and a new domain.
        await world.put(domain("a.example.com", "10.0.0.2:80"))
        await world.put(domain("b.example.com", "10.0.0.3:80"))
        world.proxy.restart()  # even Nginx restarted: it serves the saved files at once
        assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.1", 80),)
        agent = world.start_agent()
        await world.rt.sleep(1)
        return agent

    agent = world.run(main())
    assert agent.stats.resyncs == 0  # resumed the watch from the saved revision: no full read
    assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.2", 80),)
    assert "b.example.com" in world.proxy.live


def test_restart_after_compaction_resyncs(world):
    async def main():
        await world.put(domain("a.example.com", "10.0.0.1:80"))
        await world.put(domain("gone.example.com", "10.0.0.1:80"))
        world.start_agent()
        await world.rt.sleep(1)
        world.stop_agent()
        await world.admin.delete(domain_key(GROUP, "gone.example.com"))
        rev = await world.put(domain("a.example.com", "10.0.0.5:80"))
        await world.admin.compact(rev)
        agent = world.start_agent()
        await world.rt.sleep(1)
        return agent

    agent = world.run(main())
    assert agent.stats.resyncs == 1
    assert set(world.proxy.live) == {"a.example.com"}
    assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.5", 80),)
    assert "gone.example.com" not in world.statuses()


def test_etcd_out_of_reach_nginx_keeps_serving_and_catches_up_after(world):
    async def main():
        await world.put(domain("a.example.com", "10.0.0.1:80"))
        world.start_agent(retry=0.5)
        await world.rt.sleep(1)
        world.agent_store.partition()
        await world.put(domain("a.example.com", "10.0.0.2:80"))
        await world.rt.sleep(10)
        assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.1", 80),)  # still serving the old
        world.agent_store.heal()
        await world.rt.sleep(3)

    world.run(main())
    assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.2", 80),)
    assert world.agent.stats.store_errors >= 1


def test_a_deleted_domain_recreated_by_someone_else_with_a_bad_config_is_not_served_at_all(world):
    world.proxy.rejects = lambda d: "bind() to 0.0.0.0:8443 failed" if d.listen == 8443 else None

    async def main():
        await world.put(domain("x.example.com", "10.0.0.1:80"))
        world.start_agent()
        await world.rt.sleep(1)
        await world.admin.delete(domain_key(GROUP, "x.example.com"))
        await world.admin.put(domain_key(GROUP, "x.example.com"), Domain.parse(
            {"name": "x.example.com", "group": GROUP, "owner": "bob", "listen": 8443,
             "upstreams": ["10.0.0.7:80"]}).to_bytes())
        await world.rt.sleep(2)

    world.run(main())
    assert "x.example.com" not in world.proxy.live  # never the old owner's config under bob's record
    assert "8443" in world.statuses()["x.example.com"].error


def test_an_upstream_change_riding_on_a_config_that_fails_is_still_served(world):
    world.proxy.rejects = lambda d: "bind() to 0.0.0.0:8443 failed" if d.listen == 8443 else None

    async def main():
        await world.put(domain("a.example.com", "10.0.0.1:80"))
        world.start_agent()
        await world.rt.sleep(1)
        await world.put(domain("a.example.com", "10.0.0.1:80", listen=8443))  # queued, will fail
        await world.rt.sleep(0.01)
        await world.put(domain("a.example.com", "10.0.0.2:80", listen=8443))  # a drain rides along
        await world.rt.sleep(2)

    world.run(main())
    assert world.proxy.live["a.example.com"].listen == 80
    assert world.proxy.serving("a.example.com") == (Upstream("10.0.0.2", 80),)


def test_a_sustained_storm_is_spaced_to_one_reload_per_interval(world):
    async def main():
        world.start_agent(debounce=0.05, max_wait=0.5, min_reload_interval=1.0)
        await world.rt.sleep(1)
        for i in range(100):  # a change every 100 ms for 10 s: the debounce alone never holds
            await world.put(domain(f"storm{i}.example.com", "10.0.0.1:80"))
            await world.rt.sleep(0.1)
        await world.rt.sleep(3)

    world.run(main())
    assert len(world.proxy.live) == 100
    assert world.proxy.reload_count <= 12  # ~10 s of storm, one reload per second at most


# ------------------------------------------------------------------ issue 9: corrupt records never stop the agent


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


CORRUPT = {
    "deep-list.example.com": b"[" * 100_000,  # json.loads alone raises RecursionError
    "deep-object.example.com": b'{"a":' * 100_000,
    "nested.example.com": json.dumps({"name": "nested.example.com", "group": GROUP,
                                      "settings": {"client_max_body_size": _nested(50)}}).encode(),
    "huge-int.example.com": b'{"name":"huge-int.example.com","group":"public","listen":' + b"9" * 5000 + b"}",
    "big-int.example.com": b'{"name":"big-int.example.com","group":"public","listen":' + b"9" * 4000 + b"}",
    "types.example.com": b'{"name":"types.example.com","group":"public","upstreams":"10.0.0.1:80"}',
    "not-utf8.example.com": b'{"name":"\xff"}',
    "unicode-port.example.com": json.dumps({"name": "unicode-port.example.com", "group": GROUP,
                                            "upstreams": ["10.0.0.1:\u0668\u0660"]}).encode(),
}


def test_corrupt_records_are_reported_and_set_aside_the_others_serve_also_after_a_restart(world):
    async def main():
        await world.put(domain("ok.example.com", "10.0.0.1:80"))
        for name, raw in list(CORRUPT.items())[:4]:  # present at the first full read
            await world.admin.put(domain_key(GROUP, name), raw)
        world.start_agent()
        await world.rt.sleep(1)
        for name, raw in list(CORRUPT.items())[4:]:  # arriving through the watch
            await world.admin.put(domain_key(GROUP, name), raw)
        await world.admin.put(domain_key(GROUP, "a/../../meta"), b"[" * 100_000)  # a key that is no domain name
        await world.put(domain("ok.example.com", "10.0.0.2:80"))
        await world.put(domain("new.example.com", "10.0.0.3:80"))
        await world.rt.sleep(1)
        world.stop_agent()  # a restart (resumed watch) and a resync (state lost) must not crash-loop either
        await world.rt.sleep(0.1)
        world.start_agent()
        await world.rt.sleep(1)
        world.stop_agent()
        await world.rt.sleep(0.1)
        world.proxy.saved = SavedState()  # a fresh host: nothing saved, a full read
        world.proxy.live.clear()
        agent = world.start_agent()
        await world.rt.sleep(1)
        return agent

    agent = world.run(main())
    assert not world.task.done()  # still running
    assert agent.stats.resyncs == 1
    assert world.proxy.serving("ok.example.com") == (Upstream("10.0.0.2", 80),)
    assert world.proxy.serving("new.example.com") == (Upstream("10.0.0.3", 80),)
    statuses = world.statuses()
    for name in CORRUPT:
        assert name not in world.proxy.live
        assert "invalid domain record" in statuses[name].error and len(statuses[name].error) < 1000, name
    assert statuses["ok.example.com"].error == ""
    assert not any(key.startswith("a/") for key in statuses)  # no status key built from a non-name


# ------------------------------------------------------------------ issue 9: upstreams only into pod pools


def test_upstreams_outside_the_pod_pools_planted_in_etcd_never_reach_nginx(world):
    """slb-core refuses them; a record written around it (etcd itself) is filtered by the agent."""
    async def main():
        await world.put(domain("boot.example.com", "10.0.0.5:80", "192.168.50.1:2379"))  # at the first read
        world.start_agent()
        await world.rt.sleep(1)
        rev = await world.put(domain("shop.example.com", "10.0.0.5:80", "192.168.50.1:2379", "10.0.255.254:80",
                                     "10.0.0.0:80", "127.0.0.1:2379"))
        only = await world.put(domain("etcd.example.com", "192.168.50.1:2379"))
        await world.rt.sleep(1)
        moved = await world.put(domain("shop.example.com", "10.0.0.6:80", "172.16.0.1:2379"))  # in place
        await world.rt.sleep(1)
        return rev, only, moved

    rev, only, moved = world.run(main())
    assert world.proxy.serving("boot.example.com") == (Upstream("10.0.0.5", 80),)
    assert world.proxy.serving("shop.example.com") == (Upstream("10.0.0.6", 80),)
    assert world.proxy.serving("etcd.example.com") == ()  # in force, no servers: the 503 sink
    statuses = world.statuses()
    assert statuses["shop.example.com"].revision == moved  # the rest of the record applies: drains go on
    assert "172.16.0.1:2379" in statuses["shop.example.com"].error
    assert "pod pool" in statuses["etcd.example.com"].error and statuses["etcd.example.com"].revision == only
    assert "192.168.50.1:2379" in statuses["boot.example.com"].error
    assert world.agent.stats.in_place >= 1 and rev < moved


def test_a_pool_added_later_lets_its_servers_in_and_a_removed_pool_takes_them_out(world):
    async def main():
        world.start_agent()
        await world.rt.sleep(1)
        rev = await world.put(domain("shop.example.com", "10.0.0.5:80", "10.9.0.5:80"))
        await world.rt.sleep(1)
        before = world.proxy.serving("shop.example.com"), world.statuses()["shop.example.com"]
        await world.add_pool("late", "10.9.0.0/24")
        await world.rt.sleep(1)
        added = world.proxy.serving("shop.example.com"), world.statuses()["shop.example.com"]
        await world.admin.delete("/ipam/pools/late")
        await world.rt.sleep(1)
        return rev, before, added

    rev, before, added = world.run(main())
    assert before[0] == (Upstream("10.0.0.5", 80),) and "10.9.0.5:80" in before[1].error
    assert added[0] == (Upstream("10.0.0.5", 80), Upstream("10.9.0.5", 80)) and added[1].error == ""
    assert added[1].revision == rev
    assert world.proxy.serving("shop.example.com") == (Upstream("10.0.0.5", 80),)
    assert "10.9.0.5:80" in world.statuses()["shop.example.com"].error
    assert world.proxy.reload_count == 1  # pools move servers in place only


def test_a_pool_written_just_before_its_first_domain_is_never_missed(world):
    async def main():
        world.start_agent()
        await world.rt.sleep(1)
        # Two watches deliver these independently: the domain may be seen before its pool.
        await world.add_pool("fresh", "10.7.0.0/24")
        await world.put(domain("shop.example.com", "10.7.0.9:80"))
        await world.rt.sleep(1)

    world.run(main())
    assert world.proxy.serving("shop.example.com") == (Upstream("10.7.0.9", 80),)
    assert world.statuses()["shop.example.com"].error == ""


def test_a_corrupt_pool_record_makes_only_its_addresses_unusable(world):
    async def main():
        await world.admin.put("/ipam/pools/broken", b"[" * 100_000)
        await world.admin.put("/ipam/pools/wide", b'{"name":"wide","cidr":"0.0.0.0/0","gateway":"0.0.0.1"}')
        world.start_agent()
        await world.rt.sleep(1)
        await world.put(domain("shop.example.com", "10.0.0.5:80", "192.168.1.1:2379"))
        await world.admin.put("/ipam/pools/broken2", b'{"name":"broken2","cidr":"10.8.0.0/24","gateway":[1]}')
        await world.rt.sleep(1)

    world.run(main())
    assert not world.task.done()
    assert world.proxy.serving("shop.example.com") == (Upstream("10.0.0.5", 80),)


# ------------------------------------------------------------------ per-version traffic (issue 13, gray releases)

TRAFFIC_KEY = "/slb/public/traffic/nginx-1"


def traffic_record(world: World):
    kv = world.server._keys.get(TRAFFIC_KEY)
    return (decode_traffic(TRAFFIC_KEY, kv.value), kv) if kv is not None else (None, None)


def test_the_traffic_record_holds_cumulative_counts_per_version_of_versioned_domains_under_the_lease(world):
    shop = domain("shop.example.com", "10.0.0.1:80 weight=1000 version=v1", "10.0.0.2:80 weight=10 version=v2")
    plain = domain("plain.example.com", "10.0.0.3:80")

    async def main():
        await world.put(shop)
        await world.put(plain)
        world.start_agent(traffic_every=5)
        await world.rt.sleep(1)
        v1, v2 = shop.upstreams
        world.proxy.answered("shop.example.com", v1, 200, 3.0, requests=99)
        world.proxy.answered("shop.example.com", v1, 503, 0.5, requests=1)
        world.proxy.answered("shop.example.com", v2, 200, 0.25, requests=1)
        world.proxy.answered("plain.example.com", plain.upstreams[0], 200, 1.0, requests=50)  # no version
        await world.rt.sleep(5)
        first = traffic_record(world)
        await world.rt.sleep(10)  # nothing new: nothing written
        same = traffic_record(world)
        world.proxy.answered("shop.example.com", v2, 500, 1.0, requests=2)
        await world.rt.sleep(5)
        return first, same, traffic_record(world)

    (first, first_kv), (_, same_kv), (later, later_kv) = world.run(main())
    assert first.host == "nginx-1" and first.epoch == 0 and 5 <= first.at <= 7
    assert first.domains == {"shop.example.com": {"v1": VersionCounts(100, 1, 3.5), "v2": VersionCounts(1, 0, 0.25)}}
    assert same_kv.mod_revision == first_kv.mod_revision  # written only when something changed
    assert later.domains["shop.example.com"]["v2"] == VersionCounts(3, 2, 1.25)  # cumulative
    assert later_kv.mod_revision > first_kv.mod_revision
    member = world.server._keys["/slb/public/hosts/nginx-1"]
    assert later_kv.lease == member.lease != 0  # the record goes when the host's lease does


def test_a_version_without_requests_yet_is_recorded_at_zero(world):
    async def main():
        await world.put(domain("shop.example.com", "10.0.0.1:80 version=v1", "10.0.0.2:80 weight=0 version=v2"))
        world.start_agent(traffic_every=2)
        await world.rt.sleep(3)
        return traffic_record(world)[0]

    assert world.run(main()).domains == {"shop.example.com": {"v1": VersionCounts(0, 0, 0.0),
                                                              "v2": VersionCounts(0, 0, 0.0)}}


def test_an_nginx_restart_bumps_the_epoch_and_counts_start_again(world):
    shop = domain("shop.example.com", "10.0.0.1:80 version=v1")

    async def main():
        await world.put(shop)
        world.start_agent(traffic_every=2)
        await world.rt.sleep(1)
        world.proxy.answered("shop.example.com", shop.upstreams[0], 200, 1.0, requests=40)
        await world.rt.sleep(2)
        before = traffic_record(world)[0]
        world.proxy.restart()
        await world.rt.sleep(2)  # the agent reads the counts lower than before: a restart
        restarted = traffic_record(world)[0]
        world.proxy.answered("shop.example.com", shop.upstreams[0], 200, 1.0, requests=70)  # past the old 40
        await world.rt.sleep(2)
        return before, restarted, traffic_record(world)[0]

    before, restarted, after = world.run(main())
    assert (before.epoch, before.domains["shop.example.com"]["v1"].requests) == (0, 40)
    assert (restarted.epoch, restarted.domains["shop.example.com"]["v1"].requests) == (1, 0)
    # 70 > 40 would look like 30 more requests without the epoch: a reader seeing the epoch move takes 70 as the delta
    assert (after.epoch, after.domains["shop.example.com"]["v1"].requests) == (1, 70)


def test_without_traffic_every_no_record_is_written(world):
    async def main():
        await world.put(domain("shop.example.com", "10.0.0.1:80 version=v1"))
        world.start_agent()
        await world.rt.sleep(30)

    world.run(main())
    assert traffic_record(world) == (None, None)


def test_the_record_disappears_with_the_hosts_lease_and_comes_back_under_the_new_one(world):
    async def main():
        await world.put(domain("shop.example.com", "10.0.0.1:80 version=v1"))
        world.start_agent(traffic_every=2)
        await world.rt.sleep(3)
        lease = traffic_record(world)[1].lease
        await world.admin.revoke(lease)  # as if the lease expired while etcd was out of reach
        await world.rt.sleep(0.1)
        gone = traffic_record(world)
        await world.rt.sleep(20)  # the agent joins again under a new lease; the counts moved: written again
        world.proxy.answered("shop.example.com", Upstream("10.0.0.1", 80, 1, "v1"), 200, 1.0)
        await world.rt.sleep(3)
        return lease, gone, traffic_record(world)[1]

    lease, gone, back = world.run(main())
    assert gone == (None, None)
    assert back is not None and back.lease not in (0, lease)
    assert back.lease == world.server._keys["/slb/public/hosts/nginx-1"].lease
