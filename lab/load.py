"""Client load of a live lab: each app's requests per second through the Nginx hosts of its group.

The twin of ``sim/traffic.py``, with real requests: every second an app's
``requests_per_second`` (fractions carried over) is split round-robin over its group's
Nginx hosts that clients still use (a lost host is taken out of rotation, as DNS would:
``use_host``), each request ``GET /`` to the host's management address, port 80, with
``Host: <the app's domain>`` and ``Connection: close``. A 200 is served; anything else
(a 502/503/504 from Nginx, a refused or reset connection, no answer within ``timeout``)
failed. As in the sim, an app is *published* (its requests counted) only once one host
serves its domain: start-up is not an outage; an app that no host serves while one of its
pods has been ready for ``publish_grace`` seconds is a serving violation.

Serving violations (the ``domains-keep-serving`` check) are host-seconds in which a host
answered an app's request with 502/503/504 (no live upstream) while a pod of the app had
been ready for ``propagation_grace`` seconds in a reachable Cell. Connection failures are
failed requests but no violation, like the sim's requests lost to reloads.

The pods' ``httpd`` answers with the pod's name: the first time a pod's name comes back is
when it serves through Nginx (``first_served``; its propagation delay is that minus the
moment it turned ready).

Bounded: at most ``max_in_flight`` requests at once (more wait), it stops at the end of the
run, and it sends only to the addresses it is given (the lab's hosts, 198.18.0.0/16).
It must not change the lab: it only sends requests and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sim.spec import AppSpec, GroupSpec, nginx_host_name
from sim.traffic import share

NO_UPSTREAM = (502, 503, 504)
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range: the lab's only targets
MAX_RESPONSE = 64 * 1024


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (refused, reset, timeout)
    body: str = ""


async def get(address: str, port: int, host_header: str, timeout: float) -> Answer:
    """One ``GET /`` with ``Host: host_header``; never raises for network trouble (status 0)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n"
                         "User-Agent: leengine-lab\r\n\r\n".encode("ascii"))
            await writer.drain()
            data = await reader.read(MAX_RESPONSE)
            while len(data) < MAX_RESPONSE:
                more = await reader.read(MAX_RESPONSE - len(data))
                if not more:
                    break
                data += more
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return Answer(0)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    try:
        status = int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else 0
    except ValueError:
        status = 0
    return Answer(status, body.decode("utf-8", errors="replace").strip())


def version_of(app: str, pod: str) -> str:
    """The version of a platform pod named ``{app}-v<N>-{suffix}`` (lab/replication.py), else ""."""
    rest = pod.removeprefix(f"{app}-") if pod.startswith(f"{app}-") else ""
    version, _, suffix = rest.partition("-")
    return version if len(suffix) == 5 and suffix.isalnum() and version[:1] == "v" and version[1:].isdigit() else ""


@dataclass
class LoadLog:
    """What the clients saw: per second and app [ok, failed], totals, serving violations."""

    per_second: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    ok: int = 0
    failed: int = 0
    failed_no_answer: int = 0  # no HTTP answer (the reload-race / lost-connection kind)
    serving_violations: int = 0
    serving_examples: list[str] = field(default_factory=list)
    first_served: dict[str, float] = field(default_factory=dict)  # pod name -> first time it answered through Nginx
    published: dict[str, float] = field(default_factory=dict)  # app -> when clients found it
    # A platform version's pods answer a failed request with "error <pod>" (lab/container_runtime.py):
    first_error: dict[tuple[str, str], float] = field(default_factory=dict)  # (app, version) -> first 500
    errors_by_version: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, version) -> 500s

    def count(self, second: int, app: str, ok: bool) -> None:
        cell = self.per_second.setdefault(second, {}).setdefault(app, [0, 0])
        cell[0 if ok else 1] += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1

    def violation(self, text: str) -> None:
        self.serving_violations += 1
        if len(self.serving_examples) < 10:
            self.serving_examples.append(text)


