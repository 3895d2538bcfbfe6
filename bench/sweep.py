"""Seed sweeps: seeds per minute serial vs Dask (embedded LocalCluster, and a `dask scheduler` + workers), the
overhead per task vs a bare multiprocessing pool, and 10,000 seeds of a small scenario (wall, scheduler memory).

Issue 15's targets: the local Dask cluster on this machine's 2 cores >= 1.8x serial; overhead per task
vs a bare ``multiprocessing.Pool`` <= 10 %. Every variant runs the same task (``leengine.sweep_cmd.
timed_run``: one seeded run of the Region) on the same seeds, in interleaved rounds; clusters are
started before each timed run and stopped after it (their start-up is reported apart: a long sweep
pays it once; an idle Dask process still ticks, so only the measured variant is alive). The
machine is shared, so each figure carries the 1-minute load average read before and after it and
the machine's reference rate measured just before and after it (raw SimPy events per second,
``bench.sim_scale.raw_simpy_rate``: the rate one core gave a plain SimPy loop then), so a reader can
scale the figures to another machine or to a quieter moment.

    .venv/bin/python -m bench.sweep --part speedup --rounds 3                  # scenarios/host-crash-ip-leak.yaml
    .venv/bin/python -m bench.sweep --part overhead --rounds 3                 # a tiny scenario: overhead shows
    .venv/bin/python -m bench.sweep --part scale --seeds 10000 --runs 3        # 10,000 tiny seeds, scheduler memory
    .venv/bin/python -m bench.sweep --part scale --seeds 10000 --chunk 1       # the same, one Dask task per seed
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import save, show
from bench.sim_scale import raw_simpy_rate
from leengine.sweep_cmd import DaskEngine, SerialEngine, timed_run
from sim.scenario import load_scenario
from sim.sweep import SweepJob, run_sweep

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"
TINY = """\
name: sweep-tiny
seed: 1
duration: 60
topology:
  cells:
    - {name: c1, nodes: 2, pools: [{name: p1, cidr: 10.1.0.0/26, vlan: 101}]}
  groups: [{name: public, hosts: 1}]
workload:
  apps:
    - {name: shop, cells: [c1], replicas: 2, group: public, requests_per_second: 10}
checks:
  - kind: no-duplicate-address
