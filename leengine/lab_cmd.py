"""``leengine lab up|status|down``: a Region of real agents on this one machine (lab/lab.py does the work).

  leengine lab up [SCENARIO] [--dir DIR]      bring a lab up (default: scenarios/default.yaml, as its
                                              ``lab:`` block scales it); refused if DIR holds a live lab
  leengine lab status [--dir DIR] [--json]    processes (alive/dead, pid), fabric, pool use and serving state
  leengine lab down [--dir DIR] [--json]      remove everything the lab made (also after a crash of `lab up`)
  leengine lab run SCENARIO [--seed N] [--out OUT] [--dir DIR] [--down]
                                              replay the scenario on the lab (lab/run.py): OUT/report.json
                                              in the sim's shape; exit 1 when a check fails
  leengine lab env [--dir DIR]                 shell exports pointing the commands at the lab's etcd and
                                              control service: eval "$(leengine lab env)"
  leengine lab bind APP --domain GROUP/DOMAIN [--port P] [--dir DIR]
                                              serve a platform app made by hand (leengine app create) through
                                              the lab's Nginx: its domain, a discovery binding (lab/services.py)
  leengine lab fit LAB_REPORT... [--out FILE]  fit the sim's cost models from lab reports (lab/fit.py)
  leengine lab fault KIND [--target NAME]... [--duration S] [--undo] [--dir DIR]
                                              break the running lab by hand with one fault of a
                                              scenario (lab/hand.py), undone after S or by --undo

Exit codes as every command (leengine/command.py): 0 ok; 1 failed (the lab could not come up,
a process of a lab is dead, something could not be removed); 2 bad input (a scenario that does
not validate or cannot be laid out, a bad option). Errors are one line. Needs root.

It must not know how a lab is made: it parses options, calls lab/lab.py and prints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from leengine.command import BadInput, Failed
from leengine.compare_cmd import lab_fit

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "default.yaml"
DEFAULT_DIR = Path("/var/lib/leengine/lab")

lab_app = typer.Typer(no_args_is_help=True, help="A Region of real agents on this machine: up, status, down.")

DirOpt = Annotated[Path, typer.Option("--dir", metavar="DIR", help="the lab directory (one lab per directory)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


def _need_root() -> None:
    if os.geteuid() != 0:
        raise Failed("the lab needs root (network namespaces, Open vSwitch)")


@lab_app.command("up")
def lab_up(
    scenario: Annotated[Path | None, typer.Argument(metavar="[SCENARIO]",
                                                    help="a scenario YAML file (default: scenarios/default.yaml)")]
    = None,
    directory: DirOpt = DEFAULT_DIR,
    mgmt_cidr: Annotated[str, typer.Option("--mgmt-cidr", help="the management network (a /16)")] = "198.18.0.0/16",
    services: Annotated[bool, typer.Option(help="start the services (--no-services: the network only)")] = True,
) -> None:
    """Bring up a lab of SCENARIO: namespaces, OVS bridges, router, then etcd, control, APIs, agents."""
    from lab.lab import Lab, LabError, LabInputError

    path = scenario or DEFAULT_SCENARIO
    if not path.is_file():
        raise BadInput(f"{path}: no such scenario file")
    _need_root()
    started = time.monotonic()
    try:
        lab = Lab.up(directory, path, mgmt_cidr=mgmt_cidr, services=services)
    except LabInputError as exc:
        raise BadInput(str(exc)) from None
    except LabError as exc:
        raise Failed(str(exc)) from None
    p = lab.plan
    print(f"lab {lab.id} up in {time.monotonic() - started:.1f} s: {len(p.cells)} Cells, {len(p.nodes)} nodes, "
          f"{len(p.hosts)} hosts, {len(p.bridges)} bridges; dir {lab.dir}; management {p.mgmt_cidr}")


@lab_app.command("status")
def lab_status(directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Show the lab's processes (alive or dead), its fabric, pool use and serving state; exit 1 if one is dead."""
    from lab.lab import Lab, LabError

    try:
        lab = Lab.load(directory)
        status = lab.status()
    except LabError as exc:
        raise Failed(str(exc)) from None
    dead = sorted(n for n, p in status["processes"].items() if not p["alive"])
    if as_json:
        print(json.dumps(status, indent=1, sort_keys=True, default=str))
    else:
        _print_status(status)
    if dead:
        raise typer.Exit(1)


