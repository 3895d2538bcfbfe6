"""How a client command reads its credentials for the control service: a bearer-token file and a CA file.

``read_token(option, path, runner)`` checks the file as every secret file is checked
(leengine/secret_files.py) and that it holds exactly one token of the control service's
token alphabet (``control.auth.TOKEN``); ``read_ca(path)`` reads and checks PEM certificates.
Each refusal is a ``BadInput`` line naming the option. Used by ``leengine-discovery`` and
``leengine app``. It must not know what the client then calls.
"""

from __future__ import annotations

from pathlib import Path

from control.auth import TOKEN
from leengine.command import BadInput
from leengine.etcd_options import EtcdOptionError, check_certificates, read_pem
from leengine.secret_files import SecretFileError, read_secret_file

MAX_TOKEN_FILE = 4096  # bytes: one bearer token and a newline, with room


def read_token(option: str, path: Path, *, runner: str) -> str:
    """The one bearer token in ``path`` (given as ``option``), or ``BadInput`` naming the option."""
    try:
        raw = read_secret_file(path, what="token file", secret="the token is a secret", runner=runner,
                               limit=MAX_TOKEN_FILE)
    except SecretFileError as exc:
        raise BadInput(f"{option}: {exc}") from None
    token = raw.decode("ascii", errors="replace").strip()
    if not TOKEN.fullmatch(token):
        raise BadInput(f"{option}: token file {path}: expected one token of 16-512 characters of "
                       "[A-Za-z0-9._~+/=-]")
    return token


def read_ca(path: Path | None, option: str = "--control-ca") -> bytes | None:
    """The PEM certificates of ``path`` (None: no CA given), or ``BadInput`` naming the option."""
    if path is None:
        return None
    try:
        pem = read_pem(option, path)
        check_certificates(option, path, pem)
    except EtcdOptionError as exc:
        raise BadInput(str(exc)) from None
    return pem
