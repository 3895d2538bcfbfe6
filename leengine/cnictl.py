"""``cnictl``: the operator's tool for IP pools and leaked addresses (modelled on ``calicoctl ipam``).

    cnictl pool add cell1-a --cidr 10.20.0.0/22 --vlan 100 [--gateway 10.20.0.1] [--exclude IP]... [--block-size 16]
    cnictl pool list [--json]            utilisation per pool
    cnictl pool show NAME [--json]       utilisation per node of one pool
    cnictl check [--grace 60] [--wait] [--json] [--exit-code]     exit 3 with --exit-code: certain leaks
    cnictl release ADDRESS... [--force] | --certain
    cnictl gc

The logic lives in ``cni/admin.py`` (pure, over ports, also used by the sim); this
module only picks the adapters: etcd (``--etcd`` / ``$LEENGINE_ETCD``, ``--etcd-timeout``,
TLS with ``--etcd-ca/--etcd-cert/--etcd-key``, ``leengine/etcd_options.py``) and the
Kubernetes API (``--kube-api URL`` or ``--kubeconfig`` / ``$KUBECONFIG``, ``--api-timeout``);
these options, and ``--log-level``, go before the subcommand. The old ``--timeout`` (both
deadlines) still works, hidden. Every error is one line on stderr; the exit status is
that of every command (``leengine/command.py``): 0 ok, 1 failed (etcd or the API
unreachable, a pool that does not exist, a release refused), 2 bad input (an option, a
pool definition, an address that is not one), and 3 for ``check --exit-code`` when
certain leaks were found. A record read from etcd that does not decode is one warning
line on stderr and is skipped (``cni/admin.py`` decides what is still safe to do
without it). ``release ADDRESS`` asks the Kubernetes API first and refuses (one line,
exit 1) while a pod still holds the address, unless ``--force``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cni import admin
from cni.pools import Pool, PoolConfigError
from foundation.ports import StoreError
from foundation.ports.cluster import ClusterUnavailable
from foundation.ports.metrics import NO_METRICS
from leengine.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_LEAKS, LogLevelOpt, configure_logging, run_app
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

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Manage LeEngine IP pools and find leaked addresses.")
pool_app = typer.Typer(no_args_is_help=True, help="IP pools: add, list, show.")
app.add_typer(pool_app, name="pool")
console = Console()


class Settings:
    etcd = EtcdSettings()
    api_timeout = DEFAULT_TIMEOUT
    kube_api: str | None = None
    kubeconfig: str | None = None


settings = Settings()


@app.callback()
def configure(
    etcd: EtcdOpt = DEFAULT_ETCD,
    kube_api: Annotated[str | None, typer.Option(help="Kubernetes API URL (no auth), e.g. a lab mock")] = None,
    kubeconfig: Annotated[str | None, typer.Option(envvar="KUBECONFIG", help="kubeconfig file")] = None,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    api_timeout: Annotated[float, typer.Option(callback=check_timeout,
                                               help="deadline of each Kubernetes API request, seconds")]
    = DEFAULT_TIMEOUT,
    timeout: Annotated[float | None, typer.Option("--timeout", hidden=True, callback=check_timeout)] = None,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    log_level: LogLevelOpt = "warning",
) -> None:
    if timeout is not None:  # the old name of both deadlines
        etcd_timeout = api_timeout = timeout
    settings.kube_api, settings.kubeconfig, settings.api_timeout = kube_api, kubeconfig, api_timeout
    settings.etcd = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    configure_logging(log_level)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    print(f"cnictl: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def bad_input(message: str) -> None:
    fail(message, EXIT_BAD_INPUT)


def run(action: Callable[..., Awaitable[Any]], *, cluster: bool = False) -> Any:
    """Open the adapters, run ``action(store, runtime[, cluster])``, close; errors become one line."""
    from foundation.adapters.asyncio_runtime import AsyncioRuntime

    async def main() -> Any:
        store = await settings.etcd.open()
        try:
            if not cluster:
                return await action(store, AsyncioRuntime())
            return await action(store, AsyncioRuntime(), _cluster())
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (StoreError, PoolConfigError, admin.AdminError, ClusterUnavailable, ValueError) as exc:
        fail(str(exc))


def _cluster(need: str = "check and gc need the Kubernetes API") -> Any:
    from foundation.adapters.k8s_cluster import KubeCluster

    if settings.kube_api:
        return KubeCluster(host=settings.kube_api, timeout=settings.api_timeout)
    if settings.kubeconfig:
        return KubeCluster(kubeconfig=settings.kubeconfig, timeout=settings.api_timeout)
    bad_input(f"{need}: give --kube-api URL or --kubeconfig FILE")
    return None


def warn_invalid(invalid: list[admin.InvalidKey] | tuple[admin.InvalidKey, ...]) -> None:
    for record in invalid:
        print(f"cnictl: warning: {record} (skipped)", file=sys.stderr)


def duration(name: str, value: float) -> float:
    try:
        return admin.check_duration(name, value)
    except admin.AdminError as exc:
        bad_input(f"--{exc}")
        raise


# ------------------------------------------------------------------ pools


@pool_app.command("add")
def pool_add(
    name: str,
    cidr: Annotated[str, typer.Option(help="IPv4 subnet, e.g. 10.20.0.0/22")],
    vlan: Annotated[int, typer.Option(help="VLAN tag of the pool's ports, 1-4094")],
    gateway: Annotated[str | None, typer.Option(help="default: the first host address")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="an address never to hand out (repeatable)")] = None,
    block_size: Annotated[int, typer.Option(help="addresses per node block, a power of two")] = 16,
) -> None:
    """Add a pool (refused if it overlaps another or reuses its VLAN)."""
    try:
        pool = Pool.parse(name, cidr, vlan, gateway, exclude or [], block_size)
    except PoolConfigError as exc:
        bad_input(str(exc))
    revision = run(lambda store, rt: admin.add_pool(store, pool))
    print(f"pool {pool.name} added: {pool.cidr} vlan {pool.vlan} gateway {pool.gateway}, "
          f"{len(pool.blocks())} blocks of {pool.block_size} (revision {revision})")


@pool_app.command("list")
def pool_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Utilisation of every pool."""
    invalid: list[admin.InvalidKey] = []
    usage = run(lambda store, rt: admin.pool_usage(store, invalid))
    warn_invalid(invalid)
    if as_json:
        print(json.dumps([u.as_dict() for u in usage], indent=2))
        return
    table = Table(title="IP pools")
    for column in ("pool", "cidr", "vlan", "gateway", "allocated", "capacity", "used", "blocks", "nodes"):
        table.add_column(column, justify="left" if column in ("pool", "cidr", "gateway") else "right")
    for u in usage:
        table.add_row(u.pool.name, str(u.pool.cidr), str(u.pool.vlan), str(u.pool.gateway), str(u.allocated),
                      str(u.capacity), f"{u.utilisation:.1%}", f"{u.blocks_claimed}/{u.blocks_total}",
                      str(len(u.nodes)))
    console.print(table)


