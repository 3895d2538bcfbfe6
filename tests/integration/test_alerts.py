"""The shipped alert rules over simulated runs: each fault scenario fires its alert within its documented delay.

The table "Alerts of the shipped scenarios" in docs/metrics.md is the contract: one row per
(scenario, alert, first fault ``at``, ``within``). For each shipped scenario (seed of the
file) the run's series go to ``promtool test rules`` (``lab/alerts.py``: Prometheus' own rule
engine, ``for`` included, over the samples on the 10 s scrape grid) with three expectations:
nothing fired before ``at``; the row's alert fired within ``within`` after ``at``; nothing else
fired during the run. ``steady-state`` (churn, no fault) fires nothing across 20 seeds.
Needs promtool (Debian's prometheus); no root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from foundation.ports.metrics import CATALOGUE
from lab.alerts import firing_expr, first_firings, input_series, rule_metric_names, run_rule_tests, sim_samples
from sim.runner import RunResult, run_scenario
from sim.scenario import COSTS_FILE, load_scenario
from sim.spec import FaultSpec

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "leengine.rules.yml"
SCENARIOS = ROOT / "scenarios"
TABLE_HEADING = "### Alerts of the shipped scenarios"


@dataclass(frozen=True)
class Row:
    scenario: str
    at: float | None
    alert: str | None  # None: the scenario fires nothing
    within: float | None


def table() -> list[Row]:
    """The rows of the docs' table (scenario | at | alert | within | measured | why)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split(TABLE_HEADING, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| scenario"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        scenario, at, alert, within = cells[:4]
        rows.append(Row(scenario, float(at) if at else None, None if alert == "none" else alert,
                        float(within) if within else None))
    return rows


def run(name: str, seed: int | None = None) -> RunResult:
    return run_scenario(load_scenario(SCENARIOS / f"{name}.yaml", seed=seed))


def series_of(result: RunResult) -> list[dict[str, str]]:
    assert result.agent_metrics is not None
    return input_series(sim_samples(result.agent_metrics, rule_metric_names(RULES)), result.scrape_interval)


def check(result: RunResult, alerts: list[str], at: float | None, within: float | None) -> None:
    """Prometheus' rule engine over the run: quiet before ``at``, ``alerts`` within ``within``, nothing else."""
    end = result.spec.duration
    tests = [{"expr": firing_expr(end, exclude=alerts), "eval_time": end, "exp_samples": []}]
    if alerts:
        assert at is not None and within is not None
        tests.append({"expr": firing_expr(at), "eval_time": at, "exp_samples": []})
        tests.append({"expr": firing_expr(within, alerts), "eval_time": at + within,
                      "exp_samples": [{"labels": f'{{alertname="{a}"}}', "value": 1} for a in alerts]})
    series = series_of(result)
    outcome = run_rule_tests(RULES, series, tests, interval=result.scrape_interval)
    if not outcome.passed:
        fired = first_firings(RULES, series, interval=result.scrape_interval, end=end)
        pytest.fail(f"{result.spec.name} seed {result.spec.seed}: expected {alerts or 'no alert'} "
                    f"(within {within} s after {at}); first firings (virtual s): {fired}\n{outcome.output[-3000:]}")


def test_the_rule_file_reads_only_catalogue_series():
    exposed = set()
    for metric in CATALOGUE:
        exposed.add(metric.name)
        if metric.kind == "histogram":
            exposed.update(metric.name + s for s in ("_bucket", "_sum", "_count"))
    used = rule_metric_names(RULES)
    assert used and used <= exposed, sorted(used - exposed)


def test_the_table_covers_every_shipped_scenario_and_its_first_fault():
    rows = table()
    assert {r.scenario for r in rows} == {p.stem for p in SCENARIOS.glob("*.yaml") if p.name != COSTS_FILE}
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
              if "alert" in rule}
    for row in rows:
        spec = load_scenario(SCENARIOS / f"{row.scenario}.yaml").spec
        first = min((f.at for f in spec.faults), default=None)
        assert row.at == first, f"{row.scenario}: the table says {row.at}, its first fault is at {first}"
        assert row.alert is None or row.alert in alerts, row
        assert (row.alert is None) == (row.within is None), row


@pytest.mark.parametrize("name", sorted({r.scenario for r in table()} - {"steady-state"}))
def test_a_shipped_scenario_fires_its_alert_within_the_documented_delay(name: str) -> None:
    rows = [r for r in table() if r.scenario == name]
    alerts = [r.alert for r in rows if r.alert]
    within = max((r.within for r in rows if r.within is not None), default=None)
    check(run(name), alerts, rows[0].at, within)


def test_steady_state_fires_no_alert_across_20_seeds():
    for seed in range(1, 21):
        result = run("steady-state", seed)
        assert result.passed, result.checks
        check(result, [], None, None)


def test_an_etcd_outage_fires_the_etcd_alert():
    """No shipped scenario keeps etcd down long enough: steady-state with etcd down for 3 minutes."""
    scenario = load_scenario(SCENARIOS / "steady-state.yaml")
    spec = replace(scenario.spec, name="etcd-outage", duration=900.0,
                   faults=(FaultSpec("etcd-unavailable", at=300, duration=180),))
    result = run_scenario(replace(scenario, spec=spec))
    end = spec.duration
    tests = [{"expr": firing_expr(300), "eval_time": 300, "exp_samples": []},
             {"expr": firing_expr(120, ["LeEngineEtcdUnreachable"]), "eval_time": 420,
              "exp_samples": [{"labels": '{alertname="LeEngineEtcdUnreachable"}', "value": 1}]},
             # leaks left by the outage are the only other alert (cnictl finds them after it)
             {"expr": firing_expr(end, exclude=["LeEngineEtcdUnreachable", "LeEngineAddressesLeaked"]),
              "eval_time": end, "exp_samples": []}]
    outcome = run_rule_tests(RULES, series_of(result), tests, interval=result.scrape_interval)
    assert outcome.passed, outcome.output[-3000:]


def test_first_firings_reads_what_promtool_evaluated():
    """The measuring helper (used for the table's 'measured' column and failure messages) on one run."""
    result = run("cell-outage")
    fired = first_firings(RULES, series_of(result), interval=result.scrape_interval, end=result.spec.duration)
    assert fired == {"LeEngineCellUnreachable": 370.0}
    assert re.fullmatch(r"LeEngine\w+", next(iter(fired)))
