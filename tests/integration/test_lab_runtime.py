"""The lab kubelet end to end: ``python -m lab.container_runtime`` executes the installed ``leengine-cni``
(which forwards to a real ``leengine-cni-agent`` on a netdev OVS bridge, IPAM in the session's etcd)
and reports to a real ``python -m lab.kube_api`` process.

Checked: pods get an address of the pool inside their netns, an OVS port tagged with the pool's
VLAN, serve their name over HTTP to another pod on the VLAN, show Running + Ready in the API and
in the app's Endpoints; a stop releases the address in etcd, removes the port, the netns and the
API's pod; ``kill_all`` leaves the addresses held (leaked) but nothing running; a restarted runtime
adopts nothing it cannot verify and reports those pods Failed. The burst test runs 200 pods on 2
nodes and prints pods/s and ADD percentiles. Needs root, etcd, Open vSwitch, busybox; never skips.
Everything made (netns, bridges, processes, etcd keys, files) is removed, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cni.pools import HANDLES
from foundation.adapters.ovs_dataplane import OvsDataplane
from foundation.ports.dataplane import host_ifname
from lab.processes import stop_child
from leengine.cni_install import install_plugin
from leengine.etcd_options import open_store

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = f"{(os.getpid() * 7 + 3) % 0x10000:04x}"  # this run's lab id: names every netns, bridge, process
PREFIX = f"le-{TOKEN}-p-"
POOL, CIDR, VLAN = "red", "198.19.100.0/22", 100


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe, timeout: float = 20.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{log.read_text()[-3000:] if log else ''}"
        time.sleep(0.05)
    return value


class Node:
    """One node: its netdev bridge, its CNI agent, its runtime."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab, self.name = lab, f"c1-n{index + 1:03d}"
        self.bridge = f"l{TOKEN}n{index}"
        self.agent_socket = str(lab.dir / f"{self.name}.cni.sock")
        self.socket = str(lab.dir / f"{self.name}.run.sock")
        self.conf = lab.dir / f"{self.name}.conflist"
        self.conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "leengine", "plugins": [
            {"type": "leengine-cni", "bridge": self.bridge, "pools": [POOL], "agentSocket": self.agent_socket}]}))
        self.agent: subprocess.Popen | None = None
        self.runtime: subprocess.Popen | None = None

    def start_agent(self) -> None:
        log = self.lab.dir / f"{self.name}.agent.log"
        etcd = self.lab.etcd
        self.agent = subprocess.Popen(
            [str(BIN / "leengine-cni-agent"), "--node", self.name, "--etcd", etcd.endpoint, *etcd.client_args,
             "--socket", self.agent_socket, "--ovsdb", self.lab.ovs.db, "--bridge", self.bridge,
             "--cooldown", "30"], stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("agent socket", lambda: os.path.exists(self.agent_socket), proc=self.agent, log=log)

    def start_runtime(self) -> None:
        log = self.lab.dir / f"{self.name}.runtime.log"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.runtime = subprocess.Popen(
            [sys.executable, "-m", "lab.container_runtime", "--node", self.name, "--socket", self.socket,
             "--kube", self.lab.kube_url, "--cni-bin", f"{self.lab.dir / 'bin'}:/usr/lib/cni",
             "--cni-conf", str(self.conf), "--lab-id", TOKEN, "--netns-prefix", PREFIX],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "LEENGINE_LAB": TOKEN},
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("runtime socket", lambda: os.path.exists(self.socket), proc=self.runtime, log=log)

    def call(self, request: dict, timeout: float = 120) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.socket)
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                assert chunk, f"runtime closed the connection without answering {request}"
                data += chunk
        return json.loads(data)


class Lab:
    def __init__(self, etcd, ovs, workdir: Path, nodes: int) -> None:
        self.etcd, self.ovs, self.dir = etcd, ovs, workdir
        (workdir / "bin").mkdir()
        install_plugin(workdir / "bin")
        self.kube_port = free_port()
        self.kube_url = f"http://127.0.0.1:{self.kube_port}"
        self.kube: subprocess.Popen | None = None
        self.nodes = [Node(self, i) for i in range(nodes)]

    def start_kube(self) -> None:
        log = self.dir / "kube.log"
        self.kube = subprocess.Popen(
            [sys.executable, "-m", "lab.kube_api", "--listen", f"127.0.0.1:{self.kube_port}", "--cell", "c1",
             "--lab-id", TOKEN], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "LEENGINE_LAB": TOKEN},
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("kube api", lambda: self.get("/api/v1/nodes") is not None, proc=self.kube, log=log)

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.kube_url + path, timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def store(self, fn):
        async def main():
            store = await open_store(self.etcd.endpoint, self.etcd.client_tls)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(asyncio.wait_for(main(), 60))

    def handles(self) -> dict[str, str]:
        async def read(store):
            return {kv.key.removeprefix(HANDLES): json.loads(kv.value)["address"]
                    for kv in (await store.range(HANDLES)).kvs}

        return self.store(read)


