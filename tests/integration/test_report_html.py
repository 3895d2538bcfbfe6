"""report.html in a real browser: `leengine sim run` writes a page headless Chromium shows as a person sees it.

A shipped scenario runs through the installed command; Chromium (Debian's `chromium`)
loads the page from disk, dumps the DOM it built and takes a screenshot. From the DOM:
the verdict and every check as report.json has them, one fault row per fault window with
its kind and times, one figure per metric family of metrics.json, each a PNG that
decodes, the replay command and the run's identity. From Chromium's network log: the
page requested nothing (a page that does load an external image is the control that the
log would show it). From the screenshot: not blank, many colours, and the fault shade
over large areas (the timeline and the figures' shaded windows, not just the legend
swatch). A scenario whose labels hold markup and `$` shows them as text: no element
comes from them. Without Chromium the tests fail with what to install; they never skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sim.plots import FAULT_SHADE, family_of

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "scenarios" / "default.yaml"
LEENGINE = Path(sys.executable).parent / "leengine"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Chromium's own traffic (updates, sync, spelling) is switched off, and the network log is
# filtered to requests made on behalf of the file:// page anyway.
QUIET = ["--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--disable-client-side-phishing-detection",
         "--disable-features=Translate,OptimizationHints,MediaRouter,SpellcheckService"]


def chromium_binary() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed for the report page's browser test: install Debian's `chromium` "
                    "(scripts/setup.sh lists it among the test packages)")
    return path


def chromium(page: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={work / 'profile'}", *QUIET, *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.parts: list[str] = []  # the text of the node and its descendants
        self.children: list[Node] = []

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())

    def cells(self) -> list[str]:
        """A table row's cells, as text."""
        return [c.text for c in self.children if c.tag in ("td", "th")]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Every element of the page with its attributes and its text (enough to ask what the page shows)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.nodes: list[Node] = []
        self.stack: list[Node] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if self.stack:
            self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if self.stack:
            self.stack[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.parts.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.nodes if n.tag == tag and (cls is None or cls in n.classes)]

    def by_id(self, ident: str) -> Node:
        found = [n for n in self.nodes if n.attrs.get("id") == ident]
        assert len(found) == 1, (ident, len(found))
        return found[0]


