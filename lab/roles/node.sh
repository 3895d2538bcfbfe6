#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role node: "node.sh cni-agent" runs the node's CNI agent, "node.sh runtime" its container runtime.
# Debian packages: openvswitch-switch, iproute2, busybox (and the leengine package installed). Runs as root.
# On a VM lab the runtime is containerd and only the CNI agent (and "leengine install-cni") is this step.
# Variables:
#   NODE_NAME          the node's name, as its Cell's API knows it
#   cni-agent:  CNI_SOCKET (the agent's unix socket), OVSDB (unix:PATH), BRIDGE (the node's OVS bridge),
#               COOLDOWN (seconds, default 30), MTU (default 1500),
#               LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY, METRICS_ADDRESS (optional)
#   runtime:    RUNTIME_SOCKET, KUBE_URL (the Cell's API), CNI_BIN_DIR, CNI_CONF, NETNS_PREFIX (le-<id>-p-),
#               LEENGINE_LAB (the lab id)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

[ $# -eq 1 ] || die "usage: node.sh cni-agent|runtime"
label NODE_NAME "$NODE_NAME"
case "$1" in
  cni-agent)
    path CNI_SOCKET "$CNI_SOCKET"
    case "$OVSDB" in unix:/*) path OVSDB "${OVSDB#unix:}" ;; *) die "OVSDB=$OVSDB is not unix:PATH" ;; esac
    case "$BRIDGE" in "" | *[!A-Za-z0-9_.-]*) die "BRIDGE=$BRIDGE is not a bridge name" ;; esac
    COOLDOWN="${COOLDOWN:-30}"
    case "$COOLDOWN" in "" | *[!0-9.]*) die "COOLDOWN=$COOLDOWN is not a number of seconds" ;; esac
    MTU="${MTU:-1500}"
    case "$MTU" in "" | *[!0-9]*) die "MTU=$MTU is not a number" ;; esac
    etcd_flags
    mkdir -p "$(dirname "$CNI_SOCKET")"
    set -- --node "$NODE_NAME" --socket "$CNI_SOCKET" --ovsdb "$OVSDB" --bridge "$BRIDGE" --mtu "$MTU" \
      --cooldown "$COOLDOWN" --etcd "$LEENGINE_ETCD" --etcd-ca "$LEENGINE_ETCD_CA" \
      --etcd-cert "$LEENGINE_ETCD_CERT" --etcd-key "$LEENGINE_ETCD_KEY" --log-level "$LOG_LEVEL"
    if [ -n "${METRICS_ADDRESS:-}" ]; then
      address METRICS_ADDRESS "$METRICS_ADDRESS"
      set -- "$@" --metrics-address "$METRICS_ADDRESS"
    fi
    exec "$(command_path leengine-cni-agent)" "$@"
    ;;
  runtime)
    path RUNTIME_SOCKET "$RUNTIME_SOCKET"
    case "$KUBE_URL" in http://*) address KUBE_URL "${KUBE_URL#http://}" ;; *) die "KUBE_URL=$KUBE_URL is not http://IP:port" ;; esac
    path CNI_BIN_DIR "$CNI_BIN_DIR"
    path CNI_CONF "$CNI_CONF"
    case "$NETNS_PREFIX" in "" | *[!a-z0-9-]*) die "NETNS_PREFIX=$NETNS_PREFIX is not a netns prefix" ;; esac
    label LEENGINE_LAB "$LEENGINE_LAB"
    mkdir -p "$(dirname "$RUNTIME_SOCKET")"
    set -- --node "$NODE_NAME" --socket "$RUNTIME_SOCKET" --kube "$KUBE_URL" --cni-bin "$CNI_BIN_DIR" \
      --cni-conf "$CNI_CONF" --lab-id "$LEENGINE_LAB" --netns-prefix "$NETNS_PREFIX"
    exec "$LEENGINE_PYTHON" -m lab.container_runtime "$@"
    ;;
  *) die "usage: node.sh cni-agent|runtime" ;;
esac
