# Shared set-up for ./run.sh and ./test.sh: sourced, not run.
# Installs only what is missing, so a second run is fast; works on a fresh Debian 12 as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# Debian packages the tests need (DESIGN.md section 5). etcd is started by the test fixtures;
# OVS, nginx and the CNI reference plugins are used by later issues' integration tests.
TEST_PACKAGES=(etcd-server openvswitch-switch iproute2 iputils-ping iputils-arping nginx libnginx-mod-http-lua wrk
  containernetworking-plugins golang-go golang-github-appc-cni-dev
  buildah docker-registry busybox-static git
  openssl prometheus chromium shellcheck skopeo)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
  # Python >= 3.11 with a working venv module; Debian 12's python3 is 3.11 once python3-venv is in.
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  apt_install python3 python3-venv python3-pip >&2
  command -v python3
}

ensure_venv() {
  local stamp="$VENV/.installed-from"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    PYTHON="$VENV/bin/python" "$ROOT/scripts/build-protos.sh"  # skips itself when up to date
    return 0
  fi
  local py
  py="$(pick_python)"
  echo "setup: creating virtualenv $VENV with $py"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  # pipefail makes a failed pip fail this step; grep only drops this machine's index warnings.
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]" 2>&1 | { grep -v '^WARNING: Location' || true; }
  PYTHON="$VENV/bin/python" "$ROOT/scripts/build-protos.sh"  # gRPC code is generated, never committed
  # fail loudly if the install did not take
  "$VENV/bin/python" -c 'import foundation, sim, aetcd, simpy, pytest, control.generated.leengine.control.v1.slb_pb2_grpc'
  for tool in ruff lint-imports pytest leengine leengine-control; do
    [ -x "$VENV/bin/$tool" ] || { echo "setup: $tool missing from $VENV after install" >&2; return 1; }
  done
  echo "$want" > "$stamp"
}
