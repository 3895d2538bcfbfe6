"""Discovery on sim adapters: ready pods of two Cells feed two Nginx hosts; drains wait for every host."""

from __future__ import annotations

import json
import logging

from cni.pools import Pool
from control.auth import Principal
from control.discovery import DRAINS_PREFIX, Binding, Discovery, drain_key
from control.slb_core import SlbCore
from foundation.logic.slb_domain import Domain, Upstream, domain_key, domains_prefix, status_key
from foundation.ports.cluster import Endpoints
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.cluster import SimCluster
from sim.adapters.control import SimControlClient
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
DOMAIN = "shop.example.com"


class World:
    def __init__(self, bindings: list[Binding] | None = None, who: Principal | None = None) -> None:
        self.rt = rt = SimRuntime(seed=2)
        self.server = MemoryStore(rt)
        self.slb = SlbCore(self.server.client("control", latency=0.001), rt)
        self.cells = {name: SimCluster(name, rt) for name in ("cell-a", "cell-b")}
        self.proxies = {h: SimProxy(rt, h) for h in ("nginx-1", "nginx-2")}
        self.agents = {h: SlbAgent(self.server.client(h, latency=0.001), p, rt, SlbAgentConfig("public", h))
                       for h, p in self.proxies.items()}
        self.bindings = bindings or [Binding("shop", "shop", 8080, "public", DOMAIN)]
        # Discovery calls slb-core as a client (the sim ControlClient: its principal, its authorisation);
        # it reads and writes only its drain records in etcd itself.
        self.control = SimControlClient(self.slb) if who is None else SimControlClient(self.slb, who)
        self.discovery = Discovery(self.cells, self.control, self.slb.store, rt, self.bindings, retry=0.5)
        self.tasks = {}
        self.writes: list[tuple[float, str, tuple[str, ...]]] = []  # (when, domain, upstreams) of every write

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    async def start(self) -> None:
        await self.add_pools()
        await self.slb.create_group(ADMIN, "public")
        for domain in sorted({b.domain for b in self.bindings}):
            await self.slb.put_domain(ADMIN, {"name": domain, "group": "public", "owner": "shop"})
        self.tasks["recorder"] = self.rt.spawn(self._record_writes(), name="recorder")
        for host, agent in self.agents.items():
            self.tasks[host] = self.rt.spawn(agent.run(), name=host)
        self.tasks["discovery"] = self.rt.spawn(self.discovery.run(), name="discovery")
        await self.discovery.synced.wait()
        await self.rt.sleep(1)

    async def _record_writes(self) -> None:
        async with self.server.client("recorder").watch(domains_prefix("public")) as watch:
            async for event in watch:
                if event.type == "put":
                    try:
                        domain = Domain.from_bytes(event.kv.value)
                    except ValueError:  # a test planted a corrupt record
                        continue
                    self.writes.append((self.rt.now(), domain.name, tuple(str(u) for u in domain.upstreams)))

    async def restart_discovery(self, *, wait: bool = False) -> Discovery:
        """Kill the discovery daemon and start a new one (nothing in memory survives)."""
        self.tasks["discovery"].cancel()
        await self.rt.sleep(0.01)
        self.discovery = Discovery(self.cells, self.control, self.slb.store, self.rt, self.bindings, retry=0.5)
        self.tasks["discovery"] = self.rt.spawn(self.discovery.run(), name="discovery")
        if wait:
            await self.discovery.synced.wait()
        return self.discovery

    async def add_pools(self) -> None:
        """The Cells' pod pools (upstreams must be pod addresses): cell-a 10.1/16, cell-b 10.2/16."""
        for name, cidr in (("cell-a", "10.1.0.0/16"), ("cell-b", "10.2.0.0/16")):
            pool = Pool.parse(name, cidr, vlan=100, gateway=cidr.replace("0.0/16", "255.254"))
            await self.slb.store.put(pool.key, pool.to_bytes())

    def serving(self) -> dict[str, tuple[Upstream, ...]]:
        return {h: p.serving(DOMAIN) for h, p in self.proxies.items()}


def ups(*ips: str) -> tuple[Upstream, ...]:
    return tuple(Upstream(ip, 8080) for ip in ips)


