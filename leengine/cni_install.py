"""``leengine install-cni DIR``: put the ``leengine-cni`` plugin into a runtime's CNI bin directory.

The installed file is ``leengine/cni_plugin.py`` itself behind the shebang
``#!<this interpreter> -IS``: the runtime execs it on every pod start, and ``-IS``
(isolated, no ``site``) skips site-packages and the editable-install hook, which
cost more than the plugin's own work. Linux passes a shebang's options as one
argument, hence ``-IS`` and not ``-I -S``. The plugin imports nothing outside the
standard library, so it needs no site-packages.

Invariants: the file appears atomically (written under a temporary name in the
same directory, mode 0755, then renamed over ``DIR/leengine-cni``), so a runtime
never execs a half-written plugin; DIR must already exist (a typo must not create
a directory the runtime never reads).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from leengine import cni_plugin

PLUGIN_NAME = "leengine-cni"
MAX_SHEBANG = 128  # bytes of "#!interpreter -IS\n" older kernels read (BINPRM_BUF_SIZE; 256 since Linux 5.1)


class InstallError(Exception):
    """The plugin cannot be installed there; the message is one line for the operator."""


def plugin_text(python: str | None = None) -> bytes:
    """The installed plugin: the shebang line, then the plugin module's source, byte for byte."""
    python = python or sys.executable
    shebang = f"#!{python} -IS\n".encode()
    if not python or not os.path.isabs(python) or any(c.isspace() for c in python) or len(shebang) > MAX_SHEBANG:
        raise InstallError(f"interpreter path {python!r} cannot go in a shebang (absolute, no spaces, "
                           f"at most {MAX_SHEBANG - 7} bytes)")
    return shebang + Path(cni_plugin.__file__).read_bytes()


def install_plugin(directory: str | os.PathLike[str], python: str | None = None) -> Path:
    """Write ``directory/leengine-cni`` atomically (mode 0755) and return its path."""
    target_dir = Path(directory)
    if not target_dir.is_dir():
        what = "does not exist" if not target_dir.exists() else "is not a directory"
        raise InstallError(f"{target_dir} {what}; give the runtime's existing CNI bin directory")
    data = plugin_text(python)
    target = target_dir / PLUGIN_NAME
    fd, temp = tempfile.mkstemp(dir=target_dir, prefix=f".{PLUGIN_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o755)  # mkstemp made it 0600
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return target
