"""cnictl against a real etcd and the Kubernetes API mock: pools, leak check with grace, CAS release, gc, errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cni.ipam import Ipam
from cni.pools import PodRef
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from lab.kube_mock import KubeApiMock
from leengine.etcd_options import open_store


@pytest.fixture
def etcd(etcd_server):
    """The session's etcd (TLS, client certificates) with an empty /ipam/ before and after the test."""

    async def wipe():
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls)
        await store.delete("/ipam/", prefix=True)
        await store.close()

    asyncio.run(wipe())
    yield etcd_server
    asyncio.run(wipe())


@pytest.fixture
def kube():
    with KubeApiMock() as mock:
        yield mock


def cnictl(etcd, *args, kube=None):
    cmd = [sys.executable, "-m", "leengine.cnictl", "--etcd", etcd.endpoint, *etcd.client_args]
    if kube is not None:
        cmd += ["--kube-api", kube.url]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


def allocate(etcd, node, pods, *, cooldown=60.0):
    """Run the real IPAM of ``node`` for (container, pod name) pairs; return {pod name: address}."""

    async def main():
        store = await open_store(etcd.endpoint, etcd.client_tls)
        ipam = Ipam(store, AsyncioRuntime(), node, cooldown=cooldown)
        await ipam.load()
        out = {}
        for container, pod in pods:
            out[pod] = str((await ipam.allocate(container, "eth0", pod=PodRef("shop", pod))).address)
        await store.close()
        return out

    return asyncio.run(main())


def test_pool_add_list_show_and_bad_pools(etcd):
    ok = cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    assert ok.returncode == 0, ok.stderr
    assert "64 blocks of 16" in ok.stdout
    for args, code, message in [  # 1: refused by what etcd holds; 2: bad input, refused before etcd is asked
        (["pool", "add", "b", "--cidr", "10.20.2.0/24", "--vlan", "101"], 1, "overlaps pool cell1-a"),
        (["pool", "add", "b", "--cidr", "10.21.0.0/24", "--vlan", "4095"], 2,
         "vlan: VLAN must be an integer in 1..4094"),
        (["pool", "add", "b", "--cidr", "10.21.0.0/24", "--vlan", "7", "--block-size", "24"], 2, "power of two"),
        (["pool", "add", "b", "--cidr", "10.21.0.0/28", "--vlan", "7", "--block-size", "32"], 2,
         "larger than the pool"),
        (["pool", "show", "nope"], 1, "pool 'nope' does not exist"),
    ]:
        bad = cnictl(etcd, *args)
        assert bad.returncode == code and message in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    allocate(etcd, "node-1", [("c1", "web-1"), ("c2", "web-2")])
    usage = json.loads(cnictl(etcd, "pool", "list", "--json").stdout)
    assert [(u["pool"], u["vlan"], u["allocated"], u["capacity"], u["blocks_claimed"]) for u in usage] == [
        ("cell1-a", 100, 2, 1021, 1)]
    shown = json.loads(cnictl(etcd, "pool", "show", "cell1-a", "--json").stdout)
    assert shown["nodes"] == {"node-1": {"blocks": 1, "allocated": 2}}


