"""The real Proxy: a private Nginx instance with the lua module, upstreams in a shared dict.

``NginxProxy(prefix)`` implements ``foundation.ports.proxy.Proxy`` on
one Nginx whose every file lives under ``prefix`` and which runs as
``nginx -p PREFIX/ -c conf/nginx.conf`` (``start()``/``stop()``; or
``lab.nginx.running_nginx``). The prefix holds::

    conf/nginx.conf          main config, re-rendered by every apply (first line: its generation)
    domains/<name>.conf      one file per domain in force
    lua/leengine.lua         balancer + admin endpoint (foundation.adapters.nginx_lua)
    admin/admin.sock         the admin endpoint: a unix socket in a directory of mode 700
    logs/error.log, logs/nginx.pid, logs/nginx.stderr
    temp/…                   nginx's temp paths (never the system's /var/lib/nginx)
    state.json               the agent's SavedState (save_state/load_state)
    scratch/                 throwaway trees for test()

A domain file looks like this (values always quoted; the header line is the
record the file was rendered from, upstreams left out: they live in the shared dict)::

    # leengine-domain {"group":"web","listen":8080,"locations":[…],"name":"shop.example.com",…}
    server {
        listen 127.0.0.1:8080;
        server_name "shop.example.com";
        client_max_body_size "10m";                      # admin-only settings
        location "/api" {
            proxy_pass http://leengine;
            proxy_read_timeout 30s;
            proxy_set_header Host $host;                  # defaults unless the domain sets them
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Connection "";
            proxy_set_header "X-Team" "blue";
        }
        location / { default_type text/plain; return 404 "no such location\\n"; }  # only without a "/" location
    }

The main config loads the lua module, declares the shared dict, and holds the one
``upstream leengine`` every domain proxies to: a placeholder server, a keepalive
pool shared by all domains, and ``balancer_by_lua`` picking a server for
``$server_name`` (the domain: one name per server block) from the dict; a domain
without servers is sent to a sink server on ``unix:PREFIX/logs/no-upstream.sock``
that answers 503 at once. It also gives each listen port in use a
``default_server`` that answers 404 (a request for an unknown Host never lands on
some other domain), includes ``../domains/*.conf``, and runs the admin server on the unix socket
``PREFIX/admin/admin.sock`` (protocol: ``nginx_lua``), whose ``GET /generation``
answers ``{"generation": N, "pid": P}`` with the N rendered into this very file.

Why a unix socket: the admin endpoint rewrites every domain's upstreams, so nothing
but the agent may reach it. On TCP loopback any local process could, and so could a
domain whose upstream pointed at the Nginx host itself. A unix socket has no address
a balancer can pick (the lua balancer only sets IPv4 peers, and upstreams are pod
addresses by then), and its directory is ``0700`` (owned by the agent's user; nginx
itself makes the socket ``0666``, so the directory is the lock, and the socket is
set to ``0600`` after each start as well). Workers never open the path: they accept
on the descriptor the master bound.

Why one shared upstream and no per-domain ``error_page``: config load time is the
reload cost, and Debian's lua module (0.10.23) builds an OpenSSL context for every
location-level configuration it merges (~100 µs each with OpenSSL 3), while nginx
finds ``proxy_pass`` upstreams by a linear search (quadratic in domains). A domain
costs two merges (server + location) this way instead of three plus an upstream.

Invariants:

* Nothing reaches a file unvalidated: every Domain is re-parsed from its JSON
  (``Domain.parse``) right before rendering, and every quoted value is checked
  again against a character whitelist.
* ``set_upstreams`` is one HTTP request to the admin endpoint: no file, no reload.
  It updates the in-memory snapshot, which ``start()`` re-pushes after an Nginx
  (re)start; it does not write ``state.json``: the agent saves its state (with the
  revision that matches) and replays from that revision after a restart, so a
  newer upstream list is never lost, only re-applied.
* ``test`` never touches the live tree: it renders the changes into a scratch
  prefix (unchanged files hard-linked) and runs ``nginx -t`` there. ``nginx -t``
  does not bind sockets, so ``test`` also tries to bind every listen address the
  changes add and reports a port another process holds, in nginx's words.
* ``apply`` writes files atomically (temp + rename) keeping the old bytes, runs
  ``nginx -t`` (unless ``retest_on_apply=False``), sends one SIGHUP and waits
  (``confirm_timeout``) until the admin endpoint answers with the new generation
  and every worker of the old generation is shutting down (from then on no old
  worker accepts). An ``[emerg]`` in the
  error log after the HUP (e.g. ``bind() … Address already in use``) fails it at
  once. On failure the old files come back under a fresh generation, Nginx is
  reloaded again and ``ReloadFailed`` is raised: the last good config serves.
  ``reloads()`` counts every SIGHUP sent, rollbacks included.
* Blocking work (files, ``nginx -t``, /proc scans) runs off the event loop; one
  asyncio lock serialises start/stop/set_upstreams/test/apply.
* Weights and version tags travel in the upstreams' text form (``Upstream``), so
  they need nothing here; ``request_counts`` reads the counters ``log_by_lua`` keeps
  per domain and upstream version (``nginx_lua``), cumulative since Nginx started.

It must not know etcd, the agent, debouncing, statuses or what a revision means.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from foundation.adapters.binaries import find_binary, log_tail
from foundation.adapters.nginx_lua import LEENGINE_LUA, REQUESTS_DICT, SHARED_DICT
from foundation.logic.slb_domain import Domain, DomainError, Upstream, check_domain_name, load_json
from foundation.ports.proxy import (
    STATUS_CLASSES,
    ProxyError,
    ReloadFailed,
    ReloadOutcome,
    RequestCounts,
    SavedState,
    with_changes,
)
from foundation.ports.proxy_domain import VERSION

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")  # the lua module needs NDK loaded first
START_TIMEOUT = 10.0  # seconds for a fresh master to answer its admin endpoint
STOP_TIMEOUT = 5.0  # seconds for a graceful SIGQUIT before SIGTERM, then SIGKILL
ADMIN_TIMEOUT = 2.0  # seconds per admin request
REQUESTS_DICT_SIZE = "8m"  # ~30,000 counters (domain x version x status class): beyond, the oldest are evicted
POLL = 0.005  # seconds between confirmation probes
_INSTALL_HINT = "install Debian's nginx and libnginx-mod-http-lua (apt-get install nginx libnginx-mod-http-lua)"
_GENERATION_LINE = re.compile(rb"^# leengine-generation (\d+)\n")
_DOMAIN_LINE = "# leengine-domain "
# What may appear between double quotes in a rendered file (validation already allows less).
_QUOTABLE = re.compile(r"^[A-Za-z0-9 ._~!*'()+,=@%/:-]*$")
_PREFIX_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")  # the prefix appears in the config (the sink socket)
UPSTREAM = "leengine"  # the one upstream block every domain proxies to
SINK = "logs/no-upstream.sock"  # unix socket of the 503 server, under the prefix
ADMIN_DIR = "admin"  # mode 0700: only the agent's user reaches the socket inside
ADMIN_SOCKET = f"{ADMIN_DIR}/admin.sock"  # the admin endpoint (never on TCP)
_DEFAULT_HEADERS = (("Host", "$host"), ("X-Real-IP", "$remote_addr"),
                    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"), ("Connection", '""'))


def find_nginx() -> str:
    """The nginx binary: ``$LEENGINE_NGINX_BIN`` or ``nginx`` on PATH (plus the sbin directories)."""
    return find_binary("nginx", env="LEENGINE_NGINX_BIN", hint=_INSTALL_HINT, error=ProxyError)


def find_modules() -> list[str]:
    """Absolute paths of the NDK and lua modules (``$LEENGINE_NGINX_MODULES`` overrides the directory)."""
    explicit = os.environ.get("LEENGINE_NGINX_MODULES")
    for directory in (explicit,) if explicit else MODULE_DIRS:
        if directory and all(os.path.isfile(os.path.join(directory, m)) for m in MODULES):
            return [os.path.join(directory, m) for m in MODULES]
    raise ProxyError(f"nginx lua module not found ({', '.join(MODULES)}): {_INSTALL_HINT}")


# --------------------------------------------------------------------------- rendering (pure)


def _q(value: str, what: str) -> str:
    """``value`` in double quotes, after a last check that it cannot escape them."""
    if not _QUOTABLE.match(value):
        raise ProxyError(f"refusing to render {what} {value!r}: characters outside the whitelist")
    return f'"{value}"'


def _listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def revalidate(name: str, domain: Domain) -> Domain:
    """Re-parse ``domain`` from its JSON (the defensive second validation) and check its name."""
    try:
        check_domain_name(name)
        checked = Domain.parse(domain.to_json())
    except DomainError as exc:
        raise ProxyError(f"domain {name!r} rejected before rendering: {exc}") from None
    if checked.name != name:
        raise ProxyError(f"domain {checked.name!r} given under the name {name!r}")
    return checked


def render_domain(domain: Domain, listen_address: str) -> str:
    """The file ``domains/<name>.conf`` for an already re-validated ``domain``."""
    name = domain.name
    header = dict(domain.to_json(), upstreams=[])
    lines = [
        _DOMAIN_LINE + json.dumps(header, sort_keys=True, separators=(",", ":")),
        "server {",
        f"    listen {_listen(listen_address, domain.listen)};",
        f"    server_name {_q(name, 'name')};",
    ]
    for key, value in domain.settings:  # closed list, each value matched its own grammar
        lines.append(f"    {key} {_q(value, key)};")
    for loc in domain.locations:
        lines += [
            f"    location {_q(loc.path, 'location path')} {{",
            f"        proxy_pass http://{UPSTREAM};",
            f"        proxy_read_timeout {int(loc.read_timeout)}s;",
        ]
        own = {header_name.lower() for header_name, _ in loc.set_headers}
        lines += [f"        proxy_set_header {h} {v};" for h, v in _DEFAULT_HEADERS if h.lower() not in own]
        lines += [f"        proxy_set_header {_q(h, 'header name')} {_q(v, 'header value')};"
                  for h, v in loc.set_headers]
        lines.append("    }")
    if all(loc.path != "/" for loc in domain.locations):  # never nginx's static files from PREFIX/html
        lines.append('    location / { default_type text/plain; return 404 "no such location\\n"; }')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_main(generation: int, *, prefix: Path, listen_address: str, ports: Iterable[int],
                modules: list[str], worker_processes: int, user: str | None, shared_dict_size: str,
                keepalive: int) -> str:
    """``conf/nginx.conf``: modules, dict, admin server, one 404 default server per port in use, the domains."""
    lines = [f"# leengine-generation {int(generation)}",
             "# Rendered by foundation.adapters.nginx_proxy.NginxProxy; every apply rewrites it."]
    lines += [f"load_module {m};" for m in modules]
    lines += [
        "daemon off;",
        "master_process on;",
        f"worker_processes {int(worker_processes)};",
        *([f"user {user};"] if user else []),
        "pid logs/nginx.pid;",
        "error_log logs/error.log notice;",
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        "    default_type application/octet-stream;",
        "    client_body_temp_path temp/client_body;",
        "    proxy_temp_path temp/proxy;",
        "    fastcgi_temp_path temp/fastcgi;",
        "    uwsgi_temp_path temp/uwsgi;",
        "    scgi_temp_path temp/scgi;",
        "    server_names_hash_bucket_size 256;",
        "    server_names_hash_max_size 131072;",
        "    proxy_headers_hash_bucket_size 128;",
        "    proxy_http_version 1.1;",
        '    lua_package_path "$prefix/lua/?.lua;;";',
        f"    lua_shared_dict {SHARED_DICT} {shared_dict_size};",
        f"    lua_shared_dict {REQUESTS_DICT} {REQUESTS_DICT_SIZE};",
        "    log_by_lua_block { leengine.log() }  # requests per domain and upstream version",
        f'    init_by_lua_block {{ leengine = require "leengine"; leengine.sink = "unix:{prefix / SINK}" }}',
        f"    upstream {UPSTREAM} {{",
        "        server 0.0.0.1:1;  # placeholder: the balancer picks a server from the shared dict",
        "        balancer_by_lua_block { leengine.balance(ngx.var.server_name) }",
        f"        keepalive {int(keepalive)};",
        "    }",
        "    server {",
        f"        listen unix:{prefix / SINK};",
        '        default_type text/plain; return 503 "no upstream servers\\n";',
        "    }",
        "    server {",
        f"        listen unix:{prefix / ADMIN_SOCKET};",
        "        client_max_body_size 64m;",
        "        client_body_buffer_size 64m;",
        "        location = /generation {",
        "            default_type application/json;",
        f"            return 200 '{{\"generation\":{int(generation)},\"pid\":$pid}}\\n';",
        "        }",
        "        location /upstreams { content_by_lua_block { leengine.admin() } }",
        "        location = /requests { content_by_lua_block { leengine.requests() } }",
        "    }",
    ]
    for port in sorted(set(ports)):
        lines.append(f"    server {{ listen {_listen(listen_address, port)} default_server; "
                     'default_type text/plain; return 404 "no such domain\\n"; }')
    lines += ["    include ../domains/*.conf;", "}"]
    return "\n".join(lines) + "\n"


def parse_request_counts(text: str) -> dict[tuple[str, str], RequestCounts]:
    """The admin endpoint's ``GET /requests`` lines (``nginx_lua``) as counts per (domain, version)."""
    classes: dict[tuple[str, str], dict[str, int]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != {"n": 5, "s": 4}.get(fields[0]):
            continue
        domain, version, value = fields[1], fields[2], fields[-1]
        try:
            check_domain_name(domain)
            number = float(value)
        except (DomainError, ValueError):
            continue
        if (version and not VERSION.fullmatch(version)) or not 0 <= number < 2 ** 53:  # also NaN and inf
            continue
        if fields[0] == "n":
            if fields[3] in STATUS_CLASSES and number == int(number):
                classes.setdefault((domain, version), {})[fields[3]] = int(number)
        else:
            seconds[(domain, version)] = number
    return {key: RequestCounts(classes.get(key, {}), seconds.get(key, 0.0))
            for key in sorted(set(classes) | set(seconds))}


def _nginx_errors(output: str, *prefixes: Path) -> str:
    """The lines of ``nginx -t`` output that say what is wrong, with our paths made relative."""
    for prefix in prefixes:
        output = output.replace(f"{prefix}/", "")
    output = output.replace("conf/../", "")
    lines = [re.sub(r"^\S+ \S+ \[(\w+)\] \d+#\d+: ", r"[\1] ", line) for line in output.splitlines()]
    bad = [line for line in lines if re.match(r"^(nginx: )?\[(emerg|alert|crit|error)\]", line)]
    return "\n".join(bad or lines).strip() or "nginx -t failed without a message"


# --------------------------------------------------------------------------- files (blocking helpers)


def _write_atomic(path: Path, data: bytes, *, sync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scan of /proc; works for a master we did not start too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


# --------------------------------------------------------------------------- the adapter


class NginxProxy:
    """One private Nginx under ``prefix``; see the module docstring for the files and the protocol."""

    def __init__(self, prefix: str | os.PathLike[str], *, listen_address: str = "127.0.0.1",
                 worker_processes: int = 2, confirm_timeout: float = 5.0, shared_dict_size: str = "64m",
                 user: str | None = "www-data", upstream_keepalive: int = 256,
                 retest_on_apply: bool = True, nginx_bin: str | None = None) -> None:
        self.prefix = Path(prefix).absolute()
        if not _PREFIX_PATH.match(str(self.prefix)) or len(str(self.prefix / SINK)) > 100:
            raise ValueError(f"prefix {self.prefix} must be a plain path ([A-Za-z0-9._/-]) short enough "
                             "for a unix socket path (sun_path)")
        self.listen_address = str(ipaddress.ip_address(listen_address))
        self.worker_processes = worker_processes
        self.confirm_timeout = confirm_timeout
        if not re.fullmatch(r"[0-9]{1,6}[km]", shared_dict_size):
            raise ValueError(f"shared_dict_size {shared_dict_size!r} is not like '64m'")
        self.shared_dict_size = shared_dict_size
        self.user = user if os.geteuid() == 0 else None  # a non-root master cannot switch users
        self.upstream_keepalive = upstream_keepalive
        # False: apply() skips its own nginx -t (the agent has just run test()); a config the
        # master then refuses is caught from its [emerg] and rolled back like any failed reload.
        self.retest_on_apply = retest_on_apply
        self._nginx_bin = nginx_bin
        self._modules: list[str] = []
        self._live: dict[str, Domain] = {}  # domains in force, upstreams = the current snapshot
        self._loaded = False
        self._generation = 0
        self._reloads = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ facts

    @property
    def conf(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    @property
    def domains_dir(self) -> Path:
        return self.prefix / "domains"

    @property
    def state_path(self) -> Path:
        return self.prefix / "state.json"

    @property
    def admin_socket(self) -> Path:
        """The admin endpoint's unix socket (in a directory only this process's user may enter)."""
        return self.prefix / ADMIN_SOCKET

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def generation(self) -> int:
        """The generation last rendered into conf/nginx.conf (served once confirmed)."""
        return self._generation

    @property
    def master_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._adopted_pid is not None and _alive(self._adopted_pid):
            return self._adopted_pid
        return None

    @property
    def running(self) -> bool:
        return self.master_pid is not None

    def domain_path(self, name: str) -> Path:
        return self.domains_dir / f"{name}.conf"

    def live_domains(self) -> dict[str, Domain]:
        """The domains in force, with their current upstreams (a copy)."""
        return dict(self._live)

    def worker_pids(self) -> list[int]:
        pid = self.master_pid
        return _children(pid) if pid else []

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.error_log, lines, "nginx error")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start Nginx on the prefix (or adopt the one already running there) and push the upstreams.

        The domains in force are read back from ``domains/*.conf``; their upstreams come
        from this adapter's snapshot or, for a fresh adapter, from ``state.json``.
        """
        async with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            await asyncio.to_thread(self._prepare)
            pid = await asyncio.to_thread(self._running_pid)
            if pid is not None:
                self._adopted_pid = pid
                served = await self._served_generation()
                if served is None:
                    raise ProxyError(f"nginx (pid {pid}) runs on {self.prefix} but its admin endpoint on "
                                     f"{self.admin_socket} does not answer")
                self._generation = max(self._generation, served[0])
                present = await self.served_upstreams()
                await self._push({n: d.upstreams for n, d in self._live.items() if n not in present})
                return
            self._generation += 1
            await asyncio.to_thread(self._write_main, self._generation, self._live)
            error = await self._nginx_t(self.prefix)
            if error is not None:
                raise ProxyError(f"nginx refuses the configuration in {self.prefix}:\n{error}")
            for stale in (SINK, ADMIN_SOCKET):  # left by a master that was killed: nginx would not bind
                with contextlib.suppress(FileNotFoundError):
                    (self.prefix / stale).unlink()
            await asyncio.to_thread(self._spawn)
            await self._wait_started()
            with contextlib.suppress(OSError):  # nginx made it 0666; the 0700 directory is what guards it
                os.chmod(self.admin_socket, 0o600)
            await self._push({n: d.upstreams for n, d in self._live.items()})

    async def stop(self) -> None:
        """Stop Nginx gracefully (SIGQUIT, then SIGTERM, then SIGKILL). The files stay."""
        async with self._lock:
            await asyncio.to_thread(self._terminate)

    def _prepare(self) -> None:
        self._nginx_bin = self._nginx_bin or find_nginx()
        self._modules = find_modules()
        for sub in ("conf", "domains", "lua", "logs", "temp", "scratch"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        admin = self.prefix / ADMIN_DIR
        admin.mkdir(mode=0o700, exist_ok=True)
        if admin.is_symlink() or not admin.is_dir():
            raise ProxyError(f"{admin} must be a directory (it holds the admin socket)")
        os.chmod(admin, 0o700)  # also when an older version left it wider
        self._check_traversable()
        lua = self.prefix / "lua" / "leengine.lua"
        if _read_or_none(lua) != LEENGINE_LUA.encode():
            _write_atomic(lua, LEENGINE_LUA.encode())
        for stale in (self.prefix / "scratch").iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        if not self._loaded:
            self._load_tree()

    def _check_traversable(self) -> None:
        # Workers run as ``user`` and open temp files under the prefix: every directory on
        # the way must let them through (mkdtemp and pytest's tmp dirs are 0700).
        if self.user is None:
            return
        try:
            uid = pwd.getpwnam(self.user).pw_uid
        except KeyError:
            raise ProxyError(f"worker user {self.user!r} does not exist (pass user=… to NginxProxy)") from None
        for directory in [self.prefix, *self.prefix.parents]:
            st = directory.stat()
            if st.st_uid != uid and not st.st_mode & 0o001:
                raise ProxyError(f"{directory} is not traversable by nginx's worker user {self.user!r} "
                                 f"(mode {st.st_mode & 0o777:o}): choose a prefix under a world-searchable "
                                 "directory or pass user=…")

    def _load_tree(self) -> None:
        """Read the domains in force back from their files, the generation from the main config."""
        head = _read_or_none(self.conf)
        match = _GENERATION_LINE.match(head or b"")
        self._generation = int(match.group(1)) if match else 0
        live: dict[str, Domain] = {}
        for path in sorted(self.domains_dir.glob("*.conf")):
            first = path.read_text(errors="replace").partition("\n")[0]
            if not first.startswith(_DOMAIN_LINE):
                raise ProxyError(f"{path} has no '{_DOMAIN_LINE.strip()}' header: not written by NginxProxy")
            try:
                domain = Domain.from_bytes(first[len(_DOMAIN_LINE):].encode())
            except (ValueError, DomainError) as exc:
                raise ProxyError(f"{path}: invalid domain header: {exc}") from None
            if path.name != f"{domain.name}.conf":
                raise ProxyError(f"{path} holds domain {domain.name}")
            live[domain.name] = domain
        saved = self._read_state()
        for name, domain in live.items():
            if name in saved.domains:
                live[name] = domain.with_upstreams(saved.domains[name].upstreams)
        self._live = live
        self._loaded = True

    def _running_pid(self) -> int | None:
        """The pid of an nginx master already serving this prefix (from its pid file), if any."""
        raw = _read_or_none(self.prefix / "logs" / "nginx.pid")
        if raw is None or not raw.strip().isdigit():
            return None
        pid = int(raw.strip())
        command = _cmdline(pid)
        if _alive(pid) and "nginx" in command and str(self.prefix) in command:
            return pid
        return None

    def _command(self, prefix: Path, *extra: str) -> list[str]:
        assert self._nginx_bin is not None
        return [self._nginx_bin, "-p", f"{prefix}/", "-c", "conf/nginx.conf", *extra]

    def _spawn(self) -> None:
        with (self.prefix / "logs" / "nginx.stderr").open("ab") as out:
            self._proc = subprocess.Popen(self._command(self.prefix), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=out, start_new_session=True)  # a Ctrl-C must not reach nginx
        self._adopted_pid = None

    async def _wait_started(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ProxyError(f"nginx exited with code {self._proc.returncode} while starting on "
                                 f"{self.prefix}; log tail:\n{self.log_tail()}")
            served = await self._served_generation()
            # All workers forked, not just the one that answered: the first reload's confirmation
            # waits for the workers listed before its HUP, and one forked later would be missed.
            if served is not None and served[0] == self._generation and len(
                    await asyncio.to_thread(_children, self._proc.pid)) >= self.worker_processes:
                return
            if loop.time() > deadline:
                await asyncio.to_thread(self._terminate)
                raise ProxyError(f"nginx on {self.prefix} did not answer on {self.admin_socket} "
                                 f"within {START_TIMEOUT:.0f}s; log tail:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    def _terminate(self) -> None:
        pid = self.master_pid
        proc, self._proc, self._adopted_pid = self._proc, None, None
        if pid is None:
            return
        for sig, wait in ((signal.SIGQUIT, STOP_TIMEOUT), (signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped master would not act on the signal
                os.kill(pid, sig)
            if proc is not None:
                try:
                    proc.wait(wait)
                    return
                except subprocess.TimeoutExpired:
                    continue
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.02)

    # ------------------------------------------------------------------ admin endpoint

    async def _admin(self, method: str, path: str, body: bytes = b"", timeout: float = ADMIN_TIMEOUT,
                     ) -> tuple[int, bytes]:
        async def exchange() -> tuple[int, bytes]:
            reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
            try:
                writer.write(f"{method} {path} HTTP/1.0\r\nHost: leengine-admin\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            head, _, payload = raw.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)
            if len(status) < 2 or not status[1].isdigit():
                raise ProxyError(f"admin endpoint {self.admin_socket} answered {raw[:80]!r}")
            return int(status[1]), payload

        return await asyncio.wait_for(exchange(), timeout)

    async def _served_generation(self) -> tuple[int, int] | None:
        """(generation, worker pid) of the worker that answers, or None when none does."""
        try:
            status, payload = await self._admin("GET", "/generation", timeout=0.5)
            data = json.loads(payload)
            return (int(data["generation"]), int(data["pid"])) if status == 200 else None
        except (OSError, TimeoutError, ProxyError, ValueError, KeyError):
            return None

    async def served_generation(self) -> tuple[int, int] | None:
        """What the worker answering the admin endpoint serves: (generation, its pid)."""
        return await self._served_generation()

    async def served_upstreams(self) -> dict[str, tuple[Upstream, ...]]:
        """The shared dict as the workers see it."""
        status, payload = await self._admin("GET", "/upstreams")
        if status != 200:
            raise ProxyError(f"admin GET /upstreams answered {status}: {payload[:200]!r}")
        return {name: tuple(Upstream.parse(s) for s in servers) for name, servers in json.loads(payload).items()}

    async def request_counts(self) -> dict[tuple[str, str], RequestCounts]:
        """(domain, version) -> responses by status class and their seconds, since this Nginx started.

        Read from the workers' shared dict; a line that does not parse (nothing but our Lua
        writes the dict, but a name or a number is never trusted blindly) is skipped.
        """
        try:
            status, payload = await self._admin("GET", "/requests")
        except (OSError, TimeoutError) as exc:
            raise ProxyError(f"admin endpoint {self.admin_socket} unreachable: {exc!r}") from None
        if status != 200:
            raise ProxyError(f"admin GET /requests answered {status}: {payload[:200]!r}")
        return parse_request_counts(payload.decode(errors="replace"))

    async def _push(self, upstreams: Mapping[str, tuple[Upstream, ...]]) -> None:
        if not upstreams:
            return
        if len(upstreams) == 1:
            ((name, servers),) = upstreams.items()
            path, body = f"/upstreams/{name}", json.dumps([str(s) for s in servers])
        else:
            path, body = "/upstreams", json.dumps({n: [str(s) for s in ss] for n, ss in upstreams.items()})
        try:
            status, payload = await self._admin("PUT", path, body.encode(), timeout=max(ADMIN_TIMEOUT, 10.0))
        except (OSError, TimeoutError) as exc:
            raise ProxyError(f"admin endpoint {self.admin_socket} unreachable: {exc!r}") from None
        if status != 200:
            raise ProxyError(f"admin PUT {path} answered {status}: {payload.decode(errors='replace').strip()}")

    async def _forget(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(OSError, TimeoutError, ProxyError):
                await self._admin("DELETE", f"/upstreams/{name}")

    # ------------------------------------------------------------------ the port

    async def set_upstreams(self, domain: str, servers: tuple[Upstream, ...]) -> None:
        async with self._lock:
            live = self._live.get(domain)
            if live is None:
                raise ProxyError(f"domain {domain} is not configured on this nginx ({self.prefix})")
            if not self.running:
                raise ProxyError(f"nginx on {self.prefix} is not running")
            new = live.with_upstreams(servers)
            revalidate(domain, new)
            await self._push({domain: new.upstreams})
            self._live[domain] = new

    async def test(self, changes: Mapping[str, Domain | None]) -> str | None:
        async with self._lock:
            if not self._loaded:
                await asyncio.to_thread(self._prepare)
            try:
                checked = self._check(changes)
            except ProxyError as exc:
                return str(exc)
            new_live = with_changes(self._live, checked)
            busy = await asyncio.to_thread(self._ports_taken, new_live)
            if busy:
                return busy
            scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="t-", dir=self.prefix / "scratch"))
            try:
                await asyncio.to_thread(self._build_scratch, scratch, checked, new_live)
                return await self._nginx_t(scratch)
            except OSError as exc:  # a file that cannot be written is this change's fault, not the agent's
                return f"cannot render the configuration: {exc}"
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def apply(self, changes: Mapping[str, Domain | None]) -> ReloadOutcome:
        async with self._lock:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if not self.running:
                raise ProxyError(f"nginx on {self.prefix} is not running")
            checked = self._check(changes)
            old_live, new_live = dict(self._live), with_changes(self._live, checked)
            generation = self._generation + 1
            files = {self.domain_path(n): None if d is None else self._render(d) for n, d in checked.items()}
            files[self.conf] = self._render_main(generation, new_live).encode()
            backup = await asyncio.to_thread(self._write_files, files)
            error = await self._nginx_t(self.prefix) if self.retest_on_apply else None
            if error is not None:
                await asyncio.to_thread(self._restore, backup)
                raise ProxyError(error)
            # Upstreams first: the shared dict survives the reload, so the new workers find them.
            await self._push({n: d.upstreams for n, d in checked.items() if d is not None})
            try:
                await self._reload_and_confirm(generation)
            except ReloadFailed as exc:
                raise await self._roll_back(backup, old_live, checked, exc) from None
            self._generation = generation
            self._live = new_live
            await self._forget(n for n, d in checked.items() if d is None and n in old_live)
            return ReloadOutcome(generation, loop.time() - started, len(new_live))

    async def load_state(self) -> SavedState:
        return await asyncio.to_thread(self._read_state)

    async def save_state(self, state: SavedState) -> None:
        data = {"revision": int(state.revision),
                "domains": {name: revalidate(name, d).to_json() for name, d in sorted(state.domains.items())}}
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        self.prefix.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_write_atomic, self.state_path, raw, sync=True)

    async def reloads(self) -> int:
        return self._reloads

    # ------------------------------------------------------------------ internals

    def _check(self, changes: Mapping[str, Domain | None]) -> dict[str, Domain | None]:
        checked: dict[str, Domain | None] = {}
        for name in sorted(changes):
            domain = changes[name]
            if domain is None:
                try:
                    check_domain_name(name)
                except DomainError as exc:
                    raise ProxyError(f"cannot remove {name!r}: {exc}") from None
                checked[name] = None
                continue
            checked[name] = revalidate(name, domain)
        return checked

    def _render(self, domain: Domain) -> bytes:
        return render_domain(domain, self.listen_address).encode()

    def _render_main(self, generation: int, live: Mapping[str, Domain]) -> str:
        return render_main(generation, prefix=self.prefix,
                           listen_address=self.listen_address, keepalive=self.upstream_keepalive,
                           ports=(d.listen for d in live.values()), modules=self._modules,
                           worker_processes=self.worker_processes, user=self.user,
                           shared_dict_size=self.shared_dict_size)

    def _write_main(self, generation: int, live: Mapping[str, Domain]) -> None:
        _write_atomic(self.conf, self._render_main(generation, live).encode())

    def _write_files(self, files: Mapping[Path, bytes | None]) -> dict[Path, bytes | None]:
        """Write (None: delete) each file atomically; return what was there before."""
        backup: dict[Path, bytes | None] = {}
        try:
            for path, data in files.items():
                backup[path] = _read_or_none(path)
                if data is None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                else:
                    _write_atomic(path, data)
        except OSError as exc:
            self._restore(backup)
            raise ProxyError(f"cannot write the configuration in {self.prefix}: {exc}") from None
        return backup

    def _restore(self, backup: Mapping[Path, bytes | None]) -> None:
        for path, data in backup.items():
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                _write_atomic(path, data)

    def _ports_taken(self, new_live: Mapping[str, Domain]) -> str | None:
        """nginx -t does not bind: try each listen address the change adds, as nginx would bind it."""
        in_force = {d.listen for d in self._live.values()} if self.running else set()
        family = socket.AF_INET6 if ":" in self.listen_address else socket.AF_INET
        for port in sorted({d.listen for d in new_live.values()} - in_force):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.listen_address, port))
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                        users = sorted(n for n, d in new_live.items() if d.listen == port)
                        return (f"[emerg] bind() to {_listen(self.listen_address, port)} failed "
                                f"({exc.errno}: {exc.strerror}) for {', '.join(users)}")
                    raise
        return None

    def _build_scratch(self, scratch: Path, checked: Mapping[str, Domain | None],
                       new_live: Mapping[str, Domain]) -> None:
        for sub in ("conf", "domains", "lua", "logs", "temp"):
            (scratch / sub).mkdir()
        os.link(self.prefix / "lua" / "leengine.lua", scratch / "lua" / "leengine.lua")
        (scratch / "conf" / "nginx.conf").write_text(self._render_main(self._generation + 1, new_live))
        for path in self.domains_dir.glob("*.conf"):
            if path.name[: -len(".conf")] not in checked:
                os.link(path, scratch / "domains" / path.name)
        for name, domain in checked.items():
            if domain is not None:
                (scratch / "domains" / f"{name}.conf").write_bytes(self._render(domain))

    async def _nginx_t(self, prefix: Path) -> str | None:
        """Run ``nginx -t -q`` on a prefix; None when it passes, else what it said."""
        proc = await asyncio.create_subprocess_exec(*self._command(prefix, "-t", "-q"), stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return None
        return _nginx_errors(out.decode(errors="replace"), prefix, self.prefix)

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_emergencies(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as f:
                f.seek(offset)
                new = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(re.sub(r"^\S+ \S+ \[emerg\] \d+#\d+: ", "[emerg] ", line)
                         for line in new.splitlines() if "[emerg]" in line)

    async def _reload_and_confirm(self, generation: int, *, fail_fast: bool = True) -> None:
        """SIGHUP the master; return once ``generation`` answers and no old worker still accepts.

        ``fail_fast``: an ``[emerg]`` logged after the HUP fails at once (off for a rollback:
        the master may still be logging the failed reload it is retrying).
        """
        pid = self.master_pid
        if pid is None:
            raise ReloadFailed(f"nginx on {self.prefix} is not running")
        offset, old_workers = await asyncio.to_thread(lambda: (self._log_size(), _children(pid)))
        os.kill(pid, signal.SIGHUP)
        self._reloads += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.confirm_timeout
        served: tuple[int, int] | None = None
        while True:
            emergencies = await asyncio.to_thread(self._log_emergencies, offset) if fail_fast else ""
            if emergencies:
                raise ReloadFailed(f"nginx refused generation {generation} at reload:\n{emergencies}")
            if not _alive(pid):
                raise ReloadFailed(f"nginx master {pid} exited during the reload; log tail:\n{self.log_tail()}")
            served = await self._served_generation()
            if served is not None and served[0] == generation and await asyncio.to_thread(
                    self._old_workers_retired, old_workers):
                return
            if loop.time() > deadline:
                seen = "no answer" if served is None else f"generation {served[0]} (worker {served[1]})"
                raise ReloadFailed(f"generation {generation} not confirmed within {self.confirm_timeout:g}s: "
                                   f"the admin endpoint answers {seen}")
            await asyncio.sleep(POLL)

    @staticmethod
    def _old_workers_retired(old_workers: list[int]) -> bool:
        # A worker told to quit renames itself "worker process is shutting down" and closes
        # its listening sockets at once; from then on only new workers accept connections.
        # An idle one exits right away: while it exits and as a zombie (until the master reaps
        # it) its cmdline reads empty, so "worker" is missing from it: retired too.
        return all(not _alive(w) or "shutting down" in _cmdline(w) or "worker" not in _cmdline(w)
                   for w in old_workers)

    async def _roll_back(self, backup: Mapping[Path, bytes | None], old_live: dict[str, Domain],
                         checked: Mapping[str, Domain | None], cause: ReloadFailed) -> ReloadFailed:
        """Put the old files back under a fresh generation, reload, confirm (best effort)."""
        generation = self._generation + 2  # never reuse the generation that failed
        restore = dict(backup)
        restore[self.conf] = self._render_main(generation, old_live).encode()
        await asyncio.to_thread(self._restore, restore)
        self._generation = generation
        self._live = old_live
        note = f"rolled back to the previous configuration (generation {generation})"
        # The dict is shared by every generation: put back the upstreams the new config brought.
        with contextlib.suppress(ProxyError):
            await self._push({n: old_live[n].upstreams for n in checked if n in old_live})
        await self._forget(n for n in checked if n not in old_live)
        try:
            await self._reload_and_confirm(generation, fail_fast=False)
        except ReloadFailed as again:
            note += f", not yet confirmed: {again}"
        return ReloadFailed(f"{cause}\n{note}")

    def _read_state(self) -> SavedState:
        raw = _read_or_none(self.state_path)
        if raw is None:
            return SavedState()
        try:
            data = load_json(raw)  # a corrupt file is a typed error, even when nested too deeply for json
            revision = int(data["revision"])
            domains = {}
            for name, item in data["domains"].items():
                domain = Domain.parse(item)
                if domain.name != name:
                    raise ValueError(f"domain {domain.name} saved under {name}")
                domains[name] = domain
        except (ValueError, KeyError, TypeError, AttributeError, DomainError) as exc:
            raise ProxyError(f"{self.state_path} is not a saved state: {exc}") from None
        return SavedState(revision, domains)
