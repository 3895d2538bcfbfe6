"""The Builder port: one build host turning a commit of an app's repository into an image in the registry.

A build is four steps, as LeEngine's build farm ran them: **clone** (or fetch into
the host's copy of the repo), **compile** in a container with the repo's dependency
cache mounted (warm on the host that built the repo last: that is why the scheduler
sends a repo to the same host), **image** (build the runtime image) and **push** to
the Region's registry. ``build`` returns the image reference and each step's
duration; a failing step raises ``BuildFailed`` naming it.

Real adapter: ``foundation.adapters.buildah_builder.BuildahBuilder`` (git + buildah +
the registry). Sim adapter: ``sim.adapters.builder.SimBuilder``, durations with cache
hit or miss. ``tests/conformance/test_builder.py`` runs the same bodies on both.
It must not know etcd, tasks or scheduling: that is the build agent's logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

STEPS = ("clone", "compile", "image", "push")


class BuildFailed(Exception):
    """A step failed; ``step`` is which one, the message says why (the log's last lines)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


@dataclass(frozen=True)
class BuildRequest:
    app: str
    repo: str  # where to clone from (a name the builder resolves; validated by the task record)
    commit: str  # a full commit id (never a ref): what is built is what the image is tagged with
    # The registry credentials of this attempt (``build$TASK`` and the task record's push secret): the
    # token endpoint honours them only while the attempt is current. "" = push without credentials.
    push_user: str = ""
    push_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class StepTiming:
    step: str
    seconds: float


@dataclass(frozen=True)
class BuildOutcome:
    image: str  # registry reference, e.g. "registry.region/shop:3f2a9c"
    steps: tuple[StepTiming, ...]
    cache_hit: bool  # the dependency cache of this repo was warm on this host


@runtime_checkable
class Builder(Protocol):
    @property
    def host(self) -> str: ...

    async def build(self, request: BuildRequest, log: Callable[[str], None]) -> BuildOutcome:
        """Run the four steps; ``log`` receives one line per step (with its timing) as it ends."""
        ...
