"""The restricted YAML composer of scenario files: a node tree from the parser's events, bounded.

The YAML is composed here from the parser's event stream, not by PyYAML's recursive
composer and constructor: at most ``MAX_DEPTH`` levels and ``MAX_VALUES`` values, scalars
of at most ``MAX_SCALAR_CHARS`` characters, one document; only the tags a scenario needs
(string, integer, float, boolean, null, list, mapping), so anchors and aliases, merge
keys (``<<``), timestamps and every other tag are refused where they stand, with the
field they stand at. libyaml's event parser is used when PyYAML has it.
It must not interpret a scenario: sim/scenario_fields.py reads the tree.
"""

from __future__ import annotations

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

from sim.scenario_errors import MAX_DEPTH, MAX_SCALAR_CHARS, MAX_VALUES, ScenarioError, field_name, show

# ------------------------------------------------------------------ the restricted composer

# libyaml's parser when PyYAML has it (events from C: about 10x faster), else PyYAML's own;
# either way only its events are used, never its composer or constructor.
_EVENTS_LOADER: Any = yaml.CBaseLoader if getattr(yaml, "__with_libyaml__", False) else yaml.BaseLoader
_RESOLVER = Resolver()
_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP = _TAG + "seq", _TAG + "map"
_SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL})
CONSTRUCTOR = SafeConstructor()  # only its scalar converters, which keep no state
_RESOLVED: dict[str, str] = {}  # plain scalar -> its implicit tag (the resolver is a pure function of it)


class _Frame:
    """An open list or mapping while composing: its node, a key waiting for its value, the child's name."""

    __slots__ = ("key", "name", "node")

    def __init__(self, node: Node) -> None:
        self.node: Node = node
        self.key: Node | None = None
        self.name: str | int = ""


def compose(text: str, file: str) -> Node | None:
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
                                        f"the tag {show(event.tag)} is not supported (plain lists and mappings only)")
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


def _line(event: Any) -> int:
    """The 1-based line an event starts at (PyYAML's parsers always mark their events)."""
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _scalar_tag(event: ScalarEvent, file: str, stack: list[_Frame]) -> str:
    value = event.value
    if len(value) > MAX_SCALAR_CHARS:
        raise ScenarioError(file, _line(event), _path(stack, event),
                            f"a value of {len(value):,} characters (at most {MAX_SCALAR_CHARS:,})")
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0]:  # quoted: a string
            return STR
        tag = _RESOLVED.get(value)
        if tag is None:
            tag = _RESOLVER.resolve(ScalarNode, value, event.implicit)  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
            if tag in (_TAG + "value", _TAG + "yaml"):  # "=", "!", "&", "*" as plain words: strings
                tag = STR
            if len(_RESOLVED) < 10_000:  # keys and words repeat; a bounded cache
                _RESOLVED[value] = tag
    if tag in _SCALAR_TAGS:
        return tag
    if tag == _TAG + "merge":
        message = "merge keys (<<) are not supported: write the keys out"
    elif tag == _TAG + "timestamp":
        message = f"dates and times are not supported ({show(value)}): give seconds, or quote a string"
    else:
        message = f"the tag {show(tag)} is not supported (strings, numbers, true/false, null only)"
    raise ScenarioError(file, _line(event), _path(stack, event), message)


def _path(stack: list[_Frame], event: Any = None) -> str:
    """The field an event stands at, from the open collections (for errors found while composing)."""
    parts: list[str] = []
    for i, frame in enumerate(stack):
        last = i == len(stack) - 1
        if isinstance(frame.node, SequenceNode):
            parts.append(f"[{len(frame.node.value) - (0 if last else 1)}]")
        elif last and frame.key is None:  # the event is a key: name it when it is a word
            if isinstance(event, ScalarEvent):
                parts.append(field_name(event.value))
        else:
            parts.append(field_name(str(frame.name)))
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out or "(top)"
