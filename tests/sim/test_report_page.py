"""The report page and figures without a browser: fault windows, agent series, escaping, bounds, units.

The browser's view of a real run is tests/integration/test_report_html.py; here the page
is rendered from made-up reports, fast, to pin what it must do with awkward input: markup
and `$` in every string a scenario or the world can put there, faults repeating
thousands of times, permanent faults, series of unknown families.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from foundation.ports import metrics as cat
from sim import plots, report_html
from sim.adapters.metrics import SimMetrics
from sim.adapters.runtime import SIM_EPOCH
from sim.agent_series import agent_series
from sim.plots import FaultWindow, fault_windows, merged_spans, unit_of, write_plots
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "scenarios" / "default.yaml"
EVIL = "<script>alert(1)</script> $x$ & \"q\" 'r'"


def spec_with_faults(tmp_path: Path, faults: str):
    text = DEFAULT.read_text()
    head, _, rest = text.partition("faults:\n")
    _, _, checks = rest.partition("checks:\n")
    path = tmp_path / "s.yaml"
    path.write_text(f"{head}faults:\n{faults}checks:\n{checks}")
    return load_scenario(path).spec


class Tags(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_fault_windows_follow_the_schedule(tmp_path):
    spec = spec_with_faults(tmp_path, """\
  - {kind: nginx-host-loss, at: 100, duration: 10, every: 60, group: web, target: {count: 1}}
  - {kind: host-crash, at: 30, target: {labels: {cell: c1, rack: r2}, count: 2}}
  - {kind: etcd-slow, at: 250, duration: 100, factor: 4, target: {labels: {role: nginx}}}
