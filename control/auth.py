"""Who is calling the control service: principals, roles and the token table.

A **principal** is a name and one role: ``admin``, ``discovery`` or ``user`` (what
each may do is the business of the service that checks it, e.g. ``control.slb_core``).
On the platform's resources (apps, image groups, images) a ``user``'s rights are its
memberships: its name is the ``user`` of the membership table (``control.members``,
docs/roles.md), where ``members.authorize`` turns principal + memberships into a
decision; an ``admin`` may do everything there, ``discovery`` nothing. The role
``platform`` is no token's: the control service's own apps and release controller act
as ``Principal("platform", "platform")`` when they set a domain's traffic shares in
slb-core (which allows that role, and admins, nothing else).
Callers prove who they are with a bearer token; the table of tokens is a text file,
one principal per line::

    # token                              name        role
    5f2b0c1e9d8a4b7f8c3e2a1d0f9e8b7a     ops         admin
    0a1b2c3d4e5f60718293a4b5c6d7e8f9     discovery   discovery
    c0ffee00c0ffee00c0ffee00c0ffee00     alice       user

Invariants: tokens are at least 16 characters of ``[A-Za-z0-9._~+/=-]`` and unique;
names follow the owner grammar of ``slb_domain`` (a principal's name is what its
domains' ``owner`` field holds); a name has one role, however many tokens it has
(two tokens per name allow rotation). The table keeps only SHA-256 digests of the
tokens, so a lookup's timing says nothing about how much of a guess was right.

Errors name ``source:line`` and echo at most ``MAX_SHOWN`` characters of a bad field,
on one line. Pure: parses text and answers lookups; reading the file (and checking its
mode and owner) is the entry point's job. It must not know gRPC.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from control.echo import quoted
from foundation.logic.slb_domain import OWNER

Role = Literal["admin", "discovery", "user", "platform"]
ROLES: tuple[Role, ...] = ("admin", "discovery", "user")  # the roles a token may carry
PLATFORM = "platform"  # the in-process principal of the platform (apps, releases) towards slb-core
TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")
MAX_SHOWN = 40


class TokenTableError(ValueError):
    """The token table is malformed; the message names the line."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """``lookup(token)`` → the principal, or ``None`` for an unknown token."""

    _by_digest: dict[bytes, Principal]

    def lookup(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token))

    def __len__(self) -> int:
        return len(self._by_digest)

    @staticmethod
    def from_entries(entries: list[tuple[str, str, str]]) -> TokenTable:
        """Build a table from ``(token, name, role)`` triples (tests, embedding)."""
        return TokenTable.parse("\n".join(" ".join(entry) for entry in entries), source="<entries>")

    @staticmethod
    def parse(text: str, *, source: str = "tokens") -> TokenTable:
        """Parse the file format above; ``TokenTableError`` names the first bad line."""
        by_digest: dict[bytes, Principal] = {}
        roles: dict[str, Role] = {}
        # split("\n"), not splitlines(): a form feed or U+2028 inside a line must not shift the numbers.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            fields = line.split()
            if len(fields) != 3:
                raise TokenTableError(f"{where}: expected 'token name role', got {len(fields)} field(s)")
            token, name, role = fields
            if not TOKEN.fullmatch(token):
                raise TokenTableError(f"{where}: a token must be 16-512 characters of [A-Za-z0-9._~+/=-]")
            if not OWNER.fullmatch(name):
                raise TokenTableError(f"{where}: {quoted(name, MAX_SHOWN)} is not a principal name "
                                      "([a-z0-9][a-z0-9._-]{0,62})")
            if role not in ROLES:
                raise TokenTableError(f"{where}: role {quoted(role, MAX_SHOWN)} is not one of "
                                      f"{', '.join(ROLES)}")
            if roles.setdefault(name, role) != role:
                raise TokenTableError(f"{where}: {name} already has role {roles[name]}; a name has one role")
            digest = _digest(token)
            if digest in by_digest:
                raise TokenTableError(f"{where}: this token is already given to {by_digest[digest].name}")
            by_digest[digest] = Principal(name, role)
        if not by_digest:
            raise TokenTableError(f"{source}: no tokens (lines are 'token name role')")
        return TokenTable(by_digest)
