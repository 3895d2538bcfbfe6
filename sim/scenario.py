"""Scenario files: YAML in, a validated ``RegionSpec`` out, or one error naming file, line and field.

The format is documented field by field in docs/sim.md. Every error is a
``ScenarioError`` whose ``str`` is one line ``FILE:LINE: FIELD: message``: ``FIELD`` is
the path in the document (``faults[2].target.labels.rack``), ``(top)`` for the document
itself, ``file`` for the file (line 0) and ``yaml`` for a YAML syntax error. Nothing
else escapes ``load_scenario`` / ``parse_scenario`` (a property test feeds them hostile
input), and user text echoed in a message is cut and escaped, so the line stays one
short line.

Hostile input is bounded before it costs anything (docs/sim.md, "Limits"):

* the file must be a regular file, opened non-blocking and checked with ``fstat``
  (a FIFO or a device is refused, never waited on or read), of at most
  ``MAX_FILE_BYTES`` (at most one byte more is ever read);
* the YAML is composed here from the parser's event stream (``sim.scenario_yaml.compose``), not by
  PyYAML's recursive composer and constructor: at most ``MAX_DEPTH`` levels and
  ``MAX_VALUES`` values, scalars of at most ``MAX_SCALAR_CHARS`` characters, one
  document; only the tags a scenario needs (string, integer, float, boolean, null,
  list, mapping), so anchors and aliases, merge keys (``<<``), timestamps and every
  other tag are refused where they stand;
* numbers are at most ``MAX_NUMBER_CHARS`` characters (no 5,000-digit integers) and
  every numeric field has an upper bound (``sim.spec.MAX_*``);
* list lengths and totals (Cells, nodes, apps after ``count``, pods, faults) are
  checked before anything is expanded; pool overlaps are found by sorting once, and
  selectors are checked with ``sim.spec.TargetIndex`` (names parsed, labels counted
  per Cell), never by listing every target, so validation is linear in the file's size;
* ``name`` becomes part of an output path (``runs/NAME-seedN``): it must match
  ``NAME`` (``[a-z0-9][a-z0-9-]{0,62}``).

What is checked besides: unknown keys, duplicate keys, wrong types, missing required
keys, unknown fault and check kinds, numbers out of range (VLAN 1..4094, negative
times, a Cell above ``MAX_NODES_PER_CELL`` nodes), malformed or overlapping pool CIDRs
(region-wide: pod addresses must be unique wherever Nginx reaches them), duplicate
names, apps in unknown Cells or groups, faults at or after the end of the run, and
fault selectors that match nothing in the topology.

Fault targets (what each kind's ``target`` selects):

* **nodes** (hosts) — ``host-crash``, ``runtime-death``: names ``{cell}-n{i:03d}``
  (i = 1..nodes, e.g. ``c1-n007``); labels ``cell``, ``rack`` (``r1..rN``, node i on rack
  ``r{(i-1) % racks + 1}``) and the Cell's ``labels``.
* **etcd clients** — ``etcd-slow``, ``etcd-unavailable``: the nodes as above plus label
  ``role: node``, the Nginx hosts (``role: nginx``, ``group``) and the control plane's
  ``slb-core``, ``discovery``, ``cnictl`` and, with a build farm, ``build-scheduler``
  (``role: control``), and the build hosts (``role: build``).
* **Cells** — ``cell-outage``: names are Cell names; labels are the Cell's ``labels``.
* **Nginx hosts** — ``nginx-host-loss``: names ``{group}-nginx-{i}``; label ``group``
  (restricted to the fault's ``group`` when it is given).
* **apps** (their domains) — ``reload-storm``: app names; labels ``group`` and
  ``cell`` (an app carries ``cell`` for each of its Cells).
* **build hosts** — ``builder-crash``: names ``build-{i}`` (i = 1..``topology.build_hosts``).
* nothing — ``pool-exhaustion`` names its ``pool``; a ``target`` there is an error.

An empty target selects every target of the kind.

It must not run anything: ``sim/world.py`` builds and runs the Region.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from sim.scenario_costs import COSTS_FILE, CostsFile, costs_beside
from sim.scenario_errors import (
    MAX_FILE_BYTES,
    NAME,
    ScenarioError,
    show,
)
from sim.scenario_parser import Parser, default_name
from sim.scenario_yaml import compose
from sim.spec import MAX_SEED, RegionSpec

__all__ = ["COSTS_FILE", "NAME", "Scenario", "ScenarioError", "default_name", "load_scenario", "parse_scenario",
           "read_scenario_file", "scenario_hash"]


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: the spec, and the SHA-256 of the file's bytes (for reports and replays)."""

    spec: RegionSpec
    sha256: str
    path: str


def scenario_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_scenario(path: str | Path, *, seed: int | None = None) -> Scenario:
    """Read, parse and validate a scenario file; ``seed`` overrides the file's seed."""
    path = Path(path)
    data = read_scenario_file(path)
    spec = parse_scenario(data, str(path), costs=costs_beside(path))
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ScenarioError(str(path), 0, "--seed", f"must be an integer in 0..{MAX_SEED}, got {show(seed)}")
        spec = replace(spec, seed=seed)
    return Scenario(spec=spec, sha256=scenario_hash(data), path=str(path))


def read_scenario_file(path: Path) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_BYTES``; never blocks on a FIFO or reads a device."""
    file = str(path)
    # O_NONBLOCK: opening a FIFO with no writer returns at once (then fstat refuses it).
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ScenarioError(file, 0, "file", getattr(exc, "strerror", None) or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ScenarioError(file, 0, "file", f"not a regular file ({_file_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:  # read at most MAX + 1 bytes, whatever st_size claims
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ScenarioError(file, 0, "file", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ScenarioError(file, 0, "file", f"larger than {MAX_FILE_BYTES:,} bytes (the limit of a scenario)")
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def parse_scenario(data: bytes | str, file: str = "<scenario>", *, costs: CostsFile | None = None) -> RegionSpec:
    """Parse and validate scenario text; raises ``ScenarioError`` and nothing else.

    ``costs`` is the costs file the scenario runs with (``load_scenario`` reads the one beside
    the scenario file, ``COSTS_FILE``); without it, the code's default cost models."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", errors="replace")  # lone surrogates: "?"
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(file, 0, "file", f"larger than {MAX_FILE_BYTES:,} bytes (the limit of a scenario)")
    root = compose(raw.decode("utf-8", errors="replace"), file)
    if root is None:
        raise ScenarioError(file, 1, "(top)", "the file is empty")
    return Parser(file, costs or CostsFile()).region(root)
