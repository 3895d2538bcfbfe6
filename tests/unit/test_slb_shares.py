"""Traffic shares (issue 13, gray releases): the shares record and ``weigh``, which turns shares into weights.

Weights are what Nginx's smooth weighted round robin splits requests by, so a version's
fraction of the total weight is the fraction of requests it gets.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation.logic.slb_domain import MAX_WEIGHT, DomainError, Upstream
from foundation.logic.slb_shares import (
    MAX_VERSIONS,
    SharesError,
    decode_shares,
    encode_shares,
    shares_key,
    weigh,
)


def servers(version: str, count: int, first: int = 1) -> tuple[Upstream, ...]:
    return tuple(Upstream(f"10.0.{first // 250}.{first % 250 + i}", 80, 1, version) for i in range(count))


def fraction(weighted: tuple[Upstream, ...], version: str) -> float:
    total = sum(u.weight for u in weighted)
    return sum(u.weight for u in weighted if u.version == version) / total


# --------------------------------------------------------------------------- weigh


@pytest.mark.parametrize("new_share", [1, 10, 50, 100])
@pytest.mark.parametrize(("old_count", "new_count"), [(10, 10), (10, 3), (3, 10), (7, 1), (1, 5)])
def test_each_version_gets_its_share_of_the_weight_within_one_percent(new_share, old_count, new_count):
    upstreams = servers("v1", old_count) + servers("v2", new_count, first=500)
    weighted = weigh(upstreams, {"v1": 100 - new_share, "v2": new_share})
    assert [u.address for u in weighted] == [u.address for u in upstreams]  # order kept, only weights change
    assert max(u.weight for u in weighted) == MAX_WEIGHT
    got = fraction(weighted, "v2") * 100
    assert abs(got - new_share) <= 0.01 * new_share, (got, [u.weight for u in weighted])
    if new_share == 100:
        assert all(u.weight == 0 for u in weighted if u.version == "v1")  # the old version drained in place


def test_ten_plus_ten_servers_at_one_percent_weigh_1000_and_10():
    weighted = weigh(servers("v1", 10) + servers("v2", 10, first=500), {"v1": 99, "v2": 1})
    assert {u.version: u.weight for u in weighted} == {"v1": 1000, "v2": 10}


def test_servers_without_a_share_or_a_tag_get_weight_zero():
    upstreams = servers("v1", 2) + servers("v2", 2, first=500) + servers("v3", 1, first=600) + servers("", 1, 700)
    weighted = weigh(upstreams, {"v1": 100, "v2": 0})
    assert {u.address: u.weight for u in weighted} == {
        "10.0.0.1:80": 1000, "10.0.0.2:80": 1000,  # v1: the whole share
        "10.0.2.0:80": 0, "10.0.2.1:80": 0,  # v2: share 0
        "10.0.2.100:80": 0,  # v3: no share at all
        "10.0.2.200:80": 0,  # no version tag
    }


def test_a_tiny_share_still_gets_one_unit_per_server():
    weighted = weigh(servers("v1", 30) + servers("v2", 1, first=500), {"v1": 1, "v2": 99})
    assert {u.version: u.weight for u in weighted} == {"v1": 1, "v2": 1000}


def test_when_no_server_has_a_share_every_server_gets_weight_one():
    upstreams = servers("v1", 2) + servers("", 1, first=500)
    assert [u.weight for u in weigh(upstreams, {"v9": 100})] == [1, 1, 1]
    zeroed = tuple(Upstream(u.host, u.port, 0, u.version) for u in upstreams)
    assert [u.weight for u in weigh(zeroed, {"v9": 100})] == [1, 1, 1]


def test_no_shares_record_leaves_the_upstreams_untouched():
    upstreams = (*servers("v1", 2), Upstream("10.0.9.9", 80, 7, ""))
    assert weigh(upstreams, None) is upstreams
    assert weigh((), {"v1": 100}) == ()


share_splits = st.lists(st.integers(0, 100), min_size=2, max_size=4).filter(lambda xs: sum(xs) > 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(share_splits, st.lists(st.integers(1, 20), min_size=4, max_size=4))
def test_every_version_gets_its_share_within_one_unit_of_weight_per_server(raw, counts):
    # Shares that sum to exactly 100: the last version takes the remainder of the rounded others.
    total = sum(raw)
    shares = {f"v{i}": value * 100 // total for i, value in enumerate(raw)}
    shares[f"v{len(raw) - 1}"] += 100 - sum(shares.values())
    upstreams: tuple[Upstream, ...] = ()
    for i, _ in enumerate(raw):
        upstreams += servers(f"v{i}", counts[i], first=100 * i)
    weighted = weigh(upstreams, shares)
    weight_total = sum(u.weight for u in weighted)
    bound = len(upstreams) / weight_total  # each server is off by less than one unit of weight
    for version, share in shares.items():
        got = fraction(weighted, version)
        assert abs(got - share / 100) <= bound, (version, share, got, bound)
        if share == 0:
            assert all(u.weight == 0 for u in weighted if u.version == version)
        else:
            assert all(u.weight >= 1 for u in weighted if u.version == version)
    assert max(u.weight for u in weighted) == MAX_WEIGHT


# --------------------------------------------------------------------------- the record


def test_the_record_round_trips_with_one_spelling():
    raw = encode_shares({"v2": 10, "v1": 90})
    assert raw == b'{"shares":{"v1":90,"v2":10}}'
    assert decode_shares(raw) == {"v1": 90, "v2": 10}
    assert shares_key("web", "shop.example.com") == "/slb/web/shares/shop.example.com"


@pytest.mark.parametrize("shares", [
    {}, {"v1": 99}, {"v1": 101, "v2": -1}, {"v1": 50.0, "v2": 50}, {"v1": True, "v2": 99}, {"V1": 100},
    {"v1;": 100}, {"": 100}, {"a" * 33: 100}, {f"v{i}": 5 for i in range(20)}, {"v1": "100"}, [("v1", 100)],
])
def test_invalid_shares_are_never_encoded(shares):
    with pytest.raises(SharesError):
        encode_shares(shares)


@pytest.mark.parametrize("raw", [
    b"", b"null", b"[]", b"{}", b'{"shares":{"v1":100},"x":1}', b'{"shares":[]}', b'{"shares":{"v1":99}}',
    b'{"shares":{"v1":1e2}}', b'{"shares":{"v1":true}}', b'{"shares":{"v1":100,"v1 ":0}}',
    b'{"shares":{"v1":' + b"9" * 5000 + b"}}", b"[" * 100_000, b"\xff\xfe", b'{"shares":{"../x":100}}',
    b'{"shares":{"v1":100000000000000000000000,"v2":-99999999999999999999900}}',
])
def test_hostile_records_are_a_shares_error(raw):
    with pytest.raises(SharesError):
        decode_shares(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_decode_or_raise_a_shares_error(raw):
    try:
        shares = decode_shares(raw)
    except SharesError:
        return
    assert sum(shares.values()) == 100 and 1 <= len(shares) <= MAX_VERSIONS


@pytest.mark.parametrize(("group", "domain"), [("Web", "a.example.com"), ("web", "../etc"), ("web/x", "a.b")])
def test_a_key_is_only_made_of_valid_names(group, domain):
    with pytest.raises(DomainError):
        shares_key(group, domain)
