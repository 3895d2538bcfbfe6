"""``leengine install-cni DIR``: put the ``leengine-cni`` plugin into a runtime's CNI bin directory.

Two plugins behave alike (the same tests run both); ``install`` picks one:

* **Go** (the default where it can be built): ``build/leengine-cni``, a static binary
  built offline from ``scripts/cni-plugin/main.go`` by ``scripts/build-cni-plugin.sh``
  (run here; it skips itself when up to date). An exec costs a Go start, ~1 ms of CPU
  instead of Python's ~12, on every ADD and DEL (docs/cni.md, "What an invocation costs").
  Its supported versions come from ``cni_plugin.SUPPORTED_VERSIONS`` at build time.
* **Python**, the fallback where no Go toolchain (or no source checkout) exists, or when
  an interpreter is named (``--python``): the file described below.

The Python plugin's installed file is both a POSIX ``sh`` script (its shebang: ``#!/bin/sh``) and a
Python script:

* ``sh`` runs first (dash starts in ~1 ms, Python in ~12). It answers VERSION
  itself when stdin is what libcni sends (``{"cniVersion":"X"}``, no newline; libcni
  validates a configuration by a VERSION exec of each plugin before every ADD), and
  otherwise ``exec``s the interpreter, ``<python> -IS <this file>`` (isolated, no
  ``site``: site-packages and the editable-install hook cost more than the plugin's
  own work), with stdin untouched. Any other VERSION input is handed to Python
  after what the shell read (its first line, without NUL bytes: the shell cannot
  hold them, and the plugin's VERSION ignores them for that reason), so Python
  judges it. The shell never evaluates its input: it compares it with a ``case``
  pattern, prints a version made only of ``[0-9A-Za-z.+_-]`` as a ``printf``
  argument and passes what it read on with ``printf %s``. Its answer is generated
  here from ``cni_plugin.SUPPORTED_VERSIONS``, so the two cannot drift; a test
  compares them on arbitrary input. For Python the shell part is one string
  literal (``''':'`` is ``:`` to the shell): it holds no backslash and no ``'''``.
* For Python the file holds ``leengine/cni_plugin.py`` twice: compiled by that
  very interpreter (``marshal``), run when the interpreter's bytecode magic number
  is still the one it was compiled for (compiling the module's source on each exec
  would cost ~3 ms: a script is never cached as bytecode); and as source text,
  compiled at run time only when the magic differs (the interpreter behind that
  path was upgraded since): slower, never wrong.

The plugin imports nothing outside the standard library, so it needs no
site-packages. Invariants: the file appears atomically (written under a temporary
name in the same directory, mode 0755, then renamed over ``DIR/leengine-cni``), so a
runtime never execs a half-written plugin; DIR must already exist (a typo must not
create a directory the runtime never reads); the interpreter's path is absolute and
made of ``[A-Za-z0-9/._+-]`` only (it is a word of the shell part, single-quoted);
the interpreter is run once at install time to compile the plugin, so one that
cannot run it (missing, older than 3.10) is refused here, not at the first pod start.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from leengine import cni_plugin

PLUGIN_NAME = "leengine-cni"
PLUGIN_KINDS = ("auto", "go", "python")
_CHECKOUT = Path(__file__).resolve().parents[1]
GO_BUILD_SCRIPT = _CHECKOUT / "scripts" / "build-cni-plugin.sh"
GO_BINARY = _CHECKOUT / "build" / PLUGIN_NAME
GO_BUILD_TIMEOUT = 600  # seconds: a first build compiles the standard library's packages it uses
MAX_INTERPRETER = 1024  # bytes of the interpreter's path: a sane bound, far below PATH_MAX
_SAFE_PATH = re.compile(r"/[A-Za-z0-9/._+-]*")  # single-quoted in the shell part: no quote, space or newline
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_TRIPLE = "'" * 3  # the delimiter of the Python string that holds the shell part

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

# The shell part. TRIPLE + ":'" is the command ":" to the shell and opens a string for Python, which TRIPLE closes
# after the last exec (in a comment of the shell's: the shell part alone is a whole script, which shellcheck checks).
# {python} and {supported} are checked before they are put in (_SAFE_PATH, _VERSION).
_SHELL = """\
#!/bin/sh
# leengine-cni: written by `leengine install-cni` (leengine/cni_install.py) from leengine/cni_plugin.py; do not edit.
# A POSIX sh script and a Python script in one file. sh answers VERSION as libcni asks it without starting Python;
# every other invocation goes to the plugin below, run by the interpreter the exec lines name.
{triple}:'
case $0 in -*) plugin=./$0 ;; *) plugin=$0 ;; esac
if [ "${{CNI_COMMAND-}}" = VERSION ] && [ "$#" -eq 0 ]; then
  if IFS= read -r line; then ended=yes; else ended=; fi
  if [ -z "$ended" ]; then
    case $line in
      '{{"cniVersion":"'*'"}}')
        version=${{line#'{{"cniVersion":"'}}
        version=${{version%'"}}'}}
        case $version in
          ''|*[!0-9A-Za-z.+_-]*) ;;
          *) printf '{{"cniVersion": "%s", "supportedVersions": [%s]}}' "$version" '{supported}'; echo; exit 0 ;;
        esac ;;
    esac
  fi
  # Not libcni's request: the plugin judges it, reading what the shell read first, then the rest of stdin.
  {{ printf '%s' "$line"; if [ -n "$ended" ]; then echo; exec cat; fi; }} | '{python}' -IS "$plugin"
  exit
fi
exec '{python}' -IS "$plugin" "$@"
# {triple}
"""

# The Python part: Python literals in ASCII (the file is plain text, any locale reads it).
_STUB = """\
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


