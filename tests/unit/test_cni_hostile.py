"""Hostile CNI invocations (issue 9): every one ends in the spec's error object with a spec code, never a traceback.

Regression tests for what an adversarial review broke (deep nesting, unbounded
timeouts, malformed ``prevResult``, ``CNI_IFNAME`` counted in characters, an
oversized configuration answered "try again later", stdin read without a bound),
then hypothesis property tests that drive the agent's parser (``cni/spec.py``), the
agent server's envelope decoding and the installed plugin with generated input. Every test
that execs the plugin runs both, the compiled Go one and the Python one (``both_plugins``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cni import request as codes
from cni.request import CniError, CniRequest
from cni.spec import error_version, format_error, parse_invocation
from leengine import cni_agent_server
from tests.unit.test_cni_plugin import (  # plugin_kind: the fixture both_plugins runs each test with (Go, Python)
    CONF,
    AgentThread,
    RecordingHandler,
    both_plugins,
    installed_plugin,
    plugin_env,
    plugin_kind,  # noqa: F401
    run_plugin,
)

# What an invocation's own fault may earn: version, env, decoding, configuration.
PARSE_CODES = {codes.INCOMPATIBLE_VERSION, codes.INVALID_ENV, codes.DECODE_FAILURE, codes.INVALID_CONFIG}
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 103}  # 102 is never sent (etcd away is 11)
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee01", "CNI_NETNS": "/var/run/netns/pod1", "CNI_IFNAME": "eth0"}
MIB = 1 << 20


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def spec_error(env: dict[str, str], stdin: str) -> CniError:
    with pytest.raises(CniError) as info:
        parse_invocation(env, stdin)
    return info.value


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


# --- deep nesting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_config_is_a_decode_failure_in_the_parser(depth):
    stdin = '{"cniVersion": "1.0.0", "name": "n", "type": "t", "x": ' + nested(depth) + "}"
    err = spec_error(ENV, stdin)
    assert err.code == codes.DECODE_FAILURE and "nested more than 64 levels" in err.details
    assert error_version(stdin) in ("1.0.0", "1.1.0")  # never raises


@both_plugins
@pytest.mark.parametrize("key", ["x", "agentTimeout"])  # agentTimeout: the plugin parses the text itself
def test_deeply_nested_config_gets_an_error_object_through_plugin_and_agent(agent, key):
    stdin = '{"cniVersion": "1.0.0", "name": "n", "type": "t", "' + key + '": ' + nested(100_000) + "}"
    code, out, err = run_plugin("ADD", stdin, socket_path=agent.path)
    assert code == 1 and out["code"] == codes.DECODE_FAILURE and "nested" in out["details"], (out, err)
    assert "Traceback" not in err and agent.handler.requests == []


def test_deeply_nested_envelope_is_answered_not_dropped(agent):
    from tests.unit.test_cni_plugin import raw_exchange

    code, out = raw_exchange(agent.path, b'{"env": ' + nested(100_000).encode() + b', "stdin": ""}\n')
    assert code == 1 and json.loads(out)["code"] == codes.IO_FAILURE


# --- timeouts --------------------------------------------------------------------------------------------------------


@both_plugins
@pytest.mark.parametrize("value", ["inf", "1e10", "nan", "-1", "0", "abc", "301"])
def test_out_of_range_timeout_variable_is_refused_naming_it(sock_dir, value):
    started = time.monotonic()
    code, out, err = run_plugin("ADD", socket_path=os.path.join(sock_dir, "none.sock"), LEENGINE_CNI_TIMEOUT=value)
    assert code == 1 and out["code"] == codes.INVALID_ENV and "LEENGINE_CNI_TIMEOUT" in out["msg"], (out, err)
    assert "Traceback" not in err and time.monotonic() - started < 10


@both_plugins
@pytest.mark.parametrize("value", [1e10, 1e300, 301, "30", 0, -5, True])
def test_out_of_range_agent_timeout_is_refused_naming_the_field(agent, value):
    code, out, err = run_plugin("ADD", {**CONF, "agentTimeout": value}, socket_path=agent.path)
    assert code == 1 and out["code"] == codes.INVALID_CONFIG and "agentTimeout" in out["msg"], (out, err)
    assert "Traceback" not in err


@both_plugins
def test_agent_timeout_at_the_bound_is_used(agent):
    code, out, _err = run_plugin("ADD", {**CONF, "agentTimeout": 300}, socket_path=agent.path)
    assert code == 0 and out["ips"][0]["address"] == "10.1.0.5/24"


def test_plugin_and_parser_share_their_bounds():
    from cni import spec
    from leengine import cni_plugin

    assert cni_plugin.TIMEOUT_MAX == spec.AGENT_TIMEOUT_MAX == 300
    assert cni_plugin.MAX_STDIN == spec.MAX_CONFIG_BYTES == MIB
    # 1 MiB of configuration escaped 6x (control characters) plus the CNI_* variables must fit one request line.
    assert 6 * cni_plugin.MAX_STDIN + 6 * cni_plugin.MAX_ENV + 1024 < cni_agent_server.MAX_REQUEST_BYTES


# --- CHECK -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prev", [{"ips": "10.0.0.1/24"}, {"ips": [1]}, {"ips": [{"address": 5}]},
                                  {"ips": [{"address": "not-an-ip"}]}, {"ips": [{"address": "10.0.0.1"}]},
                                  {"interfaces": {"a": 1}}, {"routes": [None]}])
def test_check_with_a_malformed_prev_result_is_invalid_config(prev):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "t", "prevResult": prev}
    err = spec_error({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps(conf))
    assert err.code == codes.INVALID_CONFIG and "prevResult" in err.msg


def test_check_with_a_well_formed_prev_result_parses():
    prev = {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.5/24", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}]}
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "t", "prevResult": prev}
    assert parse_invocation({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps(conf)).prev_result == prev


# --- CNI_IFNAME ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ifname", ["é" * 8, "eth\x01", "eth\x7f", "e\u200bx", "eth0\udcff", "a" * 14 + "é"])
def test_ifname_is_limited_in_bytes_and_refuses_control_characters(ifname):
    err = spec_error({**ENV, "CNI_IFNAME": ifname}, json.dumps(CONF))
    assert err.code == codes.INVALID_ENV and "CNI_IFNAME" in err.msg


@pytest.mark.parametrize("ifname", ["é" * 7, "a" * 13 + "é", "eth0"])
def test_ifname_of_15_bytes_or_fewer_is_accepted(ifname):
    assert parse_invocation({**ENV, "CNI_IFNAME": ifname}, json.dumps(CONF)).ifname == ifname


@pytest.mark.parametrize("variable", ["CNI_ARGS", "CNI_NETNS", "CNI_PATH"])
def test_non_utf8_variables_are_invalid_env(variable):
    value = "K8S_POD_NAME=\udcff" if variable == "CNI_ARGS" else "/var/run/netns/\udcff"
    err = spec_error({**ENV, variable: value}, json.dumps(CONF))
    assert err.code == codes.INVALID_ENV and variable in err.msg


@both_plugins
def test_non_utf8_ifname_from_the_runtime_gets_an_error_object(agent):
    env = plugin_env("ADD")
    env["LEENGINE_CNI_SOCKET"] = agent.path
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    env_bytes[b"CNI_IFNAME"] = b"eth\xff"
    run = subprocess.run([installed_plugin()], input=json.dumps(CONF).encode(), env=env_bytes, capture_output=True,
                         timeout=60, check=False)
    out = json.loads(run.stdout)
    assert run.returncode == 1 and out["code"] == codes.INVALID_ENV and "CNI_IFNAME" in out["msg"]
    assert agent.handler.requests == []


# --- size of stdin ---------------------------------------------------------------------------------------------------


@both_plugins
def test_config_over_1_mib_is_a_permanent_invalid_config(agent):
    conf = json.dumps({**CONF, "pad": "x" * (MIB + 10)})
    code, out, err = run_plugin("ADD", conf, socket_path=agent.path)
    assert code == 1 and out["code"] == codes.INVALID_CONFIG and "too large" in out["msg"], (out, err)
    assert agent.handler.requests == []


@both_plugins
def test_config_just_under_1_mib_reaches_the_agent_even_when_escaping_grows_it(agent):
    # Raw control characters are escaped 6x on the wire (~6 MiB): the agent must read it and judge it itself.
    head = '{"cniVersion": "1.0.0", "name": "lenet", "type": "leengine-cni", "pad": "'
    conf = head + "\x01" * (MIB - len(head) - 2) + '"}'
    assert len(conf.encode()) == MIB
    code, out, err = run_plugin("ADD", conf, socket_path=agent.path)
    assert code == 1 and out["code"] == codes.DECODE_FAILURE, (out, err)  # JSON forbids raw control characters


def test_parser_refuses_a_config_over_1_mib():
    err = spec_error(ENV, json.dumps({**CONF, "pad": "é" * (MIB // 2 + 1)}))  # fewer characters than bytes
    assert err.code == codes.INVALID_CONFIG and "too large" in err.msg


@both_plugins
def test_plugin_reads_at_most_1_mib_of_stdin(sock_dir):
    """A runtime that keeps writing: the plugin stops reading after 1 MiB + 1 and refuses, it does not slurp 64 MiB."""
    proc = subprocess.Popen([installed_plugin()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**plugin_env("ADD"),
                                                         "LEENGINE_CNI_SOCKET": os.path.join(sock_dir, "none")})
    written = 0
    chunk = b" " * 65536

    def writer() -> None:
        nonlocal written
        try:
            while written < 64 * MIB:
                proc.stdin.write(chunk)
                written += len(chunk)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    stdout = proc.stdout.read()
    proc.wait(30)
    thread.join(30)
    out = json.loads(stdout)
    assert proc.returncode == 1 and out["code"] == codes.INVALID_CONFIG and "too large" in out["msg"]
    assert written < 4 * MIB  # the pipe broke soon after the first MiB


# --- property tests --------------------------------------------------------------------------------------------------

_HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "eth0", "é" * 8, "\udcff", "a\x01b", "../x", "a" * 300, "٨٠", "1e400", "inf", "nan",
                     "/var/run/netns/p", "K8S_POD_NAME=x;K8S_POD_NAME=y", "=;=", "ADD", "DEL", "CHECK", "GC"]),
)
_NUMBERS = st.one_of(st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([10**4000, -(10**4000), 1e308, 5e-324, 0, -0.0]))
_JSON = st.recursive(st.none() | st.booleans() | _NUMBERS | _HOSTILE_TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_HOSTILE_TEXT, inner, max_size=4),
                     max_leaves=12)
_FIELDS = ["cniVersion", "name", "type", "bridge", "pools", "mtu", "gratuitousArp", "agentSocket", "agentTimeout",
           "prevResult", "cni.dev/valid-attachments", "cni.dev/attachments", "ipam", "args"]


@st.composite
def _configs(draw: Any) -> str:
    conf: dict[str, Any] = {"cniVersion": draw(st.sampled_from(["1.0.0", "1.1.0", "0.4.0", ""])),
                            "name": "lenet", "type": "leengine-cni"}
    for key in draw(st.lists(st.sampled_from(_FIELDS), max_size=4)):
        conf[key] = draw(_JSON)
    text = json.dumps(conf)
    if draw(st.booleans()):  # spliced in as text: building it as an object would hit the recursion limit here
        text = f'{text[:-1]}, "{draw(st.sampled_from(_FIELDS))}": {nested(draw(st.integers(1, 3000)))}}}'
    return draw(st.sampled_from([text, text[: len(text) // 2], text.replace("[", "[" * 5)]))


_STDIN = st.one_of(_configs(), st.text(max_size=200), st.just(nested(50_000)),
                   st.builds(lambda d: '{"cniVersion": "1.1.0", "name": "n", "type": "t", "a": ' + nested(d) + "}",
                             st.integers(1, 200_000)))
_ENV_KEYS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_OTHER"]
_ENV = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries({"CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "", "BOGUS"])}),
    st.dictionaries(st.sampled_from(_ENV_KEYS), _HOSTILE_TEXT, max_size=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=_ENV, stdin=_STDIN)
def test_property_the_parser_answers_a_spec_error_or_a_request(env, stdin):
    started = time.monotonic()
    try:
        request = parse_invocation(env, stdin)
    except CniError as err:
        assert err.code in PARSE_CODES, err
        assert len(err.msg) + len(err.details) < 1000  # hostile values are cut, never echoed whole
        error = json.loads(format_error(err, error_version(stdin)))
        assert error["code"] == err.code and isinstance(error["cniVersion"], str)
    else:
        assert isinstance(request, CniRequest) and request.command in ("ADD", "DEL", "CHECK", "GC", "STATUS")
        json.dumps(request.network)  # what reached the handler is re-encodable (nesting bounded)
    assert time.monotonic() - started < 2


@settings(max_examples=200, deadline=None)
@given(line=st.one_of(st.binary(max_size=200), st.builds(lambda d: b'{"env": ' + nested(d).encode() + b'}',
                                                          st.integers(1, 100_000)),
                      st.builds(lambda env, stdin: json.dumps({"env": env, "stdin": stdin}).encode(), _ENV, _STDIN)))
def test_property_the_agent_server_answers_every_line(line):
    env, stdin, answer = cni_agent_server._decode_envelope(line)

    class Handler(RecordingHandler):
        async def _enter(self, request: CniRequest) -> None:
            self.requests.append(request)

    if answer is None:
        answer = asyncio.run(cni_agent_server.Server("/nonexistent", Handler())._dispatch(env, stdin))
    assert answer["exit"] in (0, 1)
    if answer["exit"] == 1:
        assert json.loads(answer["stdout"])["code"] in PARSE_CODES | {codes.IO_FAILURE}


_PLUGIN_ENV_TEXT = st.one_of(
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30),
    st.binary(max_size=20).filter(lambda b: b"\x00" not in b).map(os.fsdecode),
    st.sampled_from(["eth0", "é" * 8, "a\x01b", "inf", "1e10", "nan", "-1", "abc", "0.5"]),
)


@both_plugins
def test_property_the_installed_plugin_prints_a_spec_error_object_never_a_traceback(sock_dir, caplog):
    handler = RecordingHandler()
    with AgentThread(os.path.join(sock_dir, "cni.sock"), handler) as running, caplog.at_level(logging.ERROR):

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(env=_ENV, stdin=st.one_of(_STDIN.map(str.encode), st.binary(max_size=100)),
               ifname=_PLUGIN_ENV_TEXT, timeout=st.one_of(st.none(), _PLUGIN_ENV_TEXT))
        def check(env: dict[str, str], stdin: bytes, ifname: str, timeout: str | None) -> None:
            assume(env.get("CNI_CONTAINERID") not in ("boom", "full", "slow"))
            full = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "LEENGINE_CNI_"))}
            full.update({k: v for k, v in env.items() if "\x00" not in v})
            full["CNI_IFNAME"] = ifname
            full["LEENGINE_CNI_SOCKET"] = running.server.socket_path
            if timeout is not None:
                full["LEENGINE_CNI_TIMEOUT"] = timeout
            try:
                encoded = {os.fsencode(k): os.fsencode(v) for k, v in full.items()}
            except UnicodeEncodeError:
                assume(False)
            run = subprocess.run([installed_plugin()], input=stdin, env=encoded, capture_output=True, timeout=30,
                                 check=False)
            assert b"Traceback" not in run.stderr, run.stderr
            assert run.returncode in (0, 1)
            if run.returncode == 1:
                error = json.loads(run.stdout)
                assert error["code"] in SPEC_CODES and isinstance(error["msg"], str)
                assert error["code"] != codes.TRY_AGAIN_LATER, error  # the agent is up: nothing is "later"

        check()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("leengine")] == []
