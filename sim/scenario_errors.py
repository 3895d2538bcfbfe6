"""Scenario errors and the loader's limits, shared by the YAML composer and the field parser.

A ``ScenarioError``'s ``str`` is one line ``FILE:LINE: FIELD: message`` (sim/scenario.py
says what FIELD is); every user value echoed in a message goes through ``show`` (cut and
escaped) and every key through ``field_name``, so the line stays one short line.
The limits are documented in docs/sim.md, "Limits".
It must not parse or run anything.
"""

from __future__ import annotations

import re
from typing import Any

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
        file, field, message = one_line(file), one_line(field or "(top)"), one_line(message)
        if len(message) > 1000:  # every echoed value is cut already; this is the last guard
            message = message[:1000] + "…"
        self.file, self.line, self.field, self.message = file, line, field, message
        super().__init__(f"{file}:{line}: {field}: {message}")


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """Control characters (newlines, escape codes) as escapes: a message never spans or paints lines."""
    return CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def show(value: Any, limit: int = 40) -> str:
    """A user value for a message: repr'd (escaped), and cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"



_PLAIN_KEY = re.compile(r"[A-Za-z0-9_<>-]{1,40}")


def field_name(name: str) -> str:
    """A key as one part of a FIELD path: plain words as they are; anything else quoted and escaped
    (no space, ':', '.' or control character), cut to 40 characters, so FIELD stays one token."""
    if _PLAIN_KEY.fullmatch(name):
        return name
    cut = name[:40]
    escaped = "".join(c if (c.isascii() and c.isalnum()) or c in "_-<>" else
                      (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                       else f"\\U{ord(c):08x}") for c in cut)
    return f'"{escaped}"' + ("…" if len(name) > 40 else "")


def num(value: float) -> str:
    """A bound or a value in a message: integers exactly, other numbers short."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def some(names: Any, limit: int = 10) -> str:
    """At most ``limit`` names of a collection, for a message."""
    listed = [n for _, n in zip(range(limit + 1), names, strict=False)]
    return ", ".join(listed[:limit]) + (", …" if len(listed) > limit else "")
