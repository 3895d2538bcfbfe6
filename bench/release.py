"""Gray release of a 10-replica app across 2 Cells, four steps, in the sim and in the lab (issue 13, Speed).

Two scenarios, each run in the simulator (``Region`` at the lab's scale: ``sim run --lab``'s
spec) and on the one-machine lab (``leengine lab run``, real daemons, inside a private network
namespace), with the same seed:

* **good**: the platform app ``shop`` runs v1 with 5 replicas in each of 2 Cells (10); v2, as
  good, is released in four steps (1, 10, 50, 100 %), a bake per step, checks between. Measured:
  the requests of ``shop`` that failed during each step (from the step's start to the next one;
  the last step until the release completed). Target: 0 per step.
* **bad**: ``scenarios/gray-release-revert.yaml``: the same release of a v2 answering 20 % of its
  requests with 500. Measured: the time from the bad version's first failed request (as a client
  saw it) to the full revert (its share 0 in etcd and its replication controller gone from both
  Cells), in bake intervals. Target: <= 2.

Where the figures come from: in the sim, a sampler beside the Region reads every second the
clients' counts per version (``sim/traffic.py``) and the release records the platform observed
(``sim/platform.py``); in the lab, the report's ``lab.platform`` (lab/platform.py: the clients'
requests per second of lab/load.py, the release records, the shares and controllers observed
every 0.5 s). Both take the first error and the revert as ``release-reverted-within`` does.

Run (root for the lab): .venv/bin/python -m bench.release [--sim-runs 3] [--lab-runs 2] [--no-lab]
    [--first-seed N] [--add]   (--add: these runs join the ones in bench/results/release.json)
Results: bench/results/release.json and a table (ranges over the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, save, show

ROOT = Path(__file__).resolve().parent.parent
APP = "shop"
RESULT = RESULTS / "release.json"

GOOD = """\
# bench/release.py: a good v2 released in four steps (no fault)
name: bench-release-good
seed: 1
duration: 600
topology:
  cells:
    - name: c1
      nodes: 10
      racks: 2
      pools:
        - {name: c1-pool, cidr: 10.71.0.0/22, vlan: 171}
    - name: c2
      nodes: 10
      racks: 2
      pools:
        - {name: c2-pool, cidr: 10.72.0.0/22, vlan: 172}
  groups:
    - {name: web, hosts: 2}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 5, group: web, requests_per_second: 200, platform: true}
platform:
  releases:
    - app: shop
      at: 120
      steps: [1, 10, 50, 100]
      bake_seconds: 60
      check_seconds: 10
      max_error_increase: 0.05
      max_latency_ratio: 2.0
      bad_checks: 2
      min_requests: 10
checks:
  - kind: release-completed
  - kind: no-orphan-versions
  - kind: activity-consistent
lab:
  nodes_per_cell: 3
  racks_per_cell: 1
  hosts_per_group: 2
  max_replicas: 5
  max_requests_per_second: 100
  time_scale: 0.5
"""


def _with_seed(text: str, seed: int) -> str:
    return "\n".join(f"seed: {seed}" if line.startswith("seed:") else line for line in text.splitlines()) + "\n"


def scenario_text(kind: str, seed: int) -> str:
    text = GOOD if kind == "good" else (ROOT / "scenarios" / "gray-release-revert.yaml").read_text()
    return _with_seed(text, seed)


# ------------------------------------------------------------------ what the figures are, from plain data


def step_windows(marks: list[list[Any]], new: str, end: float) -> list[tuple[int, float, float, str]]:
    """(percent, from, to, state at its end) of each step of the release of ``new``: from the first mark at a
    percent to the next percent's first mark (the last step to its completion, revert or ``end``)."""
    mine = [(float(t), str(s), int(p)) for t, s, p, v in marks if v == new]
    windows: list[tuple[int, float, float, str]] = []
    for t, state, percent in mine:
        if state not in ("running", "paused", "completing", "completed", "reverting", "reverted"):
            continue
        if not windows or windows[-1][0] != percent:
            if windows:
                p, a, _, s = windows[-1]
                windows[-1] = (p, a, t, s)
            windows.append((percent, t, end, state))
        else:
            p, a, b, _ = windows[-1]
            windows[-1] = (p, a, b, state)
        if state in ("completed", "reverted"):
            p, a, _, _ = windows[-1]
            windows[-1] = (p, a, t, state)
            break
    return windows


def failed_in(per_second: dict[int, tuple[int, int]], start: float, stop: float) -> int:
    return sum(failed for second, (_, failed) in per_second.items() if start <= second < stop)


