"""The real ``leengine-cni`` executable against no agent, a broken agent and a test agent; the agent server.

The plugin is run as the runtime runs it: the copy ``leengine install-cni`` writes into a
(temporary) CNI bin directory, exec-ed with CNI_* variables and the configuration on stdin;
the tests assert its exit code and the JSON on stdout. Every test that execs the plugin
runs both plugins (``both_plugins``): the compiled Go one (``scripts/cni-plugin/main.go``,
built by ``scripts/build-cni-plugin.sh``) and the Python one (``leengine/cni_plugin.py``
behind its ``#!/bin/sh`` part, run as ``python -IS``); property tests compare the two byte
for byte. One test runs the venv's console script ``leengine-cni`` too.
The agent is ``leengine.cni_agent_server.Server`` on its own event loop in a
thread, with a small recording handler written here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cni import request as codes
from cni.request import CniError, CniRequest
from leengine import cni_plugin
from leengine.cni_agent_server import AgentAlreadyRunning, Server, serve
from leengine.cni_install import (
    GO_BINARY,
    InstallError,
    install,
    install_go_plugin,
    install_plugin,
    installed_interpreter,
    installed_source,
    shell_part,
)

CONSOLE_SCRIPT = str(Path(sys.executable).parent / "leengine-cni")
CONF = {"cniVersion": "1.0.0", "name": "lenet", "type": "leengine-cni", "pools": ["web-a"]}
ENV = {"CNI_CONTAINERID": "c0ffee01", "CNI_NETNS": "/var/run/netns/pod1", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


# --- helpers (also used by tests/integration/test_libcni.py) --------------------------------------------------------

PLUGIN_KINDS = ("python", "go")
_installed: dict[str, str] = {}
_install_lock = threading.Lock()
_current_kind = ["python"]  # which plugin installed_plugin() and run_plugin() run: set by the plugin_kind fixture


def installed_plugin(kind: str | None = None) -> str:
    """The plugin as operators install it (``leengine install-cni``: ``install_go_plugin`` or ``install_plugin``),
    once per session and kind; by default the kind the running test is parametrized with (else Python)."""
    kind = kind or _current_kind[0]
    with _install_lock:
        if kind not in _installed:
            directory = tempfile.mkdtemp(prefix=f"lecni-{kind}-", dir="/tmp")
            atexit.register(shutil.rmtree, directory, True)
            install = install_go_plugin if kind == "go" else install_plugin
            _installed[kind] = str(install(directory))
        return _installed[kind]


@pytest.fixture(params=PLUGIN_KINDS)
def plugin_kind(request):
    """Runs the test once per plugin: what installed_plugin()/run_plugin() exec follows the parameter."""
    _current_kind[0] = request.param
    try:
        yield request.param
    finally:
        _current_kind[0] = "python"


both_plugins = pytest.mark.usefixtures("plugin_kind")


class RecordingHandler:
    """Records every request; ADD answers a fixed, plausible result built from the request.

    Container ``full`` fails with our pool-exhausted code, ``boom`` raises a plain
    exception (a handler bug), ``slow`` takes ``slow_seconds``.
    """

    def __init__(self, slow_seconds: float = 1.0) -> None:
        self.requests: list[CniRequest] = []
        self.slow_seconds = slow_seconds
        self.status_error: CniError | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    async def _enter(self, request: CniRequest) -> None:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.container_id == "slow":
                await asyncio.sleep(self.slow_seconds)
            elif request.container_id == "full":
                raise CniError(codes.POOL_EXHAUSTED, "no free address", "pool web-a is full")
            elif request.container_id == "boom":
                raise RuntimeError("handler bug")
        finally:
            self.in_flight -= 1

    def result(self, request: CniRequest) -> dict[str, Any]:
        return {
            "interfaces": [{"name": f"vh{request.container_id[:8]}", "mac": "0a:58:0a:01:00:01", "mtu": 1450},
                           {"name": request.ifname, "mac": "0a:58:0a:01:00:05", "sandbox": request.netns}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.2"]},
        }

    async def add(self, request: CniRequest) -> dict[str, Any]:
        await self._enter(request)
        return self.result(request)

    async def delete(self, request: CniRequest) -> None:
        await self._enter(request)

    async def check(self, request: CniRequest) -> None:
        await self._enter(request)

    async def gc(self, request: CniRequest) -> None:
        await self._enter(request)

    async def status(self, request: CniRequest) -> None:
        await self._enter(request)
        if self.status_error:
            raise self.status_error


class AgentThread:
    """A ``Server`` on its own event loop in a background thread."""

    def __init__(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = Server(path, handler, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AgentThread:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def close(self, grace: float | None = None):
        return asyncio.run_coroutine_threadsafe(self.server.close(grace), self.loop)

    def __exit__(self, *exc: object) -> None:
        self.close().result(30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def sock_dir():
    # Short, private path: sun_path holds 107 bytes and pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="lecni-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sock_dir):
    handler = RecordingHandler()
    with AgentThread(os.path.join(sock_dir, "cni.sock"), handler) as running:
        running.handler = handler
        running.path = running.server.socket_path
        yield running


def plugin_env(command: str, **env_changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "LEENGINE_CNI_"))}
    env.update(ENV)
    env["CNI_COMMAND"] = command
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_plugin(command: str, conf: dict | str | bytes | None = None, *, socket_path: str | None = None,
               timeout: float | None = None, plugin: str | None = None,
               **env_changes: str | None) -> tuple[int, dict | None, str]:
    env = plugin_env(command, **env_changes)
    if socket_path is not None:
        env["LEENGINE_CNI_SOCKET"] = socket_path
    if timeout is not None:
        env["LEENGINE_CNI_TIMEOUT"] = str(timeout)
    if conf is None:
        conf = CONF
    stdin = conf if isinstance(conf, bytes) else (conf if isinstance(conf, str) else json.dumps(conf)).encode()
    run = subprocess.run([plugin or installed_plugin()], input=stdin, env=env, capture_output=True, timeout=60,
                         check=False)
    out = run.stdout.decode()
    return run.returncode, (json.loads(out) if out.strip() else None), run.stderr.decode()


@contextlib.contextmanager
def raw_listener(path: str, on_connection):
    """A bare unix socket server that treats each connection with ``on_connection(conn, stopping)``: broken agents."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    listener.settimeout(0.05)
    stopping = threading.Event()

    def loop():
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                on_connection(conn, stopping)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(5)
        listener.close()


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(conn: socket.socket) -> bytes:
    """Everything until the peer closes: an agent's answer is its exit code, "\\n", then stdout until the end."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- (a) no agent ----------------------------------------------------------------------------------------------------


def test_plugin_codes_match_the_request_module():
    assert cni_plugin.SUPPORTED_VERSIONS == codes.SUPPORTED_VERSIONS
    assert (cni_plugin.INVALID_ENV, cni_plugin.IO_FAILURE, cni_plugin.DECODE_FAILURE, cni_plugin.TRY_AGAIN_LATER,
            cni_plugin.PLUGIN_NOT_AVAILABLE) == (codes.INVALID_ENV, codes.IO_FAILURE, codes.DECODE_FAILURE,
                                                 codes.TRY_AGAIN_LATER, codes.PLUGIN_NOT_AVAILABLE)


@both_plugins
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC"])
def test_no_agent_means_try_again_later(sock_dir, command):
    missing = os.path.join(sock_dir, "absent.sock")
    code, out, err = run_plugin(command, socket_path=missing)
    assert code == 1
    assert out["code"] == codes.TRY_AGAIN_LATER and out["cniVersion"] == "1.0.0"
    assert missing in out["details"] and out["msg"]
    assert "not available" in err


@both_plugins
def test_no_agent_status_means_plugin_not_available(sock_dir):
    code, out, _ = run_plugin("STATUS", {**CONF, "cniVersion": "1.1.0"}, socket_path=os.path.join(sock_dir, "x.sock"))
    assert code == 1 and out["code"] == codes.PLUGIN_NOT_AVAILABLE and out["cniVersion"] == "1.1.0"


@both_plugins
def test_socket_from_config_then_default(sock_dir):
    from_conf = os.path.join(sock_dir, "from-conf.sock")
    _, out, _ = run_plugin("ADD", {**CONF, "agentSocket": from_conf})
    assert from_conf in out["details"]
    # The environment wins over the configuration.
    _, out, _ = run_plugin("ADD", {**CONF, "agentSocket": from_conf}, socket_path=os.path.join(sock_dir, "env.sock"))
    assert "env.sock" in out["details"]
    _, out, _ = run_plugin("DEL", "not json at all")
    assert out["code"] == codes.TRY_AGAIN_LATER and "/run/leengine/cni.sock" in out["details"]


@both_plugins
@pytest.mark.parametrize("socket_text", ['"relative.sock"', '""', "7", '"/' + "p" * 107 + '"', '"/tmp/\\ud800"',
                                         '"/tmp/a\\u0000b"', '["/tmp/x.sock"]'])
def test_an_unusable_agent_socket_in_the_configuration_is_invalid_config(socket_text):
    stdin = '{"cniVersion": "1.0.0", "name": "n", "type": "t", "agentSocket": ' + socket_text + "}"
    code, out, err = run_plugin("ADD", stdin)
    assert code == 1 and out["code"] == codes.INVALID_CONFIG and out["msg"].endswith("field agentSocket"), out
    assert out["details"].startswith("agentSocket=") and "Traceback" not in err


@both_plugins
def test_stale_socket_nobody_listening_means_try_again_later(sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens: connect is refused
    code, out, _ = run_plugin("ADD", socket_path=path)
    assert code == 1 and out["code"] == codes.TRY_AGAIN_LATER and "refused" in out["details"].lower()


@both_plugins
def test_agent_that_hangs_up_without_answering_means_try_again_later(sock_dir):
    path = os.path.join(sock_dir, "rude.sock")
    with raw_listener(path, lambda conn, _: read_line(conn)):
        code, out, _ = run_plugin("ADD", socket_path=path)
    assert code == 1 and out["code"] == codes.TRY_AGAIN_LATER and "without answering" in out["details"]


@both_plugins
def test_agent_too_slow_means_try_again_later_within_the_deadline(sock_dir):
    path = os.path.join(sock_dir, "slow.sock")
    with raw_listener(path, lambda conn, stopping: (read_line(conn), stopping.wait(3))):
        started = time.monotonic()
        code, out, _ = run_plugin("ADD", socket_path=path, timeout=0.5)
        elapsed = time.monotonic() - started
    assert code == 1 and out["code"] == codes.TRY_AGAIN_LATER and "no answer within 0.5s" in out["details"]
    assert elapsed < 2.5


@both_plugins
@pytest.mark.parametrize(("value", "accepted"), [
    (" 2_0 ", True), ("\u0662\u0660", True), ("\u20031e1\u3000", True), ("\U00016ac5", True), ("+inf", False),
    ("1\x1c", False), ("1__0", False), ("_1", False), ("0x10", False), ("1e", False), ("\u0661\u0660x", False),
    ("\x0b3.5\x0c", True), ("NaN", False), ("1e-400", False), ("300.0000000000001", False), ("3e2", True),
])
def test_the_timeout_variable_is_read_as_pythons_float_reads_it(sock_dir, value, accepted):
    path = os.path.join(sock_dir, "quick.sock")
    with raw_listener(path, lambda conn, _: (read_line(conn), conn.sendall(b"0\n"))):
        code, out, _ = run_plugin("DEL", socket_path=path, LEENGINE_CNI_TIMEOUT=value)
    if accepted:
        assert (code, out) == (0, None)
    else:
        assert code == 1 and out["code"] == codes.INVALID_ENV and out["msg"] == "invalid LEENGINE_CNI_TIMEOUT"


@both_plugins
def test_timeout_from_config(sock_dir):
    path = os.path.join(sock_dir, "slow.sock")
    with raw_listener(path, lambda conn, stopping: (read_line(conn), stopping.wait(3))):
        _, out, _ = run_plugin("DEL", {**CONF, "agentTimeout": 0.3}, socket_path=path)
    assert out["code"] == codes.TRY_AGAIN_LATER and "0.3s" in out["details"]


@both_plugins
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 400 Bad Request\n",
    b"0",  # no newline: the code never ended
    b'{"exit": 0, "stdout": ""}\n',  # the old JSON framing
    b"x\n{}", b"\n{}", b" 0\n{}", b"+0\n{}", b"0 \n{}", b"1_0\n{}", b"\xd9\xa0\n{}", b"12345678901\n{}",
    b'0\n{"msg": "\xff"}',  # stdout not UTF-8
])
def test_agent_answering_garbage_is_an_io_failure(sock_dir, answer):
    path = os.path.join(sock_dir, "garbage.sock")
    with raw_listener(path, lambda conn, _: (read_line(conn), conn.sendall(answer))):
        code, out, _ = run_plugin("ADD", socket_path=path)
    assert code == 1 and out["code"] == codes.IO_FAILURE and out["msg"] == "the leengine CNI agent answered garbage"


@both_plugins
def test_plugin_sends_one_line_with_only_cni_variables_and_stdin_verbatim(sock_dir):
    path = os.path.join(sock_dir, "spy.sock")
    seen: list[bytes] = []

    def answer(conn, _):
        seen.append(read_line(conn))
        conn.sendall(b"0\n")

    # Everything JSON must escape, and more: quotes, backslashes, controls, DEL, U+2028, non-BMP, non-ASCII.
    stdin = ('{"cniVersion":"1.0.0",  "name":"lenet","type":"leengine-cni", "x": "é\\"\\\\ \\n\\u0001",\n'
             '\t"y": "\x7f\u2028😀"}')
    with raw_listener(path, answer):
        code, out, _ = run_plugin("DEL", stdin, socket_path=path, CNI_ARGS='A="1";B=\\é\t\x01😀', HOME_SECRET="nope")
    assert code == 0 and out is None
    assert len(seen) == 1 and seen[0].endswith(b"\n") and seen[0].count(b"\n") == 1 and seen[0].isascii()
    request = json.loads(seen[0])
    assert request["stdin"] == stdin
    assert request["env"] == {**ENV, "CNI_COMMAND": "DEL", "CNI_ARGS": 'A="1";B=\\é\t\x01😀'}
    assert seen[0] == json.dumps(request, separators=(",", ":")).encode() + b"\n"  # what json.dumps would send


@both_plugins
@pytest.mark.parametrize(("answer", "code", "stdout"), [
    (b'3\n{"code": 123}', 3, b'{"code": 123}\n'),  # a newline is added when missing
    (b'0\n{"msg": "caf\xc3\xa9"}\n', 0, b'{"msg": "caf\xc3\xa9"}\n'),  # UTF-8 passed as it came
    (b"0\n", 0, b""),
    (b"300\n{}", 1, b"{}\n"),  # not an exit status: failure
    (b"-1\n{}", 1, b"{}\n"),
])
def test_exit_code_and_stdout_are_passed_through(sock_dir, answer, code, stdout):
    path = os.path.join(sock_dir, "echo.sock")
    with raw_listener(path, lambda conn, _: (read_line(conn), conn.sendall(answer))):
        env = {**plugin_env("CHECK"), "LEENGINE_CNI_SOCKET": path, "LANG": "C", "LC_ALL": "C"}
        run = subprocess.run([installed_plugin()], input=json.dumps(CONF).encode(), env=env, capture_output=True,
                             timeout=60, check=False)
    assert (run.returncode, run.stdout) == (code, stdout)


@both_plugins
def test_a_large_answer_arrives_whole(sock_dir):
    path = os.path.join(sock_dir, "big.sock")
    big = {"cniVersion": "1.0.0", "dns": {"search": [f"d{i}.example.org" for i in range(20000)]}}
    body = json.dumps(big).encode()
    assert len(body) > 300_000
    with raw_listener(path, lambda conn, _: (read_line(conn), conn.sendall(b"0\n" + body))):
        code, out, _ = run_plugin("ADD", socket_path=path)
    assert code == 0 and out == big


@both_plugins
def test_invalid_utf8_stdin_is_a_decode_failure(sock_dir):
    code, out, _ = run_plugin("ADD", b'{"cniVersion": "1.0.0", "name": "\xff"}', socket_path=sock_dir + "/x.sock")
    assert code == 1 and out["code"] == codes.DECODE_FAILURE


@both_plugins
@pytest.mark.parametrize("command", [None, "", "INIT"])
def test_missing_or_unknown_command_is_answered_locally(sock_dir, command):
    code, out, _ = run_plugin("ADD", CNI_COMMAND=command, socket_path=sock_dir + "/x.sock")
    assert code == 1 and out["code"] == codes.INVALID_ENV and "CNI_COMMAND" in out["msg"] + out["details"]


@both_plugins
@pytest.mark.parametrize(("stdin", "version"), [
    ('{"cniVersion": "1.0.0"}', "1.0.0"), ('{"cniVersion": "1.1.0"}', "1.1.0"), ("", "1.1.0"), ("{}", "1.1.0"),
    ('{"cniVersion":"1.0.0"}', "1.0.0"), (' {\n "cniVersion"\t:  "1.0.0" }\r\n', "1.0.0"), (" { } ", "1.1.0"),
    ('{"cniVersion": "1.0.\\u0030"}', "1.0.0"), ('{"cniVersion": "1.0.0", "name": "n"}', "1.0.0"),
    ('{"cniVersion": ""}', "1.1.0"), ('{"cniVersion": 1}', "1.1.0"), ('{"name": "n"}', "1.1.0"), ("\u00a0", "1.1.0"),
])
def test_version_needs_no_agent(stdin, version):
    code, out, _ = run_plugin("VERSION", stdin, socket_path="/nonexistent/cni.sock")
    assert code == 0
    assert out == {"cniVersion": version, "supportedVersions": ["1.0.0", "1.1.0"]}


@both_plugins
@pytest.mark.parametrize("stdin", ["{nope", "[]", '"1.0.0"', '{"cniVersion": "1.0.0"} x', '{"cniVersion": "1.0.0"}}',
                                   '{"cniVersion": "1.0.0",}', '{"cniVersion" "1.0.0"}', "\ufeff{}"])
def test_version_with_garbage_stdin_is_a_decode_failure(stdin):
    code, out, _ = run_plugin("VERSION", stdin)
    assert code == 1 and out["code"] == codes.DECODE_FAILURE


@pytest.mark.parametrize("stdin", [
    "", " \t\r\n", "{}", "{ }", '{"cniVersion":"1.0.0"}', ' { "cniVersion" : "1.1.0" } ', '{"cniVersion": ""}',
    '{"cniVersion": "a b"}', '{"cniVersion": "1.0.0", "x": "y"}', '{"cniVersion": "1.0\\"0"}', '{"cniVersion": "é"}',
    '{"cniVersion": "\x01"}', '{"cniVersion": 1}', '{"cniVersion": "1", }', '{"x": "1"}', "{nope}", '{"cniVersion"}',
    '{"cniVersion": "1.0.0"', '"cniVersion": "1.0.0"}', '{"cniVersion":"1.0.0"}\u00a0', '{"cniVersion": "1"}}',
])
def test_version_shortcut_agrees_with_json(stdin):
    # VERSION reads libcni's {"cniVersion": "X"} without json; anything else it must leave to json (None).
    fast = cni_plugin._simple_version(stdin)
    if fast is not None:
        try:
            conf = json.loads(stdin) if stdin.strip(" \t\r\n") else {}
        except ValueError:
            pytest.fail(f"the shortcut accepted what json refuses: {stdin!r}")
        assert conf == ({"cniVersion": fast} if fast or "cniVersion" in conf else {})


@pytest.mark.parametrize("text", [
    '{"agentSocket": "/run/x.sock", "agentTimeout": 2.5}', ' \t\r\n{"a": [1, -2.5e3, true, false, null]} \n',
    '{"a": NaN, "b": Infinity, "c": -Infinity}', '{"a": 1, "a": 2}',
    '{"\\u0061gentSocket": "/s", "x": "\\ud83d\\ude00"}', '{"big": 123456789012345678901234567890}', "{}", "[]",
    '"text"', "1", "", " ", "{nope", '{"a": 1} x', '{"a": 1}}', '{"a": 1,}', '{"a": "\x01"}', "\ufeff{}",
    '{"a": 1}\u00a0', "[" * 50 + "]" * 50, '{"a": ' * 100000 + "1" + "}" * 100000,
])
def test_the_plugins_json_reader_agrees_with_json(text):
    """_loads runs json's C scanner without importing json; it must read exactly what json.loads reads."""
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        expected = None
    got = cni_plugin._loads(text)
    if isinstance(expected, dict):
        assert json.dumps(got) == json.dumps(expected)  # NaN != NaN: compare the texts
    else:
        assert got is cni_plugin._NOT_JSON


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(value=_JSON, cut=st.integers(min_value=0, max_value=200), pad=st.sampled_from(["", " ", "\n\t", "x", "}"]))
def test_property_the_plugins_json_reader_agrees_with_json(value, cut, pad):
    text = json.dumps(value)
    for candidate in (text, text[:cut], text + pad, pad + text):
        try:
            expected = json.loads(candidate)
        except ValueError:
            expected = None
        got = cni_plugin._loads(candidate)
        if isinstance(expected, dict):
            assert json.dumps(got) == json.dumps(expected)
        else:
            assert got is cni_plugin._NOT_JSON


