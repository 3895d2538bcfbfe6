"""``leengine registry-gate``: a reverse proxy in front of the registry that keeps tags immutable.

    leengine registry-gate --listen 127.0.0.1:5001 --upstream http://127.0.0.1:5000

Distribution 2.8 (Debian's ``docker-registry``) lets anyone with push rights move a tag to
another manifest; LeEngine's tags are full commit ids and must mean one image forever. The
gate streams every request and answer through unchanged (blobs of gigabytes are never held in
memory; ``Authorization`` and ``WWW-Authenticate`` pass untouched, so token auth works through
it as it does directly; ``Host`` is passed too, so the registry's upload ``Location``\\s name the
gate), except ``PUT /v2/NAME/manifests/TAG`` with TAG a tag: there it reads the manifest (at most
``MAX_MANIFEST`` bytes, Distribution's own limit is 4 MiB), ``HEAD``\\s the tag upstream with the
caller's own ``Authorization`` and asks ``control.tag_guard.decide``: a new tag or the same digest
again is forwarded; another digest is refused with 403 and Distribution's ``DENIED`` error body.
The check and the PUT are serialised per (NAME, TAG) in the gate, so two racing pushes of one tag
cannot both find it missing (run one gate per registry).

Clients must reach the registry only through the gate (the registry listens on loopback or a
private address); the gate itself holds no credentials and decides nothing about access: the
registry checks every token. It must not know tokens, roles or etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp
import typer
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from control.tag_guard import MANIFEST_TYPES, Target, body_digest, decide, denied_body, manifest_target
from leengine.command import BadInput, Failed
from leengine.daemon import stop_on_signals

log = logging.getLogger("leengine.registry_gate")

MAX_MANIFEST = 4 * 1024 * 1024  # bytes: Distribution refuses bigger manifests itself
CHUNK = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-connection"})


@dataclass
class _Locks:
    """One asyncio.Lock per (name, tag) while anyone holds or waits for it (so the table stays small)."""

    held: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def of(self, target: Target) -> AsyncIterator[None]:
        key = (target.name, target.tag)
        lock, users = self.held.get(key, (asyncio.Lock(), 0))
        self.held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.held[key]
            if users == 1:
                del self.held[key]
            else:
                self.held[key] = (lock, users - 1)


@dataclass
class GateStats:
    forwarded: int = 0
    refused: int = 0  # manifest PUTs that would have moved a tag
    guarded: int = 0  # manifest PUTs under a tag that were checked


class RegistryGate:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.locks = _Locks()
        self.stats = GateStats()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No automatic decompression (bytes go through as they came) and no timeout on a whole transfer
        # (a blob may take long); connecting and silences are bounded.
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=300))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() the gate first"
        return self._session

    def app(self) -> web.Application:
        application = web.Application(client_max_size=MAX_MANIFEST)

        async def started(_: web.Application) -> None:
            await self.start()

        async def stopped(_: web.Application) -> None:
            await self.close()

        application.on_startup.append(started)
        application.on_cleanup.append(stopped)
        application.router.add_route("*", "/{tail:.*}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Decide on the very URL sent upstream: yarl resolves dot segments ("/v2/g/./n/manifests/T",
        # "/v2/g/x/../n/...", "%2e%2e") that ``request.path`` keeps, so a check of ``request.path`` would let
        # such a PUT through unguarded to the tag it resolves to.
        url = URL(f"{self.upstream}{request.path_qs}")
        target = manifest_target(request.method, url.path)
        if target is None:
            return await self._forward(request, url,
                                       request.content.iter_chunked(CHUNK) if request.body_exists else None)
        self.stats.guarded += 1
        try:
            body = await _read_at_most(request, MAX_MANIFEST + 1)  # all of it: read() answers what has arrived
        except aiohttp.ClientPayloadError:
            return _error(400, "MANIFEST_INVALID", "the manifest was cut off")
        if len(body) > MAX_MANIFEST:
            return _error(413, "MANIFEST_INVALID", f"a manifest is at most {MAX_MANIFEST} bytes")
        async with self.locks.of(target):
            try:
                status, existing, challenge = await self._head(request, target)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("HEAD %s:%s upstream failed: %s", target.name, target.tag, exc)
                return _error(503, "UNAVAILABLE", f"the registry did not answer ({type(exc).__name__})")
            verdict = decide(target, status, existing, body_digest(body))
            if verdict.action == "challenge":  # the registry's own challenge, untouched: the client gets a token
                return _error(401, "UNAUTHORIZED", "authentication required", challenge)
            if verdict.action != "forward":
                self.stats.refused += verdict.action == "refuse"
                log.warning("manifest PUT refused: %s", verdict.message)
                return web.Response(status=verdict.status, body=denied_body(verdict), content_type="application/json")
            return await self._forward(request, url, body)

    async def _head(self, request: web.Request, target: Target) -> tuple[int, str | None, dict[str, str]]:
        """The upstream HEAD of the tag, as the caller: (status, its digest, its WWW-Authenticate headers)."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}  # all of them: the registry never converts (re-digests)
        for name in ("Authorization", "Host"):
            if name in request.headers:
                headers[name] = request.headers[name]
        async with self.session.head(f"{self.upstream}/v2/{target.name}/manifests/{target.tag}",
                                     headers=headers, allow_redirects=False) as answer:
            challenge = {k: v for k, v in answer.headers.items() if k.lower() == "www-authenticate"}
            return answer.status, answer.headers.get("Docker-Content-Digest"), challenge

    async def _forward(self, request: web.Request, url: URL, body: bytes | AsyncIterator[bytes] | None,
                       ) -> web.StreamResponse:
        """Send the request upstream (to ``url``) and stream the answer back (status, headers and body as they are)."""
        self.stats.forwarded += 1
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        if isinstance(body, bytes):  # repeated headers (a client's several Accept lines) all go on
            headers["Content-Length"] = str(len(body))
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body,
                allow_redirects=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s %s upstream failed: %s", request.method, request.path, exc)
            return _error(503, "UNAVAILABLE", f"the registry did not answer ({type(exc).__name__})")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream.content_length is None and request.method != "HEAD" and upstream.status not in (204, 304):
                response.enable_chunked_encoding()
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The request body up to ``limit`` bytes (to its end when shorter): ``StreamReader.read(n)`` returns as soon as
    some bytes are there, which for a manifest sent in two segments would be only its first part."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(min(CHUNK, limit - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An answer of the gate's own, in Distribution's error format."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def serve(listen: str, upstream: str, *, stop: asyncio.Event | None = None) -> None:
    """Run the gate on ``listen`` (HOST:PORT) until ``stop`` is set (SIGTERM/SIGINT when None)."""
    host, _, port = listen.rpartition(":")
    stop = stop_on_signals(stop)
    runner = web.AppRunner(RegistryGate(upstream).app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.warning("registry gate on %s -> %s", listen, upstream)
        await stop.wait()
    finally:
        await runner.cleanup()


def registry_gate_command(
    listen: Annotated[str, typer.Option(help="HOST:PORT the gate listens on (what clients call the registry)")],
    upstream: Annotated[str, typer.Option(help="the registry's URL, e.g. http://127.0.0.1:5000")],
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    """A reverse proxy in front of the registry that refuses to move an existing tag to another image."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--listen must be HOST:PORT, got {listen[:80]!r}")
    parsed = urlsplit(upstream)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/") \
            or parsed.query or parsed.fragment:
        raise BadInput(f"--upstream must be http(s)://HOST:PORT of the registry, got {upstream[:80]!r}")
    if log_level not in ("debug", "info", "warning", "error"):
        raise BadInput(f"--log-level must be debug, info, warning or error, got {log_level[:20]!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(listen, upstream))
    except OSError as exc:
        raise Failed(f"cannot listen on {listen}: {exc.strerror or exc}") from None


__all__ = ["MAX_MANIFEST", "RegistryGate", "registry_gate_command", "serve"]
