"""``lab.processes.freeze``: it returns only once every thread of the process has stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.processes import freeze

# A child with several threads spinning: each must be stopped when freeze returns.
SPINNERS = """
import threading
def spin():
    while True:
        pass
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
spin()
"""


def _thread_states(pid: int) -> list[str]:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return states


def test_every_thread_is_stopped_when_freeze_returns():
    child = subprocess.Popen([sys.executable, "-c", SPINNERS], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(_thread_states(child.pid)) == 5
        freeze(child.pid)
        assert set(_thread_states(child.pid)) == {"T"}
        child.send_signal(signal.SIGCONT)
    finally:
        child.kill()
        child.wait()


def test_freezing_a_process_that_is_gone_names_it():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(RuntimeError, match=f"process {child.pid} is gone"):
        freeze(child.pid)


def test_freezing_a_child_that_exited_but_was_not_reaped_says_it_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(500):  # until it is a zombie: exited, its parent (we) not yet told
            if (Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z":
                break
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match=f"process {child.pid} is gone"):
            freeze(child.pid)
    finally:
        child.wait()