def _print_status(status: dict[str, Any]) -> None:
    fabric = status["fabric"]
    print(f"lab {status['id']} ({status['state']}) in {status['dir']}: scenario {status['scenario']}")
    print(f"fabric: OVS {'up' if fabric['ovs'] else 'DOWN'}, {fabric['bridges']}/{fabric['bridges_planned']} "
          f"bridges, {fabric['netns']} namespaces, Cells cut: {', '.join(fabric['cells_cut']) or 'none'}")
    procs = status["processes"]
    alive = sum(1 for p in procs.values() if p["alive"])
    print(f"processes: {alive}/{len(procs)} alive")
    for name, p in sorted(procs.items()):
        print(f"  {'alive' if p['alive'] else 'DEAD ':5}  {p['pid'] if p['pid'] else '-':>7}  {name}")
    rows = status.get("services") or []  # lab.services.services_status: rows of kind process / nginx / pool
    for r in rows:
        if r.get("kind") == "error":
            print(f"services: {r.get('error')}")
    nginx = [r for r in rows if r.get("kind") == "nginx"]
    if nginx:
        print("nginx hosts:")
        for r in nginx:
            state = f"serving generation {r.get('generation')}" if r.get("serving") else "NOT serving"
            print(f"  {r.get('host')} ({r.get('group')}) {r.get('address')}: {state}")
    pools = [r for r in rows if r.get("kind") == "pool"]
    if pools:
        print("pools:")
        for r in pools:
            if "error" in r:
                print(f"  pool use unknown: {r['error']}")
                continue
            print(f"  {r.get('pool')} {r.get('cidr')} vlan {r.get('vlan')}: {r.get('allocated')}/{r.get('capacity')}"
                  f" addresses allocated, {r.get('blocks_claimed')}/{r.get('blocks_total')} blocks claimed")


@lab_app.command("env")
def lab_env(directory: DirOpt = DEFAULT_DIR) -> None:
    """Print shell exports that point leengine, cnictl and leengine app at this lab (eval "$(leengine lab env)")."""
    import shlex

    from lab.lab import Lab, LabError
    from lab.services import files, lab_environment

    try:
        lab = Lab.load(directory)
    except LabError as exc:
        raise Failed(str(exc)) from None
    env = lab_environment(lab)
    if not files(lab).admin_token_file.exists():
        raise Failed(f"lab {lab.id} in {directory} has no services (lab up --no-services?): nothing to point at")
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")


