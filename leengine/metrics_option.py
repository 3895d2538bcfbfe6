"""``--metrics-address HOST:PORT``: where a daemon serves ``/metrics`` (Prometheus' text format), off when empty.

Every daemon (``leengine-cni-agent``, ``leengine-slb-agent``, ``leengine-build-agent``,
``leengine-discovery``, ``leengine-control``) takes ``MetricsAddressOpt`` and, before its
agents start, calls ``open_metrics(address, families)``: a ``PromMetrics`` (the real
Metrics adapter) served on that address, or ``NO_METRICS`` when the option is empty.

Invariants:

* The value is checked by the option itself (a bad form or port is a usage error, exit 2,
  before anything starts), and the socket is bound at start, in ``serve_metrics``: an
  address that cannot be bound (port taken, a host that does not resolve or is not this
  machine's, a privileged port) is ONE line naming the address and the reason
  (``BadInput``, exit 2), never a traceback later.
* HOST is required: ``127.0.0.1:9101``, ``[::1]:9101``, ``localhost:9101``; ``0.0.0.0:9101``
  or a management address serves other machines. That is allowed (a Prometheus elsewhere
  scrapes it) but ``/metrics`` has no TLS and no authentication: bind loopback or a
  network only operators reach. The metrics hold no secret, but pool, node, group,
  domain and app names. Port 0 takes a free port (tests; ``MetricsServer.port`` says which).
* The server is ``prometheus_client``'s own (a daemon thread); it reads the registry under
  the library's locks, so asyncio agents record without waiting for scrapes.

It must not know any agent, etcd, or which families a daemon records.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from prometheus_client import CollectorRegistry, start_http_server

from foundation.adapters.prom_metrics import PromMetrics
from foundation.ports.metrics import DAEMON_INFO, NO_METRICS, MetricDef, Metrics
from leengine.command import BadInput

log = logging.getLogger("leengine.metrics")


def parse_metrics_address(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT``) as (host, port); ``""`` is None (off). ``ValueError`` says what is wrong."""
    value = value.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value[:80]!r} is not HOST:PORT (e.g. 127.0.0.1:9101)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{value[:80]!r}: an IPv6 host is written [ADDRESS]:PORT")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value[:80]!r}: an IPv6 host is written [ADDRESS]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value[:80]!r}: the port is a number from 0 to 65535")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"{value[:80]!r}: {host!r} is not a host name or address")
    return host, int(port_text)


def check_metrics_address(value: str) -> str:
    """The option's callback: a malformed value is a usage error (exit 2) before anything starts."""
    try:
        parse_metrics_address(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value.strip()


MetricsAddressOpt = Annotated[str, typer.Option(
    "--metrics-address", metavar="HOST:PORT", callback=check_metrics_address,
    help="serve Prometheus metrics on http://HOST:PORT/metrics (empty: off). No TLS, no auth: "
         "bind loopback or an operators' network")]


@dataclass
class MetricsServer:
    """A running ``/metrics`` server: where it listens and how to stop it."""

    address: str
    host: str
    port: int  # the bound port (the one the kernel chose for port 0)
    _httpd: Any
    _thread: Any

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def serve_metrics(address: str, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve ``registry`` on ``address`` now (None when ``address`` is empty); one-line ``BadInput`` if it cannot."""
    try:
        parsed = parse_metrics_address(address)
    except ValueError as exc:
        raise BadInput(f"--metrics-address {exc}") from exc
    if parsed is None:
        return None
    host, port = parsed
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # EADDRINUSE, EADDRNOTAVAIL, EACCES, and gaierror for a host that does not resolve
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise BadInput(f"--metrics-address {address}: cannot listen there ({reason})") from exc
    bound = int(httpd.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    log.info("serving metrics on http://%s:%d/metrics", shown, bound)
    return MetricsServer(address, host, bound, httpd, thread)


def open_metrics(address: str, families: tuple[MetricDef, ...] = ()) -> tuple[Metrics, MetricsServer | None]:
    """A daemon's Metrics: ``PromMetrics`` served on ``address`` with ``families`` listed from the start,
    or ``NO_METRICS`` and no server when ``address`` is empty."""
    if not address.strip():
        return NO_METRICS, None
    metrics = PromMetrics()
    metrics.register_all(families)
    server = serve_metrics(address, metrics.registry)
    return metrics, server


@contextlib.contextmanager
def metrics_served(address: str, families: tuple[MetricDef, ...] = ()) -> Iterator[Metrics]:
    """``with metrics_served(opt, families) as metrics:`` open_metrics for the block, the server closed after."""
    metrics, server = open_metrics(address, families)
    try:
        yield metrics
    finally:
        if server is not None:
            server.close()


def record_daemon_info(metrics: Metrics, daemon: str) -> None:
    """``leengine_daemon_info{daemon, version} 1``: what a scrape target is and which release it runs."""
    try:
        version = importlib.metadata.version("leengine-testbed")
    except importlib.metadata.PackageNotFoundError:  # a source checkout used without an install
        version = "unknown"
    metrics.set(DAEMON_INFO, 1.0, daemon=daemon, version=version)
