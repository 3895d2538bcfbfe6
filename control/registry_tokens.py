"""The registry's bearer tokens: ES256 JWTs that Distribution 2.8's ``auth.token`` trusts.

Distribution's token auth (its docs/spec/auth/jwt.md and registry/auth/token/) accepts a
JWT whose header names the signing key either by an ``x5c`` chain to its ``rootcertbundle``
or by ``kid``, the **libtrust key id** of a public key in that bundle. We use ``kid``:
``key_id(public_key)`` is libtrust's ``KeyID``: SHA-256 of the key's DER
SubjectPublicKeyInfo, its first 30 bytes (240 bits) in base32 without padding (48
characters), in 12 groups of 4 joined by ``:``. The registry then checks, in this order:
``iss`` is its configured issuer, ``aud`` its service (a single string: Distribution 2.8
does not decode a list), ``exp``/``nbf`` within a 60 s leeway (``REGISTRY_LEEWAY``), the
signature, then for each request an ``access`` entry ``{type, name, actions}`` that holds
the action.

Tokens carry ``iss``, ``sub``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti`` and ``access``;
their **lifetime** (default ``DEFAULT_LIFETIME``, 300 s) is the longest the registry honours
a token: Distribution accepts a token ``REGISTRY_LEEWAY`` seconds past its ``exp`` (clock skew),
so ``exp`` is the lifetime less that leeway (and ``expires_in`` says so to the client); a
lifetime is therefore at least ``MIN_LIFETIME``. A token cannot be withdrawn: what a revoked
membership or robot loses is the next token, and a token already issued works until
``exp`` + the leeway = its issue + the lifetime, never longer (docs/registry.md "Revocation").

``SigningKey.from_pem`` loads the P-256 private key (and checks it against the certificate
given to the registry, when given); ``mint`` signs; ``decode`` verifies a token the way the
registry does (for tests and tools), ``TokenError`` naming what is wrong. Pure: the clock
(``now``) and the token id (``jti``) are the caller's; no I/O. It must not know HTTP, etcd,
who the caller is or how access is decided (``control.registry_policy``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
DEFAULT_LIFETIME = 300  # seconds the registry honours a token: exp + its leeway
MIN_LIFETIME, MAX_LIFETIME = 70, 3600  # at least 10 s before exp, beside the registry's 60 s of leeway
REGISTRY_LEEWAY = 60  # seconds Distribution 2.8 adds after exp and before nbf (token.Leeway)
KEY_ID = re.compile(r"^[A-Z2-7]{4}(:[A-Z2-7]{4}){11}$")
JTI = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,256}$")  # issuer and service: printable words, no spaces
MAX_TOKEN = 64 << 10  # bytes of a token decode() looks at
MAX_ACCESS = 64  # entries of one token's access


class TokenKeyError(ValueError):
    """The signing key or certificate cannot be used; the message says why."""


class TokenError(ValueError):
    """A token that does not verify; the message names the check that failed."""


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """libtrust's key id of ``public_key``: what Distribution matches a token's ``kid`` against."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A P-256 private key and its libtrust key id."""

    private: ec.EllipticCurvePrivateKey
    kid: str

    def __repr__(self) -> str:  # never a private key in a log
        return f"SigningKey(kid={self.kid!r})"

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    @staticmethod
    def from_private(private: ec.EllipticCurvePrivateKey) -> SigningKey:
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
            raise TokenKeyError("the signing key must be an EC P-256 (prime256v1) private key: ES256")
        return SigningKey(private, key_id(private.public_key()))

    @staticmethod
    def from_pem(key_pem: bytes, cert_pem: bytes | None = None) -> SigningKey:
        """The key in ``key_pem`` (PKCS#8 or SEC1 PEM, unencrypted); with ``cert_pem``, its certificate (what the
        registry's ``rootcertbundle`` holds) must carry the same public key."""
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise TokenKeyError(f"not an unencrypted PEM private key ({exc})") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise TokenKeyError("the signing key must be an EC P-256 (prime256v1) private key: ES256")
        key = SigningKey.from_private(private)
        if cert_pem is not None:
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
            except ValueError as exc:
                raise TokenKeyError(f"not a PEM certificate ({exc})") from None
            cert_key = cert.public_key()
            if not isinstance(cert_key, ec.EllipticCurvePublicKey) or key_id(cert_key) != key.kid:
                raise TokenKeyError("the certificate does not carry the signing key's public key: the registry "
                                    "would refuse every token")
        return key


