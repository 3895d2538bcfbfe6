#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role control: the control service (slb-core, builds) over gRPC with TLS.
# Debian packages: none beyond python3 (the leengine package installed: pip install .).
# Variables:
#   LISTEN             IP:port to serve gRPC on (the control host's management address)
#   TOKENS_FILE        the tokens file (lines "token name role", mode 600)
#   TLS_CERT TLS_KEY   the server certificate (an IP SAN for LISTEN's address) and its key
#   LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY   etcd (README.md)
#   METRICS_ADDRESS    IP:port of /metrics (optional)
#   CELLS_FILE         the Cells' Kubernetes APIs for the platform's apps (optional; without it the apps
#                      RPCs answer FAILED_PRECONDITION)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

address LISTEN "$LISTEN"
path TOKENS_FILE "$TOKENS_FILE"
path TLS_CERT "$TLS_CERT"
path TLS_KEY "$TLS_KEY"
etcd_flags
set -- --listen "$LISTEN" --tokens "$TOKENS_FILE" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY" \
  --etcd "$LEENGINE_ETCD" --etcd-ca "$LEENGINE_ETCD_CA" --etcd-cert "$LEENGINE_ETCD_CERT" \
  --etcd-key "$LEENGINE_ETCD_KEY" --log-level "$LOG_LEVEL"
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  set -- "$@" --metrics-address "$METRICS_ADDRESS"
fi
if [ -n "${CELLS_FILE:-}" ]; then
  path CELLS_FILE "$CELLS_FILE"
  set -- "$@" --cells "$CELLS_FILE"
fi
exec "$(command_path leengine-control)" "$@"