def test_installed_copy_is_a_shell_part_then_the_module_compiled_for_an_isolated_interpreter():
    data = Path(installed_plugin()).read_bytes()
    shebang, _, _ = data.partition(b"\n")
    assert shebang == b"#!/bin/sh"
    assert installed_interpreter(data) == sys.executable
    assert f"exec '{sys.executable}' -IS \"$plugin\" \"$@\"".encode() in data  # one option word, as before
    assert data.isascii()
    assert installed_source(data) == Path(cni_plugin.__file__).read_text()
    assert stat.S_IMODE(os.stat(installed_plugin()).st_mode) == 0o755


def test_the_shell_part_passes_shellcheck(tmp_path):
    script = tmp_path / "shell-part.sh"
    script.write_text(shell_part(sys.executable))
    run = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout.decode()


def _without_python(tmp_path: Path) -> str:
    """The installed copy with its interpreter replaced by one that does not exist: what runs without Python?"""
    data = Path(installed_plugin()).read_bytes().replace(f"'{sys.executable}'".encode(), b"'/nonexistent/python3'")
    copy = tmp_path / "leengine-cni"
    copy.write_bytes(data)
    copy.chmod(0o755)
    return str(copy)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0", "0.4.0", "9.9.9-rc1+x_y"])
def test_libcnis_version_request_is_answered_without_python(tmp_path, version):
    code, out, _ = run_plugin("VERSION", '{"cniVersion":"' + version + '"}', plugin=_without_python(tmp_path))
    assert code == 0 and out == {"cniVersion": version, "supportedVersions": list(cni_plugin.SUPPORTED_VERSIONS)}


