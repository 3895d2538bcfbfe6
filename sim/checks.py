"""Checks of a simulated Region: one table, name -> judge, each judge returning a ``CheckResult``.

Safety checks judge the whole run from what the world recorded (the auditor's duplicate
owners, the traffic's serving violations, counters). Liveness checks judge the Region at
a deadline: the last fault's declared end + ``within``; a ``Probe`` taken then by
``probe_at`` (a task spawned at boot for each such deadline) records what they need,
since the run goes on after it. A liveness deadline past the end of the run is a failed
verdict that says so. Adding a check is one entry here plus its line in sim/spec.py
(``CheckKind``); tests/sim/test_world_tables.py holds the table and the spec together.
The platform's checks (a Region with platform apps, sim/platform.py) judge what its
observers recorded: the shares and release states over time, the controllers' deletion
times, the Store's history (``activity_violations``: one verdict for the sim and the lab)
and the final look at the platform just before the run ends.
It must not change the Region: judging is observation only.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from control.activity import ACTIVITY, COUNTS, Recount
from control.apps import APPS, VERSIONS
from control.image_groups import IMAGE_GROUPS
from control.members import MEMBERS
from control.releases import RELEASES, InvalidRelease, decode_release
from control.robots import ROBOTS
from control.webhooks import HOOKS
from foundation.logic.build_task import RESULTS, TASKS, Task, TaskError
from foundation.ports import WatchEvent
from foundation.ports.workloads import controller_name
from sim.adapters.builder import PushSeen
from sim.faults import last_fault_end, occurrences
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


# ------------------------------------------------------------------ the platform


def _path(marks: Iterable[tuple[str, int]]) -> str:
    """A release's states, e.g. "running 1% -> reverting 1% -> reverted 1%" (repeats in a row once)."""
    shown: list[str] = []
    for state, percent in marks:
        mark = f"{state} {percent}%"
        if not shown or shown[-1] != mark:
            shown.append(mark)
    return " -> ".join(shown)


def _shares_off(timeline: Iterable[tuple[float, Mapping[str, int] | None]], version: str, after: float) -> float | None:
    """When the version's share was first 0 (or the record gone) at or after ``after``."""
    for at, shares in timeline:
        if at >= after and (shares is None or shares.get(version, 0) == 0):
            return at
    return None


@dataclass(frozen=True)
class Final:
    """The platform at the end of the run (just before it)."""

    at: float
    active: Mapping[str, set[str]]  # app -> names of its active version records
    deleting: Mapping[str, set[str]]  # app -> versions recorded as being deleted
    controllers: Mapping[tuple[str, str], set[str]]  # (app, Cell) -> controllers there
    recount: Recount | None  # control.activity.recount then (None: etcd away)


@dataclass(frozen=True)
class PlatformSeen:
    """What a run showed of the platform, for the platform's verdicts: the sim's observers fill it
    (sim/platform.py ``Platform.seen``); a lab fills it from what it reads (the same verdicts)."""

    cells: Mapping[str, tuple[str, ...]]  # platform app -> its Cells
    first_error: Mapping[tuple[str, str], float]  # (app, version) -> its first failed request
    shares: Mapping[str, Sequence[tuple[float, Mapping[str, int] | None]]]  # app -> (t, shares; None: no record)
    releases: Mapping[str, Sequence[tuple[float, str, int, str]]]  # app -> (t, state, percent, new version)
    # (app, version, Cell) -> when its controller was deleted there, for controllers absent at the end
    controllers_gone: Mapping[tuple[str, str, str], float]
    final: Final | None


def reverted_verdict(check: CheckSpec, seen: PlatformSeen) -> CheckResult:
    """release-reverted-within: each version that failed a request had its share at 0 and its controllers
    deleted in every Cell of its app within ``check.within`` of its first failure."""
    if not seen.first_error:
        return CheckResult(check.kind, False, "no bad version failed a request: nothing to revert")
    passed, words = True, []
    for (app, version), first in sorted(seen.first_error.items()):
        shares_off = _shares_off(seen.shares.get(app, ()), version, first)
        gone = [seen.controllers_gone[(app, version, cell)] for cell in seen.cells[app]
                if (app, version, cell) in seen.controllers_gone]
        still = [cell for cell in seen.cells[app] if (app, version, cell) not in seen.controllers_gone]
        states = _path((s, p) for _, s, p, new in seen.releases.get(app, ()) if new == version)
        if shares_off is None or still:
            passed = False
            words.append(f"{app} {version}: first error at t={first:g}, not reverted (share "
                         + ("0 at t=" + f"{shares_off:g}" if shares_off is not None else "still > 0")
                         + (f"; controllers still in {', '.join(still)}" if still else "") + f"; release {states})")
            continue
        took = max([shares_off, *gone]) - first
        passed = passed and took <= check.within
        words.append(f"{app} {version}: first error at t={first:g}, share 0 at t={shares_off:g}, controllers gone "
                     f"at t={max(gone):g}: {took:.1f} s (limit {check.within:g} s); release {states}")
    return CheckResult(check.kind, passed, "; ".join(words))


