"""How fast the one-machine lab comes up, serves a 1,000-pod burst and goes away, and what it holds in memory.

Measured (issue 12, "Scale and speed"), each run on a fresh lab:

* **up**: ``leengine lab up scenarios/lab-scale.yaml`` (3 Cells × 4 nodes, 2 Nginx hosts, 1 build
  host, 3 etcd members) from the command to the first pod serving through Nginx: a GET with the
  app's domain as Host header to an Nginx host's management address answering a pod's name
  (target ≤ 60 s); and **down**: ``leengine lab down`` until nothing with the lab's id is left
  (netns, interfaces, bridges, tagged processes: checked again here, target ≤ 15 s);
* **burst**: ``leengine lab up scenarios/lab-burst-1000.yaml`` (the same Region with 100 apps × 10
  replicas); the lab's controller creates the 1,000 pods the moment it starts, so the burst is
  timed from the controller's start (its pid file appearing) to the last pod serving (target
  ≤ 30 s): every pod Ready in its Cell's API with an address, all 1,000 addresses in both Nginx
  hosts' served upstreams, and every replica's name seen through each Nginx host (bounded
  GETs per app, started as soon as the app's 10 addresses are served). Afterwards: each pod's
  OVS port on its node's bridge with its pool's VLAN tag, 1,000 distinct addresses inside their
  Cells' pools, and the runtimes' per-phase timings (where the seconds go);
* **memory**: sampled every 3 s during the burst: PSS and RSS summed over the lab's processes
  (tagged ``LEENGINE_LAB=<id>``, inside the lab's namespaces, the lab's OVS), and the machine's
  ``MemTotal - MemAvailable`` and ``Slab`` above their level before ``lab up`` (the kernel's share:
  namespaces, veths, sockets; other users of the machine add noise to these two).

Beside them, in the same run, two raw reference rates so a reader can scale the figures to their
machine: fork+exec of ``/bin/true`` per second, and netns + veth pair made and deleted per second
with ``ip`` (three execs each, as a naive runtime would).

Isolation: the whole bench runs inside a private network namespace (``unshare --net``) playing
"the machine", so it neither meets another lab's OVS nor its management network; every lab gets
its own directory under ``--workdir`` (mode 755: Nginx workers traverse it) and is always brought
down, also on failure. Root only.

Run: .venv/bin/python -m bench.lab_scale [--runs 3] [--burst-runs 3] [--skip-up] [--skip-burst]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import save, show
from lab.reference import exec_rate

ROOT = Path(__file__).resolve().parents[1]
SCALE_SCENARIO = ROOT / "scenarios" / "lab-scale.yaml"
BURST_SCENARIO = ROOT / "scenarios" / "lab-burst-1000.yaml"
LEENGINE = str(Path(sys.executable).parent / "leengine")
UP_TIMEOUT = 240.0
BURST_TIMEOUT = 480.0
GETS_PER_APP = 60  # bounded: 10 replicas behind a round-robin balancer answer in ~10-20 GETs
INSIDE = "--inside-private-netns"


# --------------------------------------------------------------------------- reference rates


def netns_veth_rate(n: int = 60) -> float:
    """A netns made, a veth pair with one end in it, the netns deleted (the veth goes with it), per second."""
    tag = f"lsb{os.getpid() % 100000}"
    started = time.perf_counter()
    for i in range(n):
        ns = f"{tag}-{i}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "add", f"{tag}v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns],
                       check=True)
        subprocess.run(["ip", "netns", "delete", ns], check=True)
    return n / (time.perf_counter() - started)


def reference() -> dict[str, float]:
    return {"exec_per_second": round(exec_rate(), 1), "netns_veth_per_second": round(netns_veth_rate(), 1)}


# --------------------------------------------------------------------------- the lab's layout


class Layout:
    """Names and addresses of a lab of ``scenario`` in ``directory`` (the plan's, whatever the id)."""

    def __init__(self, scenario: Path, directory: Path) -> None:
        from lab.plan import NGINX_PORT, plan_lab
        from sim.scenario import load_scenario
        from sim.scenario_lab import lab_scaled

        self.spec = lab_scaled(load_scenario(scenario).spec)
        self.dir = directory
        plan = plan_lab(self.spec, "0000", directory)
        self.nginx = {h.name: h.mgmt_ip for h in plan.hosts.values() if h.role == "nginx-host"}
        self.port = NGINX_PORT
        self.apis = {c.name: c.api_url for c in plan.cells.values()}
        self.cell_nodes = {c.name: c.nodes for c in plan.cells.values()}
        self.pools = {p.name: (p.cidr, p.vlan) for p in plan.pools}
        self.cell_pool = {c.name: c.pools[0] for c in plan.cells.values()}
        self.domains = {a.name: a.domain or f"{a.name}.example.com" for a in self.spec.apps}
        self.replicas = {a.name: a.replicas * len(a.cells) for a in self.spec.apps}

    def admin_socket(self, host: str) -> Path:
        return self.dir / "nginx" / host / "admin" / "admin.sock"


def fresh_dir(path: Path) -> Path:
    if path.exists():
        down(path)
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o755)
    os.chmod(path, 0o755)
    return path