@pytest.mark.parametrize(("command", "stdin"), [("VERSION", '{"cniVersion": "1.0.0"}'), ("VERSION", ""),
                                                ("VERSION", '{"cniVersion":"1.0.0"}\n'), ("ADD", CONF),
                                                ("DEL", CONF)])
def test_everything_else_goes_to_python(tmp_path, command, stdin):
    code, _, err = run_plugin(command, stdin, plugin=_without_python(tmp_path))
    assert code == 127 and "/nonexistent/python3" in err  # the shell's "not found"


_VERSION_PIECES = [b'{"cniVersion":"', b'"}', b"{", b"}", b"\n", b"\0", b" ", b"1.0.0", b"a b", b'"', b"\\", b"%s",
                   b"$(id)", b"`id`", b"'", b"*", b"\xc3\xa9", b"\xff", b'{"cniVersion": "1.0.0"}']
_VERSION_STDIN = st.binary(max_size=60) | st.lists(st.sampled_from(_VERSION_PIECES), max_size=6).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(stdin=_VERSION_STDIN)
def test_property_the_shell_part_and_python_give_one_version_answer(stdin):
    """For any stdin, VERSION through the installed file (its shell part first) prints what Python alone prints."""
    env = plugin_env("VERSION")
    via_shell = subprocess.run([installed_plugin()], input=stdin, env=env, capture_output=True, timeout=30,
                               check=False)
    python_only = subprocess.run([sys.executable, "-IS", installed_plugin()], input=stdin, env=env,
                                 capture_output=True, timeout=30, check=False)
    assert (via_shell.returncode, via_shell.stdout) == (python_only.returncode, python_only.stdout)
    assert via_shell.returncode in (0, 1) and b"Traceback" not in via_shell.stderr


