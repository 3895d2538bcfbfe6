"""The lab runs its registry as docs/registry.md tells a user to: token auth, the gate in front, the key made once.

* the launches: leengine-control serves HTTPS on the control host's address with the key of
  ``DIR/certs/registry``; docker-registry listens on the registry host's loopback with the
  ``auth.token`` section (realm = that ``/token``, the control service's default service and issuer);
  the gate listens on the registry's address, which the build agents push to;
* ``leengine registry-key`` makes the pair in the credentials step, once (a second call keeps it);
* the role scripts: control.sh passes ``--http-address --registry-key --registry-cert``; registry.sh
  writes the auth section and copies the certificate it trusts; registry-gate.sh execs
  ``leengine registry-gate``; hostile values stop them.

The commands are stubs here (``LEENGINE_BIN``, ``REGISTRY_BINARY``): the real ones run in
tests/integration/test_lab_controller.py and test_lab_services.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import services
from lab.plan import REGISTRY_UPSTREAM, plan_lab
from lab.supervisor import ROLES_DIR
from leengine.control_http import DEFAULT_ISSUER, DEFAULT_SERVICE
from sim.spec import CellSpec, GroupSpec, PoolSpec, RegionSpec


def _lab(directory: Path) -> SimpleNamespace:
    spec = RegionSpec(name="auth", seed=1, duration=60.0,
                      cells=(CellSpec("c1", 2, (PoolSpec("c1-pool", "10.1.0.0/24", 101),)),),
                      groups=(GroupSpec("web", 1),), apps=(), build_hosts=2)
    return SimpleNamespace(plan=plan_lab(spec, "0abc", directory), spec=spec)


def _launch(lab: SimpleNamespace, name: str):
    return next(launch for phase in services._launches(lab) for launch in phase if launch.name == name)


def test_the_lab_wires_token_auth_and_the_gate(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    plan = lab.plan
    key_dir = tmp_path / "certs" / "registry"
    control = _launch(lab, "control").env
    assert control["HTTP_ADDRESS"] == f"{plan.hosts['control'].mgmt_ip}:5001" == plan.control_http_address
    assert (control["REGISTRY_KEY"], control["REGISTRY_CERT"]) == (str(key_dir / "token.key"),
                                                                   str(key_dir / "token.crt"))
    assert plan.token_realm == f"https://{plan.control_http_address}/token"

    registry = _launch(lab, "registry")
    assert registry.netns == plan.netns("registry")
    assert registry.env["LISTEN"] == REGISTRY_UPSTREAM and REGISTRY_UPSTREAM.startswith("127.")
    assert registry.env["TOKEN_REALM"] == plan.token_realm
    assert registry.env["TOKEN_CERT"] == str(key_dir / "token.crt")
    # the registry's service and issuer are the ones leengine-control signs with by default
    assert (registry.env["TOKEN_SERVICE"], registry.env["TOKEN_ISSUER"]) == (DEFAULT_SERVICE, DEFAULT_ISSUER)

    gate = _launch(lab, "registry-gate")
    assert gate.netns == plan.netns("registry") and gate.role == "registry-gate"
    assert gate.env == {"LISTEN": plan.registry_address, "UPSTREAM": REGISTRY_UPSTREAM}
    for host in plan.build_hosts:  # build agents push through the gate, never to the registry itself
        assert _launch(lab, f"build-agent-{host}").env["REGISTRY"] == plan.registry_address
    names = [launch.name for phase in services._launches(lab) for launch in phase]
    assert names.index("registry") < names.index("registry-gate")
    assert names.index("control") < names.index("registry")  # the key exists before the registry copies its cert


def test_the_credentials_step_makes_the_signing_key_once(tmp_path: Path) -> None:
    key_dir = tmp_path / "certs" / "registry"
    services._registry_key(key_dir)
    key = (key_dir / "token.key").read_bytes()
    assert (key_dir / "token.key").stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in key
    assert b"CERTIFICATE" in (key_dir / "token.crt").read_bytes()
    with pytest.raises(services.ServiceError, match="exists"):  # never replaced: tokens in flight stay valid
        services._registry_key(key_dir)
    assert (key_dir / "token.key").read_bytes() == key


def _stub(directory: Path, name: str) -> None:
    """A command that appends its name and arguments to $STUB_LOG, one line a call."""
    path = directory / name
    path.write_text('#!/bin/sh\nprintf \'%s\\n\' "$(basename "$0") $*" >> "$STUB_LOG"\n')
    path.chmod(0o755)


def _run(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROLES_DIR / f"{role}.sh")], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=20, check=False)


def test_control_role_serves_token(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "leengine-control")
    log = tmp_path / "calls"
    env = {"LEENGINE_BIN": str(bin_dir), "STUB_LOG": str(log), "LISTEN": "198.18.1.21:50051",
           "TOKENS_FILE": "/x/tokens", "TLS_CERT": "/x/server.crt", "TLS_KEY": "/x/server.key",
           "LEENGINE_ETCD": "198.18.0.1:21000", "LEENGINE_ETCD_CA": "/x/ca", "LEENGINE_ETCD_CERT": "/x/c",
           "LEENGINE_ETCD_KEY": "/x/k", "HTTP_ADDRESS": "198.18.1.21:5001",
           "REGISTRY_KEY": "/lab/certs/registry/token.key", "REGISTRY_CERT": "/lab/certs/registry/token.crt"}
    done = _run("control", env)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("leengine-control --listen 198.18.1.21:50051 "), calls
    assert calls[0].endswith(" --http-address 198.18.1.21:5001 --registry-key /lab/certs/registry/token.key "
                             "--registry-cert /lab/certs/registry/token.crt")

    done = _run("control", {**env, "HTTP_ADDRESS": ""})
    assert done.returncode == 2 and "REGISTRY_KEY needs HTTP_ADDRESS" in done.stderr
    done = _run("control", {**env, "REGISTRY_CERT": ""})
    assert done.returncode == 2 and "REGISTRY_CERT" in done.stderr
    done = _run("control", {**env, "HTTP_ADDRESS": "1.2.3.4:5001 --tokens /etc/passwd"})
    assert done.returncode == 2 and "HTTP_ADDRESS" in done.stderr and "not IPv4:port" in done.stderr


def test_registry_role_writes_the_token_section(tmp_path: Path) -> None:
    cert = tmp_path / "token.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    root = tmp_path / "registry"
    env = {"LISTEN": REGISTRY_UPSTREAM, "REGISTRY_ROOT": str(root), "METRICS_ADDRESS": "198.18.1.31:19105",
           "TOKEN_REALM": "https://198.18.1.21:5001/token", "TOKEN_CERT": str(cert), "REGISTRY_BINARY": "true"}
    done = _run("registry", env)
    assert done.returncode == 0, done.stderr
    config = json.loads((root / "config.yml").read_text())
    assert config["http"]["addr"] == REGISTRY_UPSTREAM
    assert config["auth"] == {"token": {"realm": "https://198.18.1.21:5001/token", "service": DEFAULT_SERVICE,
                                        "issuer": DEFAULT_ISSUER, "rootcertbundle": str(root / "token.crt")}}
    assert (root / "token.crt").read_text() == cert.read_text()

    without = _run("registry", {k: v for k, v in env.items() if not k.startswith("TOKEN_")})
    assert without.returncode == 0 and "auth" not in json.loads((root / "config.yml").read_text())
    for bad in ('https://x:1/token", "x": "y', "ftp://x:1/token", "https://x:1/token?a=b"):
        done = _run("registry", {**env, "TOKEN_REALM": bad})
        assert done.returncode == 2 and "TOKEN_REALM" in done.stderr, (bad, done.stderr)
    done = _run("registry", {**env, "TOKEN_SERVICE": 'a"b'})
    assert done.returncode == 2 and "TOKEN_SERVICE" in done.stderr


def test_gate_role_execs_the_gate(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "leengine")
    log = tmp_path / "calls"
    env = {"LEENGINE_BIN": str(bin_dir), "STUB_LOG": str(log), "LISTEN": "198.18.1.31:5000",
           "UPSTREAM": REGISTRY_UPSTREAM}
    done = _run("registry-gate", env)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        f"leengine registry-gate --listen 198.18.1.31:5000 --upstream http://{REGISTRY_UPSTREAM} --log-level info"]
    done = _run("registry-gate", {**env, "UPSTREAM": "evil/x"})
    assert done.returncode == 2 and "UPSTREAM" in done.stderr
