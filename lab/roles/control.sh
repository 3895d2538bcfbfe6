#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role control: the control service (slb-core, builds) over gRPC with TLS, and the registry's /token over HTTPS.
# Debian packages: none beyond python3 (the leengine package installed: pip install .).
# Variables:
#   LISTEN             IP:port to serve gRPC on (the control host's management address)
#   TOKENS_FILE        the tokens file (lines "token name role", mode 600)
#   TLS_CERT TLS_KEY   the server certificate (an IP SAN for LISTEN's address) and its key
#   LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY   etcd (README.md)
#   METRICS_ADDRESS    IP:port of /metrics (optional)
#   CELLS_FILE         the Cells' Kubernetes APIs for the platform's apps (optional; without it the apps
#                      RPCs answer FAILED_PRECONDITION)
#   HTTP_ADDRESS       IP:port of the HTTP listener, HTTPS with TLS_CERT (its IP must be one of the certificate's
#                      SANs): the registry's GET /token, GitLab's POST /hooks/gitlab (optional)
#   REGISTRY_KEY       the registry tokens' signing key (`leengine registry-key DIR`'s DIR/token.key, mode 600):
#                      serve GET /token (optional; needs HTTP_ADDRESS)
#   REGISTRY_CERT      its certificate (DIR/token.crt; the registry's rootcertbundle), with REGISTRY_KEY
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
if [ -n "${HTTP_ADDRESS:-}" ]; then
  address HTTP_ADDRESS "$HTTP_ADDRESS"
  set -- "$@" --http-address "$HTTP_ADDRESS"
fi
if [ -n "${REGISTRY_KEY:-}" ]; then
  [ -n "${HTTP_ADDRESS:-}" ] || die "REGISTRY_KEY needs HTTP_ADDRESS: /token is served over HTTP"
  path REGISTRY_KEY "$REGISTRY_KEY"
  path REGISTRY_CERT "${REGISTRY_CERT:-}"
  set -- "$@" --registry-key "$REGISTRY_KEY" --registry-cert "$REGISTRY_CERT"
fi
exec "$(command_path leengine-control)" "$@"