def completed_verdict(check: CheckSpec, seen: PlatformSeen, apps: Sequence[str],
                      outages: Sequence[tuple[float, float]], end: float) -> CheckResult:
    """release-completed: the release of each of ``apps`` ended completed, never reverted, paused if a Cell
    outage (start, end) overlapped it, and left only its new version (records and controllers)."""
    if not apps:
        return CheckResult(check.kind, False, "no gray release in this Region")
    final = seen.final
    passed, words = True, []
    for app in apps:
        timeline = seen.releases.get(app, [])
        if not timeline:
            passed = False
            words.append(f"{app}: no release started")
            continue
        new = timeline[-1][3]
        mine = [(at, state, percent) for at, state, percent, v in timeline if v == new]
        states = [state for _, state, _ in mine]
        started = mine[0][0]
        ended = next((at for at, state, _ in mine if state == "completed"), end)
        problems = []
        if states[-1] != "completed":
            problems.append(f"ended {states[-1]}")
        if "reverting" in states or "reverted" in states:
            problems.append("reverted")
        if any(a < ended and b > started for a, b in outages) and "paused" not in states:
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
        path = _path((s, p) for _, s, p in mine)
        words.append(f"{app} {new}: {path}" + (f" at t={ended:g}" if "completed" in states else "")
                     + (f"; {'; '.join(problems)}" if problems else ""))
    return CheckResult(check.kind, passed, "; ".join(words))


def orphans_verdict(check: CheckSpec, final: Final | None) -> CheckResult:
    """no-orphan-versions: every Cell's controllers of each platform app are its active version records."""
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


def _seen(region: Region) -> PlatformSeen | None:
    return region.platform.seen() if region.platform is not None else None


def _release_reverted_within(region: Region, check: CheckSpec) -> CheckResult:
    seen = _seen(region)
    if seen is None:
        return CheckResult(check.kind, False, "no platform app in this Region")
    return reverted_verdict(check, seen)


def _release_completed(region: Region, check: CheckSpec) -> CheckResult:
    seen = _seen(region)
    if seen is None:
        return CheckResult(check.kind, False, "no platform app in this Region")
    spec = region.spec
    outages = [(at, at + (f.duration or spec.duration)) for f in spec.faults if f.kind == "cell-outage"
               for at in occurrences(f, spec.duration)]
    return completed_verdict(check, seen, list(dict.fromkeys(r.app for r in spec.releases)), outages, spec.duration)


def _no_orphan_versions(region: Region, check: CheckSpec) -> CheckResult:
    seen = _seen(region)
    return orphans_verdict(check, seen.final if seen is not None else None)


def activity_violations(history: Iterable[WatchEvent]) -> tuple[list[str], int]:
    """Revision by revision: a platform change without exactly one activity record and one count, or a
    record without a change; and the number of records. A change is a put of an app, version,
    membership, hook binding, image group or robot record, or of a release record whose state or step
    changed; a deletion the reconciler completes (apps, versions, memberships) carries no record and is
    none, a user's deletion (an unbind, a robot revoked too) carries its record. The sim's and the lab's
    one verdict."""
    by_revision: dict[int, list[WatchEvent]] = defaultdict(list)
    for event in history:
        by_revision[event.revision].append(event)
    releases: dict[str, tuple[str, int] | None] = {}
    problems, records = [], 0
    for revision, events in by_revision.items():
        changed = deleted = 0
        for e in events:
            key = e.kv.key
            if key.startswith((APPS, VERSIONS, MEMBERS, HOOKS, IMAGE_GROUPS, ROBOTS)):
                if e.type == "put":
                    changed += 1
                else:
                    deleted += 1
            elif key.startswith(RELEASES) and e.type == "put":
                try:
                    release = decode_release(e.kv)
                    mark: tuple[str, int] | None = (release.state, release.step)
                except InvalidRelease:
                    mark = None
                if key not in releases or releases[key] != mark:
                    changed += 1
                releases[key] = mark
        logged = sum(1 for e in events if e.kv.key.startswith(ACTIVITY) and e.type == "put")
        counted = sum(1 for e in events if e.kv.key.startswith(COUNTS) and e.type == "put")
        erased = [e.kv.key for e in events if e.kv.key.startswith((ACTIVITY, COUNTS)) and e.type == "delete"]
        if (changed and logged != 1) or (logged and not (changed or deleted)) or logged > 1 \
                or counted != logged or erased:
            problems.append(f"revision {revision}: {', '.join(e.kv.key for e in events)[:300]}")
        records += logged
    return problems, records


