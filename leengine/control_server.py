"""``leengine-control``: the control service's gRPC server (slb-core, builds, the platform).

    leengine-control --tokens /etc/leengine/tokens [--listen 127.0.0.1:50051] [--etcd 127.0.0.1:2379] \\
        [--tls-cert server.crt --tls-key server.key [--tls-client-ca clients-ca.crt]] \\
        [--etcd-ca etcd-ca.crt --etcd-cert control.crt --etcd-key control.key] \\
        [--cells cells.yaml [--api-timeout 10] [--reconcile-seconds 30]] \\
        [--http-address 127.0.0.1:5001 [--registry-key token.key --registry-cert token.crt \\
         --registry-service leengine-registry --registry-issuer leengine-control --registry-token-lifetime 300]]

It wires the real adapters (etcd Store, asyncio Runtime) to the service logic
(``control/slb_core.py``) and serves ``leengine.control.v1.SlbCore``
(control/protos/leengine/control/v1/slb.proto) on a ``grpc.aio`` server, together
with ``grpc.health.v1.Health`` (SERVING once it listens) and server reflection; also
``leengine.control.v1.Builds`` and ``leengine.control.v1.Platform`` (apps, versions, members,
activity, daily counts: ``leengine/platform_service.py``; its apps calls need ``--cells FILE``,
each Cell's Kubernetes API in discovery's config shape, and answer FAILED_PRECONDITION without it).

* Authentication: every SlbCore call needs metadata ``authorization: Bearer <token>``;
  a missing, malformed or unknown token is UNAUTHENTICATED. Health and reflection are
  open (probes and tools carry no token). Tokens come from ``--tokens FILE``: lines
  ``token name role`` (``control/auth.py``), refused when its mode gives its group or
  others any right (600 or stricter) or when it belongs to neither the server's user
  nor root. Failed authentications are logged (peer, method, never the token).
* Errors: slb-core's and the build service's typed errors are the control port's, each naming its
  status code (``ControlError.code``, one table ``STATUS``);
  INVALID_ARGUMENT's details start with the field and the field is also sent as
  trailing metadata ``leengine-field``; an unreachable etcd is UNAVAILABLE.
* HTTP: ``--http-address HOST:PORT`` serves ``leengine/control_http.py`` beside gRPC: the registry's
  token endpoint ``GET /token`` (with ``--registry-key``, made by ``leengine registry-key``; the
  registry's ``auth.token`` section names the same service, issuer and certificate: docs/registry.md)
  and GitLab's ``POST /hooks/gitlab``. Plaintext only on loopback; with ``--tls-cert/--tls-key``, HTTPS.
* Tests embed it with ``await start(store, tokens)`` → a ``ControlServer`` holding the
  bound port; ``await server.stop()``. ``listen`` port 0 picks a free port.
* Limits (``ServerLimits``, docs/slb.md "Limits and quotas"): gRPC's message sizes and
  a cap on concurrent calls are set deliberately, slb-core's quotas per role come from
  ``--user-quota/--admin-quota``; error details and log lines carry at most
  ``MAX_DETAILS`` characters of any message (a caller's 1 MB field is not echoed back);
  failed authentications are logged, at most ``AUTH_LOG_BURST`` lines a minute.

* TLS: with ``--tls-cert/--tls-key`` (PEM, the key matching the certificate) the server
  speaks only TLS; ``--tls-client-ca`` also demands a client certificate signed by that
  CA. Tokens are bearer secrets: without TLS they would cross the network in clear, so
  plaintext is served only on loopback (the default ``--listen``, for development), and
  a non-loopback ``--listen`` without a certificate is refused (``start()`` refuses it too).
* etcd: ``--etcd-ca/--etcd-cert/--etcd-key`` (``leengine/etcd_options.py``).
* Metrics: ``--metrics-address HOST:PORT`` (off by default; ``leengine/metrics_option.py``)
  serves ``/metrics``: every SlbCore and Builds call answered, by method (the RPC's name,
  a fixed set) and status code name (``leengine_control_rpcs_total``; UNAUTHENTICATED
  included, the caller's identity never), the build queue and tasks moved by the
  reassigner, etcd errors. Health and reflection calls are not counted. A port that
  cannot be bound stops the server at start in one line.

Bad options are one line on stderr naming the flag, and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control import builds, slb_core
from control.auth import Principal, TokenTable, TokenTableError
from foundation.ports import Runtime, Store, StoreError, StoreUnavailable
from foundation.ports import control as control_port
from foundation.ports.control import StoredDomain
from foundation.ports.metrics import (
    BUILD_TASKS_MOVED,
    BUILD_TASKS_QUEUED,
    BUILD_TASKS_RUNNING,
    CONTROL_RPCS,
    ETCD_ERRORS,
    NO_METRICS,
    MetricDef,
    Metrics,
)
from foundation.ports.workloads import Workloads
from leengine.command import BadInput, Failed, LogLevelOpt, configure_logging, run_app
from leengine.control_http import (
    DEFAULT_ISSUER,
    DEFAULT_SERVICE,
    HttpServer,
    HttpSettings,
    TokenIssuer,
    make_app,
    new_hooks,
    start_http,
)
from leengine.daemon import connect_until_stopped, run_daemon, stop_on_signals
from leengine.etcd_options import (
    DEFAULT_ETCD,
    DEFAULT_TIMEOUT,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdClientTls,
    EtcdKeyOpt,
    EtcdOpt,
    EtcdSettings,
    EtcdTimeoutOpt,
    check_certificates,
    new_store,
    read_key_pair,
    read_pem,
)
from leengine.metrics_option import MetricsAddressOpt, metrics_served, record_daemon_info
from leengine.platform_service import (
    DEFAULT_RECONCILE_PERIOD,
    PLATFORM_SERVICE,
    CellsFileError,
    add_to_server,
    cell_workloads,
    close_workloads,
    hook_url,
    load_cells,
    platform_forever,
)
from leengine.secret_files import SecretFileError, read_secret_file

try:
    from control.generated.leengine.control.v1 import builds_pb2, builds_pb2_grpc, slb_pb2, slb_pb2_grpc
except ImportError as exc:  # pragma: no cover - a set-up error, reported plainly
    raise ImportError(f"the generated gRPC code is missing ({exc}): run scripts/build-protos.sh") from exc

log = logging.getLogger("leengine.control")
T = TypeVar("T")
SERVICE = slb_pb2.DESCRIPTOR.services_by_name["SlbCore"].full_name
BUILDS_SERVICE = builds_pb2.DESCRIPTOR.services_by_name["Builds"].full_name
FIELD_METADATA = "leengine-field"
DEFAULT_LISTEN = "127.0.0.1:50051"
# The families a scrape lists from the start (labelled ones get their series with the first event).
FAMILIES: tuple[MetricDef, ...] = (CONTROL_RPCS, BUILD_TASKS_QUEUED, BUILD_TASKS_RUNNING, BUILD_TASKS_MOVED,
                                   ETCD_ERRORS)

# Typed errors of the service logic → gRPC status codes (most specific first).
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    # slb-core's and the build service's errors are the control port's, each naming its status
    # (ControlError.code): one table for both services, the same codes the client adapter maps back.
    *((kind, grpc.StatusCode[kind.code]) for kind in (
        control_port.InvalidArgument, control_port.NotFound, control_port.AlreadyExists,
        control_port.PermissionDenied, control_port.Unauthenticated, control_port.Conflict,
        control_port.FailedPrecondition, control_port.QuotaExceeded, control_port.CorruptRecord,
        control_port.Unavailable, control_port.ControlError)),
    (builds.TaskError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.INTERNAL),
)


# --------------------------------------------------------------------------- tokens


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message says how to fix it."""


