"""The CNI protocol as the node agent reads and writes it: env + stdin in, JSON out (CNI spec 1.0.0 / 1.1.0).

``parse_invocation(env, stdin)`` turns what the runtime gave the thin plugin into one
``CniRequest`` or raises ``CniError`` with the spec's code; ``format_result``,
``format_error`` and ``format_version`` write the spec's three result types.

Invariants:

* Checks run in the order libcni's own ``skel`` runs them, so the code a runtime
  sees for a doubly broken invocation matches what a reference plugin would say:
  environment (4), then decoding (6), then version (1), then the configuration (7).
* A missing ``cniVersion`` means 0.1.0 (the spec's pre-1.0 rule, kept by libcni),
  which we do not speak: error 1, not 7. A ``cniVersion`` of the wrong JSON type
  cannot be decoded: error 6.
* Attachment variables (container ID, netns, ifname) are required and validated
  only for the commands that name an attachment; GC and STATUS are network-wide
  and get none (the request's fields stay empty even if the runtime set them).
* A GC request always carries an explicit list of valid attachments: a GC whose
  list is missing is refused (7), never read as "nothing is valid", which would
  release every address on the network.
* ``CNI_PATH`` is accepted but never required: the agent delegates to no plugin.
* Hostile input ends in a ``CniError`` with a spec code, never another exception:
  every ``CNI_*`` value must be valid UTF-8 (4); the configuration is at most
  ``MAX_CONFIG_BYTES`` (7, permanent: a retry cannot shrink it) and nests at most
  ``MAX_DEPTH`` levels (6, also when the decoder's own recursion limit is hit);
  numbers are bounded before anything uses them; a value echoed in an error is cut
  to ``_ECHO_MAX`` characters. CHECK's ``prevResult`` is checked here, so the handler
  reads a well-formed one.

It must not know about sockets, the agent's transport, etcd, OVS or netlink, and
it does no I/O: the plugin and the agent server feed it strings.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, NoReturn

from cni.request import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    SUPPORTED_VERSIONS,
    CniError,
    CniRequest,
)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Commands that name one attachment (containerID, ifname), and those that also need the netns.
_ATTACHMENT_COMMANDS = frozenset({"ADD", "DEL", "CHECK"})
_NETNS_REQUIRED = frozenset({"ADD", "CHECK"})  # DEL may come after the netns is gone (spec: optional)
# GC and STATUS are CNI 1.1.0 verbs: a 1.0.0 configuration cannot ask for them.
_MIN_VERSION = {"GC": "1.1.0", "STATUS": "1.1.0"}

# Container IDs and network names: the spec's wording, as libcni's utils enforce it.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")  # bounded: it becomes an etcd key segment
_IFNAME_MAX = 15  # IFNAMSIZ - 1: the kernel's limit
_BRIDGE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,15}")
_POOL_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # also the etcd key segment /ipam/pools/{pool}
_ARG_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL
AGENT_TIMEOUT_MAX = 300.0  # == leengine.cni_plugin.TIMEOUT_MAX (a test keeps them equal)
MAX_CONFIG_BYTES = 1 << 20  # == leengine.cni_plugin.MAX_STDIN: the plugin refuses more before sending
MAX_DEPTH = 64  # objects/arrays nested deeper are refused (a CNI configuration needs a handful)
_NETNS_MAX = 4096  # PATH_MAX
_ECHO_MAX = 200  # characters of a bad value echoed back in an error's details

# The 1.1.0 result adds these fields; a 1.0.0 result must not carry them.
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")

# libcni 1.2 sends the GC list under both names (containernetworking/cni#1101: the
# spec and the library disagreed on the key); the spec's name wins when both are there.
_VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def parse_invocation(env: dict[str, str], stdin: str) -> CniRequest:
    """The request the runtime made, or ``CniError`` with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "required environment variable CNI_COMMAND is missing", "CNI_COMMAND")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {_echo(command, 40)}",
                       f"CNI_COMMAND must be one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        # The thin plugin answers VERSION itself; use format_version() for it.
        raise CniError(INVALID_ENV, "CNI_COMMAND VERSION carries no request", "use format_version()")

    _check_env_text(env)
    container_id = netns = ifname = ""
    if command in _ATTACHMENT_COMMANDS:
        container_id, netns, ifname = _attachment_env(command, env)
    args = parse_cni_args(env.get("CNI_ARGS", ""))

    network = _decode_config(stdin)
    cni_version = _check_version(command, network)
    _check_config(network)

    prev_result = network.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise CniError(INVALID_CONFIG, "invalid network configuration field prevResult",
                       "prevResult must be a JSON object (the previous plugin's result)")
    if command == "CHECK" and prev_result is not None:
        _check_prev_result(prev_result)
    valid_attachments: tuple[tuple[str, str], ...] = ()
    if command == "GC":
        valid_attachments = _valid_attachments(network)

    return CniRequest(
        command=command,
        cni_version=cni_version,
        network=network,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        path=env.get("CNI_PATH", ""),
        args=args,
        prev_result=prev_result,
        valid_attachments=valid_attachments,
    )


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K2=V2`` → dict; a pair without ``=``, an empty or odd key, or a repeated key ⇒ error 4."""
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue  # "A=1;" and "" are common and harmless
        key, sep, value = pair.partition("=")
        if not sep or not _ARG_KEY_RE.fullmatch(key):
            raise CniError(INVALID_ENV, "invalid CNI_ARGS", f"CNI_ARGS: bad pair {_echo(pair)}, expected KEY=VALUE")
        if key in args:
            raise CniError(INVALID_ENV, "invalid CNI_ARGS", f"CNI_ARGS: key {_echo(key)} given twice")
        args[key] = value
    return args


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise CniError(INVALID_ENV, "required environment variable CNI_CONTAINERID is missing", "CNI_CONTAINERID")
    if not _NAME_RE.fullmatch(container_id):
        raise CniError(INVALID_ENV, "invalid characters in CNI_CONTAINERID",
                       f"CNI_CONTAINERID={_echo(container_id)}: must start with a letter or digit, "
                       "then letters, digits, '_', '.' or '-'")


def validate_ifname(ifname: str) -> None:
    """The spec's (and the kernel's) rules for an interface name."""
    if not ifname:
        raise CniError(INVALID_ENV, "required environment variable CNI_IFNAME is missing", "CNI_IFNAME")
    problem = ""
    try:
        size = len(ifname.encode("utf-8"))
    except UnicodeEncodeError:
        size, problem = 0, "not valid UTF-8"
    if problem:
        pass
    elif size > _IFNAME_MAX:
        # The kernel counts bytes (IFNAMSIZ), not characters: 8 x 'é' is 16 bytes.
        problem = f"longer than {_IFNAME_MAX} bytes ({size})"
    elif ifname in (".", ".."):
        problem = "'.' or '..'"
    elif any(c == "/" or c == ":" or c.isspace() or not c.isprintable() for c in ifname):
        problem = "contains '/', ':', whitespace or a control character"
    if problem:
        raise CniError(INVALID_ENV, "invalid CNI_IFNAME", f"CNI_IFNAME={_echo(ifname)}: {problem}")


def format_result(result: dict[str, Any], cni_version: str) -> str:
    """The ADD result as the spec's JSON for ``cni_version``: cniVersion first, 1.1-only fields dropped for 1.0.0."""
    body = {k: v for k, v in result.items() if k != "cniVersion"}
    if cni_version == "1.0.0":
        body = _downgrade_to_1_0(body)
    return json.dumps({"cniVersion": cni_version, **body}, separators=(",", ":"))


