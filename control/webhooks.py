"""Builds on push: GitLab repository bindings and the Push Hook receiver's logic.

An app's Master binds one GitLab project and one branch to the app (``bind``); the call
returns a secret **once** (only its SHA-256 is stored). GitLab sends every push of the
project to ``POST /hooks/gitlab`` (``leengine/hook_http.py``) with that secret in
``X-Gitlab-Token``; ``deliver`` checks the request and queues a build of the push's
``checkout_sha`` through the build scheduler (``BuildQueue``, which
``control.builds.BuildScheduler`` satisfies; the sim world calls ``deliver`` in-process).

Guarantees:

* **exactly one build per (repository, commit)**: the scheduler's claim of
  ``/build/ids/{app}@{commit}`` is created once, ever; a second delivery of the same push
  (GitLab's retries, "Resend request", a receiver killed after its write) finds it and is
  answered ``duplicate``;
* **a newer push cancels the older build**: the branch head record
  ``/build/branches/{app}/{branch-key}`` names the last commit queued for the branch and
  the one it superseded (``previous``). A delivery writes the head first (a CAS on the
  record as read), then submits, then cancels ``previous`` (``BuildQueue.cancel``: the task
  deleted and a ``cancelled`` result written in one transaction, a no-op once it finished).
  Each step is idempotent, so a receiver that dies anywhere in between is completed by the
  redelivery of the same push: it finds the head already naming its commit and does the
  remaining steps;
* **a stale push does not move the head back**: a late delivery of the push the head's own
  push came after (its commit is the head's ``before``) is queued and cancelled at once
  (every pushed commit ends with one task claim and one result, ``cancelled`` here), and a
  delivery of a commit already queued or built is a ``duplicate``: the head stays. GitLab
  does not order deliveries, so a push two or more steps older that was never delivered
  before would still be queued (and cancel the newer build): documented in docs/webhooks.md;
* **bad input writes nothing**: every check (size, content type, JSON shape, project,
  secret, event, branch, commit id) is made before the first write; each refusal is a
  ``DeliveryError`` carrying its HTTP status (400, 401, 404, 413, 415; 503 without build
  agents). Pushes that need no build (another branch, a branch deleted: ``checkout_sha``
  null, another event kind) are answered ``ignored`` with 200: GitLab counts every 4xx
  as a failure and disables a hook that fails repeatedly.

Records (docs/keys.md), each encoded and decoded here only, every decode validated
(``InvalidHookRecord``): ``/platform/hooks/{project-key}`` = ``{"project", "app",
"branch", "secret_sha256", "by", "at"}`` (project-key: the project path lowercased, ``/``
as ``%2F``, GitLab's API spelling) and ``/build/branches/{app}/{branch-key}`` =
``{"app", "branch", "commit", "before", "previous", "at"}`` (branch-key: ``/`` as
``%2F``). Bind and unbind are one CAS each with their activity record (``hook.manage``:
Master of the app and above; admins).

Pure service logic over the Store and Runtime ports: it must not know HTTP, gRPC, etcd
clients, or how the scheduler places a task.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from control.activity import activity_ops, check_request_id
from control.apps import app_key
from control.auth import Principal
from control.echo import quoted
from control.members import Action, Resource, authorize, load_memberships
from foundation.logic.build_task import AGENTS, APP_NAME, COMMIT, REPO, id_key, task_id
from foundation.ports import Compare, DeleteOp, GetOp, KeyValue, PutOp, RangeResult, Runtime, Store
from foundation.ports import control as port
from foundation.ports.proxy_domain import OWNER, load_json

HOOKS = "/platform/hooks/"
BRANCHES = "/build/branches/"
MAX_BODY = 1 << 20  # bytes of one delivery: GitLab lists at most 20 commits in a push payload
MAX_RECORD = 4096  # bytes of one binding or branch head record
MAX_TOKEN = 1024  # characters of X-Gitlab-Token worth hashing
MAX_PROJECT = 255
MAX_BRANCH = 200
SECRET_BYTES = 24  # the hook's secret token: 48 hex characters
MAX_ATTEMPTS = 8  # CAS rounds of one delivery against concurrent deliveries of the same branch
PUSH_EVENT = "Push Hook"
ZERO_COMMIT = re.compile(r"0{40}|0{64}")  # GitLab's "after" of a deleted branch
# GitLab project paths: namespace segments and the project, each [A-Za-z0-9_.-] not starting with '-' or '.'.
PROJECT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
# A branch name as git allows it, narrowed: [A-Za-z0-9._-] segments joined by '/', none starting with '.'.
BRANCH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
HEADS = "refs/heads/"

Outcome = Literal["queued", "duplicate", "ignored"]


# --------------------------------------------------------------------------- errors


class DeliveryError(Exception):
    """A delivery refused before anything was written; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message[:300])


