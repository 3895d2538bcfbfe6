"""``leengine app ...``: the platform's command line, a client of ``leengine-control``'s Platform API.

    leengine app create shop --cell cell-a --cell cell-b [--non-production] [--domain GROUP/DOMAIN]
    leengine app list | show shop
    leengine app deploy shop --image registry.local:5000/shop:<commit> --replicas 3 [--env K=V]...
    leengine app deploy shop --image registry.local:5000/shop:<next commit>   # the rest prefilled
    leengine app scale shop v2 5 [--cell cell-b]
    leengine app delete shop v1          # a version;   leengine app delete shop: the app
    leengine app release shop v2 [--steps 1,10,50,100] [--bake S] [--check S] [--max-error-increase F]
                                 [--max-latency-ratio F] [--bad-checks N] [--min-requests N]
    leengine app revert shop             # the running release: back to the old version everywhere
    leengine app members list|add|change|remove shop [USER [ROLE]] [--kind app|image_group|image]
    leengine app activity shop [--page-size N] [--all]
    leengine app counts [--day YYYY-MM-DD]          # admins

Every command takes ``--control HOST:PORT`` (``$LEENGINE_CONTROL``, default 127.0.0.1:50051),
``--token-file FILE`` (``$LEENGINE_TOKEN_FILE``; mode 600, one bearer token), ``--control-ca
FILE`` (``$LEENGINE_CONTROL_CA``; the CA of the service's certificate, default the system's
roots), ``--timeout`` and ``--json`` (the API's answer as JSON, field names as in
control/protos/leengine/control/v1/platform.proto). The connection is TLS; ``--plaintext``
is allowed only to a loopback address (the server serves plaintext only there).

Errors are one line, ``leengine: error: CODE: details`` (CODE is the gRPC status: NOT_FOUND,
PERMISSION_DENIED, …), exit 2 for INVALID_ARGUMENT and for bad options or files (nothing
was changed), 1 for every other failure. Each mutating command sends a fresh request id (or
``--request-id``), the id of its activity record.

It must not know etcd, records or rights: the service decides, this module asks and prints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict

from leengine.command import EXIT_BAD_INPUT, BadInput, CommandError, Failed
from leengine.control_options import read_ca, read_token

try:
    from control.generated.leengine.control.v1 import platform_pb2 as pb
    from control.generated.leengine.control.v1 import platform_pb2_grpc
    MISSING = ""
except ImportError as exc:  # pragma: no cover - a set-up error: `leengine app` says so, other commands work
    pb = platform_pb2_grpc = None  # every command stops in connect() first
    MISSING = f"the generated gRPC code is missing ({exc}): reinstall the package or run scripts/build-protos.sh"

DEFAULT_CONTROL = "127.0.0.1:50051"
MAX_SHOWN = 400  # characters of the service's details printed
FIELD_METADATA = "leengine-field"
ROLES = ("guest", "reporter", "developer", "master", "owner")

app_app = typer.Typer(no_args_is_help=True,
                      help="Apps, versions, members and activity on the control service (leengine-control).")
members_app = typer.Typer(no_args_is_help=True, help="Members and roles of an app, an image group or an image.")
app_app.add_typer(members_app, name="members")

ControlOpt = Annotated[str, typer.Option("--control", envvar="LEENGINE_CONTROL", metavar="HOST:PORT",
                                         help="the control service")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", envvar="LEENGINE_TOKEN_FILE", metavar="FILE", help="your bearer token (a mode-600 file)")]
CaOpt = Annotated[Path | None, typer.Option(
    "--control-ca", envvar="LEENGINE_CONTROL_CA", metavar="FILE",
    help="CA (PEM) that signed the control service's certificate (default: system roots)")]
PlaintextOpt = Annotated[bool, typer.Option("--plaintext", help="no TLS (loopback addresses only)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="deadline of the call, seconds")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the answer as JSON")]
RequestIdOpt = Annotated[str, typer.Option("--request-id", help="the call's activity record id (default: a fresh one)")]
KindOpt = Annotated[str, typer.Option("--kind", help="what the name is: app, image_group or image (group/name)")]


# --------------------------------------------------------------------------- the connection


@dataclass(frozen=True, repr=False)
class Connection:
    """Where the control service is and the caller's token, read and checked before any call."""

    target: str
    token: str
    ca: bytes | None
    plaintext: bool
    timeout: float

    def __repr__(self) -> str:  # never print the token
        return f"Connection({self.target!r}, token=***, plaintext={self.plaintext})"

    @classmethod
    def from_options(cls, target: str, token_file: Path | None, ca: Path | None, plaintext: bool,
                     timeout: float) -> Connection:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
            raise BadInput(f"--control: {target[:80]!r} is not host:port")
        if plaintext and not _is_loopback(host):
            raise BadInput(f"--plaintext: {host[:80]} is not a loopback address: the token would cross the network "
                           "in clear (use TLS: --control-ca)")
        if plaintext and ca is not None:
            raise BadInput("--plaintext and --control-ca: choose one")
        if not 0 < timeout <= 3600:
            raise BadInput(f"--timeout: {timeout} is not more than 0 and at most 3600 seconds")
        if token_file is None:
            raise BadInput("--token-file: the file holding your bearer token is required (or $LEENGINE_TOKEN_FILE)")
        token = read_token("--token-file", token_file, runner="the user running leengine")
        pem = read_ca(ca)
        return cls(target, token, pem, plaintext, timeout)

    def channel(self) -> grpc.aio.Channel:
        if self.plaintext:
            return grpc.aio.insecure_channel(self.target)
        return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=self.ca))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rpc_error(target: str, method: str, exc: grpc.aio.AioRpcError) -> CommandError:
    """One line naming the status and the service's details; exit 2 for INVALID_ARGUMENT, else 1."""
    code = exc.code()
    details = " ".join((exc.details() or "").split())[:MAX_SHOWN]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not details.startswith("etcd"):
        details = f"control service at {target}: {details}"
    error = Failed(f"{code.name}: {details}" if details else f"{code.name} ({method})")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        error.exit_code = EXIT_BAD_INPUT
    return error


