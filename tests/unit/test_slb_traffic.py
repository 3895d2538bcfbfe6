"""The traffic record (issue 13): requests, errors and seconds per app version, per Nginx host, validated."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.logic.slb_traffic import (
    HostTraffic,
    TrafficError,
    VersionCounts,
    decode_traffic,
    encode_traffic,
    traffic_key,
    traffic_prefix,
)

KEY = "/slb/web/traffic/nginx-1"
TRAFFIC = HostTraffic("nginx-1", 2, 1234.5, {
    "shop.example.com": {"v2": VersionCounts(90, 0, 0.4), "v1": VersionCounts(9000, 3, 41.25)},
    "api.example.com": {"v7": VersionCounts(0, 0, 0.0)},
})


def record(**fields) -> bytes:
    data = {"epoch": 1, "at": 5.0, "domains": {"a.example.com": {"v1": {"requests": 3, "errors": 1, "seconds": 0.5}}}}
    data.update(fields)
    return json.dumps(data).encode()


def test_keys():
    assert traffic_prefix("web") == "/slb/web/traffic/"
    assert traffic_key("web", "nginx-1") == KEY


def test_the_record_round_trips_sorted_and_the_host_comes_from_the_key():
    raw = encode_traffic(TRAFFIC)
    assert raw.startswith(b'{"at":1234.5,"domains":{"api.example.com":{"v7":')
    decoded = decode_traffic(KEY, raw)
    assert decoded == TRAFFIC
    assert list(decoded.domains) == ["api.example.com", "shop.example.com"]
    assert list(decoded.domains["shop.example.com"]) == ["v1", "v2"]
    assert encode_traffic(decoded) == raw
    assert decode_traffic("/slb/web/traffic/nginx-9", raw).host == "nginx-9"


@pytest.mark.parametrize("traffic", [
    HostTraffic("Nginx", 0, 0.0, {}),
    HostTraffic("nginx-1", -1, 0.0, {}),
    HostTraffic("nginx-1", 0, float("nan"), {}),
    HostTraffic("nginx-1", 0, 0.0, {"a.example.com": {"v1": VersionCounts(1, 2, 0.0)}}),
    HostTraffic("nginx-1", 0, 0.0, {"a.example.com": {"": VersionCounts(1, 0, 0.0)}}),
    HostTraffic("nginx-1", 0, 0.0, {"a.example.com": {}}),
    HostTraffic("nginx-1", 0, 0.0, {"-bad-": {"v1": VersionCounts(1, 0, 0.0)}}),
])
def test_invalid_traffic_is_never_encoded(traffic):
    with pytest.raises(TrafficError):
        encode_traffic(traffic)


@pytest.mark.parametrize(("key", "raw"), [
    ("/slb/web/traffic/Bad_Host", record()),
    ("/slb/web/hosts/nginx-1", record()),
    ("/slb/web/traffic/a/b", record()),
    (KEY, b""), (KEY, b"[]"), (KEY, b"[" * 100_000), (KEY, b"\xff"),
    (KEY, record(extra=1)), (KEY, record(epoch=-1)), (KEY, record(epoch=True)), (KEY, record(epoch=1.5)),
    (KEY, record(at="5")), (KEY, record(at=-1)), (KEY, b'{"epoch":1,"at":Infinity,"domains":{}}'),
    (KEY, record(domains=[])), (KEY, record(domains={"a.example.com": {}})),
    (KEY, record(domains={"a.example.com": {"V1": {"requests": 1, "errors": 0, "seconds": 0}}})),
    (KEY, record(domains={"../x": {"v1": {"requests": 1, "errors": 0, "seconds": 0}}})),
    (KEY, record(domains={"a.example.com": {"v1": {"requests": 1, "errors": 2, "seconds": 0}}})),
    (KEY, record(domains={"a.example.com": {"v1": {"requests": 2**60, "errors": 0, "seconds": 0}}})),
    (KEY, record(domains={"a.example.com": {"v1": {"requests": 1, "errors": 0, "seconds": -0.1}}})),
    (KEY, record(domains={"a.example.com": {"v1": {"requests": 1, "errors": 0}}})),
    (KEY, record(domains={"a.example.com": {"v1": [1, 0, 0]}})),
    (KEY, record(domains={"a.example.com": {f"v{i}": {"requests": 1, "errors": 0, "seconds": 0}
                                            for i in range(17)}})),
    (KEY, b'{"epoch":1,"at":1,"domains":{},"epoch":' + b"9" * 5000 + b"}"),
])
def test_hostile_records_are_a_traffic_error(key, raw):
    with pytest.raises(TrafficError):
        decode_traffic(key, raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_a_traffic_error(raw):
    with contextlib.suppress(TrafficError):
        decode_traffic(KEY, raw)


counts = st.builds(lambda r, e, s: VersionCounts(r, min(e, r), s), st.integers(0, 2**53), st.integers(0, 2**53),
                   st.floats(0, 1e12, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a.example.com", "b.example.com", "c"]),
                       st.dictionaries(st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,31}\Z"), counts, min_size=1,
                                       max_size=16), max_size=3),
       st.integers(0, 2**53), st.floats(0, 1e9, allow_nan=False))
def test_every_valid_record_round_trips(domains, epoch, at):
    traffic = HostTraffic("nginx-1", epoch, at, domains)
    assert decode_traffic(KEY, encode_traffic(traffic)) == traffic
