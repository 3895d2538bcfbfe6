"""How every console script starts and ends: exit codes, one-line errors, ``--log-level`` and logging.

Every command (``leengine``, ``cnictl``, the daemons; ``leengine-cni`` is the one exception:
it speaks the CNI protocol, see its module) is a Typer app run by ``run_app``. The exit
codes, the same for all of them:

====  ==========================================================================
 0    ok
 1    failure: the command was well formed but did not succeed (etcd or an API
      unreachable, a request refused, a key or pool not found, a check failed)
 2    bad input: an unknown option, a bad value, an unusable file; nothing was
      started and nothing was changed
 3    ``cnictl check --exit-code``: certain leaks were found (``EXIT_LEAKS``)
130   a command line tool interrupted by SIGINT (a daemon stops on SIGINT/SIGTERM
      and exits 0: ``leengine/daemon.py``)
====  ==========================================================================

Invariants:

* An error a user can cause or meet is one line on stderr, ``PROG: error: MESSAGE``, never
  a traceback and never Click's framed box: commands raise ``BadInput`` / ``Failed`` (or
  ``typer.Exit`` after printing their own line); Click's usage errors are exit 2.
* ``--log-level`` is one option type (``LogLevelOpt``): a bad level is a usage error, exit 2,
  before anything starts; ``configure_logging`` is the only ``logging.basicConfig``.

It must not know etcd (``leengine/etcd_options.py``), signals or retries (``leengine/daemon.py``)
or any agent.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn

import typer

try:  # Typer vendors Click since 0.2x; its exceptions are the ones its parser raises
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - an older Typer on the real Click
    from click import exceptions as click_errors  # type: ignore[no-redef]  # the same module, another home

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LEAKS = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class CommandError(click_errors.ClickException):
    """A failure the command reports in one line (exit 1); ``run_app`` prints it as ``PROG: error: ...``."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the message held
        if code is not None:
            self.exit_code = code


class Failed(CommandError):
    """Well-formed input, but the command did not succeed: exit 1."""


class BadInput(CommandError):
    """A bad option value, argument or file found before anything started: exit 2."""

    exit_code = EXIT_BAD_INPUT


LOG_LEVELS = ("debug", "info", "warning", "error")


def check_log_level(value: str) -> str:
    """``--log-level``'s value, lower-cased; anything else is a usage error (exit 2)."""
    if value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value[:40]!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


LogLevelOpt = Annotated[str, typer.Option(
    "--log-level", metavar="LEVEL", callback=check_log_level, help=f"log level: {', '.join(LOG_LEVELS)}")]


def configure_logging(level: str) -> None:
    """Configure the root logger once for the process (the one ``basicConfig`` of the commands)."""
    logging.basicConfig(level=check_log_level(level).upper(), format=LOG_FORMAT)


def run_app(app: typer.Typer, prog: str) -> NoReturn:
    """Run ``app`` as ``prog`` and exit with its status; every error is one line on stderr."""
    try:
        status = app(prog_name=prog, standalone_mode=False)
    except click_errors.ClickException as exc:  # usage errors (exit 2), BadInput, Failed
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help text is what the user asked for
            print(exc.format_message(), file=sys.stderr)
        else:
            print(f"{prog}: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Typer turns EOF into Abort; SIGINT is exit 130 already
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status if isinstance(status, int) else EXIT_OK)
