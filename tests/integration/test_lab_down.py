"""``leengine lab down`` leaves 0 netns, bridges, interfaces and processes with the lab's id, even after ``lab up``
was SIGKILLed half-way (it cleans up from the lab directory's record and a scan by tag); a second down is a no-op.

Each test runs in a network namespace of its own (see test_lab_fabric.machine_netns).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.fabric import leftovers
from lab.record import LabRecord, tagged_pids
from tests.integration.test_lab_fabric import machine_netns

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "default.yaml"
LEENGINE = [sys.executable, "-m", "leengine.cli"]


def _up_then_kill(lab_dir: Path, extra: list[str], ready: str, timeout: float = 90.0) -> str:
    """Start ``lab up``, SIGKILL it once ``ready`` holds (or it ended), return the lab id from the record."""
    proc = subprocess.Popen([*LEENGINE, "lab", "up", str(SCENARIO), "--dir", str(lab_dir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    record = LabRecord(lab_dir)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            entries = record.made()[0] if record.made_log.exists() else []
            kinds = [e["kind"] for e in entries]
            if ready == "fabric" and "bridge" in kinds:
                break
            if ready == "services" and sum(1 for e in entries if e["kind"] == "process") >= 5:
                time.sleep(1.0)  # let a few of them run
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return record.lab_id()


def _down(lab_dir: Path) -> dict:
    done = subprocess.run([*LEENGINE, "lab", "down", "--dir", str(lab_dir), "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_nothing_left(lab_id: str, lab_dir: Path) -> None:
    assert leftovers(lab_id, lab_dir) == {"netns": [], "interfaces": [], "bridges": []}
    assert tagged_pids(lab_id) == []
    all_netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"le-{lab_id}-" not in all_netns
    for name in ("lab.json", "made.jsonl", "pids", "ovs", "run"):
        assert not (lab_dir / name).exists(), name


def test_down_after_up_killed_while_making_the_fabric(tmp_path: Path) -> None:
    with machine_netns():
        lab_dir = tmp_path / "lab"
        lab_id = _up_then_kill(lab_dir, ["--no-services"], ready="fabric")
        report = _down(lab_dir)
        assert report["id"] == lab_id and report["clean"]
        assert report["processes"], "the lab's OVS was running and must have been stopped"
        _assert_nothing_left(lab_id, lab_dir)
        again = subprocess.run([*LEENGINE, "lab", "down", "--dir", str(lab_dir)], capture_output=True, text=True,
                               cwd=ROOT, timeout=60)
        assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_down_after_up_killed_while_starting_services(tmp_path: Path) -> None:
    with machine_netns():
        lab_dir = tmp_path / "lab"
        lab_id = _up_then_kill(lab_dir, [], ready="services")
        alive_before = tagged_pids(lab_id)
        started = time.monotonic()
        report = _down(lab_dir)
        seconds = time.monotonic() - started
        print(f"\nlab down after a killed lab up: {len(alive_before)} tagged processes, {len(report['netns'])} netns, "
              f"{len(report['bridges'])} bridges, {len(report['interfaces'])} interfaces removed in {seconds:.2f} s")
        assert alive_before, "lab up was killed after starting services: their processes must have been running"
        assert set(alive_before) <= set(report["processes"])
        assert report["clean"] and seconds < 15
        _assert_nothing_left(lab_id, lab_dir)


def test_up_refuses_a_directory_holding_a_live_lab(tmp_path: Path) -> None:
    with machine_netns():
        lab_dir = tmp_path / "lab"
        up = subprocess.run([*LEENGINE, "lab", "up", str(SCENARIO), "--dir", str(lab_dir), "--no-services"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert up.returncode == 0, up.stderr
        lab_id = LabRecord(lab_dir).lab_id()
        try:
            again = subprocess.run([*LEENGINE, "lab", "up", str(SCENARIO), "--dir", str(lab_dir), "--no-services"],
                                   capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert again.returncode == 1
            assert again.stderr.count("\n") == 1 and f"already holds lab {lab_id}" in again.stderr
            status = subprocess.run([*LEENGINE, "lab", "status", "--dir", str(lab_dir), "--json"],
                                    capture_output=True, text=True, cwd=ROOT, timeout=60)
            data = json.loads(status.stdout)
            assert data["id"] == lab_id and data["fabric"]["ovs"]
            assert data["fabric"]["bridges"] == data["fabric"]["bridges_planned"] > 0
            assert data["processes"]["ovs-vswitchd"]["alive"]
        finally:
            _down(lab_dir)
        _assert_nothing_left(lab_id, lab_dir)


def test_processes_forked_in_a_lab_netns_while_it_is_swept_are_killed_too(monkeypatch) -> None:
    """An Nginx master killed mid-reload forks workers after the scan that found it: they must go as well."""
    import lab.lab as lab_module

    name = f"le-t{os.getpid() % 10000:04d}-fork"
    subprocess.run(["ip", "netns", "add", name], check=True)
    started: list[subprocess.Popen] = []

    def sleeper() -> subprocess.Popen:
        started.append(subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"]))
        return started[-1]

    real_kill = lab_module._kill

    def kill_after_a_fork(pids: list[int]) -> list[int]:
        if len(started) == 1:  # between the first scan and its kills, one more process is born in the netns
            born = sleeper()
            deadline = time.monotonic() + 5
            while born.pid not in lab_module._pids_in_netns([name]) and time.monotonic() < deadline:
                time.sleep(0.01)
        return real_kill(pids)

    monkeypatch.setattr(lab_module, "_kill", kill_after_a_fork)
    try:
        first = sleeper()
        deadline = time.monotonic() + 5
        while first.pid not in lab_module._pids_in_netns([name]) and time.monotonic() < deadline:
            time.sleep(0.01)
        killed = lab_module._kill_in_netns([name])
        assert {p.pid for p in started} <= set(killed) and len(started) == 2
        for p in started:
            assert p.wait(timeout=10) == -signal.SIGKILL
        assert lab_module._pids_in_netns([name]) == []  # nothing left that would keep the namespace
    finally:
        for p in started:
            p.kill()
        subprocess.run(["ip", "netns", "del", name], check=False)
