#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Role links (one-machine lab only, root netns): the TCP forwarder between every etcd client and the
# members, whose per-client pass/delay/cut makes "etcd slow/unavailable for these clients" real without netem.
# Debian packages: python3 (the leengine package installed, with the lab package).
# Variables:
#   LINKS_CONFIG       the listeners (JSON, written by lab/services.py)
#   LINKS_CONTROL      the control socket (one JSON line per request)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

path LINKS_CONFIG "$LINKS_CONFIG"
path LINKS_CONTROL "$LINKS_CONTROL"
exec "$LEENGINE_PYTHON" -m lab.links --config "$LINKS_CONFIG" --control "$LINKS_CONTROL"
