#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role registry: the Region's image registry (docker-registry, plain HTTP), with token auth when TOKEN_REALM is set:
# it then trusts only tokens of the control service's /token (docs/registry.md). Clients call the registry gate
# (registry-gate.sh) in front of it, never this listener.
# Debian packages: docker-registry.
# Variables:
#   LISTEN             IP:port to serve the registry API on (loopback, or an address only the gate reaches)
#   REGISTRY_ROOT      its directory: config.yml, token.crt and the images (data/)
#   METRICS_ADDRESS    IP:port of the debug server with /metrics (optional)
#   TOKEN_REALM        the control service's /token URL (leengine-control --http-address): token auth (optional;
#                      without it the registry trusts everyone)
#   TOKEN_CERT         the tokens' signing certificate (leengine registry-key's token.crt), copied to
#                      REGISTRY_ROOT/token.crt, the rootcertbundle (with TOKEN_REALM)
#   TOKEN_SERVICE      the tokens' aud, leengine-control --registry-service (default leengine-registry)
#   TOKEN_ISSUER       the tokens' iss, leengine-control --registry-issuer (default leengine-control)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

# word NAME VALUE: a service or issuer name (it goes into the config between quotes).
word() {
  case "$2" in
    "" | *[!A-Za-z0-9._-]*) die "$1=$2 is not a name of A-Za-z0-9._-" ;;
  esac
}

address LISTEN "$LISTEN"
path REGISTRY_ROOT "$REGISTRY_ROOT"
mkdir -p "$REGISTRY_ROOT/data"
debug=""
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  debug=", \"debug\": {\"addr\": \"$METRICS_ADDRESS\", \"prometheus\": {\"enabled\": true, \"path\": \"/metrics\"}}"
fi
auth=""
if [ -n "${TOKEN_REALM:-}" ]; then
  case "$TOKEN_REALM" in
    http://*/token | https://*/token) ;;
    *) die "TOKEN_REALM=$TOKEN_REALM is not an http(s)://HOST:PORT/token URL" ;;
  esac
  case "$TOKEN_REALM" in
    *[!A-Za-z0-9:/._-]*) die "TOKEN_REALM=$TOKEN_REALM holds characters other than A-Za-z0-9:/._-" ;;
  esac
  path TOKEN_CERT "${TOKEN_CERT:-}"
  TOKEN_SERVICE="${TOKEN_SERVICE:-leengine-registry}"
  TOKEN_ISSUER="${TOKEN_ISSUER:-leengine-control}"
  word TOKEN_SERVICE "$TOKEN_SERVICE"
  word TOKEN_ISSUER "$TOKEN_ISSUER"
  cp "$TOKEN_CERT" "$REGISTRY_ROOT/token.crt.tmp"
  mv -f "$REGISTRY_ROOT/token.crt.tmp" "$REGISTRY_ROOT/token.crt"
  auth=", \"auth\": {\"token\": {\"realm\": \"$TOKEN_REALM\", \"service\": \"$TOKEN_SERVICE\",
   \"issuer\": \"$TOKEN_ISSUER\", \"rootcertbundle\": \"$REGISTRY_ROOT/token.crt\"}}"
fi
# JSON is YAML; every value was checked above to hold no quote.
cat > "$REGISTRY_ROOT/config.yml" <<CONFIG
{"version": 0.1, "log": {"level": "warn"},
 "storage": {"filesystem": {"rootdirectory": "$REGISTRY_ROOT/data"}, "delete": {"enabled": true}},
 "http": {"addr": "$LISTEN"$debug}$auth}
CONFIG
exec "${REGISTRY_BINARY:-docker-registry}" serve "$REGISTRY_ROOT/config.yml"
