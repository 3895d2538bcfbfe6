"""Shrinking a failing run: the smallest scenario (found greedily) whose run on the seed still fails the same way.

``shrink`` takes a loaded scenario and a seed whose run fails a check, and reduces the
scenario's parts by delta debugging (Zeller's ddmin over the lists: faults, apps, Cells, each
Cell's pools, the platform's releases; each platform app tried as an app the world deploys;
halving for the numbers: an app's ``count`` and ``replicas``, a Cell's nodes, a group's
hosts, build hosts, the duration; and dropping what the failure does not need: the other
checks, churn). Fault times given as ranges are first pinned to what the seed draws (the same
run; from then on removing a fault moves no other's time). Each candidate is a scenario
*document*: it is written as YAML, validated by the scenario parser exactly as a file would
be (an invalid candidate, e.g. a fault on an app that is gone, is skipped, never run), and
run on the sweep engine (``sim.sweep.Engine``: candidates of one step run side by side). A
candidate is kept when its run fails the same check, with the same signature unless
``same_signature=False``.

The result is a scenario file a person can read and rerun with ``leengine sim run FILE
--seed N`` from anywhere: the cost models it ran with (``costs.yaml`` beside the original and
the original's ``costs:``) are written into its own ``costs:`` block, its ``lab:`` block is
dropped (its caps described the original), and a header says what it was shrunk from.

Invariants: the original is first rewritten the same way (parsed back from YAML) and must
still fail, so every step compares like with like; a candidate is run at most once (cached
by its text); no more than ``max_runs`` candidate runs. It must not know Dask or the terminal.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sim.fault_times import draw_fault_times
from sim.scenario import Scenario, ScenarioError, parse_scenario, read_scenario_file
from sim.spec import RegionSpec
from sim.sweep import ERROR_CHECK, Engine, Result, SweepJob, replay_command

Doc = dict[str, Any]


class ShrinkError(Exception):
    """The run cannot be shrunk: it passes, the check did not fail, or the scenario does not round-trip."""


class _Budget(Exception):
    pass


def size(spec: RegionSpec) -> dict[str, float]:
    """What "smaller" means, part by part."""
    return {"faults": len(spec.faults), "apps": len(spec.apps), "cells": len(spec.cells),
            "pools": sum(len(c.pools) for c in spec.cells), "platform_apps": sum(1 for a in spec.apps if a.platform),
            "releases": len(spec.releases),
            "nodes": sum(c.nodes for c in spec.cells), "pods": sum(a.replicas * len(a.cells) for a in spec.apps),
            "nginx_hosts": sum(g.hosts for g in spec.groups), "build_hosts": spec.build_hosts,
            "duration": spec.duration, "checks": len(spec.checks)}


@dataclass
class Outcome:
    scenario_file: str
    seed: int
    check: str
    signature: str
    detail: str
    before: dict[str, float]
    after: dict[str, float]
    yaml_text: str
    runs: int
    steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {self.before[k]:g} -> {self.after[k]:g}" for k in self.before
                          if self.before[k] != self.after[k])
        return (f"shrunk {self.scenario_file} seed {self.seed} in {self.runs} runs: still fails {self.check} "
                f"({self.signature}); {parts or 'nothing could be removed'}")


class Shrinker:
    def __init__(self, engine: Engine, *, seed: int, hook: str | None, max_runs: int, file: str,
                 log: Callable[[str], None] | None) -> None:
        self.engine = engine
        self.seed = seed
        self.hook = hook
        self.max_runs = max_runs
        self.file = file
        self.log = log or (lambda _line: None)
        self.runs = 0
        self.cache: dict[str, bool] = {}
        self.check = ""
        self.signature: str | None = None  # None: any failure of the check

    # -------------------------------------------------------------- candidates

    def spec_of(self, doc: Doc) -> RegionSpec | None:
        try:
            return parse_scenario(dump(doc), self.file)
        except ScenarioError:
            return None

    def run_specs(self, specs: list[RegionSpec]) -> list[Result]:
        if self.runs + len(specs) > self.max_runs:
            raise _Budget
        self.runs += len(specs)
        out: dict[int, Result] = {}
        for index, result in self.engine.run([(SweepJob(spec, self.hook), self.seed) for spec in specs]):
            out.setdefault(index, result)
        return [out[i] for i in range(len(specs))]

    def fails(self, result: Result) -> bool:
        return any(f["check"] == self.check and (self.signature is None or f["signature"] == self.signature)
                   for f in result["failures"])

    def first_failing(self, docs: list[Doc]) -> int | None:
        """The index of the first candidate that still fails (all run side by side), or None."""
        texts = [dump(d) for d in docs]
        todo: list[tuple[int, RegionSpec]] = []
        for i, (doc, text) in enumerate(zip(docs, texts, strict=True)):
            if text in self.cache:
                continue
            spec = self.spec_of(doc)
            if spec is None:
                self.cache[text] = False
            else:
                todo.append((i, spec))
        if todo:
            for (i, _spec), result in zip(todo, self.run_specs([s for _, s in todo]), strict=True):
                self.cache[texts[i]] = self.fails(result)
        return next((i for i, text in enumerate(texts) if self.cache[text]), None)

    # -------------------------------------------------------------- reductions

    def ddmin(self, doc: Doc, get: Callable[[Doc], list[Any]], put: Callable[[Doc, list[Any]], None],
              what: str) -> Doc:
        """Delta debugging over one list of the document: the empty list first, then halves, quarters, ..."""
        items = list(get(doc))
        if not items:
            return doc

        def with_items(kept: list[Any]) -> Doc:
            candidate = copy.deepcopy(doc)
            put(candidate, kept)
            return candidate

        if self.first_failing([with_items([])]) == 0:
            self.log(f"{what}: {len(items)} -> 0")
            return with_items([])
        n = 2
        while len(items) >= 2:
            chunk = -(-len(items) // n)
            parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
            complements = [[x for j, p in enumerate(parts) if j != i for x in p] for i in range(len(parts))]
            candidates = parts + complements if n > 2 else parts
            hit = self.first_failing([with_items(c) for c in candidates])
            if hit is not None:
                kept = candidates[hit]
                self.log(f"{what}: {len(items)} -> {len(kept)}")
                items = kept
                n = 2 if hit < len(parts) else max(n - 1, 2)
                continue
            if n >= len(items):
                break
            n = min(2 * n, len(items))
        return with_items(items)

    def lower(self, doc: Doc, get: Callable[[Doc], float], put: Callable[[Doc, float], None], low: float,
              what: str) -> Doc:
        """The smallest value >= ``low`` (an integer) that still fails, by trying ``low`` and halfway points."""
        value = get(doc)
        while value > low:
            tries = sorted({low, low + (value - low) // 2, value - max((value - low) // 4, 1)} - {value})
            candidates = []
            for v in tries:
                candidate = copy.deepcopy(doc)
                put(candidate, v)
                candidates.append(candidate)
            hit = self.first_failing(candidates)
            if hit is None:
                break
            self.log(f"{what}: {value:g} -> {tries[hit]:g}")
            value, doc = tries[hit], candidates[hit]
        return doc


def dump(doc: Doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)


def _apps(doc: Doc) -> list[Any]:
    return list((doc.get("workload") or {}).get("apps") or [])


def _put_apps(doc: Doc, apps: list[Any]) -> None:
    doc.setdefault("workload", {})["apps"] = apps


def _drop_cells(doc: Doc, kept: list[Any]) -> None:
    names = {c["name"] for c in kept}
    doc["topology"]["cells"] = kept
    apps = []
    for app in _apps(doc):
        app = dict(app)
        app["cells"] = [c for c in app.get("cells", []) if c in names]
        if app["cells"]:
            apps.append(app)
    if "workload" in doc:
        _put_apps(doc, apps)


def _cut_duration(doc: Doc, duration: float) -> None:
    doc["duration"] = duration
    doc["faults"] = [f for f in doc.get("faults") or [] if float(f.get("at", 0)) < duration]
    if (doc.get("platform") or {}).get("releases"):  # releases past the new end go too
        doc["platform"]["releases"] = [r for r in doc["platform"]["releases"] if float(r.get("at", 0)) < duration]


def normalised(scenario: Scenario, seed: int) -> Doc:
    """The scenario as a document that runs the same anywhere: its seed, its costs written out, no lab block."""
    doc = yaml.safe_load(read_scenario_file(Path(scenario.path)))
    if not isinstance(doc, dict):
        raise ShrinkError(f"{scenario.path}: not a mapping")
    doc["seed"] = seed
    doc.pop("lab", None)
    doc["costs"] = asdict(scenario.spec.costs)
    return doc


def pin_fault_times(doc: Doc, spec: RegionSpec) -> list[str]:
    """Replace in ``doc`` every fault time given as a range by the time ``spec``'s seed draws for it; returns what
    was pinned (``faults[0].at 47.317``). The run does not change: the trace holds times, never ranges, and the
    draws come from their own stream (sim/fault_times.py); from then on removing a fault moves no other's time."""
    drawn = draw_fault_times(spec)
    pins = []
    for i, (entry, fault) in enumerate(zip(doc.get("faults") or [], drawn.faults, strict=True)):
        for key, value in (("at", fault.at), ("duration", fault.duration)):
            if isinstance(entry.get(key), dict):
                entry[key] = value
                pins.append(f"faults[{i}].{key} {value:g}")
    return pins


