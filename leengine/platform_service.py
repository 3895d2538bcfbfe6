"""The platform's gRPC servicer inside ``leengine-control``: apps, versions, members, activity, daily counts.

It serves ``leengine.control.v1.Platform`` (control/protos/leengine/control/v1/platform.proto)
over the service logic, which it does not repeat: ``control.apps.Apps`` (apps and versions,
reconciled into each Cell through the Workloads port), ``control.members.Members`` (the one
rights table, membership writes), ``control.activity`` (pages of activity records, the daily
counts), ``control.image_groups`` and ``control.robots`` (public/private image groups, robot
accounts of the registry; a robot's secret leaves only in CreateRobot's answer),
``control.webhooks`` (GitLab repositories bound to apps: BindRepository's answer holds the hook's
secret once, and the URL GitLab must POST to when the server was told it). Each RPC is one call of
that logic inside the server's ``_call`` (shared with slb-core's and the build farm's servicers):
authentication by bearer token first, then the logic, whose typed errors
(``foundation/ports/control.py``) become their status codes through one table, INVALID_ARGUMENT
with the field in trailing metadata ``leengine-field``.

What this module adds, and why it is here and not in ``control/``:

* **Cells** (``--cells FILE``): the Workloads adapter of each Cell of the Region, built
  from a YAML file of the same shape as discovery's (``cells: {name: {api: URL} |
  {kubeconfig: PATH}}``; discovery's other keys are allowed, so one file serves both).
  Without it every apps RPC answers FAILED_PRECONDITION naming the option; members,
  activity and counts work without Cells.
* **request ids**: a mutating call's ``request_id`` names its activity record; "" makes
  the server draw one (random ids are an entry point's business, not the logic's).
* **daily counts are the operators'**: admins only (the rights table has no action for
  them: they span every resource).
* **the reconciler**: ``reconcile_forever`` runs ``Apps.reconcile_all`` at start and every
  ``period`` seconds, which finishes whatever a crash or an unreachable Cell left behind;
  ``platform_forever`` runs it beside the release controller (``Releases.run``), which picks
  up at start every release the records say is active (a restarted service continues them).
* **traffic shares**: ``SlbShares`` is the ``TrafficShares`` port of ``control.apps`` and
  ``control.releases`` over slb-core in-process, acting as the principal ``platform``
  (``control.auth``; slb-core lets that role, and admins, set shares). Because the platform
  will steer a domain's traffic, CreateApp with a domain requires the caller to be the
  domain's owner in slb-core (or an admin): checked here, where slb-core is known.

Messages are converted field by field; nothing read from a request reaches etcd or a Cell
unvalidated (the logic validates every field, this module only reshapes). It must not know
etcd keys or records' encodings.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml

from control import activity, apps, image_groups, members, releases, robots, slb_core, webhooks
from control.auth import Principal
from control.platform_shares import SlbShares
from foundation.logic.slb_domain import GROUP_NAME
from foundation.ports import Runtime, Store, StoreError
from foundation.ports import control as port
from foundation.ports.workloads import Workloads

try:
    from control.generated.leengine.control.v1 import platform_pb2 as pb
    from control.generated.leengine.control.v1 import platform_pb2_grpc
except ImportError as exc:  # pragma: no cover - a set-up error, reported plainly
    raise ImportError(f"the generated gRPC code is missing ({exc}): run scripts/build-protos.sh") from exc

log = logging.getLogger("leengine.control.platform")
PLATFORM_SERVICE = pb.DESCRIPTOR.services_by_name["Platform"].full_name
NO_CELLS = ("this control service runs without Cells: start leengine-control with --cells FILE (each Cell's "
            "Kubernetes API) to serve apps")
DEFAULT_RECONCILE_PERIOD = 30.0
MAX_CELLS_FILE = 1 << 20

Call = Callable[[grpc.aio.ServicerContext, str, Callable[[Principal], Awaitable[Any]]], Awaitable[Any]]


# --------------------------------------------------------------------------- --cells FILE


class CellsFileError(ValueError):
    """The cells file cannot be used; the message names the file and the field."""


def load_cells(path: Path) -> dict[str, dict[str, str]]:
    """``{cell: {"api": URL} | {"kubeconfig": PATH}}`` from a YAML file (discovery's config shape)."""
    try:
        if path.stat().st_size > MAX_CELLS_FILE:
            raise CellsFileError(f"{path}: larger than {MAX_CELLS_FILE} bytes")
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CellsFileError(f"{path}: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(data, dict) or "cells" not in data or set(data) - {"cells", "bindings", "resync_seconds"}:
        raise CellsFileError(f"{path}: expected a mapping with the key cells (discovery's bindings and "
                             "resync_seconds are allowed and ignored)")
    cells = data["cells"]
    if not isinstance(cells, dict) or not cells:
        raise CellsFileError(f"{path}: cells: a mapping of at least one Cell")
    checked: dict[str, dict[str, str]] = {}
    for name, spec in cells.items():
        if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
            raise CellsFileError(f"{path}: cells: {str(name)[:64]!r} is not a Cell name (a DNS label)")
        if not isinstance(spec, dict) or len(spec) != 1 or not {"api", "kubeconfig"} & set(spec) \
                or not isinstance(next(iter(spec.values())), str) or not next(iter(spec.values())):
            raise CellsFileError(f"{path}: cells.{name}: give exactly one of api (URL) or kubeconfig (path)")
        kind, value = next(iter(spec.items()))
        if kind == "api" and not value.startswith(("http://", "https://")):
            raise CellsFileError(f"{path}: cells.{name}.api: {value[:80]!r} is not an http(s) URL")
        checked[name] = {kind: value}
    return checked


def cell_workloads(cells: Mapping[str, Mapping[str, str]], *, timeout: float = 10.0) -> dict[str, Workloads]:
    """The real Workloads adapter of each Cell (the caller closes them: ``close_workloads``)."""
    from foundation.adapters.k8s_workloads import KubeWorkloads

    return {name: KubeWorkloads(host=spec["api"], timeout=timeout) if "api" in spec
            else KubeWorkloads(kubeconfig=spec["kubeconfig"], timeout=timeout) for name, spec in cells.items()}


async def close_workloads(cells: Mapping[str, Workloads]) -> None:
    for workloads in cells.values():
        close = getattr(workloads, "close", None)
        if close is not None:
            await close()


async def platform_forever(service: PlatformService, period: float = DEFAULT_RECONCILE_PERIOD) -> None:
    """The apps reconciler and the release controller, as one task (cancelling it stops both)."""
    if service.apps is None:
        return
    tasks = [asyncio.create_task(_logged(reconcile_forever(service.apps, period), "apps-reconciler"))]
    if service.releases is not None:
        tasks.append(asyncio.create_task(_logged(service.releases.run(), "release-controller")))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _logged(loop: Awaitable[None], name: str) -> None:
    """Run one of the service's loops; if it fails, say so at once (the other loop goes on)."""
    try:
        await loop
    except Exception:
        log.exception("%s stopped by an unexpected error", name)


async def reconcile_forever(service: apps.Apps, period: float = DEFAULT_RECONCILE_PERIOD) -> None:
    """Reconcile every app now and every ``period`` seconds; an error is logged, the loop goes on."""
    while True:
        try:
            done = await service.reconcile_all()
            behind = {f"{r.app}/{cell}": why for r in done for cell, why in r.pending.items()}
            if behind:
                log.warning("reconcile: %d Cell(s) behind: %s", len(behind),
                            "; ".join(f"{k}: {v[:120]}" for k, v in list(behind.items())[:5]))
        except (StoreError, port.ControlError) as exc:
            log.warning("reconcile: %s", str(exc)[:300])
        await asyncio.sleep(period)


# --------------------------------------------------------------------------- messages


def new_request_id(given: str) -> str:
    """The client's request id (checked by the logic), or a fresh one for ""."""
    return given or uuid.uuid4().hex


def app_to_proto(app: apps.App) -> Any:
    return pb.App(name=app.name, cells=list(app.cells), production=app.production, created_by=app.created_by,
                  created_at=app.created_at, next_version=app.next_version, state=app.state, revision=app.revision,
                  group=app.group, domain=app.domain)


def _counts_to_proto(counts: tuple[int, int, float] | None) -> Any:
    requests, errors, seconds = counts or (0, 0, 0.0)
    return pb.ReleaseCounts(requests=requests, errors=errors, seconds=seconds)


def release_to_proto(view: releases.ReleaseView) -> Any:
    r, p = view.release, view.release.policy
    return pb.ReleaseView(release=pb.Release(
        app=r.app, old=r.old, new=r.new, group=r.group, domain=r.domain, steps=list(p.steps),
        bake_seconds=p.bake_seconds, check_seconds=p.check_seconds, max_error_increase=p.max_error_increase,
        max_latency_ratio=p.max_latency_ratio, bad_checks=p.bad_checks, min_requests=p.min_requests, state=r.state,
        step=r.step, percent=r.percent, baked=r.baked, bad=r.bad, checks=r.checks, reason=r.reason,
        started_by=r.started_by, started_at=r.started_at, revision=r.revision,
        last_old=_counts_to_proto(r.interval.get("old")), last_new=_counts_to_proto(r.interval.get("new")),
        hosts=len(r.baseline)), shares=dict(view.shares or {}))


def release_options(request: Any) -> dict[str, Any]:
    """The StartRelease fields that were set, as ``Releases.start``'s keyword arguments (unset: its defaults)."""
    options: dict[str, Any] = {}
    if request.steps:
        options["steps"] = tuple(request.steps)
    for name in ("bake_seconds", "check_seconds", "max_error_increase", "max_latency_ratio", "bad_checks",
                 "min_requests"):
        if request.HasField(name):
            options[name] = getattr(request, name)
    return options


def version_to_proto(view: apps.VersionView) -> Any:
    v, status = view.version, view.status
    return pb.Version(app=v.app, name=v.name, image=v.image, replicas=dict(v.replicas), cpu_millis=v.cpu_millis,
                      memory_mib=v.memory_mib, env=[pb.EnvVar(name=n, value=val) for n, val in v.env], port=v.port,
                      generation=v.generation, state=v.state, created_by=v.created_by, created_at=v.created_at,
                      revision=v.revision, applied=dict(status.applied), ready=dict(status.ready),
                      errors=dict(status.errors), pending=list(view.pending))


def view_to_proto(view: apps.AppView) -> Any:
    return pb.AppView(app=app_to_proto(view.app), versions=[version_to_proto(v) for v in view.versions],
                      pending=dict(view.pending))


def draft_from_proto(msg: Any) -> apps.Draft:
    """A ``VersionDraft`` message as the logic's ``Draft``: unset fields stay None (prefilled)."""
    replicas: int | dict[str, int] | None = None
    if msg.HasField("replicas") and msg.replicas_per_cell:
        raise apps.InvalidArgument("replicas", "give replicas or replicas_per_cell, not both")
    if msg.HasField("replicas"):
        replicas = msg.replicas
    elif msg.replicas_per_cell:
        replicas = dict(msg.replicas_per_cell)
    return apps.Draft(
        image=msg.image if msg.HasField("image") else None, replicas=replicas,
        cpu_millis=msg.cpu_millis if msg.HasField("cpu_millis") else None,
        memory_mib=msg.memory_mib if msg.HasField("memory_mib") else None,
        env=[(e.name, e.value) for e in msg.env.vars] if msg.HasField("env") else None,
        port=msg.port if msg.HasField("port") else None)


def draft_to_proto(draft: apps.Draft) -> Any:
    msg = pb.VersionDraft()
    if draft.image is not None:
        msg.image = draft.image
    if isinstance(draft.replicas, int):
        msg.replicas = draft.replicas
    elif draft.replicas is not None:
        msg.replicas_per_cell.update(draft.replicas)
    for name in ("cpu_millis", "memory_mib", "port"):
        if getattr(draft, name) is not None:
            setattr(msg, name, getattr(draft, name))
    if draft.env is not None:
        pairs = draft.env.items() if isinstance(draft.env, Mapping) else draft.env
        msg.env.CopyFrom(pb.Env(vars=[pb.EnvVar(name=n, value=v) for n, v in pairs]))
    return msg


def resource_from_proto(msg: Any) -> members.Resource:
    return members.Resource(msg.kind, msg.name)  # validated by Resource itself (InvalidArgument "resource")


def member_to_proto(member: members.Membership) -> Any:
    return pb.Member(user=member.user, role=str(member.role), by=member.by, at=member.at, revision=member.revision,
                     on=pb.Resource(kind=member.resource.kind, name=member.resource.name))


def change_to_proto(change: members.MemberChange) -> Any:
    reply = pb.MemberChange(revision=change.revision)
    if change.membership is not None:
        reply.member.CopyFrom(member_to_proto(change.membership))
    return reply


def record_to_proto(record: activity.ActivityRecord) -> Any:
    return pb.ActivityRecord(request_id=record.request_id, at=record.at, who=record.who, role=record.role,
                             action=record.action, kind=record.kind, name=record.name, result=record.result,
                             revision=record.revision)


def group_to_proto(view: image_groups.GroupView) -> Any:
    g = view.group
    return pb.ImageGroup(name=g.name, visibility=g.visibility, by=g.by, at=g.at, revision=g.revision,
                         role=str(view.role) if view.role is not None else "")


def robot_to_proto(robot: robots.Robot) -> Any:
    return pb.Robot(name=robot.name, username=robot.username,
                    scope=pb.Resource(kind=robot.scope.kind, name=robot.scope.name), actions=list(robot.actions),
                    expires=robot.expires or 0.0, by=robot.by, at=robot.at, revision=robot.revision)


# --------------------------------------------------------------------------- the servicer


class PlatformService(platform_pb2_grpc.PlatformServicer):
    """The Platform RPCs; ``call`` is the server's authenticate-run-map (``SlbCoreService._call``)."""

    def __init__(self, store: Store, runtime: Runtime, call: Call, cells: Mapping[str, Workloads] | None,
                 slb: slb_core.SlbCore | None = None, hook_url: str = "") -> None:
        self.store = store
        self._call = call
        self.slb = slb
        shares = SlbShares(slb) if slb is not None else None
        self.apps = apps.Apps(store, runtime, cells, shares=shares) if cells else None
        self.releases = releases.Releases(store, runtime, self.apps, shares, cells) \
            if cells and self.apps is not None and shares is not None else None
        self.members = members.Members(store, runtime, resource_key=apps.resource_key)
        self.image_groups = image_groups.ImageGroups(store, runtime)
        self.robots = robots.Robots(store, runtime)
        # Bindings only: deliveries come over HTTP (leengine/hook_http.py) through a Hooks with the build queue.
        self.hooks = webhooks.Hooks(store, runtime, _NoQueue())
        self.hook_url = hook_url or HOOK_URL_HINT

    def _apps(self) -> apps.Apps:
        if self.apps is None:
            raise port.FailedPrecondition(NO_CELLS)
        return self.apps

    def _releases(self) -> releases.Releases:
        if self.releases is None:
            raise port.FailedPrecondition(NO_CELLS)
        return self.releases

    async def _create_app(self, who: Principal, request: Any) -> apps.AppView:
        service = self._apps()
        if request.domain or request.group:
            group, domain = apps.check_app_domain(request.group, request.domain)
            if self.slb is None:
                raise port.FailedPrecondition("this control service has no slb-core to serve the app's domain")
            stored = await self.slb.get_domain(who, group, domain)  # NotFound when there is no such domain
            if not who.is_admin and stored.domain.owner != who.name:
                raise port.PermissionDenied(f"domain {domain} in group {group} belongs to {stored.domain.owner}: "
                                            f"only its owner or an admin may serve an app on it")
        production = request.production if request.HasField("production") else True
        return await service.create_app(who, request.name, list(request.cells), production=production,
                                        group=request.group, domain=request.domain,
                                        request_id=new_request_id(request.request_id))

    # ---- apps and versions
    async def CreateApp(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "CreateApp", lambda who: self._create_app(who, request)))

    async def ListApps(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await self._call(context, "ListApps", lambda who: self._apps().list_apps(who))
        return pb.ListAppsResponse(apps=[app_to_proto(a) for a in found])

    async def GetApp(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "GetApp", lambda who: self._apps().show(who, request.app)))

    async def GetPrefill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return draft_to_proto(await self._call(context, "GetPrefill",
                                               lambda who: self._apps().prefill(who, request.app)))

    async def DeployVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "DeployVersion", lambda who: self._apps().deploy(
            who, request.app, draft_from_proto(request.draft), request_id=new_request_id(request.request_id))))

    async def ScaleVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "ScaleVersion", lambda who: self._apps().scale(
            who, request.app, request.version, request.replicas, cell=request.cell or None,
            request_id=new_request_id(request.request_id))))

    async def DeleteVersion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "DeleteVersion", lambda who: self._apps().delete_version(
            who, request.app, request.version, request_id=new_request_id(request.request_id))))

    async def DeleteApp(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return view_to_proto(await self._call(context, "DeleteApp", lambda who: self._apps().delete_app(
            who, request.app, request_id=new_request_id(request.request_id))))

    # ---- releases
    async def StartRelease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return release_to_proto(await self._call(context, "StartRelease", lambda who: self._releases().start(
            who, request.app, request.version, request_id=new_request_id(request.request_id),
            **release_options(request))))

    async def GetRelease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return release_to_proto(await self._call(context, "GetRelease",
                                                 lambda who: self._releases().get(who, request.app)))

    async def RevertRelease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return release_to_proto(await self._call(context, "RevertRelease", lambda who: self._releases().revert(
            who, request.app, request_id=new_request_id(request.request_id))))

    # ---- members
    async def ListMembers(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await self._call(context, "ListMembers", lambda who: self.members.list(
            who, resource_from_proto(request.resource)))
        return pb.ListMembersResponse(
            members=[member_to_proto(m) for _, m in sorted(found.direct.items())],
            inherited=[member_to_proto(m) for _, m in sorted(found.inherited.items())],
            revision=found.revision, skipped=len(found.invalid))

    async def AddMember(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return change_to_proto(await self._call(context, "AddMember", lambda who: self.members.add(
            who, resource_from_proto(request.resource), request.user, request.role,
            request_id=new_request_id(request.request_id))))

    async def ChangeMember(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return change_to_proto(await self._call(context, "ChangeMember", lambda who: self.members.change(
            who, resource_from_proto(request.resource), request.user, request.role,
            request_id=new_request_id(request.request_id))))

    async def RemoveMember(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return change_to_proto(await self._call(context, "RemoveMember", lambda who: self.members.remove(
            who, resource_from_proto(request.resource), request.user,
            request_id=new_request_id(request.request_id))))

    # ---- activity and counts
    async def _activity(self, who: Principal, request: Any) -> activity.ActivityPage:
        resource = resource_from_proto(request.resource)
        found = await members.load_memberships(self.store, resource)
        members.authorize(who, members.Action.ACTIVITY_READ, resource, found)
        return await activity.read_activity(self.store, resource, page_size=request.page_size,
                                            page_token=request.page_token)

    async def ListActivity(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        page = await self._call(context, "ListActivity", lambda who: self._activity(who, request))
        return pb.ListActivityResponse(records=[record_to_proto(r) for r in page.records], revision=page.revision,
                                       next_page_token=page.next_page_token, skipped=len(page.invalid))

    async def _counts(self, who: Principal, day: str) -> dict[tuple[str, str, str], int]:
        if not who.is_admin:
            raise port.PermissionDenied(f"{who.name} (role {who.role}): the daily counts span every resource; "
                                        "only admins read them")
        return await activity.daily_counts(self.store, day)

    async def GetDailyCounts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        counts = await self._call(context, "GetDailyCounts", lambda who: self._counts(who, request.day))
        return pb.GetDailyCountsResponse(counts=[pb.DailyCount(day=d, kind=k, action=a, count=n)
                                                 for (d, k, a), n in sorted(counts.items())])


    # ---- image groups and robots (control/image_groups.py, control/robots.py)
    async def CreateImageGroup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return group_to_proto(await self._call(context, "CreateImageGroup", lambda who: self.image_groups.create(
            who, request.name, public=request.public, request_id=new_request_id(request.request_id))))

    async def GetImageGroup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return group_to_proto(await self._call(context, "GetImageGroup",
                                               lambda who: self.image_groups.get(who, request.name)))

    async def SetImageGroupVisibility(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return group_to_proto(await self._call(context, "SetImageGroupVisibility",
                                               lambda who: self.image_groups.set_visibility(
                                                   who, request.name, request.visibility,
                                                   request_id=new_request_id(request.request_id))))

    async def DeleteImageGroup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        revision = await self._call(context, "DeleteImageGroup", lambda who: self.image_groups.delete(
            who, request.name, request_id=new_request_id(request.request_id)))
        return pb.DeleteImageGroupResponse(revision=revision)

    async def CreateRobot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def create(who: Principal) -> tuple[robots.Robot, str]:
            scope = resource_from_proto(request.scope)
            return await self.robots.create(who, request.name, scope, list(request.actions),
                                            ttl=request.ttl_seconds or None,
                                            request_id=new_request_id(request.request_id))

        robot, secret = await self._call(context, "CreateRobot", create)
        return pb.CreateRobotResponse(robot=robot_to_proto(robot), secret=secret)

    async def ListRobots(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await self._call(context, "ListRobots", lambda who: self.robots.list(who))
        return pb.ListRobotsResponse(robots=[robot_to_proto(r) for r in sorted(found.robots, key=lambda r: r.name)],
                                     skipped=len(found.invalid))

    async def RevokeRobot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        revision = await self._call(context, "RevokeRobot", lambda who: self.robots.revoke(
            who, request.name, request_id=new_request_id(request.request_id)))
        return pb.RevokeRobotResponse(revision=revision)

    # ---- builds on push
    async def BindRepository(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        binding, secret = await self._call(context, "BindRepository", lambda who: self.hooks.bind(
            who, request.app, request.project, request.branch, request_id=new_request_id(request.request_id)))
        return pb.BindRepositoryResponse(binding=pb.HookBinding(
            project=binding.project, app=binding.app, branch=binding.branch, by=binding.by, at=binding.at,
            revision=binding.revision), secret=secret, url=self.hook_url)

    async def UnbindRepository(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        revision = await self._call(context, "UnbindRepository", lambda who: self.hooks.unbind(
            who, request.app, request.project, request_id=new_request_id(request.request_id)))
        return pb.UnbindRepositoryResponse(revision=revision)


HOOK_URL_HINT = "http(s)://<this control service's --http-address>/hooks/gitlab"


def hook_url(address: str, tls: bool) -> str:
    """The URL GitLab must POST pushes to, for a control service serving HTTP on ``address``."""
    return f"{'https' if tls else 'http'}://{address}/hooks/gitlab"


class _NoQueue:
    """The PlatformService's Hooks only binds and unbinds: it never queues (deliveries have their own)."""

    async def submit(self, app: str, commit: str, *, repo: str | None = None) -> str:
        raise port.FailedPrecondition("deliveries are served over HTTP, not by the Platform service")

    async def cancel(self, task: str, *, reason: str = "") -> bool:
        raise port.FailedPrecondition("deliveries are served over HTTP, not by the Platform service")

def add_to_server(server: grpc.aio.Server, store: Store, runtime: Runtime, call: Call,
                  cells: Mapping[str, Workloads] | None, slb: slb_core.SlbCore | None = None,
                  hook_url: str = "") -> PlatformService:
    service = PlatformService(store, runtime, call, cells, slb, hook_url)
    platform_pb2_grpc.add_PlatformServicer_to_server(service, server)
    return service
