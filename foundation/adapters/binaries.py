"""Finding the program a real adapter or a lab launcher runs, and reading the end of its log.

``find_binary("nginx", env="LEENGINE_NGINX_BIN", hint=…)``: the path in ``$LEENGINE_NGINX_BIN``
when it is set (it must be executable: a typo is an error, never a silent fallback), else
the name on ``PATH`` or in the sbin directories a non-root ``PATH`` lacks (Debian installs
nginx and the OVS daemons there). A missing binary is an error that says what to install,
never a skip. ``log_tail(path, lines, what)``: the last lines of a program's log for an
error message, or a note that there is none. It must not know what the binary is for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_binary(name: str, *, env: str | None, hint: str, error: type[Exception] = RuntimeError) -> str:
    """The path of ``name`` (``$env`` first); ``error`` with ``hint`` (what to install) when there is none."""
    explicit = os.environ.get(env) if env else None
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise error(f"{env}={explicit} is not an executable file")
        return explicit
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS]))
    if found is None:
        raise error(f"{name} not found: {hint}" + (f", or set {env}" if env else ""))
    return found


def log_tail(path: Path, lines: int, what: str) -> str:
    """The last ``lines`` lines of the log at ``path`` (``(no WHAT log)`` when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {what} log)"
    return "\n".join(text.splitlines()[-lines:])