def test_ready_pods_of_every_cell_become_upstreams_not_ready_ones_do_not():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",), not_ready=("10.1.0.6",)))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",)))
        await w.start()
        first = w.serving()
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))  # probe passed
        await w.rt.sleep(1)
        return first, w.serving()

    first, later = w.run(main())
    assert first == {"nginx-1": ups("10.1.0.5", "10.2.0.7"), "nginx-2": ups("10.1.0.5", "10.2.0.7")}
    assert later["nginx-1"] == ups("10.1.0.5", "10.1.0.6", "10.2.0.7") == later["nginx-2"]
    assert sum(p.reload_count for p in w.proxies.values()) == 2  # one start-up reload per host, then in place


def test_a_cell_whose_api_is_down_keeps_its_addresses_while_the_other_cell_updates():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",)))
        await w.start()
        w.cells["cell-a"].cut_off()  # the machine room's API server is unreachable
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7", "10.2.0.8")))
        await w.rt.sleep(2)
        during = w.serving()["nginx-1"]
        w.cells["cell-a"].reconnect()
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=()))  # its pods died meanwhile
        await w.rt.sleep(2)
        return during, w.serving()["nginx-1"]

    during, after = w.run(main())
    assert during == ups("10.1.0.5", "10.2.0.7", "10.2.0.8")
    assert after == ups("10.2.0.7", "10.2.0.8")
    assert w.discovery.stats.cluster_errors >= 1


def test_drain_returns_once_every_nginx_host_stopped_sending_to_the_pod():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        started = w.rt.now()
        drained = await w.discovery.drain("shop", "10.1.0.6")
        took = w.rt.now() - started
        serving_at_return = w.serving()
        # Only now may the pod be deleted; its endpoints go away afterwards.
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        w.discovery.forget("shop", "10.1.0.6")
        await w.rt.sleep(1)
        return drained, took, serving_at_return

    drained, took, serving = w.run(main())
    assert drained and took < 1.0
    assert serving == {"nginx-1": ups("10.1.0.5"), "nginx-2": ups("10.1.0.5")}


def test_drain_reports_false_when_a_host_does_not_confirm_in_time():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        w.tasks["nginx-2"].cancel()  # this Nginx host's agent is dead: it will never confirm
        await w.rt.sleep(0.1)
        return await w.discovery.drain("shop", "10.1.0.6", timeout=3)

    assert w.run(main()) is False
    assert w.proxies["nginx-1"].serving(DOMAIN) == ups("10.1.0.5")


def test_a_forgotten_address_stays_out_until_its_endpoints_say_it_is_gone():
    """forget() right after the delete, before discovery saw the endpoints change: the pod must not come back."""
    w = World()
    log = []

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        assert await w.discovery.drain("shop", "10.1.0.6")
        w.discovery.forget("shop", "10.1.0.6")  # the endpoints still list it: its removal is on its way
        await w.rt.sleep(2 * w.discovery.resync)  # a resync pushes whatever is stale
        log.append(w.serving()["nginx-1"])
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        await w.rt.sleep(2)
        # The address is free again: a new pod of the app that gets it is pushed.
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.rt.sleep(2)
        log.append(w.serving()["nginx-1"])

    w.run(main())
    assert log == [ups("10.1.0.5"), ups("10.1.0.5", "10.1.0.6")]


# ---------------------------------------------------------------------------- restarts (issue 9, item 10)

BLOG = "blog.example.com"


def two_apps() -> World:
    """shop has pods in both Cells; blog's ready pods are all in cell-a."""
    return World([Binding("shop", "shop", 8080, "public", DOMAIN), Binding("blog", "blog", 8080, "public", BLOG)])


def test_a_restart_while_a_cell_is_out_of_reach_keeps_its_recorded_addresses():
    w = two_apps()
    log = {}

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        w.cells["cell-a"].set_endpoints(Endpoints("blog", "blog", ready=("10.1.0.20", "10.1.0.21")))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",)))
        await w.start()
        log["before"] = w.serving()
        w.cells["cell-a"].cut_off()  # its API server is unreachable, its pods still serve
        restarted = len(w.writes)
        await w.restart_discovery()
        await w.rt.sleep(3)
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7", "10.2.0.8")))  # scaled up
        await w.rt.sleep(3)
        log["during"] = w.serving()
        log["blog during"] = w.proxies["nginx-1"].serving(BLOG)
        log["writes during"] = w.writes[restarted:]
        log["synced during"] = w.discovery.synced.is_set()
        w.cells["cell-a"].reconnect()  # back; one of its pods died meanwhile
        w.cells["cell-a"].set_endpoints(Endpoints("blog", "blog", ready=("10.1.0.21",)))
        await w.rt.sleep(3)
        log["after"] = w.serving()
        log["blog after"] = w.proxies["nginx-1"].serving(BLOG)

    w.run(main())
    assert log["before"]["nginx-1"] == ups("10.1.0.5", "10.2.0.7")
    assert log["synced during"] is False
    # Every write while cell-a was unlisted kept its addresses: never blog = [], never shop without 10.1.0.5.
    assert log["writes during"] == [(log["writes during"][0][0], DOMAIN, ("10.1.0.5:8080", "10.2.0.7:8080",
                                                                          "10.2.0.8:8080"))]
    assert log["during"] == {"nginx-1": ups("10.1.0.5", "10.2.0.7", "10.2.0.8"),
                             "nginx-2": ups("10.1.0.5", "10.2.0.7", "10.2.0.8")}
    assert log["blog during"] == ups("10.1.0.20", "10.1.0.21")
    assert log["after"]["nginx-1"] == ups("10.1.0.5", "10.2.0.7", "10.2.0.8")
    assert log["blog after"] == ups("10.1.0.21")  # listed at last: exact again


