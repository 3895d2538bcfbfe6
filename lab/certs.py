"""Throwaway certificates for tests and the one-machine lab, made with the ``openssl`` command.

``make_certs(directory)`` writes a fresh CA and, signed by it, a server certificate
(SAN ``IP:127.0.0.1``, ``DNS:localhost``; serverAuth) and a client certificate
(clientAuth) with their keys, and returns their paths as a ``CertBundle``. Two calls
make two unrelated CAs: a certificate of one is refused by a peer trusting the other.

Invariants:

* Keys are EC P-256 (fast to make: a whole bundle costs ~50 ms) and written mode 600;
  the CA key stays in the directory, nothing is ever installed system-wide.
* A missing ``openssl`` or a failed step is a ``RuntimeError`` naming the step and
  openssl's message, never a half-made bundle that looks complete: the paths are
  returned only after every file exists.

It must not know who uses the files (etcd, the control service, a client): it only
runs openssl.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DAYS = 2  # certificates of a test run: long enough for any run, short enough to be useless later


@dataclass(frozen=True)
class CertBundle:
    """PEM files of one throwaway CA, a server certificate and a client certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, step: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl not found: install Debian's openssl package (apt-get install openssl)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"openssl failed to {step}: {message}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
             step=f"make the key {path.name}")
    os.chmod(path, 0o600)


def _signed(directory: Path, name: str, subject: str, extensions: str, ca_cert: Path, ca_key: Path) -> Path:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext"))
    _key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), step=f"make the request {csr.name}")
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", str(DAYS), "-sha256", "-extfile", str(ext), "-out", str(cert), step=f"sign {cert.name}")
    csr.unlink()
    ext.unlink()
    return cert


def make_certs(directory: str | os.PathLike[str], *, name: str = "leengine-test",
               server_ips: Sequence[str] = (), server_is_client: bool = False) -> CertBundle:
    """A fresh CA named ``name`` with a server and a client certificate, under ``directory``.

    ``server_ips``: more IP SANs of the server certificate (the lab's members and the address its
    clients dial); each must be an IP address, as clients verify the address they connect to.
    ``server_is_client``: the server certificate may also authenticate a client (clientAuth): etcd
    3.4's JSON gateway (``/v3/...``) dials its own member with it, under ``--client-cert-auth``.
    """
    extra = [str(ipaddress.ip_address(ip)) for ip in server_ips]  # ValueError for anything else
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    _key(ca_key)
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", f"/CN={name} CA", "-days", str(DAYS),
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(ca_cert), step="make the CA certificate")
    server = _signed(directory, "server", f"/CN={name} server",
                     "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                     f"extendedKeyUsage=serverAuth{',clientAuth' if server_is_client else ''}\n"
                     "subjectAltName=IP:127.0.0.1,DNS:localhost"
                     + "".join(f",IP:{ip}" for ip in dict.fromkeys(extra)) + "\n",
                     ca_cert, ca_key)
    # etcd checks a client certificate's usage only for clientAuth; "root" as its CN is
    # the name etcd would map to a user if RBAC were on (it is not: the certificate is the gate).
    client = _signed(directory, "client", "/CN=root",
                     "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=clientAuth\n",
                     ca_cert, ca_key)
    return CertBundle(ca_cert, ca_key, server, directory / "server.key", client, directory / "client.key")
