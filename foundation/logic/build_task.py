"""Build tasks as the control service writes them and build agents read them: records, keys, placement.

Keys (docs/keys.md):

* ``/build/agents/{host}``: a build agent's registration, under its lease (gone when
  the host dies);
* ``/build/tasks/{host}/{task}``: a task queued on (or running on) ``host``;
* ``/build/results/{task}``: the outcome, written by the agent that built it, in the
  same transaction that removes the task (so a task is either queued somewhere or
  finished, never both, never neither);
* ``/build/ids/{task}``: claimed by the scheduler when the task is first queued (value:
  the host it is queued on, updated by moves), so a commit is queued once.

A task is one commit of one app: its id is ``{app}@{commit}``, so submitting the same
commit twice builds it once. **Placement** is a rendezvous hash of the repository over
the live agents: the same repo lands on the same host while it lives (its dependency
cache stays warm), and when that host dies only its repos move, each to its next host.

Security: app, repo, commit and host are checked against narrow grammars before they
become keys or reach a builder's command line. It must not know the store or runtime.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

BUILD = "/build/"
AGENTS = f"{BUILD}agents/"
TASKS = f"{BUILD}tasks/"
RESULTS = f"{BUILD}results/"
IDS = f"{BUILD}ids/"

APP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
COMMIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPO = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*")  # path-like, no '..', no leading '/'


class TaskError(ValueError):
    """A field that may not become a key or a builder argument: ``field`` says which."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _check(field_name: str, value: Any, pattern: re.Pattern[str], what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit or not pattern.fullmatch(value):
        raise TaskError(field_name, f"{value!r} is not {what}")
    return value


def check_host(host: Any) -> str:
    return _check("host", host, HOST_NAME, "a host name ([a-z0-9-], at most 63)")


def task_id(app: str, commit: str) -> str:
    return f"{app}@{commit}"


def agent_key(host: str) -> str:
    return f"{AGENTS}{host}"


def task_prefix(host: str) -> str:
    return f"{TASKS}{host}/"


def task_key(host: str, task: str) -> str:
    return f"{task_prefix(host)}{task}"


def id_key(task: str) -> str:
    """Claimed when the task is first queued (value: the host it is queued on): a commit builds once."""
    return f"{IDS}{task}"


def result_key(task: str) -> str:
    return f"{RESULTS}{task}"


def rank_hosts(repo: str, hosts: list[str]) -> list[str]:
    """Rendezvous (highest random weight) order of ``hosts`` for ``repo``: the first one builds it."""
    def weight(host: str) -> bytes:
        return hashlib.sha256(f"{host}\0{repo}".encode()).digest()
    return sorted(hosts, key=weight, reverse=True)


@dataclass(frozen=True)
class Task:
    app: str
    repo: str
    commit: str
    submitted_at: float = 0.0
    attempt: int = 1  # 2, 3, … after moves off dead hosts
    state: str = "queued"  # queued | running (on the host whose prefix holds it)
    started_at: float = 0.0

    @property
    def id(self) -> str:
        return task_id(self.app, self.commit)

    @staticmethod
    def parse(data: Any) -> Task:
        if not isinstance(data, dict):
            raise TaskError("task", "must be an object")
        app = _check("app", data.get("app"), APP_NAME, "an app name ([a-z0-9-], at most 63)")
        repo = _check("repo", data.get("repo", app), REPO, "a repository path ([a-z0-9._-] segments joined by '/')")
        if ".." in repo.split("/"):
            raise TaskError("repo", f"{repo!r} climbs out of the repositories root")
        commit = _check("commit", data.get("commit"), COMMIT, "a commit or tag ([A-Za-z0-9._-], at most 64)")
        state = data.get("state", "queued")
        if state not in ("queued", "running"):
            raise TaskError("state", f"{state!r} is not queued or running")
        attempt = data.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise TaskError("attempt", f"{attempt!r} is not a positive integer")
        times = []
        for name in ("submitted_at", "started_at"):
            value = data.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TaskError(name, f"{value!r} is not a time")
            times.append(float(value))
        return Task(app, repo, commit, times[0], attempt, state, times[1])

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Task:
        return Task.parse(json.loads(raw))


@dataclass(frozen=True)
class Result:
    task: str
    state: str  # done | failed
    host: str
    attempt: int
    image: str = ""
    steps: tuple[tuple[str, float], ...] = ()
    cache_hit: bool = False
    error: str = ""
    submitted_at: float = 0.0
    finished_at: float = 0.0
    log: tuple[str, ...] = field(default=())

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["steps"] = [list(s) for s in self.steps]
        data["log"] = list(self.log)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Result:
        data = json.loads(raw)
        return Result(data["task"], data["state"], data["host"], int(data["attempt"]), data.get("image", ""),
                      tuple((str(s), float(t)) for s, t in data.get("steps", ())), bool(data.get("cache_hit")),
                      data.get("error", ""), float(data.get("submitted_at", 0.0)),
                      float(data.get("finished_at", 0.0)), tuple(data.get("log", ())))