@pool_app.command("show")
def pool_show(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Utilisation of one pool, per node."""
    invalid: list[admin.InvalidKey] = []
    usage = {u.pool.name: u for u in run(lambda store, rt: admin.pool_usage(store, invalid))}
    warn_invalid(invalid)
    if name not in usage:
        fail(f"pool {name!r} does not exist (pools: {', '.join(sorted(usage)) or 'none'})")
    u = usage[name]
    if as_json:
        print(json.dumps(u.as_dict(), indent=2))
        return
    table = Table(title=f"pool {name}: {u.pool.cidr} vlan {u.pool.vlan}, {u.allocated}/{u.capacity} allocated")
    for column in ("node", "blocks", "allocated"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for node, n in sorted(u.nodes.items()):
        table.add_row(node, str(n.blocks), str(n.allocated))
    console.print(table)


# ------------------------------------------------------------------ leaks


def _textfile_metrics(path: Path | None) -> Any:
    """A registry for --metrics-textfile, or None; the path is checked before anything is asked."""
    if path is None:
        return None
    if path.suffix != ".prom" or not path.parent.is_dir() or path.is_dir():
        bad_input(f"--metrics-textfile {str(path)[:200]!r}: a *.prom file in an existing directory")
    from foundation.adapters.prom_metrics import PromMetrics

    return PromMetrics()


@app.command()
def check(
    grace: Annotated[float, typer.Option(help="seconds a leak must persist before it is certain")] = 60.0,
    wait: Annotated[bool, typer.Option(help="check, wait the grace period, check again")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    exit_code: Annotated[bool, typer.Option(help=f"exit {EXIT_LEAKS} when certain leaks exist")] = False,
    metrics_textfile: Annotated[Path | None, typer.Option(
        help="also write the leak gauges per pool (Prometheus text format, replaced atomically) to this *.prom "
             "file, for node_exporter's textfile collector: how a cron'd check feeds the leak alert")] = None,
) -> None:
    """List addresses allocated in etcd whose pod the Kubernetes API no longer has."""
    grace = duration("grace", grace)
    recorder = _textfile_metrics(metrics_textfile)

    async def action(store: Any, runtime: Any, cluster: Any) -> admin.CheckReport:
        sink = recorder if recorder is not None else NO_METRICS
        report = await admin.check_leaks(store, cluster, runtime, grace=grace, metrics=sink)
        if wait and report.leaks and not all(leak.certain for leak in report.leaks):
            await runtime.sleep(grace)
            report = await admin.check_leaks(store, cluster, runtime, grace=grace, metrics=sink)
        return report

    report = run(action, cluster=True)
    if recorder is not None and metrics_textfile is not None:
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(str(metrics_textfile), recorder.registry)
        except OSError as exc:
            fail(f"--metrics-textfile {metrics_textfile}: cannot write it: {exc.strerror}", EXIT_FAILED)
    warn_invalid(report.invalid)
    if as_json:
        body: dict[str, Any] = {"checked": report.checked, "leaks": [leak.as_dict() for leak in report.leaks]}
        if report.invalid:
            body["invalid"] = [{"key": i.key, "reason": i.reason} for i in report.invalid]
        print(json.dumps(body, indent=2))
    else:
        table = Table(title=f"{len(report.leaks)} leaked of {report.checked} allocated "
                            f"({len(report.certain)} certain)")
        for column in ("address", "pool", "node", "container", "pod", "reason", "state"):
            table.add_column(column)
        for leak in report.leaks:
            table.add_row(leak.address, leak.pool, leak.node, leak.handle, leak.pod, leak.reason,
                          "certain" if leak.certain else "suspect")
        console.print(table)
    if exit_code and report.certain:
        raise typer.Exit(EXIT_LEAKS)


@app.command()
def release(
    addresses: Annotated[list[str] | None, typer.Argument(help="addresses to free")] = None,
    certain: Annotated[bool, typer.Option(help="free every leak the last check marked certain")] = False,
    force: Annotated[bool, typer.Option(help="free the ADDRESSes without asking the Kubernetes API whether a pod "
                                             "still holds them (a live pod's address would go to a second pod)")]
    = False,
) -> None:
    """Free addresses, each by compare-and-swap, once the Kubernetes API shows no pod holds them."""
    if bool(addresses) == certain:
        bad_input("give either addresses or --certain")
    if force and certain:
        bad_input("--force applies to ADDRESSes; --certain frees only what check found leaked")
    for address in addresses or []:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            bad_input(f"{address[:64]!r} is not an IPv4 address")

    async def action(store: Any, runtime: Any, *cluster: Any) -> tuple[list[admin.Released], list[str]]:
        if certain:
            return await admin.release_certain(store, runtime)
        # Each address on its own: one refused or unknown address must not hide what was done to the others.
        released, problems = [], []
        for address in addresses or []:
            try:
                released.append(await admin.release_address(store, runtime, address,
                                                             cluster=cluster[0] if cluster else None, force=force))
            except admin.ReleaseRefused as exc:
                problems.append(f"refused: {exc}")
            except (admin.AdminError, PoolConfigError) as exc:
                problems.append(f"error: {exc}")
        return released, problems

    if addresses and not force and not (settings.kube_api or settings.kubeconfig):
        bad_input("release needs the Kubernetes API to check that the pod is gone: give --kube-api URL or "
                  "--kubeconfig FILE (or --force)")
    released, skipped = run(action, cluster=bool(addresses) and not force)
    for r in released:
        print(r)
    if certain:
        for reason in skipped:
            print(f"skipped: {reason}")
        return
    for problem in skipped:
        print(f"cnictl: {problem}", file=sys.stderr)
    if skipped:
        raise typer.Exit(1)


@app.command()
def gc(
    cooldown: Annotated[float, typer.Option(help="keep blocks with releases younger than this (seconds): "
                                                  "the agents' --cooldown plus a margin for clock skew")] = 90.0,
) -> None:
    """Free empty blocks of nodes that left the cluster, and records that point at nothing."""
    cooldown = duration("cooldown", cooldown)
    report = run(lambda store, rt, cluster: admin.gc(store, cluster, rt, cooldown=cooldown), cluster=True)
    warn_invalid(report.invalid)
    if report.invalid:
        print("cnictl: warning: unreadable blocks: stray handles and leak records left alone", file=sys.stderr)
    print(f"blocks freed: {len(report.blocks_freed)}, stray handles removed: {len(report.stray_handles)}, "
          f"stale leak records removed: {len(report.stale_leak_records)}")
    for key in report.blocks_freed:
        print(f"  freed {key}")


def main() -> None:
    run_app(app, "cnictl")


if __name__ == "__main__":
    main()
