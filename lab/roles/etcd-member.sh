#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role etcd-member: one member of the Region's etcd cluster; clients over TLS with client certificates,
# peers over plain HTTP on the management network.
# Debian packages: etcd-server.
# Variables:
#   MEMBER_NAME        this member's name (etcd1)
#   MEMBER_IP          its management address (clients and peers reach it there)
#   DATA_DIR           its data directory (kept across restarts: a restarted member rejoins with its data)
#   INITIAL_CLUSTER    etcd1=http://IP:2380,etcd2=...,etcd3=...
#   CLUSTER_STATE      new (default) | existing
#   CLUSTER_TOKEN      the cluster's token (default leengine-lab)
#   CLIENT_PORT        2379 (default);  PEER_PORT 2380 (default)
#   EXTRA_CLIENT_IPS   more addresses to serve clients on, space-separated (default none)
#   TLS_CA TLS_CERT TLS_KEY   the CA of the clients' certificates, the server certificate and key
#   METRICS_ADDRESS    IP:port of /metrics (plain HTTP; optional)
#   FAST_RAFT          1: 50 ms heartbeat / 500 ms election timeout (a lab on a busy machine), else etcd's defaults
#   ETCD_BINARY        the etcd binary (default etcd)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

label MEMBER_NAME "$MEMBER_NAME"
address MEMBER_IP "$MEMBER_IP:1"
path DATA_DIR "$DATA_DIR"
need INITIAL_CLUSTER "$INITIAL_CLUSTER"
case "$INITIAL_CLUSTER" in *[!a-z0-9=:/.,-]*) die "INITIAL_CLUSTER=$INITIAL_CLUSTER holds odd characters" ;; esac
CLUSTER_STATE="${CLUSTER_STATE:-new}"
case "$CLUSTER_STATE" in new | existing) ;; *) die "CLUSTER_STATE=$CLUSTER_STATE is not new or existing" ;; esac
CLUSTER_TOKEN="${CLUSTER_TOKEN:-leengine-lab}"
label CLUSTER_TOKEN "$CLUSTER_TOKEN"
CLIENT_PORT="${CLIENT_PORT:-2379}"
PEER_PORT="${PEER_PORT:-2380}"
path TLS_CA "$TLS_CA"
path TLS_CERT "$TLS_CERT"
path TLS_KEY "$TLS_KEY"

client_urls="https://$MEMBER_IP:$CLIENT_PORT"
for ip in ${EXTRA_CLIENT_IPS:-}; do
  address EXTRA_CLIENT_IPS "$ip:1"
  client_urls="$client_urls,https://$ip:$CLIENT_PORT"
done
peer_url="http://$MEMBER_IP:$PEER_PORT"

set -- --name "$MEMBER_NAME" --data-dir "$DATA_DIR" \
  --listen-client-urls "$client_urls" --advertise-client-urls "https://$MEMBER_IP:$CLIENT_PORT" \
  --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
  --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-state "$CLUSTER_STATE" \
  --initial-cluster-token "$CLUSTER_TOKEN" \
  --client-cert-auth --trusted-ca-file "$TLS_CA" --cert-file "$TLS_CERT" --key-file "$TLS_KEY" \
  --logger zap --log-outputs stderr --log-level warn
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  set -- "$@" --listen-metrics-urls "http://$METRICS_ADDRESS"
fi
if [ "${FAST_RAFT:-0}" = 1 ]; then
  set -- "$@" --heartbeat-interval 50 --election-timeout 500
fi
mkdir -p "$DATA_DIR"
chmod 700 "$DATA_DIR"
exec "${ETCD_BINARY:-etcd}" "$@"
