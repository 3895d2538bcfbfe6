#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role registry-gate: `leengine registry-gate` in front of the registry: tags are immutable (a push that would move
# a tag to another image is refused); everything else, token auth included, passes through. Clients (build agents,
# nodes, people) call the registry at LISTEN only.
# Debian packages: none beyond python3 (the leengine package installed: pip install .).
# Variables:
#   LISTEN             IP:port clients call the registry on
#   UPSTREAM           IP:port of docker-registry (registry.sh's LISTEN: loopback, or an address only the gate reaches)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

address LISTEN "$LISTEN"
address UPSTREAM "$UPSTREAM"
case "$LOG_LEVEL" in
  debug | info | warning | error) ;;
  *) die "LOG_LEVEL=$LOG_LEVEL is not debug, info, warning or error" ;;
esac
exec "$(command_path leengine)" registry-gate --listen "$LISTEN" --upstream "http://$UPSTREAM" --log-level "$LOG_LEVEL"
