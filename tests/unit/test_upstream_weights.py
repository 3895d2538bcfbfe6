"""Upstream weights and version tags (issue 13, gray releases): the record, slb-core, the change rule, the sim split.

The text form ``a.b.c.d:port[ weight=N][ version=V]`` is the record's, the API's and the
shared dict's; weight 0..1000 (default 1, 0: no new requests). A server at the defaults
keeps its old bytes, so records written before weights existed decode unchanged (weight
1) and re-encode to the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.pools import Pool
from control.auth import Principal
from control.slb_core import InvalidArgument, SlbCore
from foundation.adapters.nginx_proxy import parse_request_counts
from foundation.logic.slb_domain import MAX_WEIGHT, Domain, DomainError, Upstream, changed_config, domain_key
from foundation.ports.metrics import SLB_REQUEST_SECONDS, SLB_REQUESTS
from foundation.ports.proxy import RequestCounts
from node.slb_agent import SlbAgent, SlbAgentConfig
from sim.adapters.proxy import SimProxy
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

ADMIN = Principal("ops", "admin")
DISCOVERY = Principal("discovery", "discovery")
OLD_RECORD = (b'{"group":"web","listen":80,"locations":[{"path":"/","read_timeout":60,"set_headers":{}}],'
              b'"name":"shop.example.com","owner":"alice","settings":{},"upstreams":["10.0.0.1:80","10.0.0.2:80"]}')


def domain(*servers: str) -> Domain:
    return Domain.parse({"name": "shop.example.com", "group": "web", "owner": "alice", "upstreams": list(servers)})


# --------------------------------------------------------------------------- the text form and the record


@pytest.mark.parametrize(("text", "weight", "version"), [
    ("10.0.0.1:80", 1, ""),
    ("10.0.0.1:80 weight=0", 0, ""),
    ("10.0.0.1:80 weight=1000", 1000, ""),
    ("10.0.0.1:80 version=v12", 1, "v12"),
    ("10.0.0.1:80 weight=7 version=v2-canary.1", 7, "v2-canary.1"),
])
def test_weights_and_versions_parse_and_round_trip(text, weight, version):
    upstream = Upstream.parse(text)
    assert (upstream.host, upstream.port, upstream.weight, upstream.version) == ("10.0.0.1", 80, weight, version)
    assert str(upstream) == text and upstream.address == "10.0.0.1:80"


def test_weight_one_is_the_default_and_is_written_as_before():
    assert Upstream.parse("10.0.0.1:80 weight=1") == Upstream("10.0.0.1", 80)
    assert str(Upstream("10.0.0.1", 80, 1)) == "10.0.0.1:80"
    assert repr(Upstream("10.0.0.1", 80)) == "Upstream(host='10.0.0.1', port=80)"  # traces hash reprs


@pytest.mark.parametrize("text", [
    "10.0.0.1:80 weight=1001", "10.0.0.1:80 weight=-1", "10.0.0.1:80 weight=01", "10.0.0.1:80 weight=",
    "10.0.0.1:80 weight=1.5", "10.0.0.1:80 weight=\u0661", "10.0.0.1:80 weight=99999999999999999999",
    "10.0.0.1:80 version=v2 weight=3", "10.0.0.1:80 weight=3 weight=3", "10.0.0.1:80  weight=3",
    "10.0.0.1:80 weight=3 ", "10.0.0.1:80 version=", "10.0.0.1:80 version=V2", "10.0.0.1:80 version=-v2",
    "10.0.0.1:80 version=v2;", "10.0.0.1:80 version=" + "a" * 33, "10.0.0.1:80 backup", "10.0.0.1:80\tweight=2",
])
def test_bad_weights_and_versions_are_refused_naming_upstreams(text):
    with pytest.raises(DomainError) as caught:
        Upstream.parse(text)
    assert caught.value.field == "upstreams"
    with pytest.raises(DomainError):
        domain(text)


def test_an_old_record_decodes_with_weight_one_and_keeps_its_bytes():
    old = Domain.from_bytes(OLD_RECORD)
    assert [u.weight for u in old.upstreams] == [1, 1] and all(u.version == "" for u in old.upstreams)
    assert old.to_bytes() == OLD_RECORD


def test_a_weighted_record_round_trips():
    record = domain("10.0.0.2:80 weight=9 version=v2", "10.0.0.1:80 weight=1 version=v1")
    assert record.to_json()["upstreams"] == ["10.0.0.1:80 version=v1", "10.0.0.2:80 weight=9 version=v2"]
    assert Domain.from_bytes(record.to_bytes()) == record


def test_one_address_twice_with_two_weights_is_refused_and_the_same_text_twice_is_one_server():
    with pytest.raises(DomainError, match="listed twice"):
        domain("10.0.0.1:80 weight=2", "10.0.0.1:80 weight=3")
    with pytest.raises(DomainError, match="listed twice"):
        domain("10.0.0.1:80 version=v1", "10.0.0.1:80 version=v2")
    with pytest.raises(DomainError, match="listed twice"):
        domain("10.0.0.1:80").with_upstreams((Upstream("10.0.0.1", 80), Upstream("10.0.0.1", 80, 0)))
    assert domain("10.0.0.1:80 weight=2", "10.0.0.1:80 weight=2").upstreams == (Upstream("10.0.0.1", 80, 2),)


def test_a_weight_or_version_change_is_an_upstream_only_change():
    before = domain("10.0.0.1:80 version=v1", "10.0.0.2:80 version=v2")
    shifted = domain("10.0.0.1:80 weight=9 version=v1", "10.0.0.2:80 weight=0 version=v2")
    assert before != shifted and not changed_config(before, shifted)


weights = st.integers(0, MAX_WEIGHT)
versions = st.one_of(st.just(""), st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,31}\Z"))
upstreams = st.builds(Upstream, st.ip_addresses(v=4).map(str), st.integers(1, 65535), weights, versions)


@settings(max_examples=300, deadline=None)
@given(upstreams)
def test_every_valid_upstream_round_trips_through_its_text(upstream):
    assert Upstream.parse(str(upstream)) == upstream


@settings(max_examples=300, deadline=None)
@given(st.lists(upstreams, max_size=8, unique_by=lambda u: u.address))
def test_every_valid_record_round_trips_through_its_bytes(servers):
    record = domain().with_upstreams(tuple(servers))
    assert Domain.from_bytes(record.to_bytes()) == record and set(record.upstreams) == set(servers)


option = st.one_of(st.integers(-5, 1200).map(lambda n: f"weight={n}"),
                   st.text(max_size=12).map(lambda t: f"weight={t}"),
                   st.text(max_size=40).map(lambda t: f"version={t}"), st.text(max_size=12))


@settings(max_examples=500, deadline=None)
@given(st.lists(option, max_size=3), st.sampled_from([" ", "  ", "\t"]))
def test_any_option_text_parses_in_bounds_or_is_a_domain_error(options, separator):
    text = separator.join(["10.0.0.1:80", *options])
    try:
        upstream = Upstream.parse(text)
    except DomainError as exc:
        assert exc.field == "upstreams"
        return
    assert 0 <= upstream.weight <= MAX_WEIGHT and upstream.version.isascii()
    assert Upstream.parse(str(upstream)) == upstream


# --------------------------------------------------------------------------- slb-core


@pytest.fixture
def core():
    runtime = SimRuntime(seed=1)
    server = MemoryStore(runtime)
    core = SlbCore(server.client("control", latency=0.001), runtime)
    pool = Pool.parse("pods", "10.0.0.0/16", 100, "10.0.255.254", [])
    runtime.run_until_complete(server.client("cnictl").put(pool.key, pool.to_bytes()))
    runtime.run_until_complete(core.create_group(ADMIN, "web", "public sites"))
    runtime.run_until_complete(core.put_domain(ADMIN, {"name": "shop.example.com", "group": "web",
                                                       "owner": "alice", "upstreams": ["10.0.0.1:80"]}))
    return runtime, server, core


def test_slb_core_stores_weights_and_refuses_bad_ones_naming_servers(core):
    runtime, server, slb = core
    servers = ["10.0.0.1:80 weight=9 version=v1", "10.0.0.2:80 weight=1 version=v2"]
    runtime.run_until_complete(slb.set_upstreams(DISCOVERY, "web", "shop.example.com", servers))
    stored = runtime.run_until_complete(server.client("reader").get(domain_key("web", "shop.example.com")))
    assert stored is not None
    assert Domain.from_bytes(stored.value).upstreams == (Upstream("10.0.0.1", 80, 9, "v1"),
                                                         Upstream("10.0.0.2", 80, 1, "v2"))
    revision = server.revision
    for servers in (["10.0.0.1:80 weight=1001"], ["10.0.0.1:80 weight=2", "10.0.0.1:80 weight=3"],
                    ["10.0.0.1:80 version=$x"], ["127.0.0.1:80 weight=5"], ["10.1.0.1:80 weight=5"]):
        with pytest.raises(InvalidArgument) as caught:
            runtime.run_until_complete(slb.set_upstreams(DISCOVERY, "web", "shop.example.com", servers))
        assert caught.value.field == "servers", servers
    assert server.revision == revision  # nothing written


# --------------------------------------------------------------------------- the sim's split


def test_the_sim_splits_requests_by_weight_and_weight_zero_gets_none():
    runtime = SimRuntime(seed=1)
    proxy = SimProxy(runtime, "slb-1")
    v1, v2, off = Upstream("10.0.0.1", 80, 9, "v1"), Upstream("10.0.0.2", 80, 1, "v2"), Upstream("10.0.0.3", 80, 0)
    runtime.run_until_complete(proxy.apply({"shop.example.com": domain("10.0.0.1:80")}))
    reloads = proxy.reload_count
    runtime.run_until_complete(proxy.set_upstreams("shop.example.com", (v1, v2, off)))
    assert proxy.serving("shop.example.com") == (v1, v2)
    picks = [proxy.pick("shop.example.com") for _ in range(100)]
    assert picks.count(v1) == 90 and picks.count(v2) == 10 and off not in picks
    assert all(v2 in picks[i:i + 10] for i in range(0, 100, 10))  # interleaved: one v2 in every window of 10
    runtime.run_until_complete(proxy.set_upstreams("shop.example.com", (Upstream("10.0.0.1", 80, 0),)))
    assert proxy.serving("shop.example.com") == () and proxy.pick("shop.example.com") is None
    assert proxy.reload_count == reloads


def test_the_sim_serves_the_very_tuple_set_when_no_weight_is_zero():
    runtime = SimRuntime(seed=1)
    proxy = SimProxy(runtime, "slb-1")
    runtime.run_until_complete(proxy.apply({"shop.example.com": domain("10.0.0.1:80", "10.0.0.2:80")}))
    assert proxy.serving("shop.example.com") is proxy.upstreams["shop.example.com"]  # sim/traffic caches by identity
    picks = [proxy.pick("shop.example.com") for _ in range(4)]
    assert [str(u) for u in picks] == ["10.0.0.1:80", "10.0.0.2:80"] * 2


# --------------------------------------------------------------------------- request counts per version


def test_the_admin_endpoints_request_lines_parse_and_hostile_ones_are_skipped():
    text = "\n".join([
        "n|shop.example.com|v1|2xx|30", "n|shop.example.com|v1|5xx|2", "s|shop.example.com|v1|1.25",
        "n|shop.example.com||5xx|4", "s|shop.example.com||0",
        "n|SHOP|v1|2xx|1", "n|shop.example.com|V1|2xx|1", "n|shop.example.com|v1|6xx|1",
        "n|shop.example.com|v1|2xx|1.5",
        "n|shop.example.com|v1|2xx|nan", "s|shop.example.com|v2|inf", "s|shop.example.com|v2|-1", "x|a|b|c",
        "n|shop.example.com|v1|2xx", "", "n|shop.example.com|v1|2xx|1|2", "n|a..b|v1|2xx|1",
    ])
    assert parse_request_counts(text) == {
        ("shop.example.com", ""): RequestCounts({"5xx": 4}, 0.0),
        ("shop.example.com", "v1"): RequestCounts({"2xx": 30, "5xx": 2}, 1.25),
    }


class Recorder:
    """A Metrics that keeps counter totals by (name, labels)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, metric, amount=1.0, **labels):
        metric.check_labels(labels)
        key = (metric.name, tuple(sorted(labels.items())))
        self.totals[key] = self.totals.get(key, 0.0) + amount

    def set(self, metric, value, **labels):
        return None

    def observe(self, metric, value, **labels):
        return None

    def of(self, metric, **labels) -> float:
        return self.totals.get((metric.name, tuple(sorted(labels.items()))), 0.0)


