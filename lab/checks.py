"""Checks of a live lab run: one table, name -> judge over ``Observations``, same names and meaning as the sim's.

The twin of ``sim/checks.py`` (``sim.spec.CHECK_KINDS``; the verdicts are
``sim.checks.CheckResult`` so a lab report and a sim report compare field by field). Safety
checks judge the whole run from what was observed; liveness checks judge the ``Probe`` taken
at their deadline, the last fault's declared end + ``within`` (``sim.faults.last_fault_end``),
and fail with the sim's words when the deadline is past the run's end. What each check reads:

* ``no-duplicate-address``: the etcd history's duplicate owners (``sim.audit.Auditor`` over a
  real watch) plus every address found with two owning pods among the pods' namespaces and
  etcd's handles (lab/observe.py);
* ``domains-keep-serving``: host-seconds whose requests got 502/503/504 from Nginx while a
  pod of the app had been ready in a reachable Cell (lab/load.py);
* ``leaks-found-and-released``: at the deadline no address held by a dead pod, and every
  such address that went away was released by cnictl's cron;
* ``apps-serve-again``: at the deadline every app answers 200 on every host clients use;
* ``max-failed-requests``, ``max-reloads``: requests that really failed; reloads counted
  from each Nginx host's error log;
* ``builds-finish``: builds submitted before the faults ended (deploys' builds through the
  control service's Builds API, lab/farm.py), finished at the deadline (a real watch of
  ``/build/results/``).
* ``release-reverted-within``: from a bad version's first failed request (a 500 the load
  generator got from one of its pods, lab/load.py) to its share 0 in etcd's shares record and
  its replication controller gone from every Cell's API (lab/platform.py looks every 0.5 s);
* ``release-completed``: the release record's states (running, paused while a Cell was cut
  off, completed), the old version's records and controllers gone at the end;
* ``no-orphan-versions``: at the end, every Cell's controllers of a platform app are its
  active version records, none being deleted;
* ``activity-consistent``: the run's etcd history, revision by revision
  (``sim.checks.activity_violations``, the sim's own verdict), and the daily counts recounted.

It must not change the lab: judging is observation only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from foundation.ports.workloads import controller_name
from lab.observe import Observations
from sim.checks import CheckResult, Probe, activity_violations, apps_serve_again_verdict, builds_verdict, leaks_verdict
from sim.spec import CheckSpec


@dataclass(frozen=True)
class LabCheck:
    judge: Callable[[Observations, CheckSpec], CheckResult] | None = None
    after_faults: Callable[[Observations, CheckSpec, Probe], CheckResult] | None = None

    @property
    def liveness(self) -> bool:
        return self.after_faults is not None


def _no_duplicate_address(obs: Observations, check: CheckSpec) -> CheckResult:
    v = [*obs.audit_violations, *obs.netns_duplicates]
    return CheckResult(check.kind, not v, f"{len(v)} duplicate owner(s)" + (f"; first: {v[0]}" if v else ""))


def _domains_keep_serving(obs: Observations, check: CheckSpec) -> CheckResult:
    n, examples = obs.serving_violations, obs.serving_examples
    return CheckResult(check.kind, not n, f"{n} host-second(s) without a live upstream while one was ready"
                       + (f"; first: {examples[0]}" if examples else ""))


def _max_failed_requests(obs: Observations, check: CheckSpec) -> CheckResult:
    return CheckResult(check.kind, obs.failed <= check.limit,
                       f"{obs.failed} failed of {obs.failed + obs.ok} (limit {check.limit:g})")


def _max_reloads(obs: Observations, check: CheckSpec) -> CheckResult:
    worst = max(sorted(obs.reloads), key=lambda h: obs.reloads[h], default=None)
    count = obs.reloads[worst] if worst else 0
    return CheckResult(check.kind, count <= check.limit, f"at most {count} reloads per host"
                       + (f" ({worst})" if worst else "") + f" (limit {check.limit:g})")


def _leaks_found_and_released(obs: Observations, check: CheckSpec, probe: Probe) -> CheckResult:
    return leaks_verdict(check, probe, obs.leaks_gone, obs.leaks.released_handles, obs.leaks.found,
                         obs.leaks.released)


def _apps_serve_again(obs: Observations, check: CheckSpec, probe: Probe) -> CheckResult:
    return apps_serve_again_verdict(check, probe)


def _builds_finish(obs: Observations, check: CheckSpec, probe: Probe) -> CheckResult:
    if not obs.builds_observed:
        return CheckResult(check.kind, False, "the lab run has no build farm (no build hosts): builds-finish "
                                              "cannot be judged")
    return builds_verdict(check, probe, obs.builds_submitted)


def _shares_off(timeline: list[tuple[float, dict[str, int] | None]], version: str, after: float) -> float | None:
    """When the version's share was first seen 0 (or the record gone) at or after ``after``."""
    for at, shares in timeline:
        if at >= after and (shares is None or shares.get(version, 0) == 0):
            return at
    return None


