"""The world's fault and check tables and the spec name the same kinds: adding one touches its table and the spec."""

from __future__ import annotations

from dataclasses import replace

from sim.checks import CHECKS, CheckResult
from sim.faults import FAULTS
from sim.spec import CHECK_KINDS, FAULT_KINDS, FAULT_PARAMS, FAULT_TARGETS, CheckSpec, FaultSpec
from sim.world import Region, run_region
from tests.sim.test_world import small_region


def test_the_fault_table_has_exactly_the_specs_fault_kinds():
    assert set(FAULTS) == set(FAULT_KINDS)
    assert set(FAULT_TARGETS) == set(FAULT_KINDS)  # what each kind selects, for the validator and the world
    assert {kind for kinds in FAULT_PARAMS.values() for kind in kinds} <= set(FAULT_KINDS)


def test_the_check_table_has_exactly_the_specs_check_kinds():
    assert set(CHECKS) == set(CHECK_KINDS)
    # Each entry judges the whole run or the probe at its deadline, never both.
    assert all((c.judge is None) != (c.after_faults is None) for c in CHECKS.values())


def test_every_fault_kind_but_a_burst_mends_what_it_broke():
    assert {kind for kind, fault in FAULTS.items() if fault.undo is None} == {"reload-storm"}


def test_a_verdict_is_a_frozen_record_in_the_specs_order():
    checks = (CheckSpec("max-reloads", limit=1000), CheckSpec("no-duplicate-address"),
              CheckSpec("apps-serve-again", within=10_000))
    spec = replace(small_region(faults=(FaultSpec("etcd-slow", at=10, duration=5),)), checks=checks, duration=60.0)
    report, region = run_region(spec)
    verdicts = region.checks()
    assert all(isinstance(v, CheckResult) for v in verdicts)
    assert [v.name for v in verdicts] == ["max-reloads", "no-duplicate-address", "apps-serve-again"]
    assert [v.passed for v in verdicts] == [True, True, False]
    assert "before the deadline" in verdicts[2].detail  # 15 + 10,000 s is after the end of the run
    assert [c["name"] for c in report["checks"]] == [v.name for v in verdicts]
    assert isinstance(region, Region)