# The seam tests replace: how a command gets its stub (the real one opens a channel per command).
Opener = Callable[[Connection], tuple[Any, Any]]


def open_stub(connection: Connection) -> tuple[Any, Any]:
    """(stub, channel) to the Platform service; the caller closes the channel."""
    channel = connection.channel()
    return platform_pb2_grpc.PlatformStub(channel), channel


opener: Opener = open_stub


def call(connection: Connection, method: str, request: Any) -> Any:
    """One RPC as the token's principal, with the deadline; a status is one line (``rpc_error``)."""
    async def run() -> Any:
        stub, channel = opener(connection)
        try:
            return await getattr(stub, method)(request, metadata=(("authorization", f"Bearer {connection.token}"),),
                                               timeout=connection.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(connection.target, method, exc) from None
        finally:
            if channel is not None:
                await channel.close()

    return asyncio.run(run())


def connect(control: str, token_file: Path | None, ca: Path | None, plaintext: bool, timeout: float) -> Connection:
    """The checked connection options; every command calls this first (it also needs the generated code)."""
    if MISSING:
        raise Failed(MISSING)
    return Connection.from_options(control, token_file, ca, plaintext, timeout)


def request_id(given: str) -> str:
    return given or uuid.uuid4().hex


# --------------------------------------------------------------------------- printing


def as_json(message: Any) -> str:
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence
                                    =True), indent=2, sort_keys=True)


