"""Discovery on sim adapters: ready pods of two Cells feed two Nginx hosts; drains wait for every host."""

from __future__ import annotations

from control.auth import Principal
from control.discovery import Binding, Discovery
from control.slb_core import SlbCore
from foundation.logic.slb_domain import Upstream
from foundation.ports.cluster import Endpoints
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.cluster import SimCluster
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
DOMAIN = "shop.example.com"


class World:
    def __init__(self) -> None:
        self.rt = rt = SimRuntime(seed=2)
        self.server = MemoryStore(rt)
        self.slb = SlbCore(self.server.client("control", latency=0.001), rt)
        self.cells = {name: SimCluster(name, rt) for name in ("cell-a", "cell-b")}
        self.proxies = {h: SimProxy(rt, h) for h in ("nginx-1", "nginx-2")}
        self.agents = {h: SlbAgent(self.server.client(h, latency=0.001), p, rt, SlbAgentConfig("public", h))
                       for h, p in self.proxies.items()}
        self.discovery = Discovery(self.cells, self.slb, rt, [Binding("shop", "shop", 8080, "public", DOMAIN)],
                                   retry=0.5)
        self.tasks = {}

    def run(self, coro):
        return self.rt.run_until_complete(coro, limit=3600)

    async def start(self) -> None:
        await self.slb.create_group(ADMIN, "public")
        await self.slb.put_domain(ADMIN, {"name": DOMAIN, "group": "public", "owner": "shop"})
        for host, agent in self.agents.items():
            self.tasks[host] = self.rt.spawn(agent.run(), name=host)
        self.tasks["discovery"] = self.rt.spawn(self.discovery.run(), name="discovery")
        await self.discovery.synced.wait()
        await self.rt.sleep(1)

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
        w.cells["cell-a"].available = True
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
