#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role nginx-host: the SLB agent, which runs this host's private Nginx (with the lua module) under PREFIX.
# Debian packages: nginx, libnginx-mod-http-lua (and the leengine package installed).
# Variables:
#   GROUP              the Nginx group this host serves
#   SLB_HOST           this host's name, as it reports its status
#   PREFIX             Nginx's directory (conf, domains, logs, state); made world-searchable for the workers
#   LISTEN_ADDRESS     the address domains listen on (default 0.0.0.0: the host's own netns)
#   LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY   etcd
#   METRICS_ADDRESS    IP:port of /metrics (optional)
#   TRAFFIC_EVERY      seconds between the per-version traffic records (optional; the agent's default 5)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

label GROUP "$GROUP"
label SLB_HOST "$SLB_HOST"
path PREFIX "$PREFIX"
LISTEN_ADDRESS="${LISTEN_ADDRESS:-0.0.0.0}"
address LISTEN_ADDRESS "$LISTEN_ADDRESS:1"
etcd_flags
mkdir -p "$PREFIX"
chmod 755 "$PREFIX"
set -- --group "$GROUP" --host "$SLB_HOST" --prefix "$PREFIX" --listen-address "$LISTEN_ADDRESS" \
  --etcd "$LEENGINE_ETCD" --etcd-ca "$LEENGINE_ETCD_CA" --etcd-cert "$LEENGINE_ETCD_CERT" \
  --etcd-key "$LEENGINE_ETCD_KEY" --log-level "$LOG_LEVEL"
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  set -- "$@" --metrics-address "$METRICS_ADDRESS"
fi
if [ -n "${TRAFFIC_EVERY:-}" ]; then
  case "$TRAFFIC_EVERY" in
    *[!0-9.]* | .* | *.*.*) die "TRAFFIC_EVERY=$TRAFFIC_EVERY is not a number of seconds" ;;
  esac
  set -- "$@" --traffic-every "$TRAFFIC_EVERY"
fi
exec "$(command_path leengine-slb-agent)" "$@"
