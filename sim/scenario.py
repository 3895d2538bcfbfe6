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
* the YAML is composed here from the parser's event stream (``_compose``), not by
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
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from cni.pools import Pool, PoolConfigError
from sim.spec import (
    CHECK_KINDS,
    FAULT_KINDS,
    FAULT_PARAMS,
    FAULT_TARGETS,
    MAX_APPS,
    MAX_BUILD_HOSTS,
    MAX_CELLS,
    MAX_CHANGES,
    MAX_CHECKS,
    MAX_ETCD_LATENCY,
    MAX_EVENTS_PER_HOUR,
    MAX_FACTOR,
    MAX_FAULTS,
    MAX_GROUPS,
    MAX_HOSTS_PER_GROUP,
    MAX_LABELS,
    MAX_LIMIT,
    MAX_NODES_PER_CELL,
    MAX_PODS,
    MAX_POOLS_PER_CELL,
    MAX_REGION_NODES,
    MAX_REPLICAS,
    MAX_REQUESTS_PER_SECOND,
    MAX_SECONDS,
    MAX_SEED,
    MIN_EVERY,
    MIN_POOL_PREFIX,
    AppSpec,
    CellSpec,
    CheckSpec,
    ChurnSpec,
    FaultSpec,
    GroupSpec,
    Labels,
    PoolSpec,
    RegionSpec,
    Selector,
)
from sim.targets import TargetIndex

# Loader limits (docs/sim.md, "Limits"). The shipped scenarios use < 1% of each.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nesting levels of lists and mappings (a scenario needs 6)
MAX_VALUES = 50_000  # scalars, lists and mappings in the document (use `count` for many apps)
MAX_SCALAR_CHARS = 4096  # one value (a `description` included)
MAX_NUMBER_CHARS = 64  # one number literal
MAX_NAME_CHARS = 63  # names of Cells, groups, apps; label keys and values
MAX_DOMAIN_CHARS = 253
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # the scenario's name: it becomes a directory name


class ScenarioError(ValueError):
    """A scenario file that cannot be run: where, which field, and why (always one line)."""

    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        file, field, message = _one_line(file), _one_line(field or "(top)"), _one_line(message)
        if len(message) > 1000:  # every echoed value is cut already; this is the last guard
            message = message[:1000] + "…"
        self.file, self.line, self.field, self.message = file, line, field, message
        super().__init__(f"{file}:{line}: {field}: {message}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """Control characters (newlines, escape codes) as escapes: a message never spans or paints lines."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def _show(value: Any, limit: int = 40) -> str:
    """A user value for a message: repr'd (escaped), and cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


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
    spec = parse_scenario(data, str(path))
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ScenarioError(str(path), 0, "--seed", f"must be an integer in 0..{MAX_SEED}, got {_show(seed)}")
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


def parse_scenario(data: bytes | str, file: str = "<scenario>") -> RegionSpec:
    """Parse and validate scenario text; raises ``ScenarioError`` and nothing else."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", errors="replace")  # lone surrogates: "?"
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(file, 0, "file", f"larger than {MAX_FILE_BYTES:,} bytes (the limit of a scenario)")
    root = _compose(raw.decode("utf-8", errors="replace"), file)
    if root is None:
        raise ScenarioError(file, 1, "(top)", "the file is empty")
    return _Parser(file).region(root)


# ------------------------------------------------------------------ the restricted composer

# libyaml's parser when PyYAML has it (events from C: about 10x faster), else PyYAML's own;
# either way only its events are used, never its composer or constructor.
_EVENTS_LOADER: Any = yaml.CBaseLoader if getattr(yaml, "__with_libyaml__", False) else yaml.BaseLoader
_RESOLVER = Resolver()
_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP = _TAG + "seq", _TAG + "map"
_SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL})
_CONSTRUCTOR = SafeConstructor()  # only its scalar converters, which keep no state
_RESOLVED: dict[str, str] = {}  # plain scalar -> its implicit tag (the resolver is a pure function of it)


class _Frame:
    """An open list or mapping while composing: its node, a key waiting for its value, the child's name."""

    __slots__ = ("key", "name", "node")

    def __init__(self, node: Node) -> None:
        self.node: Node = node
        self.key: Node | None = None
        self.name: str | int = ""


