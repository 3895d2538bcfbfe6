"""The etcd client options every command shares, and opening a store from them.

Every daemon and CLI that talks to etcd (``leengine-cni-agent``, ``leengine-slb-agent``,
``leengine-build-agent``, ``leengine-discovery``, ``leengine-control``, ``cnictl``,
``leengine store ...``) takes the same etcd flags, defined here once::

    --etcd HOST:PORT   etcd's client endpoint, https://HOST:PORT for TLS        ($LEENGINE_ETCD)
    --etcd-timeout S   deadline of each etcd request, seconds, in (0, 3600]
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
* ``--etcd-timeout`` is checked while the command line is parsed (a usage error, exit 2);
  ``EtcdSettings.from_options`` checks the endpoint and the TLS files together and raises
  ``BadInput`` (exit 2, ``leengine/command.py``), so every command refuses the same things
  with the same words.

``read_pem``, ``check_certificates`` and ``read_key_pair`` check any TLS file flag the
same way (``leengine-control`` uses them for ``--tls-cert/--tls-key/--tls-client-ca``).

This module knows the options and the etcd adapter's constructor; it must not know
any agent, key schema or daemon life cycle (``leengine/daemon.py`` does the retries).
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from leengine.command import BadInput

if TYPE_CHECKING:  # the adapter pulls in grpc: imported when a store is made, not to parse options
    from foundation.adapters.etcd_store import EtcdStore, EtcdTls

MAX_PEM_BYTES = 1 << 20  # a certificate chain or key is a few KB; refuse to slurp a huge or endless file
MAX_TIMEOUT = 3600.0  # a deadline beyond an hour is a typo, and inf/nan would never fire
DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_TIMEOUT = 5.0

ENDPOINT_HELP = "etcd endpoint host:port (https://host:port: TLS)"


def check_timeout(value: float | None) -> float | None:
    """A deadline option's value: a finite number of seconds in (0, ``MAX_TIMEOUT``] (else a usage error)."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise typer.BadParameter(f"must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {value!r}")
    return value


EtcdOpt = Annotated[str, typer.Option("--etcd", envvar="LEENGINE_ETCD", help=ENDPOINT_HELP)]
EtcdTimeoutOpt = Annotated[float, typer.Option(
    "--etcd-timeout", callback=check_timeout, help="deadline of each etcd request, seconds")]
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

        ca = None
        if self.ca is not None:
            ca = read_pem("--etcd-ca", self.ca)
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


@dataclass(frozen=True)
class EtcdSettings:
    """What a command's etcd flags say, checked: where etcd is, each request's deadline, the TLS files."""

    endpoint: str = DEFAULT_ETCD
    timeout: float = DEFAULT_TIMEOUT
    tls: EtcdClientTls | None = None

    @classmethod
    def from_options(cls, endpoint: str, timeout: float, ca: Path | None = None, cert: Path | None = None,
                     key: Path | None = None) -> EtcdSettings:
        """Check the flags together (no connection is made); a bad one is ``BadInput`` naming it."""
        try:
            check_timeout(timeout)
            return cls(endpoint, timeout, check_etcd_options(endpoint, ca, cert, key))
        except (EtcdOptionError, typer.BadParameter) as exc:
            message = str(exc) if isinstance(exc, EtcdOptionError) else f"--etcd-timeout {exc}"
            raise BadInput(message) from None

    def args(self) -> list[str]:
        """The same settings as command-line flags, for a subprocess."""
        return ["--etcd", self.endpoint, "--etcd-timeout", repr(self.timeout), *(self.tls.args() if self.tls else [])]

    def store(self) -> EtcdStore:
        """An unconnected store (a daemon connects it with ``leengine.daemon.connect_until_stopped``)."""
        return new_store(self.endpoint, self.tls, timeout=self.timeout)

    async def open(self) -> EtcdStore:
        """A connected store, for a command line tool (``StoreUnavailable`` when etcd does not answer)."""
        return await open_store(self.endpoint, self.tls, timeout=self.timeout)


def new_store(endpoint: str, tls: EtcdClientTls | None, *, timeout: float) -> EtcdStore:
    """An unconnected ``EtcdStore`` for ``endpoint`` with the TLS the options gave."""
    from foundation.adapters.etcd_store import EtcdStore

    return EtcdStore(endpoint, timeout=timeout, tls=tls.load() if tls is not None else None)


async def open_store(endpoint: str, tls: EtcdClientTls | None, *, timeout: float = 5.0) -> EtcdStore:
    """A connected ``EtcdStore`` (``StoreUnavailable`` when etcd does not answer or refuses the handshake)."""
    store = new_store(endpoint, tls, timeout=timeout)
    await store.connect()
    return store