def our_netns() -> list[str]:
    return sorted(n for n in os.listdir("/var/run/netns") if n.startswith(PREFIX)) \
        if os.path.isdir("/var/run/netns") else []


def our_httpds() -> list[int]:
    """Processes carrying this run's lab id that are httpd (what the runtime started)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LEENGINE_LAB={TOKEN}".encode() in environ and b"httpd" in cmdline:
            found.append(int(pid))
    return found


@contextlib.contextmanager
def lab_of(etcd_server, ovs_server, nodes: int):
    workdir = Path(tempfile.mkdtemp(prefix="lelabrt-", dir="/tmp"))
    lab = Lab(etcd_server, ovs_server, workdir, nodes)

    async def reset(store):
        await store.delete("/ipam/", prefix=True)

    async def bridges(make: bool):
        async with OvsDataplane(ovs_server.db) as dp:
            for node in lab.nodes:
                if make:
                    await dp.ensure_bridge(node.bridge)
                else:
                    for port in await dp.ports(node.bridge):  # what kill_all left attached
                        await dp.detach(port.container_id, port.ifname, None)
                    await dp.delete_bridge(node.bridge)

    try:
        lab.store(reset)
        asyncio.run(bridges(True))
        out = sh(str(BIN / "cnictl"), "--etcd", etcd_server.endpoint, *etcd_server.client_args, "pool", "add", POOL,
                 "--cidr", CIDR, "--vlan", str(VLAN))
        assert "added" in out.stdout, out.stdout + out.stderr
        lab.start_kube()
        for node in lab.nodes:
            node.start_agent()
            node.start_runtime()
        yield lab
    finally:
        for log in sorted(workdir.glob("*.log")):  # shown by pytest when the test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        for node in lab.nodes:
            for proc in (node.runtime, node.agent):
                if proc is not None:
                    stop_child(proc, 10)
        if lab.kube is not None:
            stop_child(lab.kube, 10)
        for pid in our_httpds():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for netns in our_netns():
            sh("ip", "netns", "delete", netns, check=False)
        asyncio.run(bridges(False))
        lab.store(reset)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def port_tag(lab: Lab, container_id: str) -> int | None:
    out = sh("ovs-vsctl", f"--db={lab.ovs.db}", "get", "Port", host_ifname(container_id, "eth0"), "tag", check=False)
    return int(out.stdout) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def fetch_from(netns: str, ip: str) -> str:
    # curl, not busybox wget: Debian's static busybox wget segfaults (its static glibc's resolver)
    out = sh("nsenter", f"--net=/var/run/netns/{netns}", "curl", "-sS", "-m", "3", f"http://{ip}/", check=False)
    return out.stdout if out.returncode == 0 else f"failed: {out.stderr.strip()}"


def ready_addresses(lab: Lab, app: str) -> list[str]:
    obj = lab.get(f"/api/v1/namespaces/default/endpoints/{app}")
    if not obj or not obj["subsets"]:
        return []
    return [a["ip"] for a in obj["subsets"][0].get("addresses", [])]


def test_pods_are_addressed_tagged_serving_ready_and_stop_or_die_as_a_runtime_makes_them(etcd_server, ovs_server):
    with lab_of(etcd_server, ovs_server, 1) as lab:
        (node,) = lab.nodes
        names = [f"shop-{i}" for i in range(3)]
        with ThreadPoolExecutor(3) as pool:  # three connections at once: requests run concurrently
            answers = list(pool.map(lambda n: node.call({"op": "run", "pod": n, "app": "shop"}), names))
        assert all(a["ok"] for a in answers), answers
        ips = {name: a["ip"] for name, a in zip(names, answers, strict=True)}
        assert len(set(ips.values())) == 3 and all(ip.startswith("198.19.10") for ip in ips.values())
        listing = {p["name"]: p for p in node.call({"op": "list"})["pods"]}
        assert sorted(listing) == names and all(p["alive"] for p in listing.values())
        for name in names:
            netns = f"{PREFIX}{name}"
            inside = json.loads(sh("ip", "-n", netns, "-j", "addr", "show", "dev", "eth0").stdout)[0]
            assert [a["local"] for a in inside["addr_info"] if a["family"] == "inet"] == [ips[name]]
            assert port_tag(lab, listing[name]["container_id"]) == VLAN
        assert fetch_from(f"{PREFIX}shop-0", ips["shop-1"]) == "shop-1"
        assert fetch_from(f"{PREFIX}shop-2", ips["shop-0"]) == "shop-0"
        pods = {p["metadata"]["name"]: p for p in lab.get("/api/v1/pods")["items"]}
        for name in names:
            status = pods[name]["status"]
            assert (pods[name]["spec"]["nodeName"], status["phase"], status["podIP"]) == (node.name, "Running",
                                                                                         ips[name])
            assert {"type": "Ready", "status": "True"} in status["conditions"]
        assert sorted(ready_addresses(lab, "shop")) == sorted(ips.values())
        assert sorted(lab.handles().values()) == sorted(ips.values())
        samples = node.call({"op": "samples"})
        assert len(samples["cni_add_seconds"]) == 3 and all(0 < s < 30 for s in samples["cni_add_seconds"])

        # stop: CNI DEL releases the address, the port and netns go, the API forgets the pod
        stopped = listing["shop-2"]
        assert node.call({"op": "stop", "pod": "shop-2"}) == {"ok": True}
        assert ips["shop-2"] not in lab.handles().values()
        assert port_tag(lab, stopped["container_id"]) is None
        assert f"{PREFIX}shop-2" not in our_netns()
        assert lab.get("/api/v1/namespaces/default/pods/shop-2") is None  # 404
        assert sorted(ready_addresses(lab, "shop")) == sorted([ips["shop-0"], ips["shop-1"]])

        # bad requests: refused before anything is made
        for bad in ({"op": "run", "pod": "Shop;rm", "app": "shop"}, {"op": "run", "pod": "x", "app": "a b"},
                    {"op": "run", "pod": "x", "app": "shop", "namespace": "../etc"}, {"op": "reboot"}):
            answer = node.call(bad)
            assert answer["ok"] is False and answer["error"], answer
        assert our_netns() == [f"{PREFIX}shop-0", f"{PREFIX}shop-1"]

        # kill_all: what a host crash leaves: nothing runs, the addresses stay held in etcd (leaked)
        assert node.call({"op": "kill_all"}) == {"ok": True, "killed": ["shop-0", "shop-1"]}
        assert our_netns() == [] and wait_for("httpds gone", lambda: our_httpds() == [], timeout=5)
        assert node.call({"op": "list"})["pods"] == []
        assert sorted(lab.handles().values()) == sorted([ips["shop-0"], ips["shop-1"]])

        # a restarted runtime adopts nothing it cannot verify: those pods are reported Failed
        node.runtime.send_signal(signal.SIGTERM)
        assert node.runtime.wait(10) == 0
        node.start_runtime()
        assert node.call({"op": "list"})["pods"] == []
        pods = {p["metadata"]["name"]: p for p in lab.get("/api/v1/pods")["items"]}
        assert {pods[n]["status"]["phase"] for n in ("shop-0", "shop-1")} == {"Failed"}
        assert ready_addresses(lab, "shop") == []


def test_a_cni_error_is_passed_on_with_its_code_and_leaves_nothing(etcd_server, ovs_server):
    with lab_of(etcd_server, ovs_server, 1) as lab:
        (node,) = lab.nodes
        node.conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "leengine", "plugins": [
            {"type": "leengine-cni", "bridge": node.bridge, "pools": ["green"], "agentSocket": node.agent_socket}]}))
        node.runtime.send_signal(signal.SIGTERM)
        node.runtime.wait(10)
        node.start_runtime()
        answer = node.call({"op": "run", "pod": "shop-0", "app": "shop"})
        assert answer["ok"] is False and answer["cni_code"] == 7 and "green" in answer["error"], answer
        assert our_netns() == [] and our_httpds() == [] and lab.handles() == {}
        assert lab.get("/api/v1/pods")["items"] == []


def test_a_burst_of_200_pods_on_2_nodes(etcd_server, ovs_server):
    with lab_of(etcd_server, ovs_server, 2) as lab:
        count = 200
        started = time.monotonic()
        with ThreadPoolExecutor(int(os.environ.get("BURST_CONCURRENCY", "64"))) as pool:
            answers = list(pool.map(lambda i: lab.nodes[i % 2].call(
                {"op": "run", "pod": f"burst-{i}", "app": f"app-{i % 20}"}), range(count)))
        took = time.monotonic() - started
        failed = [a for a in answers if not a["ok"]]
        assert not failed, failed[:3]
        assert len({a["ip"] for a in answers}) == count
        ready = sum(len(ready_addresses(lab, f"app-{i}")) for i in range(20))
        assert ready == count
        adds = sorted(s for node in lab.nodes for s in node.call({"op": "samples"})["cni_add_seconds"])
        p50, p99 = adds[len(adds) // 2], adds[min(len(adds) - 1, int(len(adds) * 0.99))]
        print(f"\nburst: {count} pods on 2 nodes in {took:.2f} s = {count / took:.1f} pods/s; "
              f"CNI ADD p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        for node in lab.nodes:
            node.call({"op": "kill_all"})
        assert our_netns() == []
