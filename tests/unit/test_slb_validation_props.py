"""Property tests (hypothesis): slb-core's domain and upstream validation under hostile input (issue 9).

Whatever a caller sends or etcd holds, validation answers with a ``DomainError`` /
``InvalidArgument`` that names a field, or accepts a value that round-trips; never
another exception (a RecursionError, an int conversion ValueError, a TypeError from
sorting mixed keys), and accepted upstreams are always pod addresses in ASCII.
"""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni.pod_pools import POOLS, PodPools
from cni.pools import Pool
from control.auth import Principal
from control.slb_core import InvalidArgument, SlbCore
from foundation.logic.slb_domain import Domain, DomainError, DomainStatus, Upstream
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

FIELDS = {"domain", "record", "name", "group", "owner", "listen", "locations", "locations.path",
          "locations.read_timeout", "locations.set_headers", "settings", "upstreams", "upstreams_by"}
SETTINGS_FIELDS = {f"settings.{k}" for k in ("client_max_body_size", "proxy_buffer_size", "proxy_connect_timeout",
                                             "keepalive_timeout", "proxy_http_version")}
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Digits of other scripts, which str.isdigit() and int() accept: the trap of the old parser.
UNICODE_DIGITS = "\u00b2\u00b3\u00b9\u0660\u0668\u06f5\u0966\u09e6\uff10\uff18\U0001d7ce"
ascii_or_digit = st.sampled_from("0123456789.:" + UNICODE_DIGITS + " \n+-x")
hostile_text = st.one_of(st.text(max_size=40), st.text(ascii_or_digit, max_size=30), st.text(min_size=200,
                                                                                           max_size=400))
huge_int = st.one_of(st.integers(), st.integers(min_value=10 ** 30, max_value=10 ** 60),
                     st.just(10 ** 4000), st.just(-(10 ** 4000)))
scalars = st.one_of(st.none(), st.booleans(), huge_int, st.floats(allow_nan=True), hostile_text)
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.one_of(hostile_text, st.integers()),
                                                                          inner, max_size=4)), max_leaves=30)


def upstream_text() -> st.SearchStrategy[str]:
    octet = st.one_of(st.integers(0, 300).map(str), st.text(ascii_or_digit, min_size=1, max_size=4))
    port = st.one_of(st.integers(-5, 70000).map(str), st.text(ascii_or_digit, min_size=0, max_size=7))
    return st.one_of(st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}:{p}", octet, octet, octet, octet, port),
                     hostile_text)


def domains() -> st.SearchStrategy[object]:
    """Dicts near a valid domain: every field may be replaced by something hostile."""
    field = {
        "name": st.one_of(st.just("shop.example.com"), hostile_text, json_like),
        "group": st.one_of(st.just("web"), hostile_text, json_like),
        "owner": st.one_of(st.just("alice"), hostile_text, json_like),
        "listen": st.one_of(st.integers(0, 70000), huge_int, json_like),
        "locations": st.one_of(st.just([{"path": "/"}]), json_like,
                               st.lists(st.dictionaries(st.sampled_from(["path", "read_timeout", "set_headers", "x"]),
                                                        json_like, max_size=3), max_size=3)),
        "settings": st.one_of(st.just({}), json_like,
                              st.dictionaries(st.sampled_from(["client_max_body_size", "keepalive_timeout", "x"]),
                                              st.one_of(hostile_text, json_like), max_size=2)),
        "upstreams": st.one_of(st.lists(upstream_text(), max_size=5), json_like),
        "upstreams_by": st.one_of(st.sampled_from(["discovery", "owner"]), hostile_text, json_like),
        "extra": json_like,
    }
    return st.one_of(json_like, st.fixed_dictionaries({}, optional=field))


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@PROPS
@given(domains())
def test_domain_parse_accepts_or_names_a_field(data):
    try:
        domain = Domain.parse(data)
    except DomainError as exc:
        assert exc.field in FIELDS | SETTINGS_FIELDS and str(exc).startswith(f"{exc.field}: ")
        assert len(str(exc)) < 400  # echoed values are cut
        return
    assert Domain.parse(json.loads(domain.to_bytes())) == domain  # what is accepted round-trips


