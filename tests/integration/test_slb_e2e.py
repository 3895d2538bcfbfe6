"""The SLB path end to end: slb-core writes to a real etcd, the real ``leengine-slb-agent`` daemon
keeps its private Nginx (lua module) equal to them, ``wrk`` loads Nginx on loopback, and the back-ends
are processes in network namespaces made here (``leengine.slb_lab``: one veth pair per pod,
198.19.N.1/30 on the host side, 198.19.N.2/30 in the pod).

Reloads are counted in nginx itself, since the agent is another process: every SIGHUP the
master gets writes a "signal 1 (SIGHUP) received …, reconfiguring" notice into ``PREFIX/logs/error.log``, and the admin
endpoint's ``GET /generation`` answers the generation rendered into the config in force (it moves
with every apply, +2 for a rollback). The two must agree; "zero reloads" means neither moved.

Failures are counted by wrk: socket errors (its "Socket errors" line) plus non-2xx answers (a
lua script counts them: wrk itself only reports "Non-2xx or 3xx").

Everything made (namespaces, back-end processes, the agent, its Nginx and prefix, the group's etcd
keys, wrk and its script) is removed by the fixtures, also when a test fails. Needs root, etcd,
nginx + libnginx-mod-http-lua and wrk; never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator

import pytest

from control.auth import Principal
from control.slb_core import GROUP_INDEX, SLB, SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.etcd_store import EtcdStore
from foundation.logic.slb_domain import DomainStatus, status_key
from leengine.nginx_server import free_port
from leengine.slb_lab import AgentProcess, PodBackends, Wrk, WrkResult, get, served_generation

TOKEN = f"{(os.getpid() + 11) % 0x10000:04x}"
ADMIN = Principal("ops", "admin")
HOST = "nginx-1"
_ids = itertools.count()


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def pods() -> Iterator[PodBackends]:
    made = PodBackends(4, tag=f"ls{TOKEN}", subnet_base=10)
    try:
        yield made
    finally:
        made.close()


class Slb:
    """A group in etcd, one listen port, the agent daemon; helpers to drive and read them."""

    def __init__(self, etcd_endpoint: str) -> None:
        self.etcd = etcd_endpoint
        self.group = f"e2e-{TOKEN}-{next(_ids)}"
        self.port = free_port()
        self.agent = AgentProcess(group=self.group, host=HOST, etcd=etcd_endpoint)
        self.wrks: list[Wrk] = []

    async def open(self) -> tuple[EtcdStore, SlbCore]:
        store = await EtcdStore.open(self.etcd)
        return store, SlbCore(store, AsyncioRuntime())

    def domain(self, name: str, upstreams, *, gen: str = "0", **extra) -> dict:
        return {"name": name, "group": self.group, "listen": self.port,
                "locations": [{"path": "/", "read_timeout": 10, "set_headers": {"X-Gen": gen}}],
                "upstreams": [str(u) for u in upstreams], **extra}

    def setup(self, domains: list[dict]) -> None:
        async def main():
            store, core = await self.open()
            try:
                await core.create_group(ADMIN, self.group)
                return {data["name"]: (await core.put_domain(ADMIN, data)).revision for data in domains}
            finally:
                await store.close()

        async def applied(revisions: dict[str, int]):
            store, _ = await self.open()
            try:  # a status is written once the reload is confirmed (no old worker accepts any more)
                for name, revision in revisions.items():
                    await self.wait_status(store, name, lambda s, r=revision: s.revision == r)
            finally:
                await store.close()

        revisions = run(main())
        self.agent.start()
        run(applied(revisions))
        for name in revisions:
            self.wait_serving(name)

    def wait_serving(self, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if get(self.port, name)[0] == 200:
                    return
            assert time.monotonic() < deadline, f"{name} not served:\n{self.agent.log_tail()}"
            time.sleep(0.02)

    def wrk(self, hosts: list[str], **options) -> Wrk:
        w = Wrk(self.port, hosts, **options)
        self.wrks.append(w)
        return w

    async def status(self, store: EtcdStore, name: str) -> DomainStatus | None:
        kv = await store.get(status_key(self.group, HOST, name))
        return None if kv is None else DomainStatus.from_bytes(kv.value)

    async def wait_status(self, store: EtcdStore, name: str, check, timeout: float = 30) -> DomainStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(store, name)
            if status is not None and check(status):
                return status
            assert time.monotonic() < deadline, f"{name}: status {status}\n{self.agent.log_tail()}"
            await asyncio.sleep(0.02)

    def reloads(self) -> tuple[int, int | None]:
        """(reconfiguring notices in the error log, generation the admin endpoint serves)."""
        return self.agent.reconfigurations(), served_generation(self.agent.admin_socket)

    def close(self) -> None:
        for w in self.wrks:
            w.close()
        self.agent.close()

        async def forget():
            store = await EtcdStore.open(self.etcd)
            try:
                await store.delete(f"{SLB}{self.group}/", prefix=True)
                await store.delete(f"{GROUP_INDEX}{self.group}")
            finally:
                await store.close()

        run(forget())


@pytest.fixture
def slb(etcd_server) -> Iterator[Slb]:
    lab = Slb(etcd_server.endpoint)
    try:
        yield lab
    finally:
        lab.close()


def report(name: str, result: WrkResult, **extra: object) -> None:
    print(f"\n{name}: {result.requests} requests, {result.rps:,.0f}/s, non-2xx {result.non2xx}, socket errors "
          f"connect {result.connect} read {result.read} write {result.write} timeout {result.timeout}"
          + "".join(f", {k} {v}" for k, v in extra.items()))


def names_served(port: int, host: str, n: int = 20) -> set[str]:
    return {get(port, host)[1].split()[0] for _ in range(n)}


def test_1000_upstream_changes_under_keepalive_load_fail_nothing_and_reload_nothing(slb, pods):
    app = "app.example.com"
    p = [pod.upstream for pod in pods.pods]
    slb.setup([slb.domain(app, [p[0]])])
    before = slb.reloads()

    async def main():
        store, core = await slb.open()
        try:
            load = slb.wrk([app])
            await asyncio.sleep(0.5)
            revision = 0
            for i in range(1000):
                revision = await core.set_upstreams(ADMIN, slb.group, app, [str(p[i % 4]), str(p[(i + 1) % 4])])
            status = await slb.wait_status(store, app, lambda s: s.revision == revision)
            await asyncio.sleep(0.3)
            return load.stop(), status, revision
        finally:
            await store.close()

    result, status, revision = run(main())
    report("1000 upstream changes, keep-alive", result)
    assert result.ok > 1000 and result.failed == 0, result.output
    assert slb.reloads() == before  # no SIGHUP, same generation: every change was in place
    assert status.error == "" and status.wanted_revision == revision
    assert names_served(slb.port, app) == {pods.pods[3].name, pods.pods[0].name}  # change 999: p3 + p0


def test_50_config_changes_with_5_invalid_under_connection_per_request_load(slb, pods):
    p = [pod.upstream for pod in pods.pods]
    names = [f"d{i}.example.com" for i in range(10)]
    slb.setup([slb.domain(n, p) for n in names])
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # a port another process holds
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    held_port = held.getsockname()[1]
    invalid_at = {9: 5, 19: 6, 29: 7, 39: 8, 49: 9}  # change index -> domain made invalid (never changed again)
    before = slb.reloads()

    def change(i: int) -> dict:
        if i in invalid_at:
            d = invalid_at[i]
            if d == 5:
                return slb.domain(names[d], p, gen="bad", listen=held_port)  # nginx refuses the bind
            return slb.domain(names[d], p, gen="bad", settings={"proxy_buffer_size": "999999k"})  # nginx -t refuses
        return slb.domain(names[i % 5], p, gen=str(i))

    async def changes(core: SlbCore, count: int, make, gap: float) -> dict[str, int]:
        last: dict[str, int] = {}
        for i in range(count):
            data = make(i)
            last[data["name"]] = (await core.put_domain(ADMIN, data)).revision
            await asyncio.sleep(gap)
        return last

    async def main():
        store, core = await slb.open()
        try:
            first = {n: (await core.get_domain(ADMIN, slb.group, n)).revision for n in names}
            load = slb.wrk(names, close=True)
            await asyncio.sleep(0.3)
            last = await changes(core, 50, change, 0.06)
            for i, d in invalid_at.items():
                status = await slb.wait_status(store, names[d], lambda s, n=names[d]: s.wanted_revision == last[n])
                assert status.error and status.revision == first[names[d]], (i, status)
            for n in names[:5]:
                await slb.wait_status(store, n, lambda s, n=n: s.revision == last[n] and not s.error)
            await asyncio.sleep(0.3)
            closing = load.stop()
            statuses = {n: await slb.status(store, n) for n in names}
            middle = slb.reloads()

            # The same with keep-alive clients: count the socket errors each reload costs them.
            load = slb.wrk(names)
            await asyncio.sleep(0.3)
            final = await changes(core, 20, lambda i: slb.domain(names[i % 5], p, gen=f"k{i}"), 0.2)
            for n in names[:5]:  # reloads are spaced (min_reload_interval): wait for the last ones to land
                await slb.wait_status(store, n, lambda s, n=n: s.revision == final[n])
            await asyncio.sleep(0.3)
            keepalive = load.stop()
            return closing, statuses, middle, keepalive
        finally:
            await store.close()

    try:
        closing, statuses, middle, keepalive = run(main())
    finally:
        held.close()
    reloads = middle[0] - before[0]
    report("50 config changes (5 invalid), Connection: close", closing, reloads=reloads)
    assert closing.ok > 1000 and closing.failed == 0, closing.output
    assert 1 <= reloads < 50  # coalesced: fewer reloads than changes; invalid ones cost none
    assert middle[1] - before[1] == reloads  # every SIGHUP was an apply (no rollback)
    assert str(held_port) in statuses[names[5]].error
    for d in range(6, 10):
        assert "proxy_buffer_size" in statuses[names[d]].error or "buffer" in statuses[names[d]].error
    for d in range(5, 10):  # the invalid ones keep their last good config and still serve
        assert get(slb.port, names[d])[0] == 200 and get(slb.port, names[d])[1].endswith(" 0"), names[d]
    assert [get(slb.port, names[d])[1].split()[1] for d in range(5)] == [f"k{15 + d}" for d in range(5)]
    ka_reloads = slb.reloads()[0] - middle[0]
    per_reload = keepalive.socket_errors / ka_reloads if ka_reloads else float("nan")
    report("20 config changes, keep-alive", keepalive, reloads=ka_reloads,
           socket_errors_per_reload=f"{per_reload:.1f}")
    assert keepalive.non2xx == 0 and keepalive.ok > 1000, keepalive.output
    assert 1 <= ka_reloads <= 20


def test_agent_killed_mid_stream_catches_up_and_nginx_never_stops_serving(slb, pods):
    app = "app.example.com"
    p = [pod.upstream for pod in pods.pods]
    slb.setup([slb.domain(app, [p[0]])])
    before = slb.reloads()
    nginx_pid = slb.agent.nginx_pid()

    async def main():
        store, core = await slb.open()
        try:
            load = slb.wrk([app])
            await asyncio.sleep(0.3)
            restarted: asyncio.Task | None = None
            for i in range(400):
                await core.set_upstreams(ADMIN, slb.group, app, [str(p[i % 3]), str(p[(i + 1) % 3])])
                if i == 100:
                    slb.agent.kill9()  # mid-stream: the changes keep coming
                if i == 250:
                    restarted = asyncio.create_task(asyncio.to_thread(slb.agent.start))
                await asyncio.sleep(0.005)
            revision = await core.set_upstreams(ADMIN, slb.group, app, [str(p[3])])
            assert restarted is not None
            await restarted
            status = await slb.wait_status(store, app, lambda s: s.revision == revision)
            await asyncio.sleep(0.3)
            return load.stop(), status, revision
        finally:
            await store.close()

    result, status, revision = run(main())
    report("kill -9 of the agent mid-stream", result)
    assert result.ok > 1000 and result.failed == 0, result.output
    assert status.revision == status.wanted_revision == revision and status.error == ""
    assert names_served(slb.port, app) == {pods.pods[3].name}  # the last write serves
    assert slb.agent.nginx_pid() == nginx_pid  # the same Nginx all along, adopted by the new agent
    assert slb.reloads() == before
