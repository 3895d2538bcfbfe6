"""leengine-discovery's config file: every field validated, one readable line naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leengine.discovery_cmd import ConfigError, load_config

GOOD = """
cells:
  cell-a: {api: "http://10.0.1.10:8080"}
  cell-b: {kubeconfig: /etc/leengine/cell-b.kubeconfig}
bindings:
  - {namespace: shop, service: shop, port: 8080, group: public, domain: shop.example.com}
"""


def test_a_good_file_loads(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(GOOD)
    cells, bindings, resync = load_config(path)
    assert set(cells) == {"cell-a", "cell-b"} and resync == 5.0
    assert [(b.namespace, b.port, b.group, b.domain) for b in bindings] == [("shop", 8080, "public",
                                                                             "shop.example.com")]


@pytest.mark.parametrize(("edit", "message"), [
    (("port: 8080", "port: 99999"), "bindings[0].port"),
    (("domain: shop.example.com", "domain: 'shop;evil'"), "bindings[0].domain"),
    (("namespace: shop", "namespace: Shop_1"), "bindings[0].namespace"),
    (("{api: \"http://10.0.1.10:8080\"}", "{}"), "cells.cell-a"),
    (("cell-b:", "Cell_B:"), "cells: 'Cell_B'"),
])
def test_each_bad_field_is_named(tmp_path, edit, message):
    path = tmp_path / "d.yaml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(GOOD.replace("port: 8080", "port: 0"))
    run = subprocess.run([sys.executable, "-m", "leengine.discovery_cmd", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2 and run.stderr.startswith("leengine-discovery: error:")
    assert len(run.stderr.strip().splitlines()) == 1 and "port" in run.stderr


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leengine.discovery_cmd", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_daemon_without_config_is_one_line_and_exit_2():
    run = _cli()
    assert run.returncode == 2 and run.stderr.strip() == ("leengine-discovery: error: --config: the YAML file of "
                                                         "cells and bindings is required")


@pytest.mark.parametrize(("args", "message"), [
    (["shop", "10.1.0.300"], "ADDRESS: '10.1.0.300' is not an IPv4 address"),
    (["shop", "fe80::1"], "ADDRESS: 'fe80::1' is not an IPv4 address"),
    (["Shop!", "10.1.0.5"], "NAMESPACE: 'Shop!' is not a namespace name"),
    (["blog", "10.1.0.5"], "NAMESPACE: blog has no binding in"),
    (["shop", "10.1.0.5", "--drain-timeout", "0"], "--drain-timeout: 0 is not in (0, 3600]"),
])
def test_drain_arguments_are_checked_before_anything_is_written(tmp_path, args, message):
    path = tmp_path / "d.yaml"
    path.write_text(GOOD)
    run = _cli("drain", "--config", str(path), "--etcd", "127.0.0.1:9", *args)  # nothing listens there
    assert run.returncode == 2 and run.stderr.startswith(f"leengine-discovery: error: {message}"), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("field, value", [("took", "abc"), ("took", [1]), ("took", float("inf")), ("took", True),
                                          ("domains", "shop"), ("confirmed", [1]), ("error", {"x": 1})])
def test_a_drain_record_with_a_field_of_the_wrong_shape_is_invalid_not_a_crash(field, value):
    """The drain command prints records written by the daemon: a hostile one is refused by the decoder."""
    import json

    from control.discovery import decode_drain_record

    record = {"state": "drained", "timeout": 30, "took": 0.5, "domains": ["g/d"], "confirmed": ["h"],
              "unconfirmed": [], "error": "", field: value}
    raw = json.dumps(record).encode().replace(b"Infinity", b"1e999")
    with pytest.raises(ValueError, match=field):
        decode_drain_record(raw)