""")
    windows = fault_windows(spec)
    assert [(w.number, w.kind, w.start, w.end, w.permanent) for w in windows] == [
        (2, "host-crash", 30.0, 300.0, True),  # permanent: shaded to the run's end
        (1, "nginx-host-loss", 100.0, 110.0, False),
        (1, "nginx-host-loss", 160.0, 170.0, False),
        (1, "nginx-host-loss", 220.0, 230.0, False),
        (3, "etcd-slow", 250.0, 300.0, False),  # declared end past the run: cut at its end
        (1, "nginx-host-loss", 280.0, 290.0, False),
    ]
    assert windows[0].target == "labels cell=c1, rack=r2; 2 drawn"
    assert windows[1].target == "1 drawn; group web"
    assert windows[4].target == "labels role=nginx; 4x slower"
    assert merged_spans(windows, 0.0) == [(30.0, 300.0)]
    assert merged_spans(windows[1:4], 0.0) == [(100.0, 110.0), (160.0, 170.0), (220.0, 230.0)]
    assert merged_spans(windows[1:4], 50.0) == [(100.0, 230.0)]


def report_with(checks, name="x"):
    return {"scenario": {"name": name, "file": f"dir with space/{EVIL}.yaml", "sha256": "ab" * 32}, "seed": 3,
            "code_version": {"git_commit": "c0ffee", "dirty": True, "package_version": "0.1.0"},
            "checks": checks, "passed": all(c["passed"] for c in checks), "trace_sha256": "f" * 64,
            "trace_events": 10, "virtual_seconds": 300.0, "wall_seconds": 1.5, "replay": "leengine sim run x",
            "metrics": {"pool_use": {EVIL: 1.5}, "requests_ok": 10}, "counts": {"cells": 2}}


def test_every_string_from_the_scenario_or_the_world_is_escaped():
    checks = [{"name": EVIL, "passed": False, "detail": f"host {EVIL} down"}, {"name": "ok", "passed": True,
                                                                               "detail": ""}]
    windows = [FaultWindow(1, "host-crash", f"names {EVIL}", 10.0, 20.0, False)]
    metrics = {f"pool_use:{EVIL}": [[10.0, 1.0], [20.0, 2.0]], f"{EVIL}_seconds": [[10.0, 0.5]]}
    page = report_html.render(report_with(checks), windows=windows, figures={}, duration=300.0, metrics=metrics)
    assert "<script" not in page and EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; $x$ &amp; &quot;q&quot; &#x27;r&#x27;" in page
    assert "script" not in Tags(page).tags
    assert '<p id="verdict" class="banner fail">1 of 2 checks FAILED' in page
    # The replay command quotes the file for a shell: pasted, it runs that file and nothing else.
    assert "./run.sh &#x27;dir with space/&lt;script&gt;" in page
    assert report_html.replay_command(report_with(checks)) == (
        "./run.sh 'dir with space/<script>alert(1)</script> $x$ & \"q\" '\"'\"'r'\"'\"'.yaml' --seed 3")
    assert "c0ffee (with uncommitted changes)" in page


def test_a_fault_repeating_thousands_of_times_stays_a_bounded_page():
    windows = [FaultWindow(1, "etcd-slow", "all", float(t), t + 0.5, False) for t in range(0, 100_000, 2)]
    page = report_html.render(report_with([]), windows=windows, figures={}, duration=100_000.0, metrics={})
    assert page.count('<tr class="fault"') == report_html.MAX_FAULT_ROWS
    assert f"{len(windows) - report_html.MAX_FAULT_ROWS:,} more occurrences not listed" in page
    # Sub-pixel gaps merge: the lane is one bar, not 50,000.
    assert page.count("<rect") == 1
    assert "virtual time (hours)" in page
    assert len(page) < 200_000


def test_figures_carry_units_and_survive_dollars_in_names(tmp_path):
    metrics = {"ok": [[10.0, 100.0], [20.0, 50.0]], "pool_use:a$b$": [[10.0, 1.0], [20.0, 2.0]],
               "pool_use:c": [[10.0, 3.0], [20.0, 4.0]], "leengine_thing_seconds": [[10.0, 0.1], [20.0, 0.2]],
               "empty": []}
    windows = [FaultWindow(1, "host-crash", "all", 5.0, 15.0, False)]
    files = write_plots(metrics, tmp_path, "t $1$", windows=windows, duration=30.0)
    assert list(files) == ["", "pool_use", "ok", "leengine_thing_seconds"]  # key metrics first, empty ones skipped
    for file in files.values():
        assert (tmp_path / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert unit_of("ok").axis == "requests/s" and unit_of("ok").rate
    assert unit_of("leengine_thing_seconds").axis == "seconds"
    assert unit_of("leengine_x_total").axis == "count" and unit_of("mystery").axis == "value"
    assert plots.sampling_period(metrics) == 10.0
    assert plots.TimeAxis.for_duration(7200.0).label == "virtual time (seconds)"
    assert plots.TimeAxis.for_duration(86400.0).label == "virtual time (hours)"


class Clock:
    t = 0.0

    def now(self) -> float:
        return self.t

    def wall_time(self) -> float:
        return SIM_EPOCH + self.t


def test_agent_series_fold_members_and_keep_small_labels():
    clock = Clock()
    m = SimMetrics(clock)
    for t, (a, b) in ((10.0, (3, 4)), (20.0, (5, 4))):
        clock.t = t
        m.set(cat.IPAM_ALLOCATIONS_IN_USE, a, pool="p1", node="n1")
        m.set(cat.IPAM_ALLOCATIONS_IN_USE, b, pool="p1", node="n2")
        m.set(cat.IPAM_ALLOCATIONS_IN_USE, 1, pool="p2", node="n1")
        m.inc(cat.CNI_REQUESTS, 2, node="n1", command="ADD", code="0")
        m.inc(cat.CNI_REQUESTS, 1, node="n2", command="ADD", code="0")
        m.set(cat.SLB_LAST_RELOAD_SUCCESSFUL, 1 if t < 20 else 0, group="web", host="h1")
        m.set(cat.SLB_LAST_RELOAD_SUCCESSFUL, 1, group="web", host="h2")
        m.set(cat.SLB_LAST_RELOAD_TIMESTAMP, SIM_EPOCH + 5.0, group="web", host="h1")
        m.set(cat.SLB_LAST_RELOAD_TIMESTAMP, SIM_EPOCH + t, group="web", host="h2")
        if t == 10.0:
            m.observe(cat.IPAM_ALLOCATION_SECONDS, 0.5, node="n1")
            m.observe(cat.IPAM_ALLOCATION_SECONDS, 1.5, node="n2")
        m.sample()
    series = agent_series(m)
    assert series["leengine_ipam_allocations_in_use:pool=p1"] == [[10.0, 7.0], [20.0, 9.0]]  # summed over nodes
    assert series["leengine_ipam_allocations_in_use:pool=p2"] == [[10.0, 1.0], [20.0, 1.0]]
    assert series["leengine_cni_requests_total:code=0,command=ADD"] == [[10.0, 3.0], [20.0, 3.0]]  # per period
    assert series["leengine_slb_config_last_reload_successful"] == [[10.0, 1.0], [20.0, 0.0]]  # one host failing
    assert series["leengine_slb_config_last_reload_successful_timestamp_seconds"] == [[10.0, 5.0], [20.0, 15.0]]
    assert series["leengine_ipam_allocation_seconds"] == [[10.0, 1.0]]  # the mean; no observation, no point
    assert plots.unit_of("leengine_cni_requests_total").rate
    assert plots.unit_of("leengine_ipam_allocation_seconds").axis.startswith("seconds")
