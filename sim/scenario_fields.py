"""The scenario parser's primitives: typed, bounded values from the composed YAML tree, or a ScenarioError.

``Fields`` reads a mapping (unknown, duplicate and missing keys), a list (its limit), a
scalar as a string, an integer or a finite number within bounds, names and labels; each
error names the node's line and the field's path. The document's shape is read by its
subclasses (sim/scenario_faults.py, sim/scenario_parser.py).
It must not know what a Region is.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sim.scenario_errors import (
    CONTROL,
    MAX_NAME_CHARS,
    MAX_NUMBER_CHARS,
    ScenarioError,
    field_name,
    num,
    show,
)
from sim.scenario_yaml import CONSTRUCTOR, FLOAT, INT, NULL, STR
from sim.spec import MAX_LABELS
from sim.targets import TargetIndex

# Cell, group, pool and app names become parts of node, host, pool and namespace names (a
# node is "{cell}-n001", an app of a count "{name}-17"): a DNS label short enough for that.
LABEL_CHARS = 40
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

class Fields:
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
            sub = f"{field}.{field_name(key)}" if field else field_name(key)
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
                return CONSTRUCTOR.construct_yaml_int(node)
            if tag == FLOAT:
                return CONSTRUCTOR.construct_yaml_float(node)
            return CONSTRUCTOR.construct_yaml_bool(node)
        except (ValueError, LookupError, TypeError, ArithmeticError, yaml.YAMLError):
            what = {INT: "an integer", FLOAT: "a number"}.get(tag, "true or false")
            raise self.error(node, field, f"{show(text)} is not {what}") from None

    def scalar(self, node: Node, field: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(node, field, f"must be a single value, got {self.describe(node)}")
        return self.value(node, field)

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        assert isinstance(node, ScalarNode)  # a composed tree holds only these three kinds of node
        try:
            value = self.value(node, "")
        except ScenarioError:
            return show(node.value)
        if value is None:
            return "nothing (null)"
        return f"{type(value).__name__} {show(node.value)}"

    def string(self, node: Node, field: str, *, empty: bool = False, limit: int = MAX_NAME_CHARS,
               control: bool = False) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str):
            raise self.error(node, field, f"must be a string, got {self.describe(node)}")
        if not empty and not value.strip():
            raise self.error(node, field, "must not be empty")
        if len(value) > limit:
            raise self.error(node, field, f"at most {limit:,} characters, got {len(value):,}")
        if not control and CONTROL.search(value):
            raise self.error(node, field, f"control characters are not allowed: {show(value)}")
        return value

    def label(self, node: Node, field: str, what: str) -> str:
        """A name the Region builds other names from (nodes, hosts, pools, namespaces): a DNS label."""
        value = self.string(node, field, limit=LABEL_CHARS)
        if not LABEL.fullmatch(value):
            raise self.error(node, field, f"a {what} name is lowercase letters, digits and '-' (not first or last), "
                                          f"at most {LABEL_CHARS} characters: {show(value)}")
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
            what = "must not be negative" if low == 0 else f"must be at least {num(low)}"
            raise self.error(node, field, f"{what}, got {num(value)}")
        if high is not None and value > high:
            raise self.error(node, field, f"must be at most {num(high)}, got {num(value)}")

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
            sub = f"{field}.{field_name(key)}"
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
            raise self.error(node, field, f"duplicate {what} name {show(name)} (first at line {first})")
        seen[name] = node
