# shellcheck shell=sh
# Sourced by every role script: where the commands are, and checks of values before they reach a daemon.

LEENGINE_BIN="${LEENGINE_BIN:-}"
LEENGINE_PYTHON="${LEENGINE_PYTHON:-python3}"
LOG_LEVEL="${LOG_LEVEL:-info}"

# The path of a leengine command: from LEENGINE_BIN when set, else from PATH.
command_path() {
  if [ -n "$LEENGINE_BIN" ]; then printf '%s/%s\n' "$LEENGINE_BIN" "$1"; else printf '%s\n' "$1"; fi
}

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

# need NAME VALUE: VALUE must be non-empty.
need() {
  [ -n "$2" ] || die "$1 is empty"
}

# address NAME VALUE: VALUE must look like IPv4:port.
address() {
  case "$2" in
    *[!0-9.:]* | "" | :* | *:) die "$1=$2 is not IPv4:port" ;;
  esac
}

# label NAME VALUE: VALUE must be a DNS label (names of hosts, groups, Cells, nodes).
label() {
  case "$2" in
    "" | -* | *- | *[!a-z0-9-]*) die "$1=$2 is not a DNS label" ;;
  esac
}

# path NAME VALUE: an absolute path of plain characters (it may end up in a config file).
path() {
  case "$2" in
    /*) ;;
    *) die "$1=$2 is not an absolute path" ;;
  esac
  case "$2" in
    *[!A-Za-z0-9/._-]*) die "$1=$2 holds characters other than A-Za-z0-9/._-" ;;
  esac
}

# The etcd client flags every etcd client takes (from the commands' own variables).
etcd_flags() {
  address LEENGINE_ETCD "$LEENGINE_ETCD"
  path LEENGINE_ETCD_CA "$LEENGINE_ETCD_CA"
  path LEENGINE_ETCD_CERT "$LEENGINE_ETCD_CERT"
  path LEENGINE_ETCD_KEY "$LEENGINE_ETCD_KEY"
}
