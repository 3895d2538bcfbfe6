#!/usr/bin/env bash
# The main job: a scenario replay on the simulated Region (no services needed), by default
# scenarios/default.yaml. Extra arguments go to `leengine sim run` (e.g. scenarios/cell-outage.yaml
# --seed 7 --out /tmp/run); the report, metrics and plots land in runs/NAME-seedN/.
source "$(dirname "$0")/scripts/setup.sh"
ensure_venv
cd "$ROOT"
exec "$VENV/bin/leengine" sim run "$@"
