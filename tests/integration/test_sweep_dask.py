"""A sweep through a real `dask scheduler` and two `dask worker` processes on loopback; one worker is killed mid-sweep.

The cluster is started as a user starts one (the `dask` command of .venv/bin, each process its own
command), and the sweep runs through ``leengine sim sweep --scheduler``'s engine. When a tenth of the
seeds are in, one worker (its nanny and its process, one process group) gets SIGKILL: the scheduler
runs its tasks again on the other, and the sweep must still report every seed exactly once, with the
trace hashes of serial runs (``sim.runner.run_scenario``, what ``leengine sim run --seed N`` runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leengine.sweep_cmd import DaskEngine
from sim.runner import run_scenario
from sim.scenario import load_scenario
from sim.sweep import LOST_CHECK, SweepJob, run_sweep

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"
SCENARIO = """\
name: sweep-dask
seed: 1
duration: 150
topology:
  cells:
    - {name: c1, nodes: 4, pools: [{name: p1, cidr: 10.1.0.0/24, vlan: 101}]}
    - {name: c2, nodes: 4, pools: [{name: p2, cidr: 10.2.0.0/24, vlan: 102}]}
  groups: [{name: public, hosts: 2}]
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 3, group: public, requests_per_second: 20}
    - {name: api, cells: [c1], replicas: 2, group: public, requests_per_second: 10}
faults:
  - {kind: host-crash, at: 50, duration: 40, target: {count: 2}}
checks:
  - kind: no-duplicate-address
  - kind: apps-serve-again
    within: 60
"""
SEEDS = list(range(1, 61))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
    with log.open("wb") as out:
        return subprocess.Popen([str(DASK), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: a worker's nanny and its child


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    else:  # the group may outlive its leader (a killed nanny's worker): end what is left of it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def dask_cluster(tmp_path):
    assert DASK.exists(), f"{DASK} missing: install the project (dask[distributed])"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    tmp_path / "scheduler.log")]
    try:
        for name in ("w1", "w2"):
            procs.append(_start(["worker", address, "--name", name, "--nthreads", "1", "--nworkers", "1",
                                 "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(tmp_path / name)],
                                tmp_path / f"{name}.log"))
        yield address, procs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_a_sweep_survives_a_killed_worker_and_reports_every_seed_once_as_serial_runs_do(dask_cluster, tmp_path):
    address, procs = dask_cluster
    scenario = tmp_path / "sweep-dask.yaml"
    scenario.write_text(SCENARIO)
    loaded = load_scenario(scenario)
    killed_at: list[int] = []
    reported: list[int] = []
    on_w1: list[str] = []  # the tasks w1 held when it died

    def on_result(result, sweep):
        reported.append(result["seed"])
        if len(sweep.results) == len(SEEDS) // 10 and not killed_at:
            (w1,) = [a for a, w in engine.client.scheduler_info()["workers"].items() if w["name"] == "w1"]
            on_w1.extend(engine.client.processing([w1])[w1])
            os.killpg(procs[1].pid, signal.SIGKILL)  # worker w1: nanny and worker process, mid-sweep
            killed_at.append(len(sweep.results))

    with DaskEngine(scheduler=address, retries=2) as engine:
        engine.client.wait_for_workers(2, timeout=90)
        assert engine.describe()["workers"] == 2
        started = time.monotonic()
        sweep = run_sweep(engine, SweepJob(loaded.spec), SEEDS, on_result)
        wall = time.monotonic() - started
        deadline = time.monotonic() + 30
        while len(engine.client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(engine.client.scheduler_info()["workers"]) == 1  # the scheduler saw w1 go

    assert killed_at == [6] and on_w1, on_w1  # w1 died with tasks in hand: they ran again on w2
    assert procs[1].wait(timeout=10) == -signal.SIGKILL
    assert sorted(reported) == SEEDS and len(reported) == len(SEEDS)  # each seed reported exactly once
    assert not sweep.missing() and sweep.duplicates == 0
    assert not [s for s, r in sweep.results.items() if r["failures"] and r["failures"][0]["check"] == LOST_CHECK]
    workers = {r["worker"] for r in sweep.results.values()}
    assert len(workers) == 2, workers  # both ran seeds before w1 died
    for seed in SEEDS:
        serial = run_scenario(load_scenario(scenario, seed=seed))
        result = sweep.results[seed]
        assert result["trace_sha256"] == serial.trace_sha256, seed
        assert result["checks"] == {c["name"]: c["passed"] for c in serial.checks}, seed
    print(f"{len(SEEDS)} seeds through a dask scheduler + 2 workers (one killed after {killed_at[0]}): {wall:.1f} s")
