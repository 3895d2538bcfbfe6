"""The sim held against the lab: two report.json files of one scenario and seed, side by side.

``compare(sim, lab)`` reads what both reports have in the same shape (sim/report.py, the
lab's run driver writes the same) and answers three questions:

* **verdicts**: every check's pass/fail in both; they must be equal (a check only one
  report has is a difference). This is what ``leengine compare`` exits 1 on.
* **exact counts**: ``leaks_found``, ``leaks_released``, ``reloads`` (report ``metrics``)
  and ``pods_started``, ``pods_died`` (report ``counts``): equal or different.
* **distributions**: of each ``samples`` list (``cni_add_seconds``, ``propagation_seconds``,
  ``reload_seconds``, ``drain_seconds``, ``build_seconds``) the count, median and p90 in
  both, the ratio lab median / sim median, and whether it is within the band: ``|ratio - 1|
  <= band``. Bands (``BANDS``): 25 % for ADD latency and reload duration (the issue's
  target for the fitted cost models); 50 % for propagation, drains and builds, which add
  timers and queueing (the SLB agent's batching, discovery's 50 ms drain polls, the
  scheduler's placement) that the sim reproduces as code rather than as a fitted number.
  A list empty in both is "no samples" (not judged); empty in one only is outside.
* **what the lab's seconds are of**: each run's machine load and raw reference rates
  (``lab.machine_load``, ``lab.reference_rates``), read back validated: a value that is not
  a finite positive number makes the whole record "not recorded".

``write_outputs(comparison, sim, lab, out)`` writes ``compare.png`` (the CDFs overlaid, one
panel per distribution) and ``compare.html`` (the tables and the figure, one page).
Quantiles are ``sim.metrics.percentile``'s (rank ``int(q * n)``), the same as the reports'.
It must not run anything, and must not know how either report was made.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.reference import RATES
from sim.metrics import percentile

SAMPLES = ("cni_add_seconds", "propagation_seconds", "reload_seconds", "drain_seconds", "build_seconds")
BANDS: dict[str, float] = {"cni_add_seconds": 0.25, "reload_seconds": 0.25, "propagation_seconds": 0.5,
                           "drain_seconds": 0.5, "build_seconds": 0.5}
EXACT: tuple[tuple[str, str], ...] = (("metrics", "leaks_found"), ("metrics", "leaks_released"),
                                      ("counts", "pods_started"), ("counts", "pods_died"), ("metrics", "reloads"))
MAX_REPORT_BYTES = 64 << 20  # a report of 5 lists of 5,000 samples is < 1 MiB


class CompareError(ValueError):
    """A report that cannot be compared: one line naming the file and why."""


@dataclass(frozen=True)
class CheckRow:
    name: str
    sim: bool | None  # None: the report has no such check
    lab: bool | None  # several lab runs: their common verdict, None when they differ
    lab_runs: tuple[bool | None, ...] = ()  # each lab run's, when there are several

    @property
    def equal(self) -> bool:
        return self.sim is not None and all(v == self.sim for v in self.lab_runs or (self.lab,))


@dataclass(frozen=True)
class CountRow:
    name: str
    sim: float | None
    lab: float | None  # several lab runs: their common count, None when they differ
    lab_runs: tuple[float | None, ...] = ()

    @property
    def equal(self) -> bool:
        return self.sim is not None and all(v == self.sim for v in self.lab_runs or (self.lab,))


@dataclass(frozen=True)
class DistributionRow:
    name: str
    sim: tuple[float, ...]  # ascending
    lab: tuple[float, ...]
    band: float

    def median(self, side: str) -> float | None:
        values = list(getattr(self, side))
        return percentile(values, 0.5, 6) if values else None

    def p90(self, side: str) -> float | None:
        values = list(getattr(self, side))
        return percentile(values, 0.9, 6) if values else None

    @property
    def ratio(self) -> float | None:
        """Lab median / sim median (None when either side has no samples; inf over a zero sim median)."""
        sim, lab = self.median("sim"), self.median("lab")
        if sim is None or lab is None:
            return None
        if sim == 0:
            return 1.0 if lab == 0 else math.inf
        return lab / sim

    @property
    def within(self) -> bool | None:
        """Within the band; None when neither report has samples (nothing to judge)."""
        if not self.sim and not self.lab:
            return None
        ratio = self.ratio
        return ratio is not None and abs(ratio - 1.0) <= self.band + 1e-12


@dataclass
class Comparison:
    checks: list[CheckRow] = field(default_factory=list)
    counts: list[CountRow] = field(default_factory=list)
    distributions: list[DistributionRow] = field(default_factory=list)
    sim_name: str = ""
    lab_name: str = ""
    lab_loads: tuple[MachineLoad | None, ...] = ()  # each lab run's machine load (None: not recorded)
    lab_rates: tuple[ReferenceRates | None, ...] = ()  # each lab run's reference rates (None: not recorded)

    @property
    def lab_load(self) -> MachineLoad | None:
        """The one lab run's machine load (None when not recorded, or with several runs)."""
        return self.lab_loads[0] if len(self.lab_loads) == 1 else None

    @property
    def verdicts_equal(self) -> bool:
        return all(row.equal for row in self.checks)

    @property
    def counts_equal(self) -> bool:
        return all(row.equal for row in self.counts)

    @property
    def within_bands(self) -> bool:
        return all(row.within is not False for row in self.distributions)

    def as_dict(self) -> dict[str, Any]:
        return {"verdicts_equal": self.verdicts_equal, "counts_equal": self.counts_equal,
                "within_bands": self.within_bands,
                "lab_machine_load": vars(self.lab_load) if self.lab_load is not None else None,
                "lab_runs": len(self.lab_loads),
                "lab_reference_rates": [vars(r) if r is not None else None for r in self.lab_rates],
                "checks": [{"name": r.name, "sim": r.sim, "lab": r.lab, "equal": r.equal}
                           | ({"lab_runs": list(r.lab_runs)} if r.lab_runs else {}) for r in self.checks],
                "counts": [{"name": r.name, "sim": r.sim, "lab": r.lab, "equal": r.equal}
                           | ({"lab_runs": list(r.lab_runs)} if r.lab_runs else {}) for r in self.counts],
                "distributions": [{"name": r.name, "sim_n": len(r.sim), "lab_n": len(r.lab),
                                   "sim_median": r.median("sim"), "sim_p90": r.p90("sim"),
                                   "lab_median": r.median("lab"), "lab_p90": r.p90("lab"), "ratio": r.ratio,
                                   "band": r.band, "within": r.within} for r in self.distributions]}