def format_error(err: CniError, cni_version: str) -> str:
    return json.dumps(err.to_json(cni_version), separators=(",", ":"))


def format_version(requested: str) -> str:
    """The VERSION result: echo the version asked for, list what we speak."""
    return json.dumps({"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)},
                      separators=(",", ":"))


def error_version(stdin: str) -> str:
    """The cniVersion to stamp on an error: the configuration's if it has one (the spec says echo it)."""
    if len(stdin) > MAX_CONFIG_BYTES:
        return SUPPORTED_VERSIONS[-1]
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return SUPPORTED_VERSIONS[-1]
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    return version if isinstance(version, str) and version else SUPPORTED_VERSIONS[-1]


# --- internals ---------------------------------------------------------------------------------------------------


def _attachment_env(command: str, env: dict[str, str]) -> tuple[str, str, str]:
    required = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command in _NETNS_REQUIRED else [])
    missing = [name for name in required if not env.get(name)]
    if missing:
        # The spec: "the error message must contain the names of invalid variables".
        raise CniError(INVALID_ENV, f"required environment variables missing for {command}: {', '.join(missing)}",
                       ",".join(missing))
    container_id, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env.get("CNI_NETNS", "")
    validate_container_id(container_id)
    validate_ifname(ifname)
    if netns and (not netns.startswith("/") or "\0" in netns or len(netns.encode()) > _NETNS_MAX):
        raise CniError(INVALID_ENV, "invalid CNI_NETNS",
                       f"CNI_NETNS={_echo(netns)}: must be an absolute path of at most {_NETNS_MAX} bytes")
    return container_id, netns, ifname


