"""One pod's ADD + DEL through our CNI stack vs Debian's reference ``bridge`` + ``host-local``, same machine, same run.

Ours: the installed ``leengine-cni`` plugin (what ``leengine install-cni`` writes), executed as a
runtime does, forwarding to a ``leengine-cni-agent`` process that allocates in a real etcd (one
transaction), makes the veth pair, an OVS access port with the pool's VLAN tag (userspace
datapath) and the pod's address and route, and on DEL undoes it all.
Reference: ``/usr/lib/cni/bridge`` with ``host-local`` IPAM (a Linux bridge, a veth pair,
an address from a file-backed range), executed the same way.

Both run against the same pod network namespace, alternating cycle by cycle so machine
noise hits both alike. Reported: median ADD, DEL and cycle times and the ratio of
median cycles (target <= 1.5x).

Run (root): .venv/bin/python -m bench.cni_cycle [--cycles 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save, show
from cni.admin import add_pool
from cni.pools import Pool
from foundation.adapters.etcd_store import EtcdStore
from foundation.adapters.ovs_dataplane import OvsDataplane
from lab.etcd import running_etcd
from lab.ovs import running_ovs
from leengine.cni_install import install_plugin

REFERENCE = Path("/usr/lib/cni")
BRIDGE, REF_BRIDGE, NETNS = "lebnch0", "lebnchref0", "lebnch-pod"


def timed(argv: list[str], env: dict[str, str], conf: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60,
                            check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} {env['CNI_COMMAND']} failed: {result.stdout.decode()} {result.stderr.decode()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=60)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.cni_cycle needs root (network namespaces, OVS)")
    work = Path(tempfile.mkdtemp(prefix="lebench-", dir="/tmp"))
    (work / "bin").mkdir()
    plugin = install_plugin(work / "bin")
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    agent = None
    try:
        with running_etcd() as etcd, running_ovs() as ovs:
            async def prepare() -> None:
                store = await EtcdStore.open(etcd.endpoint)
                await add_pool(store, Pool.parse("bench", "198.19.0.0/16", vlan=100))
                await store.close()
                async with OvsDataplane(ovs.db) as dp:
                    await dp.ensure_bridge(BRIDGE)

            asyncio.run(prepare())
            socket_path = str(work / "agent.sock")
            agent = subprocess.Popen(
                [str(Path(sys.executable).parent / "leengine-cni-agent"), "--node", "bench-node", "--etcd",
                 etcd.endpoint, "--socket", socket_path, "--ovsdb", ovs.db, "--bridge", BRIDGE, "--log-level",
                 "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while not os.path.exists(socket_path):
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("the agent did not start")
                time.sleep(0.05)
            # The socket comes from the environment, as a node's runtime would set it once; an
            # agentSocket key in the config makes the plugin parse JSON (~5 ms more per exec).
            ours_conf = {"cniVersion": "1.0.0", "name": "bench", "type": "leengine-cni", "bridge": BRIDGE}
            ref_conf = {"cniVersion": "1.0.0", "name": "bench-ref", "type": "bridge", "bridge": REF_BRIDGE,
                        "isGateway": False, "ipam": {"type": "host-local", "subnet": "198.18.0.0/16",
                                                      "dataDir": str(work / "host-local")}}
            times: dict[str, dict[str, list[float]]] = {"ours": {"ADD": [], "DEL": []},
                                                        "reference": {"ADD": [], "DEL": []}}
            for i in range(args.cycles + 5):
                for name, argv, conf in (("ours", [str(plugin)], ours_conf),
                                         ("reference", [str(REFERENCE / "bridge")], ref_conf)):
                    for command in ("ADD", "DEL"):
                        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"{name}-{i}",
                               "CNI_NETNS": f"/var/run/netns/{NETNS}", "CNI_IFNAME": "eth0",
                               "CNI_PATH": str(REFERENCE), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "LEENGINE_CNI_SOCKET": socket_path}
                        elapsed = timed(argv, env, conf)
                        if i >= 5:  # the first cycles warm caches on both sides
                            times[name][command].append(elapsed)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        subprocess.run(["ip", "link", "del", REF_BRIDGE], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def med(values: list[float]) -> float:
        return statistics.median(values) * 1000

    cycles = {name: [a + d for a, d in zip(t["ADD"], t["DEL"], strict=True)] for name, t in times.items()}
    result = {
        "cycles": args.cycles,
        "ours_ms": {"add": med(times["ours"]["ADD"]), "del": med(times["ours"]["DEL"]), "cycle": med(cycles["ours"])},
        "reference_ms": {"add": med(times["reference"]["ADD"]), "del": med(times["reference"]["DEL"]),
                         "cycle": med(cycles["reference"])},
    }
    result["ratio"] = result["ours_ms"]["cycle"] / result["reference_ms"]["cycle"]
    show(f"CNI ADD+DEL, median of {args.cycles} interleaved cycles (ms)", ["", "ADD", "DEL", "cycle"], [
        ["leengine-cni → agent → etcd + OVS", *result["ours_ms"].values()],
        ["bridge + host-local (Debian)", *result["reference_ms"].values()],
    ])
    print(f"ratio of median cycles ours/reference = {result['ratio']:.2f}x")
    print(f"saved {save('cni_cycle', result)}")


if __name__ == "__main__":
    main()
