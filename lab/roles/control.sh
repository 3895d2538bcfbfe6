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
#   REGISTRY_KEY_DIR   the registry tokens' signing key and certificate (token.key, token.crt), made here by
#                      `leengine registry-key` when neither exists yet (optional; needs HTTP_ADDRESS)
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
if [ -n "${REGISTRY_KEY_DIR:-}" ]; then
  path REGISTRY_KEY_DIR "$REGISTRY_KEY_DIR"
  [ -n "${HTTP_ADDRESS:-}" ] || die "REGISTRY_KEY_DIR needs HTTP_ADDRESS: /token is served over HTTP"
  # Made once: a new key would make every token in flight invalid (leengine-control names a half-made pair).
  if [ ! -e "$REGISTRY_KEY_DIR/token.key" ] && [ ! -e "$REGISTRY_KEY_DIR/token.crt" ]; then
    "$(command_path leengine)" registry-key "$REGISTRY_KEY_DIR" || die "leengine registry-key $REGISTRY_KEY_DIR failed"
  fi
  set -- "$@" --registry-key "$REGISTRY_KEY_DIR/token.key" --registry-cert "$REGISTRY_KEY_DIR/token.crt"
fi
exec "$(command_path leengine-control)" "$@"