class Malformed(DeliveryError):
    status = 400


class WrongSecret(DeliveryError):
    status = 401


class UnknownProject(DeliveryError):
    status = 404


class TooLarge(DeliveryError):
    status = 413


class NotJson(DeliveryError):
    status = 415


class NoBuildAgents(DeliveryError):
    """No build agent is registered: the push cannot be queued (GitLab may deliver it again)."""

    status = 503


class Busy(DeliveryError):
    """Concurrent deliveries to one branch kept moving its head: deliver again (nothing of this one written)."""

    status = 503


class InvalidHookRecord(ValueError):
    """A binding or branch head record read from the store does not decode."""


class HookCallError(port.ControlError):
    """Base of the typed errors of ``bind``/``unbind`` (the control port's, by gRPC status)."""


class InvalidArgument(HookCallError, port.InvalidArgument):
    pass


class AlreadyExists(HookCallError, port.AlreadyExists):
    pass


class NotFound(HookCallError, port.NotFound):
    pass


class Conflict(HookCallError, port.Conflict):
    pass


class CorruptRecord(HookCallError, port.CorruptRecord):
    pass


# --------------------------------------------------------------------------- names and keys


def check_project(project: Any) -> str:
    """A GitLab project path (``group[/subgroup…]/project``) that is also a build repository path once
    lowercased (the build hosts clone ``{repos}/{project}``); ``InvalidArgument`` otherwise."""
    if not isinstance(project, str) or len(project) > MAX_PROJECT or not PROJECT.fullmatch(project) \
            or not REPO.fullmatch(project.lower()) or ".." in project.split("/"):
        raise InvalidArgument("project", f"{quoted(project)} is not a GitLab project path (group/project, "
                                         f"[A-Za-z0-9_.-] segments, at most {MAX_PROJECT} characters)")
    return project


def check_branch(branch: Any) -> str:
    if not isinstance(branch, str) or len(branch) > MAX_BRANCH or not BRANCH.fullmatch(branch) \
            or ".." in branch or branch.endswith((".lock", ".")) or "/." in branch:
        raise InvalidArgument("branch", f"{quoted(branch)} is not a branch name ([A-Za-z0-9._-] segments joined "
                                        f"by '/', at most {MAX_BRANCH} characters)")
    return branch


def check_app(app: Any) -> str:
    if not isinstance(app, str) or not APP_NAME.fullmatch(app):
        raise InvalidArgument("app", f"{quoted(app)} is not an app name (a DNS label)")
    return app


def project_key(project: str) -> str:
    """``/platform/hooks/{project-key}``: GitLab paths are unique regardless of case; ``/`` is ``%2F``."""
    return f"{HOOKS}{project.lower().replace('/', '%2F')}"


def branch_key(app: str, branch: str) -> str:
    return f"{BRANCHES}{app}/{branch.replace('/', '%2F')}"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", errors="replace")).hexdigest()


# --------------------------------------------------------------------------- records


def _load(kv: KeyValue, fields: set[str]) -> dict[str, Any]:
    if len(kv.value) > MAX_RECORD:
        raise ValueError(f"larger than {MAX_RECORD} bytes")
    data = load_json(kv.value)
    if not isinstance(data, dict) or set(data) != fields:
        raise ValueError(f"not an object of exactly {', '.join(sorted(fields))}")
    return data


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"{quoted(value)} is not a time")
    return float(value)


