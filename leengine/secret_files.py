"""Reading a file that holds secrets (the control service's tokens table, a client's bearer token).

One check for every such file, before a byte of it is used: a regular file (a FIFO or a
device would block or never end), mode 600 or stricter (no right at all for its group or
others), owned by the user running the command or by root, at most ``limit`` bytes. Each
refusal is one ``SecretFileError`` line naming the file and saying how to fix it; the file's
content never appears in a message. It must not know what the secrets are for.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretFileError(ValueError):
    """The file cannot be used; the message names it and says how to fix it."""


def read_secret_file(path: str | os.PathLike[str], *, what: str, secret: str, runner: str, limit: int) -> bytes:
    """The bytes of ``path``, checked as above; ``what`` names the file ("tokens file"), ``secret`` says what
    it holds ("the tokens are secrets"), ``runner`` who runs the command ("the user running the server")."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretFileError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{what} {path} is not a regular file")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"{what} {path} is open to its group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                              f"{secret}; run chmod 600 {path}")
    if info.st_uid not in (os.geteuid(), 0):
        raise SecretFileError(f"{what} {path} belongs to uid {info.st_uid}, neither {runner} (uid {os.geteuid()}) "
                              f"nor root: run chown {os.geteuid()} {path}")
    try:
        with path.open("rb") as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise SecretFileError(f"{what} {path}: {exc.strerror}") from None
    if len(raw) > limit:
        raise SecretFileError(f"{what} {path} is larger than {limit} bytes")
    return raw
