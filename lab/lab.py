"""The one-machine lab as an object: ``Lab.up(dir, scenario)``, ``Lab.load(dir)``, ``lab.status()``, ``down_lab(dir)``.

``up`` = record (lab.json + the intent log) -> the lab's private OVS -> the fabric (lab/fabric.py)
-> the services (``lab.services.start_services(lab)``, imported lazily). A failure on the way
tears down what was made and re-raises. ``down_lab`` works from the lab directory alone (no
scenario, no plan), so it cleans up after a crash of ``lab up`` itself, and is idempotent:

1. processes: pid files, the record's process intents and a scan of ``/proc`` for
   ``LEENGINE_LAB=<id>`` and for processes inside the lab's namespaces; SIGTERM, then SIGKILL
   (the lab's OVS last: it must still answer while its bridges are deleted);
2. bridges whose ``external_ids:leengine-lab`` is the id; then OVS itself;
3. namespaces ``le-<id>-*`` and interfaces ``l<id>*``;
4. the directory's runtime files (pids, run, launch, ovs, sockets, lab.json, made.jsonl);
   ``DIR/logs`` is kept for a post-mortem.

Invariants: one lab per directory; ``up`` refuses a directory holding a live lab and a
management address another lab already holds; everything removed carries the lab's id
(lab/record.py's checks), whatever the record says.

It must not know what the services are (lab/services.py) nor how a fault is played (lab/faults.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.fabric import (
    OVS_PROCESSES,
    Fabric,
    FabricError,
    OvsCtl,
    foreign_userspace_switch,
    lab_links,
    lab_netns,
    remove_bridges,
    remove_kernel,
    start_ovs,
)
from lab.plan import DEFAULT_MGMT_CIDR, LabPlan, LabPlanError, plan_lab
from lab.processes import is_running
from lab.record import (
    LabInfo,
    LabRecord,
    RecordError,
    pid_is_ours,
    process_name_ok,
    read_pidfile,
    stop_pids,
    tagged_pids,
)

log = logging.getLogger("leengine.lab")
DEFAULT_DIR = Path("/var/lib/leengine/lab")
RUNTIME_ENTRIES = ("pids", "run", "launch", "ovs", "links.sock", "links.json", "discovery.yaml", "made.jsonl",
                   "lab.json", ".lock")


class LabError(RuntimeError):
    """The lab cannot be brought up, read or torn down; the message says why and what to do."""


class LabInputError(LabError):
    """The scenario does not validate or cannot be laid out as a lab: nothing was made."""


@dataclass
class DownReport:
    id: str | None
    processes: list[int] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped_records: int = 0
    left: dict[str, list[Any]] = field(default_factory=dict)  # what still carries the id afterwards
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not any(self.left.values())

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "clean": self.clean}


def _scenario(path: Path) -> Any:
    """The scenario at ``path``, scaled for the lab (``sim.scenario_lab.lab_scaled``); ``LabError`` if unusable."""
    from sim.scenario import ScenarioError, load_scenario

    try:
        loaded = load_scenario(path)
    except ScenarioError as exc:
        raise LabInputError(str(exc)) from None
    try:
        from sim.scenario_lab import lab_scaled
    except ImportError:  # pragma: no cover - before slice S landed
        return loaded, loaded.spec
    return loaded, lab_scaled(loaded.spec)


class Lab:
    """One lab: its plan (names, addresses, ports) and its record (the directory)."""

    def __init__(self, plan: LabPlan, record: LabRecord, scenario_path: Path | None = None) -> None:
        self.plan = plan
        self.record = record
        self.scenario_path = scenario_path
        self.fabric = Fabric(plan, record)

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def dir(self) -> Path:
        return self.plan.dir

    # ------------------------------------------------------------------ up

    @classmethod
    def up(cls, directory: Path, scenario: Path, *, mgmt_cidr: str = DEFAULT_MGMT_CIDR, services: bool = True,
           lab_id: str | None = None) -> Lab:
        """Bring a lab of ``scenario`` up in ``directory``; on failure remove what was made and raise."""
        directory = Path(directory).absolute()
        scenario = Path(scenario).absolute()
        loaded, spec = _scenario(scenario)
        record = LabRecord(directory)
        _refuse_live_lab(record)
        try:
            plan = plan_lab(spec, lab_id or secrets.token_hex(2), directory, mgmt_cidr=mgmt_cidr)
        except LabPlanError as exc:
            raise LabInputError(f"{scenario}: {exc}") from None
        _refuse_taken_network(plan)
        other = foreign_userspace_switch()
        if other is not None:
            raise LabError(f"another Open vSwitch userspace datapath runs in this network namespace ({other}); "
                           "only one can: stop it first")
        record.create(LabInfo(plan.id, str(scenario), loaded.sha256, time.time(), plan.summary(),
                              mgmt_cidr=plan.mgmt_cidr, state="starting"))
        lab = cls(plan, record, scenario)
        try:
            start_ovs(plan, record)
            lab.fabric.make()
            if services:
                from lab import services as lab_services  # slice R's; imported only when services are wanted

                try:
                    lab_services.start_services(lab)
                except lab_services.ServiceError as exc:  # a daemon that would not start: one line, not a traceback
                    raise LabError(f"lab up failed, everything it made was removed: {exc}") from None
            record.set_state("up")
        except BaseException as exc:
            log.error("lab up failed (%s); removing what it made", exc)
            with contextlib.suppress(Exception):
                down_lab(directory)
            if isinstance(exc, FabricError | OSError | RecordError):
                raise LabError(f"lab up failed, everything it made was removed: {exc}") from None
            raise
        return lab

    # ------------------------------------------------------------------ load, status

    @classmethod
    def load(cls, directory: Path) -> Lab:
        """The lab recorded in ``directory`` (its plan recomputed from the recorded scenario)."""
        record = LabRecord(Path(directory).absolute())
        try:
            info = record.load()
        except RecordError as exc:
            raise LabError(str(exc)) from None
        scenario = Path(info.scenario)
        loaded, spec = _scenario(scenario)
        if info.scenario_sha256 and loaded.sha256 != info.scenario_sha256:
            raise LabError(f"{scenario} changed since lab up (sha256 {loaded.sha256[:12]} != "
                           f"{info.scenario_sha256[:12]}): its plan is not the lab's any more; run lab down")
        try:
            plan = plan_lab(spec, info.id, record.dir, mgmt_cidr=info.mgmt_cidr or DEFAULT_MGMT_CIDR)
        except LabPlanError as exc:
            raise LabError(f"{scenario}: {exc}") from None
        return cls(plan, record, scenario)

    def processes(self) -> dict[str, dict[str, Any]]:
        """Every recorded process: pid (None if no pid file) and whether it is alive (and ours)."""
        return _recorded_processes(self.record, self.id)

    def status(self) -> dict[str, Any]:
        """Processes, fabric and (from the services) pool use and serving state."""
        info = self.record.load()
        ovs = OvsCtl(self.plan.ovs_dir)
        ovs_up = ovs.answers()
        bridges = ovs.lab_bridges(self.id) if ovs_up else []
        status: dict[str, Any] = {
            "id": self.id, "dir": str(self.dir), "state": info.state, "scenario": info.scenario,
            "created": info.created, "processes": self.processes(),
            "fabric": {"ovs": ovs_up, "bridges": len(bridges), "bridges_planned": len(self.plan.bridges),
                       "netns": len(lab_netns(self.id)),
                       "cells_cut": [c for c in self.plan.cells if ovs_up and self.fabric.cell_is_cut(c)]},
            "metrics": {name: m.url for name, m in self.plan.ports.metrics.items()},
        }
        try:
            from lab import services as lab_services

            status["services"] = lab_services.services_status(self)
        except (ImportError, AttributeError) as exc:
            status["services"] = [{"kind": "error", "error": f"service status unavailable: {exc}"}]
        except Exception as exc:  # status shows what it can, whatever one part says
            status["services"] = [{"kind": "error", "error": f"{type(exc).__name__}: {exc}"}]
        return status

    def down(self) -> DownReport:
        return down_lab(self.dir)


# --------------------------------------------------------------------------- guards


def lab_is_live(record: LabRecord) -> str | None:
    """The id of a live lab recorded in the directory (a tagged process, netns or interface remains), or None."""
    try:
        lab_id = record.lab_id()
    except RecordError:
        return None
    if tagged_pids(lab_id) or lab_netns(lab_id) or lab_links(lab_id):
        return lab_id
    return None


def _refuse_live_lab(record: LabRecord) -> None:
    live = lab_is_live(record)
    if live is not None:
        raise LabError(f"{record.dir} already holds lab {live}, which is up: run `leengine lab down --dir "
                       f"{record.dir}` first")
    if record.exists():  # a dead lab's record (a crash): clear it before starting afresh
        down_lab(record.dir)


def _refuse_taken_network(plan: LabPlan) -> None:
    import subprocess

    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    for line in out.split("\n"):
        if f" {plan.root_mgmt_ip}/" in line:
            raise LabError(f"{plan.root_mgmt_ip} is already assigned here ({' '.join(line.split()[:2])}): another "
                           f"lab runs on {plan.mgmt_cidr}; tear it down or pick another management network")


# --------------------------------------------------------------------------- down


def _recorded_processes(record: LabRecord, lab_id: str) -> dict[str, dict[str, Any]]:
    pidfiles: dict[str, Path] = {}
    with contextlib.suppress(RecordError):
        for name, entry in record.load().processes.items():
            path = record.inside(entry.pidfile)
            if path is not None:
                pidfiles[name] = path
    with contextlib.suppress(OSError):
        for f in sorted(record.pids_dir.glob("*.pid")):
            if process_name_ok(f.stem):
                pidfiles.setdefault(f.stem, f)
    out: dict[str, dict[str, Any]] = {}
    for name, path in pidfiles.items():
        pid = read_pidfile(path)
        out[name] = {"pid": pid, "alive": pid is not None and pid_is_ours(pid, lab_id)}
    return out


def _pids_in_netns(namespaces: list[str]) -> list[int]:
    """Processes living in any of the named namespaces (tagged or not: they would keep a deleted netns alive)."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
    if not inodes:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry.name}/ns/net").st_ino in inodes:
                    pids.append(int(entry.name))
    return pids