def revert_seconds(first: float, shares: list[list[Any]], gone: list[float], version: str) -> float | None:
    """From the first error to the later of: the version's share seen 0, its controllers gone in every Cell."""
    off = next((float(t) for t, s in shares if float(t) >= first and (s is None or s.get(version, 0) == 0)), None)
    if off is None or not gone:
        return None
    return max([off, *gone]) - first


def _lab_spec(kind: str, seed: int) -> Any:
    """The scenario as ``sim run --lab`` reads it from scenarios/ (scenarios/costs.yaml applies), scaled by its
    ``lab:`` block."""
    from sim.scenario import parse_scenario
    from sim.scenario_costs import costs_beside
    from sim.scenario_lab import lab_scaled

    file = ROOT / "scenarios" / f"bench-release-{kind}.yaml"
    return lab_scaled(parse_scenario(scenario_text(kind, seed), str(file), costs=costs_beside(file)))


# ------------------------------------------------------------------ the sim


def run_sim(kind: str, seed: int) -> dict[str, Any]:
    from sim.runner import SLICES, SteppedRuntime
    from sim.world import Region

    spec = _lab_spec(kind, seed)
    runtime = SteppedRuntime(spec.seed, slice_seconds=spec.duration / SLICES, on_progress=None)
    region = Region(spec, runtime)
    per_second: dict[int, tuple[int, int]] = {}
    last = [0, 0]

    async def sampler() -> None:  # the clients' counts, every second: the good scenario's one app, all versions,
        while True:                   # requests lost to reloads included (the Region's totals)
            await runtime.sleep(1.0)
            ok_failed = [region.metrics.ok, region.metrics.failed]
            per_second[int(runtime.now()) - 1] = (ok_failed[0] - last[0], ok_failed[1] - last[1])
            last[:] = ok_failed

    runtime.spawn(sampler(), name="bench/sampler")
    started = time.monotonic()
    region.run()
    wall = time.monotonic() - started
    assert region.platform is not None
    observed = region.platform.observed
    release = spec.releases[0]
    marks = [[t, s, p, v] for t, s, p, v in observed.releases.get(APP, [])]
    new = str(marks[-1][3]) if marks else ""
    out: dict[str, Any] = {"where": "sim", "kind": kind, "seed": seed, "wall_seconds": round(wall, 1),
                           "bake_seconds": release.bake_seconds,
                           "checks": {c.name: c.passed for c in region.checks()}, "releases": marks}
    if kind == "good":
        out["steps"] = [{"percent": p, "from": round(a, 1), "to": round(b, 1), "state": s,
                         "failed": failed_in(per_second, a, b), "requests": sum(
                             ok + f for sec, (ok, f) in per_second.items() if a <= sec < b)}
                        for p, a, b, s in step_windows(marks, new, spec.duration)]
    else:
        first = min((t for (app, _), t in region.traffic.first_error.items() if app == APP), default=None)
        version = next((v for (app, v) in region.traffic.first_error if app == APP), "")
        gone = [region.platform.workloads[c].deleted_at[(APP, f"{APP}-{version}")]
                for c in spec.apps[0].cells if (APP, f"{APP}-{version}") in region.platform.workloads[c].deleted_at]
        shares = [[t, s] for t, s in observed.shares.get(APP, [])]
        took = revert_seconds(first, shares, gone, version) if first is not None and len(gone) == 2 else None
        out.update(first_error=first, revert_seconds=took,
                   revert_bakes=round(took / release.bake_seconds, 3) if took is not None else None)
    return out


# ------------------------------------------------------------------ the lab


