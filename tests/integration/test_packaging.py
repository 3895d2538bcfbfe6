"""A plain ``pip install .`` into a fresh virtualenv gives working commands; ``.[test]`` adds the test tools.

Issue 9, item 9: the generated gRPC modules existed only after ``scripts/build-protos.sh``
had been run by hand, so ``leengine-control`` installed by pip died with a traceback. The
package build now generates them (setup.py's build_py hook). This test copies the tracked
sources (no ``control/generated`` from the checkout can leak in), installs them the way a
user would, starts the installed ``leengine-control`` against the session's etcd and asks
its health service whether it serves; then checks the one-line error of a broken install.

Slow (a fresh virtualenv and a package build, about a minute from the local wheel cache):
integration tier.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def _copy_sources(target: Path) -> None:
    """The files git would ship (tracked or new, not ignored): what a clean clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the project installed by a plain ``pip install SOURCE``."""
    work = tmp_path_factory.mktemp("pkg")
    source, venv = work / "src", work / "venv"
    _copy_sources(source)
    assert not (source / "control" / "generated").exists(), "generated code must come from the build, not the copy"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
                             str(source)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return venv


def _install_extra(venv: Path, extra: str) -> None:
    source = venv.parent / "src"
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
                             f"{source}[{extra}]"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip install [{extra}] failed:\n{result.stderr[-3000:]}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_control_service_starts_and_serves(installed: Path, etcd_server, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("packagetesttoken0123456789 admin admin\n")
    tokens.chmod(0o600)
    port = _free_port()
    command = [str(installed / "bin" / "leengine-control"), "--tokens", str(tokens), "--listen", f"127.0.0.1:{port}",
               "--etcd", etcd_server.endpoint, *etcd_server.client_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel)
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    break
                except grpc.RpcError:
                    time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING, \
            f"installed leengine-control did not serve (exit {process.poll()}):\n{_output(process)}"
    finally:
        process.terminate()
        process.wait(10)


def test_installed_package_carries_the_generated_code_and_the_test_extra(installed: Path) -> None:
    _install_extra(installed, "test")
    python = str(installed / "bin" / "python")
    probe = ("import control.generated.leengine.control.v1.builds_pb2_grpc, "
             "control.generated.leengine.control.v1.slb_pb2_grpc, hypothesis, pytest, pytest_timeout; print('ok')")
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/")
    assert result.stdout.strip() == "ok", result.stderr
    for tool in ("leengine", "leengine-control", "cnictl", "leengine-cni", "leengine-cni-agent", "leengine-slb-agent",
                 "leengine-discovery", "leengine-build-agent"):
        assert (installed / "bin" / tool).is_file(), f"{tool} missing from the installed package"


def test_a_broken_install_is_one_line_not_a_traceback(installed: Path) -> None:
    site = Path(subprocess.run([str(installed / "bin" / "python"), "-c", "import control, os; "
                                "print(os.path.dirname(control.__file__))"], capture_output=True, text=True,
                               cwd="/", check=True).stdout.strip())
    generated = site / "generated"
    hidden = site / "generated.hidden"
    generated.rename(hidden)
    try:
        result = subprocess.run([str(installed / "bin" / "leengine-control"), "--tokens", "/nonexistent"],
                                capture_output=True, text=True, timeout=60)
    finally:
        hidden.rename(generated)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leengine-control: error: cannot load the control service"), \
        result.stderr
    assert "Traceback" not in result.stderr


def _output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.terminate()
    try:
        out, _ = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return "(no output)"
    return out[-3000:]
