"""What one exec of the installed ``leengine-cni`` costs: the Go plugin vs the Python plugin vs ``/bin/true``.

A container runtime execs the plugin for every pod's ADD and DEL (and libcni once more per ADD for
VERSION), so its start-up is paid per pod (docs/cni.md, "What an invocation costs"). Both plugins
are installed as ``leengine install-cni`` installs them (the Go binary; the Python plugin's sh +
``<python> -IS`` file) into directories of their own and exec'd with the CNI environment and a
configuration on stdin: ADD, forwarded to a stub agent on a unix socket that answers at once (so
the figure is the plugin's own cost, not an agent's), and VERSION (answered by the plugin itself;
the Python plugin's sh part). ``/bin/true`` is the floor: what a fork + exec from Python's
``subprocess`` costs on this machine right then. Per round each variant runs ``--execs`` times, the
variants interleaved exec by exec; each figure is CPU (``getrusage`` of the children: user + system)
and wall per exec, the mean over the round; the summary is the range over the rounds.

Run: .venv/bin/python -m bench.cni_exec [--rounds 5] [--execs 100] [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import save, show
from leengine.cni_install import build_go_plugin, install_go_plugin, install_plugin

CONF = b'{"cniVersion": "1.0.0", "name": "bench", "type": "leengine-cni"}'
ANSWER = b'0\n{"cniVersion": "1.0.0", "interfaces": [], "ips": []}'


def stub_agent(path: str) -> None:
    """Answers every request at once, as the agent's protocol wants: exit code, newline, stdout, close."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(ANSWER)

    threading.Thread(target=serve, daemon=True).start()


def one_exec(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[float, float]:
    """(CPU, wall) seconds of one exec; fails the bench if the plugin fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({run.returncode}): {run.stdout!r} {run.stderr!r}")
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--execs", type=int, default=100, help="execs per variant per round")
    parser.add_argument("--python", default=None, help="interpreter of the Python plugin (default: this one)")
    args = parser.parse_args()
    if args.rounds < 1 or args.execs < 1:
        raise SystemExit("--rounds and --execs must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="lecniexec-", dir="/tmp"))
    try:
        (work / "go").mkdir()
        (work / "python").mkdir()
        go = str(install_go_plugin(work / "go", build_go_plugin()))
        python = str(install_plugin(work / "python", python=args.python))
        sock = str(work / "agent.sock")
        stub_agent(sock)
        env = {"PATH": "/usr/bin:/bin", "CNI_CONTAINERID": "bench0", "CNI_NETNS": "/var/run/netns/bench",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "LEENGINE_CNI_SOCKET": sock}
        variants = {
            "go ADD": ([go], CONF, {**env, "CNI_COMMAND": "ADD"}),
            "python ADD": ([python], CONF, {**env, "CNI_COMMAND": "ADD"}),
            "go VERSION": ([go], b'{"cniVersion":"1.0.0"}', {**env, "CNI_COMMAND": "VERSION"}),
            "python VERSION": ([python], b'{"cniVersion":"1.0.0"}', {**env, "CNI_COMMAND": "VERSION"}),
            "/bin/true": (["/bin/true"], b"", env),
        }
        for argv, stdin, variant_env in variants.values():  # warm-up: page cache, the interpreter's files
            one_exec(argv, stdin, variant_env)
        rounds: list[dict[str, dict[str, float]]] = []
        for number in range(args.rounds):
            load = os.getloadavg()[0]
            totals = {name: [0.0, 0.0] for name in variants}
            for _ in range(args.execs):
                for name, (argv, stdin, variant_env) in variants.items():
                    cpu, wall = one_exec(argv, stdin, variant_env)
                    totals[name][0] += cpu
                    totals[name][1] += wall
            result = {name: {"cpu_ms": cpu / args.execs * 1000, "wall_ms": wall / args.execs * 1000}
                      for name, (cpu, wall) in totals.items()}
            result["ratio_add_cpu"] = {"value": result["go ADD"]["cpu_ms"] / result["python ADD"]["cpu_ms"]}
            result["loadavg_1min"] = {"start": load, "end": os.getloadavg()[0]}
            rounds.append(result)
            print(f"round {number + 1}: " + "; ".join(f"{name} {r['cpu_ms']:.2f} ms CPU, {r['wall_ms']:.2f} ms wall"
                                                      for name, r in result.items() if name in variants)
                  + f" (load {load:.1f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def span(name: str, what: str, digits: int = 2) -> str:
        values = [r[name][what] for r in rounds]
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}"

    loads = [v for r in rounds for v in r["loadavg_1min"].values()]
    rows: list[list[object]] = [[name, span(name, "cpu_ms"), span(name, "wall_ms")] for name in variants]
    show(f"leengine-cni per exec, mean of {args.execs} per round, range over {args.rounds} rounds (ms); 1-min load "
         f"{min(loads):.1f}–{max(loads):.1f}", ["", "CPU", "wall"],
         [*rows, ["Go / Python ADD, CPU", span("ratio_add_cpu", "value"), ""]])
    saved = save("cni_exec", {"execs": args.execs, "python_plugin": f"sh + {args.python or 'this interpreter'} -IS",
                              "rounds": rounds})
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