def test_installed_copy_runs_the_source_when_the_interpreter_changed_its_bytecode(sock_dir, agent):
    """An interpreter upgraded behind the shebang's path: the compiled copy is skipped, the source is compiled."""
    data = Path(installed_plugin()).read_bytes()
    magic = importlib.util.MAGIC_NUMBER
    assert data.count(repr(magic).encode()) == 1
    stale = Path(sock_dir) / "leengine-cni"
    stale.write_bytes(data.replace(repr(magic).encode(), repr(b"\x00\x00\r\n").encode()))
    stale.chmod(0o755)
    code, out, _ = run_plugin("VERSION", '{"cniVersion": "1.0.0"}', plugin=str(stale))
    assert code == 0 and out["supportedVersions"] == ["1.0.0", "1.1.0"]
    code, out, _ = run_plugin("ADD", socket_path=agent.path, plugin=str(stale))
    assert code == 0 and out["ips"][0]["address"] == "10.1.0.5/24"


@pytest.mark.parametrize(("python", "reason"), [("/nonexistent/python3", "cannot run"),
                                                ("/bin/false", "cannot compile")])
def test_install_refuses_an_interpreter_that_cannot_compile_the_plugin(tmp_path, python, reason):
    with pytest.raises(InstallError, match=reason):
        install_plugin(tmp_path, python=python)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("command", "stdin"), [("ADD", CONF), ("DEL", CONF), ("CHECK", CONF),
                                                ("ADD", {**CONF, "agentSocket": "SOCKET", "agentTimeout": 20}),
                                                ("VERSION", '{"cniVersion":"1.0.0"}')])
