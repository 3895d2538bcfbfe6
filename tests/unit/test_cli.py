"""The leengine CLI: the demo runs and reports; bad input is one readable line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def leengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leengine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_demo_json_report_is_safe_and_names_its_trace():
    run = leengine("demo", "--nodes", "20", "--duration", "60", "--seed", "5", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["config"]["nodes"] == 20 and report["config"]["seed"] == 5
    assert report["stats"]["safety_violations"] == 0
    assert report["stats"]["wins"] > 0
    assert len(report["trace_sha256"]) == 64
    again = json.loads(leengine("demo", "--nodes", "20", "--duration", "60", "--seed", "5", "--json").stdout)
    assert again["trace_sha256"] == report["trace_sha256"]


def test_demo_writes_the_trace_it_hashes(tmp_path):
    import hashlib

    out = tmp_path / "trace.txt"
    run = leengine("demo", "--nodes", "5", "--duration", "20", "--crashes", "1", "--partitions", "1",
                   "--json", "--trace-out", str(out))
    assert run.returncode == 0, run.stderr
    lines = out.read_text().splitlines()
    digest = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
    assert digest == json.loads(run.stdout)["trace_sha256"]
    assert any(" store-put " in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--nodes", "abc"], "Invalid value for '--nodes'"),
        (["demo", "--nodes", "0"], "nodes must be at least 1"),
        (["demo", "--crashes", "40", "--partitions", "20"], "exceed nodes"),
        (["demo", "--duration", "-5"], "duration must not be negative"),
        (["demo", "--bogus"], "No such option: --bogus"),
        (["store", "get", "/k", "--endpoint", "nonsense"], "etcd endpoint must look like host:port"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(args, message):
    run = leengine(*args)
    assert run.returncode != 0
    assert run.stderr.startswith("leengine: error: ")
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
