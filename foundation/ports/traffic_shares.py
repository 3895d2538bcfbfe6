"""The TrafficShares port: a domain's traffic shares per version, as the platform writes them.

The apps service (``control/apps.py``: a new version joins at share 0) and the release
controller (``control/releases.py``: the steps of a gray release) move traffic between an
app's versions by writing slb-core's shares record (``/slb/{group}/shares/{domain}``,
``foundation/logic/slb_shares.py``); slb-core re-weights the domain's upstreams in the same
transaction, in place in Nginx. Neither service imports slb-core (the services meet in etcd
and through ports), so they reach it through this Protocol. Its one adapter,
``control/platform_shares.py``, calls slb-core in-process as the ``platform`` principal, in
the control service and in the simulated Region alike.

It must not know slb-core, etcd or how shares become weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class TrafficShares(Protocol):
    async def set_shares(self, group: str, domain: str, shares: Mapping[str, int]) -> None:
        """Make ``shares`` (version -> percent, summing to 100) the domain's shares."""

    async def get_shares(self, group: str, domain: str) -> dict[str, int] | None:
        """The domain's shares, or None when it has none (every server weighs the same)."""