def test_leak_is_suspect_then_certain_then_released_by_cas(etcd, kube):
    assert cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100").returncode == 0
    kube.add_node("node-1")
    addresses = allocate(etcd, "node-1", [("c1", "web-1"), ("c2", "web-2"), ("c3", "web-3")])
    for pod in ("web-1", "web-2", "web-3"):
        kube.put_pod("shop", pod, node="node-1", ip=addresses[pod])
    clean = json.loads(cnictl(etcd, "check", "--json", kube=kube).stdout)
    assert clean == {"checked": 3, "leaks": []}

    kube.remove_pod("shop", "web-2")  # the host crashed: no DEL ever came for web-2
    kube.put_pod("shop", "web-3", node="node-1", ip="10.20.9.9")  # web-3's sandbox was recreated elsewhere
    first = json.loads(cnictl(etcd, "check", "--json", "--grace", "1", kube=kube).stdout)
    assert sorted((leak["address"], leak["state"]) for leak in first["leaks"]) == sorted(
        [(addresses["web-2"], "suspect"), (addresses["web-3"], "suspect")])
    reasons = {leak["address"]: leak["reason"] for leak in first["leaks"]}
    assert "no longer exists" in reasons[addresses["web-2"]] and "now has address" in reasons[addresses["web-3"]]
    assert cnictl(etcd, "release", "--certain").stdout == ""  # nothing is certain yet
    time.sleep(1.1)
    second = cnictl(etcd, "check", "--json", "--grace", "1", "--exit-code", kube=kube)
    assert second.returncode == 3
    # A cron'd check feeds the leak alert through node_exporter's textfile collector.
    with tempfile.TemporaryDirectory() as scratch:
        prom = Path(scratch) / "leaks.prom"
        written = cnictl(etcd, "check", "--grace", "1", "--metrics-textfile", str(prom), kube=kube)
        assert written.returncode == 0, written.stderr
        text = prom.read_text()
        assert 'leengine_ipam_allocations_leaked{pool="cell1-a"} 2.0' in text, text
        assert 'leengine_ipam_allocations_gc_candidates{pool="cell1-a"} 0.0' in text, text
        bad = cnictl(etcd, "check", "--metrics-textfile", str(Path(scratch) / "leaks.txt"), kube=kube)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "*.prom" in bad.stderr
    assert {leak["state"] for leak in json.loads(second.stdout)["leaks"]} == {"certain"}
    released = cnictl(etcd, "release", "--certain")
    assert released.returncode == 0
    assert sorted(released.stdout.split()[1::6]) == sorted([addresses["web-2"], addresses["web-3"]])
    after = json.loads(cnictl(etcd, "check", "--json", kube=kube).stdout)
    assert after == {"checked": 1, "leaks": []}  # web-1 is untouched


def test_release_never_frees_an_address_reused_since_the_check(etcd, kube):
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    kube.add_node("node-1")
    addresses = allocate(etcd, "node-1", [("old", "gone")], cooldown=0)
    kube.put_pod("kube-system", "dns", node="node-1", ip="10.99.0.2")  # the Cell has other pods
    assert cnictl(etcd, "check", "--grace", "0", kube=kube).returncode == 0  # 'gone' has no pod: certain at once

    async def reuse():  # meanwhile the agent releases it and hands the address to a new pod
        store = await open_store(etcd.endpoint, etcd.client_tls)
        ipam = Ipam(store, AsyncioRuntime(), "node-1", cooldown=0)
        await ipam.load()
        await ipam.release("old", "eth0")
        address = str((await ipam.allocate("new", "eth0", pod=PodRef("shop", "fresh"))).address)
        await store.close()
        return address

    assert asyncio.run(reuse()) == addresses["gone"]
    kube.put_pod("shop", "fresh", node="node-1", ip=addresses["gone"])
    result = cnictl(etcd, "release", "--certain")
    assert result.returncode == 0
    assert "now belongs to new/eth0, not old/eth0: not released" in result.stdout
    assert json.loads(cnictl(etcd, "check", "--json", kube=kube).stdout) == {"checked": 1, "leaks": []}


def test_release_by_address_and_its_errors(etcd, kube):
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    addresses = allocate(etcd, "node-1", [("c1", "web-1")])
    kube.put_pod("kube-system", "dns", node="node-1", ip="10.99.0.2")  # web-1 is gone, the Cell has other pods
    ok = cnictl(etcd, "release", addresses["web-1"], kube=kube)
    assert ok.returncode == 0 and ok.stdout == f"released {addresses['web-1']} (handle c1/eth0, node node-1)\n"
    for args, code, message in [
        (["release", "192.168.1.1"], 1, "address 192.168.1.1 is outside every pool"),
        (["release", addresses["web-1"]], 1, "is not allocated"),
        (["release", "not-an-ip"], 2, "is not an IPv4 address"),
        (["release"], 2, "give either addresses or --certain"),
        (["release", "--certain", "--force"], 2, "--force applies to ADDRESSes"),
    ]:
        bad = cnictl(etcd, *args, kube=kube)
        assert bad.returncode == code and message in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    no_api = cnictl(etcd, "release", addresses["web-1"])
    assert no_api.returncode == 2 and "give --kube-api URL or --kubeconfig FILE (or --force)" in no_api.stderr


