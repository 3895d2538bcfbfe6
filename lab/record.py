"""The lab directory: ``lab.json`` (what the lab is) and ``made.jsonl`` (the intent log of what it made).

Layout of a lab directory DIR (one lab per DIR)::

    DIR/lab.json      id, scenario path + sha256, plan summary, created time, processes
                      (name -> pid file, log, metrics URL); written atomically (temp file + rename)
    DIR/made.jsonl    append-only: one JSON object per thing, written and fsynced BEFORE it is made:
                      {"kind": "lab"|"netns"|"bridge"|"veth"|"process"|"dir", "name": ..., ...}
    DIR/pids/P.pid    the pid of process P;  DIR/logs/P.log its log;  DIR/run/ sockets
    DIR/ovs/          the lab's private Open vSwitch (database, sockets)

The first line of ``made.jsonl`` names the lab id (kind ``lab``), so a crash before ``lab.json``
exists still leaves the id behind for ``lab down``.

Invariants (trust nothing read back): whatever ``lab down`` removes because the record names it
must also carry this lab's id: a netns only if its name starts with ``le-<id>-``, a kernel
interface only if it starts with ``l<id>``, a bridge only if its ``external_ids:leengine-lab``
is the id (lab/fabric.py checks that), a process only if ``/proc/PID/environ`` holds
``LEENGINE_LAB=<id>``, a directory only if it lies inside DIR (no symlink on the way). A
corrupt or hostile line is skipped and reported, never acted on.

It must not know how a thing is made or removed (lab/fabric.py, lab/lab.py do that).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.plan import LabPlanError, check_lab_id, ifname_prefix, netns_prefix
from lab.processes import is_running

KINDS = ("lab", "netns", "bridge", "veth", "process", "dir")
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record larger than this is not ours
LAB_ENV = "LEENGINE_LAB"


class RecordError(RuntimeError):
    """The lab directory holds no usable record (no id can be trusted)."""


@dataclass(frozen=True)
class ProcessEntry:
    name: str
    pidfile: str
    log: str
    metrics_url: str | None = None
    host: str | None = None  # the netns host it runs in; None: the root netns


@dataclass
class LabInfo:
    """What lab.json holds, validated."""

    id: str
    scenario: str
    scenario_sha256: str
    created: float
    plan: dict[str, Any]
    mgmt_cidr: str = ""
    processes: dict[str, ProcessEntry] = field(default_factory=dict)
    state: str = "up"  # "starting" while lab up runs, "up" once it finished

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "scenario": self.scenario, "scenario_sha256": self.scenario_sha256,
                "created": self.created, "state": self.state, "mgmt_cidr": self.mgmt_cidr, "plan": self.plan,
                "processes": {n: {k: v for k, v in vars(p).items() if k != "name"} for n, p in self.processes.items()}}


def process_name_ok(name: str) -> bool:
    """A process name usable as a pidfile/log name: no path separator, no dot-dot, printable, short."""
    return (isinstance(name, str) and 0 < len(name) <= 100 and "/" not in name and "\0" not in name
            and name not in (".", "..") and name.isprintable() and not name.startswith("."))


class LabRecord:
    """One lab directory: its lab.json and made.jsonl."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    # ---- paths
    @property
    def lab_json(self) -> Path:
        return self.dir / "lab.json"

    @property
    def made_log(self) -> Path:
        return self.dir / "made.jsonl"

    @property
    def pids_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def exists(self) -> bool:
        return self.lab_json.exists() or self.made_log.exists()

    # ---- writing
    def create(self, info: LabInfo) -> None:
        """Start a new record: the directories, the id as made.jsonl's first line, then lab.json."""
        check_lab_id(info.id)
        for d in (self.dir, self.pids_dir, self.logs_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.intend("lab", info.id)
        self.write(info)

    def intend(self, kind: str, name: str, **extra: Any) -> None:
        """Append one intent and fsync it (call BEFORE making the thing)."""
        self.intend_many([{"kind": kind, "name": name, **extra}])

    def intend_many(self, entries: list[dict[str, Any]]) -> None:
        """Append several intents with one fsync (before making any of them)."""
        if not entries:
            return
        for e in entries:
            if e.get("kind") not in KINDS or not isinstance(e.get("name"), str):
                raise ValueError(f"not an intent: {e!r}")
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        fd = os.open(self.made_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, info: LabInfo) -> None:
        """Write lab.json atomically (a reader sees the old or the new one, never half)."""
        tmp = self.dir / f".lab.json.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(info.as_dict(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.lab_json)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise read-modify-write of lab.json between the lab's own writers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add_process(self, entry: ProcessEntry) -> None:
        """Name a process in lab.json (its pid file, log and metrics URL)."""
        if not process_name_ok(entry.name):
            raise ValueError(f"bad process name {entry.name!r}")
        with self.locked():
            info = self.load()
            info.processes[entry.name] = entry
            self.write(info)

    def set_state(self, state: str) -> None:
        with self.locked():
            info = self.load()
            info.state = state
            self.write(info)

    # ---- reading (validated)
    def load(self) -> LabInfo:
        """lab.json, validated; ``RecordError`` if missing or unusable."""
        try:
            raw = _read_limited(self.lab_json)
            data = json.loads(raw)
        except FileNotFoundError:
            raise RecordError(f"no lab in {self.dir} (no lab.json)") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise RecordError(f"{self.lab_json} is unreadable: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise RecordError(f"{self.lab_json} is not a JSON object")
        try:
            lab_id = check_lab_id(data.get("id"))  # type: ignore[arg-type]  # checked right here
        except LabPlanError as exc:
            raise RecordError(f"{self.lab_json}: {exc}") from None
        procs: dict[str, ProcessEntry] = {}
        raw_procs = data.get("processes")
        for name, p in (raw_procs.items() if isinstance(raw_procs, dict) else ()):
            if process_name_ok(name) and isinstance(p, dict) and isinstance(p.get("pidfile"), str):
                host = p.get("host") if isinstance(p.get("host"), str) else None
                url = p.get("metrics_url") if isinstance(p.get("metrics_url"), str) else None
                procs[name] = ProcessEntry(name, p["pidfile"], str(p.get("log", "")), url, host)
        created = data.get("created")
        return LabInfo(
            id=lab_id, scenario=str(data.get("scenario", "")), scenario_sha256=str(data.get("scenario_sha256", "")),
            created=float(created) if isinstance(created, int | float) else 0.0,
            plan=data["plan"] if isinstance(data.get("plan"), dict) else {},
            mgmt_cidr=str(data.get("mgmt_cidr", "")), processes=procs,
            state=str(data.get("state", "")))

    def made(self) -> tuple[list[dict[str, Any]], int]:
        """The intent log's well-formed entries in order, and how many lines were skipped as malformed."""
        try:
            raw = _read_limited(self.made_log)
        except FileNotFoundError:
            return [], 0
        entries: list[dict[str, Any]] = []
        skipped = 0
        for line in raw.decode(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except (ValueError, RecursionError):
                skipped += 1
                continue
            if isinstance(e, dict) and e.get("kind") in KINDS and isinstance(e.get("name"), str):
                entries.append(e)
            else:
                skipped += 1
        return entries, skipped

    def lab_id(self) -> str:
        """The lab's id: lab.json's, else made.jsonl's first ``lab`` line; ``RecordError`` if neither is usable."""
        try:
            return self.load().id
        except RecordError as first:
            for e in self.made()[0]:
                if e["kind"] == "lab":
                    try:
                        return check_lab_id(e["name"])
                    except LabPlanError:
                        break
            raise first from None

    def inside(self, path: str | Path) -> Path | None:
        """``path`` resolved, if it lies inside the lab directory (symlinks resolved); else None."""
        try:
            root = self.dir.resolve(strict=True)
            resolved = Path(path).resolve(strict=False)
        except (OSError, RuntimeError):
            return None
        return resolved if resolved != root and resolved.is_relative_to(root) else None


def _read_limited(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_RECORD_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError("record too large")
    return data


# --------------------------------------------------------------------------- the tags


def names_netns_of(lab_id: str, name: object) -> bool:
    """Whether ``name`` is a netns name of lab ``lab_id`` (``le-<id>-...``, no path tricks)."""
    pre = netns_prefix(lab_id)
    return (isinstance(name, str) and name.startswith(pre) and len(name) > len(pre) and len(name) <= 255
            and "/" not in name and "\0" not in name and name.isprintable() and " " not in name)


def names_ifname_of(lab_id: str, name: object) -> bool:
    """Whether ``name`` is an interface name of lab ``lab_id`` (``l<id>...``, at most 15 characters)."""
    pre = ifname_prefix(lab_id)
    return (isinstance(name, str) and name.startswith(pre) and len(name) <= 15
            and all(c.isalnum() or c in "-_." for c in name))


def read_pidfile(path: str | Path) -> int | None:
    """The pid a pid file names, or None (missing, not a positive number)."""
    try:
        text = Path(path).read_text()[:32].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 1 < int(text) < 2**22 else None


def process_lab(pid: int) -> str | None:
    """The ``LEENGINE_LAB`` of a running process, or None (gone, a zombie, untagged, unreadable)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    if not is_running(pid):
        return None
    for var in environ.split(b"\0"):
        if var.startswith(LAB_ENV.encode() + b"="):
            return var.split(b"=", 1)[1].decode(errors="replace")
    return None


def pid_is_ours(pid: int, lab_id: str) -> bool:
    return pid != os.getpid() and process_lab(pid) == lab_id


def tagged_pids(lab_id: str) -> list[int]:
    """Every live process whose environment says ``LEENGINE_LAB=<lab_id>`` (this process excepted)."""
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != me and process_lab(int(entry.name)) == lab_id:
            out.append(int(entry.name))
    return sorted(out)


def stop_pids(pids: list[int], lab_id: str, timeout: float = 5.0) -> list[int]:
    """SIGTERM every pid still carrying the lab's tag, wait up to ``timeout``, SIGKILL the rest; the pids signalled."""
    targets = [p for p in pids if pid_is_ours(p, lab_id)]
    for p in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_is_ours(p, lab_id) for p in targets):
        time.sleep(0.05)
    for p in targets:
        if pid_is_ours(p, lab_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_is_ours(p, lab_id) for p in targets):
        time.sleep(0.02)
    return targets
