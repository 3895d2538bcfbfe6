"""Checks of a simulated Region: one table, name -> judge, each judge returning a ``CheckResult``.

Safety checks judge the whole run from what the world recorded (the auditor's duplicate
owners, the traffic's serving violations, counters). Liveness checks judge the Region at
a deadline: the last fault's declared end + ``within``; a ``Probe`` taken then by
``probe_at`` (a task spawned at boot for each such deadline) records what they need,
since the run goes on after it. A liveness deadline past the end of the run is a failed
verdict that says so. Adding a check is one entry here plus its line in sim/spec.py
(``CheckKind``); tests/sim/test_world_tables.py holds the table and the spec together.
It must not change the Region: judging is observation only.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.faults import last_fault_end
from sim.spec import CheckSpec

if TYPE_CHECKING:
    from sim.world import Region


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Probe:
    """The Region at a liveness deadline."""

    at: float
    not_serving: tuple[str, ...]  # "app on host"
    leaked: int  # addresses without a live pod
    unfinished_builds: tuple[str, ...]  # submitted before the faults ended


@dataclass(frozen=True)
class Check:
    judge: Callable[[Region, CheckSpec], CheckResult] | None = None  # a safety check: the whole run
    after_faults: Callable[[Region, CheckSpec, Probe], CheckResult] | None = None  # a liveness check: its probe

    @property
    def liveness(self) -> bool:
        return self.after_faults is not None


# ------------------------------------------------------------------ safety


def _no_duplicate_address(region: Region, check: CheckSpec) -> CheckResult:
    v = region.auditor.violations
    return CheckResult(check.kind, not v, f"{len(v)} duplicate owner(s)" + (f"; first: {v[0]}" if v else ""))


def _domains_keep_serving(region: Region, check: CheckSpec) -> CheckResult:
    n, examples = region.metrics.serving_violations, region.metrics.serving_examples
    return CheckResult(check.kind, not n, f"{n} host-second(s) without a live upstream while one was ready"
                       + (f"; first: {examples[0]}" if examples else ""))


def _max_failed_requests(region: Region, check: CheckSpec) -> CheckResult:
    failed = region.metrics.failed
    return CheckResult(check.kind, failed <= check.limit,
                       f"{failed} failed of {failed + region.metrics.ok} (limit {check.limit:g})")


def _max_reloads(region: Region, check: CheckSpec) -> CheckResult:
    worst = max(region.hosts.values(), key=lambda h: h.proxy.reload_count, default=None)
    count = worst.proxy.reload_count if worst else 0
    return CheckResult(check.kind, count <= check.limit, f"at most {count} reloads per host"
                       + (f" ({worst.name})" if worst else "") + f" (limit {check.limit:g})")


# ------------------------------------------------------------------ liveness


def leaks_verdict(check: CheckSpec, probe: Probe, gone: Mapping[str, str], released_by_cnictl: Container[str],
                  found: int, released: int) -> CheckResult:
    """leaks-found-and-released from what was observed: the sim's and the lab's one verdict (lab/checks.py).

    Gone, and gone through cnictl: every address a dead pod held was released by `cnictl release`
    (no other path frees a leak; a bug that did would show here). ``gone``: handle -> address.
    """
    elsewhere = sorted(gone[h] for h in gone if h not in released_by_cnictl)
    return CheckResult(check.kind, probe.leaked == 0 and not elsewhere,
                       f"at t={probe.at:g}: {probe.leaked} address(es) without a live pod; cnictl found "
                       f"{found} certain leak(s), released {released}"
                       + (f"; {len(elsewhere)} freed by something else: {', '.join(elsewhere[:5])}"
                          if elsewhere else ""))


def _leaks_found_and_released(region: Region, check: CheckSpec, probe: Probe) -> CheckResult:
    m = region.metrics
    return leaks_verdict(check, probe, region.auditor.leaks_gone, region.cron.released_by_cnictl,
                         m.leaks_found, m.leaks_released)


def apps_serve_again_verdict(check: CheckSpec, probe: Probe) -> CheckResult:
    """apps-serve-again from the probe at its deadline: the sim's and the lab's one verdict."""
    bad = probe.not_serving
    return CheckResult(check.kind, not bad, f"at t={probe.at:g}: " + (f"not serving: {', '.join(bad)}" if bad
                                                                        else "every app serves on every live host"))


def _apps_serve_again(region: Region, check: CheckSpec, probe: Probe) -> CheckResult:
    return apps_serve_again_verdict(check, probe)


def builds_verdict(check: CheckSpec, probe: Probe, submitted: int) -> CheckResult:
    """builds-finish from the probe and the builds submitted before the faults ended: the sim's and the lab's."""
    unfinished = probe.unfinished_builds
    return CheckResult(check.kind, not unfinished, f"at t={probe.at:g}: {submitted - len(unfinished)} of {submitted} "
                                                   "build(s) submitted before the faults ended have finished"
                       + (f"; unfinished: {', '.join(unfinished[:5])}" if unfinished else ""))


def _builds_finish(region: Region, check: CheckSpec, probe: Probe) -> CheckResult:
    return builds_verdict(check, probe,
                          region.farm.submitted(by=last_fault_end(region.spec.faults, region.spec.duration)))


CHECKS: dict[str, Check] = {
    "no-duplicate-address": Check(judge=_no_duplicate_address),
    "domains-keep-serving": Check(judge=_domains_keep_serving),
    "leaks-found-and-released": Check(after_faults=_leaks_found_and_released),
    "apps-serve-again": Check(after_faults=_apps_serve_again),
    "max-failed-requests": Check(judge=_max_failed_requests),
    "max-reloads": Check(judge=_max_reloads),
    "builds-finish": Check(after_faults=_builds_finish),
}


# ------------------------------------------------------------------ deadlines, probes, verdicts


def liveness_deadlines(region: Region) -> list[float]:
    """The instants a probe must look at the Region: every liveness check's deadline within the run."""
    spec = region.spec
    end = last_fault_end(spec.faults, spec.duration)
    return sorted({end + c.within for c in spec.checks if CHECKS[c.kind].liveness and end + c.within <= spec.duration})


async def probe_at(region: Region, deadline: float) -> None:
    """At the liveness deadline: which apps serve on every live host, how many addresses leak, which builds wait."""
    await region.runtime.sleep(max(0.0, deadline - region.runtime.now()))
    not_serving = region.traffic.not_serving_now()
    end = last_fault_end(region.spec.faults, region.spec.duration)
    unfinished = region.farm.unfinished(submitted_by=end)
    region.probes[deadline] = Probe(region.runtime.now(), tuple(not_serving), region.leaked(), tuple(unfinished))


def judge(region: Region, check: CheckSpec) -> CheckResult:
    """The verdict of one check of the spec, now."""
    entry = CHECKS[check.kind]
    if entry.after_faults is None:
        assert entry.judge is not None
        return entry.judge(region, check)
    deadline = last_fault_end(region.spec.faults, region.spec.duration) + check.within
    probe = region.probes.get(deadline)
    if probe is None:
        return CheckResult(check.kind, False, f"the run ends at {region.spec.duration:g} s, before the deadline "
                                              f"{deadline:g} s (last fault ends + {check.within:g} s)")
    return entry.after_faults(region, check, probe)
