"""The shared etcd TLS options: every command takes --etcd-ca/--etcd-cert/--etcd-key, checks them before
anything starts and names the flag and the path in one line; the adapter's endpoint forms.

No etcd is needed: each bad option must be refused before any connection is tried.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from foundation.adapters.etcd_store import EtcdStore, EtcdTls
from lab.certs import CertBundle, make_certs
from leengine.etcd_options import EtcdClientTls, EtcdOptionError, check_etcd_options

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertBundle:
    return make_certs(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> CertBundle:
    return make_certs(tmp_path_factory.mktemp("stranger"), name="stranger")


def test_make_certs_writes_a_ca_a_server_and_a_client_certificate_that_verify(certs):
    for path in (certs.ca_key, certs.server_key, certs.client_key):
        assert path.stat().st_mode & 0o777 == 0o600
    for cert in (certs.server_cert, certs.client_cert):
        done = subprocess.run(["openssl", "verify", "-CAfile", str(certs.ca_cert), str(cert)], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(certs.server_cert), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text


def test_no_flag_is_plaintext_and_all_three_load_pem_bytes(certs):
    assert EtcdClientTls.from_options(None, None, None) is None
    tls = EtcdClientTls.from_options(certs.ca_cert, certs.client_cert, certs.client_key)
    assert tls is not None
    assert tls.args() == ["--etcd-ca", str(certs.ca_cert), "--etcd-cert", str(certs.client_cert),
                          "--etcd-key", str(certs.client_key)]
    loaded = tls.load()
    assert loaded.ca == certs.ca_cert.read_bytes() and loaded.cert == certs.client_cert.read_bytes()
    assert loaded.key == certs.client_key.read_bytes()
    assert "PRIVATE" not in repr(loaded) and "PRIVATE" not in repr(tls)  # a key never reaches a log
    only_ca = EtcdClientTls.from_options(certs.ca_cert, None, None)
    assert only_ca is not None and only_ca.load().cert is None


def test_bad_flags_name_the_flag_and_the_path(certs, stranger, tmp_path):
    missing = tmp_path / "missing.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        ((None, certs.client_cert, None), "--etcd-cert needs --etcd-key: give both or neither"),
        ((None, None, certs.client_key), "--etcd-key needs --etcd-cert: give both or neither"),
        ((missing, None, None), f"--etcd-ca {missing}: no such file"),
        ((tmp_path, None, None), f"--etcd-ca {tmp_path}: not a file"),
        ((junk, None, None), f"--etcd-ca {junk}: not a PEM file"),
        ((certs.ca_key, None, None), f"--etcd-ca {certs.ca_key}: no certificate in it"),
        ((None, certs.client_cert, stranger.client_key),
         f"--etcd-key {stranger.client_key}: does not match the certificate (--etcd-cert {certs.client_cert})"),
        ((None, certs.client_key, certs.client_key), f"--etcd-cert {certs.client_key}: no certificate in it"),
        ((None, missing, certs.client_key), f"--etcd-cert {missing}: no such file"),
    ]
    for args, message in cases:
        with pytest.raises(EtcdOptionError) as caught:
            EtcdClientTls.from_options(*args)
        assert str(caught.value) == message


def test_endpoint_forms(certs):
    tls = EtcdClientTls.from_options(certs.ca_cert, certs.client_cert, certs.client_key)
    assert check_etcd_options("127.0.0.1:2379", None, None, None) is None
    assert check_etcd_options("https://127.0.0.1:2379", certs.ca_cert, certs.client_cert, certs.client_key) == tls
    with pytest.raises(EtcdOptionError, match=r"^--etcd: etcd endpoint 'http://127.0.0.1:2379' is plaintext"):
        check_etcd_options("http://127.0.0.1:2379", certs.ca_cert, None, None)
    with pytest.raises(EtcdOptionError, match=r"^--etcd: etcd endpoint must be host:port or http"):
        check_etcd_options("ftp://127.0.0.1:2379", None, None, None)
    assert EtcdStore("https://127.0.0.1:2379").tls == EtcdTls()  # TLS against the system's roots
    assert EtcdStore("127.0.0.1:2379").tls is None
    with pytest.raises(ValueError, match="give both or neither"):
        EtcdTls(cert=b"x")


def _required(command: str, tmp_path: Path) -> list[str]:
    """The options each command needs besides the etcd ones, valid enough to reach the etcd check."""
    config = tmp_path / "discovery.yaml"
    config.write_text("cells:\n  cell-a: {api: 'http://127.0.0.1:1'}\nbindings: []\n")
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-0123456789abcdef ops admin\n")
    tokens.chmod(0o600)
    token = tmp_path / "discovery.token"
    token.write_text("discovery-0123456789abcdef\n")
    token.chmod(0o600)
    return {
        "leengine-cni-agent": ["--node", "node-1"],
        "leengine-slb-agent": ["--group", "public", "--host", "nginx-1", "--prefix", str(tmp_path / "nginx")],
        "leengine-build-agent": ["--host", "build-1", "--repos", str(tmp_path), "--workdir", str(tmp_path),
                                 "--registry", "127.0.0.1:5000"],
        "leengine-discovery": ["--config", str(config), "--control", "127.0.0.1:50051", "--control-token-file",
                               str(token)],
        "leengine-control": ["--tokens", str(tokens)],
    }.get(command, [])


COMMANDS = [
    (["leengine-cni-agent"], []),
    (["leengine-slb-agent"], []),
    (["leengine-build-agent"], []),
    (["leengine-discovery"], []),
    (["leengine-control"], []),
    (["cnictl"], ["pool", "list"]),
    (["leengine", "store", "get", "/k"], []),
]


@pytest.mark.parametrize(("command", "after"), COMMANDS, ids=[c[0][-1] if c[0][0] != "leengine" else "store"
                                                                 for c in COMMANDS])
def test_every_command_takes_the_etcd_tls_flags_and_refuses_bad_ones_in_one_line(command, after, certs, tmp_path):
    prog = command[0]
    base = [str(BIN / prog), *command[1:], *_required(prog, tmp_path)]
    missing = tmp_path / "nope.crt"
    for flags, message in [
        (["--etcd-cert", str(certs.client_cert)], "--etcd-cert needs --etcd-key: give both or neither"),
        (["--etcd-ca", str(missing)], f"--etcd-ca {missing}: no such file"),
    ]:
        # cnictl's etcd flags belong to the command itself, before the subcommand
        args = [*base, *flags, *after] if prog == "cnictl" else [*base, *after, *flags]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)})
        assert done.returncode == 2, done.stderr  # bad input, for every command (leengine/command.py)
        assert message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
