"""The ``leengine`` command: the entry point that picks adapters and runs agents.

Subcommands:
  leengine demo              the spine's simulated demo (no services needed)
  leengine store ...         inspect a real etcd through the Store port (status, get, put, ls)
  leengine install-cni DIR   install the leengine-cni plugin into a CNI bin directory (e.g. /opt/cni/bin)

Every error a user can cause or meet (bad option, etcd unreachable) ends as one
readable line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from foundation.ports import StoreError
from leengine.typer_main import run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LeEngine testbed: node agents, control service and a SimPy model of the platform.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect a real etcd through the Store port.")
app.add_typer(store_app, name="store")
console = Console()
EXIT_FAILED = 1


def fail(message: str) -> None:
    """Print one line naming what went wrong and exit non-zero."""
    print(f"leengine: error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_FAILED)


@app.command()
def demo(
    nodes: Annotated[int, typer.Option(help="simulated nodes")] = 50,
    slots: Annotated[int, typer.Option(help="slots they compete for")] = 200,
    duration: Annotated[float, typer.Option(help="virtual seconds to simulate")] = 600.0,
    seed: Annotated[int, typer.Option(help="seed of the run's one random source")] = 1,
    crashes: Annotated[int, typer.Option(help="nodes that crash without releasing")] = 5,
    partitions: Annotated[int, typer.Option(help="nodes that lose etcd for 30 s")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    trace_out: Annotated[Path | None, typer.Option(help="write the event trace, one line per event")] = None,
) -> None:
    """Simulated nodes claim and release keys through the sim Store, with crashes and partitions."""
    from sim.demo import DemoConfig, run_demo

    try:
        config = DemoConfig(nodes=nodes, slots=slots, duration=duration, seed=seed, crashes=crashes,
                            partitions=partitions)
    except ValueError as exc:
        fail(str(exc))
    started = time.perf_counter()
    report, runtime = run_demo(config, keep_trace_lines=trace_out is not None)
    wall = time.perf_counter() - started
    if trace_out is not None:
        trace_out.write_text("\n".join(runtime.trace_log.lines or []) + "\n")
    if as_json:
        print(json.dumps({**report.as_dict(), "wall_seconds": round(wall, 3)}, indent=2))
    else:
        _print_demo_summary(report, wall)
    if report.stats.safety_violations:
        for line in report.stats.violations[:10]:
            print(f"violation: {line}", file=sys.stderr)
        raise typer.Exit(EXIT_FAILED)


def _print_demo_summary(report: Any, wall: float) -> None:
    s, c = report.stats, report.config
    table = Table(title=f"claims demo: {c.nodes} nodes, {c.slots} slots, {c.duration:g} virtual s, seed {c.seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("claim attempts", s.attempts),
        ("claims won (CAS succeeded)", s.wins),
        ("CAS conflicts (slot taken)", s.conflicts),
        ("releases", s.releases),
        ("nodes crashed (no release)", s.crashed_nodes),
        ("claims freed by lease expiry", s.claims_freed_by_lease_expiry),
        ("requests failed: etcd unreachable", s.unavailable_errors),
        ("nodes rejoined after losing their lease", s.rejoins),
        ("watch events seen by the auditor", s.watch_events),
        ("safety violations (two owners)", s.safety_violations),
        ("final store revision", report.final_revision),
        ("trace events", report.trace_events),
        ("wall time", f"{wall:.2f} s"),
        ("virtual/wall speed-up", f"{report.virtual_seconds / wall:,.0f}x"),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    console.print(f"trace_sha256 {report.trace_sha256}")


# ------------------------------------------------------------------ install-cni


@app.command("install-cni")
def install_cni(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="the runtime's CNI bin dir, e.g. /opt/cni/bin")],
) -> None:
    """Install the leengine-cni plugin (a standalone copy run as `python -IS`) into DIR, atomically."""
    from leengine.cni_install import InstallError, install_plugin

    try:
        target = install_plugin(directory)
    except (InstallError, OSError) as exc:
        fail(str(exc))
    print(f"installed {target} (#!{sys.executable} -IS)")


# ------------------------------------------------------------------ store


def _with_store(endpoint: str, timeout: float, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from foundation.adapters.etcd_store import EtcdStore

    async def main() -> Any:
        store = await EtcdStore.open(endpoint, timeout=timeout)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (StoreError, ValueError) as exc:
        fail(str(exc))


EndpointOpt = Annotated[str, typer.Option(help="etcd client endpoint host:port", envvar="LEENGINE_ETCD")]
TimeoutOpt = Annotated[float, typer.Option(help="seconds to wait for etcd before giving up")]


@store_app.command("status")
def store_status(endpoint: EndpointOpt = "127.0.0.1:2379", timeout: TimeoutOpt = 3.0) -> None:
    """Print etcd's current revision."""
    revision = _with_store(endpoint, timeout, lambda s: s.revision())
    print(f"{endpoint} revision {revision}")


@store_app.command("get")
def store_get(key: str, endpoint: EndpointOpt = "127.0.0.1:2379", timeout: TimeoutOpt = 3.0) -> None:
    """Print one key's value and revisions."""
    kv = _with_store(endpoint, timeout, lambda s: s.get(key))
    if kv is None:
        fail(f"key {key!r} not found")
    print(f"{kv.key} = {kv.value.decode(errors='replace')} (version {kv.version}, mod_revision {kv.mod_revision})")


@store_app.command("put")
def store_put(key: str, value: str, endpoint: EndpointOpt = "127.0.0.1:2379", timeout: TimeoutOpt = 3.0) -> None:
    """Write one key."""
    result = _with_store(endpoint, timeout, lambda s: s.put(key, value.encode()))
    print(f"revision {result.revision}")


@store_app.command("ls")
def store_ls(prefix: str, endpoint: EndpointOpt = "127.0.0.1:2379", timeout: TimeoutOpt = 3.0) -> None:
    """List keys under a prefix."""
    result = _with_store(endpoint, timeout, lambda s: s.range(prefix))
    for kv in result.kvs:
        print(kv.key)


def main() -> None:
    run_app(app, "leengine")


if __name__ == "__main__":
    main()