def get(address: str, port: int, host: str, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace").strip()
    except OSError:
        return 0, ""
    finally:
        conn.close()


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("leengine-admin", timeout=3)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def served_upstreams(admin_socket: Path) -> dict[str, list[str]]:
    """The Nginx host's served upstreams (its admin endpoint's ``GET /upstreams``); {} if it does not answer."""
    conn = _UnixHTTP(admin_socket)
    try:
        conn.request("GET", "/upstreams")
        resp = conn.getresponse()
        data = json.loads(resp.read()) if resp.status == 200 else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def api_pods(url: str) -> list[dict[str, Any]] | None:
    """Every pod of a Cell's API; None when it does not answer (within 20 s: it is busy during a burst)."""
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(f"{url}/api/v1/pods", timeout=20) as resp:
        items = json.loads(resp.read()).get("items", [])
        return items if isinstance(items, list) else []
    return None


def ready_pods(pods: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(app, name, podIP) of the pods Running + Ready with an address."""
    out = []
    for p in pods:
        status = p.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if status.get("phase") == "Running" and ready and status.get("podIP"):
            out.append(((p["metadata"].get("labels") or {}).get("app", ""), p["metadata"]["name"], status["podIP"]))
    return out


# --------------------------------------------------------------------------- up and down


def up(scenario: Path, directory: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([LEENGINE, "lab", "up", str(scenario), "--dir", str(directory)], stdout=out,
                                stderr=subprocess.STDOUT)


def down(directory: Path) -> dict[str, Any]:
    """``leengine lab down``, timed; then an independent look for anything left with the lab's id."""
    from lab.fabric import lab_links, lab_netns
    from lab.record import tagged_pids

    lab_id = _lab_id_of(directory)
    started = time.monotonic()
    done = subprocess.run([LEENGINE, "lab", "down", "--dir", str(directory), "--json"], capture_output=True,
                          text=True, timeout=300, check=False)
    seconds = time.monotonic() - started
    left: dict[str, Any] = {}
    if lab_id is not None:
        left = {"netns": lab_netns(lab_id), "interfaces": lab_links(lab_id), "processes": tagged_pids(lab_id),
                "ovs": [p for p in _pids_named(("ovs-vswitchd", "ovsdb-server")) if _in_dir(p, directory)]}
    return {"seconds": round(seconds, 2), "rc": done.returncode, "left": left,
            "clean": done.returncode == 0 and not any(left.values()), "stderr": done.stderr.strip()[-300:]}


def _lab_id_of(directory: Path) -> str | None:
    """The id recorded in the lab directory (lab.json, else the intent log's first line), or None."""
    from lab.record import LabRecord, RecordError

    try:
        return LabRecord(directory).lab_id()
    except RecordError:
        return None


def _pids_named(names: tuple[str, ...]) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry.name}/comm").read_text().strip() in names:
                    out.append(int(entry.name))
    return out


def _in_dir(pid: int, directory: Path) -> bool:
    with contextlib.suppress(OSError):
        return str(directory) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return False


def wait_for(predicate: Callable[[], bool], timeout: float, every: float, proc: subprocess.Popen[bytes],
             what: str) -> float:
    """Poll until ``predicate``; the monotonic time it held. Fails when ``lab up`` failed or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if proc.poll() not in (None, 0):
            raise RuntimeError(f"lab up exited {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:.0f} s")
        time.sleep(every)


def up_run(workdir: Path, i: int) -> dict[str, Any]:
    directory = fresh_dir(workdir / f"up-{i}")
    layout = Layout(SCALE_SCENARIO, directory)
    app = layout.spec.apps[0].name
    domain = layout.domains[app]
    result: dict[str, Any] = {}
    started = time.monotonic()
    proc = up(SCALE_SCENARIO, directory, workdir / f"up-{i}.log")
    try:
        def served() -> bool:
            if proc.poll() == 0 and "up_command_seconds" not in result:
                result["up_command_seconds"] = round(time.monotonic() - started, 2)
            for ip in layout.nginx.values():
                status, body = get(ip, layout.port, domain, timeout=1.0)
                if status == 200 and body.startswith(f"{app}-"):
                    result["first_answer"] = body
                    return True
            return False

        result["first_served_seconds"] = round(wait_for(served, UP_TIMEOUT, 0.1, proc, "pod served") - started, 2)
        proc.wait(UP_TIMEOUT)
        if "up_command_seconds" not in result and proc.returncode == 0:  # it returned after the first answer
            result["up_command_seconds"] = round(time.monotonic() - started, 2)
        result["phases"] = _phases(workdir / f"up-{i}.log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        result["down"] = down(directory)
    return result


def _phases(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace").strip().splitlines()[-1][:300]
    return ""


# --------------------------------------------------------------------------- memory


class MemorySampler:
    """Peak PSS/RSS of the lab's processes and the machine's used memory above its level before the lab."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.base = _meminfo()
        self.peak: dict[str, float] = {"pss_mib": 0.0, "rss_mib": 0.0, "processes": 0, "used_delta_mib": 0.0,
                                       "slab_delta_mib": 0.0}
        self.samples = 0

    def sample(self) -> None:
        from lab.fabric import lab_netns
        from lab.lab import _pids_in_netns, _recorded_processes
        from lab.record import LabRecord, tagged_pids

        lab_id = _lab_id_of(self.dir)
        if lab_id is None:
            return
        pids = set(tagged_pids(lab_id)) | set(_pids_in_netns(lab_netns(lab_id)))
        pids |= {p["pid"] for p in _recorded_processes(LabRecord(self.dir), lab_id).values() if p["alive"]}
        pss = rss = 0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        info = _meminfo()
        now = {"pss_mib": pss / 1024, "rss_mib": rss / 1024, "processes": len(pids),
               "used_delta_mib": (info["used"] - self.base["used"]) / 1024,
               "slab_delta_mib": (info["Slab"] - self.base["Slab"]) / 1024}
        self.samples += 1
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)

    def result(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.peak.items()} | {"samples": self.samples}