@PROPS
@given(upstream_text())
def test_upstream_parse_accepts_only_ascii_canonical_addresses(text):
    try:
        upstream = Upstream.parse(text)
    except DomainError as exc:
        assert exc.field == "upstreams"
        return
    assert str(upstream) == text and text.isascii() and 1 <= upstream.port <= 65535


@PROPS
@given(st.one_of(st.binary(max_size=300), json_like.map(lambda v: json.dumps(v).encode()),
                 st.sampled_from([b"[" * 100_000, b'{"a":' * 100_000, json.dumps(_nested(50)).encode(),
                                  b'{"listen":' + b"9" * 5000 + b"}"])))
def test_stored_bytes_decode_to_a_domain_or_a_domain_error(raw):
    try:
        Domain.from_bytes(raw)
    except DomainError as exc:
        assert exc.field in FIELDS | SETTINGS_FIELDS
    with contextlib.suppress(ValueError):
        DomainStatus.from_bytes(raw)


class _KV:
    def __init__(self, key: str, value: bytes, revision: int = 1) -> None:
        self.key, self.value, self.mod_revision = key, value, revision


@PROPS
@given(st.lists(st.tuples(st.one_of(st.just("p"), hostile_text), st.one_of(
    st.binary(max_size=200), json_like.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda c, g: json.dumps({"name": "p", "cidr": c, "gateway": g, "exclude": []}).encode(),
              hostile_text, hostile_text))), max_size=4), st.lists(upstream_text(), max_size=5))
def test_the_pool_check_never_raises_and_lets_only_pool_addresses_through(records, servers):
    pools = PodPools.of([_KV(f"{POOLS}{name}", raw) for name, raw in records], 7)
    parsed = []
    for text in servers:
        with contextlib.suppress(DomainError):
            parsed.append(Upstream.parse(text))
    outside = set(pools.outside(parsed))
    for upstream in parsed:
        assert (upstream in outside) == (pools.pool_of(upstream.host) is None)


ADMIN, DISCOVERY = Principal("ops", "admin"), Principal("discovery", "discovery")


class _World:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=3)
        self.server = MemoryStore(self.rt)
        self.core = SlbCore(self.server.client("control", latency=0.001), self.rt)
        pool = Pool.parse("pods", "10.0.0.0/16", 100, "10.0.255.254")

        async def setup():
            await self.server.client("cnictl").put(pool.key, pool.to_bytes())
            await self.core.create_group(ADMIN, "web")
            await self.core.put_domain(ADMIN, {"name": "shop.example.com", "group": "web"})

        self.rt.run_until_complete(setup())


_world = None


def world() -> _World:
    global _world
    if _world is None:
        _world = _World()
    return _world


@PROPS
@given(st.one_of(st.lists(upstream_text(), max_size=6), json_like))
def test_set_upstreams_answers_invalid_argument_on_servers_or_stores_pod_addresses(servers):
    w = world()
    try:
        w.rt.run_until_complete(w.core.set_upstreams(DISCOVERY, "web", "shop.example.com", servers))
    except InvalidArgument as exc:
        assert exc.field == "servers" and len(str(exc)) < 600
        return
    stored = w.rt.run_until_complete(w.core.get_domain(DISCOVERY, "web", "shop.example.com")).domain
    assert all(u.host.startswith("10.0.") and u.host != "10.0.255.254" for u in stored.upstreams)


@PROPS
@given(domains())
def test_put_domain_answers_invalid_argument_naming_a_field_or_stores_it(data):
    w = world()
    if isinstance(data, dict):
        data = {**data, "group": "web"} if data.get("group") == "web" else data
    try:
        w.rt.run_until_complete(w.core.put_domain(ADMIN, data))
    except InvalidArgument as exc:
        assert exc.field in FIELDS | SETTINGS_FIELDS and len(str(exc)) < 600
    except Exception as exc:  # only the typed, expected outcomes of a valid-looking request
        assert type(exc).__name__ in ("NotFound", "QuotaExceeded"), repr(exc)
