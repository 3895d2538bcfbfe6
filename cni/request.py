"""A CNI invocation as the node agent sees it, the spec's error codes, and the handler interface.

The thin plugin (``leengine/cni_plugin.py``) forwards the runtime's environment and stdin
verbatim; the agent's request parser (``cni/spec.py``) turns them into one
``CniRequest`` or a ``CniError``; a ``CniHandler`` (``node/cni_agent.py``) acts on it.
Errors carry the CNI spec's codes (SPEC.md, "Error"), so the runtime can tell
"retry later" (11) from "your config is wrong" (7).

It must not know about sockets, etcd, OVS or netlink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Error codes of the CNI specification (1.0.0 and 1.1.0).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# 1.1.0, STATUS: the plugin cannot serve ADDs right now.
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# 100+ are the plugin's own; ours:
POOL_EXHAUSTED = 100  # no free address in any pool this network may use
DATAPLANE_FAILURE = 101  # veth / OVS / netlink step failed (details name the step)
# 102 is never sent: an unreachable etcd is TRY_AGAIN_LATER (11); the number stays unused.
CHECK_FAILED = 103  # CHECK found the interface differs from what ADD made
HELD_ELSEWHERE = 104  # ADD/CHECK of a container whose address another node holds (same container ID there)
INVALID_RECORD = 105  # a record the command needs is invalid in etcd (set aside; an operator must repair it)

SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")


class CniError(Exception):
    """A failure reported to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        error: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            error["details"] = self.details
        return error


@dataclass(frozen=True)
class CniRequest:
    command: str  # ADD, DEL, CHECK, GC, STATUS (VERSION never reaches the agent)
    cni_version: str
    network: dict[str, Any]  # the network configuration as given on stdin
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: dict[str, str] = field(default_factory=dict)  # CNI_ARGS, e.g. K8S_POD_NAMESPACE
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] = ()  # GC: (containerID, ifname) to keep

    @property
    def network_name(self) -> str:
        return str(self.network.get("name", ""))


class CniHandler(Protocol):
    """What the agent does for each command; raises ``CniError`` on failure."""

    async def add(self, request: CniRequest) -> dict[str, Any]:
        """Return the CNI result (interfaces, ips, routes, dns) without cniVersion."""

    async def delete(self, request: CniRequest) -> None: ...

    async def check(self, request: CniRequest) -> None: ...

    async def gc(self, request: CniRequest) -> None: ...

    async def status(self, request: CniRequest) -> None: ...
