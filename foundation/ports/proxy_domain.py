"""The Proxy port's data: an Nginx domain, its locations and upstream servers, validated.

A **domain** is one virtual host an Nginx group proxies: server name, listen port,
locations (path, timeouts, headers to set), admin-only settings, and the upstream
servers (pod addresses). slb-core writes it as JSON at ``/slb/{group}/domains/{name}``
(``domain_key``); every SLB agent decodes it (``Domain.from_bytes``) and hands it to
its ``Proxy``. The record is defined here, once, because the Proxy port speaks it:
ports are the bottom layer and import nothing of the project above them. The SLB
keys, statuses and change rule built on it are in ``foundation.logic.slb_domain``.

Security: every field is validated here against a narrow grammar before it can
reach a config file, so no user string can become an Nginx directive: names are
DNS names, paths and header values have no whitespace, quotes, braces, semicolons,
``$`` or backslashes, settings are a closed list with a validator each. The
renderer still quotes what it writes; validation is the first line, not the only.

Who sets upstreams: ``upstreams_by`` is ``"discovery"`` (the default: only the
discovery role and admins) or ``"owner"`` (an admin let the domain's owner set them
too).

Records read back from etcd are decoded with ``load_json``: any failure (bad
UTF-8, bad JSON, nesting too deep for the decoder, an integer too long to convert)
is a ``ValueError``, never a ``RecursionError`` that would take an agent down.
Numbers written as text (ports, sizes) are ASCII digits only: ``str.isdigit``
accepts ``²`` and ``٨``, which ``int`` then rejects or silently converts.

Pure: no I/O, no clock. It must not know etcd, Nginx or the agents.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
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
PORT = re.compile(r"^[0-9]{1,5}$")  # ASCII only: [0-9] is a code point range, unlike \d or isdigit()
UPSTREAMS_BY = ("discovery", "owner")  # who besides admins may set a domain's upstreams
MAX_UPSTREAMS = 4096
MAX_WEIGHT = 1000  # an upstream's traffic weight: 0 (no new requests) .. MAX_WEIGHT
WEIGHT = re.compile(r"^(0|[1-9][0-9]{0,3})$")  # ASCII digits, no leading zero: one spelling per weight
VERSION = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")  # an upstream's version tag (e.g. "v12")
MAX_UPSTREAM_TEXT = len("255.255.255.255:65535 weight=1000 version=") + 32
MAX_SHOWN = 80  # characters of an offending value echoed in an error

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


def show(value: Any) -> str:
    """``repr(value)`` cut to ``MAX_SHOWN`` characters, for error messages (never raises)."""
    if isinstance(value, str | int | float | bool | None):
        try:
            text = repr(value if not isinstance(value, str) else value[: MAX_SHOWN + 1])
        except ValueError:  # an int too long to convert to text (no other repr here raises it)
            digits = value.bit_length() * 3 // 10 if isinstance(value, int) else 0
            return f"<an integer of about {digits} digits>"
    else:
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}..."


def load_json(raw: bytes | str) -> Any:
    """Decode a record read back from the Store; every failure is a ``ValueError``.

    ``json.loads`` raises ``RecursionError`` on deep nesting (``"[" * 100000``), which
    is not a ValueError and would escape every ``except ValueError``.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, int conversion limit
        raise ValueError(str(exc)[:200]) from None


