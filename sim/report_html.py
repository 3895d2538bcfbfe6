"""``report.html``: one self-contained page of a sim run, for a person rather than a program.

What it shows, top to bottom: the verdict and every check's verdict with its detail; the
run's identity (scenario name, file and hash, seed, code version, ``trace_sha256``) and the
command that replays it; the fault timeline (an inline SVG, one lane per fault of the
scenario, each occurrence a bar on the virtual time axis) and the fault table (kind,
target, start, end); every metric's figure (the PNGs of sim/plots.py, fault windows
shaded, embedded as base64); the scalar metrics and the world's counts.

Invariants: the page loads nothing (no URL outside ``data:``, inline CSS only, no script;
a Content-Security-Policy says so to the browser as well); every string that can come from
the scenario file or the world (names, labels, check details, series names, the file's
path) goes through ``html.escape``: a scenario is untrusted input. The page is a function
of the report dict, the fault windows and the figures' bytes: no clock, no environment.
It must not know the Region's objects nor draw figures itself (sim/plots.py does).
"""

from __future__ import annotations

import base64
import html
import math
import shlex
from typing import Any

from sim.plots import FAULT_EDGE, FAULT_SHADE, FaultWindow, TimeAxis, families, merged_spans, slug, unit_of

MAX_FAULT_ROWS = 500  # occurrences listed in the table; a fault repeating every second would list millions
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.2em 2em 3em; color: #1d1d1f; background: #ffffff; line-height: 1.4; }}
h1 {{ font-size: 1.6em; margin: 0.2em 0; }}
h2 {{ font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.92em; }}
th, td {{ text-align: left; padding: 0.3em 0.6em; border-bottom: 1px solid #eee; vertical-align: top; }}
th {{ background: #f5f5f7; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
code, pre {{ font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; }}
pre {{ background: #f5f5f7; padding: 0.6em 0.8em; border-radius: 4px; overflow-x: auto; }}
.banner {{ padding: 0.6em 1em; border-radius: 6px; font-weight: 600; font-size: 1.1em; }}
.banner.pass {{ background: #ddf4e4; color: #14592b; }}
.banner.fail {{ background: #fbe0dd; color: #8a1c12; }}
.verdict {{ font-weight: 700; white-space: nowrap; }}
tr.pass .verdict {{ color: #1b7a3a; }}
tr.fail .verdict {{ color: #b3261e; }}
tr.fail {{ background: #fff4f3; }}
.swatch {{ display: inline-block; width: 1.4em; height: 0.9em; background: {FAULT_SHADE};
          border: 1px solid {FAULT_EDGE}; vertical-align: middle; }}
figure.metric {{ margin: 1.2em 0; }}
figure.metric img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.88em; color: #444; }}
.muted {{ color: #666; font-size: 0.9em; }}
svg.timeline {{ width: 100%; height: auto; border: 1px solid #eee; }}
"""


def e(value: Any) -> str:
    """Any value as escaped HTML text (attribute-safe: quotes escaped too)."""
    return html.escape(str(value), quote=True)


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.6g}"
    return str(value)


def seconds(t: float) -> str:
    """A virtual time for a person: seconds, with hours and minutes once it is long."""
    if t < 120:
        return f"{t:g} s"
    h, rest = divmod(round(t), 3600)
    m, s = divmod(rest, 60)
    clock = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return f"{t:,.6g} s ({clock})"


def replay_command(report: dict[str, Any]) -> str:
    """``./run.sh FILE --seed N`` (run.sh forwards to ``leengine sim run``), the file quoted for a shell."""
    file = str((report.get("scenario") or {}).get("file") or "scenarios/default.yaml")
    return f"./run.sh {shlex.quote(file)} --seed {int(report.get('seed') or 0)}"


def render(report: dict[str, Any], *, windows: list[FaultWindow], figures: dict[str, bytes],
           duration: float, metrics: dict[str, list[list[float]]],
           agents: dict[str, list[list[float]]] | None = None) -> str:
    """The page. ``figures``: family -> PNG bytes (empty when plots were skipped); ``metrics``: the
    Region's series (metrics.json); ``agents``: the agents' catalogue series as sim/agent_series.py folds them."""
    scenario = report.get("scenario") or {}
    name = str(scenario.get("name", "?"))
    title = f"{name}, seed {report.get('seed')}: sim report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1 id="title">{e(name)} <span class="muted">seed {e(report.get("seed"))}</span></h1>',
        _banner(report),
        _checks(report),
        _identity(report),
        _faults(windows, duration),
        _metrics(metrics, figures, "metrics", "Metrics over virtual time", ""),
        _metrics(agents or {}, figures, "agent-metrics", "What the agents recorded",
                 "The Metrics port's series (the names a real daemon serves on /metrics; every label set is in "
                 "metrics.om): one line per pool, command, code or result, summed over nodes and hosts; counters "
                 "as rates, histograms as the mean of each sampling period's observations."),
        _scalars(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _banner(report: dict[str, Any]) -> str:
    checks = report.get("checks") or []
    failed = sum(1 for c in checks if not c.get("passed"))
    if not checks:
        text, cls = "no checks declared", "pass"
    elif failed:
        text, cls = f"{failed} of {len(checks)} checks FAILED", "fail"
    else:
        text, cls = f"all {len(checks)} checks passed", "pass"
    virtual = report.get("virtual_seconds") or 0.0
    wall = report.get("wall_seconds")
    run = f"{seconds(float(virtual))} of virtual time" + (f" in {wall:g} s wall" if wall is not None else "")
    return f'<p id="verdict" class="banner {cls}">{e(text)}<span class="muted">, {e(run)}</span></p>'


def _checks(report: dict[str, Any]) -> str:
    rows = []
    for check in report.get("checks") or []:
        ok = bool(check.get("passed"))
        cls = "pass" if ok else "fail"
        rows.append(f'<tr class="check {cls}" data-check="{e(check.get("name", "?"))}">'
                    f'<td>{e(check.get("name", "?"))}</td><td class="verdict">{"pass" if ok else "FAIL"}</td>'
                    f'<td>{e(check.get("detail", ""))}</td></tr>')
    body = "\n".join(rows) or '<tr><td colspan="3" class="muted">the scenario declares no checks</td></tr>'
    return ('<h2 id="checks">Checks</h2>\n<table class="checks"><thead><tr><th>check</th><th>verdict</th>'
            f"<th>detail</th></tr></thead><tbody>\n{body}\n</tbody></table>")


def _identity(report: dict[str, Any]) -> str:
    scenario = report.get("scenario") or {}
    code = report.get("code_version") or {}
    commit = code.get("git_commit") or "unknown (not a git checkout)"
    if code.get("dirty"):
        commit = f"{commit} (with uncommitted changes)"
    rows = [
        ("scenario", scenario.get("name")),
        ("scenario file", scenario.get("file")),
        ("scenario sha256", scenario.get("sha256")),
        ("seed", report.get("seed")),
        ("code version", commit),
        ("package version", code.get("package_version") or "unknown"),
        ("trace_sha256", report.get("trace_sha256")),
        ("trace events", number(report.get("trace_events"))),
        ("virtual time", seconds(float(report.get("virtual_seconds") or 0.0))),
    ]
    body = "\n".join(f'<tr data-field="{e(k)}"><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>' for k, v in rows)
    leengine = report.get("replay") or ""
    return (f'<h2 id="run">Run</h2>\n<table class="identity">\n{body}\n</table>\n'
            "<p>Replay it (same scenario bytes, seed and code give the same <code>trace_sha256</code>):</p>\n"
            f'<pre id="replay"><code>{e(replay_command(report))}</code></pre>\n'
            f'<p class="muted">or, in the virtualenv: <code>{e(leengine)}</code></p>')


def _faults(windows: list[FaultWindow], duration: float) -> str:
    if not windows:
        return '<h2 id="faults">Faults</h2>\n<p class="muted">The scenario injects no faults.</p>'
    rows = []
    for w in windows[:MAX_FAULT_ROWS]:
        end = f"{seconds(w.end)} (permanent: until the run ends)" if w.permanent else seconds(w.end)
        rows.append(f'<tr class="fault" data-kind="{e(w.kind)}" data-start="{w.start!r}" data-end="{w.end!r}">'
                    f"<td>F{w.number}</td><td>{e(w.kind)}</td><td>{e(w.target)}</td>"
                    f'<td class="num">{e(seconds(w.start))}</td><td class="num">{e(end)}</td></tr>')
    more = len(windows) - MAX_FAULT_ROWS
    note = (f'<p class="muted">{more:,} more occurrences not listed (the faults are in report.json, '
            "<code>inputs.faults</code>).</p>") if more > 0 else ""
    return ('<h2 id="faults">Faults</h2>\n'
            '<p><span class="swatch"></span> fault windows, here and shaded in every figure below '
            "(declared start to declared end; F<i>n</i> is the <i>n</i>-th fault of the scenario).</p>\n"
            + timeline_svg(windows, duration) +
            '\n<table class="faults"><thead><tr><th>fault</th><th>kind</th><th>target</th><th>start</th>'
            f"<th>end</th></tr></thead><tbody>\n{chr(10).join(rows)}\n</tbody></table>{note}")


def nice_step(span: float, ticks: int = 8) -> float:
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * power >= raw:
            return m * power
    return 10.0 * power


def timeline_svg(windows: list[FaultWindow], duration: float) -> str:
    """One lane per fault of the scenario, a bar per occurrence (sub-pixel gaps merged), an axis in time units."""
    axis = TimeAxis.for_duration(duration)
    left, right, top, lane, plot_w = 190, 20, 12, 24, 760
    numbers = sorted({w.number for w in windows})
    height = top + lane * len(numbers) + 46
    width = left + plot_w + right
    end_units = duration / axis.scale

    def x(t: float) -> float:
        return left + plot_w * (t / duration if duration > 0 else 0.0)

    out = [f'<svg class="timeline" id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="fault timeline">']
    step = nice_step(end_units)
    base = top + lane * len(numbers)
    k = 0
    while k * step <= end_units + 1e-9:
        tx = x(k * step * axis.scale)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{base}" stroke="#e5e5e5"/>'
                   f'<text x="{tx:.1f}" y="{base + 16}" font-size="11" text-anchor="middle" fill="#333">'
                   f"{k * step:g}</text>")
        k += 1
    out.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#888"/>'
               f'<text x="{left + plot_w / 2:.0f}" y="{base + 36}" font-size="12" text-anchor="middle" '
               f'fill="#333">{e(axis.label)}</text>')
    for row, number in enumerate(numbers):
        mine = [w for w in windows if w.number == number]
        y = top + row * lane
        kind = mine[0].kind
        out.append(f'<g class="lane" data-fault="F{number}"><text x="{left - 8}" y="{y + lane * 0.65:.1f}" '
                   f'font-size="12" text-anchor="end" fill="#1d1d1f">F{number} {e(kind)}</text>')
        for start, end in merged_spans(mine, duration / plot_w):
            bar_w = max(2.0, x(end) - x(start))
            label = f"F{number} {kind}: {mine[0].target}; {seconds(start)} to {seconds(end)}"
            out.append(f'<rect x="{x(start):.1f}" y="{y + 4}" width="{bar_w:.1f}" height="{lane - 8}" '
                       f'fill="{FAULT_SHADE}" stroke="{FAULT_EDGE}" stroke-width="1"><title>{e(label)}</title></rect>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _metrics(metrics: dict[str, list[list[float]]], figures: dict[str, bytes], ident: str, heading: str,
             intro: str) -> str:
    groups = families(metrics)
    if not groups:
        return f'<h2 id="{ident}">{e(heading)}</h2>\n<p class="muted">The run recorded no series here.</p>'
    out = [f'<h2 id="{ident}">{e(heading)}</h2>']
    if intro:
        out.append(f"<p>{e(intro)}</p>")
    if not figures:
        out.append('<p class="muted">Plots were skipped (<code>--no-plots</code>): the series are in '
                   "metrics.json; their summary follows.</p>")
    for family, series in groups:
        unit = unit_of(family)
        summary = "; ".join(f"{name}: " + _summary(points) for name, points in series[:12])
        if len(series) > 12:
            summary += f"; and {len(series) - 12} more series"
        img = ""
        if family in figures:
            data = base64.b64encode(figures[family]).decode("ascii")
            img = f'<img src="data:image/png;base64,{data}" alt="{e(family)}: {e(unit.title)} over virtual time">'
        out.append(f'<figure class="metric" id="metric-{e(slug(family))}" data-metric="{e(family)}" '
                   f'data-source="{ident}">{img}'
                   f"<figcaption><b>{e(family)}</b>: {e(unit.title)}, in {e(unit.axis)}"
                   f'{" (plotted per second of the sampling period)" if unit.rate else ""}. '
                   f"Raw samples: {e(summary)}</figcaption></figure>")
    return "\n".join(out)


def _summary(points: list[list[float]]) -> str:
    values = [float(v) for _, v in points if isinstance(v, int | float) and not math.isnan(float(v))]
    if not values:
        return "no values"
    return (f"min {number(min(values))}, max {number(max(values))}, "
            f"mean {number(round(sum(values) / len(values), 6))}, last {number(values[-1])}")


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {number(v)}" for k, v in value.items())
    if isinstance(value, list):
        return f"{len(value)} values"
    return number(value)


def _scalars(report: dict[str, Any]) -> str:
    out = []
    for key, heading in (("metrics", "Totals"), ("counts", "Counts")):
        items = report.get(key) or {}
        if not items:
            continue
        rows = "\n".join(f'<tr><th>{e(k)}</th><td class="num">{e(_value(v))}</td></tr>' for k, v in items.items())
        out.append(f'<h2 id="{key}">{heading}</h2>\n<table class="{key}">\n{rows}\n</table>')
    return "\n".join(out)
