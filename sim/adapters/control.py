"""The sim ControlClient adapter: slb-core's logic in-process, as one principal.

What the gRPC server does for a call, minus the wire: the same ``SlbCore`` methods with
the same principal (the one a token would name; ``discovery`` by default), so the same
authorisation decides and the least-privilege path is the one that runs in the sim too:
a client given a ``user`` principal gets ``PermissionDenied`` here exactly as over gRPC.
slb-core's typed errors already are the port's; a Store error becomes what the server
would answer: ``Unavailable`` when etcd cannot be reached, else an internal ``ControlError``.

It keeps slb-core's sequence of Store requests (a status with the registered hosts is two
reads, as it always was), so swapping it in leaves every sim trace unchanged. It must not
know which agent calls it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from control.auth import Principal
from control.slb_core import SlbCore
from foundation.ports.control import ControlError, StatusReport, StoredDomain, Unavailable
from foundation.ports.store import StoreError, StoreUnavailable

DISCOVERY = Principal("discovery", "discovery")
T = TypeVar("T")


class SimControlClient:
    def __init__(self, core: SlbCore, who: Principal = DISCOVERY) -> None:
        self.core = core
        self.who = who

    async def get_domain(self, group: str, name: str) -> StoredDomain:
        return await _answer(self.core.get_domain(self.who, group, name))

    async def set_upstreams(self, group: str, domain: str, servers: Sequence[str]) -> int:
        return await _answer(self.core.set_upstreams(self.who, group, domain, list(servers)))

    async def get_status(self, group: str, domain: str) -> StatusReport:
        return await _answer(self.core.get_status(self.who, group, domain, registered=True))

    async def close(self) -> None:
        return None


async def _answer(call: Awaitable[T]) -> T:
    """The call's result, or the error the gRPC server would have sent (as the port's type)."""
    try:
        return await call
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    except StoreError as exc:
        raise ControlError(str(exc)) from exc
