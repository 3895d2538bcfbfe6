"""The leengine CLI: the demo runs and reports; bad input is one readable line and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

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
        (["store", "get", "/k", "--etcd", "nonsense"], "--etcd: etcd endpoint must look like host:port"),
        (["store", "get", "/k", "--endpoint", "nonsense"], "etcd endpoint must look like host:port"),  # old name
        (["store", "ls", "/", "--etcd-timeout", "0"], "Invalid value for '--etcd-timeout'"),
        (["store", "status", "--timeout", "inf"], "Invalid value for '--timeout'"),  # old name, same check
        (["--log-level", "loud", "demo"], "Invalid value for '--log-level'"),
        (["install-cni", "/nonexistent/cni/bin"], "/nonexistent/cni/bin does not exist"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(args, message):
    run = leengine(*args)
    assert run.returncode == 2
    assert run.stderr.startswith("leengine: error: ")
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


def test_install_cni_writes_the_plugin_atomically_and_replaces_an_old_one(tmp_path):
    from leengine import cni_plugin
    from leengine.cni_install import installed_interpreter, installed_source

    target = tmp_path / "leengine-cni"
    target.write_text("#!/bin/sh\nexit 1\n")
    old_inode = target.stat().st_ino
    run = leengine("install-cni", str(tmp_path), "--plugin", "python")
    assert run.returncode == 0, run.stderr
    assert str(target) in run.stdout and "Python plugin" in run.stdout
    assert os.listdir(tmp_path) == ["leengine-cni"]  # no temporary file left behind
    assert target.stat().st_ino != old_inode  # renamed into place, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert target.read_bytes().startswith(b"#!/bin/sh\n")
    assert installed_interpreter(target.read_bytes()) == sys.executable
    assert installed_source(target.read_bytes()) == Path(cni_plugin.__file__).read_text()  # compiled + this source
    version = subprocess.run([str(target)], input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, timeout=60, check=False)
    assert version.returncode == 0 and json.loads(version.stdout)["cniVersion"] == "1.0.0"


def test_install_cni_installs_the_compiled_go_plugin_by_default_and_says_so(tmp_path):
    from leengine.cni_install import GO_BINARY

    target = tmp_path / "leengine-cni"
    target.write_text("#!/bin/sh\nexit 1\n")
    old_inode = target.stat().st_ino
    run = leengine("install-cni", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"installed {target} (compiled Go plugin, built from {GO_BINARY})"
    assert os.listdir(tmp_path) == ["leengine-cni"] and target.stat().st_ino != old_inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and target.read_bytes() == GO_BINARY.read_bytes()
    version = subprocess.run([str(target)], input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, timeout=60, check=False)
    assert version.returncode == 0 and json.loads(version.stdout)["cniVersion"] == "1.0.0"
    refused = leengine("install-cni", str(tmp_path), "--plugin", "go", "--python", sys.executable)
    assert refused.returncode == 2 and "needs none" in refused.stderr


def test_install_cni_python_names_the_interpreter_the_plugin_execs(tmp_path):
    from leengine.cni_install import installed_interpreter

    python = os.path.realpath(sys.executable)  # another path to an interpreter, as /usr/bin/python3 would be
    run = leengine("install-cni", str(tmp_path), "--python", python)
    assert run.returncode == 0, run.stderr
    target = tmp_path / "leengine-cni"
    assert installed_interpreter(target.read_bytes()) == python
    version = subprocess.run([str(target)], input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, timeout=60, check=False)
    assert version.returncode == 0 and json.loads(version.stdout)["cniVersion"] == "1.0.0"
    refused = leengine("install-cni", str(tmp_path), "--python", "/bin/false")
    assert refused.returncode == 2 and "cannot compile the plugin" in refused.stderr


def test_install_cni_refuses_a_file_in_one_line(tmp_path):
    (tmp_path / "bin").write_text("not a directory")
    run = leengine("install-cni", str(tmp_path / "bin"))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"leengine: error: {tmp_path / 'bin'} is not a directory; give the "
                                       "runtime's existing CNI bin directory"]


def test_install_refuses_an_interpreter_the_exec_line_cannot_name(tmp_path):
    from leengine.cni_install import InstallError, install_plugin

    for python in ("/opt/my python/bin/python3", "python3", "/" + "p" * 1100, "/opt/it's/python3", "/a/$(id)/py",
                   "/usr/bin/python3\n", "//usr/bin/python3"):
        with pytest.raises(InstallError, match="exec line"):
            install_plugin(tmp_path, python=python)
    assert os.listdir(tmp_path) == []


def test_store_reads_take_json_and_a_dead_etcd_is_a_failure_not_bad_input():
    for args in (["store", "status"], ["store", "get", "/k"], ["store", "ls", "/"]):
        run = leengine(*args, "--json", "--etcd", "127.0.0.1:1", "--etcd-timeout", "0.5")
        assert run.returncode == 1, run.stderr
        assert run.stderr.startswith("leengine: error: etcd at 127.0.0.1:1 unavailable")
        assert len(run.stderr.strip().splitlines()) == 1


def test_sim_validate_json_names_the_scenario_and_its_hash():
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "default.yaml"
    run = leengine("sim", "validate", str(scenario), "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["name"] == "default" and len(summary["sha256"]) == 64 and summary["pods"] > 0
