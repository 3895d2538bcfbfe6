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

Each attempt of a task carries a fresh ``push_secret`` (the scheduler mints one on submit and
on every move): the registry's token endpoint issues push rights to ``build$TASK`` only for the
secret of the task record as it is now (``control.build_credentials``), so an agent that lost
its task cannot push. Builds push to ``image_repository(app)`` = ``{app}/{app}``.

A task is one commit of one app: its id is ``{app}@{commit}``, so submitting the same
commit twice builds it once. **Placement** is a rendezvous hash of the repository over
the live agents: the same repo lands on the same host while it lives (its dependency
cache stays warm), and when that host dies only its repos move, each to its next host.

A commit is a **full commit id** (40 lowercase hex digits; 64 in a SHA-256 repository),
never a ref: ``HEAD``, a branch, a tag, ``a..b`` or a short id can name another commit
tomorrow, and the task id, the image tag and "a commit builds once" all assume that
``{app}@{commit}`` means one tree forever. The deploy pipeline resolves its ref before
submitting; the builder checks that what it checked out is that commit.

Security: app, repo, commit and host are checked against narrow grammars before they
become keys or reach a builder's command line. Every record read back from etcd is
untrusted: ``Task.from_bytes`` and ``Result.from_bytes`` turn **any** failure (bad JSON,
nesting deep enough for a ``RecursionError``, huge numbers, wrong types, a record over
``MAX_RECORD`` bytes) into a ``TaskError`` naming the field, never another exception.
Echoed values are cut to a few dozen characters. It must not know the store or runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
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
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full SHA-1 (or SHA-256) commit id: immutable
TASK_ID = re.compile(r"(?P<app>[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)@(?P<commit>[0-9a-f]{40}|[0-9a-f]{64})")
MAX_RECORD = 256 * 1024  # bytes of one task or result record (a result holds at most 20 log lines)
MAX_ATTEMPT = 1_000_000
MAX_TEXT = 64 * 1024  # characters of a result's error, image or one log line
REPO = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*")  # path-like, no '..', no leading '/'
RESULT_STATES = ("done", "failed", "cancelled")  # cancelled: written by the scheduler with the task's removal
PUSH_SECRET = re.compile(r"[0-9a-f]{32}")  # a build attempt's registry password: 16 random bytes in hex


class TaskError(ValueError):
    """A field that may not become a key or a builder argument: ``field`` says which."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def echo(value: Any, limit: int = 60) -> str:
    """``repr`` of a user-given value, cut: an error never carries a megabyte of someone's input."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[:4 * limit])
    return text if len(text) <= limit else f"{text[:limit]}…"


def _check(field_name: str, value: Any, pattern: re.Pattern[str], what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit or not pattern.fullmatch(value):
        raise TaskError(field_name, f"{echo(value)} is not {what}")
    return value


def check_commit(commit: Any) -> str:
    return _check("commit", commit, COMMIT, "a full commit id (40 lowercase hex digits, or 64 for SHA-256; "
                                            "a ref such as HEAD, a branch, a tag or a short id can move)")


def check_task_id(task: Any) -> str:
    """A task id as it appears in keys: ``{app}@{commit}``, both by their grammars."""
    return _check("task", task, TASK_ID, "a task id ({app}@{full commit id})")


def _time(field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TaskError(field_name, f"{echo(value)} is not a time")
    try:
        seconds = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise TaskError(field_name, "is not a finite time") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise TaskError(field_name, f"{echo(value)} is not a finite time >= 0")
    return seconds


def _attempt(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPT:
        raise TaskError("attempt", f"{echo(value)} is not an integer in 1..{MAX_ATTEMPT}")
    return value


def _text(field_name: str, value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TaskError(field_name, f"{echo(value)} is not a string of at most {limit} characters")
    return value


def _decode(raw: Any, what: str) -> dict[str, Any]:
    """JSON object from etcd bytes; any failure at all (nesting, size, encoding, numbers) is a TaskError."""
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) > MAX_RECORD:
        raise TaskError(what, f"the record is not bytes of at most {MAX_RECORD}")
    try:
        data = json.loads(bytes(raw))
    except RecursionError:  # "[" * 100000: the decoder recurses once per level
        raise TaskError(what, "the record is nested too deeply to be one") from None
    except Exception as exc:  # ValueError, UnicodeDecodeError, a 5,000-digit integer, MemoryError's cousins
        raise TaskError(what, f"the record is not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise TaskError(what, "the record must be an object")
    return data


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


def image_repository(app: str) -> str:
    """The registry repository an app's builds push to: ``{app}/{app}``, in the app's own image group.

    Tags are full commit ids (immutable: the registry gate refuses another digest under one).
    """
    return f"{app}/{app}"


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
    # This attempt's registry password (username ``build$TASK``): minted on submit and anew on each move,
    # so an agent that lost the task holds a secret no token is issued for. Never in a repr, log or trace.
    push_secret: str = field(default="", repr=False)

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
        commit = check_commit(data.get("commit"))
        state = data.get("state", "queued")
        if not isinstance(state, str) or state not in ("queued", "running"):
            raise TaskError("state", f"{echo(state)} is not queued or running")
        attempt = _attempt(data.get("attempt", 1))
        times = [_time(name, data.get(name, 0.0)) for name in ("submitted_at", "started_at")]
        push_secret = data.get("push_secret", "")
        if not isinstance(push_secret, str) or not (push_secret == "" or PUSH_SECRET.fullmatch(push_secret)):
            raise TaskError("push_secret", "is not empty or 32 lowercase hex digits")  # never echoed: a credential
        return Task(app, repo, commit, times[0], attempt, state, times[1], push_secret)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Task:
        """A task record read back from etcd: validated again; anything wrong is a ``TaskError``."""
        return Task.parse(_decode(raw, "task"))


@dataclass(frozen=True)
class Result:
    task: str
    state: str  # done | failed | cancelled (superseded by a newer push to its branch: control.webhooks)
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
        """A result record read back from etcd: every field checked; anything wrong is a ``TaskError``."""
        data = _decode(raw, "result")
        task = check_task_id(data.get("task"))
        state = data.get("state")
        if not isinstance(state, str) or state not in RESULT_STATES:
            raise TaskError("state", f"{echo(state)} is not done, failed or cancelled")
        host = check_host(data.get("host"))
        attempt = _attempt(data.get("attempt"))
        image = _text("image", data.get("image", ""), 1000)
        steps = data.get("steps", [])
        if not isinstance(steps, list) or len(steps) > 16:
            raise TaskError("steps", "is not a list of at most 16 [step, seconds] pairs")
        parsed_steps = []
        for step in steps:
            if not isinstance(step, list) or len(step) != 2:
                raise TaskError("steps", f"{echo(step)} is not a [step, seconds] pair")
            parsed_steps.append((_text("steps", step[0], 64), _time("steps", step[1])))
        cache_hit = data.get("cache_hit", False)
        if not isinstance(cache_hit, bool):
            raise TaskError("cache_hit", f"{echo(cache_hit)} is not true or false")
        error = _text("error", data.get("error", ""))
        times = [_time(name, data.get(name, 0.0)) for name in ("submitted_at", "finished_at")]
        log = data.get("log", [])
        if not isinstance(log, list) or len(log) > 100:
            raise TaskError("log", "is not a list of at most 100 lines")
        lines = tuple(_text("log", line) for line in log)
        return Result(task, state, host, attempt, image, tuple(parsed_steps), cache_hit, error, times[0], times[1],
                      lines)
