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

It must not change the lab: judging is observation only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.observe import Observations
from sim.checks import CheckResult, Probe, apps_serve_again_verdict, builds_verdict, leaks_verdict
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


CHECKS: dict[str, LabCheck] = {
    "no-duplicate-address": LabCheck(judge=_no_duplicate_address),
    "domains-keep-serving": LabCheck(judge=_domains_keep_serving),
    "leaks-found-and-released": LabCheck(after_faults=_leaks_found_and_released),
    "apps-serve-again": LabCheck(after_faults=_apps_serve_again),
    "max-failed-requests": LabCheck(judge=_max_failed_requests),
    "max-reloads": LabCheck(judge=_max_reloads),
    "builds-finish": LabCheck(after_faults=_builds_finish),
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