def _release_path(obs: Observations, app: str, version: str) -> str:
    marks = obs.platform.releases.get(app, []) if obs.platform is not None else []
    return " -> ".join(dict.fromkeys(f"{s} {p}%" for _, s, p, new in marks if new == version))


def _release_reverted_within(obs: Observations, check: CheckSpec) -> CheckResult:
    platform = obs.platform
    if platform is None:
        return CheckResult(check.kind, False, "no platform app in this lab run")
    if not obs.first_error:
        return CheckResult(check.kind, False, "no bad version failed a request: nothing to revert")
    passed, words = True, []
    for (app, version), first in sorted(obs.first_error.items()):
        shares_off = _shares_off(platform.shares.get(app, []), version, first)
        name = controller_name(app, version)
        gone = [platform.controllers_gone[(app, cell, name)] for cell in obs.platform_cells.get(app, ())
                if (app, cell, name) in platform.controllers_gone]
        still = [cell for cell in obs.platform_cells.get(app, ()) if (app, cell, name) not in platform.controllers_gone]
        if shares_off is None or still:
            passed = False
            words.append(f"{app} {version}: first error at t={first:g}, not reverted (share "
                         + ("0 at t=" + f"{shares_off:g}" if shares_off is not None else "still > 0")
                         + (f"; controllers still in {', '.join(still)}" if still else "")
                         + f"; release {_release_path(obs, app, version)})")
            continue
        took = max([shares_off, *gone]) - first
        passed = passed and took <= check.within
        words.append(f"{app} {version}: first error at t={first:g}, share 0 at t={shares_off:g}, controllers gone "
                     f"at t={max(gone):g}: {took:.1f} s (limit {check.within:g} s); release "
                     f"{_release_path(obs, app, version)}")
    return CheckResult(check.kind, passed, "; ".join(words))


def _release_completed(obs: Observations, check: CheckSpec) -> CheckResult:
    platform = obs.platform
    if platform is None or not obs.release_apps:
        return CheckResult(check.kind, False, "no gray release in this lab run")
    final = platform.final
    passed, words = True, []
    for app in obs.release_apps:
        timeline = platform.releases.get(app, [])
        if not timeline:
            passed = False
            words.append(f"{app}: no release started")
            continue
        new = timeline[-1][3]
        mine = [(at, state, percent) for at, state, percent, v in timeline if v == new]
        states = [state for _, state, _ in mine]
        started = mine[0][0]
        ended = next((at for at, state, _ in mine if state == "completed"), obs.duration)
        overlapped = any(a < ended and b > started for a, b in obs.outages)
        problems = []
        if states[-1] != "completed":
            problems.append(f"ended {states[-1]}")
        if "reverting" in states or "reverted" in states:
            problems.append("reverted")
        if overlapped and "paused" not in states:
            problems.append("never paused while a Cell was cut off")
        if final is None:
            problems.append("no final look at the platform")
        else:
            left = sorted(final.active.get(app, set()) - {new})
            if left:
                problems.append(f"old version(s) {', '.join(left)} still recorded")
            stale = sorted(f"{cell}/{c}" for (a, cell), names in final.controllers.items() if a == app
                           for c in names if c != controller_name(app, new))
            if stale:
                problems.append(f"old controllers left: {', '.join(stale)}")
        passed = passed and not problems
        path = " -> ".join(dict.fromkeys(f"{s} {p}%" for _, s, p in mine))
        words.append(f"{app} {new}: {path}" + (f" at t={ended:g}" if "completed" in states else "")
                     + (f"; {'; '.join(problems)}" if problems else ""))
    return CheckResult(check.kind, passed, "; ".join(words))


