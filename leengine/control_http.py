"""The control service's HTTP beside its gRPC API: the registry's token endpoint and GitLab's hooks.

``leengine-control --http-address HOST:PORT`` serves this aiohttp app on the server's event loop:

* ``GET /token`` (with ``--registry-key``): Distribution's token endpoint (its docs/spec/auth/token.md).
  Query: ``service`` (required: must be ours, ``--registry-service``), ``scope`` (repeatable, or
  several in one parameter separated by spaces; none: a token with no access, what ``docker login``
  asks), ``account`` (optional; when given, it must be the Basic user name). Who asks
  (``Authorization: Basic``, RFC 7617):

  * a platform user: user name = its principal name, password = its control-service bearer token
    (``control.auth`` table; the name must be the token's). Role ``admin`` → an admin caller; ``user``
    → its memberships decide; ``discovery`` → anonymous rights (it has no platform rights);
  * a robot: ``robot$NAME`` and its secret (``control.robots.robot_caller``);
  * a build attempt: ``build$TASK`` and the task's current push secret
    (``control.build_credentials.build_caller``);
  * no ``Authorization`` header: anonymous.

  Each scope is decided by ``control.image_groups.access`` (``control.registry_policy.granted`` with
  the group's visibility and the caller's effective role): the token grants the intersection of what
  was asked and what is allowed, a partial or empty grant being no error. Answers: 200
  ``{"token", "access_token", "expires_in", "issued_at"}``; 401 with ``WWW-Authenticate: Basic
  realm="..."`` for credentials that do not verify (unknown user, wrong password, revoked robot,
  moved build) or an unusable ``Authorization`` header; 400 for a scope that does not parse, a
  missing or foreign ``service``, an ``account`` that is not the user; 503 when etcd cannot be read.
  Errors are JSON ``{"errors": [{"code", "message"}]}`` (the registry's own error shape).
  Passwords are never logged; failed authentications are (peer, user-name kind), rate-limited.
* ``POST /hooks/gitlab``: GitLab's Push Hook, routes from ``leengine/hook_http.py`` (when that module
  and ``control/webhooks.py`` are installed; ``hook_routes(hooks)``).

Bearer tokens and secrets travel in these requests, so plaintext HTTP is served only on loopback (as
for gRPC): anywhere else needs ``--tls-cert/--tls-key``, which then serve HTTPS here too.
``make_app`` builds the app (tests drive it in-process); ``start_http`` serves it and returns a
handle with the bound port.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control import image_groups
from control.auth import TokenTable
from control.registry_policy import Caller, Scope, ScopeError, parse_scope
from control.registry_tokens import DEFAULT_LIFETIME, Grant, SigningKey, check_lifetime, check_name, mint
from foundation.ports import Runtime, Store, StoreError, StoreUnavailable

log = logging.getLogger("leengine.control.http")

DEFAULT_SERVICE = "leengine-registry"
DEFAULT_ISSUER = "leengine-control"
BASIC_REALM = "leengine-registry"
MAX_SCOPES = 16  # scopes in one token request (a copy between two repositories asks for 2)
MAX_AUTHORIZATION = 4096  # characters of an Authorization header looked at
ROBOT_USER, BUILD_USER = "robot$", "build$"
AUTH_LOG_BURST = 10  # failed authentications logged per minute


@dataclass(frozen=True)
class TokenIssuer:
    """What ``/token`` signs with and for: the key, the registry's ``service`` (the tokens' ``aud``),
    our ``issuer`` (their ``iss``) and the tokens' lifetime in seconds."""

    key: SigningKey
    service: str = DEFAULT_SERVICE
    issuer: str = DEFAULT_ISSUER
    lifetime: int = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        check_name("--registry-service", self.service)
        check_name("--registry-issuer", self.issuer)
        check_lifetime(self.lifetime)


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message[:300]}]}, status=status,
                             headers=headers)


def _unauthorized(message: str) -> web.Response:
    return _error(401, "UNAUTHORIZED", message, {"WWW-Authenticate": f'Basic realm="{BASIC_REALM}"'})


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header; None when it is not one (RFC 7617)."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(header) > MAX_AUTHORIZATION:
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        return None
    return user, password