def test_a_restart_with_every_cell_reachable_writes_nothing():
    """Not even briefly the union of whichever Cell listed first."""
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",)))
        await w.start()
        before = len(w.writes)
        for _ in range(3):
            await w.restart_discovery(wait=True)
            await w.rt.sleep(2)
        return w.writes[before:], w.serving()

    writes, serving = w.run(main())
    assert writes == []
    assert serving["nginx-1"] == ups("10.1.0.5", "10.1.0.6", "10.2.0.7") == serving["nginx-2"]


def test_before_every_cell_is_listed_a_listed_cells_changes_are_exact():
    """cell-b is out of reach at restart; in cell-a a pod went not-ready and one was deleted meanwhile."""
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6", "10.1.0.7")))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",)))
        await w.start()
        w.cells["cell-b"].cut_off()
        w.tasks["discovery"].cancel()
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",), not_ready=("10.1.0.6",)))
        await w.restart_discovery()
        await w.rt.sleep(3)
        return w.serving()["nginx-1"], w.discovery.synced.is_set()

    serving, synced = w.run(main())
    # 10.1.0.6: listed by cell-a as not ready -> out. 10.1.0.7: deleted while discovery was down; no listed
    # Cell reports it, and it may be cell-b's for all discovery knows -> kept until every Cell was listed.
    assert not synced
    assert serving == ups("10.1.0.5", "10.1.0.7", "10.2.0.7")


# ---------------------------------------------------------------------------- what a user sees (item 12)


def test_cell_outages_and_recoveries_are_logged_once_per_transition(caplog):
    w = World()
    caplog.set_level(logging.INFO, logger="leengine.discovery")

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        await w.start()
        w.cells["cell-a"].cut_off()
        await w.rt.sleep(5)  # ten retries
        w.cells["cell-a"].reconnect()
        await w.rt.sleep(2)

    w.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("Cell cell-a is out of reach") and "keeping its 1 last known" in warnings[0]
    assert warnings[1].startswith("Cell cell-a is reachable again after")
    assert w.discovery.stats.cluster_errors >= 5


def drain_request(ns: str, ip: str, timeout: float = 30.0) -> bytes:
    return json.dumps({"state": "requested", "timeout": timeout, "requested_by": "test"}).encode()


def test_a_drain_requested_through_etcd_is_reported_there_and_survives_a_restart(caplog):
    w = World()
    caplog.set_level(logging.INFO, logger="leengine.discovery")
    key = drain_key("shop", "10.1.0.6")
    seen = {}

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        await w.slb.store.put(key, drain_request("shop", "10.1.0.6"))
        await w.rt.sleep(1)
        seen["record"] = json.loads((await w.slb.store.get(key)).value)
        seen["drained"] = w.serving()
        await w.restart_discovery(wait=True)  # the pod is still listed ready: it must stay out
        await w.rt.sleep(2)
        seen["restarted"] = w.serving()
        seen["restart writes"] = [u for _, _, u in w.writes if "10.1.0.6:8080" in u]
        await w.slb.store.delete(key)  # forget: the pod stayed (still listed ready), it comes back
        await w.rt.sleep(w.discovery.linger + 2 * w.discovery.resync)
        seen["forgotten"] = w.serving()

    w.run(main())
    record = seen["record"]
    assert record["state"] == "drained" and record["drained"] is True
    assert record["domains"] == [f"public/{DOMAIN}"]
    assert record["confirmed"] == ["nginx-1", "nginx-2"] and record["unconfirmed"] == []
    assert 0 < record["took"] < 1 and record["requested_by"] == "test" and record["error"] == ""
    assert seen["drained"] == {"nginx-1": ups("10.1.0.5"), "nginx-2": ups("10.1.0.5")}
    assert seen["restarted"] == {"nginx-1": ups("10.1.0.5"), "nginx-2": ups("10.1.0.5")}
    assert seen["restart writes"] == [("10.1.0.5:8080", "10.1.0.6:8080")]  # only the first push, before the drain
    assert seen["forgotten"]["nginx-1"] == ups("10.1.0.5", "10.1.0.6")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("drain of 10.1.0.6 (shop) started") for m in messages)
    assert any(m.startswith("drain of 10.1.0.6 (shop) done in") and "nginx-1, nginx-2" in m for m in messages)


