"""The SLB records around a domain: keys of hosts and statuses, the status record, the change rule.

A **group** is one Nginx cluster (public, internal, …); a **domain** is one virtual
host it proxies. The domain record itself (its fields, grammar and JSON, at
``/slb/{group}/domains/{domain}``) is the Proxy port's data type and lives in
``foundation.ports.proxy_domain``; it is re-exported here so SLB code has one module
to import. Each Nginx host's agent writes what it applied at
``/slb/{group}/status/{domain}/{host}`` (by domain first: what a drain asks is
"has every host applied this domain?", one short prefix read).

``changed_config`` is the rule the agents apply: when two versions of a domain
differ only in their upstream servers (which servers, their weights or version
tags: a gray release's traffic shift is one of these), or in who may set them, the
change is applied in place (no reload); any other difference needs a render, a test
and a reload.

Upstream addresses must lie in a registered pod pool (``cni.pod_pools``) and never
be loopback, link-local, multicast or reserved (``check_routable``): checked by
slb-core and again by every SLB agent.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
from dataclasses import dataclass, replace

from foundation.ports.proxy_domain import (
    GROUP_NAME,
    HEADER_NAME,
    HEADER_VALUE,
    HOST_NAME,
    MAX_DOMAIN_NAME,
    MAX_SHOWN,
    MAX_UPSTREAMS,
    MAX_WEIGHT,
    OWNER,
    PATH,
    PORT,
    SETTINGS,
    SIZE,
    SLB,
    UPSTREAMS_BY,
    Domain,
    DomainError,
    Location,
    Upstream,
    check,
    check_domain_name,
    check_group,
    domain_key,
    domains_prefix,
    load_json,
    show,
)

__all__ = [  # the domain record's names are re-exported (see the docstring)
    "GROUP_NAME", "HEADER_NAME", "HEADER_VALUE", "HOST_NAME", "MAX_DOMAIN_NAME", "MAX_SHOWN", "MAX_UPSTREAMS",
    "MAX_WEIGHT",
    "OWNER", "PATH", "PORT", "SETTINGS", "SIZE", "SLB", "UPSTREAMS_BY", "Domain", "DomainError", "DomainStatus",
    "Location", "Upstream", "changed_config", "check", "check_domain_name", "check_group", "check_routable",
    "domain_key", "domain_status_prefix", "domains_prefix", "host_key", "hosts_prefix", "load_json", "show",
    "status_key", "status_prefix",
]


def check_routable(upstreams: tuple[Upstream, ...]) -> None:
    """Refuse upstreams an API caller must never point Nginx at.

    Loopback, unspecified, link-local, multicast and reserved addresses would let a
    domain's owner reach services on the Nginx host itself (its admin endpoint, a local
    etcd) or nothing at all: pods never have such addresses.
    """
    for upstream in upstreams:
        if not _routable(upstream.host):
            raise DomainError("upstreams", f"{upstream} is not a pod address (loopback, link-local, multicast "
                                           f"and reserved ranges are refused)")

@functools.lru_cache(maxsize=1 << 17)
def _routable(host: str) -> bool:
    address = ipaddress.IPv4Address(host)
    return not (address.is_loopback or address.is_unspecified or address.is_link_local or address.is_multicast
                or address.is_reserved)

def changed_config(old: Domain | None, new: Domain | None) -> bool:
    """True when going from ``old`` to ``new`` needs a render + test + reload (not just upstreams)."""
    if old is None or new is None:
        return old is not new
    # upstreams_by is a rule of slb-core's, nothing Nginx renders; upstreams (weights included) live in the
    # shared dict, never in a file.
    return replace(old, upstreams=(), upstreams_by="") != replace(new, upstreams=(), upstreams_by="")

def hosts_prefix(group: str) -> str:
    return f"{SLB}{group}/hosts/"


def host_key(group: str, host: str) -> str:
    """Where an SLB agent registers itself (leased): drains wait for every host registered here."""
    return f"{hosts_prefix(group)}{host}"


def status_prefix(group: str) -> str:
    return f"{SLB}{group}/status/"


def domain_status_prefix(group: str, domain: str) -> str:
    """The status records of one domain, one per Nginx host (a DNS name holds no '/')."""
    return f"{status_prefix(group)}{domain}/"


def status_key(group: str, host: str, domain: str) -> str:
    return f"{domain_status_prefix(group, domain)}{host}"


@dataclass(frozen=True)
class DomainStatus:
    """What one Nginx host applied for one domain."""

    revision: int  # mod_revision of the domain record that is in force on this host
    error: str = ""  # why the latest revision was not applied ("" when it was)
    wanted_revision: int = 0  # the latest revision seen (== revision when all is well)
    at: float = 0.0  # wall time

    def to_bytes(self) -> bytes:
        return json.dumps({"revision": self.revision, "error": self.error, "wanted_revision": self.wanted_revision,
                           "at": self.at}, sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> DomainStatus:
        """Decode a status record; anything but the shape ``to_bytes`` writes is a ``ValueError``."""
        data = load_json(raw)
        if not isinstance(data, dict):
            raise ValueError("a status record must be a JSON object")
        revision = _status_revision("revision", data.get("revision"))
        wanted = _status_revision("wanted_revision", data.get("wanted_revision", 0))
        error, at = data.get("error", ""), data.get("at", 0.0)
        if not isinstance(error, str):
            raise ValueError(f"error {show(error)} is not a string")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError(f"at {show(at)} is not a time")
        return DomainStatus(revision, error[:4096], wanted, float(at))


def _status_revision(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{name} {show(value)} is not a revision")
    return value
