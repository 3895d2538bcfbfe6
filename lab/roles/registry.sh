#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role registry: the Region's image registry (plain HTTP on the management network, no auth: a lab).
# Debian packages: docker-registry.
# Variables:
#   LISTEN             IP:port to serve the registry API on
#   REGISTRY_ROOT      its directory: config.yml and the images (data/)
#   METRICS_ADDRESS    IP:port of the debug server with /metrics (optional)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

address LISTEN "$LISTEN"
path REGISTRY_ROOT "$REGISTRY_ROOT"
mkdir -p "$REGISTRY_ROOT/data"
debug=""
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  debug=", \"debug\": {\"addr\": \"$METRICS_ADDRESS\", \"prometheus\": {\"enabled\": true, \"path\": \"/metrics\"}}"
fi
# JSON is YAML; every value was checked above to hold no quote.
cat > "$REGISTRY_ROOT/config.yml" <<CONFIG
{"version": 0.1, "log": {"level": "warn"},
 "storage": {"filesystem": {"rootdirectory": "$REGISTRY_ROOT/data"}, "delete": {"enabled": true}},
 "http": {"addr": "$LISTEN"$debug}}
CONFIG
exec "${REGISTRY_BINARY:-docker-registry}" serve "$REGISTRY_ROOT/config.yml"
