"""leengine-discovery's config file: every field validated, one readable line naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leengine.discovery import ConfigError, load_config

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
    run = subprocess.run([sys.executable, "-m", "leengine.discovery", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2 and run.stderr.startswith("leengine-discovery: error:")
    assert len(run.stderr.strip().splitlines()) == 1 and "port" in run.stderr