def test_release_of_a_live_pods_address_is_refused_unless_forced(etcd, kube):
    """Issue 9, item 8: freeing a live pod's address hands it to the next pod: a duplicate IP."""
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    kube.add_node("node-1")
    addresses = allocate(etcd, "node-1", [("c1", "web-1"), ("c2", "web-2")])
    for pod in ("web-1", "web-2"):
        kube.put_pod("shop", pod, node="node-1", ip=addresses[pod])
    refused = cnictl(etcd, "release", addresses["web-1"], kube=kube)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"cnictl: refused: {addresses['web-1']}: pod shop/web-1 still runs it "
                              "(handle c1/eth0, node node-1); not released\n")
    assert json.loads(cnictl(etcd, "check", "--json", kube=kube).stdout) == {"checked": 2, "leaks": []}
    # The next ADD gets a fresh address, not web-1's.
    assert allocate(etcd, "node-1", [("c3", "web-3")])["web-3"] not in addresses.values()

    # One address refused, one released: each gets its line, the exit status says something was refused.
    kube.remove_pod("shop", "web-2")
    mixed = cnictl(etcd, "release", addresses["web-1"], addresses["web-2"], kube=kube)
    assert mixed.returncode == 1
    assert mixed.stdout == f"released {addresses['web-2']} (handle c2/eth0, node node-1)\n"
    assert "refused: " in mixed.stderr and len(mixed.stderr.splitlines()) == 1

    forced = cnictl(etcd, "release", "--force", addresses["web-1"])
    assert forced.returncode == 0 and forced.stdout == (
        f"released {addresses['web-1']} (handle c1/eth0, node node-1) without checking the cluster (--force)\n")


@pytest.mark.parametrize("cidr", ["127.0.0.0/24", "169.254.0.0/24", "224.0.0.0/24", "240.0.0.0/24", "0.0.0.0/24"])
def test_pool_add_refuses_special_ranges_in_one_line(etcd, cidr):
    bad = cnictl(etcd, "pool", "add", "special", "--cidr", cidr, "--vlan", "7")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith(f"cnictl: error: cidr: {cidr} overlaps ") and "pods cannot use it" in bad.stderr
    assert json.loads(cnictl(etcd, "pool", "list", "--json").stdout) == []


@pytest.mark.parametrize(("args", "message"), [
    (["check", "--grace", "-1"], "--grace must be a number of seconds from 0"),
    (["check", "--grace", "nan"], "--grace must be a number of seconds from 0"),
    (["check", "--grace", "inf", "--wait"], "--grace must be a number of seconds from 0"),
    (["gc", "--cooldown", "-5"], "--cooldown must be a number of seconds from 0"),
    (["--timeout", "-1", "pool", "list"], "Invalid value for '--timeout': must be a number of seconds in (0, 3600]"),
    (["--etcd-timeout", "nan", "pool", "list"], "Invalid value for '--etcd-timeout': must be a number of seconds in"),
])
def test_durations_are_checked_in_one_line(etcd, kube, args, message):
    bad = cnictl(etcd, *args, kube=kube)
    assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr


