"""POST /hooks/gitlab as HTTP (leengine/hook_http.py), in-process over aiohttp's test server, with a fake Hooks:
the body read no further than MAX_BODY, typed refusals as their statuses, a slow delivery answered 503 in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control import webhooks
from foundation.ports import StoreUnavailable
from leengine.hook_http import PATH, hook_routes


class FakeHooks:
    def __init__(self, answer: Any = None, delay: float = 0.0) -> None:
        self.answer = answer if answer is not None else webhooks.Delivery("queued", "shop@" + "1" * 40, ())
        self.delay = delay
        self.calls: list[tuple[dict[str, str], bytes]] = []

    async def deliver(self, headers: Mapping[str, str], body: bytes) -> webhooks.Delivery:
        self.calls.append((dict(headers), body))
        await asyncio.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def post(hooks: FakeHooks, data: Any, headers: dict[str, str] | None = None,
         answer_within: float = 0.9) -> tuple[int, dict[str, Any], float]:
    async def run() -> tuple[int, dict[str, Any], float]:
        app = web.Application()
        app.router.add_routes(hook_routes(hooks, answer_within=answer_within))  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            started = time.monotonic()
            reply = await client.post(PATH, data=data, headers={"Content-Type": "application/json",
                                                                **(headers or {})})
            return reply.status, await reply.json(), time.monotonic() - started
    return asyncio.run(run())


def test_a_delivery_is_answered_200_with_its_outcome():
    hooks = FakeHooks()
    status, answer, _ = post(hooks, b"{}", {"X-Gitlab-Token": "s3cret"})
    assert status == 200 and answer == {"outcome": "queued", "task": "shop@" + "1" * 40, "cancelled": [],
                                        "reason": ""}
    assert hooks.calls[0][0]["X-Gitlab-Token"] == "s3cret" and hooks.calls[0][1] == b"{}"


def test_an_announced_oversized_body_is_413_unread_and_not_delivered():
    hooks = FakeHooks()
    status, answer, _ = post(hooks, b"x" * (webhooks.MAX_BODY + 1))
    assert status == 413 and answer["errors"][0]["code"] == "TOO_LARGE" and hooks.calls == []


def test_a_chunked_body_that_grows_too_large_is_413_and_not_delivered():
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(webhooks.MAX_BODY // 65536 + 2):
            yield b" " * 65536

    hooks = FakeHooks()
    status, _, _ = post(hooks, chunks())
    assert status == 413 and hooks.calls == []


def test_refusals_keep_their_status():
    for error in (webhooks.Malformed("bad"), webhooks.WrongSecret("no"), webhooks.UnknownProject("who"),
                  webhooks.NotJson("form"), webhooks.NoBuildAgents("none")):
        status, answer, _ = post(FakeHooks(error), b"{}")
        assert status == error.status and answer["errors"][0]["message"] == str(error)


def test_etcd_away_is_503():
    status, answer, _ = post(FakeHooks(StoreUnavailable("etcd", "down")), b"{}")
    assert status == 503 and answer["errors"][0]["code"] == "UNAVAILABLE"


def test_a_slow_delivery_is_answered_503_within_the_deadline():
    status, answer, took = post(FakeHooks(delay=5.0), b"{}", answer_within=0.3)
    assert status == 503 and "deliver it again" in answer["errors"][0]["message"]
    assert took < 1.0


def test_a_slow_body_and_a_slow_delivery_share_one_deadline():
    """The body trickling in for most of the deadline leaves the delivery only what is left of it: the answer still
    comes within ``answer_within`` of the request (not once for the body and once more for the delivery)."""
    async def trickle() -> AsyncIterator[bytes]:
        yield b"{"
        await asyncio.sleep(0.6)
        yield b"}"

    hooks = FakeHooks(delay=0.6)
    status, answer, took = post(hooks, trickle(), answer_within=0.9)
    assert status == 503 and "deliver it again" in answer["errors"][0]["message"]
    assert took < 1.1, took
