#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role build-host: the build agent (git + buildah, chroot isolation, vfs storage), pushing to the registry.
# Debian packages: buildah, git, busybox-static, util-linux (and the leengine package installed). Runs as root.
# Variables:
#   BUILD_HOST         this build host's name, as it registers in etcd
#   REPOS              the directory of the repositories ({REPOS}/{repo})
#   WORKDIR            checkouts and dependency caches
#   STORAGE            the buildah store (default WORKDIR/storage)
#   REGISTRY           the registry, IP:port
#   TTL                lease seconds (default 10)
#   LEENGINE_ETCD LEENGINE_ETCD_CA LEENGINE_ETCD_CERT LEENGINE_ETCD_KEY   etcd
#   METRICS_ADDRESS    IP:port of /metrics (optional)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

label BUILD_HOST "$BUILD_HOST"
path REPOS "$REPOS"
path WORKDIR "$WORKDIR"
STORAGE="${STORAGE:-$WORKDIR/storage}"
path STORAGE "$STORAGE"
address REGISTRY "$REGISTRY"
TTL="${TTL:-10}"
case "$TTL" in "" | *[!0-9]*) die "TTL=$TTL is not a number of seconds" ;; esac
etcd_flags
mkdir -p "$REPOS" "$WORKDIR" "$STORAGE"
set -- --host "$BUILD_HOST" --repos "$REPOS" --workdir "$WORKDIR" --storage "$STORAGE" --registry "$REGISTRY" \
  --ttl "$TTL" --etcd "$LEENGINE_ETCD" --etcd-ca "$LEENGINE_ETCD_CA" --etcd-cert "$LEENGINE_ETCD_CERT" \
  --etcd-key "$LEENGINE_ETCD_KEY" --log-level "$LOG_LEVEL"
if [ -n "${METRICS_ADDRESS:-}" ]; then
  address METRICS_ADDRESS "$METRICS_ADDRESS"
  set -- "$@" --metrics-address "$METRICS_ADDRESS"
fi
exec "$(command_path leengine-build-agent)" "$@"
