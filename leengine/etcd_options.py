"""The etcd client options every command shares, and opening a store from them.

Every daemon and CLI that talks to etcd (``leengine-cni-agent``, ``leengine-slb-agent``,
``leengine-build-agent``, ``leengine-discovery``, ``leengine-control``, ``cnictl``,
``leengine store ...``) takes etcd's own client flags::

    --etcd-ca FILE     CA certificate that signed etcd's server certificate  ($LEENGINE_ETCD_CA)
    --etcd-cert FILE   this client's certificate                            ($LEENGINE_ETCD_CERT)
    --etcd-key FILE    this client's private key                            ($LEENGINE_ETCD_KEY)

Invariants:

* Any of the three turns TLS on; ``--etcd-cert`` and ``--etcd-key`` go together
  (an etcd with ``--client-cert-auth`` refuses a client without a certificate). An
  ``https://host:port`` endpoint is TLS too (verified against the system's roots when
  no ``--etcd-ca`` is given); ``http://`` with TLS files is refused.
* The files are read and checked (PEM that parses; the key matches the certificate)
  when the options are checked, before anything starts: a missing, unreadable or
  wrong file is one ``EtcdOptionError`` line naming the flag and the path.
* Private keys never reach a log or an error message, only their paths.

``read_pem``, ``check_certificates`` and ``read_key_pair`` check any TLS file flag the
same way (``leengine-control`` uses them for ``--tls-cert/--tls-key/--tls-client-ca``).

This module knows the options and the etcd adapter's constructor; it must not know
any agent, key schema or daemon life cycle (``leengine/daemon.py`` does the retries).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the adapter pulls in grpc: imported when a store is made, not to parse options
    from foundation.adapters.etcd_store import EtcdStore, EtcdTls

MAX_PEM_BYTES = 1 << 20  # a certificate chain or key is a few KB; refuse to slurp a huge or endless file

ENDPOINT_HELP = "etcd endpoint host:port (https://host:port: TLS)"
EtcdCaOpt = Annotated[Path | None, typer.Option(
    "--etcd-ca", envvar="LEENGINE_ETCD_CA", help="CA certificate (PEM) that signed etcd's server certificate")]
EtcdCertOpt = Annotated[Path | None, typer.Option(
    "--etcd-cert", envvar="LEENGINE_ETCD_CERT", help="client certificate (PEM) for etcd; needs --etcd-key")]
EtcdKeyOpt = Annotated[Path | None, typer.Option(
    "--etcd-key", envvar="LEENGINE_ETCD_KEY", help="client private key (PEM) for etcd; needs --etcd-cert")]


class EtcdOptionError(ValueError):
    """A bad --etcd-ca/--etcd-cert/--etcd-key (or another TLS file flag): the message names the flag and the path."""


def read_pem(flag: str, path: Path) -> bytes:
    if not path.is_file():  # a FIFO or a directory would block or fail obscurely later
        raise EtcdOptionError(f"{flag} {path}: no such file" if not path.exists() else f"{flag} {path}: not a file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise EtcdOptionError(f"{flag} {path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise EtcdOptionError(f"{flag} {path}: not a PEM file")
    return data


def check_certificates(flag: str, path: Path, data: bytes) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError):  # ValueError: not ASCII
        raise EtcdOptionError(f"{flag} {path}: no certificate in it") from None


def read_key_pair(cert_flag: str, cert_path: Path, key_flag: str, key_path: Path) -> tuple[bytes, bytes]:
    """A certificate and its private key, read and checked to belong together; errors name the flags."""
    cert, key = read_pem(cert_flag, cert_path), read_pem(key_flag, key_path)
    check_certificates(cert_flag, cert_path, cert)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        what = "does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else "is not a usable key"
        raise EtcdOptionError(f"{key_flag} {key_path}: {what} ({cert_flag} {cert_path})") from None
    except OSError as exc:
        raise EtcdOptionError(f"{cert_flag} {cert_path}: cannot use it: {exc.strerror or exc}") from None
    return cert, key


@dataclass(frozen=True)
class EtcdClientTls:
    """The paths of the three options (any may be None, cert and key together)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_options(cls, ca: Path | None, cert: Path | None, key: Path | None) -> EtcdClientTls | None:
        """The TLS the flags ask for (None: no flag given), its files checked; else ``EtcdOptionError``."""
        if ca is None and cert is None and key is None:
            return None
        if (cert is None) != (key is None):
            given, missing = ("--etcd-cert", "--etcd-key") if key is None else ("--etcd-key", "--etcd-cert")
            raise EtcdOptionError(f"{given} needs {missing}: give both or neither")
        tls = cls(ca, cert, key)
        tls.load()
        return tls

    def args(self) -> list[str]:
        """The same settings as command-line flags, for a subprocess."""
        flags = (("--etcd-ca", self.ca), ("--etcd-cert", self.cert), ("--etcd-key", self.key))
        return [part for flag, path in flags if path is not None for part in (flag, str(path))]

    def load(self) -> EtcdTls:
        """Read and check the files: the adapter's ``EtcdTls`` (PEM bytes)."""
        from foundation.adapters.etcd_store import EtcdTls

        ca = read_pem("--etcd-ca", self.ca) if self.ca is not None else None
        if ca is not None:
            check_certificates("--etcd-ca", self.ca, ca)
        cert = key = None
        if self.cert is not None and self.key is not None:
            cert, key = read_key_pair("--etcd-cert", self.cert, "--etcd-key", self.key)
        return EtcdTls(ca=ca, cert=cert, key=key)


def check_etcd_options(endpoint: str, ca: Path | None, cert: Path | None, key: Path | None) -> EtcdClientTls | None:
    """Check ``--etcd`` and the three TLS flags together, before anything starts (no I/O but reading the files)."""
    tls = EtcdClientTls.from_options(ca, cert, key)
    try:
        new_store(endpoint, tls, timeout=1.0)  # makes no connection: only the endpoint and the credentials
    except ValueError as exc:
        raise EtcdOptionError(f"--etcd: {exc}") from None
    return tls


def new_store(endpoint: str, tls: EtcdClientTls | None, *, timeout: float) -> EtcdStore:
    """An unconnected ``EtcdStore`` for ``endpoint`` with the TLS the options gave."""
    from foundation.adapters.etcd_store import EtcdStore

    return EtcdStore(endpoint, timeout=timeout, tls=tls.load() if tls is not None else None)


async def open_store(endpoint: str, tls: EtcdClientTls | None, *, timeout: float = 5.0) -> EtcdStore:
    """A connected ``EtcdStore`` (``StoreUnavailable`` when etcd does not answer or refuses the handshake)."""
    store = new_store(endpoint, tls, timeout=timeout)
    await store.connect()
    return store
