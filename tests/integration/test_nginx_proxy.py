"""The real Proxy adapter against a private Nginx with the lua module, on loopback.

Each test runs its own Nginx (``lab.nginx``) in a fresh prefix, with
back-ends that are tiny HTTP servers on loopback answering ``<their port>`` so an
answer says which back-end served it. Needs root (workers run as www-data) and
Debian's nginx + libnginx-mod-http-lua; without them the tests fail, never skip.

Failure injection without test hooks in the adapter:
* ``nginx -t`` rejects a validated domain whose ``proxy_buffer_size`` is larger than
  nginx's busy-buffers limit;
* a port held by another process passes ``nginx -t`` (which does not bind) but
  fails the reload: ``test`` reports it from its bind probe, ``apply`` from the
  ``[emerg]`` nginx logs;
* SIGSTOP on the master makes a reload never take effect (the HUP stays pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from foundation.adapters.nginx_proxy import NginxProxy
from foundation.logic.slb_domain import Domain, Location, Upstream
from foundation.ports.proxy import ProxyError, ReloadFailed, SavedState
from lab.nginx import LoopbackBackend, free_port, make_prefix
from lab.processes import freeze


class Backend(LoopbackBackend):
    """A loopback back-end answering "PORT X-TEAM": which server answered, which header Nginx set."""

    def __init__(self) -> None:
        super().__init__(echo_header="X-Team")


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend() for _ in range(3)]
    yield started
    for backend in started:
        backend.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    path = make_prefix()
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


def domain(name: str, port: int, *servers: Upstream, **extra: object) -> Domain:
    data = {"name": name, "group": "web", "owner": "team-a", "listen": port,
            "locations": [{"path": "/", "read_timeout": 5, "set_headers": {"X-Team": "blue"}}],
            "upstreams": [str(s) for s in servers], **extra}
    return Domain.parse(data)


def get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        get(port, "x.example.com")
    except ConnectionRefusedError:
        return True
    return False


def accepting_workers(proxy: NginxProxy) -> list[int]:
    """The master's children that may still accept a connection.

    Not counted: a worker told to quit (it renames itself "… is shutting down" and closes
    its listening sockets), and a worker that is exiting or has exited: once a process has
    released its memory (in exit, and as a zombie until the master reaps it) its
    ``/proc/PID/cmdline`` reads empty, yet it is still listed as the master's child. Idle
    old workers exit right after a reload, so a test that looks just then finds them so.
    """
    found = []
    for pid in proxy.worker_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # reaped meanwhile
            continue
        if cmdline and b"shutting down" not in cmdline:
            found.append(pid)
    return found


def run(body, *, prefix: str, **options):
    """Run ``body(proxy)`` on a started NginxProxy in ``prefix``; stop it afterwards."""

    async def main():
        proxy = NginxProxy(prefix, **options)
        await proxy.start()
        try:
            return await asyncio.wait_for(body(proxy), 60)
        finally:
            await proxy.stop()

    return asyncio.run(main())


async def aget(port: int, host: str, path: str = "/") -> tuple[int, str]:
    return await asyncio.to_thread(get, port, host, path)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- in place


def test_upstream_change_in_place_needs_no_reload(prefix, backends):
    b1, b2, b3 = backends
    port = free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream)})
        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")
        reloads, workers, served = await proxy.reloads(), accepting_workers(proxy), await proxy.served_generation()
        assert len(workers) == 2

        await proxy.set_upstreams("shop.example.com", (b2.upstream,))
        assert await aget(port, "shop.example.com") == (200, f"{b2.port} blue")  # at once: the dict is shared

        await proxy.set_upstreams("shop.example.com", (b2.upstream, b3.upstream))
        answers = {(await aget(port, "shop.example.com"))[1] for _ in range(8)}
        assert answers == {f"{b2.port} blue", f"{b3.port} blue"}  # round-robin over both

        await proxy.set_upstreams("shop.example.com", ())
        started = time.monotonic()
        assert await aget(port, "shop.example.com") == (503, "no upstream servers\n")
        assert time.monotonic() - started < 0.5

        assert await proxy.reloads() == reloads
        assert accepting_workers(proxy) == workers  # same processes: nothing was reloaded
        assert (await proxy.served_generation())[0] == served[0]
        assert await proxy.served_upstreams() == {"shop.example.com": ()}
        assert proxy.live_domains()["shop.example.com"].upstreams == ()
        with pytest.raises(ProxyError, match="not configured"):
            await proxy.set_upstreams("other.example.com", (b1.upstream,))

    run(body, prefix=prefix)


def test_retries_another_server_when_one_is_down(prefix, backends):
    b1 = backends[0]
    port, dead = free_port(), free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream,
                                                      Upstream("127.0.0.1", dead))})
        for _ in range(6):  # every other pick is the dead server: the balancer's extra try saves it
            assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")

    run(body, prefix=prefix)


# --------------------------------------------------------------------------- apply


def test_new_domain_serves_after_exactly_one_reload(prefix, backends):
    b1, b2, _ = backends
    port = free_port()

    async def body(proxy: NginxProxy):
        assert refused(port)
        old_workers = proxy.worker_pids()
        shop = domain("shop.example.com", port, b1.upstream)
        api = domain("api.example.com", port, b2.upstream,
                     locations=[{"path": "/v1", "read_timeout": 3, "set_headers": {"X-Team": "red"}}],
                     settings={"client_max_body_size": "10m", "proxy_http_version": "1.1"})
        assert await proxy.test({"shop.example.com": shop, "api.example.com": api}) is None
        assert await proxy.reloads() == 0 and refused(port)  # test changes nothing
        assert sorted(os.listdir(proxy.domains_dir)) == []

        outcome = await proxy.apply({"shop.example.com": shop, "api.example.com": api})
        assert await proxy.reloads() == 1
        assert outcome.domains == 2 and outcome.seconds > 0
        assert outcome.generation == proxy.generation == 2  # 1 was the start
        generation, pid = await proxy.served_generation()
        assert generation == outcome.generation and pid not in old_workers
        assert not set(accepting_workers(proxy)) & set(old_workers)  # old ones are gone or shutting down

        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")
        assert await aget(port, "api.example.com", "/v1/x") == (200, f"{b2.port} red")
        assert await aget(port, "api.example.com", "/other") == (404, "no such location\n")
        assert (await aget(port, "unknown.example.com"))[0] == 404  # the port's default server
        assert sorted(os.listdir(proxy.domains_dir)) == ["api.example.com.conf", "shop.example.com.conf"]
        text = proxy.domain_path("api.example.com").read_text()
        assert 'location "/v1" {' in text and 'client_max_body_size "10m";' in text
        assert 'proxy_set_header "X-Team" "red";' in text and "proxy_read_timeout 3s;" in text
        assert proxy.conf.read_text().startswith(f"# leengine-generation {outcome.generation}\n")

    run(body, prefix=prefix)


def test_config_nginx_rejects_fails_test_and_apply_and_old_config_serves(prefix, backends):
    b1, b2, _ = backends
    port = free_port()

    async def body(proxy: NginxProxy):
        good = domain("shop.example.com", port, b1.upstream)
        await proxy.apply({"shop.example.com": good})
        before = proxy.domain_path("shop.example.com").read_bytes(), proxy.conf.read_bytes()
        reloads, generation = await proxy.reloads(), proxy.generation
        # Valid for slb_domain, refused by nginx: the buffer exceeds proxy_busy_buffers_size's limit.
        bad = domain("shop.example.com", port, b2.upstream, settings={"proxy_buffer_size": "999999k"})

        error = await proxy.test({"shop.example.com": bad})
        assert error is not None and "proxy_busy_buffers_size" in error and "[emerg]" in error
        with pytest.raises(ProxyError, match="proxy_busy_buffers_size") as info:
            await proxy.apply({"shop.example.com": bad})
        assert not isinstance(info.value, ReloadFailed)  # refused before any reload

        assert await proxy.reloads() == reloads and proxy.generation == generation
        assert (proxy.domain_path("shop.example.com").read_bytes(), proxy.conf.read_bytes()) == before
        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")  # old config, old upstreams
        assert not list(proxy.prefix.joinpath("scratch").iterdir())  # test() cleaned up

    run(body, prefix=prefix)


def test_without_retest_a_config_the_master_refuses_is_rolled_back(prefix, backends):
    b1, b2, _ = backends
    port = free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream)})
        before, generation = proxy.domain_path("shop.example.com").read_bytes(), proxy.generation
        bad = domain("shop.example.com", port, b2.upstream, settings={"proxy_buffer_size": "999999k"})
        with pytest.raises(ReloadFailed, match="proxy_busy_buffers_size"):  # from the master's [emerg]
            await proxy.apply({"shop.example.com": bad})
        assert proxy.domain_path("shop.example.com").read_bytes() == before
        assert proxy.generation == generation + 2 and await proxy.reloads() == 3
        assert (await proxy.served_generation())[0] == proxy.generation
        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")  # old config, old upstreams

    run(body, prefix=prefix, retest_on_apply=False)


def test_unvalidated_domain_never_reaches_a_file(prefix, backends):
    port = free_port()

    async def body(proxy: NginxProxy):
        sneaky = Domain("shop.example.com", "web", "team-a", port,
                        (Location("/", 5, (("X-Team", 'x"; return 200 "owned'),)),))
        assert "header value" in (await proxy.test({"shop.example.com": sneaky}) or "")
        with pytest.raises(ProxyError, match="rejected before rendering"):
            await proxy.apply({"shop.example.com": sneaky})
        misnamed = domain("shop.example.com", port, backends[0].upstream)
        with pytest.raises(ProxyError, match="under the name"):
            await proxy.apply({"evil.example.com": misnamed})
        assert os.listdir(proxy.domains_dir) == [] and await proxy.reloads() == 0

    run(body, prefix=prefix)


def test_port_held_by_another_process_is_reported_by_test_and_rolled_back_by_apply(prefix, backends):
    b1, b2, _ = backends
    port, taken = free_port(), free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream)})
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", taken))
            squatter.listen()
            blocked = domain("api.example.com", taken, b2.upstream)
            error = await proxy.test({"api.example.com": blocked})
            assert error is not None and "Address already in use" in error and "api.example.com" in error

            reloads, generation = await proxy.reloads(), proxy.generation
            with pytest.raises(ReloadFailed, match="Address already in use") as info:
                await proxy.apply({"api.example.com": blocked})
            assert "rolled back" in str(info.value)
            assert not proxy.domain_path("api.example.com").exists()
            assert proxy.generation == generation + 2  # a fresh number for the rolled-back config
            assert "api.example.com" not in proxy.live_domains()
            assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")
        assert await proxy.reloads() == reloads + 2  # the failed reload and the one back
        assert (await proxy.served_generation())[0] == proxy.generation
        assert "api.example.com" not in await proxy.served_upstreams()

    run(body, prefix=prefix, confirm_timeout=8.0)  # nginx retries a failed bind for ~2.5 s before it gives up


def test_reload_that_never_takes_effect_is_rolled_back(prefix, backends):
    b1, b2, _ = backends
    port, other = free_port(), free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream)})
        generation = proxy.generation
        master = proxy.master_pid
        try:
            freeze(master)  # the HUP stays pending (inside the try: SIGSTOP is sent even if freeze raises)
            started = time.monotonic()
            with pytest.raises(ReloadFailed, match="not confirmed within 1s") as info:
                await proxy.apply({"api.example.com": domain("api.example.com", other, b2.upstream)})
            assert time.monotonic() - started < 4  # bounded: forward + rollback confirmation
            assert "rolled back" in str(info.value)
            assert not proxy.domain_path("api.example.com").exists()
            assert proxy.conf.read_text().startswith(f"# leengine-generation {generation + 2}\n")
            assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")  # old workers serve on
        finally:
            os.kill(master, signal.SIGCONT)
        # The pending HUP now reloads the restored files: the fresh generation, without api.
        await until(lambda: _served_is(proxy, generation + 2))
        assert refused(other)
        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")
        # and the proxy works on: the next apply confirms normally
        outcome = await proxy.apply({"api.example.com": domain("api.example.com", other, b2.upstream)})
        assert outcome.generation == generation + 3
        assert await aget(other, "api.example.com") == (200, f"{b2.port} blue")

    run(body, prefix=prefix, confirm_timeout=1.0)


async def _served_is(proxy: NginxProxy, generation: int) -> bool:
    served = await proxy.served_generation()
    return served is not None and served[0] == generation


def test_removing_a_domain_stops_serving_it(prefix, backends):
    b1, b2, _ = backends
    port, alone = free_port(), free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream),
                           "api.example.com": domain("api.example.com", port, b2.upstream),
                           "solo.example.com": domain("solo.example.com", alone, b1.upstream)})
        assert await aget(port, "api.example.com") == (200, f"{b2.port} blue")
        outcome = await proxy.apply({"api.example.com": None, "solo.example.com": None})
        assert outcome.domains == 1 and await proxy.reloads() == 2
        assert await aget(port, "api.example.com") == (404, "no such domain\n")
        assert refused(alone)  # nothing listens on a port no domain uses any more
        assert await aget(port, "shop.example.com") == (200, f"{b1.port} blue")
        assert os.listdir(proxy.domains_dir) == ["shop.example.com.conf"]
        assert set(await proxy.served_upstreams()) == {"shop.example.com"}
        await proxy.apply({"never.example.com": None})  # removing what is not there is a no-op change
        assert os.listdir(proxy.domains_dir) == ["shop.example.com.conf"]

    run(body, prefix=prefix)


# --------------------------------------------------------------------------- state and restarts


def test_state_roundtrip_and_restart_restores_upstreams(prefix, backends):
    b1, b2, b3 = backends
    port = free_port()

    async def first(proxy: NginxProxy):
        assert await proxy.load_state() == SavedState()
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream),
                           "api.example.com": domain("api.example.com", port, b2.upstream)})
        await proxy.set_upstreams("shop.example.com", (b3.upstream,))
        state = SavedState(42, proxy.live_domains())
        await proxy.save_state(state)
        assert await proxy.load_state() == state
        assert state.domains["shop.example.com"].upstreams == (b3.upstream,)

        # Same adapter, Nginx restarted: the empty dict is refilled from the in-memory snapshot.
        await proxy.stop()
        assert refused(port)
        with pytest.raises(ProxyError, match="not running"):
            await proxy.set_upstreams("api.example.com", (b1.upstream,))
        await proxy.start()
        assert await aget(port, "shop.example.com") == (200, f"{b3.port} blue")
        assert await aget(port, "api.example.com") == (200, f"{b2.port} blue")

    run(first, prefix=prefix)
    assert refused(port)

    async def second(proxy: NginxProxy):
        # A fresh adapter on the same files: domains from domains/*.conf, upstreams from state.json.
        assert (await proxy.load_state()).revision == 42
        assert await proxy.reloads() == 0
        assert sorted(proxy.live_domains()) == ["api.example.com", "shop.example.com"]
        assert await aget(port, "shop.example.com") == (200, f"{b3.port} blue")
        assert await aget(port, "api.example.com") == (200, f"{b2.port} blue")
        assert (await proxy.served_generation())[0] == proxy.generation

    run(second, prefix=prefix)


def test_second_adapter_adopts_a_running_nginx(prefix, backends):
    b1, b2, _ = backends
    port = free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, b1.upstream)})
        await proxy.set_upstreams("shop.example.com", (b2.upstream,))
        other = NginxProxy(prefix)  # e.g. a restarted agent
        await other.start()
        assert other.master_pid == proxy.master_pid  # no second nginx
        assert other.generation == proxy.generation
        # The dict still had the newer upstreams: adoption leaves them alone.
        assert await aget(port, "shop.example.com") == (200, f"{b2.port} blue")
        outcome = await other.apply({"api.example.com": domain("api.example.com", port, b1.upstream)})
        assert outcome.generation == proxy.generation + 1
        assert await aget(port, "api.example.com") == (200, f"{b1.port} blue")

    run(body, prefix=prefix)


def test_corrupt_state_is_a_typed_error(prefix):
    async def body(proxy: NginxProxy):
        proxy.state_path.write_text('{"revision": 3, "domains": {"a.example.com": {"name": "b.example.com"}}}')
        with pytest.raises(ProxyError, match="not a saved state"):
            await proxy.load_state()

    run(body, prefix=prefix)


def test_a_deeply_nested_state_file_is_a_typed_error(prefix):
    async def body(proxy: NginxProxy):
        proxy.state_path.write_text("[" * 100_000)  # json.loads alone raises RecursionError
        with pytest.raises(ProxyError, match="not a saved state"):
            await proxy.load_state()

    run(body, prefix=prefix)


# --------------------------------------------------------------------------- the admin endpoint (issue 9)


def _listening_tcp_ports(pids: set[int]) -> set[int]:
    """TCP ports in LISTEN state whose socket one of ``pids`` holds (from /proc)."""
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
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_admin_endpoint_is_a_private_unix_socket_and_on_no_tcp_port(prefix, backends):
    port = free_port()

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, backends[0].upstream)})
        # Nginx listens on TCP for the domain's port only: no admin port anyone could reach.
        pids = {proxy.master_pid, *proxy.worker_pids()}
        assert _listening_tcp_ports(pids) == {port}
        sock = proxy.admin_socket
        assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700 and os.stat(sock.parent).st_uid == os.geteuid()
        assert (await proxy.served_generation())[0] == proxy.generation  # the agent still reaches it
        # Nothing sent through a domain reaches it: admin paths are the back-end's, whatever the Host.
        for host in ("shop.example.com", "leengine-admin", "localhost"):
            status, body_text = await aget(port, host, "/upstreams")
            assert status in (200, 404) and '"shop.example.com"' not in body_text
        assert await aget(port, "shop.example.com", "/generation") == (200, f"{backends[0].port} blue")

    run(body, prefix=prefix)


def test_the_admin_socket_directory_keeps_other_users_out(prefix, backends):
    """Checked as the worker user: nginx makes unix sockets 0666, so the 0700 directory must hold."""
    import pwd

    async def body(proxy: NginxProxy):
        user = pwd.getpwnam("www-data")

        def as_worker() -> int:
            """Exit code of a child that drops to www-data and connects: 13 denied, 0 connected."""
            child = os.fork()
            if child == 0:  # pragma: no cover - the child
                code = 2
                try:
                    os.setgroups([])
                    os.setgid(user.pw_gid)
                    os.setuid(user.pw_uid)
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(proxy.admin_socket))
                    code = 0
                except PermissionError:
                    code = 13
                finally:
                    os._exit(code)
            return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])

        assert as_worker() == 13

    run(body, prefix=prefix)


# --------------------------------------------------------------------------- weights (issue 13: gray releases)


def test_weights_version_counts_and_the_lua_validation_on_real_nginx(prefix, backends):
    b1, b2, _ = backends
    port = free_port()
    v1, v2 = Upstream(b1.upstream.host, b1.port, 3, "v1"), Upstream(b2.upstream.host, b2.port, 1, "v2")

    async def body(proxy: NginxProxy):
        await proxy.apply({"shop.example.com": domain("shop.example.com", port, v1, v2),
                           "empty.example.com": domain("empty.example.com", port)})
        served = await proxy.served_upstreams()
        assert set(served["shop.example.com"]) == {v1, v2} and served["empty.example.com"] == ()
        answers = [await aget(port, "shop.example.com") for _ in range(40)]
        assert set(answers) == {(200, f"{b1.port} blue"), (200, f"{b2.port} blue")}
        async def counted(domain_name: str, total: int) -> bool:  # the log phase runs after the answer is sent
            counts = await proxy.request_counts()
            return sum(c.requests for (name, _), c in counts.items() if name == domain_name) == total

        await until(lambda: counted("shop.example.com", 40), timeout=5)
        counts = await proxy.request_counts()
        v1_count, v2_count = counts[("shop.example.com", "v1")], counts[("shop.example.com", "v2")]
        assert 24 <= v1_count.requests <= 36, counts
        assert v1_count.by_class == {"2xx": v1_count.requests} and v1_count.seconds >= 0

        reloads = await proxy.reloads()
        await proxy.set_upstreams("shop.example.com", (replace(v1, weight=1000), replace(v2, weight=0)))
        assert [await aget(port, "shop.example.com") for _ in range(10)] == [(200, f"{b1.port} blue")] * 10
        assert await proxy.reloads() == reloads  # a traffic shift is in place

        assert await aget(port, "empty.example.com") == (503, "no upstream servers\n")
        await until(lambda: counted("empty.example.com", 1), timeout=5)
        await until(lambda: counted("shop.example.com", 50), timeout=5)
        await proxy.apply({"other.example.com": domain("other.example.com", port, b1.upstream)})  # a reload
        counts = await proxy.request_counts()  # the counters' dict survives reloads, as the upstreams' does
        assert counts[("shop.example.com", "v1")].requests == v1_count.requests + 10
        assert counts[("shop.example.com", "v2")].requests == v2_count.requests
        assert counts[("empty.example.com", "")].by_class == {"5xx": 1}

        # The Lua side validates on its own (the second line of defence behind Upstream.parse).
        for bad in ('["10.0.0.1:80 weight=1001"]', '["10.0.0.1:80 version=v2 weight=3"]', '["10.0.0.1:80 weight=01"]',
                    '["10.0.0.1:80 version=V2"]', '["10.0.0.1:80 weight=2 "]', '["10.0.0.1:80 backup"]'):
            status, _ = await proxy._admin("PUT", "/upstreams/shop.example.com", bad.encode())
            assert status == 400, bad
        status, _ = await proxy._admin("PUT", "/upstreams/shop.example.com",
                                       b'["10.0.0.1:80 weight=2 version=v3", "10.0.0.1:80 weight=5"]')
        assert status == 200  # one server per address: the first spelling stays
        assert (await proxy.served_upstreams())["shop.example.com"] == (Upstream("10.0.0.1", 80, 2, "v3"),)

    run(body, prefix=prefix)


def test_the_lua_grammar_of_a_weighted_server_is_upstream_parse_s(prefix):
    """Differential: 400 texts built from near-valid fragments; Lua accepts exactly what Upstream.parse accepts."""
    fragments = [" weight=", " version=", "weight=", " ", "0", "1", "7", "01", "1000", "1001", "9999", "10000", "-1",
                 "v1", "V1", "-v", "a.b-c", "x" * 32, "x" * 33, "=", ":", ".", "-", "2 ", "weight", "version"]
    rng = random.Random(13)
    texts = ["10.0.0.1:80" + "".join(rng.choice(fragments) for _ in range(rng.randint(0, 5))) for _ in range(400)]

    def python_accepts(text: str) -> bool:
        try:
            Upstream.parse(text)
        except ValueError:
            return False
        return True

    async def body(proxy: NginxProxy):
        disagree = []
        for text in texts:
            status, payload = await proxy._admin("PUT", "/upstreams/grammar.example.com", json.dumps([text]).encode())
            if (status == 200) != python_accepts(text):
                disagree.append((text, status, payload[:80]))
        assert not disagree, disagree[:10]
        assert sum(python_accepts(t) for t in texts) >= 40  # both sides were exercised

    run(body, prefix=prefix)