@dataclass(frozen=True)
class HookBinding:
    """A GitLab project bound to an app: pushes to ``branch`` build the app."""

    project: str  # as GitLab spells it (path_with_namespace)
    app: str
    branch: str
    secret_sha256: str
    by: str
    at: float
    revision: int = 0  # mod_revision of the record (0: not stored yet)

    @property
    def key(self) -> str:
        return project_key(self.project)

    @property
    def repo(self) -> str:
        """The build repository path: the project path lowercased (``{repos}/{repo}`` on build hosts)."""
        return self.project.lower()

    def to_bytes(self) -> bytes:
        return json.dumps({"project": self.project, "app": self.app, "branch": self.branch,
                           "secret_sha256": self.secret_sha256, "by": self.by, "at": self.at},
                          sort_keys=True, separators=(",", ":")).encode()

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(secret_digest(token), self.secret_sha256)


def decode_binding(kv: KeyValue) -> HookBinding:
    """The binding stored at ``kv``; ``InvalidHookRecord`` for anything else (never another error)."""
    try:
        data = _load(kv, {"project", "app", "branch", "secret_sha256", "by", "at"})
        project, app, branch = check_project(data["project"]), check_app(data["app"]), check_branch(data["branch"])
        if project_key(project) != kv.key:
            raise ValueError(f"the record is for project {quoted(project)}, its key says otherwise")
        digest, by = data["secret_sha256"], data["by"]
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise ValueError("secret_sha256 is not 64 lowercase hex digits")
        if not isinstance(by, str) or not OWNER.fullmatch(by):
            raise ValueError(f"by {quoted(by)} is not a principal name")
        return HookBinding(project, app, branch, digest, by, _time(data["at"]), kv.mod_revision)
    except (ValueError, TypeError, port.ControlError) as exc:
        raise InvalidHookRecord(f"{quoted(kv.key, 200)}: {exc}") from None


@dataclass(frozen=True)
class BranchHead:
    """The last commit queued for a bound branch, the push's ``before`` and the commit it superseded."""

    app: str
    branch: str
    commit: str
    before: str = ""  # the push's "before" ("" unknown or a new branch)
    previous: str = ""  # the commit whose build this push cancels ("" none)
    at: float = 0.0
    revision: int = 0

    @property
    def key(self) -> str:
        return branch_key(self.app, self.branch)

    def to_bytes(self) -> bytes:
        return json.dumps({"app": self.app, "branch": self.branch, "commit": self.commit, "before": self.before,
                           "previous": self.previous, "at": self.at}, sort_keys=True, separators=(",", ":")).encode()


def decode_head(kv: KeyValue) -> BranchHead:
    """The branch head stored at ``kv``; ``InvalidHookRecord`` for anything else (never another error)."""
    try:
        data = _load(kv, {"app", "branch", "commit", "before", "previous", "at"})
        app, branch = check_app(data["app"]), check_branch(data["branch"])
        if branch_key(app, branch) != kv.key:
            raise ValueError("the record is for another app or branch than its key says")
        commit, before, previous = data["commit"], data["before"], data["previous"]
        if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
            raise ValueError("commit is not a full commit id")
        for name, value in (("before", before), ("previous", previous)):
            if not isinstance(value, str) or (value and not COMMIT.fullmatch(value)):
                raise ValueError(f"{name} is not empty or a full commit id")
        return BranchHead(app, branch, commit, before, previous, _time(data["at"]), kv.mod_revision)
    except (ValueError, TypeError, port.ControlError) as exc:
        raise InvalidHookRecord(f"{quoted(kv.key, 200)}: {exc}") from None


# --------------------------------------------------------------------------- the push


@dataclass(frozen=True)
class Push:
    """What a Push Hook delivery says, checked (the secret not yet)."""

    project: str
    ref: str
    before: str
    after: str
    checkout_sha: str | None  # None: the branch was deleted
    user: str


