"""``leengine-cni`` driven by libcni, as containerd and CRI-O drive plugins, alone and chained with Debian's plugins.

``build/cnitool`` (``scripts/build-cnitool.sh``) is a small driver over Debian's libcni
1.1.2: loading the conflist, executing each plugin, passing ``prevResult`` along the
chain, caching the result for CHECK and DEL, and parsing error objects are all
libcni's own code. libcni 1.1.2 speaks CNI spec up to 1.0.0, so these tests use
1.0.0; GC and STATUS (1.1.0) are covered by the unit tests only.

Each test makes two network namespaces: a "host" (the runtime's and the plugins'
netns, where bridges, veth host ends and iptables rules go) and a "pod". Nothing
touches the machine's own network namespace; both are deleted afterwards.
Needs root; without it the tests fail with the reason, they never skip.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cni.request import POOL_EXHAUSTED, TRY_AGAIN_LATER, CniRequest
from leengine.cni_install import install_go_plugin, install_plugin
from tests.unit.test_cni_plugin import PLUGIN_KINDS, AgentThread, RecordingHandler

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PLUGINS = "/usr/lib/cni"
_names = itertools.count()


@pytest.fixture(scope="session")
def cnitool() -> str:
    # ./test.sh builds it first; building here too keeps `pytest tests/integration` self-contained.
    subprocess.run([str(ROOT / "scripts" / "build-cnitool.sh")], check=True, timeout=600)
    return str(ROOT / "build" / "cnitool")


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="lecni-", dir="/tmp")  # short: it holds the agent's unix socket
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def netns():
    """Factory of fresh, uniquely named network namespaces, all deleted afterwards."""
    assert os.geteuid() == 0, "these tests create network namespaces: run them as root"
    made: list[str] = []

    def make(role: str) -> str:
        name = f"lecni-{os.getpid()}-{next(_names)}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def run_cnitool(cnitool: str, host: str, command: str, network: str, pod: str, *, confdir: Path, cni_path: str,
                cache: Path, **env: str) -> subprocess.CompletedProcess:
    """cnitool inside the host netns, as a runtime runs plugins from its own netns."""
    full_env = {"PATH": os.environ["PATH"], "NETCONFPATH": str(confdir), "CNI_PATH": cni_path,
                "CNI_CACHE_DIR": str(cache), **env}
    return subprocess.run(["ip", "netns", "exec", host, cnitool, command, network, ns_path(pod)],
                          env=full_env, capture_output=True, text=True, timeout=120, check=False)


def link(ns: str, ifname: str) -> dict[str, Any] | None:
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", ifname], capture_output=True, text=True,
                         check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 and out.stdout.strip() else None


def addresses(info: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", []) if a.get("family") == "inet"]


def write_conflist(confdir: Path, conflist: dict[str, Any]) -> None:
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / f"10-{conflist['name']}.conflist").write_text(json.dumps(conflist, indent=2))


# --- cnitool itself, with Debian's reference plugins --------------------------------------------------------------


def test_cnitool_runs_bridge_host_local_and_tuning(cnitool, netns, workdir):
    host, pod = netns("host"), netns("pod")
    conflist = {
        "cniVersion": "1.0.0",
        "name": "lecni-br",
        "plugins": [
            {"type": "bridge", "bridge": "lecnibr0", "isGateway": True,
             "ipam": {"type": "host-local", "subnet": "10.123.0.0/24", "dataDir": str(workdir / "ipam"),
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "tuning", "mtu": 1400, "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
             "dataDir": str(workdir / "tuning")},
        ],
    }
    write_conflist(workdir / "net.d", conflist)
    kw = {"confdir": workdir / "net.d", "cni_path": REFERENCE_PLUGINS, "cache": workdir / "cache"}

    add = run_cnitool(cnitool, host, "add", "lecni-br", pod, **kw)
    assert add.returncode == 0, add.stderr + add.stdout
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.0.0"
    (ip,) = result["ips"]
    assert ip["address"].startswith("10.123.0.") and ip["address"].endswith("/24")
    assert ip["gateway"] == "10.123.0.1"

    eth0 = link(pod, "eth0")
    assert eth0 is not None and addresses(eth0) == [ip["address"]]
    assert eth0["mtu"] == 1400  # tuning acted on the interface bridge made: it read bridge's prevResult
    sysctl = subprocess.run(["ip", "netns", "exec", pod, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"],
                            capture_output=True, text=True, check=True)
    assert sysctl.stdout.strip() == "1"
    assert addresses(link(host, "lecnibr0")) == ["10.123.0.1/24"]
    ping = subprocess.run(["ip", "netns", "exec", host, "ping", "-c", "1", "-W", "2", ip["address"].split("/")[0]],
                          capture_output=True, text=True, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    check = run_cnitool(cnitool, host, "check", "lecni-br", pod, **kw)
    assert check.returncode == 0, check.stderr + check.stdout
    delete = run_cnitool(cnitool, host, "del", "lecni-br", pod, **kw)
    assert delete.returncode == 0, delete.stderr + delete.stdout
    assert link(pod, "eth0") is None
    assert not (workdir / "ipam" / "lecni-br" / ip["address"].split("/")[0]).exists()  # host-local released it


# --- leengine-cni through libcni, chained with tuning and portmap ---------------------------------------------------


class VethHandler(RecordingHandler):
    """The recording handler, plus a real veth so the chained plugins have an interface to act on."""

    def __init__(self, host_ns: str) -> None:
        super().__init__()
        self.host_ns = host_ns

    def host_end(self, request: CniRequest) -> str:
        return f"lh{request.container_id[-8:]}"

    async def add(self, request: CniRequest) -> dict[str, Any]:
        result = await super().add(request)
        pod = os.path.basename(request.netns)
        host_end = self.host_end(request)
        await ip("-n", self.host_ns, "link", "add", host_end, "type", "veth", "peer", "name", request.ifname,
                 "netns", pod)
        await ip("-n", self.host_ns, "addr", "add", "10.124.0.1/24", "dev", host_end)
        await ip("-n", self.host_ns, "link", "set", host_end, "up")
        await ip("-n", pod, "addr", "add", "10.124.0.5/24", "dev", request.ifname)
        await ip("-n", pod, "link", "set", request.ifname, "up")
        mac = json.loads(await ip("-n", pod, "-j", "link", "show", "dev", request.ifname))[0]["address"]
        result["interfaces"] = [{"name": host_end}, {"name": request.ifname, "mac": mac, "sandbox": request.netns}]
        result["ips"] = [{"address": "10.124.0.5/24", "gateway": "10.124.0.1", "interface": 1}]
        return result

    async def delete(self, request: CniRequest) -> None:
        await super().delete(request)
        # Idempotent: the veth may already be gone (with its netns, or after an earlier DEL).
        await ip("-n", self.host_ns, "link", "del", self.host_end(request), check=False)


async def ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


@pytest.fixture(params=PLUGIN_KINDS)
def chained(request, cnitool, netns, workdir):
    """Factory: a conflist leengine-cni → tuning (→ portmap), a test agent behind the socket, two namespaces; once
    with each plugin (the compiled Go one, the Python one)."""
    agents: list[AgentThread] = []

    def make(portmap: bool) -> SimpleNamespace:
        host, pod = netns("host"), netns("pod")
        bindir = workdir / "bin"
        bindir.mkdir(exist_ok=True)
        # What `leengine install-cni` writes (Go where it builds, else Python): libcni execs it.
        (install_go_plugin if request.param == "go" else install_plugin)(bindir)
        sock = str(workdir / "cni.sock")
        plugins: list[dict[str, Any]] = [
            {"type": "leengine-cni", "agentSocket": sock, "pools": ["web-a"], "bridge": "br-pods"},
            {"type": "tuning", "mac": "02:42:0a:7c:00:05", "mtu": 1300, "dataDir": str(workdir / "tuning")},
        ]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": False})
        write_conflist(workdir / "net.d", {"cniVersion": "1.0.0", "name": "lecni-le", "plugins": plugins})
        handler = VethHandler(host)

        def run(command: str, **env: str) -> subprocess.CompletedProcess:
            env = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
                   "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 18080, "containerPort": 80,
                                                             "protocol": "tcp"}]}),
                   "CNI_CONTAINERID": "pod0c0ffee", **env}
            return run_cnitool(cnitool, host, command, "lecni-le", pod, confdir=workdir / "net.d",
                               cni_path=f"{bindir}:{REFERENCE_PLUGINS}", cache=workdir / "cache", **env)

        agent = AgentThread(sock, handler).__enter__()
        agents.append(agent)
        return SimpleNamespace(host=host, pod=pod, sock=sock, handler=handler, run=run)

    yield make
    for agent in agents:
        agent.__exit__(None, None, None)


def nat_rules(host: str) -> str:
    return subprocess.run(["ip", "netns", "exec", host, "iptables", "-t", "nat", "-S"], capture_output=True,
                          text=True, check=True).stdout


def test_leengine_cni_chained_with_tuning_and_portmap_via_libcni(chained):
    chain = chained(portmap=True)
    add = chain.run("add")
    assert add.returncode == 0, add.stderr + add.stdout
    result = json.loads(add.stdout)

    # Our ADD saw what the runtime passed.
    (add_req,) = chain.handler.requests
    assert (add_req.command, add_req.cni_version, add_req.network_name) == ("ADD", "1.0.0", "lecni-le")
    assert (add_req.container_id, add_req.ifname, add_req.netns) == ("pod0c0ffee", "eth0", ns_path(chain.pod))
    assert add_req.args["K8S_POD_NAME"] == "web-0" and add_req.prev_result is None  # first in the chain

    # libcni's final result is ours as tuning and portmap passed it on: our ips, our interfaces, and tuning's
    # change to the interface our result names (it found it by name and sandbox in its prevResult).
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"] == [{"address": "10.124.0.5/24", "gateway": "10.124.0.1", "interface": 1}]
    assert [i["name"] for i in result["interfaces"]] == ["lhd0c0ffee", "eth0"]
    assert result["interfaces"][1] == {"name": "eth0", "mac": "02:42:0a:7c:00:05", "sandbox": ns_path(chain.pod)}
    eth0 = link(chain.pod, "eth0")
    assert eth0["address"] == "02:42:0a:7c:00:05" and eth0["mtu"] == 1300
    # portmap took the container address from its prevResult.
    assert "--to-destination 10.124.0.5:80" in nat_rules(chain.host)

    # No CHECK here: Debian's portmap 1.1.1 fails CHECK for any IPv4-only pod (it looks for an IPv6 DNAT
    # chain it never made: containernetworking/plugins#819); the next test checks without portmap.
    delete = chain.run("del")
    assert delete.returncode == 0, delete.stderr + delete.stdout
    del_req = chain.handler.requests[1]
    # DEL gets libcni's cached final result, tuning's mac included, as prevResult.
    assert del_req.command == "DEL" and del_req.prev_result == result
    assert "10.124.0.5" not in nat_rules(chain.host)
    assert link(chain.pod, "eth0") is None

    again = chain.run("del")  # DEL is idempotent through the whole chain
    assert again.returncode == 0, again.stderr + again.stdout
    assert [r.command for r in chain.handler.requests] == ["ADD", "DEL", "DEL"]


def test_check_through_libcni_gets_the_final_result_as_prev_result(chained):
    chain = chained(portmap=False)
    add = chain.run("add")
    assert add.returncode == 0, add.stderr + add.stdout
    check = chain.run("check")
    assert check.returncode == 0, check.stderr + check.stdout  # tuning's CHECK found its mac and mtu too
    check_req = chain.handler.requests[1]
    assert check_req.command == "CHECK" and check_req.prev_result == json.loads(add.stdout)
    assert check_req.prev_result["interfaces"][1]["mac"] == "02:42:0a:7c:00:05"
    delete = chain.run("del")
    assert delete.returncode == 0, delete.stderr + delete.stdout


def test_agent_error_codes_reach_the_runtime_through_libcni(chained):
    add = chained(portmap=False).run("add", CNI_CONTAINERID="full")
    assert add.returncode == 1
    error = json.loads(add.stdout.splitlines()[0])
    assert error["code"] == POOL_EXHAUSTED and error["msg"] == "no free address"
    assert error["details"] == "pool web-a is full"


def test_agent_down_is_try_again_later_through_libcni(chained):
    chain = chained(portmap=False)
    os.unlink(chain.sock)  # the agent still runs but cannot be reached: as if it had not started yet
    add = chain.run("add")
    assert add.returncode == 1
    assert json.loads(add.stdout.splitlines()[0])["code"] == TRY_AGAIN_LATER
    assert chain.handler.requests == []
