"""``POST /hooks/gitlab``: GitLab's Push Hook as HTTP, over ``control.webhooks.Hooks.deliver``.

``hook_routes(hooks)`` gives the route that ``leengine/control_http.py`` mounts beside
``/token``. This module only speaks HTTP; what a delivery means (bindings, the secret, one
build per commit, cancelling the superseded build) is ``control.webhooks``'.

* The body is read up to ``MAX_BODY`` bytes and no further: a ``Content-Length`` above it, or
  a chunked body that grows past it, is answered 413 at once, unread.
* The answer comes within ``ANSWER_WITHIN`` seconds (GitLab waits 10 s, and disables a hook
  after repeated slow or failed deliveries): a delivery that takes longer is abandoned and
  answered 503. Abandoning is safe: every step of a delivery is idempotent, so GitLab's
  next delivery of the push finishes what this one began.
* Statuses: 200 with ``{"outcome": "queued"|"duplicate"|"ignored", "task", "cancelled",
  "reason"}`` for every delivery that was understood (also the ignored ones: GitLab counts a
  4xx as a failure); ``DeliveryError.status`` for a refused one (400 malformed or a bad
  ``checkout_sha``, 401 wrong secret, 404 unknown project, 413 too large, 415 not JSON, 503
  no build agent); 503 when etcd or the build scheduler cannot answer in time. Errors are
  ``{"errors": [{"code", "message"}]}`` as on ``/token``.
* Logging: one line per delivery (peer, project, outcome or status, milliseconds); the
  ``X-Gitlab-Token`` header is never logged.

It must not know etcd keys or record encodings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from control.webhooks import MAX_BODY, DeliveryError, Hooks
from foundation.ports import StoreError
from foundation.ports import control as port

log = logging.getLogger("leengine.control.hooks")

PATH = "/hooks/gitlab"
ANSWER_WITHIN = 0.9  # seconds: GitLab's own limit is 10 s, the 1 s
CHUNK = 64 * 1024

_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 413: "TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
          503: "UNAVAILABLE"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": _CODES.get(status, "ERROR"), "message": message[:300]}]},
                             status=status)


class _TooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request body, at most ``limit`` bytes; ``_TooLarge`` as soon as it is known to be longer."""
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)


def hook_routes(hooks: Hooks, *, answer_within: float = ANSWER_WITHIN) -> list[web.RouteDef]:
    """The ``POST /hooks/gitlab`` route over ``hooks``."""

    async def gitlab(request: web.Request) -> web.Response:
        started = time.monotonic()
        answer, said = await _deliver(hooks, request, answer_within)
        log.info("hook from %s: %s (%.1f ms)", request.remote, said, (time.monotonic() - started) * 1000)
        return answer

    return [web.post(PATH, gitlab)]


async def _deliver(hooks: Hooks, request: web.Request, answer_within: float) -> tuple[web.Response, str]:
    deadline = time.monotonic() + answer_within  # one deadline for reading the body and delivering it
    try:
        body = await asyncio.wait_for(read_body(request), answer_within)
    except _TooLarge:
        return _error(413, f"the payload is larger than {MAX_BODY} bytes"), "413 too large"
    except TimeoutError:
        return _error(503, "the payload did not arrive in time"), "503 slow body"
    headers = {name: value for name, value in request.headers.items()}
    try:
        done = await asyncio.wait_for(hooks.deliver(headers, body), max(0.0, deadline - time.monotonic()))
    except DeliveryError as exc:
        return _error(exc.status, str(exc)), f"{exc.status} {str(exc)[:120]}"
    except TimeoutError:
        return _error(503, "the delivery took too long; deliver it again"), "503 timeout"
    except (StoreError, port.Unavailable, port.Conflict) as exc:
        return _error(503, f"the build queue cannot answer now: {type(exc).__name__}"), f"503 {type(exc).__name__}"
    except port.ControlError as exc:  # a record that does not decode, a scheduler error: ours, not GitLab's
        log.warning("hook delivery failed: %s", str(exc)[:300])
        return _error(500, "the delivery failed inside the control service"), "500"
    reply: dict[str, Any] = {"outcome": done.outcome, "task": done.task, "cancelled": list(done.cancelled),
                             "reason": done.reason}
    return web.json_response(reply, status=200), f"{done.outcome} {done.task or done.reason[:80]}"


__all__ = ["ANSWER_WITHIN", "PATH", "hook_routes", "read_body"]