def _compose(text: str, file: str) -> Node | None:
    """The document's node tree (nodes keep their marks), built without recursion; ``None`` if empty."""
    root: Node | None = None
    stack: list[_Frame] = []
    values = documents = 0
    loader = _EVENTS_LOADER(text)
    get_event = loader.get_event
    try:
        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                node: Node = ScalarNode(_scalar_tag(event, file, stack), event.value, event.start_mark, None)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                if len(stack) >= MAX_DEPTH:
                    raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                                        f"nested deeper than {MAX_DEPTH} levels")
                tag = MAP if kind is MappingStartEvent else SEQ
                if event.tag not in (None, "!", tag):
                    raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                                        f"the tag {_show(event.tag)} is not supported (plain lists and mappings only)")
                node = (MappingNode if kind is MappingStartEvent else SequenceNode)(tag, [], event.start_mark, None)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                stack.pop()
                continue
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise ScenarioError(file, event.start_mark.line + 1, "(top)",
                                        "a scenario file holds one YAML document (found a second `---`)")
                continue
            elif kind is AliasEvent:
                raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                                    "anchors (&) and aliases (*) are not supported: write the values out")
            elif event is None or kind is StreamEndEvent:
                break
            else:  # stream start, document end
                continue
            if event.anchor is not None:
                raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                                    "anchors (&) and aliases (*) are not supported: write the values out")
            values += 1
            if values > MAX_VALUES:
                raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                                    f"more than {MAX_VALUES:,} values in one scenario (use `count` for many apps)")
            if stack:
                frame = stack[-1]
                if frame.node.__class__ is SequenceNode:
                    frame.node.value.append(node)
                elif frame.key is None:
                    frame.key = node
                    frame.name = node.value if node.__class__ is ScalarNode else "?"
                else:
                    frame.node.value.append((frame.key, node))
                    frame.key = None
            else:
                root = node
            if kind is not ScalarEvent:
                stack.append(_Frame(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise ScenarioError(file, line, "yaml", str(exc.problem or exc.context or "syntax error")) from None
    except yaml.YAMLError as exc:  # a reader error (e.g. a control character): no mark
        raise ScenarioError(file, 0, "yaml", (str(exc).splitlines() or ["unreadable"])[0]) from None
    finally:
        loader.dispose()
    return root


def _scalar_tag(event: ScalarEvent, file: str, stack: list[_Frame]) -> str:
    value = event.value
    if len(value) > MAX_SCALAR_CHARS:
        raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event),
                            f"a value of {len(value):,} characters (at most {MAX_SCALAR_CHARS:,})")
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0]:  # quoted: a string
            return STR
        tag = _RESOLVED.get(value)
        if tag is None:
            tag = _RESOLVER.resolve(ScalarNode, value, event.implicit)
            if tag in (_TAG + "value", _TAG + "yaml"):  # "=", "!", "&", "*" as plain words: strings
                tag = STR
            if len(_RESOLVED) < 10_000:  # keys and words repeat; a bounded cache
                _RESOLVED[value] = tag
    if tag in _SCALAR_TAGS:
        return tag
    if tag == _TAG + "merge":
        message = "merge keys (<<) are not supported: write the keys out"
    elif tag == _TAG + "timestamp":
        message = f"dates and times are not supported ({_show(value)}): give seconds, or quote a string"
    else:
        message = f"the tag {_show(tag)} is not supported (strings, numbers, true/false, null only)"
    raise ScenarioError(file, event.start_mark.line + 1, _path(stack, event), message)


def _path(stack: list[_Frame], event: Any = None) -> str:
    """The field an event stands at, from the open collections (for errors found while composing)."""
    parts: list[str] = []
    for i, frame in enumerate(stack):
        last = i == len(stack) - 1
        if isinstance(frame.node, SequenceNode):
            parts.append(f"[{len(frame.node.value) - (0 if last else 1)}]")
        elif last and frame.key is None:  # the event is a key: name it when it is a word
            if isinstance(event, ScalarEvent):
                parts.append(_field_name(event.value))
        else:
            parts.append(_field_name(str(frame.name)))
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out or "(top)"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_<>-]{1,40}")


def _field_name(name: str) -> str:
    """A key as one part of a FIELD path: plain words as they are; anything else quoted and escaped
    (no space, ':', '.' or control character), cut to 40 characters, so FIELD stays one token."""
    if _PLAIN_KEY.fullmatch(name):
        return name
    cut = name[:40]
    escaped = "".join(c if (c.isascii() and c.isalnum()) or c in "_-<>" else
                      (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                       else f"\\U{ord(c):08x}") for c in cut)
    return f'"{escaped}"' + ("…" if len(name) > 40 else "")