def test_the_agent_copies_request_counts_as_increments_and_survives_an_nginx_restart():
    runtime = SimRuntime(seed=1)
    proxy = SimProxy(runtime, "nginx-1")
    metrics = Recorder()
    agent = SlbAgent(MemoryStore(runtime).client("nginx-1"), proxy, runtime, SlbAgentConfig("web", "nginx-1"),
                     metrics=metrics)
    v1, v2 = Upstream("10.0.0.1", 80, 9, "v1"), Upstream("10.0.0.2", 80, 1, "v2")
    labels = {"group": "web", "host": "nginx-1", "domain": "shop.example.com"}
    proxy.answered("shop.example.com", v1, 200, 0.5, requests=9)
    proxy.answered("shop.example.com", v2, 502, 0.25)
    runtime.run_until_complete(agent.copy_request_counts())
    runtime.run_until_complete(agent.copy_request_counts())  # nothing new: nothing added
    assert metrics.of(SLB_REQUESTS, **labels, version="v1", code="2xx") == 9
    assert metrics.of(SLB_REQUESTS, **labels, version="v2", code="5xx") == 1
    assert metrics.of(SLB_REQUEST_SECONDS, **labels, version="v1") == 0.5
    proxy.answered("shop.example.com", v1, 200, 0.5, requests=5)
    runtime.run_until_complete(agent.copy_request_counts())
    assert metrics.of(SLB_REQUESTS, **labels, version="v1", code="2xx") == 14
    proxy.restart()  # Nginx restarts: its counters start from zero
    proxy.answered("shop.example.com", v1, 200, 0.125, requests=2)
    runtime.run_until_complete(agent.copy_request_counts())
    assert metrics.of(SLB_REQUESTS, **labels, version="v1", code="2xx") == 16
    assert metrics.of(SLB_REQUEST_SECONDS, **labels, version="v1") == 1.125
    assert metrics.of(SLB_REQUESTS, **labels, version="v2", code="5xx") == 1