def test_installed_copy_forwards_without_importing_json_os_or_socket(sock_dir, command, stdin):
    """The socket from the environment or (as a node's conflist names it) from the configuration, read by C code."""
    path = os.path.join(sock_dir, "fast.sock")
    if isinstance(stdin, dict) and stdin.get("agentSocket"):
        stdin = {**stdin, "agentSocket": path}
    reply = b'0\n{"cniVersion": "1.0.0", "ips": []}' if command == "ADD" else b"0\n"

    def imported(argv: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess, set[str]]:
        run = subprocess.run([sys.executable, "-IS", "-X", "importtime", *argv], capture_output=True, timeout=60,
                             check=False, **kwargs)
        lines = run.stderr.decode().splitlines()
        return run, {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")} - {
            "imported package"}

    with raw_listener(path, lambda conn, _: (read_line(conn), conn.sendall(reply))):
        env = plugin_env(command)
        if not (isinstance(stdin, dict) and "agentSocket" in stdin):
            env["LEENGINE_CNI_SOCKET"] = path
        body = stdin if isinstance(stdin, str) else json.dumps(stdin)
        run, modules = imported([installed_plugin()], input=body.encode(), env=env)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    if command == "VERSION":
        assert json.loads(run.stdout)["supportedVersions"] == ["1.0.0", "1.1.0"]
    else:
        assert run.stdout == reply.partition(b"\n")[2] + (b"\n" if command == "ADD" else b"")
    _, startup = imported(["-c", "pass"])
    assert "os" not in startup  # else the check below would not see what os costs
    assert not modules & {"json", "socket", "re", "enum", "selectors", "__future__", "os"}
    # VERSION imports nothing the interpreter has not loaded already; forwarding, two C modules.
    assert modules - startup <= (set() if command == "VERSION" else {"_socket", "_json"})


def test_console_script_still_works(agent):
    code, out, _ = run_plugin("VERSION", '{"cniVersion": "1.0.0"}', plugin=CONSOLE_SCRIPT)
    assert code == 0 and out["supportedVersions"] == ["1.0.0", "1.1.0"]
    code, out, _ = run_plugin("ADD", socket_path=agent.path, plugin=CONSOLE_SCRIPT)
    assert code == 0 and out["ips"][0]["address"] == "10.1.0.5/24"
    code, out, _ = run_plugin("DEL", socket_path=agent.path + ".absent", plugin=CONSOLE_SCRIPT)
    assert code == 1 and out["code"] == codes.TRY_AGAIN_LATER


# --- the Go plugin: one static binary that behaves as the Python plugin does ----------------------------------------


