"""lab/plan.py: names fit the kernel and carry the lab id, addresses and ports are unique, names are the sim's."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from lab.plan import (
    IFNAMSIZ,
    MGMT_VLAN,
    LabPlanError,
    check_lab_id,
    interface_names,
    plan_lab,
)
from sim.scenario import load_scenario
from sim.spec import CellSpec, GroupSpec, PoolSpec, RegionSpec
from sim.targets import target_universe

# every shipped scenario (costs.yaml beside them holds the sim's fitted cost models, not a Region)
SCENARIOS = sorted(p for p in (Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml") if p.stem != "costs")


def region(cells: int = 3, nodes: int = 4, groups: int = 1, hosts: int = 2, build_hosts: int = 1) -> RegionSpec:
    return RegionSpec(
        name="lab-test", seed=1, duration=60.0,
        cells=tuple(CellSpec(f"c{i + 1}", nodes, (PoolSpec(f"c{i + 1}-pool", f"10.{i + 1}.0.0/22", 101 + i),),
                             node_labels=(("room", f"room-{i}"),), racks=2) for i in range(cells)),
        groups=tuple(GroupSpec(f"g{i}", hosts) for i in range(groups)),
        apps=(), build_hosts=build_hosts)


@pytest.fixture(params=SCENARIOS, ids=lambda p: p.stem)
def scenario_spec(request: pytest.FixtureRequest) -> RegionSpec:
    return load_scenario(request.param).spec


def test_names_fit_the_kernel_carry_the_id_and_are_unique(scenario_spec: RegionSpec) -> None:
    plan = plan_lab(scenario_spec, "0f3c", Path("/var/lib/leengine/lab"))
    names = interface_names(plan)
    assert all(len(n) <= IFNAMSIZ for n in names), [n for n in names if len(n) > IFNAMSIZ]
    assert all(n.startswith("l0f3c") for n in names)
    assert [n for n, c in Counter(names).items() if c > 1] == []
    assert all(h.netns == f"le-0f3c-{h.name}" for h in plan.hosts.values())
    assert plan.router.netns == "le-0f3c-router"


def test_addresses_unique_inside_the_management_network(scenario_spec: RegionSpec) -> None:
    plan = plan_lab(scenario_spec, "abcd", Path("/tmp/lab"))
    ips = [h.mgmt_ip for h in plan.hosts.values()] + [plan.root_mgmt_ip, plan.router.mgmt_ip]
    assert len(set(ips)) == len(ips)
    net = ipaddress.IPv4Network(plan.mgmt_cidr)
    assert all(ipaddress.IPv4Address(ip) in net for ip in ips)
    assert plan.root_mgmt_ip == "198.18.0.1" and plan.router.mgmt_ip == "198.18.0.254"
    endpoints = [(m.address, m.port) for m in plan.ports.metrics.values()]
    endpoints += [(link.listen_address, link.listen_port) for link in plan.ports.links]
    assert len(set(endpoints)) == len(endpoints)
    assert all(0 < port <= 65535 for _, port in endpoints)


def test_names_are_the_simulators(scenario_spec: RegionSpec) -> None:
    """Fault selectors pick the same targets: nodes, Nginx hosts and build hosts have the sim's names and labels."""
    spec = scenario_spec
    plan = plan_lab(spec, "abcd", Path("/tmp/lab"))
    sim_nodes = target_universe("host-crash", spec.cells, spec.groups, spec.apps, build_hosts=spec.build_hosts)
    assert list(plan.nodes) == [name for name, _ in sim_nodes]
    for name, labels in sim_nodes:
        assert plan.nodes[name].labels == tuple(sorted((k, v) for k, vs in labels.items() for v in vs))
    sim_nginx = target_universe("nginx-host-loss", spec.cells, spec.groups, spec.apps)
    assert [h for hosts in plan.groups.values() for h in hosts] == [name for name, _ in sim_nginx]
    sim_build = target_universe("builder-crash", spec.cells, spec.groups, spec.apps, build_hosts=spec.build_hosts)
    assert list(plan.build_hosts) == [name for name, _ in sim_build]
    assert list(plan.cells) == [c.name for c in spec.cells]
    # every sim etcd client has a links listener per member
    clients = target_universe("etcd-slow", spec.cells, spec.groups, spec.apps, build_hosts=spec.build_hosts)
    for name, _ in clients:
        assert len(plan.ports.links_of(plan.etcd_client_link(name))) == 3, name


