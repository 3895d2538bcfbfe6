"""``leengine sim sweep`` and ``leengine sim shrink``: seed sweeps and shrinking on Dask distributed.

``DaskEngine`` is the sweep engine (the ``sim.sweep.Engine`` protocol) on Dask: by default an
embedded ``LocalCluster`` of worker processes (one thread each: a run is pure Python and holds
the GIL), or any running ``dask scheduler`` by address (``--scheduler tcp://HOST:8786``): the
same code either way. The scenario's validated spec is scattered to the workers once; tasks are
submitted in a bounded window (``--window``, default 4 per worker thread) and topped up as
results come back, so 100,000 seeds never sit in the scheduler at once. A Dask task runs a chunk
of consecutive seeds, sized from the runs seen so far to last about ``CHUNK_SECONDS`` (1 seed
while runs are long): a scheduler round trip per 25 ms run cost more than the run (measured,
bench/sweep.py). A worker that dies takes its tasks with it: the scheduler runs them again
elsewhere (up to its ``allowed-failures``); a task that raises is retried ``--retries`` times;
whatever still fails is reported as lost, once. ``sim.sweep.Sweep`` keeps one result per seed.

Dask is imported here, in the command layer, never by sim/ (sim.sweep is pure orchestration
over an engine) nor by agent code. Exit status: 0 every seed passed (shrink: a smaller failing
scenario was written), 1 a seed failed or was lost (shrink: nothing to shrink or no run
failed), 2 bad input (nothing ran).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from leengine.command import EXIT_FAILED, BadInput, Failed

if TYPE_CHECKING:  # sim.sweep imports the whole world: loaded when a sweep runs, not on every `leengine`
    from sim.sweep import Result, SweepJob, Task

DEFAULT_RETRIES = 2
WINDOW_PER_THREAD = 4
CHUNK_SECONDS = 0.5  # a Dask task runs seeds for about this long (runs of the scenario measured as they come)
MAX_CHUNK = 64


@functools.cache
def code_version() -> str:
    """This process's code: ``git describe --always --dirty`` of the checkout it runs from, else the
    package version (a worker on another machine may run other code: each result says which)."""
    root = Path(__file__).resolve().parents[1]
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                   text=True, timeout=10, check=True).stdout.strip()
        if described:
            return f"git {described}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"package {version('leengine-testbed')}"
    except PackageNotFoundError:
        return "unknown"


def timed_runs(job: SweepJob, seeds: list[int]) -> list[Result]:
    """One Dask task: a few seeds of one job (short runs are chunked, see ``DaskEngine``)."""
    return [timed_run(job, seed) for seed in seeds]


def timed_run(job: SweepJob, seed: int) -> Result:
    """The task every engine runs: ``sim.sweep.run_seed`` plus its wall seconds, the worker and its code."""
    from sim.sweep import run_seed

    # The agents' warnings in a run (discovery retrying during an etcd outage) are the simulated Region's, as
    # quiet as in `sim run`: a worker process has no logging set up, and Python would print each to stderr.
    logging.getLogger("leengine").setLevel(logging.ERROR)
    code = code_version()  # before the clock starts: the first call of a process runs git
    started = time.perf_counter()
    result = run_seed(job, seed)
    return {**result, "wall_seconds": round(time.perf_counter() - started, 4),
            "worker": f"{socket.gethostname()}:{os.getpid()}", "code": code}


class SerialEngine:
    """Every task in this process, in order: the reference the parallel engines are held to."""

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[int, Result]]:
        for index, (job, seed) in enumerate(tasks):
            yield index, timed_run(job, seed)


class DaskEngine:
    """Runs ``sim.sweep.run_seed`` tasks on a Dask cluster; use as a context manager."""

    def __init__(self, *, scheduler: str | None = None, workers: int = 2, window: int | None = None,
                 retries: int = DEFAULT_RETRIES, connect_timeout: float = 10.0, chunk: int | None = None) -> None:
        self.scheduler = scheduler
        self.chunk = chunk  # seeds per Dask task; None: adapt to CHUNK_SECONDS
        self.workers = workers
        self.window = window
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.client: Any = None
        self.cluster: Any = None
        self._scattered: dict[int, tuple[SweepJob, Any]] = {}

    def __enter__(self) -> DaskEngine:
        from distributed import Client, LocalCluster

        if logging.getLogger().getEffectiveLevel() > logging.INFO:  # Dask's INFO lines are not the sweep's news
            logging.getLogger("distributed").setLevel(logging.ERROR)

        if self.scheduler:  # its workers were started by their own commands: see docs/sim.md for their profiler
            try:
                self.client = Client(self.scheduler, timeout=self.connect_timeout, set_as_default=False)
            except (OSError, ValueError, TypeError) as exc:  # refused, timed out, not an address
                raise Failed(f"dask scheduler at {self.scheduler[:80]}: {type(exc).__name__}: {exc}") from None
        else:
            import dask

            # The workers' statistical profiler samples every thread's stack each 10 ms, for a dashboard a
            # sweep does not show; the scheduler's HTTP server takes a free port, not 8787 (two sweeps, or
            # tests, run side by side).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster, set_as_default=False)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def threads(self) -> int:
        """Worker threads the scheduler knows now."""
        info = self.client.scheduler_info()
        return sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())

    def describe(self) -> dict[str, Any]:
        return {"kind": "scheduler" if self.scheduler else "local-cluster",
                "address": self.client.scheduler.address, "workers": len(self.client.scheduler_info()["workers"]),
                "threads": self.threads(), "window": self._window(), "retries": self.retries,
                "chunk": self.chunk or f"adaptive ({CHUNK_SECONDS} s of runs, <= {MAX_CHUNK} seeds)"}

    def _window(self) -> int:
        return self.window or max(WINDOW_PER_THREAD * max(self.threads(), 1), 4)

    def _job_future(self, job: SweepJob) -> Any:
        # Scattered once per job (a sweep has one; shrink a few candidates at a time), to every worker:
        # a worker that dies leaves the copies on the others.
        known = self._scattered.get(id(job))
        if known is None or known[0] is not job:
            known = (job, self.client.scatter(job, broadcast=True, hash=False))
            self._scattered[id(job)] = known
        return known[1]

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[int, Result]]:
        from distributed import as_completed

        from sim.sweep import lost_result

        batch = uuid.uuid4().hex[:8]
        pending = iter(enumerate(tasks))
        lookahead: list[tuple[int, Task]] = []
        in_flight: dict[str, list[tuple[int, int]]] = {}  # future key -> its (index, seed)s
        done = as_completed([], with_results=False, loop=self.client.loop)
        window = self._window()
        chunk = 1 if self.chunk is None else self.chunk
        per_seed: float | None = None  # mean wall seconds of one run, as results come in

        def take() -> tuple[SweepJob, list[tuple[int, int]]] | None:
            # Up to `chunk` consecutive tasks of one job: one Dask task, so short runs do not pay
            # a scheduler round trip each.
            if not lookahead:
                nxt = next(pending, None)
                if nxt is None:
                    return None
                lookahead.append(nxt)
            index, (job, seed) = lookahead.pop()
            items = [(index, seed)]
            while len(items) < chunk:
                nxt = next(pending, None)
                if nxt is None:
                    break
                if nxt[1][0] is not job:
                    lookahead.append(nxt)
                    break
                items.append((nxt[0], nxt[1][1]))
            return job, items

        def top_up() -> None:
            while len(in_flight) < window:
                taken = take()
                if taken is None:
                    return
                job, items = taken
                future = self.client.submit(timed_runs, self._job_future(job), [seed for _, seed in items],
                                            key=f"seeds-{batch}-{items[0][0]}", retries=self.retries, pure=False)
                in_flight[future.key] = items
                done.add(future)

        top_up()
        try:
            while in_flight:
                future = next(done)
                items = in_flight.pop(future.key)
                try:
                    results = list(future.result())
                except Exception as exc:  # KilledWorker after allowed-failures, a lost dependency, ...
                    results = [lost_result(seed, f"{type(exc).__name__}: {exc}") for _, seed in items]
                future.release()
                walls = [r["wall_seconds"] for r in results if r.get("wall_seconds")]
                if walls and self.chunk is None:
                    mean = sum(walls) / len(walls)
                    per_seed = mean if per_seed is None else 0.8 * per_seed + 0.2 * mean
                    chunk = max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / per_seed)))
                top_up()
                for (index, _seed), result in zip(items, results, strict=True):
                    yield index, result
        finally:
            in_flight.clear()
            self._scattered.clear()


# ------------------------------------------------------------------ the commands


ScenarioArg = Annotated[Path, typer.Argument(metavar="SCENARIO", help="a scenario YAML file (see docs/sim.md)")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="a running `dask scheduler`, e.g. tcp://127.0.0.1:8786 (default: an embedded LocalCluster)")]
WorkersOpt = Annotated[int, typer.Option(min=1, max=256, help="worker processes of the embedded LocalCluster")]
RetriesOpt = Annotated[int, typer.Option(min=0, max=10, help="retries of a task that raised")]
HOOK = re.compile(r"[A-Za-z_][\w.]{0,200}:[A-Za-z_]\w{0,100}")
HookOpt = Annotated[str | None, typer.Option(
    "--ipam-hook", metavar="MODULE:ATTR",
    help="build every node's IPAM with this factory instead of cni.ipam's: a deliberately broken agent to prove "
         "the checks bite (e.g. tests.sim.test_world:NoCasIpam, run from the repository root)")]


def _hook(value: str | None) -> str | None:
    if value is None:
        return None
    if not HOOK.fullmatch(value):
        raise BadInput(f"--ipam-hook: {value[:60]!r} is not MODULE:ATTR")
    if os.getcwd() not in sys.path:  # MODULE from the current directory, as `python -m` finds it (and the
        sys.path.insert(0, os.getcwd())  # LocalCluster's workers, started with this sys.path)
    from sim.sweep import resolve_hook

    try:
        resolve_hook(value)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadInput(f"--ipam-hook: {value}: {type(exc).__name__}: {exc}") from None
    return value


def _load(path: Path, seed: int | None = None) -> Any:
    from sim.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(path, seed=seed)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None


def _code() -> dict[str, Any]:
    return {"describe": code_version()}


def _default_workers() -> int:
    return max(len(os.sched_getaffinity(0)), 1)


def sweep_command(
    scenario: ScenarioArg,
    seeds: Annotated[str, typer.Option(help="seeds to run: 1-1000, 7, 1,5,10-20")] = "1-100",
    scheduler: SchedulerOpt = None,
    workers: Annotated[int | None, typer.Option(min=1, max=256, help="worker processes of the embedded "
                                                                     "LocalCluster (default: the CPUs)")] = None,
    out: Annotated[Path | None, typer.Option(help="write sweep.json, summary.txt and plots here "
                                                  "(default: runs/sweeps/NAME-seedsA-B)")] = None,
    window: Annotated[int | None, typer.Option(min=1, max=100_000, help="tasks in flight (default: 4 per "
                                                                         "worker thread)")] = None,
    retries: RetriesOpt = DEFAULT_RETRIES,
    chunk: Annotated[int | None, typer.Option(min=1, max=MAX_CHUNK, help="seeds per Dask task (default: as many as "
                                                                         f"run in about {CHUNK_SECONDS} s)")] = None,
    plots: Annotated[bool, typer.Option(help="draw failures-by-check.png and wall-time.png")] = True,
    ipam_hook: HookOpt = None,
) -> None:
    """Run a scenario on many seeds on Dask (a LocalCluster, or --scheduler); group the failures; exit 1 if any
    seed failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.sweep import SweepJob, parse_seeds, run_sweep, summarize, summary_text, write_sweep

    hook = _hook(ipam_hook)
    loaded = _load(scenario)
    try:
        seed_list = parse_seeds(seeds)
    except ValueError as exc:
        raise BadInput(f"--seeds: {exc}") from None
    spec = loaded.spec
    out_dir = out or Path("runs") / "sweeps" / f"{spec.name}-seeds{seed_list[0]}-{seed_list[-1]}"
    err = Console(stderr=True)
    opened = time.perf_counter()
    with DaskEngine(scheduler=scheduler, workers=workers or _default_workers(), window=window,
                    retries=retries, chunk=chunk) as engine:
        engine_info = {**engine.describe(), "startup_seconds": round(time.perf_counter() - opened, 2)}
        started = time.perf_counter()  # seeds per minute count from here: the cluster's start-up is apart
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("[green]{task.fields[passed]} passed[/] [red]{task.fields[failed]} failed[/]"),
                      TextColumn("{task.fields[rate]} seeds/min"), TimeElapsedColumn(), console=err,
                      disable=not err.is_terminal) as progress:
            bar = progress.add_task(f"{spec.name}", total=len(seed_list), passed=0, failed=0, rate="-")

            def on_result(_result: Result, sweep: Any) -> None:
                elapsed = time.perf_counter() - started
                progress.update(bar, completed=len(sweep.results), passed=sweep.passed, failed=sweep.failed,
                                rate=f"{len(sweep.results) / elapsed * 60:,.0f}" if elapsed > 0 else "-")

            sweep = run_sweep(engine, SweepJob(spec, hook), seed_list, on_result)
        wall = time.perf_counter() - started
    report = summarize(sweep, scenario={"file": str(scenario), "name": spec.name, "sha256": loaded.sha256},
                       code=_code(), engine=engine_info, seeds_text=seeds, wall_seconds=wall, hook=hook)
    write_sweep(report, out_dir, plots=plots)
    print(summary_text(report), end="")
    print(f"sweep.json: {out_dir / 'sweep.json'}")
    if report["totals"]["failed"] or report["totals"]["missing"]:
        raise typer.Exit(EXIT_FAILED)


