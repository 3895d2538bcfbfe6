"""lab/reference.py: the machine's raw rates are measured, positive and of the size a machine gives; a machine
that cannot fork gives none (and a finished lab run keeps its report)."""

from __future__ import annotations

import subprocess

import pytest

from lab import reference
from lab.reference import RATES, reference_rates


def test_both_rates_are_measured_and_plausible() -> None:
    rates = reference_rates()
    assert rates is not None and set(rates) == set(RATES)
    assert 1 < rates["fork_exec_per_second"] < 1_000_000  # a process start is neither free nor seconds
    assert 1 < rates["sha256_mib_per_second"] < 1_000_000


def test_a_machine_that_cannot_fork_gives_no_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork(*args: object, **kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(reference.subprocess, "run", no_fork)
    assert reference_rates() is None
    monkeypatch.setattr(reference.subprocess, "run",
                        lambda *a, **k: (_ for _ in ()).throw(subprocess.CalledProcessError(1, "/bin/true")))
    assert reference_rates() is None
