"""Registry tokens (control/registry_tokens.py): claims, the libtrust kid, and every token decode refuses;
the key command's files; the token endpoint's Basic parsing (leengine/control_http.py).

The real registry refuses the same bad tokens in tests/integration/test_registry_auth.py; here the
module's own verification (what tools and tests use) is held to the same rules."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from control import registry_tokens as rt
from leengine.control_http import TokenIssuer, basic_credentials
from leengine.registry_key_cmd import make_key_files

NOW = 1_800_000_000.0
ISS, AUD = "leengine-control", "leengine-registry"
# A fixed P-256 key (that the real registry accepts the kid computed so is proved, for fresh keys on every run,
# by tests/integration/test_registry_auth.py).
FIXED_KEY = ec.derive_private_key(0x1F2E3D4C5B6A79880123456789ABCDEF0123456789ABCDEF0123456789ABCDE, ec.SECP256R1())


@pytest.fixture(scope="module")
def key() -> rt.SigningKey:
    return rt.SigningKey.from_private(ec.generate_private_key(ec.SECP256R1()))


def grants() -> list[rt.Grant]:
    return [rt.Grant("repository", "shop/web", ("pull", "push")), rt.Grant("repository", "shop/db", ())]


def token(key: rt.SigningKey, **overrides: object) -> str:
    args: dict[str, object] = {"issuer": ISS, "audience": AUD, "subject": "alice", "access": grants(), "now": NOW,
                               "jti": "0123456789abcdef", "lifetime": 300}
    args.update(overrides)
    return rt.mint(key, **args).token  # type: ignore[arg-type]


def keys_of(key: rt.SigningKey) -> dict[str, ec.EllipticCurvePublicKey]:
    return {key.kid: key.public}


def test_kid_is_libtrust_key_id() -> None:
    public = FIXED_KEY.public_key()
    kid = rt.key_id(public)
    assert rt.KEY_ID.fullmatch(kid), kid  # 12 groups of 4 base32 characters
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Independently: the first 240 bits of SHA-256(DER SPKI), base32, no padding, ':' every 4 characters.
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    assert "=" not in text and len(text) == 48
    assert kid.replace(":", "") == text
    assert rt.SigningKey.from_private(FIXED_KEY).kid == kid


def test_claims_and_header(key: rt.SigningKey) -> None:
    issued = rt.mint(key, issuer=ISS, audience=AUD, subject="alice", access=grants(), now=NOW + 0.9,
                     jti="0123456789abcdef", lifetime=300)
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256" and header["kid"] == key.kid
    body = json.loads(base64.urlsafe_b64decode(issued.token.split(".")[1] + "=="))
    # exp + the registry's 60 s leeway = the lifetime: the registry never honours a token longer than that
    assert body == {"iss": ISS, "sub": "alice", "aud": AUD, "exp": int(NOW) + 300 - rt.REGISTRY_LEEWAY, "nbf": int(NOW),
                    "iat": int(NOW), "jti": "0123456789abcdef",
                    "access": [{"type": "repository", "name": "shop/web", "actions": ["pull", "push"]},
                               {"type": "repository", "name": "shop/db", "actions": []}]}
    assert isinstance(body["aud"], str)  # Distribution 2.8 decodes aud as one string
    assert issued.answer() == {"token": issued.token, "access_token": issued.token, "expires_in": 240,
                               "issued_at": "2027-01-15T08:00:00Z"}
    claims = rt.decode(issued.token, keys_of(key), issuer=ISS, audience=AUD, now=NOW + 10)
    assert (claims.subject, claims.expires, claims.not_before, claims.issued, claims.jti) == \
        ("alice", int(NOW) + 240, int(NOW), int(NOW), "0123456789abcdef")
    assert claims.access == tuple(grants())


@pytest.mark.parametrize("case, overrides, now, match", [
    ("another aud", {"audience": "someone-else"}, NOW, "aud is not"),
    ("another iss", {"issuer": "mallory"}, NOW, "iss is not"),
    ("expired", {}, NOW + 301, "expired"),
    ("not yet valid", {"now": NOW + 120}, NOW, "not valid before"),
])
def test_decode_refuses(key: rt.SigningKey, case: str, overrides: dict[str, object], now: float, match: str) -> None:
    with pytest.raises(rt.TokenError, match=match):
        rt.decode(token(key, **overrides), keys_of(key), issuer=ISS, audience=AUD, now=now)


def test_leeway_is_the_registrys_and_inside_the_lifetime(key: rt.SigningKey) -> None:
    late = token(key)  # lifetime 300: honoured with the registry's leeway up to its issue + 300 s, never after
    rt.decode(late, keys_of(key), issuer=ISS, audience=AUD, now=NOW + 300, leeway=rt.REGISTRY_LEEWAY)
    with pytest.raises(rt.TokenError, match="expired"):
        rt.decode(late, keys_of(key), issuer=ISS, audience=AUD, now=NOW + 301, leeway=rt.REGISTRY_LEEWAY)


def test_unknown_key_and_forged_kid(key: rt.SigningKey) -> None:
    other = rt.SigningKey.from_private(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(rt.TokenError, match="names no trusted key"):
        rt.decode(token(other), keys_of(key), issuer=ISS, audience=AUD, now=NOW)
    # Another key that claims our kid: the signature does not verify.
    forged = rt.SigningKey(other.private, key.kid)
    with pytest.raises(rt.TokenError, match="signature"):
        rt.decode(token(forged), keys_of(key), issuer=ISS, audience=AUD, now=NOW)


def test_tampered_and_foreign_tokens(key: rt.SigningKey) -> None:
    head, body, sig = token(key).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["access"][0]["actions"].append("delete")
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    refusals = {
        "tampered access": f"{head}.{raised}.{sig}",
        "HS256": jwt.encode({"iss": ISS}, "s" * 32, algorithm="HS256", headers={"kid": key.kid}),
        "alg none": jwt.encode({"iss": ISS}, None, algorithm="none", headers={"kid": key.kid}),
        "garbage": "not.a.token",
        "empty": "",
        "huge": "a" * (rt.MAX_TOKEN + 1),
    }
    for case, text in refusals.items():
        with pytest.raises(rt.TokenError):
            rt.decode(text, keys_of(key), issuer=ISS, audience=AUD, now=NOW)
            pytest.fail(case)


def test_aud_list_is_refused(key: rt.SigningKey) -> None:
    claims = {"iss": ISS, "sub": "a", "aud": [AUD], "exp": int(NOW) + 60, "nbf": int(NOW), "iat": int(NOW),
              "jti": "0123456789abcdef", "access": []}
    text = jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(rt.TokenError, match="one string"):
        rt.decode(text, keys_of(key), issuer=ISS, audience=AUD, now=NOW)


def test_mint_refuses_bad_input(key: rt.SigningKey) -> None:
    for overrides in ({"lifetime": 0}, {"lifetime": 69}, {"lifetime": 3601}, {"lifetime": True}, {"jti": "short"},
                      {"jti": "has space 0123"}, {"issuer": "two words"}, {"audience": ""},
                      {"access": [rt.Grant("repository", "a/b", ())] * (rt.MAX_ACCESS + 1)}):
        with pytest.raises(ValueError):
            token(key, **overrides)


def test_signing_key_checks() -> None:
    with pytest.raises(rt.TokenKeyError, match="P-256"):
        rt.SigningKey.from_private(ec.generate_private_key(ec.SECP384R1()))
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(rt.TokenKeyError, match="P-256"):
        rt.SigningKey.from_pem(rsa_pem)
    with pytest.raises(rt.TokenKeyError, match="PEM private key"):
        rt.SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    encrypted = FIXED_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(rt.TokenKeyError):
        rt.SigningKey.from_pem(encrypted)
    assert "PRIVATE" not in repr(rt.SigningKey.from_private(FIXED_KEY))


def test_key_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key_path, cert_path, kid = make_key_files(tmp_path / "keys")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = rt.SigningKey.from_pem(key_path.read_bytes(), cert_path.read_bytes())
    assert loaded.kid == kid
    with pytest.raises(FileExistsError):
        make_key_files(tmp_path / "keys")
    _, other_cert, _ = make_key_files(tmp_path / "other")
    with pytest.raises(rt.TokenKeyError, match="certificate does not carry"):
        rt.SigningKey.from_pem(key_path.read_bytes(), other_cert.read_bytes())
    with pytest.raises(ValueError, match="--registry-service"):
        TokenIssuer(loaded, service="has space")
    with pytest.raises(ValueError):
        TokenIssuer(loaded, lifetime=0)


def test_basic_credentials() -> None:
    def basic(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic_credentials(basic("alice:tok:en")) == ("alice", "tok:en")
    assert basic_credentials(basic("robot$ci:s3cret")) == ("robot$ci", "s3cret")
    assert basic_credentials("basic " + base64.b64encode(b"a:b").decode()) == ("a", "b")
    for bad in (basic("nopassword"), basic(":pw"), basic("user:"), "Bearer abc", "Basic !!!", "Basic",
                "Basic " + base64.b64encode(b"\xff:\xfe").decode(), basic("a:" + "b" * 5000)):
        assert basic_credentials(bad) is None, bad


def test_documented_matrix_is_the_policy() -> None:
    """docs/registry.md's HTTP matrix (what the e2e test runs through the real registry) says what
    control.registry_policy.granted grants: 2xx exactly where the action is granted, 401 elsewhere."""
    from pathlib import Path

    from control.members import Role
    from control.registry_policy import Caller, Scope, granted
    from lab.registry import read_matrix

    matrix = read_matrix((Path(__file__).resolve().parents[2] / "docs" / "registry.md").read_text())
    success = {"pull": 200, "push": 201, "delete": 202}
    callers = {"anonymous": (Caller("anonymous"), None), "admin": (Caller("admin", "ops"), None),
               **{str(r): (Caller("user", "u"), r) for r in Role}}
    assert {c for c, _, _ in matrix} == set(callers)
    for (name, visibility, action), status in matrix.items():
        caller, role = callers[name]
        allowed = granted(caller, Scope("repository", "grp/web", (action,)), visibility=visibility, role=role)
        assert status == (success[action] if allowed else 401), (name, visibility, action, status)


def test_control_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """leengine-control's --http-address/--registry-* checks (leengine.control_server.http_settings)."""
    from leengine.control_server import http_settings

    key_path, cert_path, kid = make_key_files(tmp_path / "keys")
    _, other_cert, _ = make_key_files(tmp_path / "other")

    def settings(address: str = "127.0.0.1:0", key=key_path, cert=cert_path, lifetime: int = 300,  # type: ignore[no-untyped-def]
                 service: str = "leengine-registry"):
        return http_settings(address, key, cert, service, "leengine-control", lifetime, None, None)

    made = settings()
    assert made is not None and made.issuer is not None and made.issuer.key.kid == kid
    assert made.issuer.lifetime == 300 and made.ssl_context is None
    assert http_settings("", None, None, "s", "i", 300, None, None) is None
    refusals = {
        "--registry-key/--registry-cert need --http-address": lambda: settings(address=""),
        "--http-address 10.0.0.1 is not loopback": lambda: settings(address="10.0.0.1:5001"),
        "--http-address must look like": lambda: settings(address="nowhere"),
        "--registry-cert needs --registry-key": lambda: settings(key=None),
        "certificate does not carry": lambda: settings(cert=other_cert),
        "--registry-token-lifetime": lambda: settings(lifetime=0),
        "--registry-service": lambda: settings(service="two words"),
    }
    for message, call in refusals.items():
        with pytest.raises(ValueError, match=message):
            call()
    key_path.chmod(0o644)  # a signing key others may read is refused, as the tokens file is
    with pytest.raises(ValueError, match="--registry-key"):
        settings()
    key_path.chmod(0o600)
    assert settings(cert=None) is not None  # the certificate is an optional cross-check


