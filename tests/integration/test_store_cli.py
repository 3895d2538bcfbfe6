"""etcd unreachable or hung: the CLI names the endpoint in one line within a bounded time; nothing half-written."""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def leengine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leengine.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once the socket is closed


def test_put_get_roundtrip_against_real_etcd(etcd_server):
    put = leengine("store", "put", "/cli/k", "hello", "--endpoint", etcd_server.endpoint, *etcd_server.client_args)
    assert put.returncode == 0, put.stderr
    revision = int(put.stdout.split()[-1])
    got = leengine("store", "get", "/cli/k", "--endpoint", etcd_server.endpoint, *etcd_server.client_args)
    assert got.stdout.strip() == f"/cli/k = hello (version 1, mod_revision {revision})"


def test_refused_endpoint_fails_fast_with_one_line():
    endpoint = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    run = leengine("store", "status", "--endpoint", endpoint, "--timeout", "2")
    assert time.monotonic() - started < 10
    assert run.returncode == 1
    assert run.stderr.startswith(f"leengine: error: etcd at {endpoint} unavailable")
    assert len(run.stderr.strip().splitlines()) == 1


def test_hung_etcd_times_out_naming_the_endpoint_and_writes_nothing(etcd_server):
    with etcd_server.paused():
        started = time.monotonic()
        run = leengine("store", "put", "/cli/hung", "value", "--endpoint", etcd_server.endpoint,
                       *etcd_server.client_args, "--timeout", "1")
        elapsed = time.monotonic() - started
    assert run.returncode == 1
    assert f"etcd at {etcd_server.endpoint} unavailable" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert elapsed < 1 + 5  # the deadline plus interpreter start-up, never a hang
    # The put never reached etcd: the connection check timed out before it was sent.
    got = leengine("store", "get", "/cli/hung", "--endpoint", etcd_server.endpoint, *etcd_server.client_args)
    assert got.returncode == 1 and "not found" in got.stderr
