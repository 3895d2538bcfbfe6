#!/usr/bin/env bash
# The tests: install what is missing, lint, check the layering, run every tier.
# etcd is started by the test fixtures on a free loopback port with a temporary data dir.
# Extra arguments go to pytest (e.g. tests/unit -x).
source "$(dirname "$0")/scripts/setup.sh"
apt_install "${TEST_PACKAGES[@]}"
ensure_venv
cd "$ROOT"
echo "test: build cnitool"; "$ROOT/scripts/build-cnitool.sh"
echo "test: build the Go CNI plugin"; PYTHON="$VENV/bin/python" "$ROOT/scripts/build-cni-plugin.sh"
echo "test: ruff"; "$VENV/bin/ruff" check .
echo "test: shellcheck"; shellcheck -x lab/roles/*.sh scripts/build-cni-plugin.sh
echo "test: import-linter"; "$VENV/bin/lint-imports" --no-cache
echo "test: mypy"; "$VENV/bin/mypy"
echo "test: alert rules"; promtool check rules alerts/leengine.rules.yml && promtool test rules alerts/tests/*.yml
echo "test: pytest"; "$VENV/bin/pytest" "$@"
