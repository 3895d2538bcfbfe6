"""Every console script starts the same way: a bad option or ``--log-level`` is one line on stderr and exit 2.

The scripts are read from pyproject.toml's ``[project.scripts]`` and run as installed
(``.venv/bin``), so a new command is covered the day it is added. The daemons that can
run without root and real services also show the shared start-up: etcd down at start
is a wait, not an exit, and SIGTERM stops them with status 0 (``leengine/daemon.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from leengine import command

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
DEAD_ETCD = "127.0.0.1:1"  # nothing listens on port 1: refused at once


def run(*args: str, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], input=stdin, capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})


def test_every_console_script_is_installed():
    assert SCRIPTS, "no [project.scripts] in pyproject.toml"
    assert [s for s in SCRIPTS if not (BIN / s).exists()] == [], "pip install -e . to install the new scripts"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args", [["--no-such-option"], ["--log-level", "foo"]], ids=["bad-option", "bad-log-level"])
def test_bad_input_is_one_line_on_stderr_and_exit_2(script, args, tmp_path):
    done = run(script, *args, tmp_path=tmp_path)
    assert done.returncode == command.EXIT_BAD_INPUT, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "leengine-cni"])
def test_help_exits_0_and_names_the_shared_options(script, tmp_path):
    done = run(script, "--help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--log-level" in done.stdout
    if script != "leengine":  # leengine's etcd flags are on `leengine store ...`
        assert "--etcd-timeout" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["leengine", "store", "status", "--etcd-timeout", "nan"], "Invalid value for '--etcd-timeout'"),
    (["cnictl", "--etcd-timeout", "0", "pool", "list"], "Invalid value for '--etcd-timeout'"),
    (["leengine-cni-agent", "--node", "n1", "--etcd-timeout", "-1"], "Invalid value for '--etcd-timeout'"),
    (["leengine-slb-agent", "--group", "g", "--host", "h", "--prefix", "p", "--etcd-timeout", "inf"],
     "Invalid value for '--etcd-timeout'"),
    (["leengine-control", "--tokens", "t", "--etcd-timeout", "4000"], "Invalid value for '--etcd-timeout'"),
    (["leengine-cni-agent", "--node", "n1", "--etcd", "nonsense"], "--etcd: etcd endpoint must look like host:port"),
    (["cnictl", "--etcd", "nonsense", "pool", "list"], "--etcd: etcd endpoint must look like host:port"),
])
def test_the_etcd_flags_are_checked_alike_everywhere(args, message, tmp_path):
    done = run(*args, tmp_path=tmp_path)
    assert done.returncode == command.EXIT_BAD_INPUT, done.stderr
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("args", [
    ["leengine", "store", "status"],
    ["cnictl", "pool", "list"],
])
def test_etcd_unreachable_is_a_failure_exit_1(args, tmp_path):
    etcd = ["--etcd", DEAD_ETCD, "--etcd-timeout", "0.5"]
    full = [args[0], *etcd, *args[1:]] if args[0] == "cnictl" else [*args, *etcd]
    done = run(*full, tmp_path=tmp_path)
    assert done.returncode == command.EXIT_FAILED, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "unavailable" in done.stderr, done.stderr


def _daemon_args(script: str, tmp_path: Path) -> list[str]:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-0123456789abcdef ops admin\n")
    tokens.chmod(0o600)
    return {
        "leengine-cni-agent": ["--node", "node-1", "--socket", str(tmp_path / "cni.sock")],
        "leengine-control": ["--tokens", str(tokens), "--listen", "127.0.0.1:0"],
    }[script]


@pytest.mark.parametrize("script", ["leengine-cni-agent", "leengine-control"])
def test_a_daemon_waits_for_etcd_and_stops_on_sigterm_with_0(script, tmp_path):
    args = [str(BIN / script), *_daemon_args(script, tmp_path), "--etcd", DEAD_ETCD, "--etcd-timeout", "0.5"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "waiting for etcd" not in line:
            line = proc.stderr.readline() if proc.stderr else ""
            assert line or proc.poll() is None, f"{script} exited {proc.returncode} instead of waiting for etcd"
        assert "waiting for etcd" in line
        time.sleep(0.5)
        assert proc.poll() is None, f"{script} gave up on etcd"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == command.EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_exit_codes_are_the_documented_ones():
    assert (command.EXIT_OK, command.EXIT_FAILED, command.EXIT_BAD_INPUT, command.EXIT_LEAKS) == (0, 1, 2, 3)
    from leengine import cnictl

    assert cnictl.EXIT_LEAKS == command.EXIT_LEAKS
    doc = command.__doc__ or ""
    for code in ("0", "1", "2", "3", "130"):
        assert f"\n{code.rjust(2)}  " in doc or f"\n{code}  " in doc, code
