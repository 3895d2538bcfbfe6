"""``leengine-discovery``: run discovery against real Cells (one command to start it).

    leengine-discovery --config discovery.yaml \\
        --control 10.0.0.10:50051 --control-token-file /etc/leengine/discovery.token \\
        --control-ca /etc/leengine/control-ca.crt \\
        --etcd 10.0.0.10:2379 --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert discovery.crt --etcd-key discovery.key \\
        [--metrics-address 127.0.0.1:9104]

``discovery.yaml``::

    cells:                       # one Kubernetes API per Cell: a URL (lab, mock) or a kubeconfig
      cell-a: {api: "http://10.0.1.10:8080"}
      cell-b: {kubeconfig: /etc/leengine/cell-b.kubeconfig}
    bindings:                    # app (namespace) + Service -> the domain that serves it
      - {namespace: shop, service: shop, port: 8080, group: public, domain: shop.example.com}
    resync_seconds: 5            # optional: how often failed pushes are retried

(docs/slb.md describes the file field by field.) It wires the real adapters (the
``kubernetes`` client per Cell; the control service over gRPC, TLS only, verified against
``--control-ca``, with the bearer token of ``--control-token-file`` (mode 600, a token of role
``discovery``): upstreams are set through it, as for any client; etcd for the drain records
only; asyncio) to ``control/discovery.py``. Every field is validated before anything starts; a bad file is
one line on stderr naming the field, and exit status 2. Like every daemon it waits for etcd
at start (retrying every two seconds) and stops cleanly, exit 0, on SIGTERM/SIGINT
(``leengine/daemon.py``); ``--etcd-timeout`` is each etcd request's deadline and
``--api-timeout`` each Kubernetes API request's (the old ``--timeout`` still sets both).
``--metrics-address HOST:PORT`` (off by default) serves Prometheus metrics on
``http://HOST:PORT/metrics``: pushes by result, drains and their duration, Cells out of
reach, domains without upstream, etcd errors (``leengine/metrics_option.py``; a port that
cannot be bound stops the daemon at start in one line).

Drains, from anywhere that reaches etcd, through the running daemon::

    leengine-discovery drain --config discovery.yaml --etcd ... shop 10.1.0.6 [10.1.0.7 ...]
    leengine-discovery forget --etcd ... shop 10.1.0.6      # the pod is gone: lift the exclusion

``drain`` writes a request record per address (``/discovery/drains/{namespace}/{ip}``),
waits for the daemon's outcome in it and prints, per address, the domains it left, the
Nginx hosts that confirmed and those that did not, and how long it took; exit status 0
when every address drained, 1 otherwise (also when no daemon answered in time).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from control.discovery import (
    COMPONENT,
    MAX_DRAIN_TIMEOUT,
    Binding,
    Discovery,
    decode_drain_record,
    drain_key,
    encode_drain_record,
    is_ipv4,
)
from foundation.logic.slb_domain import GROUP_NAME, DomainError, check_domain_name
from foundation.ports import StoreError
from foundation.ports.metrics import (
    DISCOVERY_CELLS_UNREACHABLE,
    DISCOVERY_DOMAINS_WITHOUT_UPSTREAM,
    DISCOVERY_DRAIN_SECONDS,
    DISCOVERY_DRAINS,
    DISCOVERY_PUSHES,
    ETCD_ERRORS,
    NO_METRICS,
    MetricDef,
    Metrics,
)
from leengine.command import BadInput, Failed, LogLevelOpt, configure_logging, run_app
from leengine.control_options import read_ca, read_token
from leengine.daemon import connect_until_stopped, run_daemon, until_stopped
from leengine.etcd_options import (
    DEFAULT_ETCD,
    DEFAULT_TIMEOUT,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdKeyOpt,
    EtcdOpt,
    EtcdSettings,
    EtcdTimeoutOpt,
    check_timeout,
)
from leengine.metrics_option import MetricsAddressOpt, metrics_served, record_daemon_info

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.discovery")
NAME = GROUP_NAME  # namespaces, services and cells: DNS labels
# The families a scrape lists from the start (labelled ones get their series with the first event).
FAMILIES: tuple[MetricDef, ...] = (DISCOVERY_PUSHES, DISCOVERY_DRAINS, DISCOVERY_DRAIN_SECONDS,
                                   DISCOVERY_CELLS_UNREACHABLE, DISCOVERY_DOMAINS_WITHOUT_UPSTREAM, ETCD_ERRORS)
# The old --timeout, kept working but not shown: it set both deadlines; --etcd-timeout and --api-timeout now.
OldTimeoutOpt = Annotated[float | None, typer.Option("--timeout", hidden=True, callback=check_timeout)]


class ConfigError(ValueError):
    pass


def load_config(path: Path) -> tuple[dict[str, dict[str, str]], list[Binding], float]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"cells", "bindings", "resync_seconds"}:
        raise ConfigError(f"{path}: expected the keys cells, bindings (and optionally resync_seconds)")
    cells = data.get("cells")
    if not isinstance(cells, dict) or not cells:
        raise ConfigError(f"{path}: cells: a mapping of at least one Cell")
    for name, spec in cells.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{path}: cells: {name!r} is not a Cell name")
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"api", "kubeconfig"} & set(spec)) \
                or not isinstance(next(iter(spec.values())), str):
            raise ConfigError(f"{path}: cells.{name}: give exactly one of api (URL) or kubeconfig (path)")
    bindings = []
    for i, item in enumerate(data.get("bindings") or []):
        where = f"{path}: bindings[{i}]"
        if not isinstance(item, dict) or set(item) != {"namespace", "service", "port", "group", "domain"}:
            raise ConfigError(f"{where}: needs exactly namespace, service, port, group, domain")
        for key in ("namespace", "service", "group"):
            if not isinstance(item[key], str) or not NAME.fullmatch(item[key]):
                raise ConfigError(f"{where}.{key}: {item[key]!r} is not a name")
        port = item["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}.port: {port!r} is not a port")
        try:
            check_domain_name(item["domain"])
        except DomainError as exc:
            raise ConfigError(f"{where}.domain: {exc}") from None
        bindings.append(Binding(item["namespace"], item["service"], port, item["group"], item["domain"]))
    resync = data.get("resync_seconds", 5)
    if isinstance(resync, bool) or not isinstance(resync, int | float) or resync <= 0:
        raise ConfigError(f"{path}: resync_seconds: {resync!r} is not a positive number")
    return cells, bindings, float(resync)


@dataclass(frozen=True, repr=False)
class ControlSettings:
    """Where the control service is and how discovery proves who it is (read and checked before start)."""

    target: str
    token: str
    ca: bytes | None  # None: the system's roots
    timeout: float

    def __repr__(self) -> str:  # never print the token into a log
        return f"ControlSettings({self.target!r}, token=***, ca={self.ca is not None}, timeout={self.timeout})"

    @classmethod
    def from_options(cls, target: str | None, token_file: Path | None, ca: Path | None,
                     timeout: float) -> ControlSettings:
        if not target:
            raise BadInput("--control: the control service's address (host:port) is required: discovery sets "
                           "upstreams through it")
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
            raise BadInput(f"--control: {target[:80]!r} is not host:port")
        if token_file is None:
            raise BadInput("--control-token-file: the file holding discovery's bearer token is required")
        token = read_token("--control-token-file", token_file, runner="the user running discovery")
        pem = read_ca(ca)
        return cls(target, token, pem, timeout)

    def client(self) -> Any:
        from foundation.adapters.grpc_control import GrpcControlClient

        return GrpcControlClient(self.target, self.token, ca=self.ca, timeout=self.timeout)


async def run_discovery(etcd: EtcdSettings, cells: dict[str, dict[str, str]], bindings: list[Binding],
                        resync: float, api_timeout: float, stop: asyncio.Event, control: ControlSettings,
                        metrics: Metrics = NO_METRICS) -> None:
    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.k8s_cluster import KubeCluster

    clusters: dict[str, Any] = {
        name: KubeCluster(host=spec["api"], timeout=api_timeout) if "api" in spec
        else KubeCluster(kubeconfig=spec["kubeconfig"], timeout=api_timeout)
        for name, spec in cells.items()
    }
    store = etcd.store()  # the drain records only; upstreams go through the control service
    client = control.client()
    try:
        if not await connect_until_stopped(store, stop, log):  # etcd down at start: wait, like every daemon
            return
        runtime = AsyncioRuntime()
        discovery = Discovery(clusters, client, store, runtime, bindings, resync=resync, metrics=metrics)
        log.info("discovery: %d Cells, %d bindings, control service at %s", len(clusters), len(bindings),
                 control.target)
        await until_stopped(discovery.run(), stop, name="discovery")
    finally:
        await client.close()
        await store.close()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file: cells and bindings (required)")] = None,
    control: Annotated[str | None, typer.Option(
        "--control", envvar="LEENGINE_CONTROL", help="the control service, host:port (TLS); required")] = None,
    control_token_file: Annotated[Path | None, typer.Option(
        "--control-token-file", envvar="LEENGINE_CONTROL_TOKEN_FILE",
        help="file (mode 600) holding discovery's bearer token (role discovery); required")] = None,
    control_ca: Annotated[Path | None, typer.Option(
        "--control-ca", envvar="LEENGINE_CONTROL_CA",
        help="CA certificate (PEM) that signed the control service's certificate (default: system roots)")] = None,
    control_timeout: Annotated[float, typer.Option(
        "--control-timeout", callback=check_timeout, help="deadline of each control service call, seconds")] = 10.0,
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    api_timeout: Annotated[float, typer.Option(callback=check_timeout,
                                               help="deadline of each Kubernetes API request, seconds")] = 5.0,
    timeout: OldTimeoutOpt = None,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    metrics_address: MetricsAddressOpt = "",
    log_level: LogLevelOpt = "info",
) -> None:
    """Feed the ready pods of every app, in every Cell, to its domains' upstreams (commands: drain, forget)."""
    if ctx.invoked_subcommand is not None:
        return
    if timeout is not None:
        etcd_timeout = api_timeout = timeout
    try:
        if config is None:
            raise ConfigError("--config: the YAML file of cells and bindings is required")
        cells, bindings, resync = load_config(config)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    service = ControlSettings.from_options(control, control_token_file, control_ca, control_timeout)
    settings = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    configure_logging(log_level)
    with metrics_served(metrics_address, FAMILIES) as metrics:  # bound now: a bad address stops us before etcd
        record_daemon_info(metrics, "leengine-discovery")
        metrics.inc(ETCD_ERRORS, 0.0, component=COMPONENT)  # the series exists at 0: increase() sees the first error
        try:
            run_daemon(lambda stop: run_discovery(settings, cells, bindings, resync, api_timeout, stop, service,
                                                  metrics))
        except (StoreError, ValueError, OSError) as exc:  # a bad kubeconfig; etcd lost for good after start
            raise Failed(str(exc)) from None