def test_https_token_endpoint_with_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With --tls-cert/--tls-key the HTTP listener speaks only HTTPS (and may then leave loopback); an anonymous
    request with no scope (what `docker login` sends first) gets a signed token without reading the store."""
    import asyncio
    import ssl
    import urllib.error
    import urllib.request

    from control.auth import TokenTable
    from lab.certs import make_certs
    from leengine.control_http import make_app, start_http
    from leengine.control_server import http_settings

    certs = make_certs(tmp_path / "certs")
    key_path, cert_path, kid = make_key_files(tmp_path / "keys")
    settings = http_settings("0.0.0.0:0", key_path, cert_path, "leengine-registry", "leengine-control", 70,
                             certs.server_cert, certs.server_key)
    assert settings is not None and settings.ssl_context is not None and settings.issuer is not None
    assert settings.issuer.key.kid == kid
    tokens = TokenTable.from_entries([("0123456789abcdef0123", "ops", "admin")])
    client = ssl.create_default_context(cafile=str(certs.ca_cert))

    def get(url: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def main() -> None:
        app = make_app(None, None, tokens, settings.issuer)  # type: ignore[arg-type]  # no scope: no store read
        server = await start_http(app, "127.0.0.1:0", settings.ssl_context)
        try:
            loop = asyncio.get_running_loop()
            base = f"https://127.0.0.1:{server.port}/token"
            status, body = await loop.run_in_executor(None, get, base + "?service=leengine-registry", client)
            assert status == 200
            answer = json.loads(body)
            claims = rt.decode(answer["token"], {settings.issuer.key.kid: settings.issuer.key.public},
                               issuer="leengine-control", audience="leengine-registry", now=time.time())
            assert claims.subject == "" and claims.access == () and answer["expires_in"] == 10
            status, body = await loop.run_in_executor(None, get, base + "?service=another", client)
            assert status == 400 and b"service" in body
            status, _ = await loop.run_in_executor(None, get, base + "?service=leengine-registry&scope=x:y", client)
            assert status == 400
            with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to the TLS port
                await loop.run_in_executor(None, get, f"http://127.0.0.1:{server.port}/token", None)
        finally:
            await server.stop()

    asyncio.run(main())
