"""The registry gate (leengine/registry_gate.py) in-process, in front of a fake registry that keeps one digest per tag.

* a PUT whose path reaches the tag only once dot segments are resolved (``/v2/shop/./shop/manifests/T``,
  ``/v2/shop/x/../shop/...``, ``%2e``) is guarded like the plain path: the gate decides on the URL it sends
  upstream, so another image under an existing tag is refused 403 and the tag keeps its digest;
* a manifest whose body arrives in two segments is read whole: its digest is the whole body's and the registry
  gets all of it (``StreamReader.read(n)`` alone answers with what has arrived so far).

The real registry with skopeo: tests/integration/test_registry_gate.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web

from leengine.registry_gate import RegistryGate

TAG = "c" * 40


class FakeRegistry:
    """Manifests by (name, tag) as the registry keeps them; HEAD answers the digest, PUT stores the body."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], bytes] = {}

    async def handle(self, request: web.Request) -> web.Response:
        name, _, tag = request.path.removeprefix("/v2/").rpartition("/manifests/")
        if request.method == "HEAD":
            held = self.tags.get((name, tag))
            if held is None:
                return web.Response(status=404)
            return web.Response(status=200, headers={"Docker-Content-Digest": digest(held)})
        if request.method == "PUT":
            self.tags[(name, tag)] = await request.read()
            return web.Response(status=201)
        return web.Response(status=405)


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


async def raw_put(port: int, path: str, body: bytes, *, split: int | None = None) -> int:
    """PUT ``body`` at ``path`` exactly as written (no client normalises it); with ``split``, the body's first
    ``split`` bytes go first and the rest 0.2 s later. The answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"PUT {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    first = len(body) if split is None else split
    writer.write(head + body[:first])
    await writer.drain()
    if first < len(body):
        await asyncio.sleep(0.2)
        writer.write(body[first:])
        await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def run(scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        registry = FakeRegistry()
        upstream = web.Application(client_max_size=8 << 20)
        upstream.router.add_route("*", "/{tail:.*}", registry.handle)
        up = web.AppRunner(upstream)
        await up.setup()
        await web.TCPSite(up, "127.0.0.1", 0).start()
        gate = RegistryGate(f"http://127.0.0.1:{up.addresses[0][1]}")
        front = web.AppRunner(gate.app())
        await front.setup()
        await web.TCPSite(front, "127.0.0.1", 0).start()
        try:
            await scenario(registry, gate, front.addresses[0][1])
        finally:
            await front.cleanup()
            await up.cleanup()

    asyncio.run(main())


def manifest(text: str, pad: int = 0) -> bytes:
    return json.dumps({"schemaVersion": 2, "annotations": {"text": text}, "pad": "x" * pad}).encode()


def test_dot_segments_do_not_get_past_the_guard() -> None:
    async def scenario(registry: FakeRegistry, gate: RegistryGate, port: int) -> None:
        first, second = manifest("first"), manifest("second")
        assert await raw_put(port, f"/v2/shop/shop/manifests/{TAG}", first) == 201
        for path in (f"/v2/shop/./shop/manifests/{TAG}", f"/v2/shop/x/../shop/manifests/{TAG}",
                     f"/v2/shop/%2e/shop/manifests/{TAG}", f"/v2/shop/shop/manifests/x/../{TAG}",
                     f"/v2/shop/shop/manifests/{TAG}"):
            assert await raw_put(port, path, second) == 403, path
            assert registry.tags == {("shop/shop", TAG): first}, path
        assert await raw_put(port, f"/v2/shop/./shop/manifests/{TAG}", first) == 201  # the same image: a retry
        assert gate.stats.refused == 5

    run(scenario)


def test_a_manifest_sent_in_two_segments_is_read_whole() -> None:
    async def scenario(registry: FakeRegistry, gate: RegistryGate, port: int) -> None:
        body = manifest("split", pad=3000)
        assert await raw_put(port, f"/v2/shop/shop/manifests/{TAG}", body, split=100) == 201
        assert registry.tags == {("shop/shop", TAG): body}
        # Sent again the same way, it is the same digest: a retry, accepted.
        assert await raw_put(port, f"/v2/shop/shop/manifests/{TAG}", body, split=100) == 201
        assert gate.stats.refused == 0

    run(scenario)

