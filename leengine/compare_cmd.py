"""``leengine compare SIM_REPORT LAB_REPORT`` and ``leengine lab fit LAB_REPORT... --out FILE``.

  leengine compare SIM LAB... [--out DIR] [--strict] [--json]
      check verdicts side by side, exact counts, distributions (median, p90, lab/sim, band);
      several lab runs of the scenario and seed: every run's verdicts and counts, samples pooled
      (lab/compare.py); --out DIR writes compare.png (CDF overlay), compare.html, compare.json.
      Exit 1 when a verdict differs (with --strict also when a count differs or a distribution
      is outside its band); 2 on bad input (a missing file, not a report): one line.
  leengine lab fit LAB_REPORT... [--out scenarios/costs.yaml] [--base FILE]
      fit the sim's cost models from lab reports' samples (lab/fit.py) and write the costs file.

It must not know how reports are made or read: lab/compare.py and lab/fit.py do the work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from leengine.command import EXIT_BAD_INPUT, EXIT_FAILED

DEFAULT_COSTS = Path(__file__).resolve().parents[1] / "scenarios" / "costs.yaml"


def _fail(message: str, code: int) -> None:
    print(f"leengine: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _fmt(value: float | bool | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "[green]pass[/green]" if value else "[red]FAIL[/red]"
    return "inf" if value == float("inf") else f"{value:.{digits}g}"


def compare(
    sim_report: Annotated[Path, typer.Argument(metavar="SIM_REPORT", help="report.json of `leengine sim run --lab`")],
    lab_reports: Annotated[list[Path], typer.Argument(metavar="LAB_REPORT...",
                                                      help="report.json of `leengine lab run` (several runs: pooled)")],
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR",
                                             help="write compare.png, compare.html and compare.json here")] = None,
    strict: Annotated[bool, typer.Option(help="also exit 1 on a different count or a distribution out of band")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")] = False,
) -> None:
    """Hold a simulated run against lab runs of the same scenario and seed; exit 1 if a verdict differs."""
    from lab.compare import CompareError, lab_value, load_report, write_outputs
    from lab.compare import compare as compare_reports

    try:
        sim, labs = load_report(sim_report), [load_report(p) for p in lab_reports]
        result = compare_reports(sim, labs)
    except CompareError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: wide enough for the distributions table
            console = Console(width=132)
        checks = Table(title=f"check verdicts: sim {result.sim_name} | lab {result.lab_name}")
        for column in ("check", "sim", "lab", ""):
            checks.add_column(column)
        for c in result.checks:
            checks.add_row(c.name, _fmt(c.sim), lab_value(c), "equal" if c.equal else "[red]DIFFERENT[/red]")
        console.print(checks)
        counts = Table(title="exact counts")
        for column in ("count", "sim", "lab", ""):
            counts.add_column(column, justify="left" if column == "count" else "right")
        for n in result.counts:
            counts.add_row(n.name, _fmt(n.sim, 9), lab_value(n, 9),
                           "equal" if n.equal else "[yellow]different[/yellow]")
        console.print(counts)
        dists = Table(title="distributions (seconds)")
        for column in ("samples", "sim n", "lab n", "sim median", "sim p90", "lab median", "lab p90", "lab/sim",
                       "band", ""):
            dists.add_column(column, justify="left" if column == "samples" else "right")
        for d in result.distributions:
            verdict = {None: "no samples", True: "[green]within[/green]", False: "[red]outside[/red]"}[d.within]
            dists.add_row(d.name, str(len(d.sim)), str(len(d.lab)), _fmt(d.median("sim")), _fmt(d.p90("sim")),
                          _fmt(d.median("lab")), _fmt(d.p90("lab")), _fmt(d.ratio, 3), f"±{d.band:.0%}", verdict)
        console.print(dists)
        for i, (load, rates) in enumerate(zip(result.lab_loads, result.lab_rates, strict=True), 1):
            run = f" {i}" if len(result.lab_loads) > 1 else ""
            if load is not None:  # the lab's timings move with it
                console.print(f"lab run{run}'s machine: {load}", markup=False, highlight=False)
            if rates is not None:
                console.print(f"lab run{run}'s reference rates: {rates}", markup=False, highlight=False)
    if out is not None:
        try:
            files = write_outputs(result, out)
        except OSError as exc:
            _fail(f"{out}: {exc.strerror or exc}", EXIT_FAILED)
        print(f"wrote {files['png']} and {files['html']}", file=sys.stderr if as_json else sys.stdout)
    if not result.verdicts_equal or (strict and not (result.counts_equal and result.within_bands)):
        raise typer.Exit(EXIT_FAILED)


def lab_fit(
    reports: Annotated[list[Path], typer.Argument(metavar="LAB_REPORT...", help="report.json files of `lab run`")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="the costs file to write")] = DEFAULT_COSTS,
    base: Annotated[Path | None, typer.Option("--base", metavar="FILE",
                                              help="costs to start from (default: --out, if it exists)")] = None,
    max_load: Annotated[float, typer.Option("--max-load", metavar="PER_CPU", min=0.0,
                                            help="refuse a report whose run's median 1-minute load per CPU was "
                                                 "above this: a loaded machine's timings are not the lab's")] = 2.0,
) -> None:
    """Fit the sim's cost models (attach, store latency, reload curve, lab builds) from lab reports."""
    from lab.fit import FitError, fit_files
    from sim.scenario import ScenarioError

    try:
        result = fit_files(reports, out, base, max_load=max_load)
    except (FitError, ScenarioError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        _fail(f"{out}: {exc.strerror or exc}", EXIT_FAILED)
    for note in result.notes:
        print(note)
    print(f"wrote {out}")


__all__ = ["compare", "lab_fit"]