def activity_verdict(check: CheckSpec, history: Iterable[WatchEvent], final: Final | None) -> CheckResult:
    """activity-consistent from the store's history and the recount at the end: the sim's and the lab's."""
    problems, records = activity_violations(history)
    counted = final.recount if final is not None else None
    passed = not problems and counted is not None and counted.equal and not counted.invalid \
        and counted.records == records
    detail = (f"{records} activity record(s); {len(problems)} change(s) without exactly one record or record(s) "
              "without a change" + (f" (first: {problems[0]})" if problems else ""))
    if final is None or counted is None:
        detail += "; no recount at the end (etcd away)"
    else:
        detail += (f"; daily counts {'==' if counted.equal else '!='} recount ({counted.records} record(s) at "
                   f"t={final.at:g}" + (f", {len(counted.invalid)} invalid" if counted.invalid else "") + ")")
    return CheckResult(check.kind, passed, detail)


def _activity_consistent(region: Region, check: CheckSpec) -> CheckResult:
    seen = _seen(region)
    return activity_verdict(check, region.store.history(), seen.final if seen is not None else None)


# ------------------------------------------------------------------ builds on push


def one_build_verdict(check: CheckSpec, history: Iterable[WatchEvent], pushes: Sequence[PushSeen],
                      answered: Mapping[str, str]) -> CheckResult:
    """one-build-per-commit from the Store's history, the registry's pushes and the hook answers.

    Every build task (``{app}@{commit}``: one repository's commit) is queued once: one put of its
    record as first queued (attempt 1, ``queued``; an agent's ``running`` and a move's attempt + 1
    are not queueings); each task a hook delivery answered ``queued`` or ``duplicate`` was queued;
    at most one result per task; and every push the registry accepted came from the attempt
    current at that revision (the SHA-256 of its secret is the current task record's, and no
    result exists yet): never from a superseded attempt (a zombie). Pure: the sim's and the lab's."""
    queued: Counter[str] = Counter()
    results: Counter[str] = Counter()
    timeline: dict[str, list[tuple[int, str | None]]] = defaultdict(list)  # task -> (revision, secret's SHA-256)
    for event in history:
        key = event.kv.key
        if key.startswith(TASKS):
            task = key.rpartition("/")[2]
            if event.type != "put":
                timeline[task].append((event.revision, None))  # moved (its new key follows) or finished
                continue
            try:
                record = Task.from_bytes(event.kv.value)
            except TaskError:
                continue
            if record.attempt == 1 and record.state == "queued":
                queued[task] += 1
            secret = hashlib.sha256(record.push_secret.encode()).hexdigest() if record.push_secret else None
            timeline[task].append((event.revision, secret))
        elif key.startswith(RESULTS) and event.type == "put":
            task = key.removeprefix(RESULTS)
            results[task] += 1
            timeline[task].append((event.revision, None))
    problems = [f"{task} queued {n} times" for task, n in sorted(queued.items()) if n > 1]
    problems += [f"{task} answered {outcome} but never queued" for task, outcome in sorted(answered.items())
                 if not queued[task]]
    problems += [f"{task} has {n} results" for task, n in sorted(results.items()) if n > 1]
    accepted = [p for p in pushes if p.accepted]
    for push in accepted:
        task = push.user.removeprefix("build$")
        then = [secret for revision, secret in timeline.get(task, []) if revision <= push.revision]
        if not then or then[-1] is None or then[-1] != push.secret_sha256:
            problems.append(f"a push to {push.repository}:{push.tag[:12]} at t={push.at:g} came from a superseded "
                            f"attempt of {task}")
    refused = sum(1 for p in pushes if not p.accepted)
    detail = (f"{len(queued)} build(s) queued, {sum(results.values())} result(s); {len(accepted)} push(es) accepted, "
              f"{refused} refused (attempts superseded or cancelled: fenced off); {len(answered)} commit(s) "
              "acknowledged to GitLab")
    if problems:
        detail += f"; {len(problems)} violation(s), first: {problems[0]}"
    return CheckResult(check.kind, not problems, detail)


def _one_build_per_commit(region: Region, check: CheckSpec) -> CheckResult:
    answered = region.webhooks.answered if region.webhooks is not None else {}
    return one_build_verdict(check, region.store.history(), region.farm.registry.pushes, answered)


CHECKS: dict[str, Check] = {
    "no-duplicate-address": Check(judge=_no_duplicate_address),
    "domains-keep-serving": Check(judge=_domains_keep_serving),
    "leaks-found-and-released": Check(after_faults=_leaks_found_and_released),
    "apps-serve-again": Check(after_faults=_apps_serve_again),
    "max-failed-requests": Check(judge=_max_failed_requests),
    "max-reloads": Check(judge=_max_reloads),
    "builds-finish": Check(after_faults=_builds_finish),
    "release-reverted-within": Check(judge=_release_reverted_within),
    "release-completed": Check(judge=_release_completed),
    "no-orphan-versions": Check(judge=_no_orphan_versions),
    "activity-consistent": Check(judge=_activity_consistent),
    "one-build-per-commit": Check(judge=_one_build_per_commit),
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
