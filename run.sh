#!/usr/bin/env bash
# The main job: a simulated run on the embedded default (no services needed).
# Extra arguments go to `leengine demo` (e.g. --seed 7 --json).
source "$(dirname "$0")/scripts/setup.sh"
ensure_venv
exec "$VENV/bin/leengine" demo "$@"