def _meminfo() -> dict[str, int]:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0])
    info["used"] = info["MemTotal"] - info["MemAvailable"]
    return info


# --------------------------------------------------------------------------- CPU: where the seconds go

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group(name: str) -> str:
    """A lab process's kind, from its pid file's name (runtime-c1-n001 -> runtime)."""
    for prefix, group in (("runtime-", "runtimes (+ their execs: ip, plugin, nsenter)"), ("cni-", "CNI agents"),
                          ("slb-", "SLB agents"), ("etcd", "etcd members"), ("api-", "Kubernetes APIs"),
                          ("build-agent-", "build agent")):
        if name.startswith(prefix):
            return group
    return name


def cpu_snapshot(directory: Path) -> dict[int, tuple[str, float]]:
    """pid -> (kind, CPU seconds of it and its reaped children) for every process of the lab."""
    from lab.fabric import lab_netns
    from lab.lab import _pids_in_netns, _recorded_processes
    from lab.record import LabRecord, tagged_pids

    lab_id = _lab_id_of(directory)
    if lab_id is None:
        return {}
    named = {p["pid"]: _group(n) for n, p in _recorded_processes(LabRecord(directory), lab_id).items() if p["alive"]}
    pids = set(named) | set(tagged_pids(lab_id)) | set(_pids_in_netns(lab_netns(lab_id)))
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2:].split()
            ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            kind = named.get(pid) or {"busybox": "pods (busybox httpd)", "nginx": "nginx"}.get(comm, comm)
            out[pid] = (kind, ticks / CLK_TCK)
    return out


