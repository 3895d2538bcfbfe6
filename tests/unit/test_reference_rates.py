"""lab/reference.py: the machine's raw rates are measured, positive and of the size a machine gives."""

from __future__ import annotations

from lab.reference import RATES, exec_rate, reference_rates, sha256_rate


def test_both_rates_are_measured_and_plausible() -> None:
    rates = reference_rates()
    assert set(rates) == set(RATES)
    assert 1 < rates["fork_exec_per_second"] < 1_000_000  # a process start is neither free nor seconds
    assert 1 < rates["sha256_mib_per_second"] < 1_000_000


def test_more_work_takes_longer_at_the_same_rate() -> None:
    # Rates, not times: 4x the work must not give a wildly different rate (the loop is what is timed).
    small, large = sha256_rate(16), sha256_rate(64)
    assert 0.25 < large / small < 4
    assert exec_rate(5) > 0