def _when(at: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render_view(view: Any) -> str:
    a = view.app
    lines = [f"app {a.name}: {'production' if a.production else 'non-production'}, {a.state}, Cells "
             f"{', '.join(a.cells)}; created by {a.created_by} at {_when(a.created_at)}"]
    if a.domain:
        lines.append(f"domain {a.domain} (Nginx group {a.group})")
    if view.versions:
        rows = [["VERSION", "IMAGE", "REPLICAS", "READY", "STATE", "PENDING"]]
        for v in view.versions:
            rows.append([v.name, v.image, " ".join(f"{c}={v.replicas[c]}" for c in a.cells if c in v.replicas),
                         " ".join(f"{c}={v.ready[c]}" for c in a.cells if c in v.ready) or "-", v.state,
                         ", ".join(v.pending) or "-"])
        lines.append(_table(rows))
    else:
        lines.append("no versions")
    for cell, why in sorted(view.pending.items()):
        lines.append(f"pending in {cell}: {why}")
    return "\n".join(lines)


def _rate(counts: Any) -> str:
    if not counts.requests:
        return "no requests"
    return (f"{counts.requests} requests, {counts.errors / counts.requests:.1%} errors, "
            f"{counts.seconds / counts.requests * 1000:.0f} ms mean")


def render_release(view: Any) -> str:
    r = view.release
    steps = " ".join(f"[{s}%]" if i == r.step else f"{s}%" for i, s in enumerate(r.steps))
    lines = [f"release of {r.new} over {r.old}: {r.state}, step {steps}, baked {r.baked:.0f}/{r.bake_seconds:.0f} s,"
             f" {r.bad}/{r.bad_checks} bad interval(s) in a row, {r.checks} checked",
             f"  started by {r.started_by} at {_when(r.started_at)}; {r.reason}"]
    if r.checks:
        lines.append(f"  last interval: {r.new} {_rate(r.last_new)}; {r.old} {_rate(r.last_old)} "
                     f"({r.hosts} Nginx host(s))")
    if view.shares:
        lines.append("  shares now: " + ", ".join(f"{v} {p}%" for v, p in sorted(view.shares.items(),
                                                                                    key=lambda i: _number(i[0]))))
    return "\n".join(lines)


def _number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0


def _print(message: Any, text: Callable[[Any], str], json_output: bool) -> None:
    typer.echo(as_json(message) if json_output else text(message))


def _pairs(values: list[str], flag: str, separator: str = "=") -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition(separator)
        if not sep or not name:
            raise BadInput(f"{flag}: {value[:80]!r} is not NAME{separator}VALUE")
        pairs.append((name, rest))
    return pairs


def _resource(kind: str, name: str) -> Any:
    if kind not in ("app", "image_group", "image"):
        raise BadInput(f"--kind: {kind[:40]!r} is not one of app, image_group, image")
    return pb.Resource(kind=kind, name=name)


# --------------------------------------------------------------------------- apps and versions


@app_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="the app's name: a DNS label of at most 40 characters")],
    cell: Annotated[list[str], typer.Option("--cell", help="a Cell of the Region (at least two: repeat)")],
    production: Annotated[bool, typer.Option(
        "--production/--non-production", help="production apps need a Master to deploy")] = True,
    domain: Annotated[str, typer.Option(
        "--domain", metavar="GROUP/DOMAIN", help="the Nginx domain serving the app (yours in slb-core); "
                                               "needed for gray releases")] = "",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 30.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Create an app in the given Cells (you become its Owner)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    group, slash, name_of_domain = domain.partition("/")
    if domain and (not slash or not group or not name_of_domain):
        raise BadInput(f"--domain: {domain[:80]!r} is not GROUP/DOMAIN")
    view = call(connection, "CreateApp", pb.CreateAppRequest(name=name, cells=cell, production=production,
                                                             group=group, domain=name_of_domain,
                                                             request_id=request_id(request)))
    _print(view, render_view, json_output)