# ---------------------------------------------------------------------------- drain / forget

DRAIN_GRACE = 10.0  # seconds beyond the drain timeout that the command waits for the daemon's outcome


def _fail(message: str, code: int = 2) -> BadInput:
    """The error to raise: bad input (2) unless ``code`` says otherwise (1: the drain itself failed)."""
    return BadInput(message, code)


def _addresses(namespace: str, addresses: list[str]) -> list[str]:
    if not NAME.fullmatch(namespace):
        raise _fail(f"NAMESPACE: {namespace[:64]!r} is not a namespace name")
    for address in addresses:
        if not is_ipv4(address):
            raise _fail(f"ADDRESS: {address[:64]!r} is not an IPv4 address")
    return list(dict.fromkeys(addresses))


def _report(namespace: str, ip: str, record: dict[str, Any] | None, waited: float) -> tuple[bool, str]:
    """(drained, what to print) for one address."""
    if record is None:
        return False, f"{ip} ({namespace}): its drain record is gone (forgotten meanwhile?)"
    state = record["state"]
    if state in ("requested", "draining"):
        who = "no discovery daemon took the request" if state == "requested" else "the daemon is still draining"
        return False, f"{ip} ({namespace}): not done after {waited:.1f}s: {who} (state {state})"
    lines = [f"{ip} ({namespace}): {'drained' if state == 'drained' else 'NOT drained'} in "
             f"{float(record.get('took', 0)):.3f}s" + (f": {record['error']}" if record.get("error") else "")]
    for field in ("domains", "confirmed", "unconfirmed"):
        values = record.get(field)
        shown = ", ".join(str(v) for v in values) if isinstance(values, list) and values else "-"
        lines.append(f"  {field}: {shown}")
    return state == "drained", "\n".join(lines)


