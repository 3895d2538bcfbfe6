#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role api: one Cell's Kubernetes API. In the one-machine lab (no kube-apiserver can be installed here)
# the project's API process (python -m lab.kube_api); a VM lab runs a real kube-apiserver instead.
# Debian packages: python3 (the leengine package installed, with the lab package).
# Variables:
#   LISTEN             IP:port to serve /api/v1 on (plain HTTP inside the lab's management network)
#   CELL               the Cell's name
#   METRICS_ADDRESS    IP:port of /metrics (optional, passed when the API process takes it)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

address LISTEN "$LISTEN"
label CELL "$CELL"
set -- --listen "$LISTEN" --cell "$CELL"
if [ -n "${LEENGINE_LAB:-}" ]; then
  label LEENGINE_LAB "$LEENGINE_LAB"
  set -- "$@" --lab-id "$LEENGINE_LAB"
fi
exec "$LEENGINE_PYTHON" -m lab.kube_api "$@"
