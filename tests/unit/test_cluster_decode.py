"""The real Cluster adapter's decoding of what an API server sends: corrupt input is invalid, never a crash.

``endpoints_of`` either returns an ``Endpoints`` whose addresses are all IPs or raises
``ValueError`` naming what was wrong; a watch event line either yields an event, is
skipped (``None``), or raises ``ClusterUnavailable`` (the consumer lists again). Driven
by hypothesis with arbitrary JSON values and text, plus the hostile cases by name.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.adapters.k8s_cluster import KubeCluster, KubeEndpointsWatch, endpoints_of, version_of_pod
from foundation.ports.cluster import ClusterUnavailable, Endpoints, EndpointsEvent

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
address = st.one_of(st.ip_addresses(v=4).map(str), st.text(max_size=15), st.integers(), st.none())
endpoints_like = st.fixed_dictionaries({
    "metadata": st.one_of(st.fixed_dictionaries({"namespace": st.text(max_size=8), "name": st.text(max_size=8)}),
                          json_values),
    "subsets": st.one_of(st.lists(st.fixed_dictionaries({
        "addresses": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({"ip": address}), json_values),
                                        max_size=3), json_values),
        "notReadyAddresses": st.lists(st.fixed_dictionaries({"ip": address}), max_size=3),
    }), max_size=3), json_values),
})


def _valid(endpoints: Endpoints) -> bool:
    for ip in endpoints.ready + endpoints.not_ready:
        ipaddress.ip_address(ip)
    return bool(endpoints.namespace and endpoints.service)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, endpoints_like))
def test_endpoints_of_returns_valid_endpoints_or_raises_value_error(obj):
    try:
        endpoints = endpoints_of(obj)
    except ValueError:
        return
    assert _valid(endpoints)


def _watch() -> KubeEndpointsWatch:
    return KubeCluster(host="http://127.0.0.1:9", timeout=1.0).watch_endpoints("1")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps),
                 st.fixed_dictionaries({"type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]),
                                        "object": st.one_of(endpoints_like, json_values)}).map(json.dumps)))
def test_a_watch_line_is_an_event_skipped_or_cluster_unavailable(line):
    watch = _watch()
    try:
        event = watch._event(line)
    except ClusterUnavailable:
        return
    assert event is None or (isinstance(event, EndpointsEvent) and _valid(event.endpoints))


@pytest.mark.parametrize("line", [
    "[" * 100_000,                                     # nested beyond the parser's recursion limit
    '{"type": "ADDED", "object": ' + "[" * 100_000,
    '{"type": "ADDED", "object": [1, 2]}',
    '{"type": "MODIFIED", "object": {"metadata": {"namespace": "a", "name": "b"}, "subsets": "x"}}',
    '{"type": "ADDED", "object": {"metadata": {"namespace": "a", "name": "b"}, '
    '"subsets": [{"addresses": [{"ip": "10.0.0.1; rm -rf"}]}]}}',
    '"just a string"',
    '{"type": ["ADDED"], "object": {}}',
])
def test_hostile_watch_lines(line):
    watch = _watch()
    try:
        assert watch._event(line) is None
    except ClusterUnavailable as exc:
        assert "unreadable watch event" in str(exc)


def test_a_bad_object_keeps_the_version_moving():
    watch = _watch()
    line = json.dumps({"type": "MODIFIED", "object": {
        "metadata": {"namespace": "a", "name": "b", "resourceVersion": "42"}, "subsets": "x"}})
    assert watch._event(line) is None
    assert watch.resource_version == "42"  # a resumed stream starts after it, not before it again


# --------------------------------------------------------------------------- versions from targetRef (issue 13)


@pytest.mark.parametrize(("name", "version"), [
    ("shop-v12-x7k2p", "v12"), ("my-shop-v3-ab12c", "v3"), ("shop-v2-v3-abcde", "v3"),
    ("shop-canary", ""), ("shop-v12", ""), ("v12-abcde", ""), ("shop-V12-abcde", ""), ("shop-v12-ABCDE", ""),
    ("shop-v1234567890-abcde", ""), ("shop-v1-" + "a" * 300, ""), (None, ""), (12, ""), (["shop-v1-a"], ""),
])
def test_the_version_of_a_pod_comes_from_its_controllers_name(name, version):
    assert version_of_pod(name) == version


def test_ready_addresses_carry_their_pods_version_and_hostile_target_refs_are_no_version():
    refs = [{"kind": "Pod", "name": "shop-v2-abcde"}, {"kind": "Service", "name": "shop-v9-abcde"}, "x", None,
            {"kind": "Pod", "name": {"$ne": 1}}, {"kind": "Pod", "name": "shop-v1-zzzzz"}]
    addresses = [{"ip": f"10.0.0.{i + 1}", "targetRef": ref} for i, ref in enumerate(refs)]
    obj = {"metadata": {"namespace": "shop", "name": "shop"},
           "subsets": [{"addresses": [*addresses[3:], {"ip": "10.0.0.1", "targetRef": refs[0]}]},
                       {"addresses": addresses[1:3],
                        "notReadyAddresses": [{"ip": "10.0.0.9", "targetRef": {"kind": "Pod",
                                                                                "name": "shop-v3-aaaaa"}}]}]}
    endpoints = endpoints_of(obj)
    assert endpoints.ready == ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")
    assert endpoints.ready_versions == ("v2", "", "", "", "", "v1")
    assert endpoints.not_ready == ("10.0.0.9",)
    assert endpoints_of({**obj, "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}).ready_versions == ()