async def _drain(etcd: EtcdSettings, namespace: str, addresses: list[str], drain_timeout: float,
                 as_json: bool) -> int:
    store = await etcd.open()
    try:
        by = f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"
        request = {"state": "requested", "timeout": drain_timeout, "requested_by": by, "requested_at": time.time()}
        keys = {ip: drain_key(namespace, ip) for ip in addresses}
        for key in keys.values():
            await store.put(key, encode_drain_record(request))
        started = time.monotonic()
        deadline = started + drain_timeout + DRAIN_GRACE
        records: dict[str, dict[str, Any] | None] = {}
        while True:
            for ip, key in keys.items():
                kv = await store.get(key)
                try:
                    records[ip] = None if kv is None else decode_drain_record(kv.value)
                except ValueError as exc:
                    records[ip] = {"state": "failed", "error": f"unreadable drain record: {exc}"}
            pending = [ip for ip, r in records.items() if r is not None and r["state"] in ("requested", "draining")]
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        waited = time.monotonic() - started
    finally:
        await store.close()
    ok = True
    lines: list[str] = []
    answers: list[dict[str, Any]] = []  # --json: one object per address
    for ip in addresses:
        drained, text = _report(namespace, ip, records.get(ip), waited)
        ok = ok and drained
        lines.append(text)
        answers.append({"namespace": namespace, "address": ip, **(records.get(ip) or {"state": "forgotten"})})
    print(json.dumps(answers, indent=2, sort_keys=True) if as_json else "\n".join(lines))
    return 0 if ok else 1