def shrink_command(
    scenario: ScenarioArg,
    seed: Annotated[int, typer.Option(min=0, help="the failing seed")],
    check: Annotated[str | None, typer.Option(help="the check that must keep failing (default: the first that "
                                                   "failed)")] = None,
    out: Annotated[Path | None, typer.Option(help="the smaller scenario file (default: "
                                                  "runs/shrink/NAME-seedN.yaml)")] = None,
    scheduler: SchedulerOpt = None,
    workers: Annotated[int | None, typer.Option(min=1, max=256, help="worker processes of the embedded "
                                                                     "LocalCluster (default: the CPUs)")] = None,
    max_runs: Annotated[int, typer.Option(min=1, max=100_000, help="stop after this many candidate runs")] = 300,
    loose: Annotated[bool, typer.Option(help="any failure of the check will do (default: the same signature)")]
    = False,
    ipam_hook: HookOpt = None,
) -> None:
    """Shrink a failing seed's scenario (faults, apps, Cells, nodes, duration, ...) to a smaller scenario file that
    still fails the same check."""
    from sim.shrink import ShrinkError, shrink

    hook = _hook(ipam_hook)
    loaded = _load(scenario, seed)
    out_file = out or Path("runs") / "shrink" / f"{loaded.spec.name}-seed{seed}.yaml"
    with DaskEngine(scheduler=scheduler, workers=workers or _default_workers()) as engine:
        try:
            outcome = shrink(engine, loaded, seed=seed, check=check, hook=hook, max_runs=max_runs,
                             same_signature=not loose,
                             log=lambda line: print(line, file=sys.stderr))
        except ShrinkError as exc:
            print(f"leengine: error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_FAILED) from None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(outcome.yaml_text)
    print(outcome.summary())
    from sim.sweep import replay_command

    print(f"wrote {out_file}; replay: {replay_command(str(out_file), seed, hook)}")
