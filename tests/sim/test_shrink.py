"""Shrinking over a scenario's pools, releases and platform parts, with an engine that fails on a rule of the spec.

The real failing runs are in tests/sim/test_sweep.py (the CAS-less IPAM found and shrunk); here the engine
"fails" a candidate when a predicate of its spec holds, so the test says exactly what must be left."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import yaml

from sim.scenario import load_scenario, parse_scenario
from sim.shrink import shrink, size
from sim.spec import RegionSpec
from sim.sweep import Result, SweepJob

PARTS = """\
name: shrink-parts
seed: 1
duration: 150
topology:
  cells:
    - name: c1
      nodes: 4
      pools:
        - {name: p1, cidr: 10.1.0.0/26, vlan: 101}
        - {name: p1b, cidr: 10.1.1.0/26, vlan: 103}
        - {name: p1c, cidr: 10.1.2.0/26, vlan: 105}
    - name: c2
      nodes: 4
      pools:
        - {name: p2, cidr: 10.2.0.0/26, vlan: 102}
        - {name: p2b, cidr: 10.2.1.0/26, vlan: 104}
  groups: [{name: public, hosts: 2}]
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 3, group: public, platform: true}
    - {name: blog, cells: [c1, c2], replicas: 2, group: public}
platform:
  releases:
    - {app: shop, at: 60}
    - {app: shop, at: 100}
faults:
  - {kind: host-crash, at: {uniform: [40, 80]}, duration: 30, target: {count: 1}}
checks:
  - kind: no-duplicate-address
  - kind: no-orphan-versions
"""


class RuleEngine:
    """Runs nothing: a candidate fails no-duplicate-address when ``rule(spec)`` holds."""

    def __init__(self, rule: Callable[[RegionSpec], bool]) -> None:
        self.rule = rule

    def run(self, tasks: Iterable[tuple[SweepJob, int]]) -> Iterator[tuple[int, Result]]:
        for index, (job, seed) in enumerate(tasks):
            failing = self.rule(job.spec)
            failures = [{"check": "no-duplicate-address", "detail": "2 owners", "signature": "N owners"}]
            yield index, {"seed": seed, "passed": not failing, "failures": failures if failing else []}


def shrunk(tmp_path: Path, rule: Callable[[RegionSpec], bool]) -> tuple[dict, RegionSpec, list[str]]:
    path = tmp_path / "parts.yaml"
    path.write_text(PARTS)
    outcome = shrink(RuleEngine(rule), load_scenario(path), seed=3)
    text = outcome.yaml_text
    spec = parse_scenario(text, "shrunk.yaml")  # a scenario file like any other
    return yaml.safe_load(text), spec, outcome.steps


def pools(spec: RegionSpec) -> dict[str, list[str]]:
    return {c.name: [p.name for p in c.pools] for c in spec.cells}


def test_pools_releases_and_the_platform_go_when_the_failure_needs_none_of_them(tmp_path):
    doc, spec, steps = shrunk(tmp_path, lambda s: any(p.name == "p1b" for c in s.cells for p in c.pools)
                              and any(a.name == "blog" for a in s.apps))
    assert pools(spec) == {"c1": ["p1b"]}
    assert [a.name for a in spec.apps] == ["blog"]
    assert "platform" not in doc and spec.releases == ()
    assert size(spec)["platform_apps"] == 0
    assert any(step.startswith("releases: 2 -> 0") for step in steps), steps
    assert any("deployed by the world" in step for step in steps), steps
    assert steps[0].startswith("fault times drawn for seed 3, pinned: faults[0].at ")


def test_a_platform_app_the_failure_needs_stays_with_the_one_release_it_needs(tmp_path):
    _doc, spec, _ = shrunk(tmp_path, lambda s: any(a.platform for a in s.apps) and any(r.at == 100 for r in s.releases))
    assert [(a.name, a.platform) for a in spec.apps] == [("shop", True)]
    assert [r.at for r in spec.releases] == [100]
    assert len(spec.cells) == 2 and all(len(c.pools) == 1 for c in spec.cells)  # a platform app needs 2 Cells


def test_an_app_kept_but_not_needed_on_the_platform_is_deployed_by_the_world(tmp_path):
    doc, spec, _ = shrunk(tmp_path, lambda s: any(a.name == "shop" for a in s.apps))
    assert [(a.name, a.platform) for a in spec.apps] == [("shop", False)]
    assert "platform" not in doc and "platform" not in doc["workload"]["apps"][0]