# ------------------------------------------------------------------ the parser


def default_name(file: str) -> str:
    """A scenario without ``name``: its file name, made a valid name (lower case, other characters as '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", Path(file).stem.lower()).strip("-")[:63].strip("-")
    return name or "scenario"


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.build_hosts = 0  # topology.build_hosts, once read: builder-crash targets depend on it
        self.pods = 0  # replicas x Cells so far, over all apps
        self.targets: TargetIndex | None = None

    # ---- primitives
    def error(self, node: Node, field: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, node.start_mark.line + 1, field or "(top)", message)

    def mapping(self, node: Node, field: str, keys: set[str], required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"must be a mapping, got {self.describe(node)}")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node, field) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, field, f"keys must be strings, got {self.describe(key_node)}")
            sub = f"{field}.{_field_name(key)}" if field else _field_name(key)
            if key not in keys:
                raise self.error(key_node, sub, f"unknown key (expected one of: {', '.join(sorted(keys))})")
            if key in out:
                raise self.error(key_node, sub, "duplicate key")
            out[key] = value_node
        for key in required:
            if key not in out:
                raise self.error(node, f"{field}.{key}" if field else key, "required key is missing")
        return out

    def sequence(self, node: Node, field: str, limit: int | None = None, what: str = "entries") -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, field, f"must be a list, got {self.describe(node)}")
        if limit is not None and len(node.value) > limit:
            raise self.error(node.value[limit], f"{field}[{limit}]", f"more than {limit:,} {what} (the limit)")
        return list(node.value)

    def value(self, node: ScalarNode, field: str) -> Any:
        """A scalar's value: the composer let through only these tags; numbers are short."""
        tag, text = node.tag, node.value
        if tag == STR:
            return text
        if tag == NULL:
            return None
        if len(text) > MAX_NUMBER_CHARS:
            raise self.error(node, field, f"a literal of {len(text):,} characters (numbers have at most "
                                          f"{MAX_NUMBER_CHARS})")
        try:
            if tag == INT:
                return _CONSTRUCTOR.construct_yaml_int(node)
            if tag == FLOAT:
                return _CONSTRUCTOR.construct_yaml_float(node)
            return _CONSTRUCTOR.construct_yaml_bool(node)
        except (ValueError, LookupError, TypeError, ArithmeticError, yaml.YAMLError):
            what = {INT: "an integer", FLOAT: "a number"}.get(tag, "true or false")
            raise self.error(node, field, f"{_show(text)} is not {what}") from None

    def scalar(self, node: Node, field: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(node, field, f"must be a single value, got {self.describe(node)}")
        return self.value(node, field)

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        try:
            value = self.value(node, "")
        except ScenarioError:
            return _show(node.value)
        if value is None:
            return "nothing (null)"
        return f"{type(value).__name__} {_show(node.value)}"

    def string(self, node: Node, field: str, *, empty: bool = False, limit: int = MAX_NAME_CHARS,
               control: bool = False) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str):
            raise self.error(node, field, f"must be a string, got {self.describe(node)}")
        if not empty and not value.strip():
            raise self.error(node, field, "must not be empty")
        if len(value) > limit:
            raise self.error(node, field, f"at most {limit:,} characters, got {len(value):,}")
        if not control and _CONTROL.search(value):
            raise self.error(node, field, f"control characters are not allowed: {_show(value)}")
        return value

    def integer(self, node: Node, field: str, *, low: int | None = None, high: int | None = None) -> int:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, field, f"must be an integer, got {self.describe(node)}")
        self.bounds(node, field, value, low, high)
        return value

    def number(self, node: Node, field: str, *, low: float | None = None, high: float | None = None,
               positive: bool = False) -> float:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, field, f"must be a number, got {self.describe(node)}")
        value = float(value)  # at most MAX_NUMBER_CHARS digits: no OverflowError
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(node, field, "must be a finite number")
        if positive and value <= 0:
            raise self.error(node, field, f"must be greater than 0, got {value:g}")
        self.bounds(node, field, value, low, high)
        return value

    def bounds(self, node: Node, field: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            what = "must not be negative" if low == 0 else f"must be at least {_num(low)}"
            raise self.error(node, field, f"{what}, got {_num(value)}")
        if high is not None and value > high:
            raise self.error(node, field, f"must be at most {_num(high)}, got {_num(value)}")

    def names(self, node: Node, field: str, limit: int, what: str) -> list[tuple[str, Node]]:
        return [(self.string(n, f"{field}[{i}]"), n) for i, n in enumerate(self.sequence(node, field, limit, what))]

    def labels(self, node: Node, field: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"must be a mapping of label to value, got {self.describe(node)}")
        if len(node.value) > MAX_LABELS:
            raise self.error(node.value[MAX_LABELS][0], field, f"more than {MAX_LABELS} labels (the limit)")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, field)
            sub = f"{field}.{_field_name(key)}"
            if key in out:
                raise self.error(key_node, sub, "duplicate label")
            value = self.scalar(value_node, sub)
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise self.error(value_node, sub, f"label values are strings, got {self.describe(value_node)}")
            out[key] = self.string(value_node, sub, empty=True) if isinstance(value, str) else str(value)
        return tuple(out.items())

    def unique(self, seen: dict[str, Node], name: str, node: Node, field: str, what: str) -> None:
        if name in seen:
            first = seen[name].start_mark.line + 1
            raise self.error(node, field, f"duplicate {what} name {_show(name)} (first at line {first})")
        seen[name] = node

    # ---- the document
    def region(self, root: Node) -> RegionSpec:
        keys = {"name", "seed", "duration", "topology", "workload", "faults", "checks", "etcd_latency", "cooldown",
                "leak_check_every", "leak_grace", "description"}
        m = self.mapping(root, "", keys, required=("seed", "duration", "topology"))
        seed = self.integer(m["seed"], "seed", low=0, high=MAX_SEED)
        duration = self.number(m["duration"], "duration", positive=True, high=MAX_SECONDS)
        if "name" in m:
            name = self.string(m["name"], "name", limit=MAX_SCALAR_CHARS, control=True)
            if not NAME.fullmatch(name):
                raise self.error(m["name"], "name", f"{_show(name)} is not a scenario name: lower-case letters, "
                                                    "digits and '-', starting with a letter or digit, at most 63")
        else:
            name = default_name(self.file)
        if "description" in m:
            self.string(m["description"], "description", empty=True, limit=MAX_SCALAR_CHARS, control=True)
        cells, groups = self.topology(m["topology"])
        apps, churn = self.workload(m["workload"], cells, groups) if "workload" in m else ((), ChurnSpec())
        faults = self.faults(m["faults"], duration, cells, groups, apps) if "faults" in m else ()
        checks = self.checks(m["checks"]) if "checks" in m else ()
        optional: dict[str, float] = {}
        for key, positive, high in (("etcd_latency", False, MAX_ETCD_LATENCY), ("cooldown", False, MAX_SECONDS),
                                    ("leak_check_every", True, MAX_SECONDS), ("leak_grace", False, MAX_SECONDS)):
            if key in m:
                optional[key] = self.number(m[key], key, low=0, positive=positive, high=high)
        return RegionSpec(name=name, seed=seed, duration=duration, cells=cells, groups=groups, apps=apps,
                          faults=faults, checks=checks, churn=churn, build_hosts=self.build_hosts, source=self.file,
                          **optional)

    def topology(self, node: Node) -> tuple[tuple[CellSpec, ...], tuple[GroupSpec, ...]]:
        m = self.mapping(node, "topology", {"cells", "groups", "build_hosts"}, required=("cells",))
        self.build_hosts = self.integer(m["build_hosts"], "topology.build_hosts", low=0, high=MAX_BUILD_HOSTS) \
            if "build_hosts" in m else 0
        cells: list[CellSpec] = []
        seen: dict[str, Node] = {}
        pools_seen: dict[str, Node] = {}
        networks: list[tuple[ipaddress.IPv4Network, str, Node, str]] = []
        cell_nodes = self.sequence(m["cells"], "topology.cells", MAX_CELLS, "Cells")
        if not cell_nodes:
            raise self.error(m["cells"], "topology.cells", "at least one Cell is needed")
        region_nodes = 0
        for i, cn in enumerate(cell_nodes):
            f = f"topology.cells[{i}]"
            c = self.mapping(cn, f, {"name", "nodes", "racks", "labels", "pools"}, required=("name", "nodes", "pools"))
            name = self.string(c["name"], f"{f}.name")
            self.unique(seen, name, c["name"], f"{f}.name", "Cell")
            nodes = self.integer(c["nodes"], f"{f}.nodes", low=1)
            if nodes > MAX_NODES_PER_CELL:
                raise self.error(c["nodes"], f"{f}.nodes",
                                 f"{nodes:,} nodes exceed the {MAX_NODES_PER_CELL} a Cell "
                                 "(one Kubernetes cluster) may have")
            region_nodes += nodes
            if region_nodes > MAX_REGION_NODES:
                raise self.error(c["nodes"], f"{f}.nodes",
                                 f"{region_nodes:,} nodes over the Cells so far exceed the {MAX_REGION_NODES:,} "
                                 "of a Region (the limit)")
            racks = self.integer(c["racks"], f"{f}.racks", low=1, high=nodes) if "racks" in c else 1
            labels = self.labels(c["labels"], f"{f}.labels") if "labels" in c else ()
            for key, _ in labels:
                if key in ("cell", "rack", "role"):
                    raise self.error(c["labels"], f"{f}.labels.{key}", f"{key!r} is set by the topology itself")
            pools: list[PoolSpec] = []
            pool_nodes = self.sequence(c["pools"], f"{f}.pools", MAX_POOLS_PER_CELL, "pools in a Cell")
            if not pool_nodes:
                raise self.error(c["pools"], f"{f}.pools", "a Cell needs at least one pool")
            for j, pn in enumerate(pool_nodes):
                pools.append(self.pool(pn, f"{f}.pools[{j}]", pools_seen, networks))
            cells.append(CellSpec(name=name, nodes=nodes, pools=tuple(pools), node_labels=labels, racks=racks))
        self.overlaps(networks)
        groups: list[GroupSpec] = []
        gseen: dict[str, Node] = {}
        group_nodes = self.sequence(m["groups"], "topology.groups", MAX_GROUPS, "groups") if "groups" in m else []
        for i, gn in enumerate(group_nodes):
            f = f"topology.groups[{i}]"
            g = self.mapping(gn, f, {"name", "hosts"}, required=("name", "hosts"))
            name = self.string(g["name"], f"{f}.name")
            self.unique(gseen, name, g["name"], f"{f}.name", "group")
            groups.append(GroupSpec(name=name, hosts=self.integer(g["hosts"], f"{f}.hosts", low=1,
                                                                  high=MAX_HOSTS_PER_GROUP)))
        return tuple(cells), tuple(groups)

    def pool(self, node: Node, f: str, seen: dict[str, Node], networks: list) -> PoolSpec:
        p = self.mapping(node, f, {"name", "cidr", "vlan", "block_size"}, required=("name", "cidr", "vlan"))
        name = self.string(p["name"], f"{f}.name")
        self.unique(seen, name, p["name"], f"{f}.name", "pool")
        cidr = self.string(p["cidr"], f"{f}.cidr")
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise self.error(p["cidr"], f"{f}.cidr", f"not a network in CIDR notation: {exc}") from None
        vlan = self.integer(p["vlan"], f"{f}.vlan", low=1, high=4094)
        block = self.integer(p["block_size"], f"{f}.block_size", low=1, high=1 << (32 - MIN_POOL_PREFIX)) \
            if "block_size" in p else 16
        # The agents' own rules decide (cni/pools.py: IPv4, at most /30, a power-of-two block
        # that fits, ...), so a scenario that validates is one the IPAM accepts.
        try:
            Pool.parse(name, str(net), vlan, None, (), block)
        except PoolConfigError as exc:
            on_block = exc.field == "block_size" and "block_size" in p  # else the pool is too small for it
            where = p["block_size"] if on_block else p["cidr"]
            field = f"{f}.block_size" if on_block else f"{f}.cidr"
            raise self.error(where, field, str(exc)) from None
        if net.prefixlen < MIN_POOL_PREFIX:
            raise self.error(p["cidr"], f"{f}.cidr", f"{net} is larger than a /{MIN_POOL_PREFIX} (the limit of a pool)")
        networks.append((net, name, p["cidr"], f"{f}.cidr"))
        return PoolSpec(name=name, cidr=str(net), vlan=vlan, block_size=block)

    def overlaps(self, networks: list[tuple[ipaddress.IPv4Network, str, Node, str]]) -> None:
        """Pools overlap iff, sorted by first address, one starts before a previous one ends: one sort, one pass.

        Of the overlapping pairs the sweep meets, the error names the one whose later pool
        (in file order) comes first, at that later pool.
        """
        order = sorted(range(len(networks)), key=lambda k: int(networks[k][0].network_address))
        found: tuple[int, int] | None = None  # (later, earlier) in file order
        reach = -1  # the widest pool so far (by last address)
        for k in order:
            net = networks[k][0]
            if reach >= 0 and int(net.network_address) <= int(networks[reach][0].broadcast_address):
                pair = (max(k, reach), min(k, reach))
                if found is None or pair < found:
                    found = pair
            if reach < 0 or int(net.broadcast_address) > int(networks[reach][0].broadcast_address):
                reach = k
        if found is not None:
            net, _, node, field = networks[found[0]]
            other, other_name, other_node, other_field = networks[found[1]]
            raise self.error(node, field, f"{net} overlaps {other} of pool {other_name!r} ({other_field}, line "
                                          f"{other_node.start_mark.line + 1})")

    def workload(self, node: Node, cells: tuple[CellSpec, ...],
                 groups: tuple[GroupSpec, ...]) -> tuple[tuple[AppSpec, ...], ChurnSpec]:
        m = self.mapping(node, "workload", {"apps", "churn"})
        cell_names = {c.name: None for c in cells}  # ordered, for messages
        group_names = {g.name: None for g in groups}
        apps: list[AppSpec] = []
        seen: dict[str, Node] = {}
        app_nodes = self.sequence(m["apps"], "workload.apps", MAX_APPS, "apps") if "apps" in m else []
        for i, an in enumerate(app_nodes):
            apps.extend(self.app(an, f"workload.apps[{i}]", cell_names, group_names, seen, len(apps)))
        churn = ChurnSpec()
        if "churn" in m:
            c = self.mapping(m["churn"], "workload.churn", {"deploys_per_hour", "scale_events_per_hour"})
            churn = ChurnSpec(**{k: self.number(v, f"workload.churn.{k}", low=0, high=MAX_EVENTS_PER_HOUR)
                                 for k, v in c.items()})
        return tuple(apps), churn

    def app(self, node: Node, f: str, cell_names: dict[str, None], group_names: dict[str, None],
            seen: dict[str, Node], before: int) -> list[AppSpec]:
        keys = {"name", "count", "cells", "replicas", "group", "domain", "port", "start_seconds", "readiness_seconds",
                "requests_per_second"}
        a = self.mapping(node, f, keys, required=("name", "cells", "replicas", "group"))
        name = self.string(a["name"], f"{f}.name")
        cells = self.names(a["cells"], f"{f}.cells", len(cell_names), "Cells (each at most once)")
        if not cells:
            raise self.error(a["cells"], f"{f}.cells", "an app runs in at least one Cell")
        listed: set[str] = set()
        for j, (cell, cn) in enumerate(cells):
            if cell not in cell_names:
                raise self.error(cn, f"{f}.cells[{j}]",
                                 f"no Cell named {_show(cell)} (Cells: {_some(cell_names)})")
            if cell in listed:
                raise self.error(cn, f"{f}.cells[{j}]", f"Cell {_show(cell)} listed twice")
            listed.add(cell)
        group = self.string(a["group"], f"{f}.group")
        if group not in group_names:
            known = _some(group_names) or "none defined in topology.groups"
            raise self.error(a["group"], f"{f}.group", f"no Nginx group named {_show(group)} (groups: {known})")
        kwargs: dict[str, Any] = {}
        if "domain" in a:
            kwargs["domain"] = self.string(a["domain"], f"{f}.domain", limit=MAX_DOMAIN_CHARS)
        if "port" in a:
            kwargs["port"] = self.integer(a["port"], f"{f}.port", low=1, high=65535)
        for key in ("start_seconds", "readiness_seconds"):
            if key in a:
                kwargs[key] = self.number(a[key], f"{f}.{key}", low=0, high=MAX_SECONDS)
        if "requests_per_second" in a:
            kwargs["requests_per_second"] = self.number(a["requests_per_second"], f"{f}.requests_per_second", low=0,
                                                        high=MAX_REQUESTS_PER_SECOND)
        replicas = self.integer(a["replicas"], f"{f}.replicas", low=0, high=MAX_REPLICAS)
        count = self.integer(a["count"], f"{f}.count", low=1, high=MAX_APPS) if "count" in a else 0
        if count and "domain" in kwargs:
            raise self.error(a["domain"], f"{f}.domain", "an app with `count` gets one domain per copy: omit domain")
        # Bounds before expansion: `count` copies are made only once they are known to fit.
        if before + max(count, 1) > MAX_APPS:
            where, field = (a["count"], f"{f}.count") if count else (a["name"], f"{f}.name")
            raise self.error(where, field, f"{before + max(count, 1):,} apps exceed the {MAX_APPS:,} of a scenario "
                                           "(the limit, `count` copies included)")
        self.pods += replicas * len(cells) * max(count, 1)
        if self.pods > MAX_PODS:
            raise self.error(a["replicas"], f"{f}.replicas", f"{self.pods:,} pods (replicas x Cells, over the apps so "
                                                             f"far) exceed the {MAX_PODS:,} of a scenario (the limit)")
        names = [f"{name}-{k}" for k in range(1, count + 1)] if count else [name]
        out = []
        cell_tuple = tuple(c for c, _ in cells)
        for n in names:
            self.unique(seen, n, a["name"], f"{f}.name", "app")
            out.append(AppSpec(name=n, cells=cell_tuple, replicas=replicas, group=group, **kwargs))
        return out

    def faults(self, node: Node, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
               apps: tuple[AppSpec, ...]) -> tuple[FaultSpec, ...]:
        out = []
        self.targets = TargetIndex(cells, groups, apps, self.build_hosts)
        pools = {p.name: p for c in cells for p in c.pools}
        for i, fn in enumerate(self.sequence(node, "faults", MAX_FAULTS, "faults")):
            out.append(self.fault(fn, f"faults[{i}]", duration, cells, groups, apps, pools))
        return tuple(out)

    def fault(self, node: Node, f: str, duration: float, cells: tuple[CellSpec, ...], groups: tuple[GroupSpec, ...],
              apps: tuple[AppSpec, ...], pools: dict[str, PoolSpec]) -> FaultSpec:
        keys = {"kind", "at", "duration", "target", "every", "factor", "changes", "free", "pool", "group"}
        m = self.mapping(node, f, keys, required=("kind", "at"))
        kind = self.string(m["kind"], f"{f}.kind")
        if kind not in FAULT_KINDS:
            raise self.error(m["kind"], f"{f}.kind",
                             f"unknown fault kind {_show(kind)} (kinds: {', '.join(FAULT_KINDS)})")
        at = self.number(m["at"], f"{f}.at", low=0)
        if at >= duration:
            raise self.error(m["at"], f"{f}.at", f"at {at:g} s is not before the end of the run ({duration:g} s)")
        kwargs: dict[str, Any] = {}
        if "duration" in m:
            kwargs["duration"] = self.number(m["duration"], f"{f}.duration", positive=True, high=MAX_SECONDS)
        if "every" in m:
            kwargs["every"] = self.number(m["every"], f"{f}.every", low=MIN_EVERY, high=MAX_SECONDS)
            if "duration" in kwargs and kwargs["duration"] >= kwargs["every"]:
                raise self.error(m["every"], f"{f}.every",
                                 f"a repeated fault must end before it repeats (duration {kwargs['duration']:g} s)")
        for key, kinds in FAULT_PARAMS.items():
            if key in m and kind not in kinds:
                raise self.error(m[key], f"{f}.{key}", f"only for fault kinds {', '.join(kinds)}, not {kind}")
        group_names = [g.name for g in groups]
        if "factor" in m:
            kwargs["factor"] = self.number(m["factor"], f"{f}.factor", low=1, high=MAX_FACTOR)
        if "changes" in m:
            kwargs["changes"] = self.integer(m["changes"], f"{f}.changes", low=1, high=MAX_CHANGES)
        if "group" in m:
            group = self.string(m["group"], f"{f}.group")
            if group not in group_names:
                raise self.error(m["group"], f"{f}.group",
                                 f"no Nginx group named {_show(group)} (groups: {_some(group_names) or 'none'})")
            kwargs["group"] = group
        elif kind == "reload-storm":
            raise self.error(node, f"{f}.group", "required for reload-storm")
        if kind == "pool-exhaustion":
            if "pool" not in m:
                raise self.error(node, f"{f}.pool", "required for pool-exhaustion")
            pool_name = self.string(m["pool"], f"{f}.pool")
            if pool_name not in pools:
                raise self.error(m["pool"], f"{f}.pool", f"no pool named {_show(pool_name)} (pools: {_some(pools)})")
            kwargs["pool"] = pool_name
            if "free" in m:
                size = ipaddress.ip_network(pools[pool_name].cidr).num_addresses
                kwargs["free"] = self.integer(m["free"], f"{f}.free", low=0, high=size - 1)
            if "target" in m:
                raise self.error(m["target"], f"{f}.target",
                                 "pool-exhaustion selects its pool with `pool`, not a target")
        if kind == "builder-crash" and not self.build_hosts:
            raise self.error(m["kind"], f"{f}.kind", "builder-crash needs build hosts (topology.build_hosts)")
        if "target" in m:
            kwargs["target"] = self.selector(m["target"], f"{f}.target", kind, kwargs.get("group", ""))
        return FaultSpec(kind=kind, at=at, line=node.start_mark.line + 1, **kwargs)  # type: ignore[arg-type]

    def selector(self, node: Node, f: str, kind: str, group: str) -> Selector:
        targets = self.targets
        assert targets is not None
        m = self.mapping(node, f, {"names", "labels", "count", "percent"})
        what = FAULT_TARGETS[kind]
        if not targets.count(kind, (), group):
            raise self.error(node, f, f"{kind} selects {what}, and there are none")
        names: tuple[str, ...] = ()
        found: dict[str, Labels] = {}
        if "names" in m:
            listed = self.names(m["names"], f"{f}.names", MAX_VALUES, "names")
            for j, (n, nn) in enumerate(listed):
                labels_of = targets.labels_of(kind, n, group)
                if labels_of is None:
                    sample = targets.sample(kind, group)
                    raise self.error(nn, f"{f}.names[{j}]", f"{kind} selects {what}: no {what[:-1]} named "
                                                             f"{_show(n)} (e.g. {', '.join(sample)}, …)")
                found[n] = labels_of
            names = tuple(n for n, _ in listed)
        labels: tuple[tuple[str, str], ...] = ()
        if "labels" in m:
            labels = self.labels(m["labels"], f"{f}.labels")
            values = targets.values(kind, group)
            for key, value in labels:
                if key not in values:
                    raise self.error(m["labels"], f"{f}.labels.{_field_name(key)}",
                                     f"{what} carry no label {_show(key)} (labels: {_some(sorted(values))})")
                if value not in values[key]:
                    raise self.error(m["labels"], f"{f}.labels.{_field_name(key)}",
                                     f"no {what[:-1]} has {key}={_show(value)} "
                                     f"(values: {_some(sorted(values[key]))})")
        if names:  # the names given, filtered by the labels
            matching = sum(1 for ls in found.values() if all(v in ls.get(k, ()) for k, v in labels))
        else:
            matching = targets.count(kind, labels, group)
        if labels and not matching:
            raise self.error(m["labels"], f"{f}.labels", f"no {what[:-1]} matches all of these names and labels")
        count = None
        if "count" in m:
            count = self.integer(m["count"], f"{f}.count", low=1, high=matching)
        percent = None
        if "percent" in m:
            if count is not None:
                raise self.error(m["percent"], f"{f}.percent", "give count or percent, not both")
            percent = self.number(m["percent"], f"{f}.percent", positive=True, high=100)
        return Selector(names=names, labels=labels, count=count, percent=percent)

    def checks(self, node: Node) -> tuple[CheckSpec, ...]:
        out = []
        for i, cn in enumerate(self.sequence(node, "checks", MAX_CHECKS, "checks")):
            f = f"checks[{i}]"
            m = self.mapping(cn, f, {"kind", "within", "limit"}, required=("kind",))
            kind = self.string(m["kind"], f"{f}.kind")
            if kind not in CHECK_KINDS:
                raise self.error(m["kind"], f"{f}.kind",
                                 f"unknown check kind {_show(kind)} (kinds: {', '.join(CHECK_KINDS)})")
            if kind == "builds-finish" and not self.build_hosts:
                raise self.error(m["kind"], f"{f}.kind", "builds-finish needs build hosts (topology.build_hosts)")
            kwargs: dict[str, float] = {}
            if "within" in m:
                kwargs["within"] = self.number(m["within"], f"{f}.within", low=0, high=MAX_SECONDS)
            if "limit" in m:
                kwargs["limit"] = self.number(m["limit"], f"{f}.limit", low=0, high=MAX_LIMIT)
            out.append(CheckSpec(kind=kind, **kwargs))  # type: ignore[arg-type]
        return tuple(out)


def _num(value: float) -> str:
    """A bound or a value in a message: integers exactly, other numbers short."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _some(names: Any, limit: int = 10) -> str:
    """At most ``limit`` names of a collection, for a message."""
    listed = [n for _, n in zip(range(limit + 1), names, strict=False)]
    return ", ".join(listed[:limit]) + (", …" if len(listed) > limit else "")
