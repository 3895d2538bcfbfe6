"""The lab's links process: the TCP path between every etcd client and the etcd members.

This kernel has no ``netem``, so "etcd is slow for these clients", "etcd is out of reach
for these clients" and "a Cell's nodes lost etcd" are made in user space, here: one
process per lab, in the root network namespace, listening on the management address
(198.18.0.1), one listener per (client, member) of the plan. Every etcd client of the lab
(CNI agents, SLB agents, build agents, control, discovery) is pointed at one of its own
listeners, never straight at a member.

A listener forwards each accepted connection to its member; when that member refuses
(stopped), to the next member of the listener's ``targets`` (the other members, in the
plan's order). The adapter takes a single endpoint, so this failover is what makes the
loss of one member survivable for a client, as a multi-endpoint etcd client would make it.
TLS passes through untouched: the member's certificate carries the listen address as an
IP SAN.

Per client one state, the same on all its listeners (``LinkState``):

* ``pass``: bytes are forwarded as they come;
* ``delay``: every chunk read, in each direction, is written ``seconds`` later (order kept);
* ``cut``: open connections are dropped (both sides aborted) and new ones are accepted and
  held: nothing is read from them and nothing is connected upstream until the state
  leaves ``cut``; then they are forwarded (what the client sent meanwhile waits in the
  socket buffer), as a healed network would let a patient client through.

Invariants:

* Bounded: at most ``MAX_CONNECTIONS`` connections per listener (more are closed at once),
  reads of ``CHUNK`` bytes, at most ``MAX_QUEUED`` bytes queued per direction while
  delayed (reading pauses until the queue drains), control requests of at most
  ``MAX_REQUEST`` bytes.
* The control socket (``--control PATH``, mode 0600) takes one JSON line per request and
  answers one JSON line: ``{"op": "set", "clients": [...], "state": "delay", "seconds": 0.05}``,
  ``{"op": "status"}``. A bad request is answered ``{"ok": false, "error": ...}``; nothing
  a request holds can crash the process or reach anything but the state table.
* Only the addresses of the configuration file are ever connected to; clients in requests
  are names of that file, nothing else.

It must not know etcd, TLS or the plan: its configuration file (``LinksConfig``) lists the
listeners; ``lab/services.py`` writes it from the plan.

    python -m lab.links --config DIR/links.json --control DIR/links.sock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("leengine.lab.links")

CHUNK = 64 * 1024
MAX_QUEUED = 1 << 20  # bytes per direction waiting for their delay
MAX_CONNECTIONS = 256  # per listener: an etcd client holds one or two
MAX_REQUEST = 64 * 1024  # one control line
MAX_DELAY = 60.0  # seconds: a longer delay is a typo (and the client's deadline fired long before)
CONNECT_TIMEOUT = 1.0  # seconds for a member to accept before the next one is tried
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
STATES = ("pass", "delay", "cut")


class LinksError(ValueError):
    """A bad configuration or control request; the message says which field and why."""


# --------------------------------------------------------------------------- configuration


def parse_address(text: object, what: str) -> tuple[str, int]:
    """``"IPv4:port"`` → (ip, port); anything else is a ``LinksError`` naming ``what``."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise LinksError(f"{what}: {str(text)[:60]!r} is not IPv4:port")
    host, port = text.split(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise LinksError(f"{what}: {host[:40]!r} is not an IPv4 address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise LinksError(f"{what}: {port[:10]!r} is not a port")
    return host, int(port)


@dataclass(frozen=True)
class ListenerConfig:
    client: str
    member: str
    listen: tuple[str, int]
    targets: tuple[tuple[str, int], ...]  # its member first, then the others


@dataclass(frozen=True)
class LinksConfig:
    listeners: tuple[ListenerConfig, ...]

    @property
    def clients(self) -> list[str]:
        return list(dict.fromkeys(listener.client for listener in self.listeners))

    def to_json(self) -> str:
        return json.dumps({"listeners": [
            {"client": lc.client, "member": lc.member, "listen": f"{lc.listen[0]}:{lc.listen[1]}",
             "targets": [f"{h}:{p}" for h, p in lc.targets]} for lc in self.listeners]}, indent=1)

    @classmethod
    def parse(cls, data: Any) -> LinksConfig:
        if not isinstance(data, dict) or not isinstance(data.get("listeners"), list):
            raise LinksError("config: expected {\"listeners\": [...]}")
        listeners, seen = [], set()
        for i, item in enumerate(data["listeners"]):
            where = f"config: listeners[{i}]"
            if not isinstance(item, dict) or set(item) != {"client", "member", "listen", "targets"}:
                raise LinksError(f"{where}: needs exactly client, member, listen, targets")
            for key in ("client", "member"):
                if not isinstance(item[key], str) or not NAME.fullmatch(item[key]):
                    raise LinksError(f"{where}.{key}: {str(item[key])[:60]!r} is not a name")
            listen = parse_address(item["listen"], f"{where}.listen")
            if listen in seen:
                raise LinksError(f"{where}.listen: {item['listen']} is used twice")
            seen.add(listen)
            targets = item["targets"]
            if not isinstance(targets, list) or not 1 <= len(targets) <= 16:
                raise LinksError(f"{where}.targets: a list of 1-16 addresses")
            listeners.append(ListenerConfig(item["client"], item["member"], listen,
                                            tuple(parse_address(t, f"{where}.targets") for t in targets)))
        if not listeners:
            raise LinksError("config: no listeners")
        return cls(tuple(listeners))

    @classmethod
    def load(cls, path: Path) -> LinksConfig:
        try:
            return cls.parse(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            if isinstance(exc, LinksError):
                raise
            raise LinksError(f"config {path}: {exc}") from None


# --------------------------------------------------------------------------- state and requests


@dataclass(frozen=True)
class LinkState:
    """What a client's links do now."""

    state: str = "pass"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "seconds": self.seconds}


@dataclass(frozen=True)
class SetRequest:
    clients: tuple[str, ...]
    link: LinkState


@dataclass(frozen=True)
class StatusRequest:
    pass


def parse_request(line: bytes, known: Iterable[str]) -> SetRequest | StatusRequest:
    """One control line → a request; ``LinksError`` says what is wrong with it."""
    if len(line) > MAX_REQUEST:
        raise LinksError(f"request longer than {MAX_REQUEST} bytes")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise LinksError("request is not JSON") from None
    if not isinstance(data, dict) or data.get("op") not in ("set", "status"):
        raise LinksError('request needs "op": "set" or "status"')
    if data["op"] == "status":
        if set(data) != {"op"}:
            raise LinksError("status takes no other field")
        return StatusRequest()
    if not set(data) <= {"op", "clients", "state", "seconds"} or not {"clients", "state"} <= set(data):
        raise LinksError("set needs clients and state (and seconds for delay)")
    clients, state, seconds = data["clients"], data["state"], data.get("seconds", 0.0)
    if not isinstance(clients, list) or not clients or not all(isinstance(c, str) for c in clients):
        raise LinksError("clients: a non-empty list of client names")
    known_set = set(known)
    unknown = [c for c in clients if c not in known_set]
    if unknown:
        raise LinksError(f"clients: unknown {', '.join(repr(c[:60]) for c in unknown[:5])}")
    if state not in STATES:
        raise LinksError(f"state: one of {', '.join(STATES)}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_DELAY:
        raise LinksError(f"seconds: a number in [0, {MAX_DELAY:g}]")
    if state == "delay" and seconds <= 0:
        raise LinksError("seconds: delay needs seconds > 0")
    return SetRequest(tuple(dict.fromkeys(clients)), LinkState(state, float(seconds) if state == "delay" else 0.0))


# --------------------------------------------------------------------------- forwarding


@dataclass(eq=False)
class Connection:
    """One accepted client connection and, once forwarded, its upstream."""

    client_writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    upstream_writer: asyncio.StreamWriter | None = None
    held: bool = False

    def abort(self) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()  # RST, as a broken path looks to the peer


@dataclass(eq=False)
class Client:
    name: str
    link: LinkState = field(default_factory=LinkState)
    connections: set[Connection] = field(default_factory=set)
    uncut: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.uncut.set()


class Links:
    """The listeners of one configuration and the state of every client (run with ``start``/``close``)."""

    def __init__(self, config: LinksConfig) -> None:
        self.config = config
        self.clients = {name: Client(name) for name in config.clients}
        self.servers: list[asyncio.Server] = []
        self.forwarded = 0  # connections forwarded upstream, all listeners
        self.open_per_listener: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        for listener in self.config.listeners:
            server = await asyncio.start_server(functools.partial(self._accept, listener), listener.listen[0],
                                                listener.listen[1], reuse_address=True, backlog=64)
            self.servers.append(server)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for client in self.clients.values():
            for conn in list(client.connections):
                conn.abort()
                if conn.task is not None:
                    conn.task.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # ---------------------------------------------------------------- control

    def apply(self, request: SetRequest) -> None:
        for name in request.clients:
            client = self.clients[name]
            client.link = request.link
            if request.link.state == "cut":
                client.uncut.clear()
                for conn in list(client.connections):
                    if not conn.held:
                        conn.abort()
            else:
                client.uncut.set()
        log.info("links of %s: %s %s", ",".join(request.clients), request.link.state,
                 f"{request.link.seconds:g}s" if request.link.state == "delay" else "")

    def status(self) -> dict[str, Any]:
        return {"ok": True, "forwarded": self.forwarded, "clients": {
            name: {**c.link.to_dict(), "connections": len(c.connections),
                   "held": sum(1 for conn in c.connections if conn.held)}
            for name, c in self.clients.items()}}

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one control line (never raises for what the line holds)."""
        try:
            request = parse_request(line, self.clients)
        except LinksError as exc:
            return {"ok": False, "error": str(exc)}
        if isinstance(request, StatusRequest):
            return self.status()
        self.apply(request)
        return {"ok": True}

    async def serve_control(self, path: Path) -> asyncio.Server:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: only root steers the links
        try:
            return await asyncio.start_unix_server(self._control, str(path), limit=MAX_REQUEST + 1)
        finally:
            os.umask(old)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), 30.0)
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(json.dumps({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                                 .encode() + b"\n")
                    break
                if not line:
                    break
                writer.write(json.dumps(self.answer(line.strip())).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    # ---------------------------------------------------------------- data path

    async def _accept(self, listener: ListenerConfig, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        client = self.clients[listener.client]
        if self.open_per_listener.get(listener.listen, 0) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.open_per_listener[listener.listen] = self.open_per_listener.get(listener.listen, 0) + 1
        conn = Connection(writer, asyncio.current_task())
        client.connections.add(conn)
        pumps: list[asyncio.Task[None]] = []
        try:
            if not client.uncut.is_set():
                conn.held = True
                await client.uncut.wait()
                conn.held = False
            upstream = await self._connect(listener)
            if upstream is None:
                return
            up_reader, conn.upstream_writer = upstream
            if client.link.state == "cut":  # cut while we connected
                return
            self.forwarded += 1
            pumps = [asyncio.create_task(self._pump(client, reader, conn.upstream_writer)),
                     asyncio.create_task(self._pump(client, up_reader, writer))]
            await asyncio.gather(*pumps)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client.connections.discard(conn)
            self.open_per_listener[listener.listen] -= 1
            conn.abort()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    @staticmethod
    async def _connect(listener: ListenerConfig) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for host, port in listener.targets:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                continue  # this member is down: the next one
        return None

    @staticmethod
    async def _pump(client: Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk delayed by the client's delay at the time it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        queued = 0
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            nonlocal queued
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                queued -= len(data)
                if queued <= MAX_QUEUED:
                    room.set()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                if client.link.state == "pass" and queue.empty():
                    writer.write(data)
                    await writer.drain()
                    continue
                queued += len(data)
                if queued > MAX_QUEUED:
                    room.clear()
                queue.put_nowait((loop.time() + client.link.seconds, data))
                if sender.done():
                    break
            queue.put_nowait((0.0, b""))
            await sender
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


# --------------------------------------------------------------------------- the process


async def run(config: LinksConfig, control: Path, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    links = Links(config)
    await links.start()
    server = await links.serve_control(control)
    log.info("links: %d listeners for %d clients; control %s", len(config.listeners), len(links.clients), control)
    try:
        await stop.wait()
    finally:
        server.close()
        await links.close()
        with contextlib.suppress(FileNotFoundError):
            control.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.links", description="the lab's etcd links (TCP forwarder)")
    parser.add_argument("--config", type=Path, required=True, help="JSON file of the listeners")
    parser.add_argument("--control", type=Path, required=True, help="unix socket of the control requests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = LinksConfig.load(args.config)
    except LinksError as exc:
        print(f"lab.links: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config, args.control))
    except OSError as exc:
        print(f"lab.links: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
