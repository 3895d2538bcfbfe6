#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role kube-controller: the lab's Kubernetes controllers (python -m lab.controller): it keeps every app's
# replicas on the nodes (scheduler + replication + node controller), replaces pods that die, evicts a lost
# node's pods, and runs the operator's cnictl check + release cron. A VM lab runs a real
# kube-controller-manager + kube-scheduler instead (and cnictl from cron).
# Debian packages: python3 (the leengine package installed, with the lab package). Runs as root (the
# runtimes' sockets are root's).
# Variables:
#   LAB_DIR            the lab directory (its lab.json, certificates, runtime sockets)
#   HEAL_EVERY         seconds between looks at the node runtimes (default 2)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

path LAB_DIR "$LAB_DIR"
HEAL_EVERY="${HEAL_EVERY:-2}"
case "$HEAL_EVERY" in "" | *[!0-9.]*) die "HEAL_EVERY=$HEAL_EVERY is not a number of seconds" ;; esac
exec "$LEENGINE_PYTHON" -m lab.controller --dir "$LAB_DIR" --heal-every "$HEAL_EVERY" --log-level "$LOG_LEVEL"