def machine_busy() -> float:
    """CPU seconds the machine spent busy (all CPUs, /proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per kind of process between two snapshots (a process new since ``before`` counts in full)."""
    out: dict[str, float] = {}
    for pid, (kind, seconds) in after.items():
        out[kind] = out.get(kind, 0.0) + seconds - (before[pid][1] if pid in before else 0.0)
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# --------------------------------------------------------------------------- the burst


def names_through_nginx(address: str, port: int, domain: str, expected: set[str]) -> bool:
    """Every name of ``expected`` answered through the Nginx host, within ``GETS_PER_APP`` GETs (keep-alive)."""
    seen: set[str] = set()
    conn = http.client.HTTPConnection(address, port, timeout=3)
    try:
        for _ in range(GETS_PER_APP):
            conn.request("GET", "/", headers={"Host": domain})
            resp = conn.getresponse()
            body = resp.read(4096).decode(errors="replace").strip()
            if resp.status == 200:
                seen.add(body)
            if expected <= seen:
                return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return False


def names_through_every_host(layout: Layout, domain: str, expected: set[str]) -> bool:
    return all(names_through_nginx(ip, layout.port, domain, expected) for ip in layout.nginx.values())


def burst_run(workdir: Path, i: int) -> dict[str, Any]:
    directory = fresh_dir(workdir / f"burst-{i}")
    layout = Layout(BURST_SCENARIO, directory)
    total = sum(layout.replicas.values())
    memory = MemorySampler(directory)
    result: dict[str, Any] = {"pods": total, "apps": len(layout.domains)}
    started = time.monotonic()
    proc = up(BURST_SCENARIO, directory, workdir / f"burst-{i}.log")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    try:
        pidfile = directory / "pids" / "kube-controller.pid"
        t0 = wait_for(pidfile.exists, UP_TIMEOUT, 0.02, proc, "the lab's controller")
        result["controller_started_after_seconds"] = round(t0 - started, 2)
        cpu_before, busy_before = cpu_snapshot(directory), machine_busy()
        timeline: dict[str, float] = {}
        verified: set[str] = set()
        checking: dict[str, concurrent.futures.Future[bool]] = {}
        last_memory = 0.0
        ready: list[tuple[str, str, str]] = []
        ready_by_cell: dict[str, list[tuple[str, str, str]]] = {}
        last_api = 0.0
        while True:
            now = time.monotonic()
            if now - last_memory >= 3.0:
                memory.sample()
                last_memory = now
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"lab up exited {proc.returncode} during the burst")
            if "up_command" not in timeline and proc.poll() == 0:
                timeline["up_command"] = now
            if now - last_api >= 2.0:  # the Cells' APIs are the busiest processes of a burst: asked every 2 s
                for cell, url in layout.apis.items():
                    pods = api_pods(url)
                    if pods is not None:  # else: its last answer stands
                        ready_by_cell[cell] = ready_pods(pods)
                last_api = time.monotonic()
            ready = [p for cell_ready in ready_by_cell.values() for p in cell_ready]
            if len(ready) >= total and "api_all_ready" not in timeline:
                timeline["api_all_ready"] = time.monotonic()
            served = [served_upstreams(layout.admin_socket(h)) for h in layout.nginx]
            by_app: dict[str, dict[str, str]] = {}
            for app, name, ip in ready:
                by_app.setdefault(app, {})[name] = ip
            complete = 0
            for app, domain in layout.domains.items():
                replicas = by_app.get(app, {})
                ips = set(replicas.values())
                in_all = len(replicas) == layout.replicas[app] and all(
                    ips == {s.rsplit(":", 1)[0] for s in up_.get(domain, [])} for up_ in served)
                if in_all:
                    complete += 1
                    if app not in verified and app not in checking:
                        expected = set(replicas)
                        checking[app] = pool.submit(names_through_every_host, layout, domain, expected)
            if served and "first_served" not in timeline and any(any(u.values()) for u in served):
                timeline["first_served"] = time.monotonic()
            if complete == len(layout.domains) and "upstreams_complete" not in timeline:
                timeline["upstreams_complete"] = time.monotonic()
            for app, future in list(checking.items()):
                if future.done():
                    del checking[app]
                    if future.result():
                        verified.add(app)
            if len(verified) == len(layout.domains):
                timeline["all_names_seen"] = time.monotonic()
                break
            if time.monotonic() - t0 > BURST_TIMEOUT:  # recorded as not served, with how far it got
                result["timed_out"] = {"after_seconds": BURST_TIMEOUT, "ready_in_api": len(ready),
                                       "apps_upstreams_complete": complete, "apps_names_seen": len(verified)}
                break
            time.sleep(0.5)
        memory.sample()
        result["cpu_seconds"] = {"machine": round(machine_busy() - busy_before, 1),
                                 **cpu_delta(cpu_before, cpu_snapshot(directory))}
        result["burst_seconds"] = round(timeline["all_names_seen"] - t0, 2) if "all_names_seen" in timeline else None
        result["timeline"] = {k: round(v - t0, 2) for k, v in sorted(timeline.items(), key=lambda kv: kv[1])}
        result["checks"] = verify_burst(layout, ready)
        result["runtime_phases"] = runtime_phases(layout)
        result["memory"] = memory.result()
        proc.wait(UP_TIMEOUT)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        result["down"] = down(directory)
    return result