def run_lab(kind: str, seed: int, workdir: Path) -> dict[str, Any]:
    scenario = workdir / f"bench-release-{kind}-{seed}.yaml"
    scenario.write_text(scenario_text(kind, seed))
    shutil.copy(ROOT / "scenarios" / "costs.yaml", workdir / "costs.yaml")  # the costs the sim runs with
    directory = Path(tempfile.mkdtemp(prefix="le-rel-", dir="/tmp"))
    os.chmod(directory, 0o755)
    out = workdir / f"lab-{kind}-{seed}"
    leengine = str(Path(sys.executable).parent / "leengine")
    started = time.monotonic()
    done = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', leengine, "lab",
                           "run", str(scenario), "--dir", str(directory), "--out", str(out), "--down"],
                          capture_output=True, text=True, timeout=1800, check=False)
    wall = time.monotonic() - started
    shutil.rmtree(directory, ignore_errors=True)
    if not (out / "report.json").exists():
        return {"where": "lab", "kind": kind, "seed": seed, "error": (done.stderr or done.stdout)[-600:]}
    report = json.loads((out / "report.json").read_text())
    platform = report["lab"].get("platform") or {}
    marks = platform.get("releases", {}).get(APP, [])
    new = str(marks[-1][3]) if marks else ""
    per_second = {int(sec): (int(v[0]), int(v[1])) for sec, v in platform.get("requests_per_second", {})
                  .get(APP, {}).items()}
    spec = _lab_spec(kind, seed)
    bake = spec.releases[0].bake_seconds
    result: dict[str, Any] = {"where": "lab", "kind": kind, "seed": seed, "wall_seconds": round(wall, 1),
                              "bake_seconds": bake, "checks": {c["name"]: c["passed"] for c in report["checks"]},
                              "releases": marks, "report": str(out / "report.json")}
    if kind == "good":
        result["steps"] = [{"percent": p, "from": round(a, 1), "to": round(b, 1), "state": s,
                            "failed": failed_in(per_second, a, b), "requests": sum(
                                ok + f for sec, (ok, f) in per_second.items() if a <= sec < b)}
                           for p, a, b, s in step_windows(marks, new, spec.duration)]
    else:
        firsts = {k: v for k, v in platform.get("first_error", {}).items() if k.startswith(f"{APP} ")}
        first_key = min(firsts, key=lambda k: firsts[k], default=None)
        version = first_key.split()[1] if first_key else ""
        gone = [t for k, t in platform.get("controllers_gone", {}).items()
                if k.split()[0] == APP and k.split()[2] == f"{APP}-{version}"]
        first = firsts[first_key] if first_key else None
        took = revert_seconds(first, platform.get("shares", {}).get(APP, []), gone, version) \
            if first is not None and len(gone) == 2 else None
        result.update(first_error=first, revert_seconds=took,
                      revert_bakes=round(took / bake, 3) if took is not None else None)
    return result


# ------------------------------------------------------------------ the table


def _range(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def summarize(runs: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for where in ("sim", "lab"):
        good = [r for r in runs if r["where"] == where and r["kind"] == "good" and "steps" in r]
        for percent in (1, 10, 50, 100):
            failed = [s["failed"] for r in good for s in r["steps"] if s["percent"] == percent]
            requests = [s["requests"] for r in good for s in r["steps"] if s["percent"] == percent]
            rows.append([f"{where}: good, step {percent} %", len(failed), f"failed {_range(failed)}",
                         f"of {_range(requests)} requests", "target 0"])
        bad = [r for r in runs if r["where"] == where and r["kind"] == "bad" and "revert_seconds" in r]
        rows.append([f"{where}: bad, first error -> reverted", len(bad),
                     f"{_range([r['revert_seconds'] and round(r['revert_seconds'], 1) for r in bad])} s",
                     f"{_range([r['revert_bakes'] for r in bad])} bakes",
                     f"target <= 2 bakes ({_range([r['bake_seconds'] for r in bad])} s each)"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.release", description=__doc__.split("\n")[0])
    parser.add_argument("--sim-runs", type=int, default=3)
    parser.add_argument("--lab-runs", type=int, default=2)
    parser.add_argument("--no-lab", action="store_true")
    parser.add_argument("--workdir", default="", help="where lab scenarios and reports go (default: a temp dir)")
    parser.add_argument("--first-seed", type=int, default=1, help="the runs' seeds start here")
    parser.add_argument("--add", action="store_true", help="add these runs to bench/results/release.json's")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-release-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    if args.add and RESULT.exists():
        runs = json.loads(RESULT.read_text()).get("runs", [])
    seeds = range(args.first_seed, args.first_seed + max(args.sim_runs, args.lab_runs))
    for kind in ("good", "bad"):
        for seed in seeds[:args.sim_runs]:
            runs.append(run_sim(kind, seed))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "releases"}), flush=True)
    if not args.no_lab:
        if os.geteuid() != 0:
            print("the lab runs need root (network namespaces, OVS)", file=sys.stderr)
            return 2
        for seed in seeds[:args.lab_runs]:
            for kind in ("good", "bad"):
                runs.append(run_lab(kind, seed, workdir))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "releases"}), flush=True)
    rows = summarize(runs)
    show("gray release of a 10-replica app across 2 Cells (lab scale), sim vs lab",
         ["measure", "runs", "value", "", "target"], rows)
    save("release", {"runs": runs, "table": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
