"""``--metrics-address``: its forms, a real ``/metrics`` served from the adapter's registry, and every address
that cannot be bound refused at start in one line (exit 2), in-process and through a command run as a process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from foundation.adapters.prom_metrics import PromMetrics
from foundation.ports.metrics import BUILD_CACHE_HITS, CNI_REQUESTS, NO_METRICS
from leengine.command import EXIT_BAD_INPUT, BadInput
from leengine.metrics_option import metrics_served, open_metrics, parse_metrics_address, serve_metrics


@pytest.mark.parametrize(("value", "parsed"), [
    ("", None), ("  ", None), ("127.0.0.1:9101", ("127.0.0.1", 9101)), ("localhost:0", ("localhost", 0)),
    ("[::1]:9101", ("::1", 9101)), ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_the_forms_it_takes(value, parsed):
    assert parse_metrics_address(value) == parsed


@pytest.mark.parametrize("value", ["9101", ":9101", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000",
                                   "::1:9101", "[::1:9101", "[]:9101", "a b:9101", "x/y:9101"])
def test_malformed_values_are_refused_with_a_reason(value):
    with pytest.raises(ValueError, match=r"PORT|port|host"):
        parse_metrics_address(value)


def _held_port() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_empty_is_off():
    assert serve_metrics("", None) is None  # type: ignore[arg-type]  # no registry is needed when off
    metrics, server = open_metrics("")
    assert metrics is NO_METRICS and server is None


def test_served_metrics_are_the_registry_and_close_releases_the_port():
    metrics, server = open_metrics("127.0.0.1:0", (BUILD_CACHE_HITS,))
    assert server is not None and server.port > 0
    try:
        metrics.inc(CNI_REQUESTS, 2, node="n1", command="ADD", code="0")
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert 'leengine_cni_requests_total{code="0",command="ADD",node="n1"} 2.0' in body
    assert "leengine_build_cache_hits_total 0.0" in body  # a family registered at start is listed before any event
    with socket.socket() as s:  # closed: nothing listens there any more (the scrape's TIME_WAIT may remain)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen(1)


def test_metrics_served_closes_its_server():
    with metrics_served("127.0.0.1:0") as metrics:
        assert isinstance(metrics, PromMetrics)
    with metrics_served("") as off:
        assert off is NO_METRICS


def _host_has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_loopback_is_served_or_refused_in_one_line():
    """Where the host has ::1 the server listens there; where it has not, the error names the address."""
    if not _host_has_ipv6_loopback():
        with pytest.raises(BadInput, match=r"\[::1\]:0"):
            serve_metrics("[::1]:0", PromMetrics().registry)
        return
    server = serve_metrics("[::1]:0", PromMetrics().registry)
    assert server is not None
    try:
        with socket.create_connection(("::1", server.port), timeout=5):
            pass
    finally:
        server.close()


@pytest.mark.parametrize("address", ["held", "no-such-host.invalid:9101", "192.0.2.1:9101"])
def test_an_address_that_cannot_be_bound_is_one_line_naming_it(address):
    held = _held_port()
    try:
        if address == "held":
            address = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(BadInput) as caught:
            open_metrics(address)
        message = caught.value.format_message()
        assert address in message and "\n" not in message
        assert caught.value.exit_code == EXIT_BAD_INPUT
    finally:
        held.close()


COMMAND = textwrap.dedent("""
    import typer
    from leengine.command import run_app
    from leengine.metrics_option import MetricsAddressOpt, open_metrics
    app = typer.Typer(add_completion=False)
    @app.command()
    def main(metrics_address: MetricsAddressOpt = "") -> None:
        open_metrics(metrics_address)
        print("started")
    run_app(app, "leengine-demo-daemon")
""")


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_command_refuses_a_taken_port_and_a_malformed_value_in_one_line_exit_2():
    held = _held_port()
    try:
        address = f"127.0.0.1:{held.getsockname()[1]}"
        done = _command("--metrics-address", address)
    finally:
        held.close()
    assert done.returncode == EXIT_BAD_INPUT and "started" not in done.stdout
    assert done.stderr.splitlines() == [
        f"leengine-demo-daemon: error: --metrics-address {address}: cannot listen there (Address already in use)"]
    bad = _command("--metrics-address", "localhost")
    assert bad.returncode == EXIT_BAD_INPUT and len(bad.stderr.splitlines()) == 1
    assert "--metrics-address" in bad.stderr and "HOST:PORT" in bad.stderr
    ok = _command("--metrics-address", "127.0.0.1:0")
    assert ok.returncode == 0 and ok.stdout.strip() == "started"