def _has_program_interpreter(elf: bytes) -> bool:
    """Does the ELF file name a dynamic loader (PT_INTERP)? A static binary does not."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1, "a little-endian 64-bit ELF file"
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize = int.from_bytes(elf[0x36:0x38], "little")
    phnum = int.from_bytes(elf[0x38:0x3A], "little")
    return any(int.from_bytes(elf[phoff + i * phentsize:phoff + i * phentsize + 4], "little") == 3  # PT_INTERP
               for i in range(phnum))


def test_go_plugin_is_a_static_binary_with_the_python_plugins_supported_versions():
    go = installed_plugin("go")
    assert not _has_program_interpreter(Path(go).read_bytes())  # runs on a node without Go or a libc of its own
    assert stat.S_IMODE(os.stat(go).st_mode) == 0o755
    assert Path(go).read_bytes() == GO_BINARY.read_bytes()
    # One place for the versions: the build passes cni_plugin.SUPPORTED_VERSIONS, the Go source names none.
    source = (Path(__file__).resolve().parents[2] / "scripts" / "cni-plugin" / "main.go").read_text()
    assert not any(f'"{v}"' in source or f"{v}," in source for v in cni_plugin.SUPPORTED_VERSIONS)
    code, out, _ = run_plugin("VERSION", "", plugin=go)
    assert code == 0 and out["supportedVersions"] == list(cni_plugin.SUPPORTED_VERSIONS)


def test_the_go_build_is_offline_idempotent_and_stamped_with_the_versions(tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-cni-plugin.sh"
    out = tmp_path / "leengine-cni"
    env = {**os.environ, "GOPROXY": "off", "PYTHON": sys.executable}
    first = subprocess.run([str(script), str(out)], env=env, capture_output=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr.decode()
    built = out.stat().st_mtime_ns
    again = subprocess.run([str(script), str(out)], env=env, capture_output=True, timeout=600, check=False)
    assert again.returncode == 0 and again.stderr == b"" and out.stat().st_mtime_ns == built  # up to date: skipped
    stamp = (tmp_path / ".leengine-cni.inputs").read_text()
    assert "versions " + ",".join(cni_plugin.SUPPORTED_VERSIONS) in stamp
    assert sorted(os.listdir(tmp_path)) == [".leengine-cni.inputs", "leengine-cni"]  # no temporary file left


def test_install_picks_go_where_it_builds_else_python_and_says_which(tmp_path, monkeypatch):
    from leengine import cni_install

    auto = install(tmp_path)
    assert auto.kind == "go" and "Go" in auto.how and auto.path.read_bytes() == GO_BINARY.read_bytes()
    python = install(tmp_path, python=sys.executable)  # naming an interpreter asks for the Python plugin
    assert python.kind == "python" and installed_interpreter(python.path.read_bytes()) == sys.executable
    monkeypatch.setattr(cni_install, "GO_BUILD_SCRIPT", tmp_path / "absent.sh")
    fallback = install(tmp_path)
    assert fallback.kind == "python" and "no Go plugin" in fallback.how and "absent.sh" in fallback.how
    with pytest.raises(InstallError, match=r"absent\.sh"):
        install(tmp_path, plugin="go")
    with pytest.raises(InstallError, match="expected one of"):
        install(tmp_path, plugin="rust")
    assert sorted(os.listdir(tmp_path)) == ["leengine-cni"]


@settings(max_examples=150, deadline=None)
@given(stdin=_VERSION_STDIN)
def test_property_the_go_and_the_python_plugin_give_one_version_answer(stdin):
    env = plugin_env("VERSION")
    runs = [subprocess.run([installed_plugin(kind)], input=stdin, env=env, capture_output=True, timeout=30,
                           check=False) for kind in PLUGIN_KINDS]
    assert [(r.returncode, r.stdout) for r in runs] == [(runs[0].returncode, runs[0].stdout)] * 2


_PY_FLOAT_TEXT = st.text(st.sampled_from("0123456789.eE+-_ \t\x0b\x1c\xa0\u2003\u0668\u0660\uff11\U00016ac1"
                                         "infatyINFAN/x"), max_size=10)
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=12)
    | st.sampled_from([300, 300.0, 2.5, 0, -0.0, 1e-320, "/tmp/lecni-none.sock", "relative.sock", "/" + "p" * 120,
                       "/" + "é" * 53, "/tmp/\udcff", "/tmp/\ud800", "/tmp/é😀",
                       "\U0001cf50\u0378", "it's", 'say "hi"', "\x00", "\ud800"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


@st.composite
def _forwarded(draw: Any) -> tuple[dict[str, bytes], bytes]:
    conf: dict[str, Any] = {"cniVersion": draw(st.sampled_from(["1.0.0", "1.1.0", "", "é\u2028", 1])),
                            "name": "lenet", "type": "leengine-cni"}
    for key in draw(st.lists(st.sampled_from(["agentSocket", "agentTimeout", "x", "cniVersion"]), max_size=3)):
        conf[key] = draw(_ANY_JSON)
    timeout_in_conf = conf.get("agentTimeout")
    if isinstance(timeout_in_conf, int | float) and not isinstance(timeout_in_conf, bool):
        assume(not 0 < timeout_in_conf < 1)  # as for $LEENGINE_CNI_TIMEOUT below: a race, not a behaviour
    text = json.dumps(conf, ensure_ascii=draw(st.booleans()))
    text = draw(st.sampled_from([text, text[: len(text) // 2], text + " x", text.replace('"agent', '"\\u0061gent'),
                                 "[" * 995 + "]" * 995, text[:-1] + ', "d": ' + "[" * 991 + "]" * 991 + "}",
                                 *(text[:-1] + ', "d": ' + "[" * n + "]" * n + "}" for n in (992, 993)),
                                 text[:-1] + ', "agentTimeout": ' + "9" * draw(st.sampled_from([4300, 4301])) + "}"]))
    command = draw(st.sampled_from(["ADD", "DEL", "STATUS", "BOGUS"]))
    env = {k.encode(): v.encode() for k, v in plugin_env(command).items()}
    env[b"CNI_ARGS"] = draw(st.binary(max_size=12).filter(lambda b: b"\0" not in b))
    timeout = draw(st.none() | _PY_FLOAT_TEXT)
    if timeout:
        with contextlib.suppress(ValueError):
            assume(not 0 < float(timeout) < 1)  # a deadline this short makes the answer a race, not a behaviour
        env[b"LEENGINE_CNI_TIMEOUT"] = os.fsencode(timeout)
    return env, text.encode("utf-8", "surrogatepass")


def test_property_the_go_and_the_python_plugin_send_and_print_the_same_bytes(sock_dir):
    """Any configuration (agentSocket/agentTimeout of any JSON, \\u-spelt keys, nesting at the interpreter's limit),
    any $LEENGINE_CNI_TIMEOUT text, any CNI_ARGS bytes: the two plugins send the agent the same request (or none:
    one ASCII line of JSON each, equal once parsed) and print the same stdout with the same exit status."""
    path = os.path.join(sock_dir, "spy.sock")
    seen: list[bytes] = []

    def answer(conn: socket.socket, _: threading.Event) -> None:
        seen.append(read_line(conn))
        conn.sendall(b'0\n{"cniVersion": "1.0.0"}')

    with raw_listener(path, answer):
        sockets = [None, path.encode(), b"/tmp/lecni-\xff\xfe.sock", b"/tmp/" + b"s" * 103, b"/tmp/" + b"s" * 102,
                   b"rel\xc3\xa9"]  # None: the configuration's or the default; 107 bytes fit, 108 do not

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(case=_forwarded(), via_env=st.sampled_from(sockets))
        def check(case: tuple[dict[str, bytes], bytes], via_env: bytes | None) -> None:
            env, stdin = case
            if via_env is not None:
                env = {**env, b"LEENGINE_CNI_SOCKET": via_env}
            results = []
            for kind in PLUGIN_KINDS:
                before = len(seen)
                run = subprocess.run([installed_plugin(kind)], input=stdin, env=env, capture_output=True, timeout=60,
                                     check=False)
                assert b"Traceback" not in run.stderr or kind == "python", run.stderr
                sent = seen[before:]
                assert all(line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1 for line in sent)
                # Parsed: the Python plugin's environment went through sh, which exports it in an order of its own.
                results.append((run.returncode, run.stdout, [json.loads(line) for line in sent]))
            assert results[1] == results[0]

        check()


# --- (b) against the test agent ------------------------------------------------------------------------------------


@both_plugins
def test_add_prints_the_result_as_the_runtime_expects(agent):
    code, out, _ = run_plugin("ADD", socket_path=agent.path, CNI_ARGS="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
    assert code == 0
    assert out["cniVersion"] == "1.0.0"
    assert out["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}]
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/var/run/netns/pod1"}
    assert "mtu" not in out["interfaces"][0]  # a 1.1.0 field, dropped from a 1.0.0 result
    (req,) = agent.handler.requests
    assert (req.command, req.container_id, req.ifname, req.netns) == ("ADD", "c0ffee01", "eth0", "/var/run/netns/pod1")
    assert req.args == {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-0"} and req.network == CONF


@both_plugins
def test_add_in_1_1_keeps_1_1_fields(agent):
    _, out, _ = run_plugin("ADD", {**CONF, "cniVersion": "1.1.0"}, socket_path=agent.path)
    assert out["cniVersion"] == "1.1.0" and out["interfaces"][0]["mtu"] == 1450


@both_plugins
def test_handler_cni_error_is_passed_through(agent):
    code, out, _ = run_plugin("ADD", socket_path=agent.path, CNI_CONTAINERID="full")
    assert code == 1
    assert out == {"cniVersion": "1.0.0", "code": codes.POOL_EXHAUSTED, "msg": "no free address",
                   "details": "pool web-a is full"}


@both_plugins
def test_handler_bug_is_an_io_failure_and_the_agent_keeps_serving(agent):
    code, out, _ = run_plugin("ADD", socket_path=agent.path, CNI_CONTAINERID="boom")
    assert code == 1 and out["code"] == codes.IO_FAILURE and "RuntimeError: handler bug" in out["details"]
    code, out, _ = run_plugin("ADD", socket_path=agent.path, CNI_CONTAINERID="next")
    assert code == 0 and out["ips"][0]["address"] == "10.1.0.5/24"


@both_plugins
@pytest.mark.parametrize(("conf", "env", "expected"), [
    ({**CONF, "mtu": "big"}, {}, codes.INVALID_CONFIG),
    ({**CONF, "cniVersion": "0.4.0"}, {}, codes.INCOMPATIBLE_VERSION),
    ("{broken", {}, codes.DECODE_FAILURE),
    (CONF, {"CNI_IFNAME": "much-too-long-ifname"}, codes.INVALID_ENV),
    (CONF, {"CNI_NETNS": None}, codes.INVALID_ENV),
])
def test_bad_invocations_are_refused_by_the_agent_before_the_handler(agent, conf, env, expected):
    code, out, _ = run_plugin("ADD", conf, socket_path=agent.path, **env)
    assert code == 1 and out["code"] == expected
    assert agent.handler.requests == []


@both_plugins
def test_del_check_gc_status_succeed_with_empty_stdout(agent):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]}
    assert run_plugin("CHECK", {**CONF, "prevResult": prev}, socket_path=agent.path)[:2] == (0, None)
    assert run_plugin("DEL", socket_path=agent.path, CNI_NETNS=None)[:2] == (0, None)
    assert run_plugin("DEL", socket_path=agent.path, CNI_NETNS=None)[:2] == (0, None)
    keep = [{"containerID": "c0ffee01", "ifname": "eth0"}]
    gc_conf = {**CONF, "cniVersion": "1.1.0", "cni.dev/valid-attachments": keep}
    assert run_plugin("GC", gc_conf, socket_path=agent.path, CNI_CONTAINERID=None, CNI_IFNAME=None,
                      CNI_NETNS=None)[:2] == (0, None)
    assert run_plugin("STATUS", {**CONF, "cniVersion": "1.1.0"}, socket_path=agent.path)[:2] == (0, None)
    check, del1, del2, gc, status = agent.handler.requests
    assert check.prev_result == prev
    assert del1.command == del2.command == "DEL" and del1.netns == ""
    assert gc.valid_attachments == (("c0ffee01", "eth0"),)
    assert status.command == "STATUS"


@both_plugins
def test_status_error_from_the_handler(agent):
    agent.handler.status_error = CniError(codes.PLUGIN_NOT_AVAILABLE, "etcd unreachable", "10.0.0.1:2379")
    code, out, _ = run_plugin("STATUS", {**CONF, "cniVersion": "1.1.0"}, socket_path=agent.path)
    assert code == 1 and out["code"] == codes.PLUGIN_NOT_AVAILABLE and out["msg"] == "etcd unreachable"


@both_plugins
def test_one_log_line_per_request(agent, caplog):
    with caplog.at_level(logging.INFO, logger="leengine.cni_agent"):
        run_plugin("ADD", socket_path=agent.path)
        run_plugin("ADD", socket_path=agent.path, CNI_CONTAINERID="full")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cni ")]
    assert len(lines) == 2
    assert lines[0].startswith("cni ADD container=c0ffee01 ifname=eth0 ok ") and lines[0].endswith("ms")
    assert lines[1].startswith("cni ADD container=full ifname=eth0 error 100 ")


# --- (c) the server's own guarantees ------------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_dir_it_created(sock_dir):
    path = os.path.join(sock_dir, "run", "leengine", "cni.sock")
    with AgentThread(path, RecordingHandler()):
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert os.listdir(os.path.dirname(path)) == ["cni.sock"]  # no temporary name left behind
    assert not os.path.exists(path)  # removed on close


@both_plugins
def test_stale_socket_is_replaced(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with AgentThread(path, RecordingHandler()):
        assert run_plugin("ADD", socket_path=path)[0] == 0


@both_plugins
def test_live_socket_is_never_stolen(agent):
    with pytest.raises(AgentAlreadyRunning), AgentThread(agent.path, RecordingHandler()):
        pass
    assert run_plugin("ADD", socket_path=agent.path)[0] == 0  # the first agent still answers


def test_a_path_that_is_not_a_socket_is_left_alone(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    Path(path).write_text("precious")
    with pytest.raises(FileExistsError), AgentThread(path, RecordingHandler()):
        pass
    assert Path(path).read_text() == "precious"


def raw_exchange(path: str, payload: bytes, wait: float = 0.0) -> tuple[int, str]:
    """(exit code, stdout) as the agent answers ``payload``: the code, "\\n", stdout until the agent closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)  # an agent that did not close after its answer fails here
        s.connect(path)
        s.sendall(payload)
        time.sleep(wait)
        answer = read_all(s)
    head, newline, out = answer.partition(b"\n")
    assert newline and head.isdigit(), answer
    return int(head), out.decode("utf-8")