def shell_part(python: str) -> str:
    """The file's first part: the shell script that answers libcni's VERSION and execs ``python`` for the rest."""
    if not _SAFE_PATH.fullmatch(python) or "//" in python or len(python.encode()) > MAX_INTERPRETER:
        raise InstallError(f"interpreter path {python!r} cannot go in the plugin's exec line (an absolute path of "
                           f"letters, digits and /._+- only, at most {MAX_INTERPRETER} bytes)")
    if not all(_VERSION.fullmatch(v) for v in cni_plugin.SUPPORTED_VERSIONS):  # a bug here, not bad input
        raise InstallError(f"supported versions {cni_plugin.SUPPORTED_VERSIONS!r} are not all X.Y.Z")
    supported = ", ".join(f'"{v}"' for v in cni_plugin.SUPPORTED_VERSIONS)
    shell = _SHELL.format(python=python, supported=supported, triple=_TRIPLE)
    body = shell[shell.index(_TRIPLE) + 3: shell.rindex(_TRIPLE)]
    assert "\\" not in shell and _TRIPLE not in body, "the shell part must stay one plain Python string"
    return shell


def plugin_text(python: str | None = None) -> bytes:
    """The installed plugin: the shell part, then the plugin module compiled by ``python`` and as source.

    Its code objects name the module's own path, so a traceback shows the lines of ``cni_plugin.py``."""
    python = python or sys.executable
    shell = shell_part(python)
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
    return (shell + stub).encode("ascii")


def installed_interpreter(data: bytes) -> str:
    """The interpreter an installed copy (``plugin_text``'s bytes) execs for everything but libcni's VERSION."""
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith("exec '"):
            return line.split("'")[1]
    raise InstallError("not a leengine-cni written by leengine install-cni")


def installed_source(data: bytes) -> str:
    """The plugin source an installed copy (``plugin_text``'s bytes) carries: is it the current one?"""
    for node in ast.parse(data).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_LEENGINE_CNI_SOURCE"]
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise InstallError("not a leengine-cni written by leengine install-cni")


@dataclass(frozen=True)
class Installed:
    """What ``install`` wrote: the path, which plugin ("go" or "python") and, for a person, how it runs."""

    path: Path
    kind: str
    how: str


def install(directory: str | os.PathLike[str], python: str | None = None, plugin: str = "auto") -> Installed:
    """Install the Go plugin (``plugin="go"``, or ``"auto"`` without ``python`` where it can be built), else the
    Python one; ``"go"`` refuses when the Go plugin cannot be built, ``"auto"`` falls back and says why."""
    if plugin not in PLUGIN_KINDS:
        raise InstallError(f"plugin {plugin!r}: expected one of {', '.join(PLUGIN_KINDS)}")
    if plugin == "go" and python is not None:
        raise InstallError("--python names the Python plugin's interpreter; the Go plugin needs none")
    _check_directory(Path(directory))
    why_not_go = ""
    if plugin == "go" or (plugin == "auto" and python is None):
        try:
            binary = build_go_plugin()
        except InstallError as exc:
            if plugin == "go":
                raise
            why_not_go = f"; no Go plugin: {exc}"
        else:
            return Installed(install_go_plugin(directory, binary), "go", f"compiled Go plugin, built from {binary}")
    path = install_plugin(directory, python)
    return Installed(path, "python", f"Python plugin: VERSION in sh, the rest by {python or sys.executable} -IS"
                                     f"{why_not_go}")


def build_go_plugin() -> Path:
    """``build/leengine-cni``, (re)built by ``scripts/build-cni-plugin.sh`` when its inputs changed (offline)."""
    if not GO_BUILD_SCRIPT.is_file():
        raise InstallError(f"{GO_BUILD_SCRIPT} not found (not a source checkout)")
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        run = subprocess.run([str(GO_BUILD_SCRIPT), str(GO_BINARY)], env=env, capture_output=True,
                             timeout=GO_BUILD_TIMEOUT, check=False)
    except OSError as exc:
        raise InstallError(f"cannot run {GO_BUILD_SCRIPT}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{GO_BUILD_SCRIPT} did not finish within {GO_BUILD_TIMEOUT} s") from None
    if run.returncode != 0 or not GO_BINARY.is_file():
        reason = (run.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"{GO_BUILD_SCRIPT.name} failed: {reason}")
    return GO_BINARY


def install_go_plugin(directory: str | os.PathLike[str], binary: Path | None = None) -> Path:
    """Copy the Go plugin (``build_go_plugin()`` unless given) to ``directory/leengine-cni`` atomically, mode 0755."""
    target_dir = Path(directory)
    _check_directory(target_dir)
    return _write_atomically(target_dir / PLUGIN_NAME, (binary or build_go_plugin()).read_bytes())


def _check_directory(target_dir: Path) -> None:
    if not target_dir.is_dir():
        what = "does not exist" if not target_dir.exists() else "is not a directory"
        raise InstallError(f"{target_dir} {what}; give the runtime's existing CNI bin directory")


def install_plugin(directory: str | os.PathLike[str], python: str | None = None) -> Path:
    """Write the Python plugin to ``directory/leengine-cni`` atomically (mode 0755) and return its path."""
    target_dir = Path(directory)
    _check_directory(target_dir)
    return _write_atomically(target_dir / PLUGIN_NAME, plugin_text(python))


def _write_atomically(target: Path, data: bytes) -> Path:
    """Written under a temporary name in the same directory, then renamed: a runtime never execs half a plugin."""
    target_dir = target.parent
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
