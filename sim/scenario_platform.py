"""The scenario parser's platform part: apps deployed through the platform, and their gray releases.

An app of ``workload.apps`` with ``platform: true`` is not deployed by the world: the world
creates it and deploys its versions through ``control.apps.Apps`` (v1 at boot, with the
app's ``replicas`` in each of its Cells), and its traffic shares and releases are the
control service's (docs/sim.md, "The platform"). Such an app runs in 2 to 16 Cells
(``control.apps``' bounds), has a name of at most 40 characters, no ``count``, and a
Region with platform apps has no churn (churn replaces pods behind the platform's back).
The top-level block::

    platform:
      traffic_every: 5        # the SLB agents write their per-version traffic records this often (default 5)
      releases:
        - app: shop           # a platform app
          at: 120             # deploy its next version then, and start its gray release
          steps: [1, 10, 50, 100]
          bake_seconds: 60
          check_seconds: 10
          max_error_increase: 0.05
          max_latency_ratio: 2.0
          bad_checks: 2
          min_requests: 10

The checks ``release-reverted-within``, ``release-completed``, ``no-orphan-versions`` and
``activity-consistent`` need platform apps. It must not run anything.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from yaml.nodes import Node

from control.apps import MAX_APP_NAME, MAX_CELLS, MIN_CELLS
from foundation.ports.workloads import MAX_REPLICAS as MAX_CONTROLLER_REPLICAS
from sim.scenario_errors import show, some
from sim.scenario_fields import Fields
from sim.spec import (
    MAX_PLATFORM_APPS,
    MAX_RELEASES,
    MAX_SECONDS,
    MAX_STEPS,
    AppSpec,
    CheckSpec,
    ChurnSpec,
    ReleaseSpec,
)

PLATFORM_CHECKS = ("release-reverted-within", "no-orphan-versions", "activity-consistent", "release-completed")
RELEASE_KEYS = ("app", "at", "steps", "bake_seconds", "check_seconds", "max_error_increase", "max_latency_ratio",
                "bad_checks", "min_requests")


DEFAULT_TRAFFIC_EVERY = 5.0  # the SLB agent daemon's default (--traffic-every)


class PlatformFields(Fields):
    traffic_every: float | None = None  # the platform block's, once read

    def platform_app(self, a: dict[str, Node], f: str, name: str, cells: list[tuple[str, Node]]) -> bool:
        """An app's ``platform`` field: true or false; a platform app within the platform's bounds."""
        value = self.scalar(a["platform"], f"{f}.platform")
        if not isinstance(value, bool):
            raise self.error(a["platform"], f"{f}.platform", f"{show(value)} is not true or false")
        if not value:
            return False
        if len(name) > MAX_APP_NAME:
            raise self.error(a["name"], f"{f}.name", f"a platform app's name has at most {MAX_APP_NAME} characters")
        if not MIN_CELLS <= len(cells) <= MAX_CELLS:
            raise self.error(a["cells"], f"{f}.cells", f"a platform app runs in {MIN_CELLS} to {MAX_CELLS} Cells")
        if "count" in a:
            raise self.error(a["count"], f"{f}.count", "a platform app is one app: no count")
        return True

    def platform(self, node: Node, duration: float, apps: tuple[AppSpec, ...]) -> tuple[ReleaseSpec, ...]:
        m = self.mapping(node, "platform", {"releases", "traffic_every"})
        if "traffic_every" in m:
            self.traffic_every = self.number(m["traffic_every"], "platform.traffic_every", positive=True,
                                             high=MAX_SECONDS)
        platform_apps = [a.name for a in apps if a.platform]
        out: list[ReleaseSpec] = []
        nodes = self.sequence(m["releases"], "platform.releases", MAX_RELEASES, "releases") if "releases" in m else []
        for i, rn in enumerate(nodes):
            out.append(self.release(rn, f"platform.releases[{i}]", duration, platform_apps))
        return tuple(sorted(out, key=lambda r: r.at))

    def release(self, node: Node, f: str, duration: float, platform_apps: list[str]) -> ReleaseSpec:
        m = self.mapping(node, f, set(RELEASE_KEYS), required=("app", "at"))
        app = self.string(m["app"], f"{f}.app")
        if app not in platform_apps:
            raise self.error(m["app"], f"{f}.app", f"{show(app)} is no platform app (platform apps: "
                                                   f"{some(platform_apps) or 'none: give an app `platform: true`'})")
        at = self.number(m["at"], f"{f}.at", low=0)
        if at >= duration:
            raise self.error(m["at"], f"{f}.at", f"at {at:g} s is not before the end of the run ({duration:g} s)")
        kwargs: dict[str, Any] = {}
        if "steps" in m:
            steps = [self.integer(sn, f"{f}.steps[{j}]", low=1, high=100)
                     for j, sn in enumerate(self.sequence(m["steps"], f"{f}.steps", MAX_STEPS, "steps"))]
            if not steps or steps[-1] != 100 or any(b <= a for a, b in pairwise(steps)):
                raise self.error(m["steps"], f"{f}.steps", "increasing percentages ending at 100")
            kwargs["steps"] = tuple(steps)
        for key in ("bake_seconds", "check_seconds"):
            if key in m:
                kwargs[key] = self.number(m[key], f"{f}.{key}", positive=True, high=MAX_SECONDS)
        if "max_error_increase" in m:
            kwargs["max_error_increase"] = self.number(m["max_error_increase"], f"{f}.max_error_increase", low=0,
                                                       high=1)
        if "max_latency_ratio" in m:
            kwargs["max_latency_ratio"] = self.number(m["max_latency_ratio"], f"{f}.max_latency_ratio", low=1,
                                                      high=1000)
        if "bad_checks" in m:
            kwargs["bad_checks"] = self.integer(m["bad_checks"], f"{f}.bad_checks", low=1, high=100)
        if "min_requests" in m:
            kwargs["min_requests"] = self.integer(m["min_requests"], f"{f}.min_requests", low=0, high=10**9)
        return ReleaseSpec(app=app, at=at, line=node.start_mark.line + 1, **kwargs)

    def platform_traffic_every(self, apps: tuple[AppSpec, ...]) -> float:
        """How often the SLB agents write traffic records: the block's, the default with platform apps, else never."""
        if not any(a.platform for a in apps):
            return 0.0
        return self.traffic_every if self.traffic_every is not None else DEFAULT_TRAFFIC_EVERY

    def check_platform(self, m: dict[str, Node], apps: tuple[AppSpec, ...], churn: ChurnSpec,
                       checks: tuple[CheckSpec, ...]) -> None:
        """What a Region with (or without) platform apps cannot have."""
        platform = [a for a in apps if a.platform]
        if "platform" in m and not platform:
            raise self.error(m["platform"], "platform", "no app of workload.apps has `platform: true`")
        if len(platform) > MAX_PLATFORM_APPS:
            raise self.error(m["workload"], "workload.apps", f"{len(platform)} platform apps exceed the "
                                                             f"{MAX_PLATFORM_APPS} of a scenario")
        for app in platform:
            if app.replicas > MAX_CONTROLLER_REPLICAS:
                raise self.error(m["workload"], "workload.apps", f"platform app {app.name}: {app.replicas} replicas "
                                                                 f"per Cell exceed a controller's "
                                                                 f"{MAX_CONTROLLER_REPLICAS}")
        for app in platform:  # the platform claims a platform app's domain (control.apps): no other app may share it
            domain = app.served_domain
            other = next((a.name for a in apps if a is not app and a.group == app.group
                          and a.served_domain == domain), None)
            if other is not None:
                raise self.error(m["workload"], "workload.apps", f"platform app {app.name} and app {other} serve one "
                                                                 f"domain {domain} in group {app.group}: a platform "
                                                                 f"app's domain is its own")
        if platform and churn != ChurnSpec():
            raise self.error(m["workload"], "workload.churn", "a Region with platform apps has no churn (it would "
                                                              "replace pods behind the platform's back)")
        wanted = [c.kind for c in checks if c.kind in PLATFORM_CHECKS]
        if wanted and not platform:
            raise self.error(m["checks"], "checks", f"{wanted[0]} needs platform apps (`platform: true`)")


__all__ = ["PLATFORM_CHECKS", "RELEASE_KEYS", "PlatformFields"]
