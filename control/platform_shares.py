"""The TrafficShares port over slb-core, in-process, as the ``platform`` principal.

The apps service and the release controller write traffic shares through
``foundation.ports.traffic_shares.TrafficShares``; this is the adapter the entry points wire
to them: ``leengine-control`` (``leengine/platform_service.py``) and the simulated Region
(``sim/platform.py``). ``platform`` is a role no token carries (``control/auth.py``), so only
this in-process path may set shares besides an admin.

It must not know apps, releases or gRPC: it only forwards to ``SlbCore``.
"""

from __future__ import annotations

from collections.abc import Mapping

from control.auth import PLATFORM, Principal
from control.slb_core import SlbCore

PLATFORM_PRINCIPAL = Principal(PLATFORM, "platform")


class SlbShares:
    """Traffic shares kept by slb-core (``SlbCore.set_shares`` / ``get_shares``), written as ``who``."""

    def __init__(self, core: SlbCore, who: Principal = PLATFORM_PRINCIPAL) -> None:
        self.core = core
        self.who = who

    async def set_shares(self, group: str, domain: str, shares: Mapping[str, int]) -> None:
        await self.core.set_shares(self.who, group, domain, shares)

    async def get_shares(self, group: str, domain: str) -> dict[str, int] | None:
        return await self.core.get_shares(self.who, group, domain)