def _optional(module: str, name: str) -> Any:
    """``module.name`` when that module is installed (slices land one by one), else None."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        if exc.name != module:  # the module is there but broken: say so rather than hide it
            raise
        return None


class _RateLimited:
    def __init__(self, burst: int, window: float) -> None:
        self.burst, self.window = burst, window
        self.start, self.count, self.dropped = float("-inf"), 0, 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.dropped:
                log.warning("%d more failed token requests were not logged", self.dropped)
            self.start, self.count, self.dropped = now, 0, 0
        if self.count >= self.burst:
            self.dropped += 1
            return
        self.count += 1
        log.warning(message, *args)


@dataclass
class TokenEndpoint:
    """``GET /token``: who asks, what each scope grants, the signed token."""

    store: Store
    runtime: Runtime
    tokens: TokenTable
    issuer: TokenIssuer
    clock: Callable[[], float] = time.time  # wall seconds: tokens carry Unix times
    new_jti: Callable[[], str] = field(default=lambda: secrets.token_hex(16))
    failures: _RateLimited = field(default_factory=lambda: _RateLimited(AUTH_LOG_BURST, 60.0))

    async def identify(self, header: str | None) -> Caller | None:
        """The caller behind ``header`` (None: no header = anonymous), or None when credentials do not verify."""
        if header is None:
            return Caller("anonymous")
        pair = basic_credentials(header)
        if pair is None:
            return None
        user, password = pair
        if user.startswith(ROBOT_USER):
            robot_caller = _optional("control.robots", "robot_caller")
            return None if robot_caller is None else await robot_caller(self.store, self.runtime, user, password)
        if user.startswith(BUILD_USER):
            build_caller = _optional("control.build_credentials", "build_caller")
            return None if build_caller is None else await build_caller(self.store, user, password)
        principal = self.tokens.lookup(password)
        if principal is None or principal.name != user:
            return None
        if principal.role == "admin":
            return Caller("admin", principal.name)
        if principal.role == "user":
            return Caller("user", principal.name)
        return Caller("anonymous", principal.name)  # discovery: no platform rights, public pulls only

    def scopes(self, request: web.Request) -> list[Scope]:
        service = request.query.getall("service", [])
        if len(service) != 1 or service[0] != self.issuer.service:
            raise BadRequest(f"service must be {self.issuer.service!r} (the registry's auth.token.service)")
        texts = [word for value in request.query.getall("scope", []) for word in value.split(" ") if word]
        if len(texts) > MAX_SCOPES:
            raise BadRequest(f"at most {MAX_SCOPES} scopes in one request")
        parsed: list[Scope] = []
        for text in texts:
            try:
                scope = parse_scope(text)
            except ScopeError as exc:
                raise BadRequest(str(exc)) from None
            if scope not in parsed:
                parsed.append(scope)
        return parsed

    async def handle(self, request: web.Request) -> web.Response:
        try:
            scopes = self.scopes(request)
        except BadRequest as exc:
            return _error(400, "INVALID_REQUEST", exc.message)
        header = request.headers.get("Authorization")
        pair = basic_credentials(header) if header is not None else None
        accounts = request.query.getall("account", [])
        if accounts and (pair is None or accounts != [pair[0]]):
            return _error(400, "INVALID_REQUEST", "account must be the user name of the Basic credentials")
        try:
            caller = await self.identify(header)
            if caller is None:
                kind = "no Basic credentials" if pair is None else (
                    "robot" if pair[0].startswith(ROBOT_USER) else
                    "build" if pair[0].startswith(BUILD_USER) else "user")
                self.failures.warning("token request from %s refused: bad credentials (%s)", request.remote, kind)
                return _unauthorized("the credentials do not verify")
            grants = [Grant(s.type, s.name, await image_groups.access(self.store, caller, s)) for s in scopes]
        except StoreUnavailable as exc:
            log.warning("token request: etcd unavailable: %s", exc)
            return _error(503, "UNAVAILABLE", "the control service cannot read its store; try again")
        except StoreError as exc:
            log.warning("token request: store error: %s", exc)
            return _error(500, "INTERNAL", "the control service's store failed")
        issued = mint(self.issuer.key, issuer=self.issuer.issuer, audience=self.issuer.service, subject=caller.name,
                      access=grants, now=self.clock(), jti=self.new_jti(), lifetime=self.issuer.lifetime)
        log.info("token %s for %s %s: %s", issued.jti, caller.kind, caller.name or "-",
                 "; ".join(f"{g.name}:{','.join(g.actions) or '-'}" for g in grants) or "no scope")
        return web.json_response(issued.answer(), headers={"Cache-Control": "no-store"})


def make_app(store: Store, runtime: Runtime, tokens: TokenTable, issuer: TokenIssuer | None,
             hooks: Any = None) -> web.Application:
    """The HTTP app: ``/token`` when ``issuer`` is given, GitLab's hook routes when ``hooks`` is given
    (a ``control.webhooks.Hooks``) and ``leengine.hook_http`` is installed."""
    app = web.Application(client_max_size=1 << 20)
    if issuer is not None:
        endpoint = TokenEndpoint(store, runtime, tokens, issuer)
        app.router.add_get("/token", endpoint.handle)
    if hooks is not None:
        hook_routes = _optional("leengine.hook_http", "hook_routes")
        if hook_routes is not None:
            app.router.add_routes(hook_routes(hooks))
    return app


def new_hooks(store: Store, runtime: Runtime, queue: Any) -> Any:
    """A ``control.webhooks.Hooks`` over the build queue, or None while that module is not installed."""
    hooks = _optional("control.webhooks", "Hooks")
    return None if hooks is None else hooks(store, runtime, queue)


@dataclass
class HttpServer:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_http(app: web.Application, address: str, ssl_context: ssl.SSLContext | None = None) -> HttpServer:
    """Serve ``app`` on ``address`` (HOST:PORT, port 0 = a free one); OSError when it cannot bind."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return HttpServer(runner, int(runner.addresses[0][1]))


@dataclass(frozen=True)
class HttpSettings:
    """``--http-address`` and what it serves: ``issuer`` (None: no ``/token``), TLS (None: plaintext, loopback only)."""

    address: str
    issuer: TokenIssuer | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)


__all__ = ["DEFAULT_ISSUER", "DEFAULT_SERVICE", "HttpServer", "HttpSettings", "TokenEndpoint", "TokenIssuer",
           "basic_credentials", "make_app", "new_hooks", "start_http"]
