"""Alert rules evaluated by Prometheus' own rule engine over a simulated run's series (``promtool test rules``).

Why not a Prometheus server over the run's TSDB blocks: a server evaluates rules only at
its own wall-clock "now", and ``promtool tsdb create-blocks-from rules`` backfills
*recording* rules only (Prometheus' storage docs: "Alerts are currently ignored if they
are in the recording rule file"), so neither gives the ``ALERTS`` series of the past. What
does is ``promtool test rules``: it loads input series, evaluates every rule group at each
``evaluation_interval`` with Prometheus' rule manager (``for``, pending -> firing, the
``ALERTS`` series written back to its storage, recording rules before the alerts that read
them) and checks PromQL expectations at given times. So:

* ``sim_samples(metrics, names)`` takes the samples of the named families out of a
  ``SimMetrics`` (what the run wrote to ``metrics.om``), and ``input_series`` writes them as
  promtool's ``input_series``: one value per scrape interval, index ``i`` at virtual time
  ``i * interval``, ``_`` where the series did not exist yet; the run's virtual t=0 is the
  test's time 0, so every ``eval_time`` is a virtual time.
* ``rule_metric_names(rule_file)`` lists the catalogue series the rules read: only those
  are exported (the others cannot change a verdict) and the file stays small.
* ``run_rule_tests(rule_file, series, tests)`` writes the test file and runs promtool;
  ``first_firings`` asks it when each alert first fired (an expectation of "never", whose
  failure message lists what did fire: for measuring and for messages, not for verdicts).

It knows neither the catalogue nor the world: series are (name, labels, points).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from lab.prometheus import find_promtool

Series = tuple[str, Mapping[str, str], Sequence[tuple[float, float]]]  # sample name, labels, (t, value)
_METRIC = re.compile(r"\b(leengine_[a-z0-9_]+)\b")
_GOT_LINE = re.compile(r"got:(.*)")
_GOT_SAMPLE = re.compile(r'\{alertname="([^"]+)"\}\s*([-+0-9.eE]+)')


class _SampleSource(Protocol):
    def current_samples(self) -> Mapping[tuple[str, tuple[tuple[str, str], ...]], float]: ...

    def points(self, name: str, labels: Mapping[str, str] | None = None) -> list[tuple[float, float]]: ...


def rule_metric_names(rule_file: str | Path) -> set[str]:
    """The ``leengine_`` series every expression of the rule file reads (recorded ``a:b:c`` names excluded)."""
    doc = yaml.safe_load(Path(rule_file).read_text())
    names: set[str] = set()
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            names.update(_METRIC.findall(str(rule.get("expr", ""))))
    return names


def sim_samples(metrics: _SampleSource, names: Iterable[str]) -> list[Series]:
    """Every sampled series of the named sample names in a ``SimMetrics``, sorted (name, labels)."""
    wanted = set(names)
    keys = sorted(k for k in metrics.current_samples() if k[0] in wanted)
    return [(name, dict(labels), metrics.points(name, dict(labels))) for name, labels in keys]


def _selector(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _value(v: float) -> str:
    return repr(float(v)) if v == v else "NaN"


def input_series(series: Iterable[Series], interval: float) -> list[dict[str, str]]:
    """promtool ``input_series``: each series' values on the grid ``i * interval`` (``_``: no sample then).

    A sample off the grid is an error: the simulator samples on round multiples of its
    scrape interval, and silently moving a point would move an alert.
    """
    out = []
    for name, labels, points in series:
        slots: dict[int, float] = {}
        for t, v in points:
            i = round(t / interval)
            if abs(i * interval - t) > 1e-6:
                raise ValueError(f"{name}: sample at {t!r} is not on the {interval:g} s grid")
            slots[i] = v
        if not slots:
            continue
        values = [_value(slots[i]) if i in slots else "_" for i in range(max(slots) + 1)]
        out.append({"series": _selector(name, labels), "values": " ".join(values)})
    return out


@dataclass(frozen=True)
class RuleTestRun:
    passed: bool
    output: str  # promtool's stdout + stderr: which expectation failed, with what it got


def run_rule_tests(rule_file: str | Path, series: list[dict[str, str]], expr_tests: list[dict[str, Any]], *,
                   interval: float, workdir: str | Path | None = None) -> RuleTestRun:
    """Run ``promtool test rules`` over ``series`` with the ``promql_expr_test`` entries ``expr_tests``.

    ``eval_time`` values are seconds (virtual time); the rules are evaluated every ``interval``.
    """
    tests = [{**t, "eval_time": f"{round(float(t['eval_time']))}s"} for t in expr_tests]
    doc = {"rule_files": [str(Path(rule_file).resolve())], "evaluation_interval": f"{interval:g}s",
           "tests": [{"interval": f"{interval:g}s", "input_series": series, "promql_expr_test": tests}]}
    with tempfile.TemporaryDirectory(prefix="leengine-alerts-", dir=workdir) as tmp:
        path = Path(tmp) / "sim_test.yml"
        path.write_text(json.dumps(doc))  # JSON is YAML
        done = subprocess.run([find_promtool(), "test", "rules", str(path)], capture_output=True, text=True,
                              check=False)
    return RuleTestRun(done.returncode == 0, (done.stdout + done.stderr).strip())


def firing_expr(window: float, alerts: Sequence[str] = (), *, exclude: Sequence[str] = ()) -> str:
    """PromQL: per alertname, 1 if it was firing at any evaluation within the last ``window`` seconds."""
    matchers = ['alertstate="firing"']
    if alerts:
        matchers.append(f'alertname=~"{"|".join(alerts)}"')
    if exclude:
        matchers.append(f'alertname!~"{"|".join(exclude)}"')
    return f"max by (alertname) (max_over_time(ALERTS{{{','.join(matchers)}}}[{round(window)}s]))"


def first_firings(rule_file: str | Path, series: list[dict[str, str]], *, interval: float,
                  end: float) -> dict[str, float]:
    """Alertname -> the first virtual time it fired by ``end`` (empty: none fired). Measurement only."""
    expr = (f"min by (alertname) (min_over_time(timestamp(ALERTS{{alertstate=\"firing\"}})"
            f"[{round(end)}s:{interval:g}s]))")
    run = run_rule_tests(rule_file, series, [{"expr": expr, "eval_time": end, "exp_samples": []}],
                         interval=interval)
    if run.passed:
        return {}
    found = {name: float(value) for line in _GOT_LINE.findall(run.output)
             for name, value in _GOT_SAMPLE.findall(line)}
    if not found:
        raise RuntimeError(f"promtool test rules failed without a result to read:\n{run.output[-2000:]}")
    return found
