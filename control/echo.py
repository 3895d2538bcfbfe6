"""How a bad value is shown in the control service's error messages: clipped, never whole.

A value from a request or a record read back from etcd may be megabytes long or hostile; an
error names at most a few dozen characters of it and how long it was, so a message stays one
readable line. ``clip`` shows a string as it is (the messages put it in context), ``quoted``
as a Python literal (control characters visible). Anything that is not a string is shown by
its ``repr``, cut before it is built in full.
It must not know which value, which record or which error it is shown in.
"""

from __future__ import annotations

from typing import Any

MAX_ECHO = 64  # characters of a bad value an error repeats


def _text(value: Any, limit: int) -> str:
    return value if isinstance(value, str) else repr(value)[: limit * 2]


def clip(value: Any, limit: int = MAX_ECHO) -> str:
    """``value`` as text, cut to ``limit`` characters with its length said when longer."""
    text = _text(value, limit)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"


def quoted(value: Any, limit: int = MAX_ECHO) -> str:
    """``value`` as a quoted literal, cut to ``limit`` characters with its length said when longer."""
    text = _text(value, limit)
    return repr(text[:limit]) + (f"…({len(text)} characters)" if len(text) > limit else "")


__all__ = ["MAX_ECHO", "clip", "quoted"]
