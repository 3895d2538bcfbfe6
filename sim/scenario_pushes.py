"""The scenario parser's ``pushes:`` block: commits pushed to apps' branches, each announced by a GitLab Push Hook.

A Region whose scenario has this block binds each pushed app's project (``sim/{app}``) and
branch to the app through ``control.webhooks`` at boot, and at each push GitLab sends the
control service's hook receiver a Push Hook of a new commit (sim/webhooks.py), which queues
its build on the farm. The top-level block::

    pushes:
      - app: shop          # a platform app of workload.apps (`platform: true`: the binding needs its record)
        at: 60             # the first push, seconds from the start
        every: 90          # optional: push a new commit this often until the run ends
        branch: main       # optional (default main): [A-Za-z0-9._/-], at most 100 characters

The first branch pushed of each app is the one its project's hook is bound to; pushes to
its other branches are delivered too (GitLab sends every push of the project) and answered
``ignored``. Pushes need build hosts (``topology.build_hosts``); the fault kinds ``webhook-duplicate`` and
``webhook-receiver-crash`` need pushes. It must not run anything.
"""

from __future__ import annotations

import re

from yaml.nodes import Node

from sim.scenario_errors import show, some
from sim.scenario_fields import Fields
from sim.spec import MAX_PUSHES, MAX_SECONDS, MIN_EVERY, AppSpec, PushSpec

BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,99}")  # a git branch name, kept to a safe subset
PUSH_KEYS = ("app", "at", "every", "branch")


class PushFields(Fields):
    pushes_given: bool = False  # the file has pushes (the webhook fault kinds need them)

    def pushes(self, node: Node, duration: float, apps: tuple[AppSpec, ...]) -> tuple[PushSpec, ...]:
        names = {a.name: None for a in apps if a.platform}  # ordered, for messages
        out: list[PushSpec] = []
        entries = self.sequence(node, "pushes", MAX_PUSHES, "pushes")
        if entries and not self.build_hosts:
            raise self.error(node, "pushes", "pushes build on the farm: they need build hosts (topology.build_hosts)")
        for i, pn in enumerate(entries):
            f = f"pushes[{i}]"
            m = self.mapping(pn, f, set(PUSH_KEYS), required=("app", "at"))
            app = self.string(m["app"], f"{f}.app")
            if app not in names:
                raise self.error(m["app"], f"{f}.app", f"{show(app)} is no platform app: a hook binding needs the "
                                                       f"app's record (platform apps: "
                                                       f"{some(names) or 'none: give an app `platform: true`'})")
            at = self.number(m["at"], f"{f}.at", low=0)
            if at >= duration:
                raise self.error(m["at"], f"{f}.at", f"at {at:g} s is not before the end of the run ({duration:g} s)")
            every = self.number(m["every"], f"{f}.every", low=MIN_EVERY, high=MAX_SECONDS) if "every" in m else None
            branch = "main"
            if "branch" in m:
                branch = self.string(m["branch"], f"{f}.branch")
                if not BRANCH.fullmatch(branch) or ".." in branch or branch.endswith(("/", ".lock")):
                    raise self.error(m["branch"], f"{f}.branch", f"{show(branch)} is not a branch name "
                                                                 "([A-Za-z0-9._/-], at most 100, no '..')")
            out.append(PushSpec(app=app, at=at, branch=branch, every=every, line=pn.start_mark.line + 1))
        self.pushes_given = bool(out)
        return tuple(out)


__all__ = ["BRANCH", "PUSH_KEYS", "PushFields"]