MAX_TOKENS_FILE = 1 << 20  # bytes: a token table, not a data set


# --------------------------------------------------------------------------- limits

MAX_DETAILS = 1024  # characters of an error message sent back or logged (gRPC's metadata limit is 8 KiB)
AUTH_LOG_BURST = 10  # failed authentications logged per minute; the rest are counted
DEFAULT_RECEIVE = 4 << 20  # a PutDomain of the largest record, SetUpstreams with 65,536 servers
DEFAULT_SEND = 8 << 20  # a list page stops near 1 MiB; one record is at most etcd's 1.5 MiB
DEFAULT_CONCURRENT_RPCS = 256


@dataclass(frozen=True)
class ServerLimits:
    """The server's gRPC limits and slb-core's quotas (the command's options)."""

    max_receive_bytes: int = DEFAULT_RECEIVE
    max_send_bytes: int = DEFAULT_SEND
    max_concurrent_rpcs: int = DEFAULT_CONCURRENT_RPCS
    quotas: slb_core.Quotas = field(default_factory=slb_core.Quotas)

    def __post_init__(self) -> None:
        for flag, value, low, high in (("--max-receive-bytes", self.max_receive_bytes, 64 << 10, 1 << 30),
                                       ("--max-send-bytes", self.max_send_bytes, 2 << 20, 1 << 30),
                                       ("--max-concurrent-rpcs", self.max_concurrent_rpcs, 1, 100_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{flag} must be a whole number from {low} to {high}, got {slb_core.clip(value)}")

    @property
    def page_bytes(self) -> int:
        # A page stops before this many bytes of records, plus at most one record: a quarter
        # of the send limit leaves room for the largest record etcd stores (1.5 MiB).
        return min(slb_core.PAGE_BYTES, self.max_send_bytes // 4)


class RateLimitedLog:
    """At most ``burst`` warnings per ``window`` seconds; the next one that passes says how many were dropped."""

    def __init__(self, logger: logging.Logger, burst: int, window: float, what: str) -> None:
        self.logger, self.burst, self.window, self.what = logger, burst, window, what
        self.window_start = float("-inf")
        self.logged = 0
        self.suppressed = 0

    def warning(self, message: str, *args: Any) -> bool:
        now = time.monotonic()
        if now - self.window_start >= self.window:
            if self.suppressed:
                self.logger.warning("%d more %s in the last %.0f s were not logged", self.suppressed, self.what,
                                    now - self.window_start)
            self.window_start, self.logged, self.suppressed = now, 0, 0
        if self.logged >= self.burst:
            self.suppressed += 1
            return False
        self.logged += 1
        self.logger.warning(message, *args)
        return True


def load_tokens(path: str | os.PathLike[str]) -> TokenTable:
    """Read and validate the tokens file; refuse one that others may read or write."""
    path = Path(path)
    try:
        raw = read_secret_file(path, what="tokens file", secret="the tokens are secrets",
                               runner="the user running the server", limit=MAX_TOKENS_FILE)
        text = raw.decode("utf-8")
    except SecretFileError as exc:
        raise TokensFileError(str(exc)) from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TokensFileError(f"tokens file {path}:{line}: not UTF-8") from None
    try:
        return TokenTable.parse(text, source=str(path))
    except TokenTableError as exc:
        raise TokensFileError(str(exc)) from None


# --------------------------------------------------------------------------- messages


def location_to_dict(loc: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"path": loc.path or "/", "set_headers": dict(loc.set_headers)}
    if loc.read_timeout:
        data["read_timeout"] = loc.read_timeout
    return data


def domain_to_dict(msg: Any) -> dict[str, Any]:
    """A Domain message as ``slb_domain.Domain.parse`` takes it (proto3 zero values mean the defaults)."""
    data: dict[str, Any] = {"name": msg.name, "group": msg.group, "owner": msg.owner,
                            "settings": dict(msg.settings), "upstreams": list(msg.upstreams)}
    if msg.listen:
        data["listen"] = msg.listen
    if msg.upstreams_by:
        data["upstreams_by"] = msg.upstreams_by
    if msg.locations:
        data["locations"] = [location_to_dict(loc) for loc in msg.locations]
    return data


def domain_to_proto(stored: StoredDomain) -> Any:
    d = stored.domain
    return slb_pb2.Domain(
        name=d.name, group=d.group, owner=d.owner, listen=d.listen,
        locations=[slb_pb2.Location(path=loc.path, read_timeout=loc.read_timeout, set_headers=dict(loc.set_headers))
                   for loc in d.locations],
        settings=dict(d.settings), upstreams=[str(u) for u in d.upstreams], revision=stored.revision,
        upstreams_by=d.upstreams_by)


def group_to_proto(group: slb_core.Group) -> Any:
    return slb_pb2.Group(name=group.name, description=group.description, created_by=group.created_by,
                         created_at=group.created_at, revision=group.revision)


# --------------------------------------------------------------------------- the servicer


class SlbCoreService(slb_pb2_grpc.SlbCoreServicer):
    """Authenticates each call, runs it on ``SlbCore`` and maps the typed errors to status codes."""

    def __init__(self, core: slb_core.SlbCore, tokens: TokenTable, metrics: Metrics = NO_METRICS) -> None:
        self.core = core
        self.tokens = tokens
        self.metrics = metrics
        self.auth_failures = RateLimitedLog(log, AUTH_LOG_BURST, 60.0, "failed authentications")

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str = "") -> Principal:
        values = [v for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            self.auth_failures.warning("%s from %s: UNAUTHENTICATED (%d authorization headers)", method,
                                       slb_core.clip(context.peer()), len(values))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing credentials: send metadata 'authorization: Bearer <token>'")
        scheme, _, token = values[0].strip().partition(" ")
        principal = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            # Never the token itself: a near-miss of a real one would end up in the log.
            self.auth_failures.warning("%s from %s: UNAUTHENTICATED (%s, %d characters)", method,
                                       slb_core.clip(context.peer()),
                                       "unknown token" if scheme.lower() == "bearer" else "not a Bearer token",
                                       len(values[0]))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token (expected 'Bearer <token>')")
        return principal  # type: ignore[return-value]  # not None: context.abort raises (grpc is untyped)

    async def _call(self, context: grpc.aio.ServicerContext, method: str,
                    action: Callable[[Principal], Awaitable[T]]) -> T:
        # The answer's code, counted however the call ends (an abort raises out of here).
        answered = grpc.StatusCode.UNAUTHENTICATED  # what _authenticate aborts with
        try:
            who = await self._authenticate(context, method)
            answered = grpc.StatusCode.UNKNOWN  # an exception nobody mapped: gRPC answers UNKNOWN
            result = await action(who)
            answered = grpc.StatusCode.OK
            return result
        except (control_port.ControlError, builds.TaskError, StoreError) as exc:
            code = next(code for kind, code in STATUS if isinstance(exc, kind))
            answered = code
            trailing: tuple[tuple[str, str], ...] = ()
            if isinstance(exc, control_port.InvalidArgument | builds.TaskError):
                trailing = ((FIELD_METADATA, exc.field),)
            level = logging.WARNING if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE) else logging.INFO
            details = slb_core.clip(str(exc), MAX_DETAILS)  # a caller's huge value must not come back whole
            log.log(level, "%s by %s: %s %s", method, who.name, code.name, details)
            await context.abort(code, details, trailing_metadata=trailing)
            raise  # not reached: abort raises
        except asyncio.CancelledError:  # the caller went away or its deadline passed
            answered = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.inc(CONTROL_RPCS, method=method, code=answered.name)

    async def CreateGroup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return group_to_proto(await self._call(
            context, "CreateGroup", lambda who: self.core.create_group(who, request.name, request.description)))

    async def ListGroups(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        page = await self._call(context, "ListGroups", lambda who: self.core.list_groups_page(
            who, page_size=request.page_size, page_token=request.page_token))
        return slb_pb2.ListGroupsResponse(groups=[group_to_proto(g) for g in page.groups],
                                          next_page_token=page.next_page_token)

    async def DeleteGroup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        revision = await self._call(context, "DeleteGroup", lambda who: self.core.delete_group(who, request.name))
        return slb_pb2.DeleteGroupResponse(revision=revision)

    async def PutDomain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        expected = request.expected_revision if request.HasField("expected_revision") else None
        stored = await self._call(context, "PutDomain", lambda who: self.core.put_domain(
            who, domain_to_dict(request.domain), expected_revision=expected))
        return domain_to_proto(stored)

    async def GetDomain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return domain_to_proto(await self._call(
            context, "GetDomain", lambda who: self.core.get_domain(who, request.group, request.name)))

    async def ListDomains(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        page = await self._call(context, "ListDomains", lambda who: self.core.list_domains_page(
            who, request.group, page_size=request.page_size, page_token=request.page_token))
        return slb_pb2.ListDomainsResponse(domains=[domain_to_proto(d) for d in page.domains],
                                           revision=page.revision, next_page_token=page.next_page_token)

    async def DeleteDomain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        expected = request.expected_revision if request.HasField("expected_revision") else None
        revision = await self._call(context, "DeleteDomain", lambda who: self.core.delete_domain(
            who, request.group, request.name, expected_revision=expected))
        return slb_pb2.DeleteDomainResponse(revision=revision)

    async def SetUpstreams(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        revision = await self._call(context, "SetUpstreams", lambda who: self.core.set_upstreams(
            who, request.group, request.domain, list(request.servers)))
        return slb_pb2.SetUpstreamsResponse(revision=revision)

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        report = await self._call(context, "GetStatus", lambda who: self.core.get_status(
            who, request.group, request.domain, registered=True))
        return slb_pb2.GetStatusResponse(revision=report.revision, hosts=[
            slb_pb2.HostStatus(host=h.host, applied_revision=h.applied_revision, wanted_revision=h.wanted_revision,
                               error=h.error, at=h.at) for h in report.hosts], registered_hosts=report.registered)


def build_to_proto(state: builds.BuildState) -> Any:
    result = state.result
    return builds_pb2.Build(
        task=state.task, state=state.state, host=state.host, attempt=state.attempt, submitted_at=state.submitted_at,
        steps=[builds_pb2.Step(name=n, seconds=t) for n, t in state.steps],
        image=result.image if result else "", cache_hit=bool(result and result.cache_hit),
        error=result.error if result else "", finished_at=result.finished_at if result else 0.0,
        log=list(result.log) if result else [])


class BuildsService(builds_pb2_grpc.BuildsServicer):
    """The build farm's calls, authenticated and mapped like slb-core's (one ``_call``)."""

    def __init__(self, service: builds.BuildService, calls: SlbCoreService) -> None:
        self.service = service
        self._call = calls._call

    async def SubmitBuild(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return build_to_proto(await self._call(context, "SubmitBuild", lambda who: self.service.submit(
            who, request.app, request.commit, request.repo)))

    async def GetBuild(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return build_to_proto(await self._call(context, "GetBuild", lambda who: self.service.get(
            who, request.app, request.commit)))

    async def ListBuildAgents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        hosts = await self._call(context, "ListBuildAgents", self.service.agents)
        return builds_pb2.ListBuildAgentsResponse(hosts=hosts)


# --------------------------------------------------------------------------- the server


@dataclass
class ControlServer:
    """A running control server: ``port`` is the bound port; ``stop()`` ends it."""

    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health's aio HealthServicer
    reassigner: asyncio.Task[None] | None = None  # moves build tasks off dead build hosts
    reconciler: asyncio.Task[None] | None = None  # brings every Cell to the apps' records (with Cells)
    http: HttpServer | None = None  # /token and /hooks/gitlab (--http-address; leengine/control_http.py)

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.health.enter_graceful_shutdown()  # probes see NOT_SERVING while calls drain
        if self.http is not None:
            await self.http.stop()
        for task in (self.reassigner, self.reconciler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def check_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen must look like host:port (port 0-65535), got {listen!r}")
    return host, int(port)


def check_http(http: HttpSettings) -> None:
    """``--http-address`` is host:port; plaintext only on loopback (Basic credentials carry bearer tokens)."""
    try:
        host, _ = check_listen(http.address)
    except ValueError:
        raise ValueError(f"--http-address must look like host:port (port 0-65535), got {http.address!r}") from None
    if http.ssl_context is None and not _is_loopback(host):
        raise ValueError(f"--http-address {host} is not loopback: serving it needs TLS (--tls-cert and --tls-key), "
                         "the token requests carry bearer tokens and secrets")


def check_plaintext(host: str, tls: ServerTls | None) -> None:
    """Refuse plaintext anywhere but loopback: the bearer tokens would cross the network in clear."""
    if tls is None and not _is_loopback(host):
        raise ValueError(f"--listen {host} is not loopback: serving it needs TLS (--tls-cert and --tls-key), "
                         "the bearer tokens would cross the network in clear")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, repr=False)
class ServerTls:
    """PEM bytes of the server's certificate and key, and the CA of the clients (None: no client certificates)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def __repr__(self) -> str:  # never print a private key into a log
        return f"ServerTls(client_ca={self.client_ca is not None})"

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def load_server_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
    """``--tls-cert/--tls-key/--tls-client-ca`` read and checked (None: plaintext); ValueError names the flag."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: client certificates need TLS")
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise ValueError(f"{given} needs {missing}: give both or neither")
    cert_pem, key_pem = read_key_pair("--tls-cert", cert, "--tls-key", key)
    ca_pem = None
    if client_ca is not None:
        ca_pem = read_pem("--tls-client-ca", client_ca)
        check_certificates("--tls-client-ca", client_ca, ca_pem)
    return ServerTls(cert_pem, key_pem, ca_pem)


async def start(store: Store, tokens: TokenTable, *, listen: str = "127.0.0.1:0",
                runtime: Runtime | None = None, tls: ServerTls | None = None,
                limits: ServerLimits | None = None, metrics: Metrics = NO_METRICS,
                cells: Mapping[str, Workloads] | None = None,
                reconcile_period: float | None = DEFAULT_RECONCILE_PERIOD,
                http: HttpSettings | None = None) -> ControlServer:
    """Serve slb-core on ``listen`` over ``store`` (which the caller owns and closes); TLS with ``tls``;
    RPCs and the build queue recorded in ``metrics``; the platform's apps over ``cells`` (the Workloads
    of each Cell, owned by the caller; None: apps calls answer FAILED_PRECONDITION), reconciled every
    ``reconcile_period`` seconds (None: only by the calls themselves, for tests that count writes); the
    HTTP app (registry tokens, GitLab hooks) on ``http.address`` when ``http`` is given."""
    from foundation.adapters.asyncio_runtime import AsyncioRuntime

    host, _ = check_listen(listen)
    check_plaintext(host, tls)
    if http is not None:
        check_http(http)
    limits = limits or ServerLimits()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.max_receive_bytes),
                                      ("grpc.max_send_message_length", limits.max_send_bytes)],
                             maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
    runtime = runtime or AsyncioRuntime()
    core = slb_core.SlbCore(store, runtime, quotas=limits.quotas, page_bytes=limits.page_bytes)
    slb_service = SlbCoreService(core, tokens, metrics)
    slb_pb2_grpc.add_SlbCoreServicer_to_server(slb_service, server)
    scheduler = builds.BuildScheduler(store, runtime, metrics=metrics)
    builds_pb2_grpc.add_BuildsServicer_to_server(BuildsService(builds.BuildService(scheduler), slb_service), server)
    platform = add_to_server(server, store, runtime, slb_service._call, cells, core,
                             hook_url(http.address, http.ssl_context is not None) if http is not None else "")
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, BUILDS_SERVICE, PLATFORM_SERVICE, health.SERVICE_NAME,
                                         reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(listen) if tls is None else server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {listen} (address in use or not local?)")
    await server.start()
    for name in ("", SERVICE, BUILDS_SERVICE, PLATFORM_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s and %s on %s:%d (%s, %d principals)", SERVICE, BUILDS_SERVICE, host, port,
             "plaintext" if tls is None else "TLS" + (" with client certificates" if tls.client_ca else ""),
             len(tokens))
    log.info("serving %s (%s)", PLATFORM_SERVICE,
             f"Cells {', '.join(sorted(cells))}" if cells else "no Cells: apps calls refused, see --cells")
    served_http = None
    if http is not None:
        try:
            served_http = await start_http(make_app(store, runtime, tokens, http.issuer,
                                                    new_hooks(store, runtime, scheduler)),
                                           http.address, http.ssl_context)
        except OSError as exc:
            await server.stop(None)
            raise OSError(f"--http-address: cannot listen on {http.address}: {exc.strerror or exc}") from None
        log.info("serving HTTP on %s:%d (%s; %s)", http.address.rpartition(":")[0], served_http.port,
                 "plaintext" if http.ssl_context is None else "TLS",
                 "registry tokens for " + repr(http.issuer.service) if http.issuer else "no /token: no --registry-key")
    reassigner = asyncio.create_task(scheduler.reassign_forever(), name="build-reassigner")
    reconciler = None
    if platform.apps is not None and reconcile_period is not None:
        reconciler = asyncio.create_task(platform_forever(platform, reconcile_period), name="apps-reconciler")
    return ControlServer(server, port, health_servicer, reassigner, reconciler, served_http)


async def serve(*, listen: str, etcd: str, tokens: TokenTable, etcd_timeout: float = 5.0,
                stop: asyncio.Event | None = None, tls: ServerTls | None = None,
                etcd_tls: EtcdClientTls | None = None, limits: ServerLimits | None = None,
                metrics: Metrics = NO_METRICS, cells: Mapping[str, Mapping[str, str]] | None = None,
                api_timeout: float = 10.0, reconcile_period: float = DEFAULT_RECONCILE_PERIOD,
                http: HttpSettings | None = None) -> None:
    """Open etcd (retrying while it is down), serve until SIGINT/SIGTERM or ``stop``, shut down cleanly;
    ``cells`` (``load_cells``' answer) get a Kubernetes client each."""
    stop = stop or stop_on_signals()
    store = new_store(etcd, etcd_tls, timeout=etcd_timeout)
    workloads = cell_workloads(cells, timeout=api_timeout) if cells else None
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        server = await start(store, tokens, listen=listen, tls=tls, limits=limits, metrics=metrics,
                             cells=workloads, reconcile_period=reconcile_period, http=http)
        try:
            await stop.wait()
        finally:
            await server.stop()
    finally:
        if workloads:
            await close_workloads(workloads)
        await store.close()


# --------------------------------------------------------------------------- the command


MAX_KEY_FILE = 64 << 10  # bytes: one PEM private key


def http_settings(address: str, key: Path | None, cert: Path | None, service: str, issuer: str, lifetime: int,
                  tls_cert: Path | None, tls_key: Path | None) -> HttpSettings | None:
    """``--http-address`` and ``--registry-*`` read and checked; ValueError names the flag."""
    if not address:
        if key is not None or cert is not None:
            raise ValueError("--registry-key/--registry-cert need --http-address: /token is served over HTTP")
        return None
    if cert is not None and key is None:
        raise ValueError("--registry-cert needs --registry-key")
    issuer_settings = None
    if key is not None:
        from control.registry_tokens import SigningKey, TokenKeyError

        try:
            key_pem = read_secret_file(key, what="registry key file", secret="it signs registry tokens",
                                       runner="the user running the server", limit=MAX_KEY_FILE)
        except SecretFileError as exc:
            raise ValueError(f"--registry-key: {exc}") from None
        cert_pem = None
        if cert is not None:
            cert_pem = read_pem("--registry-cert", cert)
        try:
            signing = SigningKey.from_pem(key_pem, cert_pem)
        except TokenKeyError as exc:
            raise ValueError(f"--registry-key{'/--registry-cert' if cert else ''}: {exc}") from None
        try:
            issuer_settings = TokenIssuer(signing, service, issuer, lifetime)
        except ValueError as exc:
            raise ValueError(str(exc) if str(exc).startswith("--") else f"--registry-token-lifetime: {exc}") from None
    context = None
    if tls_cert is not None and tls_key is not None:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls_cert), str(tls_key))
    settings = HttpSettings(address, issuer_settings, context)
    check_http(settings)
    return settings


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    tokens: Annotated[Path, typer.Option(help="tokens file: lines 'token name role' (admin|discovery|user), mode 600")],
    listen: Annotated[str, typer.Option(help="host:port to serve gRPC on")] = DEFAULT_LISTEN,
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    tls_cert: Annotated[Path | None, typer.Option(help="server certificate (PEM): serve TLS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="server private key (PEM), with --tls-cert")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(
        help="CA (PEM) of the clients: demand a client certificate it signed")] = None,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    max_receive_bytes: Annotated[int, typer.Option(help="largest request accepted, bytes")] = DEFAULT_RECEIVE,
    max_send_bytes: Annotated[int, typer.Option(help="largest response sent, bytes (list pages stay far below)")]
        = DEFAULT_SEND,
    max_concurrent_rpcs: Annotated[int, typer.Option(
        help="calls served at once; more are refused RESOURCE_EXHAUSTED")] = DEFAULT_CONCURRENT_RPCS,
    user_quota: Annotated[str, typer.Option(
        help="quotas of users: domains=N,upstreams=N,record_bytes=N (0: none)")] = str(slb_core.Quotas().user),
    admin_quota: Annotated[str, typer.Option(
        help="quotas of admins and discovery, same form")] = str(slb_core.Quotas().admin),
    metrics_address: MetricsAddressOpt = "",
    cells: Annotated[Path | None, typer.Option(
        help="YAML file of the Region's Cells (cells: {name: {api: URL} | {kubeconfig: PATH}}, discovery's "
             "shape): serve apps")] = None,
    api_timeout: Annotated[float, typer.Option(help="deadline of each Kubernetes API call, seconds")] = 10.0,
    reconcile_seconds: Annotated[float, typer.Option(
        help="how often every app's Cells are brought to its records, seconds")] = DEFAULT_RECONCILE_PERIOD,
    http_address: Annotated[str, typer.Option(
        help="host:port to serve HTTP on: the registry's GET /token, GitLab's POST /hooks/gitlab (off: '')")] = "",
    registry_key: Annotated[Path | None, typer.Option(
        help="EC P-256 private key (PEM, mode 600) that signs registry tokens: serve /token (leengine "
             "registry-key)")] = None,
    registry_cert: Annotated[Path | None, typer.Option(
        help="its certificate, the registry's auth.token.rootcertbundle: checked to match the key")] = None,
    registry_service: Annotated[str, typer.Option(
        help="the registry's auth.token.service: the tokens' aud")] = DEFAULT_SERVICE,
    registry_issuer: Annotated[str, typer.Option(
        help="the registry's auth.token.issuer: the tokens' iss")] = DEFAULT_ISSUER,
    registry_token_lifetime: Annotated[int, typer.Option(
        help="seconds the registry honours a token, its 60 s leeway after exp included (70-3600): a revoked "
             "right lasts at most this")] = 300,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the control service's gRPC API (slb-core, builds, the platform) over etcd."""
    try:
        host, _ = check_listen(listen)
        tls = load_server_tls(tls_cert, tls_key, tls_client_ca)
        check_plaintext(host, tls)
        etcd_settings = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
        defaults = slb_core.Quotas()
        try:
            quotas = slb_core.Quotas(user=slb_core.Limits.parse(user_quota, defaults.user),
                                     admin=slb_core.Limits.parse(admin_quota, defaults.admin))
        except ValueError as exc:
            raise ValueError(f"--user-quota/--admin-quota: {exc}") from None
        limits = ServerLimits(max_receive_bytes, max_send_bytes, max_concurrent_rpcs, quotas)
        table = load_tokens(tokens)
        cells_config = load_cells(cells) if cells is not None else None
        for flag, seconds in (("--api-timeout", api_timeout), ("--reconcile-seconds", reconcile_seconds)):
            if not 0 < seconds <= 86_400:
                raise ValueError(f"{flag} must be more than 0 and at most 86400 seconds, got {seconds}")
        http = http_settings(http_address, registry_key, registry_cert, registry_service, registry_issuer,
                             registry_token_lifetime, tls_cert, tls_key)
    except CellsFileError as exc:
        raise BadInput(f"--cells: {exc}") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    configure_logging(log_level)
    with metrics_served(metrics_address, FAMILIES) as metrics:  # bound now: a bad address stops us before etcd
        record_daemon_info(metrics, "leengine-control")
        metrics.inc(ETCD_ERRORS, 0.0, component=builds.COMPONENT)  # at 0: increase() sees the first error
        metrics.inc(BUILD_TASKS_MOVED, 0.0)
        try:
            run_daemon(lambda stop: serve(listen=listen, etcd=etcd_settings.endpoint, tokens=table,
                                          etcd_timeout=etcd_settings.timeout, tls=tls, etcd_tls=etcd_settings.tls,
                                          limits=limits, stop=stop, metrics=metrics, cells=cells_config,
                                          api_timeout=api_timeout, reconcile_period=reconcile_seconds,
                                          http=http))
        except OSError as exc:  # cannot listen
            raise Failed(str(exc)) from None


def entry() -> None:
    run_app(app, "leengine-control")


if __name__ == "__main__":
    entry()
