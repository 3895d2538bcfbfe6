"""The SLB path end to end: slb-core writes to a real etcd, the real ``leengine-slb-agent`` daemon
keeps its private Nginx (lua module) equal to them, ``wrk`` loads Nginx on loopback, and the back-ends
are processes in network namespaces made here (``lab.slb``: one veth pair per pod,
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
import ipaddress
import itertools
import os
import socket
import time
from collections.abc import Iterator

import pytest

from control.auth import Principal
from control.slb_core import GROUP_INDEX, SLB, InvalidArgument, SlbCore
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.etcd_store import EtcdStore
from foundation.logic.slb_domain import Domain, DomainStatus, Upstream, domain_key, status_key
from foundation.logic.slb_traffic import decode_traffic
from lab.nginx import free_port
from lab.slb import AgentProcess, PodBackends, Wrk, WrkResult, get, served_generation
from leengine.etcd_options import open_store

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
    """A group in etcd, one listen port, the agent daemon; helpers to drive and read them.

    Each pod's /30 is registered as a pod pool (gateway: the host end of its veth), as
    cnictl would: upstreams must be pod addresses of a registered pool (issue 9).
    """

    def __init__(self, etcd_server, pods: PodBackends) -> None:
        self.etcd = etcd_server.endpoint
        self.etcd_tls = etcd_server.client_tls  # the session etcd demands client certificates
        self.group = f"e2e-{TOKEN}-{next(_ids)}"
        self.port = free_port()
        self.agent = AgentProcess(group=self.group, host=HOST, etcd=self.etcd, extra=tuple(etcd_server.client_args))
        self.wrks: list[Wrk] = []
        self.pools = pods.pools(f"e2e{TOKEN}-{self.group.rsplit('-', 1)[1]}")

    async def open(self) -> tuple[EtcdStore, SlbCore]:
        store = await open_store(self.etcd, self.etcd_tls)
        return store, SlbCore(store, AsyncioRuntime())

    def domain(self, name: str, upstreams, *, gen: str = "0", **extra) -> dict:
        return {"name": name, "group": self.group, "listen": self.port,
                "locations": [{"path": "/", "read_timeout": 10, "set_headers": {"X-Gen": gen}}],
                "upstreams": [str(u) for u in upstreams], **extra}

    def setup(self, domains: list[dict]) -> None:
        async def main():
            store, core = await self.open()
            try:
                for pool in self.pools:
                    await store.put(pool.key, pool.to_bytes())
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
            store = await open_store(self.etcd, self.etcd_tls)
            try:
                await store.delete(f"{SLB}{self.group}/", prefix=True)
                await store.delete(f"{GROUP_INDEX}{self.group}")
                for pool in self.pools:
                    await store.delete(pool.key)
            finally:
                await store.close()

        run(forget())


@pytest.fixture
def slb(etcd_server, pods) -> Iterator[Slb]:
    lab = Slb(etcd_server, pods)
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


# --------------------------------------------------------------------------- issue 9: no upstream at etcd


def _nginx_tcp_listen_ports(master: int) -> set[int]:
    """TCP ports in LISTEN whose socket the nginx master or one of its workers holds (from /proc)."""
    pids = [master] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == master]
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return -1
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def test_an_upstream_at_etcd_is_refused_by_slb_core_and_never_applied_by_the_agent(slb, pods, etcd_server):
    app, other = "app.example.com", "etcd.example.com"
    p = [pod.upstream for pod in pods.pods]
    etcd_port = int(etcd_server.endpoint.rsplit(":", 1)[1])
    # etcd's client port: on loopback (where the test etcd listens), on this host's end of a pod's
    # veth (a pool's gateway: a host address, no pod's), and on a private address in no pool.
    at_etcd = [f"127.0.0.1:{etcd_port}", f"{ipaddress.IPv4Address(pods.pods[0].address) - 1}:{etcd_port}",
               f"10.254.0.1:{etcd_port}"]
    slb.setup([slb.domain(app, [p[0]])])
    before = slb.reloads()

    async def refused():
        store, core = await slb.open()
        try:
            revision = (await store.range("/", limit=1)).revision
            for server in at_etcd:
                with pytest.raises(InvalidArgument) as caught:
                    await core.set_upstreams(ADMIN, slb.group, app, [str(p[1]), server])
                assert caught.value.field == "servers" and server in str(caught.value)
                with pytest.raises(InvalidArgument) as caught:
                    await core.put_domain(ADMIN, slb.domain(other, [server]))
                assert caught.value.field == "upstreams"
            assert (await store.range("/", limit=1)).revision == revision  # nothing was written
        finally:
            await store.close()

    async def planted():
        store, _ = await slb.open()
        try:
            # Written past slb-core, straight into etcd: the agent must not trust it.
            servers = (p[1], *(Upstream.parse(s) for s in at_etcd))
            record = Domain.parse(slb.domain(app, [], owner="ops")).with_upstreams(servers)
            revision = (await store.put(domain_key(slb.group, app), record.to_bytes())).revision
            status = await slb.wait_status(store, app, lambda s: s.wanted_revision == revision)
            only = Domain.parse(slb.domain(other, [], owner="ops")).with_upstreams(
                tuple(Upstream.parse(s) for s in at_etcd))
            only_revision = (await store.put(domain_key(slb.group, other), only.to_bytes())).revision
            only_status = await slb.wait_status(store, other, lambda s: s.revision == only_revision)
            return revision, status, only_status
        finally:
            await store.close()

    run(refused())
    revision, status, only_status = run(planted())
    assert status.revision == revision and "upstreams dropped" in status.error
    assert all(server in status.error for server in at_etcd)
    assert names_served(slb.port, app) == {pods.pods[1].name}  # only the pod made it into nginx
    # The filtered change went in place; only the new domain cost a reload.
    assert slb.reloads() == (before[0] + 1, before[1] + 1)
    assert "upstreams dropped" in only_status.error
    slb.wait_serving(app)
    assert get(slb.port, other)[0] == 503  # in force without servers: the sink, never etcd
    # The admin endpoint is on no TCP port (only the domains' port listens), and a domain's
    # admin-looking paths go to its pod.
    assert _nginx_tcp_listen_ports(slb.agent.nginx_pid()) == {slb.port}
    assert get(slb.port, app)[1].startswith(pods.pods[1].name)


# --------------------------------------------------------------------------- gray release: shares and traffic


def test_shares_99_to_1_send_about_1_percent_to_the_new_version_in_place_and_the_traffic_record_counts_them(
        slb, pods):
    """set_shares weighs the upstreams in etcd; the agent applies the weights in place (no reload); of 2,000
    requests about 1 % reach the new version; the agent's traffic record counts them per version."""
    app = "gray.example.com"
    old, new = pods.pods[0], pods.pods[1]
    v1 = Upstream(old.address, old.upstream.port, 1, "v1")
    v2 = Upstream(new.address, new.upstream.port, 1, "v2")
    slb.agent.extra = (*slb.agent.extra, "--traffic-every", "1")
    slb.setup([slb.domain(app, [v1, v2])])
    platform = Principal("platform", "platform")  # the release controller's role
    traffic_key = f"{SLB}{slb.group}/traffic/{HOST}"

    async def counted(store: EtcdStore, at_least: int = 0) -> dict[str, int]:
        deadline = time.monotonic() + 15
        while True:
            kv = await store.get(traffic_key)
            got = {} if kv is None else {v: c.requests for v, c in
                                         decode_traffic(traffic_key, kv.value).domains.get(app, {}).items()}
            if sum(got.values()) >= at_least and got:
                return got
            assert time.monotonic() < deadline, f"traffic record {got}\n{slb.agent.log_tail()}"
            await asyncio.sleep(0.1)

    async def shift(shares: dict[str, int]) -> None:
        store, core = await slb.open()
        try:
            revision = await core.set_shares(platform, slb.group, app, shares)
            await slb.wait_status(store, app, lambda s: s.revision >= revision)
        finally:
            await store.close()

    async def read_counts(at_least: int = 0) -> dict[str, int]:
        store, _ = await slb.open()
        try:
            return await counted(store, at_least)
        finally:
            await store.close()

    run(shift({"v1": 99, "v2": 1}))
    before = slb.reloads()
    counts_before = run(read_counts())
    answers = [get(slb.port, app)[1].split()[0] for _ in range(2000)]
    to_new = answers.count(new.name)
    assert answers.count(old.name) + to_new == 2000
    print(f"\n99:1 shares: {to_new} of 2000 requests to the new version ({to_new / 20:.2f} %)")
    assert 6 <= to_new <= 40  # 0.3 % .. 2 %: weights 1000 and 10 (0.99 %)
    assert slb.reloads() == before  # the traffic shift was in place
    counts_after = run(read_counts(at_least=sum(counts_before.values()) + 2000))
    assert counts_after["v2"] - counts_before.get("v2", 0) == to_new
    assert counts_after["v1"] - counts_before.get("v1", 0) == 2000 - to_new

    run(shift({"v1": 0, "v2": 100}))  # the old version drained in place: no new request reaches it
    assert {get(slb.port, app)[1].split()[0] for _ in range(50)} == {new.name}
    assert slb.reloads() == before