@app_app.command("list")
def list_apps(
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """The apps you are a member of (an admin: all)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = call(connection, "ListApps", pb.ListAppsRequest())

    def text(reply: Any) -> str:
        if not reply.apps:
            return "no apps"
        return _table([["APP", "CELLS", "PRODUCTION", "STATE", "CREATED BY"]] + [
            [a.name, ",".join(a.cells), "yes" if a.production else "no", a.state, a.created_by] for a in reply.apps])

    _print(reply, text, json_output)


@app_app.command("show")
def show(
    app: Annotated[str, typer.Argument(help="the app")],
    next_version: Annotated[bool, typer.Option("--next", help="show the prefilled form of the next version")]
        = False,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """An app, its versions and where each stands in each Cell, and its release (if it has a domain)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    if next_version:
        draft = call(connection, "GetPrefill", pb.GetPrefillRequest(app=app))
        _print(draft, lambda d: as_json(d), json_output)
        return
    view = call(connection, "GetApp", pb.GetAppRequest(app=app))
    release = None
    if view.app.domain:
        try:
            release = call(connection, "GetRelease", pb.GetReleaseRequest(app=app))
        except Failed as exc:
            if not str(exc).startswith("NOT_FOUND"):
                raise
    if json_output:
        shown = json.loads(as_json(view))
        if release is not None:
            shown["release"] = json.loads(as_json(release))
        typer.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    typer.echo(render_view(view) + (f"\n{render_release(release)}" if release is not None else ""))


@app_app.command("deploy")
def deploy(
    app: Annotated[str, typer.Argument(help="the app")],
    image: Annotated[str | None, typer.Option(help="repository:<40-hex commit id> (the build's image)")] = None,
    replicas: Annotated[int | None, typer.Option(help="replicas in every Cell")] = None,
    replicas_in: Annotated[list[str] | None, typer.Option(
        "--replicas-in", metavar="CELL=N", help="replicas in one Cell (repeat for every Cell)")] = None,
    cpu_millis: Annotated[int | None, typer.Option(help="CPU per replica, millicores")] = None,
    memory_mib: Annotated[int | None, typer.Option(help="memory per replica, MiB")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", metavar="NAME=VALUE",
                                                  help="replace the environment (repeat)")] = None,
    clear_env: Annotated[bool, typer.Option("--clear-env", help="deploy with no environment")] = False,
    port: Annotated[int | None, typer.Option(help="the port the app serves on")] = None,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Deploy a new version; what you do not give is taken from the latest version."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    if replicas is not None and replicas_in:
        raise BadInput("--replicas and --replicas-in: give one")
    if env and clear_env:
        raise BadInput("--env and --clear-env: give one")
    draft = pb.VersionDraft()
    if image is not None:
        draft.image = image
    if replicas is not None:
        draft.replicas = replicas
    for cell, count in _pairs(replicas_in or [], "--replicas-in"):
        if not count.isdigit() or len(count) > 9:
            raise BadInput(f"--replicas-in: {count[:20]!r} is not a count")
        draft.replicas_per_cell[cell] = int(count)
    if cpu_millis is not None:
        draft.cpu_millis = cpu_millis
    if memory_mib is not None:
        draft.memory_mib = memory_mib
    if port is not None:
        draft.port = port
    if env or clear_env:
        draft.env.CopyFrom(pb.Env(vars=[pb.EnvVar(name=n, value=v) for n, v in _pairs(env or [], "--env")]))
    view = call(connection, "DeployVersion", pb.DeployVersionRequest(app=app, draft=draft,
                                                                     request_id=request_id(request)))
    _print(view, render_view, json_output)


@app_app.command("scale")
def scale(
    app: Annotated[str, typer.Argument(help="the app")],
    version: Annotated[str, typer.Argument(help="the version, v<N>")],
    replicas: Annotated[int, typer.Argument(help="replicas per Cell")],
    cell: Annotated[str, typer.Option(help="only in this Cell (default: every Cell of the app)")] = "",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Set a version's replicas in one Cell or in every Cell."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    view = call(connection, "ScaleVersion", pb.ScaleVersionRequest(
        app=app, version=version, replicas=replicas, cell=cell, request_id=request_id(request)))
    _print(view, render_view, json_output)