def check(field_name: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise DomainError(field_name, f"{show(value)} is not {what}")
    return value


MAX_DOMAIN_NAME = 240  # "<name>.conf" must stay a legal file name (255 bytes)


def check_domain_name(value: Any) -> str:
    name = check("name", value, HOST_NAME, "a DNS name (lower case letters, digits, '-' and '.')")
    if len(name) > MAX_DOMAIN_NAME:
        raise DomainError("name", f"{name[:40]}... is longer than {MAX_DOMAIN_NAME} characters")
    if any(not _LABEL.fullmatch(label) for label in name.split(".")):
        raise DomainError("name", f"{show(name)} is not a DNS name (each label 1-63 characters, no leading '-')")
    return name


def check_group(group: Any) -> str:
    return check("group", group, GROUP_NAME, "a group name ([a-z0-9-], at most 63)")


@dataclass(frozen=True, order=True)
class Upstream:
    """One back-end server: a pod address (IPv4) and port, its traffic weight and its version tag.

    Text form (the record's, the API's and the shared dict's): ``a.b.c.d:port``, then
    optionally `` weight=N`` (0..1000, default 1; 0: no new requests) and `` version=V``
    (``VERSION``: the app version it serves, so request metrics can be told apart).
    A server at the defaults is written as ``a.b.c.d:port`` alone, so records and
    traces made before weights existed keep their bytes.
    """

    host: str
    port: int
    weight: int = 1
    version: str = ""

    @staticmethod
    def parse(text: Any) -> Upstream:
        if isinstance(text, str) and len(text) <= MAX_UPSTREAM_TEXT:
            return _parse_upstream(text)  # cached: the same servers are parsed again on every domain change
        raise DomainError("upstreams", f"{show(text)} is not an IPv4 address:port")

    @staticmethod
    def _parse(text: str) -> Upstream:
        address_port, *options = text.split(" ")
        if address_port.count(":") != 1:
            raise DomainError("upstreams", f"{show(text)} is not an IPv4 address:port")
        host, _, port = address_port.partition(":")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            address = None
        if address is None or str(address) != host:  # one spelling per address (the record's bytes are compared)
            raise DomainError("upstreams", f"{show(text)} is not an IPv4 address:port")
        if not PORT.fullmatch(port) or not 0 < int(port) < 65536:
            raise DomainError("upstreams", f"{show(text)} has no valid port (1-65535, ASCII digits)")
        weight, version = 1, ""
        names = [option.partition("=")[0] for option in options]
        if names not in ([], ["weight"], ["version"], ["weight", "version"]):
            raise DomainError("upstreams", f"{show(text)}: after address:port only ' weight=N' then "
                                           f"' version=V' may follow")
        for option in options:
            name, _, value = option.partition("=")
            if name == "weight":
                if not WEIGHT.fullmatch(value) or int(value) > MAX_WEIGHT:
                    raise DomainError("upstreams", f"{show(text)}: weight is not an integer in 0..{MAX_WEIGHT}")
                weight = int(value)
            else:
                version = check("upstreams", value, VERSION, "a version tag ([a-z0-9][a-z0-9.-], at most 32)")
        return Upstream(host, int(port), weight, version)

    @staticmethod
    def of(host: str, port: int, weight: int = 1, version: str = "") -> Upstream:
        """A validated Upstream from its parts (``Upstream(...)`` itself checks nothing)."""
        return Upstream.parse(str(Upstream(host, port, weight, version)))

    @property
    def address(self) -> str:
        """``a.b.c.d:port``: the server, whatever its weight and version."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        text = f"{self.host}:{self.port}"
        if self.weight != 1:
            text += f" weight={self.weight}"
        if self.version:
            text += f" version={self.version}"
        return text

    def __repr__(self) -> str:  # the defaults left out: traces hash reprs, and weight 1 must not move them
        extra = (f", weight={self.weight}" if self.weight != 1 else "") + \
            (f", version={self.version!r}" if self.version else "")
        return f"Upstream(host={self.host!r}, port={self.port!r}{extra})"


_parse_upstream = functools.lru_cache(maxsize=1 << 17)(Upstream._parse)  # errors are not cached


def _sorted_upstreams(upstreams: set[Upstream]) -> tuple[Upstream, ...]:
    """By address; one entry per address (the same server twice with two weights or versions is refused)."""
    # The dataclass order, by a key: comparing tuples is several times cheaper than generated __lt__.
    ordered = tuple(sorted(upstreams, key=lambda u: (u.host, u.port, u.weight, u.version)))
    for before, after in itertools.pairwise(ordered):
        if before.host == after.host and before.port == after.port:
            raise DomainError("upstreams", f"{before.address} is listed twice with different weights or versions")
    return ordered


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
            raise DomainError("locations", f"unknown field(s) {_names(unknown)}")
        path = check("locations.path", data.get("path", "/"), PATH, "a URL path starting with '/'")
        timeout = data.get("read_timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 3600:
            raise DomainError("locations.read_timeout", f"{show(timeout)} is not a number of seconds in 1..3600")
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
    upstreams_by: str = "discovery"  # who besides admins may set the upstreams: "discovery" or "owner"

    @staticmethod
    def parse(data: Any) -> Domain:
        """Validate a domain definition (e.g. decoded from etcd or from an API call)."""
        if not isinstance(data, dict):
            raise DomainError("domain", "must be an object")
        unknown = set(data) - {"name", "group", "owner", "listen", "locations", "settings", "upstreams",
                               "upstreams_by"}
        if unknown:
            raise DomainError("domain", f"unknown field(s) {_names(unknown)}")
        name = check_domain_name(data.get("name"))
        group = check_group(data.get("group"))
        owner = check("owner", data.get("owner", ""), OWNER, "an owner name")
        listen = data.get("listen", 80)
        if isinstance(listen, bool) or not isinstance(listen, int) or not 1 <= listen <= 65535:
            raise DomainError("listen", f"{show(listen)} is not a port (1-65535)")
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
            if not isinstance(key, str) or key not in SETTINGS:
                raise DomainError("settings", f"{show(key)} is not a supported setting "
                                              f"({', '.join(sorted(SETTINGS))})")
            check(f"settings.{key}", value, SETTINGS[key], f"a valid {key} value")
        raw_upstreams = data.get("upstreams", [])
        if not isinstance(raw_upstreams, list) or len(raw_upstreams) > MAX_UPSTREAMS:
            raise DomainError("upstreams", f"must be a list of at most {MAX_UPSTREAMS} address:port")
        upstreams = _sorted_upstreams({Upstream.parse(u) for u in raw_upstreams})
        upstreams_by = data.get("upstreams_by", "discovery")
        if not isinstance(upstreams_by, str) or upstreams_by not in UPSTREAMS_BY:
            raise DomainError("upstreams_by", f"{show(upstreams_by)} is not one of {', '.join(UPSTREAMS_BY)}")
        return Domain(name, group, owner, listen, locations, tuple(sorted(settings.items())), upstreams,
                      upstreams_by)

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "group": self.group, "owner": self.owner, "listen": self.listen,
                "locations": [loc.to_json() for loc in self.locations], "settings": dict(self.settings),
                "upstreams": [str(u) for u in self.upstreams]}
        if self.upstreams_by != "discovery":  # the default is left out: records written before it keep their bytes
            data["upstreams_by"] = self.upstreams_by
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Domain:
        """Decode a stored record; any failure is a ``DomainError`` (field ``record`` when it is not JSON)."""
        try:
            data = load_json(raw)
        except ValueError as exc:
            raise DomainError("record", f"not a JSON object: {exc}") from None
        return Domain.parse(data)

    def with_upstreams(self, upstreams: tuple[Upstream, ...]) -> Domain:
        return replace(self, upstreams=_sorted_upstreams(set(upstreams)))

    @property
    def key(self) -> str:
        return domain_key(self.group, self.name)

def _names(keys: set[Any]) -> str:
    # Keys of a decoded object are strings, but a caller may hand anything: never sort mixed types.
    return ", ".join(sorted(show(k) if not isinstance(k, str) else show(k).strip("'") for k in keys))

def domains_prefix(group: str) -> str:
    return f"{SLB}{group}/domains/"


def domain_key(group: str, name: str) -> str:
    return f"{domains_prefix(group)}{name}"