# ------------------------------------------------------------------ reading


def load_report(path: Path) -> dict[str, Any]:
    """A report.json as a dict, or ``CompareError`` with one line (missing, unreadable, not JSON, not a report)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CompareError(f"{path}: a directory, not a report.json") from None
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise CompareError(f"{path}: larger than {MAX_REPORT_BYTES >> 20} MiB: not a report")
    try:
        report = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CompareError(f"{path}: not JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
        raise CompareError(f"{path}: not a run report (no \"checks\" list: write one with `leengine sim run` "
                           "or `leengine lab run`)")
    for i, check in enumerate(report["checks"]):
        if not isinstance(check, dict) or not isinstance(check.get("name"), str) \
                or not isinstance(check.get("passed"), bool):
            raise CompareError(f"{path}: checks[{i}] is not {{\"name\": str, \"passed\": bool}}")
    for key in ("metrics", "counts", "samples"):
        if key in report and not isinstance(report[key], dict):
            raise CompareError(f"{path}: \"{key}\" is not a mapping")
    return report


def samples(report: dict[str, Any], name: str) -> tuple[float, ...]:
    """A report's sample list, ascending; finite numbers only (anything else is dropped)."""
    values = (report.get("samples") or {}).get(name) or []
    if not isinstance(values, list):
        return ()
    return tuple(sorted(v for v in map(_finite, values) if v is not None))


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (a bool, text, NaN, an integer too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class MachineLoad:
    """The machine's 1-minute load average over a lab run (``lab run`` samples it with the series)."""

    cpus: int
    low: float
    median: float
    high: float

    @property
    def per_cpu(self) -> float:
        return self.median / self.cpus

    def __str__(self) -> str:
        return f"1-minute load {self.low:g}-{self.high:g} (median {self.median:g}) on {self.cpus} CPUs"


def machine_load(report: dict[str, Any]) -> MachineLoad | None:
    """A lab report's machine load, or None (a sim report, an older lab report, or values that are not numbers)."""
    lab = report.get("lab")
    got = lab.get("machine_load") if isinstance(lab, dict) else None
    if not isinstance(got, dict):
        return None
    cpus = got.get("cpus")
    values = [_finite(got.get(k)) for k in ("load1_min", "load1_median", "load1_max")]
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 4096:
        return None
    low, median, high = values
    if low is None or median is None or high is None or not 0 <= low <= median <= high:
        return None
    return MachineLoad(cpus, low, median, high)


@dataclass(frozen=True)
class ReferenceRates:
    """The machine's raw rates just before and after a lab run (lab/reference.py): what its seconds are of."""

    before: dict[str, float]
    after: dict[str, float]

    def __str__(self) -> str:
        return ", ".join(f"{label} {self.before[name]:,.0f} -> {self.after[name]:,.0f}{unit}"
                         for name, (label, unit, _) in RATES.items()) + " (just before -> after the run)"


def _rates(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    rates = {}
    for name in RATES:
        rate = _finite(value.get(name))
        if rate is None or not 0 < rate < 1e12:
            return None
        rates[name] = rate
    return rates


def reference_rates(report: dict[str, Any]) -> ReferenceRates | None:
    """A lab report's reference rates, or None (a sim report, an older lab report, values that are not rates)."""
    lab = report.get("lab")
    got = lab.get("reference_rates") if isinstance(lab, dict) else None
    if not isinstance(got, dict):
        return None
    before, after = _rates(got.get("before")), _rates(got.get("after"))
    return ReferenceRates(before, after) if before is not None and after is not None else None


def _number(report: dict[str, Any], section: str, name: str) -> float | None:
    value = (report.get(section) or {}).get(name)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _name(report: dict[str, Any], path: str) -> str:
    scenario = report.get("scenario")
    name = scenario.get("name") if isinstance(scenario, dict) else report.get("region")
    return f"{name} seed {report.get('seed')}" if isinstance(name, str) else path


def _common(values: list[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else None


def compare(sim: dict[str, Any], lab: dict[str, Any] | list[dict[str, Any]],
            bands: dict[str, float] | None = None) -> Comparison:
    """``lab``: one lab run's report, or several runs' of the same scenario and seed.

    Several runs: each verdict and count must equal the sim's in every run; the distributions
    pool the runs' samples (the lab's distribution, of which one run's few samples are a noisy
    draw: a boot's 2 reloads make a median of 2). ``CompareError`` when the runs are not of one
    scenario and seed."""
    labs = lab if isinstance(lab, list) else [lab]
    if not labs:
        raise CompareError("give at least one lab report")
    runs_of = {(_name(r, "lab"), repr(r.get("seed"))[:40]) for r in labs}  # repr: a hostile seed may be a list
    if len(runs_of) > 1:
        raise CompareError("the lab reports are not runs of one scenario and seed: "
                           + ", ".join(sorted(name for name, _ in runs_of))[:300])
    bands = {**BANDS, **(bands or {})}
    several = len(labs) > 1
    out = Comparison(sim_name=_name(sim, "sim"),
                     lab_name=_name(labs[0], "lab") + (f" ({len(labs)} runs)" if several else ""),
                     lab_loads=tuple(machine_load(r) for r in labs),
                     lab_rates=tuple(reference_rates(r) for r in labs))
    sim_checks = {c["name"]: c["passed"] for c in sim["checks"]}
    lab_checks = [{c["name"]: c["passed"] for c in r["checks"]} for r in labs]
    order = [*sim_checks, *(n for checks in lab_checks for n in checks if n not in sim_checks)]
    for name in dict.fromkeys(order):
        runs = [checks.get(name) for checks in lab_checks]
        out.checks.append(CheckRow(name, sim_checks.get(name), _common(runs), tuple(runs) if several else ()))
    for section, name in EXACT:
        runs = [_number(r, section, name) for r in labs]
        out.counts.append(CountRow(name, _number(sim, section, name), _common(runs), tuple(runs) if several else ()))
    for name in SAMPLES:
        pooled = tuple(sorted(v for r in labs for v in samples(r, name)))
        out.distributions.append(DistributionRow(name, samples(sim, name), pooled, bands[name]))
    return out


# ------------------------------------------------------------------ writing


def _cdf_png(comparison: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = comparison.distributions
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        for side, colour in (("sim", "#1f77b4"), ("lab", "#d62728")):
            values = getattr(row, side)
            if values:
                n = len(values)
                ax.step(values, [(i + 1) / n for i in range(n)], where="post", color=colour,
                        label=f"{side} (n={n})")
        ax.set_title(row.name.replace("_seconds", ""), fontsize=10)
        ax.set_xlabel("seconds")
        ax.set_ylim(0, 1.02)
        if row.sim or row.lab:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    axes[0][0].set_ylabel("fraction at or below")
    fig.suptitle(f"CDFs: sim {comparison.sim_name} vs lab {comparison.lab_name}".replace("$", r"\$"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float | bool | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def lab_value(row: CheckRow | CountRow, digits: int = 4) -> str:
    """The lab's side of a verdict or count: one run's value, or each run's (``;``-separated)."""
    return "; ".join(_fmt(v, digits) for v in row.lab_runs) if row.lab_runs else _fmt(row.lab, digits)


def _html(comparison: Comparison, png: bytes) -> str:
    e = html.escape

    def table(title: str, head: list[str], rows: list[list[str]]) -> str:
        th = "".join(f"<th>{e(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<h2>{e(title)}</h2><table><tr>{th}</tr>{body}</table>"

    checks = [[r.name, _fmt(r.sim), lab_value(r), "equal" if r.equal else "DIFFERENT"] for r in comparison.checks]
    counts = [[r.name, _fmt(r.sim, 9), lab_value(r, 9), "equal" if r.equal else "different"]
              for r in comparison.counts]
    dists = [[r.name, str(len(r.sim)), str(len(r.lab)), _fmt(r.median("sim")), _fmt(r.p90("sim")),
              _fmt(r.median("lab")), _fmt(r.p90("lab")), _fmt(r.ratio, 3), f"±{r.band:.0%}",
              {None: "no samples", True: "within", False: "OUTSIDE"}[r.within]] for r in comparison.distributions]
    figure = base64.b64encode(png).decode("ascii")
    verdict = "verdicts equal" if comparison.verdicts_equal else "VERDICTS DIFFER"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>compare</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child{text-align:left}"
            "</style></head><body>"
            f"<h1>sim {e(comparison.sim_name)} vs lab {e(comparison.lab_name)}: {e(verdict)}</h1>"
            + table("check verdicts", ["check", "sim", "lab", ""], checks)
            + table("exact counts", ["count", "sim", "lab", ""], counts)
            + table("distributions (seconds)", ["samples", "sim n", "lab n", "sim median", "sim p90", "lab median",
                                                "lab p90", "lab/sim", "band", ""], dists)
            + f"<h2>CDFs</h2><img alt='CDFs of sim and lab samples' src='data:image/png;base64,{figure}'>"
            + "</body></html>\n")


def write_outputs(comparison: Comparison, out: Path) -> dict[str, Path]:
    """``compare.png`` and ``compare.html`` (with ``compare.json``, the same as data) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / "compare.png"
    _cdf_png(comparison, png)
    page = out / "compare.html"
    page.write_text(_html(comparison, png.read_bytes()), encoding="utf-8")
    data = out / "compare.json"
    data.write_text(json.dumps(comparison.as_dict(), indent=2, default=str) + "\n")
    return {"png": png, "html": page, "json": data}


__all__ = ["BANDS", "EXACT", "SAMPLES", "CheckRow", "CompareError", "Comparison", "CountRow", "DistributionRow",
           "MachineLoad", "compare", "lab_value", "load_report", "machine_load", "samples", "write_outputs"]