@app_app.command("delete")
def delete(
    app: Annotated[str, typer.Argument(help="the app")],
    version: Annotated[str | None, typer.Argument(help="a version to delete (without it: the app itself)")] = None,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Delete a version everywhere, or the app (once it has no versions)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    if version is None:
        view = call(connection, "DeleteApp", pb.DeleteAppRequest(app=app, request_id=request_id(request)))
    else:
        view = call(connection, "DeleteVersion", pb.DeleteVersionRequest(app=app, version=version,
                                                                         request_id=request_id(request)))
    _print(view, render_view, json_output)


# --------------------------------------------------------------------------- releases


def _steps(text: str) -> list[int]:
    parts = text.split(",")
    if not text or len(parts) > 16 or not all(p.strip().isdigit() and len(p.strip()) <= 3 for p in parts):
        raise BadInput(f"--steps: {text[:80]!r} is not a list of percents such as 1,10,50,100")
    return [int(p) for p in parts]


@app_app.command("release")
def release(
    app: Annotated[str, typer.Argument(help="the app (it needs a domain)")],
    version: Annotated[str, typer.Argument(help="the version to release, v<N> (deployed: it runs with share 0)")],
    steps: Annotated[str, typer.Option(help="the new version's share per step, %, ending at 100")] = "1,10,50,100",
    bake: Annotated[float | None, typer.Option(help="seconds each step bakes (default 300)")] = None,
    check: Annotated[float | None, typer.Option(help="seconds between checks (default 30)")] = None,
    max_error_increase: Annotated[float | None, typer.Option(
        help="error rate new - old that makes an interval bad, a fraction (default 0.01)")] = None,
    max_latency_ratio: Annotated[float | None, typer.Option(
        help="mean latency new / old that makes an interval bad (default 1.5)")] = None,
    bad_checks: Annotated[int | None, typer.Option(help="bad intervals in a row that revert (default 3)")] = None,
    min_requests: Annotated[int | None, typer.Option(
        help="requests to the new version for an interval to count (default 20)")] = None,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Start a gray release: the version's share of the app's traffic rises step by step, checked."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    message = pb.StartReleaseRequest(app=app, version=version, steps=_steps(steps), request_id=request_id(request))
    for name, value in (("bake_seconds", bake), ("check_seconds", check), ("max_error_increase", max_error_increase),
                        ("max_latency_ratio", max_latency_ratio), ("bad_checks", bad_checks),
                        ("min_requests", min_requests)):
        if value is None:
            continue
        if isinstance(value, int) and not -2**31 <= value < 2**31:  # the wire's int32: protobuf would raise
            raise BadInput(f"--{name.replace('_', '-')} {value} is out of range (the service takes at most 1000 "
                           f"bad checks and 10^9 requests)")
        setattr(message, name, value)
    _print(call(connection, "StartRelease", message), render_release, json_output)


@app_app.command("revert")
def revert(
    app: Annotated[str, typer.Argument(help="the app")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Revert the app's release: the old version gets all traffic, the new one is deleted in every Cell."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    _print(call(connection, "RevertRelease", pb.RevertReleaseRequest(app=app, request_id=request_id(request))),
           render_release, json_output)


# --------------------------------------------------------------------------- builds on push


def render_hook(reply: Any) -> str:
    b = reply.binding
    return "\n".join([
        f"bound GitLab project {b.project}, branch {b.branch} to app {b.app} (by {b.by}, revision {b.revision})",
        "In GitLab: Settings > Webhooks > Add new webhook:",
        f"  URL:           {reply.url}",
        f"  Secret token:  {reply.secret}",
        f"  Trigger:       Push events, branch filter: {b.branch}",
        "The secret is shown this once (the service keeps only its SHA-256); `leengine app hook` again rotates it.",
    ])


@app_app.command("hook")
def hook(
    app: Annotated[str, typer.Argument(help="the app whose builds the pushes start")],
    project: Annotated[str, typer.Option(help="the GitLab project, path_with_namespace (e.g. team/shop)")],
    branch: Annotated[str, typer.Option(help="the branch whose pushes build")] = "main",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Bind a GitLab project's branch to the app: prints the webhook's URL and its secret (once)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    _print(call(connection, "BindRepository", pb.BindRepositoryRequest(
        app=app, project=project, branch=branch, request_id=request_id(request))), render_hook, json_output)


@app_app.command("unhook")
def unhook(
    app: Annotated[str, typer.Argument(help="the app")],
    project: Annotated[str, typer.Option(help="the GitLab project bound to it")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 60.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Unbind the project: its pushes build nothing any more (GitLab's deliveries get 404)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    _print(call(connection, "UnbindRepository", pb.UnbindRepositoryRequest(
        app=app, project=project, request_id=request_id(request))),
        lambda reply: f"unbound {project} from {app} (revision {reply.revision})", json_output)


# --------------------------------------------------------------------------- members


def _member_line(m: Any) -> list[str]:
    return [m.user, m.role, m.by, _when(m.at)]


@members_app.command("list")
def members_list(
    name: Annotated[str, typer.Argument(help="the app (or image group, image: --kind)")],
    kind: KindOpt = "app",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """The members and their roles (an image's also inherited from its group)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    resource = _resource(kind, name)
    reply = call(connection, "ListMembers", pb.ListMembersRequest(resource=resource))

    def text(reply: Any) -> str:
        rows = [["USER", "ROLE", "GIVEN BY", "AT"]] + [_member_line(m) for m in reply.members]
        rows += [[m.user, f"{m.role} (of {m.on.name})", m.by, _when(m.at)] for m in reply.inherited]
        return _table(rows) + (f"\n{reply.skipped} unreadable record(s) skipped" if reply.skipped else "")

    _print(reply, text, json_output)


def _change_text(reply: Any) -> str:
    if reply.HasField("member"):
        return f"{reply.member.user} is {reply.member.role} of {reply.member.on.kind} {reply.member.on.name}"
    return f"removed (revision {reply.revision})"


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BadInput(f"ROLE: {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


@members_app.command("add")
def members_add(
    name: Annotated[str, typer.Argument(help="the app (or image group, image: --kind)")],
    user: Annotated[str, typer.Argument(help="the user")],
    role: Annotated[str, typer.Argument(help=f"one of {', '.join(ROLES)}")],
    kind: KindOpt = "app",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Give a user a role (Masters: up to developer; Owners: any)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    resource = _resource(kind, name)
    reply = call(connection, "AddMember", pb.MemberRequest(resource=resource, user=user, role=_check_role(role),
                                                           request_id=request_id(request)))
    _print(reply, _change_text, json_output)


@members_app.command("change")
def members_change(
    name: Annotated[str, typer.Argument(help="the app (or image group, image: --kind)")],
    user: Annotated[str, typer.Argument(help="the user")],
    role: Annotated[str, typer.Argument(help=f"one of {', '.join(ROLES)}")],
    kind: KindOpt = "app",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Change a member's role."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    resource = _resource(kind, name)
    reply = call(connection, "ChangeMember", pb.MemberRequest(resource=resource, user=user, role=_check_role(role),
                                                              request_id=request_id(request)))
    _print(reply, _change_text, json_output)


@members_app.command("remove")
def members_remove(
    name: Annotated[str, typer.Argument(help="the app (or image group, image: --kind)")],
    user: Annotated[str, typer.Argument(help="the user")],
    kind: KindOpt = "app",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Remove a member (the last Owner stays)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    resource = _resource(kind, name)
    reply = call(connection, "RemoveMember", pb.RemoveMemberRequest(resource=resource, user=user,
                                                                    request_id=request_id(request)))
    _print(reply, _change_text, json_output)


# --------------------------------------------------------------------------- activity and counts


@app_app.command("activity")
def activity(
    name: Annotated[str, typer.Argument(help="the app (or image group, image: --kind)")],
    kind: KindOpt = "app",
    page_size: Annotated[int, typer.Option(help="records per page (0: 50; at most 500)")] = 0,
    page_token: Annotated[str, typer.Option(help="the page after a previous answer's next_page_token")] = "",
    every_page: Annotated[bool, typer.Option("--all", help="every page, one snapshot")] = False,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """What was done to the resource, newest first."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    if not 0 <= page_size <= 500:
        raise BadInput(f"--page-size: {page_size} is not from 0 to 500")
    resource = _resource(kind, name)
    reply = call(connection, "ListActivity", pb.ListActivityRequest(resource=resource, page_size=page_size,
                                                                    page_token=page_token))
    while every_page and reply.next_page_token:
        more = call(connection, "ListActivity", pb.ListActivityRequest(
            resource=resource, page_size=page_size, page_token=reply.next_page_token))
        reply.records.extend(more.records)
        reply.skipped += more.skipped
        reply.next_page_token = more.next_page_token

    def text(reply: Any) -> str:
        if not reply.records:
            return "no activity"
        rows = [["AT", "WHO", "ACTION", "RESULT", "REQUEST"]] + [
            [_when(r.at), f"{r.who} ({r.role})", r.action, r.result, r.request_id] for r in reply.records]
        tail = [f"more: --page-token {reply.next_page_token}"] if reply.next_page_token else []
        tail += [f"{reply.skipped} unreadable record(s) skipped"] if reply.skipped else []
        return "\n".join([_table(rows), *tail])

    _print(reply, text, json_output)


@app_app.command("counts")
def counts(
    day: Annotated[str, typer.Option(help="one day, YYYY-MM-DD (UTC); default: every day")] = "",
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """Operations per day, kind of resource and action (admins)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = call(connection, "GetDailyCounts", pb.GetDailyCountsRequest(day=day))

    def text(reply: Any) -> str:
        if not reply.counts:
            return "no operations"
        return _table([["DAY", "KIND", "ACTION", "COUNT"]] + [[c.day, c.kind, c.action, str(c.count)]
                                                             for c in reply.counts])

    _print(reply, text, json_output)
