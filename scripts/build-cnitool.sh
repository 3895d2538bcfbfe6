#!/usr/bin/env bash
# Build build/cnitool (scripts/cnitool/main.go over libcni) offline from Debian's Go sources.
#
# Debian's golang-github-appc-cni-dev puts libcni 1.1.2 under /usr/share/gocode/src; it
# has no go.mod-resolvable module cache and the build must not touch the network, so Go
# runs in GOPATH mode (GO111MODULE=off) with GOPROXY=off. Idempotent: skips the build
# when the binary was made from the same inputs (source, script, libcni, Go versions).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/scripts/cnitool"
OUT="$ROOT/build/cnitool"
STAMP="$ROOT/build/.cnitool.inputs"
GOSRC=/usr/share/gocode

for tool in go dpkg-query sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-cnitool: $tool not found (apt-get install golang-go)" >&2; exit 1; }
done
[ -d "$GOSRC/src/github.com/containernetworking/cni/libcni" ] ||
  { echo "build-cnitool: libcni sources missing (apt-get install golang-github-appc-cni-dev)" >&2; exit 1; }

inputs="$(
  sha256sum "$SRC/main.go" "${BASH_SOURCE[0]}"
  dpkg-query -W -f='${Package} ${Version}\n' golang-github-appc-cni-dev
  go version
)"
if [ -x "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

mkdir -p "$ROOT/build/gopath" "$ROOT/build/gocache"
echo "build-cnitool: building $OUT from libcni $(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev)"
(
  cd "$SRC"
  env GO111MODULE=off GOFLAGS= GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0 \
    GOPATH="$ROOT/build/gopath:$GOSRC" GOCACHE="$ROOT/build/gocache" \
    go build -trimpath -o "$OUT.tmp" .
)
mv "$OUT.tmp" "$OUT"
echo "$inputs" > "$STAMP"
