"""The ``leengine-control`` console script: import the server, or say in one line why it cannot.

The server module imports the gRPC code generated from control/protos at import time. The
package build generates it (setup.py), but a source checkout used without an install, or an
install whose build skipped the hook, would otherwise greet the user with a traceback from
the console script's import line. This module imports nothing of the server at load time.
"""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from leengine.control_server import entry as serve
    except ImportError as exc:
        print(f"leengine-control: error: cannot load the control service ({exc}); reinstall the package "
              "(pip install .) or regenerate the gRPC code with scripts/build-protos.sh", file=sys.stderr)
        sys.exit(1)
    serve()


if __name__ == "__main__":
    entry()
