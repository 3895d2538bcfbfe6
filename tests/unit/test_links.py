"""The lab's links process (lab/links.py) without root: loopback listeners, an echo "member".

What it must do: forward in "pass", add the delay to each direction in "delay", drop open
connections and hold new ones in "cut" (and let the held ones through afterwards), fail
over to the next member when one refuses, and answer every control line, a hostile one
with an error line, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from lab.links import (
    MAX_REQUEST,
    Links,
    LinksConfig,
    LinksError,
    LinkState,
    SetRequest,
    StatusRequest,
    parse_request,
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _config(listen_port: int, *targets: int, client: str = "node-1") -> LinksConfig:
    return LinksConfig.parse({"listeners": [{"client": client, "member": "etcd1", "listen": f"127.0.0.1:{listen_port}",
                                              "targets": [f"127.0.0.1:{t}" for t in targets]}]})


async def _roundtrip(port: int, payload: bytes = b"ping", timeout: float = 3.0) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = time.monotonic()
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
        return data, time.monotonic() - start
    finally:
        writer.close()


# --------------------------------------------------------------------------- configuration and requests


def test_config_round_trips_and_refuses_bad_fields() -> None:
    config = _config(5000, 2379, 2380)
    assert LinksConfig.parse(json.loads(config.to_json())) == config
    assert config.clients == ["node-1"]
    bad = [
        {},
        {"listeners": []},
        {"listeners": [{"client": "Node_1", "member": "etcd1", "listen": "127.0.0.1:1", "targets": ["127.0.0.1:2"]}]},
        {"listeners": [{"client": "n", "member": "etcd1", "listen": "localhost:1", "targets": ["127.0.0.1:2"]}]},
        {"listeners": [{"client": "n", "member": "etcd1", "listen": "127.0.0.1:0", "targets": ["127.0.0.1:2"]}]},
        {"listeners": [{"client": "n", "member": "etcd1", "listen": "127.0.0.1:1", "targets": []}]},
        {"listeners": [{"client": "n", "member": "etcd1", "listen": "127.0.0.1:1", "targets": ["; rm -rf /:2"]}]},
        {"listeners": [{"client": "n", "member": "e", "listen": "127.0.0.1:1", "targets": ["127.0.0.1:2"]}] * 2},
        {"listeners": [{"client": "n", "member": "e", "listen": "127.0.0.1:1", "targets": ["127.0.0.1:2"],
                        "extra": 1}]},
    ]
    for data in bad:
        with pytest.raises(LinksError):
            LinksConfig.parse(data)


def test_requests_parse_and_bad_ones_say_why() -> None:
    known = ["node-1", "node-2"]
    assert parse_request(b'{"op":"status"}', known) == StatusRequest()
    assert parse_request(b'{"op":"set","clients":["node-1","node-1"],"state":"delay","seconds":0.05}', known) \
        == SetRequest(("node-1",), LinkState("delay", 0.05))
    assert parse_request(b'{"op":"set","clients":["node-2"],"state":"cut"}', known) \
        == SetRequest(("node-2",), LinkState("cut", 0.0))
    cases = {
        b"not json": "not JSON",
        b"[" * 100_000: "longer than",
        b"[" * 5000 + b"]" * 5000: "not JSON",
        b'{"op":"drop"}': "op",
        b'{"op":"set","clients":["node-9"],"state":"cut"}': "unknown",
        b'{"op":"set","clients":[],"state":"cut"}': "non-empty",
        b'{"op":"set","clients":["node-1"],"state":"slow"}': "state",
        b'{"op":"set","clients":["node-1"],"state":"delay"}': "seconds",
        b'{"op":"set","clients":["node-1"],"state":"delay","seconds":1e9}': "seconds",
        b'{"op":"set","clients":["node-1"],"state":"delay","seconds":true}': "seconds",
        b'{"op":"set","clients":["node-1"],"state":"delay","seconds":NaN}': "seconds",
        b'{"op":"status","x":1}': "no other field",
    }
    for line, words in cases.items():
        with pytest.raises(LinksError, match=words):
            parse_request(line, known)
    assert len(b"[" * 100_000) > MAX_REQUEST


# --------------------------------------------------------------------------- the data path


def test_pass_delay_cut_and_held_connections() -> None:
    async def main() -> None:
        member, member_port = await _echo_server()
        port = _free_port()
        links = Links(_config(port, member_port))
        await links.start()
        try:
            data, fast = await _roundtrip(port)
            assert data == b"ping"

            links.apply(SetRequest(("node-1",), LinkState("delay", 0.1)))
            data, slow = await _roundtrip(port)
            assert data == b"ping"
            assert slow >= 0.2, f"delay 0.1 s each way must add >= 0.2 s to a round trip, took {slow:.3f}"

            # an open connection is dropped by cut
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"a")
            assert await asyncio.wait_for(reader.readexactly(1), 2) == b"a"
            links.apply(SetRequest(("node-1",), LinkState("cut")))
            try:
                rest = await asyncio.wait_for(reader.read(10), 2)
                assert rest == b""
            except ConnectionResetError:
                pass
            writer.close()

            # a new one is accepted and held: connected, but nothing comes back
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            writer.write(b"held")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.5)
            status = links.status()["clients"]["node-1"]
            assert status["state"] == "cut" and status["held"] == 1

            # pass again: the held connection goes through with what it sent meanwhile
            links.apply(SetRequest(("node-1",), LinkState("pass")))
            assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
            writer.close()
            data, again = await _roundtrip(port)
            assert data == b"ping" and again < slow
            assert fast < 0.2
        finally:
            await links.close()
            member.close()

    asyncio.run(main())


def test_delay_keeps_order_and_large_transfers_whole() -> None:
    async def main() -> None:
        member, member_port = await _echo_server()
        port = _free_port()
        links = Links(_config(port, member_port))
        await links.start()
        try:
            links.apply(SetRequest(("node-1",), LinkState("delay", 0.02)))
            payload = bytes(range(256)) * 12_000  # 3 MB: more than the queue bound, so reading pauses
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()

            sender = asyncio.create_task(send())
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
            await sender
            assert got == payload
            writer.close()
        finally:
            await links.close()
            member.close()

    asyncio.run(main())


def test_failover_to_the_next_member_when_one_refuses() -> None:
    async def main() -> None:
        member, member_port = await _echo_server()
        dead = _free_port()  # nothing listens there: a stopped member
        port = _free_port()
        links = Links(_config(port, dead, member_port))
        await links.start()
        try:
            data, _ = await _roundtrip(port)
            assert data == b"ping"
            assert links.forwarded == 1
        finally:
            await links.close()
            member.close()

    asyncio.run(main())


def test_control_socket_answers_every_line(tmp_path: Path) -> None:
    async def main() -> None:
        member, member_port = await _echo_server()
        links = Links(_config(_free_port(), member_port))
        await links.start()
        path = tmp_path / "links.sock"
        server = await links.serve_control(path)
        try:
            assert path.stat().st_mode & 0o777 == 0o600
            reader, writer = await asyncio.open_unix_connection(str(path))

            async def ask(line: bytes) -> dict:
                writer.write(line + b"\n")
                await writer.drain()
                return json.loads(await asyncio.wait_for(reader.readline(), 2))

            assert (await ask(b'{"op":"set","clients":["node-1"],"state":"delay","seconds":0.5}')) == {"ok": True}
            assert (await ask(b'{"op":"status"}'))["clients"]["node-1"]["seconds"] == 0.5
            bad = await ask(b'{"op":"set","clients":["etcd1; reboot"],"state":"cut"}')
            assert bad["ok"] is False and "unknown" in bad["error"]
            assert (await ask(b"\xff\xfe"))["ok"] is False
            assert (await ask(b'{"op":"status"}'))["clients"]["node-1"]["state"] == "delay"
            writer.write(b"x" * (MAX_REQUEST + 10) + b"\n")
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), 2))
            assert answer["ok"] is False and "longer" in answer["error"]
            writer.close()
            # the process still serves a new client
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b'{"op":"status"}\n')
            assert json.loads(await asyncio.wait_for(reader.readline(), 2))["ok"] is True
            writer.close()
        finally:
            server.close()
            await links.close()
            member.close()

    asyncio.run(main())