def test_the_slb_agent_passes_a_traffic_shift_to_its_proxy_in_place():
    runtime = SimRuntime(seed=1)
    server = MemoryStore(runtime)
    admin = server.client("slb-core", latency=0.001)
    pool = Pool.parse("pods", "10.0.0.0/16", 100, "10.0.255.254", [])
    proxy = SimProxy(runtime, "nginx-1")
    agent = SlbAgent(server.client("nginx-1", latency=0.001), proxy, runtime, SlbAgentConfig("web", "nginx-1"))

    async def main() -> None:
        await admin.put(pool.key, pool.to_bytes())
        record = domain("10.0.0.1:80 version=v1", "10.0.0.2:80 weight=0 version=v2")
        await admin.put(record.key, record.to_bytes())
        task = runtime.spawn(agent.run(), name="slb-agent")
        await runtime.sleep(1)
        assert proxy.reload_count == 1 and proxy.serving("shop.example.com") == (Upstream("10.0.0.1", 80, 1, "v1"),)
        for old, new in ((9, 1), (1, 1), (0, 1)):
            shifted = domain(f"10.0.0.1:80 weight={old} version=v1", f"10.0.0.2:80 weight={new} version=v2")
            await admin.put(shifted.key, shifted.to_bytes())
            await runtime.sleep(1)
            assert proxy.upstreams["shop.example.com"] == shifted.upstreams  # weights and versions unchanged
        assert proxy.reload_count == 1 and proxy.upstream_changes == 3
        assert proxy.serving("shop.example.com") == (Upstream("10.0.0.2", 80, 1, "v2"),)
        task.cancel()

    runtime.run_until_complete(main(), limit=3600)