def test_layout_of_the_reference_lab() -> None:
    """3 Cells x 4 nodes, 2 Nginx hosts, 1 build host, 3 etcd members: the lab the issue measures."""
    plan = plan_lab(region(), "beef", Path("/tmp/lab"))
    assert len(plan.nodes) == 12 and len(plan.bridges) == 1 + 3 + 12
    assert plan.etcd_members == ["etcd1", "etcd2", "etcd3"]
    assert plan.groups == {"g0": ("g0-nginx-1", "g0-nginx-2")}
    assert plan.build_hosts == ("build-1",)
    c2 = plan.cells["c2"]
    assert (c2.fabric, c2.core_patch, c2.fabric_patch) == ("lbeeff1", "lbeefc1", "lbeefk1")
    assert plan.hosts["api-c2"].bridge == "lbeeff1" and plan.hosts["etcd1"].bridge == "lbeefcore"
    n = plan.nodes["c3-n004"]
    assert (n.bridge, n.cell, n.index, n.uplink, n.downlink) == ("lbeefn11", "c3", 11, "lbeefu11", "lbeefd11")
    assert ("rack", "r2") in n.labels and ("room", "room-2") in n.labels and ("cell", "c3") in n.labels
    vlans = {p.vlan: p for p in plan.router.ports}
    assert vlans[MGMT_VLAN].address == "198.18.0.254/16"
    assert vlans[102].address == "10.2.0.1/22" and vlans[102].pool == "c2-pool"
    assert plan.pool_gateways == {"c1-pool": "10.1.0.1", "c2-pool": "10.2.0.1", "c3-pool": "10.3.0.1"}
    assert plan.etcd_initial_cluster() == ("etcd1=http://198.18.1.1:2380,etcd2=http://198.18.1.2:2380,"
                                           "etcd3=http://198.18.1.3:2380")
    assert plan.ports.etcd_endpoints("c1-n001").count(",") == 2
    assert plan.etcd_client_link("slb-core") == "control" and plan.etcd_client_link("c1-n001") == "c1-n001"
    assert plan.ovs_db == "unix:/tmp/lab/ovs/db.sock"
    assert plan.pidfile("etcd1") == Path("/tmp/lab/pids/etcd1.pid")
    assert plan.pod_netns("shop-1") == "le-beef-p-shop-1"
    assert plan.ports.metrics["cni-c1-n001"].address == "198.18.0.1"
    assert plan.ports.metrics["slb-g0-nginx-1"].url == "http://198.18.16.1:" + \
        f"{plan.ports.metrics['slb-g0-nginx-1'].port}/metrics"


def test_another_management_network() -> None:
    plan = plan_lab(region(), "beef", Path("/tmp/lab"), mgmt_cidr="198.19.0.0/16")
    assert plan.root_mgmt_ip == "198.19.0.1" and plan.hosts["etcd1"].mgmt_ip == "198.19.1.1"


@pytest.mark.parametrize("lab_id", ["", "abc", "abcde", "ABCD", "ab-d", "../x", "a b ", "0f3g", None, 1234])
def test_bad_lab_ids_are_refused(lab_id: object) -> None:
    with pytest.raises(LabPlanError, match="lab id"):
        check_lab_id(lab_id)  # type: ignore[arg-type]  # hostile input on purpose
    with pytest.raises(LabPlanError):
        plan_lab(region(), lab_id, Path("/tmp/lab"))  # type: ignore[arg-type]  # hostile input on purpose


def test_unplannable_specs_are_refused() -> None:
    spec = region()
    same_vlan = replace(spec, cells=(spec.cells[0], replace(spec.cells[1], pools=(
        PoolSpec("c2-pool", "10.2.0.0/22", 101),))))
    with pytest.raises(LabPlanError, match="VLAN 101"):
        plan_lab(same_vlan, "abcd", Path("/tmp/lab"))
    mgmt_vlan = replace(spec, cells=(replace(spec.cells[0], pools=(PoolSpec("p", "10.1.0.0/22", MGMT_VLAN),)),))
    with pytest.raises(LabPlanError, match="management"):
        plan_lab(mgmt_vlan, "abcd", Path("/tmp/lab"))
    in_mgmt = replace(spec, cells=(replace(spec.cells[0], pools=(PoolSpec("p", "198.18.4.0/22", 101),)),))
    with pytest.raises(LabPlanError, match="overlaps"):
        plan_lab(in_mgmt, "abcd", Path("/tmp/lab"))
    hostile = replace(spec, cells=(replace(spec.cells[0], name="c1;rm -rf"),))
    with pytest.raises(LabPlanError, match="DNS label"):
        plan_lab(hostile, "abcd", Path("/tmp/lab"))
    with pytest.raises(LabPlanError, match="/16"):
        plan_lab(spec, "abcd", Path("/tmp/lab"), mgmt_cidr="198.18.0.0/24")


def test_plan_is_pure_and_stable() -> None:
    a = plan_lab(region(), "abcd", Path("/tmp/lab"))
    b = plan_lab(region(), "abcd", Path("/tmp/lab"))
    assert a == b
    assert a.summary()["bridges"] == list(a.bridges)