@app.command()
def drain(
    namespace: Annotated[str, typer.Argument(help="the app (namespace) the pods belong to")],
    addresses: Annotated[list[str], typer.Argument(help="pod IPv4 addresses to drain")],
    config: Annotated[Path, typer.Option(help="the daemon's YAML file (the namespace must have bindings)")],
    etcd: EtcdOpt = DEFAULT_ETCD,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", help="how long every Nginx host has to "
                                                 "confirm, seconds")] = 30.0,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    timeout: OldTimeoutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the drain records as JSON")] = False,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
) -> None:
    """Drain pods through the running daemon: out of every domain of the app, confirmed by every Nginx host."""
    addresses = _addresses(namespace, addresses)
    try:
        _, bindings, _ = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    settings = EtcdSettings.from_options(etcd, timeout or etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    if not any(b.namespace == namespace for b in bindings):
        raise _fail(f"NAMESPACE: {namespace} has no binding in {config}: discovery feeds no domain from it")
    if not 0 < drain_timeout <= MAX_DRAIN_TIMEOUT:
        raise _fail(f"--drain-timeout: {drain_timeout:g} is not in (0, {MAX_DRAIN_TIMEOUT:g}]")
    try:
        code = asyncio.run(_drain(settings, namespace, addresses, drain_timeout, as_json))
    except (StoreError, OSError) as exc:
        raise _fail(str(exc)[:300], 1) from None
    raise typer.Exit(code)


@app.command()
def forget(
    namespace: Annotated[str, typer.Argument(help="the app (namespace) the pods belonged to")],
    addresses: Annotated[list[str], typer.Argument(help="drained pod IPv4 addresses")],
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    timeout: OldTimeoutOpt = None,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
) -> None:
    """The drained pods are gone: delete their drain records, so the addresses may serve again (a new pod)."""
    addresses = _addresses(namespace, addresses)
    settings = EtcdSettings.from_options(etcd, timeout or etcd_timeout, etcd_ca, etcd_cert, etcd_key)

    async def run() -> list[str]:
        store = await settings.open()
        try:
            lines = []
            for ip in addresses:
                deleted = await store.delete(drain_key(namespace, ip))
                lines.append(f"{ip} ({namespace}): " + ("drain record deleted" if deleted.deleted
                                                        else "no drain record (nothing to forget)"))
            return lines
        finally:
            await store.close()

    try:
        print("\n".join(asyncio.run(run())))
    except (StoreError, OSError) as exc:
        raise _fail(str(exc)[:300], 1) from None


def entry() -> None:
    run_app(app, "leengine-discovery")


if __name__ == "__main__":
    entry()
