"""``leengine registry-key DIR``: the registry tokens' signing key and the certificate the registry trusts.

    leengine registry-key /etc/leengine/registry [--name leengine-control] [--days 825]

Writes ``DIR/token.key`` (an EC P-256 private key, PKCS#8 PEM, mode 0600: give it to
``leengine-control --registry-key``) and ``DIR/token.crt`` (a self-signed certificate of its
public key: give it to ``leengine-control --registry-cert`` and, as ``auth.token.rootcertbundle``,
to the registry), and prints the key's libtrust key id (the ``kid`` of every token; docs/registry.md).
It refuses to overwrite either file: a new key invalidates every token in flight, so replacing one
is a deliberate ``rm`` first. ``make_key_files`` is what the tests and the lab call.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control.registry_tokens import SigningKey
from leengine.command import BadInput, Failed

KEY_FILE = "token.key"
CERT_FILE = "token.crt"
DEFAULT_NAME = "leengine-control"
DEFAULT_DAYS = 825


def self_signed(key: ec.EllipticCurvePrivateKey, name: str, days: int) -> x509.Certificate:
    """A certificate of ``key``'s public key signed by itself (the registry reads only its key)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def make_key_files(directory: Path, *, name: str = DEFAULT_NAME, days: int = DEFAULT_DAYS) -> tuple[Path, Path, str]:
    """Write a new key and its certificate into ``directory`` (created 0700 if missing); returns (key path,
    certificate path, key id). FileExistsError when either file exists."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    for path in (key_path, cert_path):
        if path.exists():
            raise FileExistsError(f"{path} exists: remove it first (a new key invalidates every token in flight)")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = self_signed(key, name, days).public_bytes(serialization.Encoding.PEM)
    # O_EXCL: two runs at once cannot both write; 0600 from the first byte, never readable by others.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(cert_pem)
    return key_path, cert_path, SigningKey.from_pem(key_pem, cert_pem).kid


def registry_key_command(
    directory: Annotated[Path, typer.Argument(help="where token.key (0600) and token.crt are written")],
    name: Annotated[str, typer.Option(help="the certificate's common name")] = DEFAULT_NAME,
    days: Annotated[int, typer.Option(help="days the certificate is valid")] = DEFAULT_DAYS,
) -> None:
    """Make the registry tokens' signing key (EC P-256) and the self-signed certificate the registry trusts."""
    if not 1 <= days <= 36_500:
        raise BadInput(f"--days must be from 1 to 36500, got {days}")
    if not name or len(name) > 64 or not name.isprintable():
        raise BadInput("--name must be 1-64 printable characters")
    try:
        key_path, cert_path, kid = make_key_files(directory, name=name, days=days)
    except FileExistsError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise Failed(f"cannot write into {directory}: {exc.strerror or exc}") from None
    typer.echo(f"key  {key_path} (mode 600: leengine-control --registry-key)")
    typer.echo(f"cert {cert_path} (leengine-control --registry-cert; the registry's auth.token.rootcertbundle)")
    typer.echo(f"kid  {kid}")
