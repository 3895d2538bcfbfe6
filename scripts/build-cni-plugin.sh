#!/usr/bin/env bash
# Build build/leengine-cni, the compiled CNI plugin (scripts/cni-plugin/main.go), offline.
#
# Go's standard library only; built like build/cnitool (GOPATH mode, GO111MODULE=off, GOPROXY=off: the build
# never touches the network), static (CGO_ENABLED=0) and stripped: one file that runs on any Linux node of the
# same architecture. The supported CNI versions are not written in the Go source: they are read from
# leengine/cni_plugin.py's SUPPORTED_VERSIONS (by its syntax tree, nothing imported) and passed with -ldflags -X,
# so the Go and the Python plugin answer VERSION alike (tests/unit/test_cni_plugin.py checks it).
# Idempotent: skips the build when the binary was made from the same inputs (source, script, versions, Go).
# `leengine install-cni` runs it and installs the binary; test.sh runs it before the tests.
# Usage: scripts/build-cni-plugin.sh [OUTPUT]   (default build/leengine-cni)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/scripts/cni-plugin"
OUT="${1:-$ROOT/build/leengine-cni}"
STAMP="$(dirname "$OUT")/.$(basename "$OUT").inputs"
PYTHON="${PYTHON:-$(command -v python3 || true)}"

for tool in go sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-cni-plugin: $tool not found (apt-get install golang-go)" >&2; exit 1; }
done
[ -n "$PYTHON" ] || { echo "build-cni-plugin: python3 not found (it reads SUPPORTED_VERSIONS)" >&2; exit 1; }

versions="$("$PYTHON" -IS - "$ROOT/leengine/cni_plugin.py" <<'PY'
import ast, re, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
for node in tree.body:
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SUPPORTED_VERSIONS"]:
        versions = ast.literal_eval(node.value)
        assert versions and all(re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", v) for v in versions), versions
        print(",".join(versions))
        break
else:
    sys.exit("SUPPORTED_VERSIONS not found")
PY
)"

inputs="$(
  sha256sum "$SRC/main.go" "${BASH_SOURCE[0]}"
  echo "versions $versions"
  go version
)"
if [ -x "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

mkdir -p "$(dirname "$OUT")" "$ROOT/build/gopath" "$ROOT/build/gocache"
echo "build-cni-plugin: building $OUT (supported versions $versions)" >&2
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
  cd "$SRC"
  env GO111MODULE=off GOFLAGS= GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0 \
    GOPATH="$ROOT/build/gopath" GOCACHE="$ROOT/build/gocache" \
    go build -trimpath -ldflags "-s -w -X main.supportedVersions=$versions" -o "$tmp" .
)
mv "$tmp" "$OUT"  # atomic: a concurrent build or install never sees half a binary
echo "$inputs" > "$STAMP"
