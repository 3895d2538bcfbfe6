"""Pod networking end to end: the real ``leengine-cni`` executed as a runtime does, two node agents
(``leengine-cni-agent`` processes), a real etcd, real Open vSwitch and network namespaces.

Topology: node bridges ``…n1`` and ``…n2`` (datapath netdev) joined by a trunk bridge;
two pools, VLAN 100 and VLAN 200, in the benchmarking range 198.18.0.0/15. Pods are
network namespaces made here; traffic goes only to their addresses, in bounded pings.
Everything made (namespaces, bridges, ports, etcd keys, agents) is removed by the
fixtures, also when a test fails. Needs root, etcd and Open vSwitch; never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cni.pools import BLOCKS, HANDLES, Block
from foundation.adapters.ovs_dataplane import OvsDataplane
from foundation.ports.dataplane import host_ifname
from lab.kube_mock import KubeApiMock
from lab.processes import stop_child
from leengine.cni_install import install_go_plugin, install_plugin
from leengine.etcd_options import open_store

TOKEN = f"{(os.getpid() + 7) % 0x10000:04x}"
NODES = {"node-1": f"le{TOKEN}n1", "node-2": f"le{TOKEN}n2"}
TRUNK = f"le{TOKEN}tr"
BIN = Path(sys.executable).parent
POOLS = {"red": ("198.18.100.0/24", 100), "blue": ("198.18.200.0/24", 200)}
_ids = itertools.count()


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Agent:
    """One ``leengine-cni-agent`` process for a node."""

    def __init__(self, node: str, etcd, ovsdb: str, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.node, self.etcd, self.ovsdb = node, etcd, ovsdb  # etcd: the session's server (TLS, client certs)
        self.extra = extra  # more options (test_metrics_scrape: --metrics-address)
        self.socket = str(workdir / f"{node}.sock")
        self.log = workdir / f"{node}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # a killed agent leaves its socket; the new one would replace it anyway
        self.proc = subprocess.Popen(
            [str(BIN / "leengine-cni-agent"), "--node", self.node, "--etcd", self.etcd.endpoint,
             *self.etcd.client_args, "--socket", self.socket,
             "--ovsdb", self.ovsdb, "--bridge", NODES[self.node], "--cooldown", "30", *self.extra],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, f"agent died:\n{self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"agent did not open its socket:\n{self.log.read_text()[-2000:]}"
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)


class Lab:
    def __init__(self, etcd_server, ovs_server, workdir: Path, plugin_kind: str) -> None:
        self.etcd = etcd_server
        self.ovs = ovs_server
        self.workdir = workdir
        self.agents = {node: Agent(node, etcd_server, ovs_server.db, workdir) for node in NODES}
        self.netns: list[str] = []
        self.kube = KubeApiMock()
        (workdir / "bin").mkdir()
        # What an operator installs into the runtime's CNI dir: the Go plugin where it builds, else the Python one.
        self.plugin = (install_go_plugin if plugin_kind == "go" else install_plugin)(workdir / "bin")

    def pod(self) -> str:
        name = f"le{TOKEN}p{next(_ids)}"
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def cni(self, command: str, node: str, container: str, netns: str | None, *, pools=("red",),
            pod_name: str = "", prev_result: dict | None = None, version: str = "1.0.0",
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Execute the plugin exactly as a container runtime does: CNI_* environment + config on stdin."""
        conf = {"cniVersion": version, "name": "leengine", "type": "leengine-cni", "bridge": NODES[node],
                "pools": list(pools)}
        if prev_result is not None:
            conf["prevResult"] = prev_result
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0",
               "LEENGINE_CNI_SOCKET": self.agents[node].socket,  # one agent per node; the runtime's env says which
               "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod_name or container}"}
        if netns is not None:
            env["CNI_NETNS"] = f"/var/run/netns/{netns}" if not netns.startswith("/") else netns
        return subprocess.run([str(self.plugin)], input=json.dumps(conf), env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def add(self, node: str, container: str, netns: str, **kw) -> dict:
        result = self.cni("ADD", node, container, netns, **kw)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def store(self, fn):
        async def main():
            store = await open_store(self.etcd.endpoint, self.etcd.client_tls)
            try:
                return await fn(store)
            finally:
                await store.close()

        return run(main())

    def handles(self) -> dict[str, str]:
        async def read(store):
            return {kv.key.removeprefix(HANDLES): json.loads(kv.value)["address"]
                    for kv in (await store.range(HANDLES)).kvs}

        return self.store(read)

    def allocated(self) -> list[str]:
        async def read(store):
            return [str(b.address(o)) for b in (Block.from_bytes(kv.value) for kv in (await store.range(BLOCKS)).kvs)
                    for o in b.allocations]

        return self.store(read)

    def port_tag(self, container: str) -> int | None:
        out = sh("ovs-vsctl", f"--db={self.ovs.db}", "get", "Port", host_ifname(container, "eth0"), "tag",
                 check=False)
        return int(out.stdout) if out.returncode == 0 and out.stdout.strip().isdigit() else None

    def ping(self, netns: str, address: str) -> bool:
        return sh("ip", "netns", "exec", netns, "ping", "-c", "2", "-W", "1", "-i", "0.2", address,
                  check=False).returncode == 0


@pytest.fixture(scope="module")
def bridges(ovs_server):
    async def build():
        async with OvsDataplane(ovs_server.db) as dp:
            for bridge in (*NODES.values(), TRUNK):
                await dp.ensure_bridge(bridge)
            for bridge in NODES.values():
                await dp.connect_bridges(bridge, TRUNK)

    async def teardown():
        async with OvsDataplane(ovs_server.db) as dp:
            for bridge in (*NODES.values(), TRUNK):
                await dp.delete_bridge(bridge)

    run(build())
    yield
    run(teardown())


@pytest.fixture(params=["python", "go"])
def lab(request, etcd_server, ovs_server, bridges):
    """Two agents, etcd, OVS; once with each plugin (the compiled Go one, the Python one)."""
    workdir = Path(tempfile.mkdtemp(prefix="lee2e-", dir="/tmp"))
    lab = Lab(etcd_server, ovs_server, workdir, request.param)

    async def reset(store):
        await store.delete("/ipam/", prefix=True)

    lab.store(reset)
    for name, (cidr, vlan) in POOLS.items():
        out = sh(str(BIN / "cnictl"), "--etcd", etcd_server.endpoint, *etcd_server.client_args, "pool", "add", name,
                 "--cidr", cidr, "--vlan", str(vlan))
        assert "added" in out.stdout
    for agent in lab.agents.values():
        agent.start()
    lab.kube.start()
    try:
        yield lab
    finally:
        lab.kube.stop()
        for agent in lab.agents.values():
            agent.stop()
        for netns in lab.netns:
            sh("ip", "netns", "del", netns, check=False)

        async def unplug():  # ports whose DEL never came (the crash tests) go with the test
            async with OvsDataplane(ovs_server.db) as dp:
                for bridge in NODES.values():
                    for port in await dp.ports(bridge):
                        await dp.detach(port.container_id, port.ifname, None)

        run(unplug())
        lab.store(reset)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_pods_on_one_vlan_reach_each_other_across_nodes_and_other_vlans_do_not(lab):
    red1, red2, blue = lab.pod(), lab.pod(), lab.pod()
    r1 = lab.add("node-1", "red-1", red1, pools=("red",))
    r2 = lab.add("node-2", "red-2", red2, pools=("red",))
    b1 = lab.add("node-2", "blue-1", blue, pools=("blue",))
    a_r1, a_r2, a_b1 = (r["ips"][0]["address"].split("/")[0] for r in (r1, r2, b1))
    assert a_r1.startswith("198.18.100.") and a_r2.startswith("198.18.100.") and a_b1.startswith("198.18.200.")
    assert r1["ips"][0]["gateway"] == "198.18.100.1" and r1["interfaces"][1]["sandbox"].endswith(red1)
    assert (lab.port_tag("red-1"), lab.port_tag("red-2"), lab.port_tag("blue-1")) == (100, 100, 200)
    inside = json.loads(sh("ip", "-n", red1, "-j", "addr", "show", "dev", "eth0").stdout)[0]
    assert [f"{a['local']}/{a['prefixlen']}" for a in inside["addr_info"] if a["family"] == "inet"] == [
        r1["ips"][0]["address"]]
    assert lab.ping(red1, a_r2) and lab.ping(red2, a_r1)  # same VLAN, different node bridges
    assert not lab.ping(red1, a_b1)  # different VLAN: isolated even on the flat network
    assert sorted(lab.handles().values()) == sorted([a_r1, a_r2, a_b1])


def test_repeated_add_check_and_idempotent_del(lab):
    pod = lab.pod()
    first = lab.add("node-1", "web-1", pod)
    again = lab.add("node-1", "web-1", pod)
    assert again["ips"] == first["ips"]
    checked = lab.cni("CHECK", "node-1", "web-1", pod, prev_result=first)
    assert checked.returncode == 0, checked.stdout
    sh("ovs-vsctl", f"--db={lab.ovs.db}", "set", "Port", host_ifname("web-1", "eth0"), "tag=999")
    broken = lab.cni("CHECK", "node-1", "web-1", pod, prev_result=first)
    assert broken.returncode == 1 and json.loads(broken.stdout)["code"] == 103 and "999" in broken.stdout
    for _ in range(2):  # DEL twice: the second finds nothing and succeeds
        deleted = lab.cni("DEL", "node-1", "web-1", pod)
        assert deleted.returncode == 0, deleted.stdout
    assert lab.handles() == {} and lab.port_tag("web-1") is None
    sh("ip", "netns", "del", pod)
    gone = lab.cni("DEL", "node-1", "web-1", pod)  # the netns is gone too
    assert gone.returncode == 0, gone.stdout
    no_netns = lab.cni("DEL", "node-1", "web-1", None)  # and the runtime may not even pass one
    assert no_netns.returncode == 0, no_netns.stdout


def test_bad_invocations_get_spec_codes_and_leave_nothing(lab):
    missing = lab.cni("ADD", "node-1", "ghost", "/var/run/netns/does-not-exist")
    assert missing.returncode == 1 and json.loads(missing.stdout)["code"] == 4
    unknown_pool = lab.cni("ADD", "node-1", "ghost", lab.pod(), pools=("green",))
    assert json.loads(unknown_pool.stdout)["code"] == 7 and "green" in unknown_pool.stdout
    no_env = subprocess.run([str(lab.plugin)], input=json.dumps({"cniVersion": "1.0.0", "name": "leengine"}),
                            env={"CNI_COMMAND": "ADD", "LEENGINE_CNI_SOCKET": lab.agents["node-1"].socket},
                            capture_output=True, text=True, timeout=30, check=False)
    assert no_env.returncode == 1 and json.loads(no_env.stdout)["code"] == 4  # the agent names what is missing
    assert "CNI_CONTAINERID" in no_env.stdout
    assert lab.handles() == {} and lab.port_tag("ghost") is None
    assert sh("ip", "link", "show", "dev", host_ifname("ghost", "eth0"), check=False).returncode != 0


def test_a_netns_that_is_not_a_pods_is_refused_at_once_before_any_etcd_write(lab):
    fifo = lab.workdir / "fifo-netns"
    os.mkfifo(fifo)
    revision = lab.store(lambda store: store.revision())
    for netns, why in ((str(fifo), "FIFO"), ("/proc/self/ns/net", "own network namespace")):  # the agent's own
        started = time.monotonic()
        refused = lab.cni("ADD", "node-1", "ghost", netns, timeout=10)
        error = json.loads(refused.stdout)
        assert refused.returncode == 1 and error["code"] == 4 and why in error["details"], refused.stdout
        assert time.monotonic() - started < 5
    assert lab.store(lambda store: store.revision()) == revision  # no block claimed, nothing to undo
    assert lab.handles() == {} and lab.port_tag("ghost") is None
    pod = lab.pod()
    assert lab.add("node-1", "web-1", pod)["ips"]  # the agent's worker was never stuck


def test_an_add_for_a_container_another_node_holds_is_refused_and_touches_nothing(lab):
    held = lab.add("node-2", "shared", lab.pod())["ips"][0]["address"]
    before, revision = lab.handles(), lab.store(lambda store: store.revision())
    other = lab.pod()
    refused = lab.cni("ADD", "node-1", "shared", other)
    error = json.loads(refused.stdout)
    assert refused.returncode == 1 and error["code"] == 104, refused.stdout
    assert "node-2" in error["msg"] and held.split("/")[0] in error["details"]
    assert lab.port_tag("shared") == 100  # node-2's port: still there, still tagged
    assert sh("ip", "-n", other, "link", "show", "dev", "eth0", check=False).returncode != 0
    deleted = lab.cni("DEL", "node-1", "shared", other)  # the runtime DELs after a failed ADD: harmless
    assert deleted.returncode == 0, deleted.stdout
    # (Not the port: the lab's two nodes share one kernel and OVSDB, so node-1's DEL finds the same
    # port name; real nodes each have their own.) etcd is untouched: node-2 keeps its address.
    assert lab.handles() == before and lab.store(lambda store: store.revision()) == revision


def test_etcd_unreachable_mid_add_is_try_again_later_and_nothing_is_half_created(lab):
    pod = lab.pod()
    lab.add("node-1", "warm", lab.pod())  # the agent has its block: the next ADD is one etcd transaction
    with lab.etcd.paused():
        started = time.monotonic()
        failed = lab.cni("ADD", "node-1", "during-outage", pod)
        elapsed = time.monotonic() - started
    assert failed.returncode == 1 and json.loads(failed.stdout)["code"] == 11
    assert lab.etcd.endpoint in failed.stdout and elapsed < 15
    assert lab.port_tag("during-outage") is None
    assert sh("ip", "-n", pod, "link", "show", "dev", "eth0", check=False).returncode != 0
    # The runtime follows a failed ADD with DEL (or retries the ADD): either way nothing is left over.
    assert lab.cni("DEL", "node-1", "during-outage", pod).returncode == 0
    assert "during-outage/eth0" not in lab.handles()
    retried = lab.add("node-1", "during-outage", pod)
    assert retried["ips"][0]["address"].startswith("198.18.100.")


def test_agent_killed_mid_adds_no_duplicate_and_every_leftover_found_by_cnictl_check(lab):
    pods = [lab.pod() for _ in range(16)]
    results: dict[int, subprocess.CompletedProcess] = {}

    def add(i: int) -> None:
        results[i] = lab.cni("ADD", "node-1", f"burst-{i}", pods[i], pod_name=f"burst-{i}", timeout=60)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(results) < 4:  # a few ADDs answered, most still queued in the agent: not a fixed sleep,
        assert time.monotonic() < deadline  # which a faster ADD path outran (16 ADDs took < 150 ms)
        time.sleep(0.001)
    lab.agents["node-1"].kill9()  # in the middle of the burst
    for t in threads:
        t.join(60)
    done = [i for i, r in results.items() if r.returncode == 0]
    failed = [i for i, r in results.items() if r.returncode != 0]
    assert failed, "the agent was killed after the burst finished: nothing was tested"
    assert all(json.loads(results[i].stdout)["code"] in (11, 5) for i in failed)
    lab.agents["node-1"].start()

    # The runtime retries half of the failed sandboxes with the same container ID, and gives
    # up on the others, starting new sandboxes (new IDs) for those pods, as kubelet does.
    addresses: dict[str, str] = {}
    for i in done:
        addresses[f"burst-{i}"] = json.loads(results[i].stdout)["ips"][0]["address"].split("/")[0]
    for n, i in enumerate(failed):
        container = f"burst-{i}" if n % 2 == 0 else f"burst-{i}-retry"
        if n % 2:
            lab.netns.append(pods[i])
            sh("ip", "netns", "del", pods[i])
            pods[i] = lab.pod()
        result = lab.add("node-1", container, pods[i], pod_name=f"burst-{i}")
        addresses[f"burst-{i}"] = result["ips"][0]["address"].split("/")[0]
    allocated = lab.allocated()
    assert len(allocated) == len(set(allocated))  # never two owners
    assert len(set(addresses.values())) == 16
    for pod, address in addresses.items():
        lab.kube.put_pod("shop", pod, node="node-1", ip=address)
    lab.kube.add_node("node-1")
    cnictl = [str(BIN / "cnictl"), "--etcd", lab.etcd.endpoint, *lab.etcd.client_args]
    check = sh(*cnictl, "--kube-api", lab.kube.url, "check", "--json", "--grace", "0")
    leaks = {leak["address"] for leak in json.loads(check.stdout)["leaks"]}
    left_behind = set(allocated) - set(addresses.values())
    assert leaks == left_behind  # every address left behind is found, nothing else is accused
    assert sh(*cnictl, "release", "--certain").returncode == 0
    assert sorted(lab.allocated()) == sorted(addresses.values())