def test_a_drain_a_host_does_not_confirm_is_reported_failed_naming_the_host():
    w = World()
    key = drain_key("shop", "10.1.0.6")

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        w.tasks["nginx-2"].cancel()
        await w.rt.sleep(0.1)
        await w.slb.store.put(key, drain_request("shop", "10.1.0.6", timeout=2))
        await w.rt.sleep(4)
        return json.loads((await w.slb.store.get(key)).value)

    record = w.run(main())
    assert record["state"] == "failed" and record["drained"] is False
    assert record["confirmed"] == ["nginx-1"] and record["unconfirmed"] == ["nginx-2"]
    assert "not every host confirmed within 2s" in record["error"]


# ---------------------------------------------------------------------------- corrupt input (item 3)

NESTED = b"[" * 100_000 + b"]" * 100_000


def test_corrupt_drain_records_are_skipped_and_a_valid_one_still_drains(caplog):
    w = World()
    caplog.set_level(logging.WARNING, logger="leengine.discovery")

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6", "10.1.0.7")))
        store = w.slb.store
        await store.put(DRAINS_PREFIX + "shop/10.1.0.5", NESTED)  # present at start
        await w.start()
        await store.put(DRAINS_PREFIX + "shop/10.1.0.7", b'{"state": "requested", "timeout": 1e308}')
        await store.put(DRAINS_PREFIX + "shop/not-an-ip", drain_request("shop", "x"))
        await store.put(DRAINS_PREFIX + "Shop!/10.1.0.7", drain_request("shop", "x"))
        await store.put(DRAINS_PREFIX + "shop/10.1.0.7", b'{"state": "gone fishing"}')
        await store.put(DRAINS_PREFIX + "shop/10.1.0.7", b"\xff\xfe not json")
        await store.put(drain_key("shop", "10.1.0.6"), drain_request("shop", "10.1.0.6"))
        await w.rt.sleep(2)
        return json.loads((await store.get(drain_key("shop", "10.1.0.6"))).value)

    record = w.run(main())
    assert record["state"] == "drained"
    assert w.serving()["nginx-1"] == ups("10.1.0.5", "10.1.0.7")  # only the valid request took effect
    invalid = [r.getMessage() for r in caplog.records if "invalid drain record" in r.getMessage()]
    assert len(invalid) == 6


def test_addresses_that_are_not_ipv4_are_ignored_not_a_crash():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "fe80::1", "10.1.0.300")))
        await w.start()
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6", "::1")))
        await w.rt.sleep(1)
        return w.serving()["nginx-1"], w.tasks["discovery"].done()

    serving, died = w.run(main())
    assert serving == ups("10.1.0.5", "10.1.0.6") and not died


def test_a_corrupt_domain_record_or_status_record_is_no_crash():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.6")))
        await w.start()
        store = w.slb.store
        # A host's status record nested past the parser's limit: that host cannot confirm.
        await store.put(status_key("public", "nginx-3", DOMAIN), NESTED)
        report = await w.discovery.drain_report("shop", "10.1.0.6", timeout=1)
        # The domain record itself corrupt, then a restart: discovery keeps running and retries.
        w.tasks["nginx-1"].cancel()
        w.tasks["nginx-2"].cancel()
        await store.put(domain_key("public", DOMAIN), NESTED)
        await w.restart_discovery()
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5", "10.1.0.7")))
        await w.rt.sleep(3)
        return report, w.tasks["discovery"].done(), w.discovery.stats.push_errors

    report, died, push_errors = w.run(main())
    assert report.drained is False and report.confirmed == ("nginx-1", "nginx-2")
    assert report.unconfirmed == ("nginx-3",)
    assert not died and push_errors >= 1


