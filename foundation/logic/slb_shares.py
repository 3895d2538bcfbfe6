"""Traffic shares of a domain's versions (gray releases): the shares record and the weighting.

Record ``/slb/{group}/shares/{domain}`` (``shares_key``), written by slb-core only
(``SlbCore.set_shares``: an admin, or the platform's release controller), read by
slb-core when it writes the domain's upstreams:

    {"shares": {"v1": 90, "v2": 10}}

Each share is an integer percent 0..100, the shares sum to 100, a version is a tag of
``foundation.ports.proxy_domain.VERSION`` (the ``version=`` of an upstream), at most
``MAX_VERSIONS`` of them. ``encode_shares`` and ``decode_shares`` are the record's one
encoder and decoder; the decoder treats what it reads as hostile (any failure, wrong
type, bool for int, bad UTF-8, deep nesting, an over-long record) is a ``SharesError``.

``weigh(upstreams, shares)`` turns shares into per-server weights (Nginx's smooth
weighted round robin then splits requests by weight):

* ``shares is None`` (no record): the upstreams are returned unchanged, so domains
  that never had a release keep their bytes (weight 1 each).
* each server of version V gets a weight proportional to ``shares[V] / servers of V``
  (the version's share split evenly over its servers), scaled so that the largest is
  ``MAX_WEIGHT`` (1000) and rounded; a server whose share is > 0 gets at least 1.
* a server whose version has no share, a share of 0, or no version tag gets weight 0:
  no new requests, while requests in flight finish (the in-place drain of a version).
* when that leaves every server at 0 (no server of any version with a share: e.g.
  the shares name a version whose pods are all gone), every server gets weight 1:
  serving something beats serving nothing (Nginx would answer from its sink).

Precision: a weight is an integer, so a version's fraction of the total weight is off
from its share by at most (servers of the domain) / (total weight) (each server is
off by less than one unit). With 10 + 10 servers at 1 % that is 0.990 % instead of
1 %; a share below about ``servers of V / (10 * servers of the largest version)``
percent is raised to one unit per server.

Pure: no I/O, no clock. It must not know etcd, Nginx or who sets the shares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from foundation.ports.proxy_domain import (
    MAX_WEIGHT,
    SLB,
    VERSION,
    Upstream,
    check_domain_name,
    check_group,
    load_json,
    show,
)

MAX_VERSIONS = 16  # versions with a share in one domain's record
MAX_RECORD = 4096  # bytes of a shares record: 16 versions of 32 characters fit many times over
TOTAL = 100  # the shares are percents


class SharesError(ValueError):
    """A shares record (or the shares handed to ``encode_shares``) is invalid."""


def shares_prefix(group: str) -> str:
    return f"{SLB}{check_group(group)}/shares/"


def shares_key(group: str, domain: str) -> str:
    """Where the shares of ``domain`` in ``group`` live (both names validated: they become a key)."""
    return f"{shares_prefix(group)}{check_domain_name(domain)}"


def check_shares(shares: Any) -> dict[str, int]:
    """The shares as a plain dict sorted by version, or ``SharesError`` naming what is wrong."""
    if not isinstance(shares, Mapping):
        raise SharesError(f"shares must be an object of version -> percent, not {show(shares)}")
    if not 1 <= len(shares) <= MAX_VERSIONS:
        raise SharesError(f"shares must name 1..{MAX_VERSIONS} versions, not {len(shares)}")
    checked: dict[str, int] = {}
    for version, percent in shares.items():
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            raise SharesError(f"{show(version)} is not a version tag ([a-z0-9][a-z0-9.-], at most 32)")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= TOTAL:
            raise SharesError(f"the share of {version} is {show(percent)}, not an integer in 0..{TOTAL}")
        checked[version] = percent
    total = sum(checked.values())
    if total != TOTAL:
        raise SharesError(f"shares must sum to {TOTAL}, not {total}")
    return dict(sorted(checked.items()))


def encode_shares(shares: Mapping[str, int]) -> bytes:
    """The record's bytes (validated first: nothing invalid is ever written); one spelling per value."""
    return json.dumps({"shares": check_shares(shares)}, sort_keys=True, separators=(",", ":")).encode()


def decode_shares(raw: bytes) -> dict[str, int]:
    """Decode a record read from the Store; any failure is a ``SharesError``."""
    if len(raw) > MAX_RECORD:
        raise SharesError(f"record of {len(raw)} bytes is longer than {MAX_RECORD}")
    try:
        data = load_json(raw)
    except ValueError as exc:
        raise SharesError(f"record is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"shares"}:
        raise SharesError("record must be an object with the one field 'shares'")
    return check_shares(data["shares"])


def weigh(upstreams: tuple[Upstream, ...], shares: Mapping[str, int] | None) -> tuple[Upstream, ...]:
    """``upstreams`` with weights that split requests between versions by ``shares`` (see the docstring).

    The order of ``upstreams`` is kept; only weights change.
    """
    if shares is None:
        return upstreams
    servers: dict[str, int] = {}
    for upstream in upstreams:
        if upstream.version and shares.get(upstream.version, 0) > 0:
            servers[upstream.version] = servers.get(upstream.version, 0) + 1
    if not servers:  # nobody has a share: weight 1 for all rather than every request to the sink
        return tuple(replace(u, weight=1) for u in upstreams)
    per_server = {version: shares[version] / count for version, count in servers.items()}
    largest = max(per_server.values())
    weight_of = {version: max(1, round(MAX_WEIGHT * value / largest)) for version, value in per_server.items()}
    return tuple(replace(u, weight=weight_of.get(u.version, 0) if u.version else 0) for u in upstreams)