@dataclass(frozen=True, slots=True)
class Grant:
    """One ``access`` entry: ``type`` ("repository" | "registry"), ``name``, the actions granted (maybe none)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed token and what the token endpoint answers with it (``issued_at``: RFC 3339, UTC)."""

    token: str
    expires_in: int
    issued_at: str
    jti: str

    def answer(self) -> dict[str, Any]:
        """The token endpoint's JSON body (Distribution's token spec: ``token`` and its OAuth2 alias)."""
        return {"token": self.token, "access_token": self.token, "expires_in": self.expires_in,
                "issued_at": self.issued_at}


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token's claims."""

    issuer: str
    subject: str
    audience: str
    expires: int
    not_before: int
    issued: int
    jti: str
    access: tuple[Grant, ...]


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(f"{what} must be 1-256 characters of [A-Za-z0-9._:/-], got {value!r:.80}")
    return value


def check_lifetime(seconds: Any) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_LIFETIME <= seconds <= MAX_LIFETIME:
        raise ValueError(f"a token lifetime must be a whole number of seconds from {MIN_LIFETIME} to "
                         f"{MAX_LIFETIME}, got {seconds!r:.40}")
    return seconds


def rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mint(key: SigningKey, *, issuer: str, audience: str, subject: str, access: Sequence[Grant], now: float,
         jti: str, lifetime: int = DEFAULT_LIFETIME) -> Issued:
    """A token for ``subject`` ("" for an anonymous caller) granting ``access`` at ``audience`` (the
    registry's service), honoured by the registry from ``now`` for ``lifetime`` seconds (``exp`` is ``lifetime``
    less the registry's leeway); ``jti`` unique (the caller draws it)."""
    check_name("issuer", issuer)
    check_name("audience", audience)
    check_lifetime(lifetime)
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise ValueError("jti must be 8-128 characters of [A-Za-z0-9_-]")
    if len(access) > MAX_ACCESS:
        raise ValueError(f"at most {MAX_ACCESS} access entries in one token")
    issued = int(now)
    valid_for = lifetime - REGISTRY_LEEWAY  # the registry adds its leeway after exp: exp + leeway = the lifetime
    claims = {"iss": issuer, "sub": subject, "aud": audience, "exp": issued + valid_for, "nbf": issued,
              "iat": issued, "jti": jti, "access": [grant.to_json() for grant in access]}
    token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
    return Issued(token, valid_for, rfc3339(issued), jti)


def _access(raw: Any) -> tuple[Grant, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_ACCESS:
        raise TokenError(f"access is not a list of at most {MAX_ACCESS} entries")
    grants = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"type", "name", "actions"}:
            raise TokenError("an access entry is not {type, name, actions}")
        kind, name, actions = entry["type"], entry["name"], entry["actions"]
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list) \
                or not all(isinstance(a, str) for a in actions):
            raise TokenError("an access entry's type, name or actions has the wrong type")
        grants.append(Grant(kind, name, tuple(actions)))
    return tuple(grants)


def decode(token: str, keys: Mapping[str, ec.EllipticCurvePublicKey], *, issuer: str, audience: str,
           now: float, leeway: int = 0) -> Claims:
    """The claims of ``token`` when it verifies as Distribution verifies it: ``kid`` names one of ``keys``
    (by libtrust key id), ES256 signature, ``iss``, ``aud``, ``exp`` and ``nbf`` (± ``leeway`` seconds)
    at ``now``; ``TokenError`` naming the failed check otherwise (never another error)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise TokenError(f"not a token of at most {MAX_TOKEN} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token ({exc})") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"alg {header.get('alg')!r:.40} is not {ALGORITHM}")
    kid = header.get("kid")
    public = keys.get(kid) if isinstance(kid, str) else None
    if public is None:
        raise TokenError(f"kid {kid!r:.80} names no trusted key")
    try:
        # The clock checks are ours (below), against the caller's ``now``: PyJWT's read the wall clock.
        data = jwt.decode(token, public, algorithms=[ALGORITHM], audience=audience, issuer=issuer,
                          options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                   "require": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]})
    except jwt.InvalidAudienceError:
        raise TokenError(f"aud is not {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise TokenError(f"iss is not {issuer!r}") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token ({exc})") from None
    times = {name: data[name] for name in ("exp", "nbf", "iat")}
    if any(isinstance(v, bool) or not isinstance(v, int) for v in times.values()):
        raise TokenError("exp, nbf and iat must be whole seconds")
    if not isinstance(data["aud"], str):
        raise TokenError("aud must be one string (Distribution 2.8 reads no list)")
    if now > times["exp"] + leeway:
        raise TokenError(f"expired at {times['exp']} (now {int(now)}, leeway {leeway} s)")
    if now < times["nbf"] - leeway:
        raise TokenError(f"not valid before {times['nbf']} (now {int(now)}, leeway {leeway} s)")
    if not isinstance(data["sub"], str) or not isinstance(data["jti"], str):
        raise TokenError("sub and jti must be strings")
    return Claims(data["iss"], data["sub"], data["aud"], times["exp"], times["nbf"], times["iat"], data["jti"],
                  _access(data.get("access", [])))