def _no_orphan_versions(obs: Observations, check: CheckSpec) -> CheckResult:
    final = obs.platform.final if obs.platform is not None else None
    if final is None:
        return CheckResult(check.kind, False, "no final look at the platform (none, or etcd away at the end)")
    wrong = []
    for (app, cell), names in sorted(final.controllers.items()):
        want = {controller_name(app, v) for v in final.active.get(app, set())}
        if names != want:
            wrong.append(f"{cell}: {', '.join(sorted(names)) or 'none'} for {', '.join(sorted(want)) or 'none'}")
    deleting = sorted(f"{app} {v}" for app, vs in final.deleting.items() for v in vs)
    versions = sum(len(v) for v in final.active.values())
    return CheckResult(check.kind, not wrong and not deleting,
                       f"at t={final.at:g}: {versions} active version(s), every Cell's controllers as recorded"
                       if not wrong and not deleting else
                       f"at t={final.at:g}: " + "; ".join(wrong + [f"{d} still being deleted" for d in deleting]))


def _activity_consistent(obs: Observations, check: CheckSpec) -> CheckResult:
    platform = obs.platform
    if platform is None:
        return CheckResult(check.kind, False, "no platform app in this lab run")
    problems, records = activity_violations(platform.history)
    counted = platform.final.recount if platform.final is not None else None
    passed = platform.history_complete and not problems and counted is not None and counted.equal \
        and not counted.invalid
    detail = (f"{records} activity record(s); {len(problems)} change(s) without exactly one record or record(s) "
              "without a change" + (f" (first: {problems[0]})" if problems else ""))
    if not platform.history_complete:
        detail += f"; etcd's history of the run not read to its end ({len(platform.history)} events)"
    if counted is None:
        detail += "; no recount at the end (etcd away)"
    else:
        detail += (f"; daily counts {'==' if counted.equal else '!='} recount ({counted.records} record(s))"
                   + (f", {len(counted.invalid)} invalid" if counted.invalid else ""))
    return CheckResult(check.kind, passed, detail)


CHECKS: dict[str, LabCheck] = {
    "no-duplicate-address": LabCheck(judge=_no_duplicate_address),
    "domains-keep-serving": LabCheck(judge=_domains_keep_serving),
    "leaks-found-and-released": LabCheck(after_faults=_leaks_found_and_released),
    "apps-serve-again": LabCheck(after_faults=_apps_serve_again),
    "max-failed-requests": LabCheck(judge=_max_failed_requests),
    "max-reloads": LabCheck(judge=_max_reloads),
    "builds-finish": LabCheck(after_faults=_builds_finish),
    "release-reverted-within": LabCheck(judge=_release_reverted_within),
    "release-completed": LabCheck(judge=_release_completed),
    "no-orphan-versions": LabCheck(judge=_no_orphan_versions),
    "activity-consistent": LabCheck(judge=_activity_consistent),
}


def liveness_deadlines(checks: tuple[CheckSpec, ...], faults_end: float, duration: float) -> list[float]:
    """The instants a probe must look at the lab: every liveness check's deadline within the run."""
    return sorted({faults_end + c.within for c in checks
                   if CHECKS[c.kind].liveness and faults_end + c.within <= duration})


def judge(obs: Observations, check: CheckSpec) -> CheckResult:
    entry = CHECKS[check.kind]
    if entry.after_faults is None:
        assert entry.judge is not None
        return entry.judge(obs, check)
    deadline = obs.faults_end + check.within
    probe = obs.probes.get(deadline)
    if probe is None:
        return CheckResult(check.kind, False, f"the run ends at {obs.duration:g} s, before the deadline "
                                              f"{deadline:g} s (last fault ends + {check.within:g} s)")
    return entry.after_faults(obs, check, probe)


def judge_all(obs: Observations, checks: tuple[CheckSpec, ...]) -> list[CheckResult]:
    return [judge(obs, c) for c in checks]