"""

_POOL_JOB: SweepJob | None = None


def _pool_init(job: SweepJob) -> None:
    global _POOL_JOB
    _POOL_JOB = job


def _pool_task(seed: int) -> dict[str, Any]:
    assert _POOL_JOB is not None
    return timed_run(_POOL_JOB, seed)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def reference() -> int:
    """The machine's reference rate now: raw SimPy events per second (about 0.3-1 s of one core)."""
    return round(raw_simpy_rate())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExternalCluster:
    """`dask scheduler` + N `dask worker` processes, each started as its own command, as a user runs them."""

    def __init__(self, workers: int, logs: Path) -> None:
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        port = self.address.rsplit(":", 1)[1]
        self.procs.append(self._start(["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                                      "scheduler"))
        for i in range(workers):
            self.procs.append(self._start(["worker", self.address, "--name", f"w{i + 1}", "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                                           "--local-directory", str(logs / f"w{i + 1}")], f"w{i + 1}"))

    def _start(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
        with (self.logs / f"{name}.log").open("wb") as out:
            return subprocess.Popen([str(DASK), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    @property
    def scheduler_pid(self) -> int:
        return self.procs[0].pid

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


class PeakRss:
    """Samples a process's resident memory every 0.2 s in a thread; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:
                return
            self.stop.wait(0.2)

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return round(self.peak / 2**20, 1)


def _timed(run: Callable[[], Any], seeds: int, workers: int = 1) -> dict[str, float]:
    """Seeds per minute, and the busy fraction: the runs' own wall seconds over (wall x workers), i.e. the
    share of the workers' time spent running seeds rather than waiting for them (the load slows the runs,
    it does not lower this)."""
    ref_before = reference()
    before = load()
    started = time.perf_counter()
    results = run()
    wall = time.perf_counter() - started
    busy = sum(r["wall_seconds"] for r in results or [] if r.get("wall_seconds")) / (wall * workers)
    after = load()
    return {"seeds_per_minute": round(seeds / wall * 60, 1), "wall": round(wall, 2), "busy": round(busy, 3),
            "load": before, "load_after": after, "reference_events_per_second": [ref_before, reference()]}


class Variant:
    """One way to run the seeds: ``open`` (untimed: start-up and a warm-up of 2 seeds per worker), ``run``
    (timed), ``close``. Only the variant being measured is alive: an idle Dask process still ticks."""

    def __init__(self, name: str, job: SweepJob, workers: int, logs: Path) -> None:
        self.name, self.job, self.workers, self.logs = name, job, workers, logs
        self.startup = 0.0
        self._pool: Any = None
        self._engine: Any = None
        self._external: ExternalCluster | None = None

    def open(self, warm: list[int]) -> None:
        started = time.perf_counter()
        if self.name == "multiprocessing pool":
            self._pool = multiprocessing.get_context("forkserver").Pool(self.workers, initializer=_pool_init,
                                                                        initargs=(self.job,))
            list(self._pool.imap_unordered(_pool_task, warm))
        elif self.name == "dask local cluster":
            self._engine = DaskEngine(workers=self.workers).__enter__()
        elif self.name == "dask scheduler + workers":
            self._external = ExternalCluster(self.workers, self.logs)
            self._engine = DaskEngine(scheduler=self._external.address).__enter__()
            self._engine.client.wait_for_workers(self.workers, timeout=120)
        if self._engine is not None:
            run_sweep(self._engine, self.job, warm)
        self.startup = time.perf_counter() - started

    def run(self, seeds: list[int]) -> list[dict[str, Any]]:
        if self._pool is not None:
            return list(self._pool.imap_unordered(_pool_task, seeds))
        engine = self._engine if self._engine is not None else SerialEngine()
        return list(run_sweep(engine, self.job, seeds).results.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
        if self._engine is not None:
            self._engine.__exit__(None, None, None)
        if self._external is not None:
            self._external.close()
        self._pool = self._engine = self._external = None


VARIANTS = ("serial", "multiprocessing pool", "dask local cluster", "dask scheduler + workers")


def compare(scenario: Path, seeds: list[int], rounds: int, workers: int) -> dict[str, Any]:
    job = SweepJob(load_scenario(scenario).spec)
    logs = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    warm = [10_000 + i for i in range(2 * workers)]  # other seeds than the measured ones
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        for name in VARIANTS:
            variant = Variant(name, job, workers, logs)
            try:
                variant.open(warm)
                figure = _timed(lambda v=variant: v.run(seeds), len(seeds),  # type: ignore[misc]
                                1 if name == "serial" else workers)
            finally:
                variant.close()
            figures[name].append({**figure, "startup": round(variant.startup, 2)})
            print(f"round {r + 1} {name}: {figures[name][-1]}", flush=True)
    shutil.rmtree(logs, ignore_errors=True)  # the external workers' logs and scratch
    return {"scenario": _shown(scenario), "seeds": len(seeds), "workers": workers, "rounds": rounds, "runs": figures}


def _shown(path: Path) -> str:
    """The scenario as the results file names it: relative to the repository when it is in it (a results file
    is committed: it must not carry this machine's paths), else its file name."""
    try:
        return str(path.resolve().relative_to(ROOT.resolve()))
    except ValueError:
        return path.name


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]

    def per_round(a: str, b: str, invert: bool = False) -> list[float]:
        return [round((y["wall"] / x["wall"]) if invert else (x["seeds_per_minute"] / y["seeds_per_minute"]), 3)
                for x, y in zip(runs[a], runs[b], strict=True)]

    busy = {name: [r["busy"] for r in figures] for name, figures in runs.items()}
    references = [x for figures in runs.values() for r in figures for x in r.get("reference_events_per_second", [])]
    return {"reference events/s (min, max)": [min(references), max(references)] if references else None,
            "busy fraction": busy,
            "local vs serial (x)": per_round("dask local cluster", "serial"),
            "scheduler vs serial (x)": per_round("dask scheduler + workers", "serial"),
            "pool vs serial (x)": per_round("multiprocessing pool", "serial"),
            "local wall / pool wall": per_round("multiprocessing pool", "dask local cluster", invert=True),
            "scheduler wall / pool wall": per_round("multiprocessing pool", "dask scheduler + workers", invert=True)}


def scale_runs(seeds: int, workers: int, chunk: int | None, runs: int) -> dict[str, Any]:
    """``scale`` ``runs`` times (a fresh scheduler and workers each), each with the reference rate around it;
    the ranges of wall time, seeds per minute and the scheduler's peak memory over the runs."""
    figures = []
    for i in range(runs):
        ref_before = reference()
        figure = scale(seeds, workers, chunk)
        figure["reference_events_per_second"] = [ref_before, reference()]
        figures.append(figure)
        print(f"run {i + 1}: {figure}", flush=True)

    def span(key: str) -> list[float]:
        values = [f[key] for f in figures]
        return [min(values), max(values)]

    return {"seeds": seeds, "workers": workers, "chunk": chunk or "adaptive", "runs": figures,
            "ranges": {key: span(key) for key in ("wall_seconds", "seeds_per_minute", "scheduler_idle_rss_mib",
                                                  "scheduler_peak_rss_mib", "client_peak_rss_mib", "load",
                                                  "load_after")},
            "reference_events_per_second": [min(min(f["reference_events_per_second"]) for f in figures),
                                            max(max(f["reference_events_per_second"]) for f in figures)],
            "every_seed_once": all(f["reported"] == seeds and f["duplicates"] == 0 for f in figures)}


def scale(seeds: int, workers: int, chunk: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        path = Path(tmp) / "tiny.yaml"
        path.write_text(TINY)
        job = SweepJob(load_scenario(path).spec)
        logs = Path(tmp)
        external = ExternalCluster(workers, logs)
        try:
            with DaskEngine(scheduler=external.address, chunk=chunk) as engine:
                engine.client.wait_for_workers(workers, timeout=120)
                scheduler = PeakRss(external.scheduler_pid)
                idle = round(scheduler.process.memory_info().rss / 2**20, 1)
                client = PeakRss(os.getpid())
                before = load()
                started = time.perf_counter()
                sweep = run_sweep(engine, job, list(range(1, seeds + 1)))
                wall = time.perf_counter() - started
                window = engine.describe()["window"]
            return {"seeds": seeds, "workers": workers, "window": window, "chunk": chunk or "adaptive",
                    "wall_seconds": round(wall, 1),
                    "seeds_per_minute": round(seeds / wall * 60, 1), "reported": len(sweep.results),
                    "passed": sweep.passed, "duplicates": sweep.duplicates, "scheduler_idle_rss_mib": idle,
                    "scheduler_peak_rss_mib": scheduler.done(),
                    "client_peak_rss_mib": client.done(), "load": before, "load_after": load()}
        finally:
            external.close()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the clusters' finally blocks run
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("speedup", "overhead", "scale"), required=True)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "host-crash-ip-leak.yaml")
    parser.add_argument("--seeds", type=int, default=0, help="default: 40 (speedup), 400 (overhead), 10000 (scale)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=None, help="scale: seeds per Dask task (default: adaptive)")
    parser.add_argument("--runs", type=int, default=3, help="scale: how many sweeps of the seeds (default 3)")
    parser.add_argument("--save-as", default="", help="the results file's name (default: sweep-PART...)")
    args = parser.parse_args()
    if args.part == "scale":
        result = scale_runs(args.seeds or 10_000, args.workers, args.chunk, args.runs)
        show(f"{result['seeds']:,} seeds of a tiny scenario through a dask scheduler, {args.runs} runs",
             ["measure", "min-max"], [[k, v] for k, v in result["ranges"].items()]
             + [["reference events/s", result["reference_events_per_second"]],
                ["every seed once", result["every_seed_once"]]])
        print(save(args.save_as or f"sweep-scale-{result['seeds']}-chunk-{args.chunk or 'adaptive'}", result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        scenario = args.scenario
        if args.part == "overhead":
            scenario = Path(tmp) / "tiny.yaml"
            scenario.write_text(TINY)
        n = args.seeds or (40 if args.part == "speedup" else 400)
        result = compare(scenario, list(range(1, n + 1)), args.rounds, args.workers)
    result["ratios"] = ratios(result)
    rows = [[name, *(f"{r['seeds_per_minute']:,.0f} (load {r['load']}-{r['load_after']})" for r in runs)]
            for name, runs in result["runs"].items()]
    show(f"seeds per minute, {result['seeds']} seeds of {Path(result['scenario']).name}",
         ["variant", *(f"round {i + 1}" for i in range(args.rounds))], rows)
    for name, values in result["ratios"].items():
        print(f"{name}: {values}")
    print(save(args.save_as or f"sweep-{args.part}", result))


if __name__ == "__main__":
    main()
