"""The ``leengine`` command: the entry point that picks adapters and runs agents.

Subcommands:
  leengine demo              the spine's simulated demo (no services needed)
  leengine sim run [SCENARIO] replay a scenario file on the simulated Region (default: scenarios/default.yaml)
  leengine sim validate SCENARIO  check a scenario file without running it
  leengine sim sweep SCENARIO --seeds 1-1000  many seeds on Dask, failures grouped (leengine/sweep_cmd.py)
  leengine sim shrink SCENARIO --seed N       a failing run shrunk to a smaller scenario file
  leengine store ...         inspect a real etcd through the Store port (status, get, put, ls; --json
                             on the reads); --etcd, --etcd-timeout, TLS with --etcd-ca/--etcd-cert/--etcd-key
                             (leengine/etcd_options.py; the old --endpoint/--timeout still work, hidden)
  leengine compare SIM LAB   hold a sim run against a lab run (leengine/compare_cmd.py)
  leengine install-cni DIR   install the leengine-cni plugin into a CNI bin directory (e.g. /opt/cni/bin)
  leengine app ...           apps, versions, members, activity on the control service (leengine/app_cmd.py)
  leengine image-group ...   image groups (public/private); leengine robot ...: robot accounts (leengine/image_cmd.py)

Every error a user can cause or meet (bad option, etcd unreachable) ends as one
readable line on stderr, never a traceback; exit 1 for a failure, 2 for bad input
(``leengine/command.py`` lists the codes of every command). ``--log-level`` goes before
the subcommand.
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
from leengine.app_cmd import app_app
from leengine.command import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    Failed,
    LogLevelOpt,
    configure_logging,
    run_app,
)
from leengine.compare_cmd import compare as compare_command
from leengine.etcd_options import (
    DEFAULT_ETCD,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdKeyOpt,
    EtcdOpt,
    EtcdSettings,
    EtcdTimeoutOpt,
    check_timeout,
)
from leengine.image_cmd import image_group_app, robot_app
from leengine.lab_cmd import lab_app
from leengine.registry_gate import registry_gate_command
from leengine.registry_key_cmd import registry_key_command
from leengine.sweep_cmd import shrink_command, sweep_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LeEngine testbed: node agents, control service and a SimPy model of the platform.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect a real etcd through the Store port.")
app.add_typer(store_app, name="store")
sim_app = typer.Typer(no_args_is_help=True, help="Replay scenario files on the simulated Region.")
app.add_typer(sim_app, name="sim")
app.add_typer(lab_app, name="lab")
app.add_typer(app_app, name="app")  # leengine/app_cmd.py: the platform's apps, members, activity
app.add_typer(image_group_app, name="image-group")  # leengine/image_cmd.py: public/private image groups
app.add_typer(robot_app, name="robot")  # leengine/image_cmd.py: robot accounts of the registry
app.command("compare")(compare_command)  # leengine/compare_cmd.py: sim report vs lab report
app.command("registry-key")(registry_key_command)  # leengine/registry_key_cmd.py: the registry tokens' key
app.command("registry-gate")(registry_gate_command)  # leengine/registry_gate.py: immutable tags
sim_app.command("sweep")(sweep_command)  # leengine/sweep_cmd.py: many seeds on Dask, failures grouped
sim_app.command("shrink")(shrink_command)  # leengine/sweep_cmd.py: a failing run made small
console = Console()
DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "default.yaml"


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print one line naming what went wrong and exit ``code`` (1: failed; 2: bad input)."""
    print(f"leengine: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


@app.callback()
def configure(log_level: LogLevelOpt = "warning") -> None:
    configure_logging(log_level)


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
        fail(str(exc), EXIT_BAD_INPUT)
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


# ------------------------------------------------------------------ sim


def _load_scenario_or_exit(path: Path, seed: int | None) -> Any:
    """The validated scenario, or one line on stderr and exit 2 (nothing runs)."""
    from sim.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(path, seed=seed)
    except ScenarioError as exc:
        print(f"leengine: error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:  # a bug in the validator: still one line, never a traceback
        error = ScenarioError(str(path), 0, "file", f"cannot validate (a bug: {type(exc).__name__}: {exc})")
        print(f"leengine: error: {error}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _code_version() -> dict[str, Any]:
    """The git commit of the code that ran (and whether the tree had changes), if git knows."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "dirty": None, "package_version": _package_version()}
    return {"git_commit": commit, "dirty": dirty, "package_version": _package_version()}


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leengine-testbed")
    except PackageNotFoundError:
        return None


ScenarioArg = Annotated[Path, typer.Argument(metavar="SCENARIO", help="a scenario YAML file (see docs/sim.md)")]


@sim_app.command("validate")
def sim_validate(
    scenario: ScenarioArg,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Check a scenario file (fields, topology, selectors) without running it."""
    loaded = _load_scenario_or_exit(scenario, None)
    spec = loaded.spec
    nodes = sum(c.nodes for c in spec.cells)
    pods = sum(a.replicas * len(a.cells) for a in spec.apps)
    if as_json:
        print(json.dumps({"scenario": str(scenario), "name": spec.name, "seed": spec.seed, "duration": spec.duration,
                          "cells": len(spec.cells), "nodes": nodes, "apps": len(spec.apps), "pods": pods,
                          "faults": len(spec.faults), "checks": len(spec.checks), "sha256": loaded.sha256}, indent=2))
        return
    print(f"{scenario}: ok: {spec.name}, seed {spec.seed}, {spec.duration:g} virtual s, {len(spec.cells)} Cells, "
          f"{nodes} nodes, {len(spec.apps)} apps, {pods} pods, {len(spec.faults)} faults, {len(spec.checks)} checks; "
          f"sha256 {loaded.sha256}")


@sim_app.command("run")
def sim_run(
    scenario: Annotated[Path | None, typer.Argument(metavar="[SCENARIO]",
                                                    help="a scenario YAML file (default: scenarios/default.yaml)")]
    = None,
    seed: Annotated[int | None, typer.Option(help="override the scenario's seed")] = None,
    out: Annotated[Path | None, typer.Option(help="write report.json, metrics.json and PNG plots here "
                                                  "(default: runs/NAME-seedN)")] = None,
    plots: Annotated[bool, typer.Option(help="draw PNG plots of the metrics")] = True,
    lab: Annotated[bool, typer.Option("--lab", help="run the scenario as its `lab:` block scales it for the "
                                                    "one-machine lab (report says \"scale\": \"lab\")")] = False,
) -> None:
    """Replay a scenario on the simulated Region; exit 1 if any check fails."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.runner import output_dir, run_scenario, write_outputs

    loaded = _load_scenario_or_exit(scenario or DEFAULT_SCENARIO, seed)
    if lab:
        import dataclasses

        from sim.scenario_lab import lab_scaled

        loaded = dataclasses.replace(loaded, spec=lab_scaled(loaded.spec))
    spec = loaded.spec
    default_dir = output_dir(spec)
    out_dir = out or (default_dir.with_name(default_dir.name + "-lab") if lab else default_dir)
    err_console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} virtual s"), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        bar = progress.add_task(f"{spec.name} seed {spec.seed}", total=spec.duration)
        try:
            result = run_scenario(loaded, on_progress=lambda t: progress.update(bar, completed=t))
        except Exception as exc:  # a bug in the world or in agent code: one line, not a traceback
            print(f"leengine: error: the simulation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_FAILED) from None
    wall = time.perf_counter() - started
    report = write_outputs(result, out_dir, code_version=_code_version(), wall_seconds=wall, plot=plots)
    _print_sim_summary(report, out_dir)
    if not report["passed"]:
        raise typer.Exit(EXIT_FAILED)


def _print_sim_summary(report: dict[str, Any], out_dir: Path) -> None:
    scen = report["scenario"]
    table = Table(title=f"{scen['name']}: seed {report['seed']}, {report['virtual_seconds']:g} virtual s "
                        f"in {report['wall_seconds']:.2f} s wall")
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("detail", overflow="fold")
    for check in report["checks"]:
        verdict = "[green]pass[/green]" if check.get("passed") else "[red]FAIL[/red]"
        table.add_row(str(check.get("name", "?")), verdict, str(check.get("detail", "")))
    console.print(table)
    if report["metrics_summary"]:
        metrics = Table(title="metrics")
        for column in ("metric", "min", "max", "mean", "last"):
            metrics.add_column(column, justify="left" if column == "metric" else "right")
        for name, s in report["metrics_summary"].items():
            metrics.add_row(name, *("-" if s[k] is None else f"{s[k]:,.4g}" for k in ("min", "max", "mean", "last")))
        console.print(metrics)
    for t in report.get("fault_times", []):  # faults whose times this seed drew (sim/fault_times.py)
        drawn = [f"{key} {t[key]:g} s (drawn from {t[key + '_range'][0]:g}-{t[key + '_range'][1]:g})"
                 for key in ("at", "duration") if key + "_range" in t]
        console.print(f"faults[{t['fault']}] {t['kind']} (line {t['line']}): {', '.join(drawn)}")
    failed = sum(1 for c in report["checks"] if not c.get("passed"))
    status = "[green]all checks passed[/green]" if not failed else f"[red]{failed} check(s) failed[/red]"
    console.print(f"{status}; trace_sha256 {report['trace_sha256']}; report {out_dir / 'report.json'}")


# ------------------------------------------------------------------ install-cni


@app.command("install-cni")
def install_cni(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="the runtime's CNI bin dir, e.g. /opt/cni/bin")],
    python: Annotated[str | None, typer.Option(
        help="install the Python plugin, run by this interpreter (absolute path, Python >= 3.10). It needs only the "
             "standard library: a statically linked system python3 starts faster (docs/cni.md)")] = None,
    plugin: Annotated[str, typer.Option(
        help="auto: the compiled Go plugin (built offline by scripts/build-cni-plugin.sh) unless --python is given "
             "or Go is missing, then the Python one; go: Go or fail; python: the Python one")] = "auto",
) -> None:
    """Install the leengine-cni plugin into DIR, atomically: the compiled Go forwarder where it can be built, else
    the Python one (a sh script answering VERSION, precompiled Python run as `python -IS` for the rest)."""
    from leengine.cni_install import InstallError, install

    try:
        installed = install(directory, python=python, plugin=plugin)
    except InstallError as exc:  # no such directory, an interpreter the exec line cannot name, no Go plugin (go)
        fail(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        fail(str(exc))
    print(f"installed {installed.path} ({installed.how})")


# ------------------------------------------------------------------ store


def _with_store(etcd: EtcdSettings, action: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = await etcd.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (StoreError, ValueError) as exc:
        raise Failed(str(exc)) from None


def _etcd(etcd: str, etcd_timeout: float, endpoint: str | None, timeout: float | None,
          tls: tuple[Path | None, Path | None, Path | None]) -> EtcdSettings:
    """The store commands' etcd flags, checked (``--endpoint``/``--timeout``: their old names, hidden)."""
    return EtcdSettings.from_options(endpoint or etcd, timeout or etcd_timeout, *tls)


STORE_TIMEOUT = 3.0
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", hidden=True)]
OldTimeoutOpt = Annotated[float | None, typer.Option("--timeout", hidden=True, callback=check_timeout)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


@store_app.command("status")
def store_status(
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = STORE_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    as_json: JsonOpt = False,
    endpoint: EndpointOpt = None,
    timeout: OldTimeoutOpt = None,
) -> None:
    """Print etcd's current revision."""
    settings = _etcd(etcd, etcd_timeout, endpoint, timeout, (etcd_ca, etcd_cert, etcd_key))
    revision = _with_store(settings, lambda s: s.revision())
    print(json.dumps({"endpoint": settings.endpoint, "revision": revision}) if as_json
          else f"{settings.endpoint} revision {revision}")


@store_app.command("get")
def store_get(
    key: str,
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = STORE_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    as_json: JsonOpt = False,
    endpoint: EndpointOpt = None,
    timeout: OldTimeoutOpt = None,
) -> None:
    """Print one key's value and revisions (exit 1 when the key does not exist)."""
    settings = _etcd(etcd, etcd_timeout, endpoint, timeout, (etcd_ca, etcd_cert, etcd_key))
    kv = _with_store(settings, lambda s: s.get(key))
    if kv is None:
        raise Failed(f"key {key!r} not found")
    if as_json:
        print(json.dumps({"key": kv.key, "value": kv.value.decode(errors="replace"), "version": kv.version,
                          "create_revision": kv.create_revision, "mod_revision": kv.mod_revision}))
        return
    print(f"{kv.key} = {kv.value.decode(errors='replace')} (version {kv.version}, mod_revision {kv.mod_revision})")


@store_app.command("put")
def store_put(
    key: str,
    value: str,
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = STORE_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    endpoint: EndpointOpt = None,
    timeout: OldTimeoutOpt = None,
) -> None:
    """Write one key."""
    settings = _etcd(etcd, etcd_timeout, endpoint, timeout, (etcd_ca, etcd_cert, etcd_key))
    result = _with_store(settings, lambda s: s.put(key, value.encode()))
    print(f"revision {result.revision}")


@store_app.command("ls")
def store_ls(
    prefix: str,
    etcd: EtcdOpt = DEFAULT_ETCD,
    etcd_timeout: EtcdTimeoutOpt = STORE_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    as_json: JsonOpt = False,
    endpoint: EndpointOpt = None,
    timeout: OldTimeoutOpt = None,
) -> None:
    """List keys under a prefix."""
    settings = _etcd(etcd, etcd_timeout, endpoint, timeout, (etcd_ca, etcd_cert, etcd_key))
    result = _with_store(settings, lambda s: s.range(prefix))
    if as_json:
        print(json.dumps([{"key": kv.key, "version": kv.version, "mod_revision": kv.mod_revision}
                          for kv in result.kvs]))
        return
    for kv in result.kvs:
        print(kv.key)


def main() -> None:
    run_app(app, "leengine")


if __name__ == "__main__":
    main()