def shrink(engine: Engine, scenario: Scenario, *, seed: int, check: str | None = None, hook: str | None = None,
           max_runs: int = 300, same_signature: bool = True, log: Callable[[str], None] | None = None) -> Outcome:
    """Shrink ``scenario`` run on ``seed`` to a smaller document failing the same check (see the module doc)."""
    shrinker = Shrinker(engine, seed=seed, hook=hook, max_runs=max_runs, file=scenario.path, log=log)
    doc = normalised(scenario, seed)
    spec = shrinker.spec_of(doc)
    if spec is None or _plain(spec) != _plain(replace(scenario.spec, seed=seed)):
        raise ShrinkError(f"{scenario.path}: the scenario does not read back the same once rewritten as YAML "
                          "(a bug of sim/shrink.py: please report)")
    pins = pin_fault_times(doc, spec)
    if pins:
        spec = shrinker.spec_of(doc)
        if spec is None:
            raise ShrinkError(f"{scenario.path}: the fault times drawn for seed {seed} do not validate once pinned "
                              "(a bug of sim/shrink.py: please report)")
    (result,) = shrinker.run_specs([spec])
    failures = result["failures"]
    if not failures:
        raise ShrinkError(f"seed {seed} passes every check of {scenario.path}: nothing to shrink")
    chosen = next((f for f in failures if check is None or f["check"] == check), None)
    if chosen is None:
        failed = ", ".join(f["check"] for f in failures)
        raise ShrinkError(f"seed {seed} does not fail {check!r} (it fails {failed})")
    shrinker.check = chosen["check"]
    shrinker.signature = chosen["signature"] if same_signature else None
    shrinker.cache[dump(doc)] = True
    before = size(spec)
    steps: list[str] = []
    shrinker.log = _tee(shrinker.log, steps)
    if pins:
        shrinker.log(f"fault times drawn for seed {seed}, pinned: {', '.join(pins)}")
    try:
        doc = _reduce(shrinker, doc)
    except _Budget:
        steps.append(f"stopped after {shrinker.runs} runs (--max-runs)")
    final = shrinker.spec_of(doc)
    assert final is not None  # every kept document validated
    header = (f"# Shrunk by `leengine sim shrink` from {scenario.path} (sha256 {scenario.sha256[:16]}) seed {seed}:\n"
              f"# still fails {shrinker.check}: {chosen['detail'][:200]}\n"
              + f"# replay: {replay_command('FILE', seed, hook)}\n"
              + "".join(f"#   {s}\n" for s in steps))
    return Outcome(scenario_file=scenario.path, seed=seed, check=shrinker.check, signature=chosen["signature"],
                   detail=chosen["detail"], before=before, after=size(final), yaml_text=header + dump(doc),
                   runs=shrinker.runs, steps=steps)


