"""Requests per app version as each Nginx host counted them: the traffic record.

Record ``/slb/{group}/traffic/{host}`` (``traffic_key``), one per Nginx host, written
by that host's SLB agent under its lease (gone when the host is), read by the
platform's release controller to compare a new version with the old one:

    {"epoch": 2, "at": 1234.5,
     "domains": {"shop.example.com": {"v1": {"requests": 9000, "errors": 3, "seconds": 41.2},
                                      "v2": {"requests": 90, "errors": 0, "seconds": 0.4}}}}

For every domain whose upstreams carry a version tag: per version, the requests its
servers answered, how many of them were errors (5xx) and the sum of their request
times in seconds, all **cumulative since this Nginx started** (``Proxy.request_counts``).
A reader takes differences between two readings; a count that went down means Nginx
restarted, which the writer also says by adding 1 to ``epoch`` whenever it read a count
lower than at its previous read (so a reader that missed the writer's low reading, and
now sees counts past the old values, still knows). A restart the writer did not see
either (Nginx counted past its old values within one writing interval) is counted as
the difference: fewer requests than were made, never more. ``at`` is the
writer's clock (``runtime.now()``) when it read the counts: only comparable with other
readings of the same host. Requests without a version tag are not recorded.

``encode_traffic`` / ``decode_traffic`` are the record's one encoder and decoder; the
decoder treats what it reads as hostile (the host name comes from the key and is
validated; counts are bounded non-negative integers, errors never above requests;
seconds finite and non-negative; at most ``MAX_DOMAINS`` domains of ``MAX_VERSIONS``
versions; any failure is a ``TrafficError``).

Pure: no I/O, no clock. It must not know etcd, Nginx or releases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundation.ports.proxy_domain import (
    HOST_NAME,
    SLB,
    VERSION,
    DomainError,
    check_domain_name,
    check_group,
    load_json,
    show,
)

MAX_DOMAINS = 4096  # domains of one record (a group's domains; more are left out by the writer)
MAX_VERSIONS = 16  # versions of one domain
MAX_COUNT = 2**53  # requests and errors: exact in every JSON reader
MAX_RECORD = 4 * 1024 * 1024  # bytes of one record


class TrafficError(ValueError):
    """A traffic record (or a key naming one) is invalid."""


@dataclass(frozen=True)
class VersionCounts:
    requests: int
    errors: int  # 5xx answers, part of requests
    seconds: float  # sum of the requests' times


@dataclass(frozen=True)
class HostTraffic:
    host: str
    epoch: int  # +1 each time the writer saw a count go down (Nginx restarted)
    at: float  # the writer's runtime.now() when it read the counts
    domains: Mapping[str, Mapping[str, VersionCounts]]  # domain -> version -> counts


def traffic_prefix(group: str) -> str:
    try:
        return f"{SLB}{check_group(group)}/traffic/"
    except DomainError as exc:
        raise TrafficError(str(exc)) from None


def traffic_key(group: str, host: str) -> str:
    return f"{traffic_prefix(group)}{_check_host(host)}"


def _check_host(host: Any) -> str:
    if not isinstance(host, str) or not HOST_NAME.fullmatch(host):
        raise TrafficError(f"host {show(host)} is not a host name ([a-z0-9.-])")
    return host


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise TrafficError(f"{where}: {show(value)} is not an integer in 0..2**53")
    return value


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise TrafficError(f"{where}: {show(value)} is not a finite number >= 0")
    return float(value)


def _counts(where: str, data: Any) -> VersionCounts:
    if not isinstance(data, dict) or set(data) != {"requests", "errors", "seconds"}:
        raise TrafficError(f"{where}: must be an object of requests, errors and seconds")
    requests = _count(f"{where}.requests", data["requests"])
    errors = _count(f"{where}.errors", data["errors"])
    if errors > requests:
        raise TrafficError(f"{where}: {errors} errors out of {requests} requests")
    return VersionCounts(requests, errors, _seconds(f"{where}.seconds", data["seconds"]))


def _domains(data: Any) -> dict[str, dict[str, VersionCounts]]:
    if not isinstance(data, dict) or len(data) > MAX_DOMAINS:
        raise TrafficError(f"domains must be an object of at most {MAX_DOMAINS} domains")
    domains: dict[str, dict[str, VersionCounts]] = {}
    for name, versions in data.items():
        try:
            check_domain_name(name)
        except DomainError as exc:
            raise TrafficError(f"domains: {exc}") from None
        if not isinstance(versions, dict) or not 1 <= len(versions) <= MAX_VERSIONS:
            raise TrafficError(f"domains.{name}: must be an object of 1..{MAX_VERSIONS} versions")
        checked: dict[str, VersionCounts] = {}
        for version, counts in versions.items():
            if not isinstance(version, str) or not VERSION.fullmatch(version):
                raise TrafficError(f"domains.{name}: {show(version)} is not a version tag")
            checked[version] = _counts(f"domains.{name}.{version}", counts)
        domains[name] = dict(sorted(checked.items()))
    return dict(sorted(domains.items()))


def _to_json(traffic: HostTraffic) -> dict[str, Any]:
    return {"epoch": traffic.epoch, "at": traffic.at,
            "domains": {name: {version: {"requests": c.requests, "errors": c.errors, "seconds": c.seconds}
                               for version, c in versions.items()}
                        for name, versions in traffic.domains.items()}}


def encode_traffic(traffic: HostTraffic) -> bytes:
    """The record's bytes, checked by the decoder's rules first: nothing invalid is ever written."""
    _check_host(traffic.host)
    _count("epoch", traffic.epoch)
    _seconds("at", traffic.at)
    data = _to_json(traffic)
    _domains(data["domains"])
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def decode_traffic(key: str, raw: bytes) -> HostTraffic:
    """Decode the record at ``key`` (its last part is the host); any failure is a ``TrafficError``."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 5 or parts[:2] != ["", SLB.strip("/")] or parts[3] != "traffic":
        raise TrafficError(f"{show(key)} is not a traffic key (/slb/{{group}}/traffic/{{host}})")
    host = _check_host(parts[4])
    if len(raw) > MAX_RECORD:
        raise TrafficError(f"record of {len(raw)} bytes is longer than {MAX_RECORD}")
    try:
        data = load_json(raw)
    except ValueError as exc:
        raise TrafficError(f"record is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"epoch", "at", "domains"}:
        raise TrafficError("record must be an object of epoch, at and domains")
    return HostTraffic(host, _count("epoch", data["epoch"]), _seconds("at", data["at"]), _domains(data["domains"]))
