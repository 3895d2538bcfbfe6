#!/usr/bin/env bash
# Regenerate control/generated/ (the gRPC code of control/protos, gitignored) in the source tree.
#
# The package build does this itself (setup.py's build_py hook, so `pip install .` and wheels work);
# this script is for an editable checkout whose protos changed after the install, and is run by
# scripts/setup.sh on every ./test.sh and ./run.sh. It skips itself when the output is up to date.
# The generator is scripts/protos.py; PYTHON defaults to the project's virtualenv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || { echo "build-protos: $PY not found: run ./test.sh or ./run.sh first, or set PYTHON" >&2; exit 1; }
exec "$PY" "$ROOT/scripts/protos.py"