class Load:
    def __init__(self, apps: tuple[AppSpec, ...], groups: tuple[GroupSpec, ...], domains: dict[str, str],
                 addresses: dict[str, str], clock: Callable[[], float],
                 ready_elsewhere: Callable[[str, float, float], bool], *, port: int = 80, timeout: float = 2.0,
                 max_in_flight: int = 256, tick: float = 1.0, propagation_grace: float = 2.0,
                 publish_grace: float = 60.0) -> None:
        for host, address in addresses.items():
            if ipaddress.ip_address(address) not in LAB_NETWORK:
                raise ValueError(f"{host}: {address} is outside the lab's network {LAB_NETWORK}: no load sent there")
        self.apps = apps
        self.domains = domains
        self.addresses = addresses  # Nginx host -> its management address
        self.group_hosts = {g.name: [nginx_host_name(g.name, i) for i in range(1, g.hosts + 1)] for g in groups}
        self.clock = clock
        self.ready_elsewhere = ready_elsewhere
        self.port = port
        self.timeout = timeout
        self.tick = tick
        self.propagation_grace = propagation_grace
        self.publish_grace = publish_grace
        self.unused: set[str] = set()  # hosts clients do not use (lost)
        self.log = LoadLog()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    def use_host(self, host: str, use: bool) -> None:
        (self.unused.discard if use else self.unused.add)(host)

    def live_hosts(self, group: str) -> list[str]:
        return [h for h in self.group_hosts.get(group, []) if h not in self.unused]

    async def run(self, until: float) -> None:
        """Send the load every ``tick`` until ``until`` (clock seconds), then wait for what is in flight."""
        owed = {a.name: 0.0 for a in self.apps}
        turn = 0
        try:
            while True:
                now = self.clock()
                second = int(now // self.tick)
                if now >= until:
                    break
                turn += 1
                for app in self.apps:
                    hosts = self.live_hosts(app.group)
                    domain = self.domains[app.name]
                    if app.name not in self.log.published:
                        self._spawn(self._probe_publish(app, hosts, second))
                        continue
                    owed[app.name] += app.requests_per_second * self.tick
                    count = int(owed[app.name])
                    owed[app.name] -= count
                    if not hosts:
                        for _ in range(count):
                            self.log.count(second, app.name, False)
                        continue
                    for i, host in enumerate(hosts):
                        for _ in range(share(count, len(hosts), i, turn)):
                            self._spawn(self._one(app.name, host, domain, second))
                await asyncio.sleep(max(0.0, (second + 1) * self.tick - self.clock()))
        finally:
            await self.drain()

    async def drain(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 2.0)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, host: str, domain: str) -> Answer:
        async with self._slots:
            answer = await get(self.addresses[host], self.port, domain, self.timeout)
        if answer.status == 200 and answer.body:
            self.log.first_served.setdefault(answer.body.split()[0], self.clock())
        return answer

    async def _one(self, app: str, host: str, domain: str, second: int) -> None:
        answer = await self._request(host, domain)
        ok = answer.status == 200
        self.log.count(second, app, ok)
        if answer.status == 500:
            words = answer.body.split()  # "error <pod>" (possibly inside a chunk's framing)
            version = version_of(app, words[words.index("error") + 1]) if "error" in words[:-1] else ""
            if version:
                self.log.first_error.setdefault((app, version), self.clock())
                key = (app, version)
                self.log.errors_by_version[key] = self.log.errors_by_version.get(key, 0) + 1
        if not ok and answer.status == 0:
            self.log.failed_no_answer += 1
        if answer.status in NO_UPSTREAM and self.ready_elsewhere(app, self.clock(), self.propagation_grace):
            self.log.violation(f"t={second * self.tick:g}: {host} has no live upstream for {domain} "
                               "while a ready pod exists")

    async def _probe_publish(self, app: AppSpec, hosts: list[str], second: int) -> None:
        """Not yet published: does any host serve the domain? (not counted, as the sim does not)."""
        domain = self.domains[app.name]
        answers = await asyncio.gather(*(self._request(h, domain) for h in hosts))
        if any(a.status == 200 for a in answers):
            self.log.published.setdefault(app.name, self.clock())
        elif hosts and self.ready_elsewhere(app.name, self.clock(), self.publish_grace):
            self.log.violation(f"t={second * self.tick:g}: no host serves {domain} while a ready pod exists")

    async def not_serving(self, tries: int = 3) -> list[str]:
        """``app on host`` for every host clients use that does not serve the app's domain now (after ``tries``)."""
        async def serves(host: str, domain: str) -> bool:
            for _ in range(tries):
                if (await self._request(host, domain)).status == 200:
                    return True
                await asyncio.sleep(0.2)
            return False

        pairs = [(a.name, h) for a in sorted(self.apps, key=lambda a: a.name) for h in self.live_hosts(a.group)]
        results = await asyncio.gather(*(serves(h, self.domains[a]) for a, h in pairs))
        return [f"{a} on {h}" for (a, h), ok in zip(pairs, results, strict=True) if not ok]
