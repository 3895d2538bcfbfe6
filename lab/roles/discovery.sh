#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role discovery: ready pods of every Cell -> the upstreams of their domains, through the control service.
# Debian packages: none beyond python3 (the leengine package installed).
# Variables:
#   CONFIG             discovery.yaml (cells: their API URLs; bindings: app -> domain)
#   CONTROL            the control service, IP:port (TLS)
#   CONTROL_TOKEN_FILE discovery's bearer token (mode 600, role discovery)
#   CONTROL_CA         the CA that signed the control service's certificate
#   LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY   etcd (drain records)
#   METRICS_ADDRESS    IP:port of /metrics (optional)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

path CONFIG "$CONFIG"
address CONTROL "$CONTROL"
path CONTROL_TOKEN_FILE "$CONTROL_TOKEN_FILE"
path CONTROL_CA "$CONTROL_CA"
etcd_flags
set -- --config "$CONFIG" --control "$CONTROL" --control-token-file "$CONTROL_TOKEN_FILE" \
  --control-ca "$CONTROL_CA" --etcd "$LEENGINE_ETCD" --etcd-ca "$LEENGINE_ETCD_CA" \
  --etcd-cert "$LEENGINE_ETCD_CERT" --etcd-key "$LEENGINE_ETCD_KEY" --log-level "$LOG_LEVEL"
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  set -- "$@" --metrics-address "$METRICS_ADDRESS"
fi
exec "$(command_path leengine-discovery)" "$@"