def test_unreadable_records_are_warnings_and_skipped(etcd, kube):
    """Issue 9, item 3: a corrupt record (deeply nested JSON, wrong types) never makes cnictl crash."""
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    kube.add_node("node-1")
    addresses = allocate(etcd, "node-1", [("c1", "web-1")])
    kube.put_pod("shop", "web-1", node="node-1", ip=addresses["web-1"])
    nested = b"[" * 100_000 + b"]" * 100_000

    async def corrupt():
        store = await open_store(etcd.endpoint, etcd.client_tls)
        await store.put("/ipam/blocks/cell1-a/10.20.3.0-28", nested)
        await store.put("/ipam/handles/ghost/eth0", b'{"container_id": 7}')
        await store.put("/ipam/pools/broken", b'{"name": "broken", "cidr": [1]}')
        await store.put("/ipam/leaks/10.20.0.99", nested)
        await store.close()

    asyncio.run(corrupt())
    listed = cnictl(etcd, "pool", "list", "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert [(u["pool"], u["allocated"]) for u in json.loads(listed.stdout)] == [("cell1-a", 1)]
    assert sorted(line.split()[4] for line in listed.stderr.splitlines()) == [
        "/ipam/blocks/cell1-a/10.20.3.0-28:", "/ipam/pools/broken:"]
    assert all(line.startswith("cnictl: warning: invalid record ") and line.endswith("(skipped)")
               for line in listed.stderr.splitlines())
    checked = cnictl(etcd, "check", "--json", kube=kube)
    assert checked.returncode == 0 and "Traceback" not in checked.stderr
    body = json.loads(checked.stdout)
    assert (body["checked"], body["leaks"]) == (1, [])
    assert sorted(i["key"] for i in body["invalid"]) == ["/ipam/blocks/cell1-a/10.20.3.0-28",
                                                         "/ipam/handles/ghost/eth0", "/ipam/leaks/10.20.0.99"]
    collected = cnictl(etcd, "gc", "--cooldown", "0", kube=kube)
    assert collected.returncode == 0 and "stray handles removed: 0" in collected.stdout
    assert "stray handles and leak records left alone" in collected.stderr
    added = cnictl(etcd, "pool", "add", "cell1-b", "--cidr", "10.21.0.0/24", "--vlan", "101")
    assert added.returncode == 1 and "invalid record /ipam/pools/broken" in added.stderr
    assert len(added.stderr.splitlines()) == 1


def test_gc_frees_empty_blocks_of_departed_nodes_only(etcd, kube):
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    kube.add_node("node-1")
    allocate(etcd, "node-1", [("c1", "web-1")])
    departed = allocate(etcd, "node-gone", [("c2", "web-2")])
    cnictl(etcd, "release", "--force", departed["web-2"])  # its block is now empty and its node has left
    cooling = cnictl(etcd, "gc", kube=kube)  # ... but the address released in it is cooling down
    assert cooling.returncode == 0 and "blocks freed: 0" in cooling.stdout
    result = cnictl(etcd, "gc", "--cooldown", "0", kube=kube)
    assert result.returncode == 0 and "blocks freed: 1" in result.stdout
    usage = json.loads(cnictl(etcd, "pool", "show", "cell1-a", "--json").stdout)
    assert list(usage["nodes"]) == ["node-1"]


def test_check_without_a_kubernetes_api_is_a_clear_error(etcd):
    missing = cnictl(etcd, "check")
    assert missing.returncode == 2 and "give --kube-api URL or --kubeconfig FILE" in missing.stderr
    dead = subprocess.run([sys.executable, "-m", "leengine.cnictl", "--etcd", etcd.endpoint, *etcd.client_args,
                           "--kube-api", "http://127.0.0.1:9", "--timeout", "2", "check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert dead.returncode == 1 and "Kubernetes API at http://127.0.0.1:9 unavailable" in dead.stderr


def test_check_refuses_to_judge_against_an_api_that_lists_no_pods(etcd, kube):
    cnictl(etcd, "pool", "add", "cell1-a", "--cidr", "10.20.0.0/22", "--vlan", "100")
    allocate(etcd, "node-1", [("c1", "web-1")])
    refused = cnictl(etcd, "check", kube=kube)  # wrong cluster or broken API: zero pods
    assert refused.returncode == 1 and "lists no pods while 1 addresses are allocated" in refused.stderr
    leaks = subprocess.run([sys.executable, "-m", "leengine.cli", "store", "ls", "/ipam/leaks/",
                            "--endpoint", etcd.endpoint, *etcd.client_args],
                           capture_output=True, text=True, timeout=60, check=True)
    assert leaks.stdout == ""  # nothing recorded either
