"""How big and how fast the simulated Region runs: wall time, peak memory, events per second vs raw SimPy.

A Region of ``--cells`` Cells × ``--nodes`` nodes running ``--pods`` pods (apps of
``--replicas`` pods per Cell, each app in two neighbouring Cells) for ``--hours``
virtual hours with churn (deploys, scale events) and faults on a schedule: a few
hosts crash every hour (they come back after 10 minutes), one Cell goes dark for
10 minutes, an Nginx reload storm, and build hosts crashing mid-build every 4 hours
(every deploy builds on the Region's farm of ``2 × cells`` build hosts first). Side by
side in the same run: the raw SimPy event rate of ``bench.runtime_bridge``'s workload,
and the ratio model ÷ raw.
Events of the model are SimPy events processed (``Environment.step`` calls).

Run: .venv/bin/python -m bench.sim_scale [--quick] [--cells 10 --nodes 600 --pods 100000 --hours 24]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import time

import simpy

from bench.common import save, show
from bench.runtime_bridge import PROCESSES, STEPS
from sim.adapters.runtime import SimRuntime
from sim.spec import AppSpec, CellSpec, CheckSpec, ChurnSpec, FaultSpec, GroupSpec, PoolSpec, RegionSpec, Selector
from sim.world import Region


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        super().step()


def raw_simpy_rate() -> float:
    """``bench.runtime_bridge``'s raw workload (processes yielding timeouts), events counted the same way."""
    env = CountingEnvironment()

    def proc(delay):
        for _ in range(STEPS):
            yield env.timeout(delay)

    for i in range(PROCESSES):
        env.process(proc(1 + i % 7))
    started = time.perf_counter()
    env.run()
    return env.steps / (time.perf_counter() - started)


def region_spec(cells: int, nodes: int, pods: int, hours: float, replicas: int, groups: int,
                seed: int = 1) -> RegionSpec:
    duration = hours * 3600.0
    builders = max(3, 2 * cells)  # LeEngine: one build farm per Region
    per_app = 2 * replicas if cells > 1 else replicas
    apps_n = max(1, pods // per_app)
    per_cell = pods * (2 if cells > 1 else 1) // cells + 1
    # Room for churn and cool-down, and for every node to claim blocks of 16 of its own.
    prefix = max(12, min(22, 32 - (4 * max(per_cell, 16 * nodes)).bit_length()))
    cell_specs = tuple(CellSpec(f"c{c:02d}", nodes, (PoolSpec(f"p{c:02d}", f"10.{c * 16}.0.0/{prefix}",
                                                              vlan=100 + c),),
                                racks=max(1, nodes // 40), node_labels=(("room", f"room-{c}"),))
                       for c in range(1, cells + 1))
    group_specs = tuple(GroupSpec(f"g{g}", 3) for g in range(1, groups + 1))
    apps = tuple(AppSpec(f"app{a:05d}", tuple(sorted({f"c{a % cells + 1:02d}", f"c{(a + 1) % cells + 1:02d}"})),
                         replicas, f"g{a % groups + 1}", requests_per_second=5.0)
                 for a in range(apps_n))
    faults = (
        FaultSpec("host-crash", at=min(600.0, duration / 4), duration=600.0, every=3600.0,
                  target=Selector(count=max(1, cells * nodes // 1000))),
        FaultSpec("cell-outage", at=duration / 2, duration=min(600.0, duration / 10), target=Selector(names=("c01",))),
        FaultSpec("reload-storm", at=duration * 0.75, duration=min(300.0, duration / 10), changes=200, group="g1"),
        FaultSpec("builder-crash", at=duration * 0.3, duration=min(600.0, duration / 10),
                  every=4 * 3600.0 if duration > 4 * 3600.0 else None, target=Selector(count=max(1, builders // 4))),
    )
    # Faults go on to the end here, so the liveness checks (deadlines after the last fault) do not apply.
    checks = (CheckSpec("no-duplicate-address"), CheckSpec("domains-keep-serving"))
    churn = ChurnSpec(deploys_per_hour=max(1.0, apps_n / 20), scale_events_per_hour=max(1.0, apps_n / 10))
    return RegionSpec("sim-scale", seed, duration, cell_specs, group_specs, apps, faults=faults, checks=checks,
                      churn=churn, leak_check_every=600.0, leak_grace=120.0, build_hosts=builders)


def run_model(spec: RegionSpec, profile: str | None = None) -> dict:
    env = CountingEnvironment()
    runtime = SimRuntime(spec.seed, env=env)
    started = time.perf_counter()
    region = Region(spec, runtime)
    built = time.perf_counter() - started
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    region.run()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(35)
    wall = time.perf_counter() - started
    report = region.report()
    alive = report["counts"]["pods_alive"]
    return {"pods_spec": sum(a.replicas * len(a.cells) for a in spec.apps), "pods_alive_end": alive,
            "cells": len(spec.cells), "nodes": len(region.nodes), "apps": len(spec.apps),
            "virtual_hours": spec.duration / 3600.0, "build_seconds": built, "wall_seconds": wall,
            "events": env.steps, "events_per_s": env.steps / wall, "counts": report["counts"],
            "checks": report["checks"], "metrics": {k: v for k, v in report["metrics"].items() if k != "pool_use"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small Region for a few virtual minutes (< 60 s)")
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=600)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--replicas", type=int, default=25, help="pods per app and Cell")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--profile", help="write a cProfile dump here and print the top")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.nodes, args.pods, args.hours = 2, 50, 1000, 0.5
    spec = region_spec(args.cells, args.nodes, args.pods, args.hours, args.replicas, args.groups)
    raw_before = raw_simpy_rate()
    model = run_model(spec, args.profile)
    raw_after = raw_simpy_rate()
    raw = (raw_before + raw_after) / 2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {"config": vars(args), "model": model, "raw_simpy_per_s": raw, "raw_rounds": [raw_before, raw_after],
              "ratio": model["events_per_s"] / raw, "peak_rss_mb": peak_mb}
    show("Simulated Region at scale", ["what", "value"],
         [["cells × nodes", f"{model['cells']} × {model['nodes'] // model['cells']}"],
          ["apps / pods (spec)", f"{model['apps']} / {model['pods_spec']}"],
          ["virtual hours", model["virtual_hours"]], ["wall seconds", model["wall_seconds"]],
          ["peak RSS MB", peak_mb], ["model events", model["events"]], ["model events /s", model["events_per_s"]],
          ["raw SimPy events /s", raw], ["model ÷ raw", result["ratio"]],
          ["checks", ", ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in model["checks"])],
          ["builds submitted / done / moved / cache hits", f"{model['metrics'].get('builds_submitted', 0)} / "
                                                           f"{model['metrics'].get('builds_done', 0)} / "
                                                           f"{model['metrics'].get('builds_moved', 0)} / "
                                                           f"{model['metrics'].get('builds_cache_hits', 0)}"],
          ["leaked addresses max / at the end", f"{model['metrics']['leaked_max']} / "
                                                f"{model['metrics']['leaked_now']}"],
          ["pods started / deleted / died", f"{model['counts']['pods_started']} / {model['counts']['pods_deleted']}"
                                            f" / {model['counts']['pods_died']}"]])
    name = "sim_scale-quick" if args.quick else f"sim_scale-{args.cells}x{args.nodes}-{args.pods}pods-{args.hours:g}h"
    print(f"saved {save(name, result)}")


if __name__ == "__main__":
    main()