def test_server_answers_exit_code_newline_then_stdout_and_closes(agent):
    request = {"env": {**ENV, "CNI_COMMAND": "ADD"}, "stdin": json.dumps(CONF)}
    code, out = raw_exchange(agent.path, json.dumps(request).encode() + b"\n")
    assert code == 0 and json.loads(out)["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}]
    request["env"]["CNI_COMMAND"] = "DEL"
    assert raw_exchange(agent.path, json.dumps(request).encode() + b"\n") == (0, "")
    request["env"]["CNI_CONTAINERID"] = "full"
    request["env"]["CNI_COMMAND"] = "ADD"
    code, out = raw_exchange(agent.path, json.dumps(request).encode() + b"\n")
    assert code == 1 and json.loads(out)["code"] == codes.POOL_EXHAUSTED


def test_oversized_request_is_refused(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    with AgentThread(path, RecordingHandler(), max_request_bytes=1024):
        code, out = raw_exchange(path, b'{"env": {}, "stdin": "' + b"x" * 4000 + b'"}\n')
    assert code == 1 and json.loads(out)["code"] == codes.IO_FAILURE


def test_request_that_never_completes_is_refused_after_the_read_timeout(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    with AgentThread(path, RecordingHandler(), read_timeout=0.2):
        code, out = raw_exchange(path, b'{"env": {"CNI_COMMAND": "ADD"}')  # no newline, ever
    error = json.loads(out)
    assert code == 1 and error["code"] == codes.IO_FAILURE and "in time" in error["msg"]


@pytest.mark.parametrize("payload", [b"hello\n", b'{"env": [], "stdin": ""}\n', b'{"env": {"A": 1}, "stdin": ""}\n',
                                     b'{"stdin": ""}\n'])
def test_malformed_envelope_is_refused(agent, payload):
    code, out = raw_exchange(agent.path, payload)
    assert code == 1 and json.loads(out)["code"] == codes.IO_FAILURE
    assert agent.handler.requests == []


@both_plugins
def test_concurrency_is_bounded(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    handler = RecordingHandler(slow_seconds=0.3)
    with AgentThread(path, handler, max_concurrency=2), ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(lambda i: run_plugin("ADD", socket_path=path, CNI_CONTAINERID="slow",
                                                  CNI_IFNAME=f"eth{i}"), range(6)))
    assert [code for code, _, _ in runs] == [0] * 6
    assert handler.max_in_flight == 2 and len(handler.requests) == 6


@both_plugins
def test_graceful_close_finishes_requests_in_flight_and_refuses_new_ones(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")
    handler = RecordingHandler(slow_seconds=1.0)
    with AgentThread(path, handler) as running, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(run_plugin, "ADD", socket_path=path, CNI_CONTAINERID="slow")
        deadline = time.monotonic() + 10
        while not handler.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        closing = running.close()
        time.sleep(0.2)
        late = run_plugin("ADD", socket_path=path)  # after close began: nobody accepts it
        code, out, _ = in_flight.result(30)
        closing.result(30)
    assert code == 0 and out["ips"][0]["address"] == "10.1.0.5/24"
    assert late[0] == 1 and late[1]["code"] == codes.TRY_AGAIN_LATER
    assert not os.path.exists(path)


@both_plugins
def test_serve_runs_until_stopped(sock_dir):
    path = os.path.join(sock_dir, "cni.sock")

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(serve(path, RecordingHandler(), stop=stop))
        for _ in range(200):
            if os.path.exists(path):
                break
            await asyncio.sleep(0.01)
        code, out, _ = await asyncio.to_thread(run_plugin, "ADD", socket_path=path)
        stop.set()
        await task
        return code, out

    code, out = asyncio.run(main())
    assert code == 0 and out["ips"]
    assert not os.path.exists(path)


@both_plugins
def test_serve_stops_on_sigterm(sock_dir):
    # In a child process, as the daemon runs: SIGTERM ⇒ clean exit, socket removed.
    path = os.path.join(sock_dir, "cni.sock")
    script = (
        "import asyncio, sys\n"
        "from leengine.cni_agent_server import serve\n"
        "class H:\n"
        "    async def add(self, r): return {'ips': []}\n"
        "    async def delete(self, r): pass\n"
        "    async def check(self, r): pass\n"
        "    async def gc(self, r): pass\n"
        "    async def status(self, r): pass\n"
        f"asyncio.run(serve({path!r}, H()))\n"
        "print('clean exit')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run_plugin("STATUS", {**CONF, "cniVersion": "1.1.0"}, socket_path=path)[0] == 0
        child.terminate()
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err.decode()
    assert out.decode().strip() == "clean exit"
    assert not os.path.exists(path)
