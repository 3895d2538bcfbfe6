"""An Nginx domain as slb-core writes it and SLB agents read it: the record, its validation, its keys.

A **group** is one Nginx cluster (public, internal, …); a **domain** is one virtual
host it proxies: server name, listen port, locations (path, timeouts, headers to
set), admin-only settings, and the upstream servers (pod addresses). Stored as JSON
at ``/slb/{group}/domains/{domain}``; each Nginx host's agent writes what it applied
at ``/slb/{group}/status/{domain}/{host}`` (by domain first: what a drain asks is
"has every host applied this domain?", one short prefix read).

Security: every field is validated here against a narrow grammar before it can
reach a config file, so no user string can become an Nginx directive: names are
DNS names, paths and header values have no whitespace, quotes, braces, semicolons,
``$`` or backslashes, settings are a closed list with a validator each. The
renderer still quotes what it writes; validation is the first line, not the only.

``changed_config`` is the rule the agents apply: when two versions of a domain
differ only in their upstream servers, the change is applied in place (no
reload); any other difference needs a render, a test and a reload.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

SLB = "/slb/"
GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PATH = re.compile(r"^/[A-Za-z0-9._~!*'()+,=@%/-]{0,255}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
HEADER_VALUE = re.compile(r"^[A-Za-z0-9 ._~!*'()+,=@%/:-]{0,256}$")
OWNER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SIZE = re.compile(r"^[0-9]{1,6}[km]?$")

# Admin-only settings: a closed list, each with the grammar of its value.
SETTINGS: dict[str, re.Pattern[str]] = {
    "client_max_body_size": SIZE,
    "proxy_buffer_size": SIZE,
    "proxy_connect_timeout": re.compile(r"^[0-9]{1,4}s?$"),
    "keepalive_timeout": re.compile(r"^[0-9]{1,4}s?$"),
    "proxy_http_version": re.compile(r"^1\.[01]$"),
}


class DomainError(ValueError):
    """A domain (or group) definition is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def check(field_name: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise DomainError(field_name, f"{value!r} is not {what}")
    return value


MAX_DOMAIN_NAME = 240  # "<name>.conf" must stay a legal file name (255 bytes)


def check_domain_name(name: Any) -> str:
    check("name", name, HOST_NAME, "a DNS name (lower case letters, digits, '-' and '.')")
    if len(name) > MAX_DOMAIN_NAME:
        raise DomainError("name", f"{name[:40]}... is longer than {MAX_DOMAIN_NAME} characters")
    if any(not _LABEL.fullmatch(label) for label in name.split(".")):
        raise DomainError("name", f"{name!r} is not a DNS name (each label 1-63 characters, no leading '-')")
    return name


def check_group(group: Any) -> str:
    return check("group", group, GROUP_NAME, "a group name ([a-z0-9-], at most 63)")


@dataclass(frozen=True, order=True)
class Upstream:
    """One back-end server: a pod address (IPv4) and port."""

    host: str
    port: int

    @staticmethod
    def parse(text: Any) -> Upstream:
        if isinstance(text, str):
            return _parse_upstream(text)  # cached: the same servers are parsed again on every domain change
        raise DomainError("upstreams", f"{text!r} is not an IPv4 address:port")

    @staticmethod
    def _parse(text: str) -> Upstream:
        if text.count(":") != 1:
            raise DomainError("upstreams", f"{text!r} is not an IPv4 address:port")
        host, _, port = text.partition(":")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise DomainError("upstreams", f"{text!r} is not an IPv4 address:port") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise DomainError("upstreams", f"{text!r} has no valid port (1-65535)")
        return Upstream(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


_parse_upstream = functools.lru_cache(maxsize=1 << 17)(Upstream._parse)  # errors are not cached


def _sorted_upstreams(upstreams: set[Upstream]) -> tuple[Upstream, ...]:
    # The dataclass order, by a key: comparing tuples is several times cheaper than generated __lt__.
    return tuple(sorted(upstreams, key=lambda u: (u.host, u.port)))


@dataclass(frozen=True)
class Location:
    path: str = "/"
    read_timeout: int = 60  # seconds; proxy_read_timeout
    set_headers: tuple[tuple[str, str], ...] = ()  # request headers set towards the upstream

    @staticmethod
    def parse(data: Any) -> Location:
        if not isinstance(data, dict):
            raise DomainError("locations", "each location must be an object")
        unknown = set(data) - {"path", "read_timeout", "set_headers"}
        if unknown:
            raise DomainError("locations", f"unknown field(s) {', '.join(sorted(unknown))}")
        path = check("locations.path", data.get("path", "/"), PATH, "a URL path starting with '/'")
        timeout = data.get("read_timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 3600:
            raise DomainError("locations.read_timeout", f"{timeout!r} is not a number of seconds in 1..3600")
        headers = data.get("set_headers", {})
        if not isinstance(headers, dict) or len(headers) > 32:
            raise DomainError("locations.set_headers", "must be an object of at most 32 headers")
        pairs = tuple(sorted(
            (check("locations.set_headers", k, HEADER_NAME, "a header name"),
             check("locations.set_headers", v, HEADER_VALUE, "a plain header value (no quotes, $, ;, {, }, \\)"))
            for k, v in headers.items()))
        return Location(path, timeout, pairs)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "read_timeout": self.read_timeout, "set_headers": dict(self.set_headers)}


@dataclass(frozen=True)
class Domain:
    name: str
    group: str
    owner: str
    listen: int = 80
    locations: tuple[Location, ...] = (Location(),)
    settings: tuple[tuple[str, str], ...] = ()
    upstreams: tuple[Upstream, ...] = field(default=())

    @staticmethod
    def parse(data: Any) -> Domain:
        """Validate a domain definition (e.g. decoded from etcd or from an API call)."""
        if not isinstance(data, dict):
            raise DomainError("domain", "must be an object")
        unknown = set(data) - {"name", "group", "owner", "listen", "locations", "settings", "upstreams"}
        if unknown:
            raise DomainError("domain", f"unknown field(s) {', '.join(sorted(unknown))}")
        name = check_domain_name(data.get("name"))
        group = check_group(data.get("group"))
        owner = check("owner", data.get("owner", ""), OWNER, "an owner name")
        listen = data.get("listen", 80)
        if isinstance(listen, bool) or not isinstance(listen, int) or not 1 <= listen <= 65535:
            raise DomainError("listen", f"{listen!r} is not a port (1-65535)")
        raw_locations = data.get("locations", [{"path": "/"}])
        if not isinstance(raw_locations, list) or not 1 <= len(raw_locations) <= 64:
            raise DomainError("locations", "must be a list of 1-64 locations")
        locations = tuple(Location.parse(item) for item in raw_locations)
        if len({loc.path for loc in locations}) != len(locations):
            raise DomainError("locations", "two locations have the same path")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise DomainError("settings", "must be an object")
        for key, value in settings.items():
            if key not in SETTINGS:
                raise DomainError("settings", f"{key!r} is not a supported setting ({', '.join(sorted(SETTINGS))})")
            check(f"settings.{key}", value, SETTINGS[key], f"a valid {key} value")
        raw_upstreams = data.get("upstreams", [])
        if not isinstance(raw_upstreams, list) or len(raw_upstreams) > 4096:
            raise DomainError("upstreams", "must be a list of at most 4096 address:port")
        upstreams = _sorted_upstreams({Upstream.parse(u) for u in raw_upstreams})
        return Domain(name, group, owner, listen, locations, tuple(sorted(settings.items())), upstreams)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "owner": self.owner, "listen": self.listen,
                "locations": [loc.to_json() for loc in self.locations], "settings": dict(self.settings),
                "upstreams": [str(u) for u in self.upstreams]}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Domain:
        return Domain.parse(json.loads(raw))

    def with_upstreams(self, upstreams: tuple[Upstream, ...]) -> Domain:
        return replace(self, upstreams=_sorted_upstreams(set(upstreams)))

    @property
    def key(self) -> str:
        return domain_key(self.group, self.name)


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
    return replace(old, upstreams=()) != replace(new, upstreams=())


def domains_prefix(group: str) -> str:
    return f"{SLB}{group}/domains/"


def domain_key(group: str, name: str) -> str:
    return f"{domains_prefix(group)}{name}"


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
        data = json.loads(raw)
        return DomainStatus(int(data["revision"]), str(data.get("error", "")), int(data.get("wanted_revision", 0)),
                            float(data.get("at", 0.0)))
