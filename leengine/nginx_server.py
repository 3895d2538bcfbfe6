"""A throwaway private Nginx (with the lua module) on loopback, for tests, benchmarks and the one-machine lab.

``running_nginx()`` makes a fresh prefix directory (world-searchable, so the
``www-data`` workers can reach their temp files), picks a free loopback admin port,
starts an ``NginxProxy`` on it, yields the started proxy and, on exit, stops Nginx
and removes the directory (unless the caller passed its own ``prefix``, which is
kept: that is how a test restarts Nginx on the same files).

Invariants:

* Everything of the instance lives in its prefix: config, domains, lua, logs, pid
  file, temp paths, saved state. The system's /etc/nginx, /var/log/nginx and
  /run/nginx.pid are never touched, and a system Nginx, if one runs, is left alone.
* Domains listen on ``listen_address`` (127.0.0.1 by default), the admin endpoint on
  127.0.0.1 only.
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
async def running_nginx(prefix: str | os.PathLike[str] | None = None, *, admin_port: int | None = None,
                        listen_address: str = "127.0.0.1", **options: Any) -> AsyncIterator[NginxProxy]:
    """Run a private Nginx for the duration of the block; ``options`` go to ``NginxProxy``."""
    find_nginx()
    find_modules()
    own = prefix is None
    path = make_prefix() if prefix is None else Path(prefix)
    proxy = NginxProxy(path, admin_port=admin_port or free_port(), listen_address=listen_address, **options)
    try:
        await proxy.start()
        yield proxy
    finally:
        await proxy.stop()
        if own:
            shutil.rmtree(path, ignore_errors=True)