def parse_push(headers: Mapping[str, str], body: bytes) -> tuple[str, Push]:
    """``(event, push)`` from a delivery; ``DeliveryError`` (413, 415, 400) for a body that is none.

    Only what decides where the delivery goes is checked here (the project); the fields that
    decide what to build are checked after the secret (``Hooks.deliver``)."""
    if len(body) > MAX_BODY:
        raise TooLarge(f"the payload is larger than {MAX_BODY} bytes")
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise NotJson(f"the payload must be application/json, not {quoted(content_type)}")
    try:
        data = load_json(body)
    except ValueError as exc:
        raise Malformed(f"the payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed("the payload is not a JSON object")
    project = data.get("project")
    path = project.get("path_with_namespace") if isinstance(project, dict) else None
    if not isinstance(path, str) or len(path) > MAX_PROJECT or not PROJECT.fullmatch(path):
        raise Malformed("project.path_with_namespace is missing or not a GitLab project path")
    fields = {name: data.get(name) for name in ("ref", "before", "after", "checkout_sha", "user_username")}
    for name in ("ref", "before", "after", "user_username"):
        value = fields[name]
        if value is not None and (not isinstance(value, str) or len(value) > 512):
            raise Malformed(f"{name} is not a string")
    sha = fields["checkout_sha"]
    if sha is not None and not isinstance(sha, str):
        raise Malformed("checkout_sha is neither null nor a string")
    event = lowered.get("x-gitlab-event", "")
    return event, Push(path, fields["ref"] or "", fields["before"] or "", fields["after"] or "", sha,
                       fields["user_username"] or "")


@dataclass(frozen=True)
class Delivery:
    """What a delivery did: ``queued`` (this delivery queued the build), ``duplicate`` (the commit was
    queued or built already), ``ignored`` (nothing to build); ``cancelled``: tasks it cancelled."""

    outcome: Outcome
    task: str = ""
    cancelled: tuple[str, ...] = ()
    reason: str = ""


class BuildQueue(Protocol):
    """What deliveries need of the build scheduler (``control.builds.BuildScheduler``)."""

    async def submit(self, app: str, commit: str, *, repo: str | None = None) -> str: ...

    async def cancel(self, task: str, *, reason: str = "") -> bool: ...


# --------------------------------------------------------------------------- the service


class Hooks:
    """Repository bindings (``bind``, ``unbind``, ``get``) and deliveries (``deliver``)."""

    def __init__(self, store: Store, runtime: Runtime, queue: BuildQueue) -> None:
        self.store = store
        self.runtime = runtime
        self.queue = queue

    # ---- bindings
    async def bind(self, who: Principal, app: str, project: str, branch: str, *,
                   request_id: str = "") -> tuple[HookBinding, str]:
        """Bind ``project``'s ``branch`` to ``app`` (rebinding rotates the secret); returns the binding and the
        secret, which is stored only as its SHA-256: shown once."""
        app, project, branch = check_app(app), check_project(project), check_branch(branch)
        request_id = check_request_id(request_id or f"hook-{self.runtime.secret_hex(8)}")
        resource = Resource("app", app)
        found = await load_memberships(self.store, resource)
        authorize(who, Action.HOOK_MANAGE, resource, found)
        key = project_key(project)
        for _ in range(MAX_ATTEMPTS):
            read = await self.store.txn([], [GetOp(key), GetOp(app_key(app))])
            existing, record = (_first(r) for r in read.responses)
            if record is None:
                raise NotFound(f"app {app} does not exist")
            if existing is not None:
                try:
                    old = decode_binding(existing)
                    if old.app != app:
                        raise AlreadyExists(f"project {project} is bound to another app: unbind it there first")
                except InvalidHookRecord:
                    pass  # a corrupt record is replaced by the CAS below
            secret = self.runtime.secret_hex(SECRET_BYTES)
            now = self.runtime.wall_time()
            binding = HookBinding(project, app, branch, secret_digest(secret), who.name, now)
            logged = activity_ops(who, Action.HOOK_MANAGE, resource, f"bind {project} {branch}"[:200], now,
                                  request_id=request_id)
            compares = [*found.guard(who.name), Compare(app_key(app), "create", ">", 0),
                        Compare.mod_is(key, existing.mod_revision) if existing else Compare.missing(key)]
            done = await self.store.txn([*compares, *logged.compares], [PutOp(key, binding.to_bytes()), *logged.ops])
            if done.succeeded:
                self.runtime.trace("hook-bound", app=app, project=project, branch=branch, by=who.name)
                return HookBinding(project, app, branch, binding.secret_sha256, who.name, now, done.revision), secret
            found = await load_memberships(self.store, resource)  # a membership changed meanwhile: decide again
            authorize(who, Action.HOOK_MANAGE, resource, found)
        raise Conflict(f"the binding of {project} kept changing; try again")

    async def unbind(self, who: Principal, app: str, project: str, *, request_id: str = "") -> int:
        """Remove ``project``'s binding to ``app``; returns the store revision of the removal."""
        app, project = check_app(app), check_project(project)
        request_id = check_request_id(request_id or f"hook-{self.runtime.secret_hex(8)}")
        resource = Resource("app", app)
        found = await load_memberships(self.store, resource)
        authorize(who, Action.HOOK_MANAGE, resource, found)
        key = project_key(project)
        for _ in range(MAX_ATTEMPTS):
            existing = await self.store.get(key)
            if existing is None:
                raise NotFound(f"project {project} is not bound")
            try:
                if decode_binding(existing).app != app:
                    raise NotFound(f"project {project} is not bound to app {app}")
            except InvalidHookRecord:
                pass  # corrupt: its app is unknown; a Master of the app named may remove it
            now = self.runtime.wall_time()
            logged = activity_ops(who, Action.HOOK_MANAGE, resource, f"unbind {project}"[:200], now,
                                  request_id=request_id)
            done = await self.store.txn([*found.guard(who.name), Compare.mod_is(key, existing.mod_revision),
                                         *logged.compares], [DeleteOp(key), *logged.ops])
            if done.succeeded:
                self.runtime.trace("hook-unbound", app=app, project=project, by=who.name)
                return done.revision
            found = await load_memberships(self.store, resource)
            authorize(who, Action.HOOK_MANAGE, resource, found)
        raise Conflict(f"the binding of {project} kept changing; try again")

    async def get(self, project: str) -> HookBinding | None:
        kv = await self.store.get(project_key(check_project(project)))
        if kv is None:
            return None
        try:
            return decode_binding(kv)
        except InvalidHookRecord as exc:
            raise CorruptRecord(str(exc)) from None

    # ---- deliveries
    async def deliver(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """Check one Push Hook delivery and queue its build; ``DeliveryError`` (nothing written) when refused."""
        event, push = parse_push(headers, body)
        kv = await self.store.get(project_key(push.project))
        if kv is None:
            raise UnknownProject(f"no app is bound to project {push.project}")
        try:
            binding = decode_binding(kv)
        except InvalidHookRecord:
            raise UnknownProject(f"the binding of project {push.project} is unreadable: bind it again") from None
        token = {k.lower(): v for k, v in headers.items()}.get("x-gitlab-token", "")
        if not token or len(token) > MAX_TOKEN or not binding.matches(token):
            raise WrongSecret("X-Gitlab-Token is not the secret of this project's hook")
        if event != PUSH_EVENT:
            return self._ignored(binding, f"event {event[:40]!r} builds nothing (only {PUSH_EVENT})")
        if push.ref != HEADS + binding.branch:
            return self._ignored(binding, f"ref {push.ref[:80]!r} is not the bound branch {binding.branch}")
        if push.checkout_sha is None or ZERO_COMMIT.fullmatch(push.after):
            return self._ignored(binding, "the branch was deleted")
        if not COMMIT.fullmatch(push.checkout_sha):
            raise Malformed(f"checkout_sha {quoted(push.checkout_sha)} is not a full commit id (40 or 64 "
                            "lowercase hex digits)")
        before = push.before if COMMIT.fullmatch(push.before) and not ZERO_COMMIT.fullmatch(push.before) else ""
        return await self._queue(binding, push.checkout_sha, before)

    def _ignored(self, binding: HookBinding, reason: str) -> Delivery:
        self.runtime.trace("hook-ignored", app=binding.app, project=binding.project, reason=reason[:120])
        return Delivery("ignored", reason=reason)

    async def _queue(self, binding: HookBinding, commit: str, before: str) -> Delivery:
        app, task = binding.app, task_id(binding.app, commit)
        head_key = branch_key(app, binding.branch)
        for _ in range(MAX_ATTEMPTS):
            read = await self.store.txn([], [GetOp(app_key(app)), GetOp(head_key), GetOp(id_key(task)),
                                             GetOp(AGENTS, prefix=True)])
            record, head_kv, claim = (_first(r) for r in read.responses[:3])
            agents = read.responses[3]
            if record is None:
                raise UnknownProject(f"project {binding.project} is bound to app {app}, which does not exist")
            head: BranchHead | None = None
            if head_kv is not None:
                try:
                    head = decode_head(head_kv)
                except InvalidHookRecord as exc:  # replaced by the CAS below; nothing is cancelled on its word
                    self.runtime.trace("hook-head-unreadable", app=app, error=str(exc)[:200])
            if head is not None and head.commit == commit:
                # This push is the head already: a redelivery, or its receiver died after writing the head.
                outcome: Outcome = "duplicate" if claim is not None else "queued"
                previous = head.previous
            elif claim is not None and head is not None and head_kv is not None and before == head.commit:
                # A newer push (it follows the head) back to a commit queued before: a force-push back, a
                # rollback. The branch's tip is this commit again, so the head moves to it and the build of
                # the commit it replaces is cancelled; nothing is built again (one build per commit, ever: its
                # image is in the registry if its build finished, and none will come if it was cancelled).
                new = BranchHead(app, binding.branch, commit, before, head.commit, self.runtime.wall_time())
                written = await self.store.txn([Compare.mod_is(head_key, head_kv.mod_revision)],
                                               [PutOp(head_key, new.to_bytes())])
                if not written.succeeded:
                    continue  # another delivery of this branch moved the head: read again
                outcome, previous = "duplicate", head.commit
            elif head is not None and head.before == commit:
                # Superseded before it was delivered (or before its delivery finished): queued for the record
                # and cancelled at once, so that every pushed commit has its one task and its one result.
                if claim is None:
                    await self.queue.submit(app, commit, repo=binding.repo)
                reason = f"superseded by {head.commit} on {binding.branch}"
                gone = (task,) if await self.queue.cancel(task, reason=reason) else ()
                self.runtime.trace("hook-superseded", app=app, task=task, cancelled=len(gone))
                return Delivery("duplicate" if claim is not None else "queued", task, gone, reason)
            elif claim is not None:
                return Delivery("duplicate", task, reason="this commit was queued or built already")
            else:
                if not (isinstance(agents, RangeResult) and agents.kvs):
                    raise NoBuildAgents("no build agent is registered: the push cannot be queued")
                previous = head.commit if head is not None else ""
                new = BranchHead(app, binding.branch, commit, before, previous, self.runtime.wall_time())
                guard = Compare.mod_is(head_key, head_kv.mod_revision) if head_kv else Compare.missing(head_key)
                written = await self.store.txn([guard, Compare.missing(id_key(task))],
                                               [PutOp(head_key, new.to_bytes())])
                if not written.succeeded:
                    continue  # another delivery of this branch moved the head, or claimed the commit: read again
                outcome = "queued"
            if claim is None:
                await self.queue.submit(app, commit, repo=binding.repo)  # the claim: one build per commit
            cancelled: tuple[str, ...] = ()
            if previous and previous != commit:
                old = task_id(app, previous)
                if await self.queue.cancel(old, reason=f"superseded by {commit} on {binding.branch}"):
                    cancelled = (old,)
            self.runtime.trace("hook-delivered", app=app, task=task, outcome=outcome, cancelled=len(cancelled))
            return Delivery(outcome, task, cancelled)
        raise Busy(f"the branch head of {app} kept changing; deliver again")


def _first(response: object) -> KeyValue | None:
    return response.kvs[0] if isinstance(response, RangeResult) and response.kvs else None


__all__ = ["BRANCHES", "HOOKS", "MAX_BODY", "BranchHead", "BuildQueue", "Busy", "Delivery", "DeliveryError",
           "HookBinding", "Hooks", "InvalidHookRecord", "Malformed", "NoBuildAgents", "NotJson", "TooLarge",
           "UnknownProject", "WrongSecret", "branch_key", "decode_binding", "decode_head", "parse_push", "project_key"]
