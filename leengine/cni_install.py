"""``leengine install-cni DIR``: put the ``leengine-cni`` plugin into a runtime's CNI bin directory.

The installed file is one Python script run by the shebang ``#!<interpreter> -IS``
(isolated, no ``site``: site-packages and the editable-install hook cost more than
the plugin's own work; Linux passes a shebang's options as one argument, hence
``-IS`` and not ``-I -S``). It holds ``leengine/cni_plugin.py`` twice:

* compiled by that very interpreter (``marshal``), run when the interpreter's
  bytecode magic number is still the one it was compiled for: a runtime execs the
  plugin on every pod start (twice per ADD through libcni), and compiling the
  module's source each time would cost ~3 ms of every exec (a script is never
  cached as bytecode);
* as source text, compiled at run time only when the magic differs (the
  interpreter behind that path was upgraded since): slower, never wrong.

The plugin imports nothing outside the standard library, so it needs no
site-packages. Invariants: the file appears atomically (written under a temporary
name in the same directory, mode 0755, then renamed over ``DIR/leengine-cni``), so a
runtime never execs a half-written plugin; DIR must already exist (a typo must not
create a directory the runtime never reads); the interpreter is run once at install
time to compile the plugin, so one that cannot run it (missing, older than 3.10) is
refused here, not at the first pod start.
"""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from leengine import cni_plugin

PLUGIN_NAME = "leengine-cni"
MAX_SHEBANG = 128  # bytes of "#!interpreter -IS\n" older kernels read (BINPRM_BUF_SIZE; 256 since Linux 5.1)

# Run by the target interpreter at install time: the plugin's source on stdin, its bytecode magic + marshalled
# code on stdout. optimize=2 drops the docstrings (the plugin has no assert): less to unmarshal per exec.
_COMPILE = """\
import marshal, sys
from importlib.util import MAGIC_NUMBER
if sys.version_info < (3, 10):
    sys.exit("the plugin needs Python 3.10 or later, this is " + sys.version.split()[0])
source = sys.stdin.buffer.read().decode("utf-8")
code = compile(source, sys.argv[1], "exec", dont_inherit=True, optimize=2)
sys.stdout.buffer.write(MAGIC_NUMBER + marshal.dumps(code))
"""

# The installed file after its shebang: Python literals in ASCII (the file is plain text, any locale reads it).
_STUB = """\
# leengine-cni: written by `leengine install-cni` (leengine/cni_install.py) from leengine/cni_plugin.py; do not edit.
# The plugin compiled by the interpreter above, and its source for when that interpreter's bytecode changed.
_LEENGINE_CNI_CODE = {code!r}
_LEENGINE_CNI_SOURCE = {source!a}
if __import__("_frozen_importlib_external").MAGIC_NUMBER == {magic!r}:
    exec(__import__("marshal").loads(_LEENGINE_CNI_CODE))
else:
    exec(compile(_LEENGINE_CNI_SOURCE, {filename!a}, "exec", dont_inherit=True))
"""


class InstallError(Exception):
    """The plugin cannot be installed there; the message is one line for the operator."""


def plugin_text(python: str | None = None) -> bytes:
    """The installed plugin: the shebang line, then the plugin module compiled by ``python`` and as source.

    Its code objects name the module's own path, so a traceback shows the lines of ``cni_plugin.py``."""
    python = python or sys.executable
    shebang = f"#!{python} -IS\n".encode()
    if not python or not os.path.isabs(python) or any(c.isspace() for c in python) or len(shebang) > MAX_SHEBANG:
        raise InstallError(f"interpreter path {python!r} cannot go in a shebang (absolute, no spaces, "
                           f"at most {MAX_SHEBANG - 7} bytes)")
    source = Path(cni_plugin.__file__).read_bytes()
    filename = str(Path(cni_plugin.__file__).resolve())
    try:
        run = subprocess.run([python, "-IS", "-c", _COMPILE, filename], input=source, capture_output=True,
                             timeout=60, check=False)
    except OSError as exc:
        raise InstallError(f"cannot run the interpreter {python}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"the interpreter {python} did not compile the plugin within 60 s") from None
    if run.returncode != 0 or len(run.stdout) <= 4:
        reason = (run.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"the interpreter {python} cannot compile the plugin: {reason}")
    magic, code = run.stdout[:4], run.stdout[4:]
    stub = _STUB.format(magic=magic, code=code, source=source.decode("utf-8"), filename=filename)
    return shebang + stub.encode("ascii")


def installed_source(data: bytes) -> str:
    """The plugin source an installed copy (``plugin_text``'s bytes) carries: is it the current one?"""
    for node in ast.parse(data).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_LEENGINE_CNI_SOURCE"]
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise InstallError("not a leengine-cni written by leengine install-cni")


def install_plugin(directory: str | os.PathLike[str], python: str | None = None) -> Path:
    """Write ``directory/leengine-cni`` atomically (mode 0755) and return its path."""
    target_dir = Path(directory)
    if not target_dir.is_dir():
        what = "does not exist" if not target_dir.exists() else "is not a directory"
        raise InstallError(f"{target_dir} {what}; give the runtime's existing CNI bin directory")
    target = target_dir / PLUGIN_NAME
    data = plugin_text(python)
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
