"""Helpers every benchmark shares: interleaved rounds, medians, JSON results, a table."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant once per round, alternating, so machine noise hits them alike.

    Each callable returns a rate (operations per second). Returns every round's rate per variant.
    """
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            rates[name].append(run())
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], int]) -> float:
    """Call fn (which returns how many operations it did); return operations per second."""
    started = time.perf_counter()
    ops = fn()
    return ops / (time.perf_counter() - started)


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "machine": platform.machine(), "commit": commit,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"bench": name, "machine": machine(), **data}, indent=2) + "\n")
    return path


def show(title: str, columns: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*[f"{v:,.0f}" if isinstance(v, float) and v >= 100 else
                        f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
