"""The sim's cost models in YAML: ``scenarios/costs.yaml`` and a scenario's ``costs:`` block.

``costs.yaml`` (the file named ``COSTS_FILE`` beside a scenario file; ``leengine lab fit``
writes it from lab reports) holds the cost models every scenario of that directory runs
with, a scenario's ``costs:`` block overrides single fields of it, and a top-level
``etcd_latency`` wins over ``costs.store.latency``. Without the file the code's defaults
(``sim.spec.CostSpec``) apply. The file's shape::

    costs:            # every run: the components' costs (same software in a lab and a Region)
      dataplane: {attach_seconds: 0.02, detach_seconds: 0.0, attach_per_in_flight: 0.0}
      store: {latency: 0.002, jitter: 0.0, commit_seconds: 0.0}
      builder: {clone_seconds: 5, compile_cold: 180, ...}
      proxy: {upstream_seconds: 0.0006, test_base: 0.009, ...}
    lab_costs:        # lab-scaled runs only, on top: what the lab's stand-ins cost (its tiny repo's builds,
      builder: {compile_cold: 1.1, ...}               # its nodes sharing one machine's cores)
      dataplane: {attach_per_in_flight: 0.03}
    fitted:           # provenance, written by `leengine lab fit` (not used by the sim)
      reports: [runs/lab/host-crash-ip-leak/report.json]
      note: free text

Every field is optional (a missing one keeps its default); values are non-negative
finite numbers within bounds; unknown keys, duplicates and wrong types are one
``ScenarioError`` naming file, line and field, as in the rest of the scenario parser.
It must not run anything, and must not know how the adapters use the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from yaml.nodes import Node

from sim.scenario_errors import MAX_SCALAR_CHARS, ScenarioError
from sim.scenario_fields import Fields
from sim.scenario_yaml import compose
from sim.spec import MAX_ETCD_LATENCY, MAX_SECONDS, BuilderCosts, CostSpec, DataplaneCosts, ProxyCosts, StoreCosts

COSTS_FILE = "costs.yaml"  # beside the scenario files; not a scenario itself

# section -> (its dataclass, field -> (lowest, highest, must be > 0))
_SECTIONS: dict[str, type] = {"dataplane": DataplaneCosts, "store": StoreCosts, "builder": BuilderCosts,
                              "proxy": ProxyCosts}
_BOUNDS: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("store", "latency"): (0.0, MAX_ETCD_LATENCY, False),
    ("store", "jitter"): (0.0, MAX_ETCD_LATENCY, False),
    ("store", "commit_seconds"): (0.0, MAX_ETCD_LATENCY, False),
    ("builder", "jitter"): (0.0, 0.9, False),  # relative: a step never takes <= 0 s
    ("builder", "image_mb"): (0.0, 1e6, False),
    ("builder", "registry_mb_per_second"): (0.0, 1e6, True),
}
_DEFAULT_BOUND = (0.0, MAX_SECONDS, False)

Override = tuple[str, str, float]  # (section, field, value)


@dataclass(frozen=True)
class CostsFile:
    """What a costs file says: the base cost models, and the lab's stand-ins' overrides."""

    costs: CostSpec = field(default_factory=CostSpec)
    lab_overrides: tuple[Override, ...] = ()
    path: str = ""


def apply_overrides(costs: CostSpec, overrides: tuple[Override, ...]) -> CostSpec:
    """``costs`` with each (section, field, value) set."""
    for section, name, value in overrides:
        costs = replace(costs, **{section: replace(getattr(costs, section), **{name: value})})
    return costs


def cost_fields() -> list[tuple[str, str]]:
    """Every (section, field) of a cost model, in the file's order."""
    return [(section, f.name) for section, cls in _SECTIONS.items() for f in fields(cls)]


class CostFields(Fields):
    def cost_overrides(self, node: Node, f: str) -> tuple[Override, ...]:
        """A ``costs:`` mapping: sections of fields, each a bounded number."""
        out: list[Override] = []
        m = self.mapping(node, f, set(_SECTIONS))
        for section, sn in m.items():
            keys = {x.name for x in fields(_SECTIONS[section])}
            for name, vn in self.mapping(sn, f"{f}.{section}", keys).items():
                low, high, positive = _BOUNDS.get((section, name), _DEFAULT_BOUND)
                out.append((section, name, self.number(vn, f"{f}.{section}.{name}", low=low, high=high,
                                                       positive=positive)))
        return tuple(out)

    def costs_file(self, root: Node) -> CostsFile:
        m = self.mapping(root, "", {"costs", "lab_costs", "fitted"})
        costs = apply_overrides(CostSpec(), self.cost_overrides(m["costs"], "costs")) if "costs" in m else CostSpec()
        lab = self.cost_overrides(m["lab_costs"], "lab_costs") if "lab_costs" in m else ()
        if "fitted" in m:  # provenance only: checked for shape, not used
            p = self.mapping(m["fitted"], "fitted", {"reports", "note", "samples"})
            if "reports" in p:
                for i, rn in enumerate(self.sequence(p["reports"], "fitted.reports", 1000, "reports")):
                    self.string(rn, f"fitted.reports[{i}]", limit=MAX_SCALAR_CHARS)
            if "note" in p:
                self.string(p["note"], "fitted.note", empty=True, limit=MAX_SCALAR_CHARS, control=True)
            if "samples" in p:
                for key, vn in self.mapping(p["samples"], "fitted.samples", set(SAMPLE_KEYS)).items():
                    self.integer(vn, f"fitted.samples.{key}", low=0)
        return CostsFile(costs, lab, self.file)


SAMPLE_KEYS = ("cni_add_seconds", "propagation_seconds", "reload_seconds", "drain_seconds", "build_seconds")


def parse_costs(data: bytes, file: str) -> CostsFile:
    """A costs file's bytes -> ``CostsFile``, or one ``ScenarioError``."""
    root = compose(data.decode("utf-8", errors="replace"), file)
    if root is None:
        return CostsFile(path=file)
    return CostFields(file).costs_file(root)


def load_costs(path: Path) -> CostsFile:
    """The costs file at ``path`` (read as boundedly as a scenario), or the code's defaults if there is none."""
    from sim.scenario import read_scenario_file  # the one bounded reader (sim.scenario imports this module)

    if not path.exists():
        return CostsFile()
    return parse_costs(read_scenario_file(path), str(path))


def costs_beside(scenario: Path) -> CostsFile:
    """The costs file of a scenario: ``costs.yaml`` in its directory, if there is one."""
    return load_costs(scenario.parent / COSTS_FILE)


__all__ = ["COSTS_FILE", "SAMPLE_KEYS", "CostFields", "CostsFile", "Override", "ScenarioError", "apply_overrides",
           "cost_fields", "costs_beside", "load_costs", "parse_costs"]