def _plain(spec: RegionSpec) -> Any:
    """A spec without what the rewriting changes on purpose: its file, its lab block, the source lines."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "line"}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip(asdict(replace(spec, source="", lab=None, lab_costs=None)))


def _tee(log: Callable[[str], None], steps: list[str]) -> Callable[[str], None]:
    def both(line: str) -> None:
        steps.append(line)
        log(line)

    return both


def _reduce(s: Shrinker, doc: Doc) -> Doc:
    if s.check != ERROR_CHECK:
        others = [c for c in doc.get("checks") or [] if c.get("kind") == s.check]
        if len(others) < len(doc.get("checks") or []):
            candidate = {**copy.deepcopy(doc), "checks": others}
            if s.first_failing([candidate]) == 0:
                s.log(f"checks: only {s.check}")
                doc = candidate
    while True:
        start = dump(doc)
        doc = s.ddmin(doc, lambda d: list(d.get("faults") or []), lambda d, v: d.__setitem__("faults", v), "faults")
        if (doc.get("workload") or {}).get("churn"):
            candidate = copy.deepcopy(doc)
            candidate["workload"].pop("churn")
            if s.first_failing([candidate]) == 0:
                s.log("churn: dropped")
                doc = candidate
        doc = s.ddmin(doc, _apps, _put_apps, "apps")
        doc = s.ddmin(doc, lambda d: list(d["topology"]["cells"]), _drop_cells, "cells")
        for i, cell in enumerate(doc["topology"]["cells"]):  # a Cell keeps at least one pool (else invalid)
            pools = ("topology", "cells", i, "pools")
            doc = s.ddmin(doc, _at_list(pools), _put_list(pools), f"cell {cell.get('name')} pools")
        if (doc.get("platform") or {}).get("releases"):
            doc = s.ddmin(doc, _at_list(("platform", "releases")), _put_list(("platform", "releases")), "releases")
        for i, app in enumerate(_apps(doc)):
            if app.get("platform") is True:
                candidate = _without_platform(doc, i)
                if s.first_failing([candidate]) == 0:
                    s.log(f"app {app.get('name')}: deployed by the world, not the platform")
                    doc = candidate
        for i, app in enumerate(_apps(doc)):
            for key in ("count", "replicas"):
                if isinstance(app.get(key), int) and app[key] > 1:
                    doc = s.lower(doc, _at(("workload", "apps", i, key)), _put_at(("workload", "apps", i, key)), 1,
                                  f"app {app.get('name')} {key}")
        for i, cell in enumerate(doc["topology"]["cells"]):
            doc = s.lower(doc, _at(("topology", "cells", i, "nodes")), _put_at(("topology", "cells", i, "nodes")), 1,
                          f"cell {cell.get('name')} nodes")
        for i, group in enumerate(doc["topology"].get("groups") or []):
            doc = s.lower(doc, _at(("topology", "groups", i, "hosts")), _put_at(("topology", "groups", i, "hosts")),
                          1, f"group {group.get('name')} hosts")
        if doc["topology"].get("build_hosts"):
            doc = s.lower(doc, _at(("topology", "build_hosts")), _put_at(("topology", "build_hosts")), 0,
                          "build hosts")
        doc = s.lower(doc, lambda d: int(float(d["duration"])), _cut_duration, 1, "duration")
        if dump(doc) == start:
            return doc


def _without_platform(doc: Doc, index: int) -> Doc:
    """The document with app ``index`` deployed by the world (no ``platform: true``); the ``platform:`` block
    goes with the last platform app (an invalid candidate, e.g. a release or a check of it left, is skipped)."""
    candidate = copy.deepcopy(doc)
    candidate["workload"]["apps"][index].pop("platform")
    if not any(a.get("platform") is True for a in _apps(candidate)):
        candidate.pop("platform", None)
    return candidate


def _at_list(path: tuple[str | int, ...]) -> Callable[[Doc], list[Any]]:
    def get(doc: Doc) -> list[Any]:
        node: Any = doc
        for key in path:
            node = node[key]
        return list(node or [])

    return get


def _put_list(path: tuple[str | int, ...]) -> Callable[[Doc, list[Any]], None]:
    def put(doc: Doc, items: list[Any]) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = items

    return put


def _at(path: tuple[str | int, ...]) -> Callable[[Doc], float]:
    def get(doc: Doc) -> float:
        node: Any = doc
        for key in path:
            node = node[key]
        return int(node)

    return get


def _put_at(path: tuple[str | int, ...]) -> Callable[[Doc, float], None]:
    def put(doc: Doc, value: float) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = int(value)
        if path[-1] == "nodes" and isinstance(node.get("racks"), int) and node["racks"] > value:
            node["racks"] = int(value)  # racks <= nodes

    return put
