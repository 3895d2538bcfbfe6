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
  (``sim.checks.activity_violations``), and the daily counts recounted.

The four platform checks are the sim's own verdicts (``reverted_verdict``, ``completed_verdict``,
``orphans_verdict``, ``activity_verdict``) over a ``sim.checks.PlatformSeen`` the lab fills from
what lab/platform.py observed (``Observed.seen``).

It must not change the lab: judging is observation only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.observe import Observations
from sim.checks import (
    CheckResult,
    PlatformSeen,
    Probe,
    activity_verdict,
    apps_serve_again_verdict,
    builds_verdict,
    completed_verdict,
    leaks_verdict,
    orphans_verdict,
    reverted_verdict,
)
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


def _seen(obs: Observations) -> PlatformSeen | None:
    if obs.platform is None:
        return None
    seen: PlatformSeen = obs.platform.seen(obs.platform_cells, obs.first_error)
    return seen


def _release_reverted_within(obs: Observations, check: CheckSpec) -> CheckResult:
    seen = _seen(obs)
    if seen is None:
        return CheckResult(check.kind, False, "no platform app in this lab run")
    return reverted_verdict(check, seen)


def _release_completed(obs: Observations, check: CheckSpec) -> CheckResult:
    seen = _seen(obs)
    if seen is None or not obs.release_apps:
        return CheckResult(check.kind, False, "no gray release in this lab run")
    return completed_verdict(check, seen, list(dict.fromkeys(obs.release_apps)), obs.outages, obs.duration)


def _no_orphan_versions(obs: Observations, check: CheckSpec) -> CheckResult:
    seen = _seen(obs)
    return orphans_verdict(check, seen.final if seen is not None else None)


def _activity_consistent(obs: Observations, check: CheckSpec) -> CheckResult:
    platform = obs.platform
    if platform is None:
        return CheckResult(check.kind, False, "no platform app in this lab run")
    verdict = activity_verdict(check, platform.history, platform.final)
    if platform.history_complete:
        return verdict
    return CheckResult(check.kind, False, verdict.detail + f"; etcd's history of the run not read to its end "
                                                          f"({len(platform.history)} events)")


def _one_build_per_commit(obs: Observations, check: CheckSpec) -> CheckResult:
    return CheckResult(check.kind, False, "not observed in the lab yet (it runs no GitLab pushes and does not "
                                          "record the registry's pushes): see tests/integration/test_webhook_e2e.py")


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
    "one-build-per-commit": LabCheck(judge=_one_build_per_commit),
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
