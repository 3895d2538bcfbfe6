"""Fault times drawn per seed: a scenario's ``at: {uniform: [low, high]}`` (and ``duration``) made one number.

A fault may give its start (``at``) or its length (``duration``) as a range instead of a
number; the scenario parser keeps the range in ``FaultSpec.at_range`` / ``duration_range``
(with ``at`` = the low end and ``duration`` = the high end until a seed draws them).
``draw_fault_times(spec)`` returns the spec with every range drawn: uniformly, rounded to
the millisecond, from a random stream of its own (``seeded_stream(seed, "fault-times")``),
one draw per range in the file's order of faults (``at`` before ``duration``).

Invariants: the drawn times are a pure function of (the ranges, the seed): the same seed
draws the same times, whoever draws them (the sim's ``Region``, the lab's run driver, the
shrinker pinning them); drawing again from a drawn spec gives the same spec (the ranges stay,
so the report shows both the range and the time drawn); no other stream moves, so a scenario
whose faults have no range runs exactly as before, and a fault pinned to the time a seed drew
runs exactly as the range did on that seed (the trace holds times, never ranges).
It must not run anything, nor know the parser, the world or the report.
"""

from __future__ import annotations

from dataclasses import replace

from sim.adapters.runtime import seeded_stream
from sim.spec import FaultSpec, RegionSpec

FAULT_TIMES = "fault-times"  # the stream's concern name (sim.adapters.runtime.seeded_stream)
RESOLUTION = 3  # decimals kept of a drawn time: a millisecond, readable and exact in YAML and JSON


def has_drawn_times(spec: RegionSpec) -> bool:
    """True if some fault's ``at`` or ``duration`` is a range drawn per seed."""
    return any(f.at_range is not None or f.duration_range is not None for f in spec.faults)


def draw_fault_times(spec: RegionSpec) -> RegionSpec:
    """``spec`` with every fault time range drawn for ``spec.seed`` (the identity when there is none)."""
    if not has_drawn_times(spec):
        return spec
    rnd = seeded_stream(spec.seed, FAULT_TIMES)
    faults = []
    for fault in spec.faults:
        at, duration = fault.at, fault.duration
        if fault.at_range is not None:
            low, high = fault.at_range
            at = round(rnd.uniform(low, high), RESOLUTION)
        if fault.duration_range is not None:
            low, high = fault.duration_range
            duration = round(rnd.uniform(low, high), RESOLUTION)
        faults.append(replace(fault, at=at, duration=duration))
    return replace(spec, faults=tuple(faults))


def drawn_times(spec: RegionSpec) -> list[dict[str, object]]:
    """The faults whose times were drawn, as a report shows them: index, kind, line, the ranges and the times
    (``spec`` as ``draw_fault_times`` returned it)."""
    return [_drawn(i, f) for i, f in enumerate(spec.faults) if f.at_range is not None or f.duration_range is not None]


def _drawn(index: int, fault: FaultSpec) -> dict[str, object]:
    out: dict[str, object] = {"fault": index, "kind": fault.kind, "line": fault.line, "at": fault.at}
    if fault.at_range is not None:
        out["at_range"] = list(fault.at_range)
    out["duration"] = fault.duration
    if fault.duration_range is not None:
        out["duration_range"] = list(fault.duration_range)
    return out


__all__ = ["FAULT_TIMES", "draw_fault_times", "drawn_times", "has_drawn_times"]
