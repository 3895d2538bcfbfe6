"""The Proxy port: one Nginx host as its SLB agent drives it.

Two kinds of change, as LeEngine's agents did it:

* ``set_upstreams(domain, servers)``: the upstream servers of a domain change **in
  place**, without a reload (real adapter: a lua shared dict read by
  ``balancer_by_lua``, written through a local admin endpoint).
* ``test(changes)`` then ``apply(changes)``: any other change (a new domain, a
  location, a header, a setting, a removal) is rendered into the host's conf dir,
  tested with ``nginx -t``, and made live with **one** reload per batch. ``apply``
  confirms that new workers serve the new configuration (a generation number) and
  rolls the files back when they do not; the last good configuration stays in force.

Requests per upstream version (``request_counts``): what the proxy answered for each
(domain, version tag of the upstream that answered), cumulative since this Nginx
started, so a gray release's versions can be compared (error share, mean latency).

State that must survive an agent restart (``save_state``/``load_state``): the
domains in force, their upstreams and the Store revision they correspond to, so a
restarted agent serves at once and resumes its watch from that revision.

It must not know etcd, the watch, debouncing or statuses: that is the agent's logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from foundation.ports.proxy_domain import Domain, Upstream


class ProxyError(Exception):
    """Nginx refused or failed; ``message`` is what it said (e.g. the ``nginx -t`` output)."""


class ReloadFailed(ProxyError):
    """The reload did not take effect; the previous configuration was restored and still serves."""


@dataclass(frozen=True)
class ReloadOutcome:
    generation: int  # the configuration generation now served
    seconds: float  # test + reload + confirmation, wall or virtual seconds
    domains: int  # domains in the configuration


def with_changes(live: Mapping[str, Domain], changes: Mapping[str, Domain | None]) -> dict[str, Domain]:
    """The domains in force after ``changes`` as every Proxy method takes them: a Domain is set,
    None removes the name (removing one that is not there is no change)."""
    result = dict(live)
    for name, domain in changes.items():
        if domain is None:
            result.pop(name, None)
        else:
            result[name] = domain
    return result


@dataclass(frozen=True)
class SavedState:
    revision: int = 0  # Store revision the saved domains correspond to (0: nothing saved)
    domains: Mapping[str, Domain] = field(default_factory=dict)


STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")  # a response's status, by its first digit


@dataclass(frozen=True)
class RequestCounts:
    """Requests a proxy answered for one (domain, upstream version), cumulative since it started."""

    by_class: Mapping[str, int] = field(default_factory=dict)  # STATUS_CLASSES -> responses
    seconds: float = 0.0  # sum of the requests' times (first byte read to last byte sent)

    @property
    def requests(self) -> int:
        return sum(self.by_class.values())


@runtime_checkable
class Proxy(Protocol):
    async def set_upstreams(self, domain: str, servers: tuple[Upstream, ...]) -> None:
        """Change a live domain's upstream servers in place (no reload)."""

    async def test(self, changes: Mapping[str, Domain | None]) -> str | None:
        """``nginx -t`` of the configuration in force plus ``changes`` (None: domain removed).

        Returns None when it passes, else the error text. Changes nothing.
        """

    async def apply(self, changes: Mapping[str, Domain | None]) -> ReloadOutcome:
        """Write ``changes``, test, reload once, confirm; ``ReloadFailed`` after restoring the old files."""

    async def load_state(self) -> SavedState: ...

    async def save_state(self, state: SavedState) -> None: ...

    async def reloads(self) -> int:
        """Reloads done since this adapter started (for tests and reports)."""

    async def request_counts(self) -> Mapping[tuple[str, str], RequestCounts]:
        """(domain, version) -> its requests so far ("": an upstream without a version tag, or no upstream).

        Cumulative since the proxy started (a restart starts again from zero; reloads do not).
        """