def _kill_in_netns(namespaces: list[str], rounds: int = 50) -> list[int]:
    """SIGKILL every process in the namespaces, and again until none is left (at most ``rounds`` scans).

    One scan is not enough: a process killed after the scan may have forked before it died (an
    Nginx master in the middle of a reload forks new workers, which outlive it and would keep
    the netns, untagged: Nginx workers get an empty environment)."""
    killed: list[int] = []
    for _ in range(rounds):
        found = [p for p in _pids_in_netns(namespaces) if p not in killed or is_running(p)]
        if not found:
            break
        killed += [p for p in _kill(found) if p not in killed]
        time.sleep(0.02)
    return killed


def _is_ovs(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in OVS_PROCESSES
    except OSError:
        return False


def _kill(pids: list[int]) -> list[int]:
    import signal

    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return pids


def down_lab(directory: Path) -> DownReport:
    """Remove everything the lab in ``directory`` made (see the module docstring); idempotent."""
    started = time.monotonic()
    record = LabRecord(Path(directory).absolute())
    try:
        lab_id = record.lab_id()
    except RecordError:
        if record.exists():
            raise LabError(f"{record.dir} holds no readable lab id (lab.json and made.jsonl both unusable): "
                           "nothing can be removed safely by tag") from None
        return DownReport(None, seconds=time.monotonic() - started)
    report = DownReport(lab_id)
    entries, report.skipped_records = record.made()

    # 1. processes: recorded ones and every tagged one, OVS excepted; then those inside our namespaces
    candidates = {p["pid"] for p in _recorded_processes(record, lab_id).values() if p["pid"]}
    for e in entries:
        if e["kind"] == "process" and isinstance(e.get("pidfile"), str):
            path = record.inside(e["pidfile"])
            pid = read_pidfile(path) if path is not None else None
            if pid is not None:
                candidates.add(pid)
    candidates |= set(tagged_pids(lab_id))
    report.processes += stop_pids(sorted(p for p in candidates if not _is_ovs(p)), lab_id)
    report.processes += _kill_in_netns(lab_netns(lab_id))

    # 2. bridges while the lab's OVS still answers, then OVS itself (and any tagged process left)
    try:
        report.bridges = remove_bridges(lab_id, record.dir)
    except FabricError as exc:
        log.warning("lab %s: bridges not removed through OVS (%s); their devices go by name below", lab_id, exc)
    report.processes += stop_pids(tagged_pids(lab_id), lab_id)

    # 3. namespaces and interfaces (what a dying process forked meanwhile goes first)
    report.processes += [p for p in _kill_in_netns(lab_netns(lab_id)) if p not in report.processes]
    removed = remove_kernel(lab_id)
    report.netns, report.interfaces = removed["netns"], removed["interfaces"]

    # 4. the directory's runtime files (logs kept), and directories the record says it made inside DIR
    for e in entries:
        if e["kind"] == "dir":
            path = record.inside(e["name"])
            if path is not None and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                report.files.append(str(path))
    for name in RUNTIME_ENTRIES:
        path = record.dir / name
        if path.is_symlink() or path.is_file() or path.is_socket():
            path.unlink(missing_ok=True)
            report.files.append(str(path))
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            report.files.append(str(path))
    with contextlib.suppress(OSError):
        for tmp in record.dir.glob(".lab.json.*.tmp"):
            tmp.unlink()

    report.left = {"processes": tagged_pids(lab_id), "netns": lab_netns(lab_id), "interfaces": lab_links(lab_id)}
    report.seconds = round(time.monotonic() - started, 3)
    return report
