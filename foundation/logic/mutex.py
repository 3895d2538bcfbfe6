"""A mutual-exclusion lock made of the Runtime port's queue, so it works in both runtimes.

One token circulates through a queue: ``acquire`` takes it, ``release`` puts it
back. The queue's cancellation safety (a cancelled getter never swallows an item)
makes the lock safe to use around awaits that may be cancelled.
It must not know which runtime it runs on.
"""

from __future__ import annotations

from foundation.ports.runtime import Runtime


class Mutex:
    def __init__(self, runtime: Runtime) -> None:
        self._tokens = runtime.queue()
        self._tokens.put_nowait(object())
        self._token: object | None = None

    async def __aenter__(self) -> Mutex:
        self._token = await self._tokens.get()
        return self

    async def __aexit__(self, *exc: object) -> None:
        token, self._token = self._token, None
        self._tokens.put_nowait(token)

    def locked(self) -> bool:
        return self._tokens.qsize() == 0