def test_a_principal_without_the_discovery_role_pushes_nothing_and_says_why(caplog):
    """The least-privilege path runs in the sim too: slb-core refuses a user's SetUpstreams on
    discovery's domains, discovery logs it as an error once and Nginx keeps what it had."""
    w = World(who=Principal("alice", "user"))

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        await w.add_pools()
        await w.slb.create_group(ADMIN, "public")
        await w.slb.put_domain(ADMIN, {"name": DOMAIN, "group": "public", "owner": "alice"})
        w.tasks["discovery"] = w.rt.spawn(w.discovery.run(), name="discovery")
        await w.rt.sleep(12)  # the first push and two resyncs
        stored = await w.slb.get_domain(ADMIN, "public", DOMAIN)
        w.tasks["discovery"].cancel()
        return stored

    with caplog.at_level(logging.WARNING, logger="leengine.discovery"):
        stored = w.run(main())
    assert stored.domain.upstreams == ()
    assert w.discovery.stats.pushes == 0 and w.discovery.stats.push_errors >= 3
    refused = [r for r in caplog.records if "refused to set its upstreams" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert "PERMISSION_DENIED" in refused[0].getMessage() and "role discovery" in refused[0].getMessage()


# ------------------------------------------------------------------ versions (issue 13, gray releases)

PLATFORM = Principal("platform", "platform")  # the release controller's service role


def test_each_upstream_is_tagged_with_its_pods_version_and_weighed_by_the_shares():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.6", "10.1.0.5"),
                                                  ready_versions=("v2", "v1")))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7", "10.2.0.8"),
                                                  ready_versions=("v1", "")))  # the second: version unknown
        await w.start()
        tagged = w.serving()["nginx-1"]
        await w.slb.set_shares(PLATFORM, "public", DOMAIN, {"v1": 90, "v2": 10})
        await w.rt.sleep(1)
        weighed = {h: p.upstreams[DOMAIN] for h, p in w.proxies.items()}  # in force, weight 0 included
        # a new v2 pod turns ready: discovery pushes it with weight 1, slb-core weighs it by the shares
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7", "10.2.0.8", "10.2.0.9"),
                                                  ready_versions=("v1", "", "v2")))
        await w.rt.sleep(1)
        return tagged, weighed, {h: p.upstreams[DOMAIN] for h, p in w.proxies.items()}

    tagged, weighed, grown = w.run(main())
    assert [str(u) for u in tagged] == ["10.1.0.5:8080 version=v1", "10.1.0.6:8080 version=v2",
                                        "10.2.0.7:8080 version=v1", "10.2.0.8:8080"]
    assert weighed["nginx-1"] == weighed["nginx-2"]
    # v1: 90 % over 2 servers, v2: 10 % on 1 (1000 : 222); the untagged server gets no new requests
    assert {u.address: u.weight for u in weighed["nginx-1"]} == {
        "10.1.0.5:8080": 1000, "10.1.0.6:8080": 222, "10.2.0.7:8080": 1000, "10.2.0.8:8080": 0}
    assert {u.address: u.weight for u in grown["nginx-2"]} == {
        "10.1.0.5:8080": 1000, "10.1.0.6:8080": 111, "10.2.0.7:8080": 1000, "10.2.0.8:8080": 0,
        "10.2.0.9:8080": 111}
    assert sum(p.reload_count for p in w.proxies.values()) == 2  # weights change in place: no reload


def test_without_versions_nothing_is_tagged_and_invalid_tags_are_left_out():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",)))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7", "10.2.0.8"),
                                                  ready_versions=("V1;", "v1")))
        await w.start()
        return w.serving()["nginx-1"]

    assert [str(u) for u in w.run(main())] == ["10.1.0.5:8080", "10.2.0.7:8080", "10.2.0.8:8080 version=v1"]


def test_a_restart_while_a_cell_is_out_of_reach_keeps_the_recorded_versions():
    w = World()

    async def main():
        w.cells["cell-a"].set_endpoints(Endpoints("shop", "shop", ready=("10.1.0.5",), ready_versions=("v1",)))
        w.cells["cell-b"].set_endpoints(Endpoints("shop", "shop", ready=("10.2.0.7",), ready_versions=("v2",)))
        await w.start()
        w.cells["cell-a"].cut_off()
        await w.restart_discovery()
        await w.rt.sleep(3)
        return w.serving()["nginx-1"]

    assert [str(u) for u in w.run(main())] == ["10.1.0.5:8080 version=v1", "10.2.0.7:8080 version=v2"]