def verify_burst(layout: Layout, ready: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Addresses distinct and inside their Cells' pools; each pod's OVS port tagged with its pool's VLAN."""
    import ipaddress

    lab_id = _lab_id_of(layout.dir)
    cell_of = {}
    for url_cell, url in layout.apis.items():
        for p in api_pods(url) or []:
            cell_of[p["metadata"]["name"]] = url_cell
    ips = [ip for _, _, ip in ready]
    in_pool = sum(1 for _, name, ip in ready
                  if ipaddress.ip_address(ip) in ipaddress.ip_network(layout.pools[layout.cell_pool[cell_of[name]]][0]))
    out = subprocess.run(["ovs-vsctl", f"--db=unix:{layout.dir / 'ovs' / 'db.sock'}", "--format=json",
                          "--columns=name,tag,external_ids", "list", "Port"], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    tagged = 0
    prefix = f"le-{lab_id}-p-"
    with contextlib.suppress(ValueError):
        for _port, tag, ext in json.loads(out)["data"]:
            external = dict(ext[1])
            netns = str(external.get("leengine/netns", ""))
            pod = Path(netns).name.removeprefix(prefix)
            cell = cell_of.get(pod)
            if cell is not None and tag == layout.pools[layout.cell_pool[cell]][1]:
                tagged += 1
    return {"ready_in_api": len(ready), "distinct_addresses": len(set(ips)), "addresses_in_their_pool": in_pool,
            "ovs_ports_with_pool_vlan": tagged}


def runtime_phases(layout: Layout) -> dict[str, Any]:
    """The runtimes' per-phase seconds (their ``samples`` op): medians, p90 and sums over every pod."""
    phases: dict[str, list[float]] = {}
    for nodes in layout.cell_nodes.values():
        for node in nodes:
            answer = _runtime_request(layout.dir / "run" / f"{node}.sock", {"op": "samples"})
            for key, values in answer.items():
                if isinstance(values, list) and key not in ("cni_del_seconds",):
                    phases.setdefault(key, []).extend(float(v) for v in values)
    out = {}
    for key, values in sorted(phases.items()):
        if values:
            values.sort()
            out[key] = {"n": len(values), "p50": round(statistics.median(values), 4),
                        "p90": round(values[int(0.9 * (len(values) - 1))], 4), "sum": round(sum(values), 1)}
    return out


def _runtime_request(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        return answer if isinstance(answer, dict) else {}
    return {}


# --------------------------------------------------------------------------- main


def span(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if values else "—"


def inside(args: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    refs: list[dict[str, float]] = []
    ups: list[dict[str, Any]] = []
    bursts: list[dict[str, Any]] = []
    for i in range(args.runs if not args.skip_up else 0):
        refs.append(reference())
        ups.append(up_run(workdir, i))
        print(json.dumps({"up": ups[-1], "reference": refs[-1]}), flush=True)
    for i in range(args.burst_runs if not args.skip_burst else 0):
        refs.append(reference())
        bursts.append(burst_run(workdir, i))
        print(json.dumps({"burst": bursts[-1], "reference": refs[-1]}), flush=True)
    exec_rates = [r["exec_per_second"] for r in refs]
    ns_rates = [r["netns_veth_per_second"] for r in refs]
    first = [u["first_served_seconds"] for u in ups]
    downs = [u["down"]["seconds"] for u in ups]
    burst = [b["burst_seconds"] for b in bursts if b["burst_seconds"] is not None]
    burst_downs = [b["down"]["seconds"] for b in bursts]
    pss = [b["memory"]["pss_mib"] for b in bursts]
    summary = {
        "up_first_served_seconds": first, "down_seconds": downs, "burst_seconds": burst,
        "burst_down_seconds": burst_downs, "burst_peak_pss_mib": pss,
        "burst_peak_rss_mib": [b["memory"]["rss_mib"] for b in bursts],
        "burst_used_delta_mib": [b["memory"]["used_delta_mib"] for b in bursts],
        "reference_exec_per_second": exec_rates, "reference_netns_veth_per_second": ns_rates,
        "targets": {"up_first_served_seconds": 60, "down_seconds": 15, "burst_seconds": 30},
        "all_clean": all(u["down"]["clean"] for u in ups + bursts),
        "bursts_not_served": [b["timed_out"] for b in bursts if "timed_out" in b],
    }
    if args.label:
        summary["label"] = args.label
    path = save(args.name, {"summary": summary, "up_runs": ups, "burst_runs": bursts, "reference": refs})
    show("one-machine lab: scale", ["measure", "range", "target"], [
        ["lab up → first pod served through Nginx (s)", span(first), "≤ 60"],
        ["lab down → nothing left (s)", span(downs), "≤ 15"],
        ["1,000-pod burst → all serving (s)", span(burst), "≤ 30"],
        ["lab down after the burst (s)", span(burst_downs), "—"],
        ["peak PSS of the lab's processes (MiB)", span(pss), "—"],
        ["fork+exec /bin/true per s (reference)", span(exec_rates), "—"],
        ["netns + veth made and deleted per s (reference)", span(ns_rates), "—"],
    ])
    print(f"results: {path}")
    return 0 if summary["all_clean"] and not summary["bursts_not_served"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lab_scale", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="lab up/down runs (lab-scale.yaml)")
    p.add_argument("--burst-runs", type=int, default=3, help="1,000-pod burst runs (lab-burst-1000.yaml)")
    p.add_argument("--skip-up", action="store_true")
    p.add_argument("--skip-burst", action="store_true")
    p.add_argument("--workdir", default="/tmp/leengine-lab-scale", help="the labs' directories (made mode 755)")
    p.add_argument("--name", default="lab_scale", help="results file bench/results/NAME.json")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. before/after a change)")
    p.add_argument(INSIDE, dest="inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.lab_scale: needs root (network namespaces, Open vSwitch)", file=sys.stderr)
        return 2
    if args.inside:
        return inside(args)
    # A private network namespace plays "the machine": no other lab's OVS or management network is seen.
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    return subprocess.run(["unshare", "--net", "--", sys.executable, "-m", "bench.lab_scale", INSIDE, *forwarded],
                          cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