def _check_env_text(env: dict[str, str]) -> None:
    """Every CNI_* value is text: a runtime's non-UTF-8 bytes arrive as lone surrogates and would fail later."""
    for name, value in env.items():
        if not name.startswith("CNI_"):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CniError(INVALID_ENV, f"invalid {_echo(name, 40)}",
                           f"{_echo(name, 40)}={_echo(value)}: not valid UTF-8") from None


def _decode_config(stdin: str) -> dict[str, Any]:
    # Characters first (cheap), bytes only near the limit: a character is at most 4 bytes.
    if len(stdin) > MAX_CONFIG_BYTES or (len(stdin) * 4 > MAX_CONFIG_BYTES
                                          and len(stdin.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES):
        raise CniError(INVALID_CONFIG, "network configuration too large",
                       f"more than {MAX_CONFIG_BYTES} bytes on stdin")
    try:
        stdin.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CniError(DECODE_FAILURE, "failed to decode the network configuration",
                       f"not valid UTF-8: {exc.reason} at position {exc.start}") from None
    try:
        network = json.loads(stdin)
    except RecursionError:
        raise CniError(DECODE_FAILURE, "failed to decode the network configuration",
                       f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # also integers of more digits than Python converts
        raise CniError(DECODE_FAILURE, "failed to decode the network configuration", _echo(str(exc))) from None
    if not isinstance(network, dict):
        raise CniError(DECODE_FAILURE, "failed to decode the network configuration",
                       f"expected a JSON object, got {type(network).__name__}")
    if _depth_exceeds(network, MAX_DEPTH):
        raise CniError(DECODE_FAILURE, "failed to decode the network configuration",
                       f"nested more than {MAX_DEPTH} levels deep")
    return network


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` deep; iterative, so no recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _check_version(command: str, network: dict[str, Any]) -> str:
    version = network.get("cniVersion", "")
    if not isinstance(version, str):
        raise CniError(DECODE_FAILURE, "failed to decode cniVersion", f"cniVersion must be a string, got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        shown = repr(version) if version else "missing (means 0.1.0)"
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI version",
                       f"cniVersion {shown}; this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    needed = _MIN_VERSION.get(command)
    if needed and _version_tuple(version) < _version_tuple(needed):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {needed} or later",
                       f"the configuration says cniVersion {version!r}")
    return version


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _check_config(network: dict[str, Any]) -> None:
    """The fields our plugin uses; unknown ones (runtimeConfig, capabilities, args, ipam…) pass through."""
    name = network.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        _bad("name", name, "a non-empty string: a letter or digit, then letters, digits, '_', '.' or '-'")
    plugin_type = network.get("type")
    if not isinstance(plugin_type, str) or not plugin_type or "/" in plugin_type or "\\" in plugin_type:
        _bad("type", plugin_type, "the plugin's executable name, without '/' or '\\'")
    if "agentSocket" in network:
        path = network["agentSocket"]
        if not isinstance(path, str) or not path.startswith("/") or len(path.encode()) > _SUN_PATH_MAX:
            _bad("agentSocket", path, f"an absolute path of at most {_SUN_PATH_MAX} bytes")
    if "agentTimeout" in network:
        timeout = network["agentTimeout"]
        if not _is_number(timeout) or not 0 < timeout <= AGENT_TIMEOUT_MAX:
            _bad("agentTimeout", timeout, f"seconds, a number in (0, {AGENT_TIMEOUT_MAX:g}]")
    if "bridge" in network:
        bridge = network["bridge"]
        if not isinstance(bridge, str) or not _BRIDGE_RE.fullmatch(bridge) or bridge in (".", ".."):
            _bad("bridge", bridge, "an OVS bridge name: 1-15 of [A-Za-z0-9_.-]")
    if "pools" in network:
        pools = network["pools"]
        if (not isinstance(pools, list) or not pools
                or not all(isinstance(p, str) and _POOL_RE.fullmatch(p) for p in pools)):
            _bad("pools", pools, "a non-empty list of pool names matching [a-z0-9][a-z0-9-]{0,62}")
        if len(set(pools)) != len(pools):
            _bad("pools", pools, "pool names without repeats")
    if "mtu" in network:
        mtu = network["mtu"]
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
            _bad("mtu", mtu, "an integer from 68 to 65535")
    if "gratuitousArp" in network and not isinstance(network["gratuitousArp"], bool):
        _bad("gratuitousArp", network["gratuitousArp"], "true or false")


def _valid_attachments(network: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    key = next((k for k in _VALID_ATTACHMENTS_KEYS if k in network), None)
    if key is None:
        raise CniError(INVALID_CONFIG, "GC without cni.dev/valid-attachments",
                       "a GC must list the attachments to keep; refusing to treat a missing list as empty")
    entries = network[key]
    if not isinstance(entries, list):
        _bad(key, entries, "a list of {\"containerID\": ..., \"ifname\": ...} objects")
    keep: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        container_id = entry.get("containerID") if isinstance(entry, dict) else None
        ifname = entry.get("ifname") if isinstance(entry, dict) else None
        if not isinstance(container_id, str) or not container_id or not isinstance(ifname, str) or not ifname:
            _bad(f"{key}[{index}]", entry, "an object with non-empty string containerID and ifname")
        keep.append((container_id, ifname))
    return tuple(keep)


def _check_prev_result(prev: dict[str, Any]) -> None:
    """The parts of a result CHECK reads: interfaces, ips (each with an address in CIDR form), routes."""
    for key in ("interfaces", "ips", "routes"):
        if key in prev and not isinstance(prev[key], list):
            _bad(f"prevResult.{key}", prev[key], "a list")
    for index, interface in enumerate(prev.get("interfaces", [])):
        if not isinstance(interface, dict) or not isinstance(interface.get("name", ""), str):
            _bad(f"prevResult.interfaces[{index}]", interface, "an object with a string name")
    for index, ip in enumerate(prev.get("ips", [])):
        address = ip.get("address") if isinstance(ip, dict) else None
        if not isinstance(address, str) or not _is_cidr(address):
            _bad(f"prevResult.ips[{index}]", ip, 'an object with "address": an IP address in CIDR form')
    for index, route in enumerate(prev.get("routes", [])):
        if not isinstance(route, dict):
            _bad(f"prevResult.routes[{index}]", route, "an object")


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return "/" in text


def _downgrade_to_1_0(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    if isinstance(body.get("interfaces"), list):
        body["interfaces"] = [_without(i, _INTERFACE_FIELDS_1_1) for i in body["interfaces"]]
    if isinstance(body.get("routes"), list):
        body["routes"] = [_without(r, _ROUTE_FIELDS_1_1) for r in body["routes"]]
    return body


def _without(item: Any, fields: tuple[str, ...]) -> Any:
    return {k: v for k, v in item.items() if k not in fields} if isinstance(item, dict) else item


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _echo(text: str, limit: int = _ECHO_MAX) -> str:
    """``repr`` of a user's value, cut: a 1 MB field must not become a 1 MB error (and log line)."""
    shown = repr(text[: limit + 1])
    return shown if len(text) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def _bad(field: str, value: Any, expected: str) -> NoReturn:
    # The spec asks code 2/7 messages to name the key and value; the value is cut (and decoded
    # values nest at most MAX_DEPTH levels, so dumping one cannot exhaust the recursion limit).
    shown = json.dumps(value)
    if len(shown) > _ECHO_MAX:
        shown = f"{shown[:_ECHO_MAX]}... ({len(shown)} characters)"
    raise CniError(INVALID_CONFIG, f"invalid network configuration field {field}",
                   f"{field}={shown}: expected {expected}")
