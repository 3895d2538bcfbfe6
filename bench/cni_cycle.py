"""One pod's ADD + DEL through libcni: our CNI stack vs Debian's reference ``bridge`` + ``host-local``.

Measured the way a container runtime runs plugins: ``build/cnitool`` (``scripts/build-cnitool.sh``,
Debian's libcni 1.1.2) loads a conflist, validates it (libcni asks each plugin type, IPAM
included, for VERSION), executes the plugins with the CNI environment and the configuration
on stdin, caches the result and hands it back as ``prevResult`` on DEL. Each figure is the
wall time of one ``cnitool add`` / ``cnitool del`` process, libcni's own cost included on
both sides (the same for both).

Ours, two plugins side by side against the same ``leengine-cni-agent`` (which allocates in a
real etcd, one transaction, makes the veth pair, an OVS access port with the pool's VLAN tag on
the userspace datapath, waiting for ovs-vswitchd, the pod's address and route, and on DEL undoes
it all): ``go``, the compiled plugin (``scripts/cni-plugin/main.go``, what ``leengine install-cni``
installs where Go is available), and ``python``, the Python plugin (its sh part answers libcni's
VERSION, its Python part, run as ``<python> -IS``, forwards ADD and DEL). The socket is named by
the configuration's ``agentSocket``, as a node's conflist would name it. ``--python-only`` adds
the Python plugin as one Python file behind ``#!<python> -IS`` (VERSION by Python too).
Reference: ``bridge`` with ``host-local`` IPAM (a Linux bridge, a veth pair, an address from
a file-backed range): per ADD libcni execs bridge and host-local for VERSION, then bridge,
which execs host-local.

Every side runs in the root network namespace against pod namespaces of its own (four per side,
in turn), alternating cycle by cycle (and which goes first) so machine noise hits all alike.
Each round reports median ADD, DEL and cycle per side, the ratio of median cycles to the
reference's, the CPU a cycle costs (cnitool and the plugins it ran, from ``getrusage``; for ours
also the agent, etcd, ovsdb-server and ovs-vswitchd, from ``/proc``, shared out over our sides),
the 1-minute load average, and the machine's raw fork+exec rate (``/bin/true``, one after the
other, measured at the start of the round: how fast this machine starts a process right then);
the summary is the range of each over the rounds (target: the Go plugin's ratio <= 1.0).

Run (root): .venv/bin/python -m bench.cni_cycle [--rounds 5] [--cycles 30] [--python /usr/bin/python3] [--python-only]
(in a network namespace of its own when other userspace OVS instances run: docs/cni.md, "What an invocation costs")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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
from lab.reference import exec_rate
from leengine.cni_install import build_go_plugin, install_go_plugin, install_plugin, installed_interpreter

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("/usr/lib/cni")
BRIDGE, REF_BRIDGE = "lebnch0", "lebnchref0"
# Pod netns per side, used in turn: a runtime gives each pod a netns of its own, and our DEL leaves the veth to a
# background reaper, so a reused netns's eth0 could still be there for the next ADD (a collision no runtime makes).
PODS_PER_SIDE = 4
SIDES = {"go": "go", "python": "py", "python-only": "po", "reference": "re"}  # side -> its netns names' tag
NETNS = {side: [f"lebnch-{tag}{i}" for i in range(PODS_PER_SIDE)] for side, tag in SIDES.items()}
OURS = ("go", "python", "python-only")
EXEC_SAMPLES = 200
WARMUP = 3  # cycles per side before the first round: caches, the agent's first etcd and OVSDB round trips


def cnitool(tool: str, command: str, network: str, netns: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``cnitool COMMAND NETWORK`` (CPU: cnitool and every plugin it waited for, kernel
    work in their system calls included); it fails the bench if libcni reports an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([tool, command, network, f"/var/run/netns/{netns}"], env=env, capture_output=True,
                            timeout=60, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"cnitool {command} {network} failed: {result.stdout.decode()} {result.stderr.decode()}")
    return elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_agent(etcd: str, ovsdb: str, socket_path: str) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(
        [str(Path(sys.executable).parent / "leengine-cni-agent"), "--node", "bench-node", "--etcd", etcd,
         "--socket", socket_path, "--ovsdb", ovsdb, "--bridge", BRIDGE, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(socket_path):
        if time.monotonic() > deadline or agent.poll() is not None:
            raise SystemExit("the agent did not start")
        time.sleep(0.05)
    return agent


def write_conflists(confdir: Path, socket_path: str, work: Path) -> None:
    confdir.mkdir()
    ours = {"cniVersion": "1.0.0", "name": "bench", "plugins": [
        {"type": "leengine-cni", "bridge": BRIDGE, "agentSocket": socket_path}]}
    ref = {"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [
        {"type": "bridge", "bridge": REF_BRIDGE, "isGateway": False,
         "ipam": {"type": "host-local", "subnet": "198.18.0.0/16", "dataDir": str(work / "host-local")}}]}
    for conflist in (ours, ref):
        (confdir / f"10-{conflist['name']}.conflist").write_text(json.dumps(conflist))


def summary(samples: dict[str, dict[str, list[float]]], daemon_cpu: float) -> dict[str, dict[str, float]]:
    """Median ADD, DEL and cycle (ADD + DEL of one pod) in ms per side, each of our sides' ratio of median cycles
    to the reference's (``ratio_<side>``), and CPU ms per cycle: median of cnitool + plugins, plus (ours) the mean of
    what the agent, etcd, ovsdb-server and ovs-vswitchd used over the round (``daemon_cpu`` seconds per cycle)."""
    out: dict[str, dict[str, float]] = {}
    for side, times in samples.items():
        cycles = [a + d for a, d in zip(times["ADD"], times["DEL"], strict=True)]
        plugins = statistics.median(times["CPU"]) * 1000
        out[side] = {"add": statistics.median(times["ADD"]) * 1000, "del": statistics.median(times["DEL"]) * 1000,
                     "cycle": statistics.median(cycles) * 1000, "cpu_plugins": plugins,
                     "cpu": plugins + (daemon_cpu * 1000 if side != "reference" else 0.0)}
    for side in OURS:
        if side in out:
            out[f"ratio_{side}"] = {what: out[side][what] / out["reference"][what]
                                    for what in ("cycle", "add", "del", "cpu")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=30, help="ADD+DEL cycles per side per round")
    parser.add_argument("--python", default=None,
                        help="interpreter the Python plugin execs (default: leengine install-cni's, this one)")
    parser.add_argument("--python-only", action="store_true",
                        help="a fourth side: the Python plugin as one Python file behind #!<python> -IS (VERSION "
                             "by Python too, as installed before its sh part), against the same agent")
    args = parser.parse_args()
    if args.rounds < 1 or args.cycles < 1:
        raise SystemExit("--rounds and --cycles must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("bench.cni_cycle needs root (network namespaces, OVS)")
    subprocess.run([str(ROOT / "scripts" / "build-cnitool.sh")], check=True, timeout=600)
    tool = str(ROOT / "build" / "cnitool")
    work = Path(tempfile.mkdtemp(prefix="lebench-", dir="/tmp"))
    bins = {side: work / f"bin-{side}" for side in OURS}
    for directory in bins.values():
        directory.mkdir()
    go_binary = build_go_plugin()  # scripts/build-cni-plugin.sh: offline, skipped when up to date
    install_go_plugin(bins["go"], go_binary)
    plugin = install_plugin(bins["python"], python=args.python)
    interpreter = installed_interpreter(plugin.read_bytes())
    sides = ["go", "python", "reference"]
    if args.python_only:  # the Python part alone, behind the shebang the plugin had before its sh part
        data = plugin.read_bytes()
        python_only = bins["python-only"] / plugin.name
        python_only.write_bytes(f"#!{interpreter} -IS\n".encode() + data[data.index(b"\n# The plugin compiled") + 1:])
        python_only.chmod(0o755)
        sides.insert(2, "python-only")
    for netns in [n for names in NETNS.values() for n in names]:
        subprocess.run(["ip", "netns", "add", netns], check=True)
    agent = None
    rounds: list[dict[str, dict[str, float]]] = []
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
            agent = start_agent(etcd.endpoint, ovs.db, socket_path)
            write_conflists(work / "net.d", socket_path, work)
            base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH": str(work / "net.d"),
                        "CNI_CACHE_DIR": str(work / "cache")}
            networks = {side: "bench-ref" if side == "reference" else "bench" for side in sides}
            # The reference finds bridge and host-local in Debian's directory; each of ours its own leengine-cni.
            cni_path = {side: f"{bins[side]}:{REFERENCE}" if side in OURS else str(REFERENCE) for side in sides}
            serial = 0

            # Daemons that work for our side only (the reference's work is all in its plugins' processes).
            daemons = [agent.pid, etcd.pid, ovs.pid("ovsdb-server"), ovs.pid("ovs-vswitchd")]

            def cycle(side: str, samples: dict[str, dict[str, list[float]]] | None) -> None:
                nonlocal serial
                serial += 1
                env = {**base_env, "CNI_CONTAINERID": f"{side}-{serial}", "CNI_PATH": cni_path[side]}
                netns = NETNS[side][serial % PODS_PER_SIDE]
                add, add_cpu = cnitool(tool, "add", networks[side], netns, env)
                delete, del_cpu = cnitool(tool, "del", networks[side], netns, env)
                if samples is not None:
                    samples[side]["ADD"].append(add)
                    samples[side]["DEL"].append(delete)
                    samples[side]["CPU"].append(add_cpu + del_cpu)

            for _ in range(WARMUP):
                for side in sides:
                    cycle(side, None)
            for number in range(args.rounds):
                samples: dict[str, dict[str, list[float]]] = {s: {"ADD": [], "DEL": [], "CPU": []} for s in sides}
                load = os.getloadavg()[0]
                execs = exec_rate(EXEC_SAMPLES)
                daemon_cpu = sum(cpu_seconds(pid) for pid in daemons)
                for i in range(args.cycles):
                    order = sides[i % len(sides):] + sides[:i % len(sides)]  # each side goes first in turn
                    for side in order:
                        cycle(side, samples)
                daemon_cpu = sum(cpu_seconds(pid) for pid in daemons) - daemon_cpu
                ours_sides = len(sides) - 1  # the daemons work for our sides, never the reference
                rounds.append({**summary(samples, daemon_cpu / args.cycles / ours_sides),
                               "loadavg_1min": {"start": load, "end": os.getloadavg()[0]},
                               "exec_per_second": {"value": round(execs, 1)}})
                r = rounds[-1]
                ours = "; ".join(
                    f"{side} {r[side]['cycle']:.1f} ms (ADD {r[side]['add']:.1f} + DEL {r[side]['del']:.1f}) "
                    f"{r['ratio_' + side]['cycle']:.2f}x, CPU {r[side]['cpu']:.1f} ms"
                    for side in sides if side in OURS)
                print(f"round {number + 1}: {ours}; reference {r['reference']['cycle']:.1f} ms (ADD "
                      f"{r['reference']['add']:.1f} + DEL {r['reference']['del']:.1f}), CPU "
                      f"{r['reference']['cpu']:.1f} ms; load {load:.1f}-{r['loadavg_1min']['end']:.1f}, "
                      f"fork+exec {execs:.0f}/s", flush=True)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        for netns in [n for names in NETNS.values() for n in names]:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        subprocess.run(["ip", "link", "del", REF_BRIDGE], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def span(side: str, what: str) -> tuple[float, float]:
        values = [r[side][what] for r in rounds]
        return min(values), max(values)

    def fmt(side: str, what: str, digits: int = 1) -> str:
        low, high = span(side, what)
        return f"{low:.{digits}f}–{high:.{digits}f}"

    labels = {"go": "leengine-cni (Go) → agent → etcd + OVS",
              "python": f"leengine-cni (sh + {interpreter} -IS) → agent",
              "python-only": "python-only (VERSION by Python too) → agent"}
    rows: list[list[object]] = []
    for side in (s for s in sides if s in OURS):
        rows.append([labels[side], fmt(side, "add"), fmt(side, "del"), fmt(side, "cycle"), fmt(side, "cpu")])
        rows.append(["  ratio to the reference", fmt(f"ratio_{side}", "add", 2), fmt(f"ratio_{side}", "del", 2),
                     fmt(f"ratio_{side}", "cycle", 2), fmt(f"ratio_{side}", "cpu", 2)])
    rows.append(["bridge + host-local (Debian)", fmt("reference", "add"), fmt("reference", "del"),
                 fmt("reference", "cycle"), fmt("reference", "cpu")])
    loads = [v for r in rounds for v in r["loadavg_1min"].values()]
    exec_rates = [r["exec_per_second"]["value"] for r in rounds]
    show(f"CNI ADD / DEL through libcni (cnitool), per-round medians of {args.cycles} interleaved cycles, range "
         f"over {args.rounds} rounds (ms); 1-min load {min(loads):.1f}–{max(loads):.1f}, fork+exec of /bin/true "
         f"{min(exec_rates):.0f}–{max(exec_rates):.0f}/s", ["", "ADD", "DEL", "cycle", "CPU per cycle"], rows)
    # Results name the interpreter as the reader's checkout would (.venv/bin/python), not by this machine's path.
    shown = interpreter.replace(f"{ROOT}/", "")
    saved = save("cni_cycle", {"driver": "libcni 1.1.2 (build/cnitool)", "cycles": args.cycles,
                               "plugins": {"go": f"static Go binary ({go_binary.name}, scripts/cni-plugin/main.go)",
                                           "python": f"sh (VERSION) + {shown} -IS",
                                           **({"python-only": f"#!{shown} -IS"} if args.python_only else {})},
                               "rounds": rounds})
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
