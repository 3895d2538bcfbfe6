"""How long the scenario validator takes on hostile and huge files, beside a raw Python reference.

Issue 9 asks validation to finish in under a second for any file under 1 MiB. The files are
the test suite's own (tests/unit/test_scenario_limits.py): a 1 MiB adversarial file and a
file of 10,000 Cells, both refused. The reference is a 5,000,000-iteration Python loop timed
in the same rounds, so the figures carry over to another machine as ratios. CPU seconds.

    .venv/bin/python -m bench.scenario_validation --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from bench.common import machine, save, show
from sim.scenario import ScenarioError, load_scenario
from tests.unit.test_scenario_limits import adversarial_megabyte, cells_text


def _reference() -> float:
    started, total = time.process_time(), 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - started


def _validate(path: Path) -> float:
    started = time.process_time()
    with contextlib.suppress(ScenarioError):  # both files are refused: the time to the refusal is the figure
        load_scenario(path)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    files = {"1 MiB adversarial": adversarial_megabyte(), "10,000 Cells": cells_text(10_000)}
    times: dict[str, list[float]] = {name: [] for name in [*files, "reference loop"]}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            times["reference loop"].append(_reference())
            for name, text in files.items():
                path = Path(scratch) / "scenario.yaml"
                path.write_text(text)
                times[name].append(_validate(path))
    rows = [[name, f"{min(v):.2f}", f"{max(v):.2f}", f"{min(v) / min(times['reference loop']):.2f}"]
            for name, v in times.items()]
    show(f"scenario validation, CPU s over {args.rounds} rounds", ["file", "min", "max", "÷ reference"], rows)
    save("scenario_validation", {"machine": machine(), "rounds": args.rounds, "cpu_seconds": times})


if __name__ == "__main__":
    main()
