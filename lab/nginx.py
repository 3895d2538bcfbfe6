"""A throwaway private Nginx (with the lua module) on loopback, for tests, benchmarks and the one-machine lab.

``running_nginx()`` makes a fresh prefix directory (world-searchable, so the
``www-data`` workers can reach their temp files), starts an ``NginxProxy`` on it
(admin endpoint: the unix socket ``PREFIX/admin/admin.sock``), yields the started
proxy and, on exit, stops Nginx
and removes the directory (unless the caller passed its own ``prefix``, which is
kept: that is how a test restarts Nginx on the same files).

Invariants:

* Everything of the instance lives in its prefix: config, domains, lua, logs, pid
  file, temp paths, saved state. The system's /etc/nginx, /var/log/nginx and
  /run/nginx.pid are never touched, and a system Nginx, if one runs, is left alone.
* Domains listen on ``listen_address`` (127.0.0.1 by default); the admin endpoint is
  on no TCP port at all.
* A missing binary or module is an error, never a skip: install Debian's ``nginx`` and
  ``libnginx-mod-http-lua``.

This module knows nothing about domains or the agent: it runs the adapter's lifecycle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from foundation.adapters.nginx_proxy import NginxProxy, find_modules, find_nginx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel calls free right now (it may be taken again before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_prefix() -> Path:
    """A fresh prefix directory under /tmp that nginx's worker user can traverse."""
    prefix = Path(tempfile.mkdtemp(prefix="leengine-nginx-"))
    os.chmod(prefix, 0o755)
    return prefix


@contextlib.asynccontextmanager
async def running_nginx(prefix: str | os.PathLike[str] | None = None, *,
                        listen_address: str = "127.0.0.1", **options: Any) -> AsyncIterator[NginxProxy]:
    """Run a private Nginx for the duration of the block; ``options`` go to ``NginxProxy``."""
    find_nginx()
    find_modules()
    own = prefix is None
    path = make_prefix() if prefix is None else Path(prefix)
    proxy = NginxProxy(path, listen_address=listen_address, **options)
    try:
        await proxy.start()
        yield proxy
    finally:
        await proxy.stop()
        if own:
            shutil.rmtree(path, ignore_errors=True)


class LoopbackBackend:
    """An HTTP server on loopback whose every answer is its own port (tests and benches of the Proxy).

    With ``echo_header``, the body is "PORT VALUE" (VALUE: that request header, or "-"),
    so a test can see what Nginx set on the way.
    """

    def __init__(self, echo_header: str | None = None) -> None:
        import http.server
        import threading

        from foundation.logic.slb_domain import Upstream

        port_box: list[int] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall

            def do_GET(self) -> None:
                body = str(port_box[0])
                if echo_header is not None:
                    body += f" {self.headers.get(echo_header, '-')}"
                raw = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        port_box.append(self.port)
        self.upstream = Upstream("127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