@lab_app.command("bind")
def lab_bind(
    app: Annotated[str, typer.Argument(metavar="APP", help="the platform app (its namespace in every Cell)")],
    domain: Annotated[str, typer.Option("--domain", metavar="GROUP/DOMAIN", help="the Nginx group and domain")],
    port: Annotated[int, typer.Option("--port", help="the port its versions serve on")] = 8080,
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Serve a platform app made by hand through the lab's Nginx: make its domain, bind it in discovery."""
    from foundation.ports.proxy_domain import DomainError
    from lab.lab import Lab, LabError
    from lab.services import ServiceError, bind_app

    _need_root()
    group, sep, name = domain.partition("/")
    if not sep:
        raise BadInput(f"--domain {domain!r}: expected GROUP/DOMAIN")
    try:
        lab = Lab.load(directory)
        added = bind_app(lab, app, group, name, port)
    except (ValueError, DomainError) as exc:
        raise BadInput(str(exc)) from None
    except (LabError, ServiceError, OSError) as exc:
        raise Failed(str(exc)) from None
    print(f"{app}: {group}/{name} " + ("bound; discovery restarted" if added else "was bound already"))


@lab_app.command("down")
def lab_down(directory: DirOpt = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Remove everything the lab made (processes, bridges, namespaces, interfaces, runtime files); keep its logs."""
    from lab.lab import LabError, down_lab

    _need_root()
    try:
        report = down_lab(directory)
    except LabError as exc:
        raise Failed(str(exc)) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=1, sort_keys=True))
    elif report.id is None:
        print(f"no lab in {directory}: nothing to remove")
    else:
        print(f"lab {report.id} down in {report.seconds:.1f} s: {len(report.processes)} processes stopped, "
              f"{len(report.bridges)} bridges, {len(report.netns)} namespaces, {len(report.interfaces)} interfaces, "
              f"{len(report.files)} runtime files removed (logs kept in {directory / 'logs'})")
        if report.skipped_records:
            print(f"warning: {report.skipped_records} unreadable line(s) in made.jsonl were ignored", file=sys.stderr)
    if not report.clean:
        raise Failed(f"lab {report.id}: left behind {json.dumps(report.left)}")


@lab_app.command("run")
def lab_run(
    scenario: Annotated[Path, typer.Argument(metavar="SCENARIO",
                                             help="a scenario YAML file (its lab: block scales it)")],
    seed: Annotated[int | None, typer.Option("--seed", help="override the scenario's seed")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="OUT",
                                             help="where report.json goes (default runs/lab/NAME-seedN)")] = None,
    directory: DirOpt = DEFAULT_DIR,
    down: Annotated[bool, typer.Option("--down/--keep", help="lab down after the run (default: keep it up)")]
    = False,
) -> None:
    """Replay SCENARIO on the lab in DIR (brought up if DIR has none) in real time; write OUT/report.json."""
    import asyncio

    from lab.lab import LabError, LabInputError, down_lab
    from lab.run import LabRunError, open_lab, run_lab
    from leengine.cli import _code_version
    from sim.fault_times import draw_fault_times
    from sim.scenario import ScenarioError, load_scenario
    from sim.scenario_lab import lab_scaled

    try:
        loaded = load_scenario(scenario, seed=seed)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None
    spec = draw_fault_times(lab_scaled(loaded.spec))  # fault times drawn for the seed as the sim's Region draws them
    _need_root()
    target = out or Path("runs") / "lab" / f"{spec.name}-seed{spec.seed}"
    try:
        lab, _ = open_lab(loaded, directory)
    except LabInputError as exc:
        raise BadInput(str(exc)) from None
    except (LabError, LabRunError) as exc:
        raise Failed(str(exc)) from None
    try:
        report = asyncio.run(run_lab(loaded, spec, lab, target, code_version=_code_version()))
    finally:
        if down:
            down_lab(directory)
    for check in report["checks"]:
        print(f"{'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {check['detail']}")
    print(f"{target / 'report.json'}: {'passed' if report['passed'] else 'FAILED'} "
          f"({report['virtual_seconds']:g} s on lab {lab.id})")
    if not report["passed"]:
        raise typer.Exit(1)


# `leengine lab fit` lives with compare (leengine/compare_cmd.py: lab/fit.py does the work).
lab_app.command("fit")(lab_fit)


@lab_app.command("fault")
def lab_fault(
    kind: Annotated[str, typer.Argument(metavar="KIND", help="a fault kind of the scenarios (host-crash, "
                                        "runtime-death, cell-outage, etcd-slow, etcd-unavailable, reload-storm, "
                                        "nginx-host-loss, pool-exhaustion, builder-crash)")],
    target: Annotated[list[str] | None, typer.Option("--target", metavar="NAME",
                                                     help="a target by name (repeat; none: every target "
                                                          "of the kind, or etcd itself for etcd-unavailable)")]
    = None,
    duration: Annotated[float | None, typer.Option("--duration", metavar="S", min=0.0,
                                                   help="undo after S seconds (the command waits)")] = None,
    undo: Annotated[bool, typer.Option("--undo", help="mend what `lab fault KIND` broke earlier")] = False,
    factor: Annotated[float | None, typer.Option(help="etcd-slow: x the scenario's etcd round trip")] = None,
    changes: Annotated[int | None, typer.Option(help="reload-storm: domain changes within --duration")] = None,
    pool: Annotated[str, typer.Option(help="pool-exhaustion: the pool")] = "",
    free: Annotated[int, typer.Option(min=0, help="pool-exhaustion: addresses left free")] = 0,
    group: Annotated[str, typer.Option(help="reload-storm, nginx-host-loss: the Nginx group")] = "",
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Apply one fault to the running lab now (its persistent controller heals), then undo it."""
    import asyncio

    from foundation.ports import StoreError
    from lab import services
    from lab.hand import HandFaultError, HandFaultInput, hand_fault
    from lab.lab import Lab, LabError

    _need_root()
    try:
        lab = Lab.load(directory)
        spec = services.lab_spec(lab)
        asyncio.run(hand_fault(lab, spec, kind, list(target or []), duration=duration, undo=undo, factor=factor,
                               changes=changes, pool=pool, free=free, group=group))
    except HandFaultInput as exc:
        raise BadInput(str(exc)) from None
    except (HandFaultError, LabError, services.ServiceError, StoreError, OSError) as exc:
        raise Failed(str(exc)) from None
