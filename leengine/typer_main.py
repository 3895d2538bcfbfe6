"""Run a Typer app so that every usage error is one line on stderr, like the app's own errors.

Click's usage errors (bad option, missing argument) carry ``exit_code`` and
``format_message()``; Typer would print them in a box over several lines.
"""

from __future__ import annotations

import sys

import typer


def run_app(app: typer.Typer, prog: str) -> None:
    try:
        status = app(standalone_mode=False)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"{prog}: error: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(status if isinstance(status, int) else 0)