def run_scenario(scenario: Path, out: Path) -> tuple[dict, dict]:
    proc = subprocess.run([str(LEENGINE), "sim", "run", str(scenario), "--out", str(out)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.html").is_file()
    return json.loads((out / "report.json").read_text()), json.loads((out / "metrics.json").read_text())


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network for (Chromium's net log, requests on behalf of a file:// page)."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "file://" in str(params.get("network_isolation_key", "")):
            urls.append(str(params.get("url")))
    return [u for u in urls if not u.startswith(("file:", "data:"))]


def test_the_network_log_would_show_an_external_load(tmp_path):
    # The control for the no-external-resource assertion below: the detector sees a page that loads one.
    page = tmp_path / "external.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>\n')
    chromium(page, tmp_path / "chromium", f"--log-net-log={tmp_path / 'net.json'}", "--dump-dom")
    assert page_requests(tmp_path / "net.json") == ["http://127.0.0.1:9/x.png"]


def test_report_html_shows_verdicts_faults_and_every_metric(tmp_path):
    out = tmp_path / "run"
    report, metrics = run_scenario(DEFAULT, out)
    page = out / "report.html"

    proc = chromium(page, tmp_path / "chromium", f"--log-net-log={tmp_path / 'net.json'}", "--dump-dom")
    dom = Dom(proc.stdout)
    assert page_requests(tmp_path / "net.json") == []

    # Nothing that could load or run anything: no script, stylesheet link, frame or object;
    # every address an attribute holds is a data: URI or a fragment.
    for tag in ("script", "link", "iframe", "object", "embed", "base", "frame"):
        assert dom.find(tag) == [], tag
    for node in dom.nodes:
        for attr in ("src", "href", "xlink:href", "srcset", "poster", "action", "data", "background"):
            if attr in node.attrs:
                assert node.attrs[attr].startswith(("data:", "#")), (node.tag, attr, node.attrs[attr][:80])
    styles = " ".join(n.text for n in dom.find("style")) + " ".join(n.attrs.get("style", "") for n in dom.nodes)
    assert "url(" not in styles and "@import" not in styles

    # The verdicts, as report.json has them.
    checks = report["checks"]
    assert checks and report["passed"]
    assert dom.by_id("verdict").text.startswith(f"all {len(checks)} checks passed")
    rows = dom.find("tr", "check")
    assert [r.attrs["data-check"] for r in rows] == [c["name"] for c in checks]
    verdicts = dom.find("td", "verdict")
    for row, verdict, check in zip(rows, verdicts, checks, strict=True):
        assert ("pass" in row.classes) == check["passed"] and verdict.text == ("pass" if check["passed"] else "FAIL")
        assert row.cells() == [check["name"], verdict.text, " ".join(check["detail"].split())]

    # One fault row per fault window: default.yaml's host crash 60-150 s and Nginx host loss 120-150 s.
    faults = dom.find("tr", "fault")
    assert [(f.attrs["data-kind"], float(f.attrs["data-start"]), float(f.attrs["data-end"])) for f in faults] == [
        ("host-crash", 60.0, 150.0), ("nginx-host-loss", 120.0, 150.0)]
    assert "c1-n001" in faults[0].text and "group web" in faults[1].text
    lanes = dom.find("g", "lane")
    assert [n.attrs["data-fault"] for n in lanes] == ["F1", "F2"]
    bars = [n for n in dom.find("rect") if n.attrs.get("fill") == FAULT_SHADE]
    assert len(bars) == 2
    assert "virtual time (seconds)" in dom.by_id("timeline").text

    # One figure per metric family of metrics.json, and one per family the agents wrote to
    # metrics.om (a counter's family is named there without _total), each an embedded PNG that decodes.
    expected = sorted({family_of(name) for name, points in metrics.items() if points})
    assert len(expected) >= 6  # leaked, pool_use, alloc_max, failed, reloads, ok, allocations
    figures = dom.find("figure", "metric")
    assert sorted(f.attrs["data-metric"] for f in figures if f.attrs["data-source"] == "metrics") == expected
    typed = [line.split()[2:4] for line in (out / "metrics.om").read_text().splitlines() if line.startswith("# TYPE")]
    agents = sorted(name + "_total" if kind == "counter" else name for name, kind in typed)
    assert len(agents) >= 15 and "leengine_ipam_allocations_in_use" in agents
    assert sorted(f.attrs["data-metric"] for f in figures if f.attrs["data-source"] == "agent-metrics") == agents
    images = dom.find("img")
    assert len(images) == len(figures) == len(expected) + len(agents)
    for img in images:
        src = img.attrs["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    captions = {f.attrs["data-metric"]: f.text for f in figures}
    assert "requests/s" in captions["ok"] and "addresses" in captions["leaked"] and "seconds" in captions["alloc_max"]

    # The run's identity and the replay command.
    identity = {n.attrs["data-field"]: n.text for n in dom.find("tr") if "data-field" in n.attrs}
    assert report["trace_sha256"] in identity["trace_sha256"]
    assert report["scenario"]["sha256"] in identity["scenario sha256"]
    assert identity["seed"].endswith(str(report["seed"])) and identity["scenario"].endswith("default")
    commit = report["code_version"]["git_commit"]
    assert commit and commit in identity["code version"]
    assert dom.by_id("replay").text == f"./run.sh {DEFAULT} --seed {report['seed']}"

    # What a person sees: a screenshot that is not blank, with the fault shade over large areas.
    shot = tmp_path / "shot.png"
    chromium(page, tmp_path / "chromium", f"--screenshot={shot}", "--window-size=1280,2600")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    distinct = len(np.unique(pixels, axis=0))
    shade = np.array([int(FAULT_SHADE[i:i + 2], 16) for i in (1, 3, 5)])
    shaded = int((np.abs(pixels - shade).max(axis=1) <= 3).sum())
    not_white = float((pixels.min(axis=1) < 240).mean())
    assert distinct > 500, distinct
    assert not_white > 0.05, not_white
    # The swatch is ~20x14 px and the timeline's bars ~5,000 px: the rest is the figures' shading.
    assert shaded > 20_000, shaded


def test_scenario_text_is_shown_as_text_never_as_markup(tmp_path):
    text = DEFAULT.read_text()
    hostile_label = '{room: "<script>alert(1)</script>", "k$x$": "a&b \\"q\\" \'r\'"}'
    edits = [("name: default", "name: hostile-names"),
             ("labels: {room: room-a}", f"labels: {hostile_label}"),
             ("target: {names: [c1-n001]}", f"target: {{labels: {hostile_label}, count: 1}}")]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    scenario = tmp_path / "hostile <b>$1$.yaml"
    scenario.write_text(text)
    out = tmp_path / "run"
    run_scenario(scenario, out)
    raw = (out / "report.html").read_text()
    assert "<script" not in raw and "<b>$1$" not in raw

    dom = Dom(chromium(out / "report.html", tmp_path / "chromium", "--dump-dom").stdout)
    assert dom.find("script") == []
    # The page's own <b> elements name the metric families; the scenario's "<b>" is text.
    assert {n.text for n in dom.find("b")} <= {f.attrs["data-metric"] for f in dom.find("figure", "metric")}
    target = "labels room=<script>alert(1)</script>, k$x$=a&b \"q\" 'r'; 1 drawn"
    assert dom.find("tr", "fault")[0].cells() == ["F1", "host-crash", target, "60 s", "150 s (2:30)"]
    titles = [n.text for n in dom.find("title") if n.text.startswith("F1")]
    assert titles and target in titles[0]
    assert dom.by_id("replay").text == f"./run.sh '{scenario}' --seed 1"
