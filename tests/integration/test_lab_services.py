"""The lab's services on a small lab (1 Cell x 2 nodes, 1 Nginx host, 1 build host, 3 etcd members).

``lab.lab.Lab.up(..., services=False)`` lays the fabric (slice N), then ``lab.services.start_services``
brings every process up through its role script. What must hold afterwards:

* etcd is a cluster of the 3 members with one leader, reached by the clients through the links only;
* the control service answers (gRPC health over TLS), the pools are registered and the groups exist;
* a links listener in "cut" accepts a connection and holds it (no TLS handshake completes), and the
  same connection is served once the link passes again; "delay" adds at least the delay each way;
* with one member stopped, a client whose listener points at it still reaches etcd (failover);
* a killed process is started again by name; ``services_status`` shows every process alive, the
  Nginx host serving and the pool; ``stop_services`` leaves no process of the lab but OVS.

Root only (netns, OVS); a missing component fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from lab import services
from lab.lab import Lab
from lab.record import tagged_pids

SCENARIO = """\
name: services-small
seed: 1
duration: 60
topology:
  build_hosts: 1
  cells:
    - name: c1
      nodes: 2
      pools:
        - {name: c1-pool, cidr: 10.81.0.0/24, vlan: 181, block_size: 8}
  groups:
    - {name: web, hosts: 1}
workload:
  apps:
    - {name: shop, cells: [c1], replicas: 2, group: web}
"""


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.fail("the lab makes network namespaces and OVS bridges: run the integration tier as root")
    # not pytest's tmp dirs (mode 700): Nginx's workers (www-data) traverse the lab directory to their prefix
    root = Path(tempfile.mkdtemp(prefix="leengine-lab-services-"))
    os.chmod(root, 0o755)
    scenario = root / "small.yaml"
    scenario.write_text(SCENARIO)
    lab = Lab.up(root / "lab", scenario, services=False)
    try:
        started = time.monotonic()
        timings = services.start_services(lab)
        lab.start_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        lab.timings = timings  # type: ignore[attr-defined]
        yield lab
    finally:
        services.stop_services(lab)
        report = lab.down()
        shutil.rmtree(root, ignore_errors=True)
        assert not tagged_pids(lab.id), f"processes of lab {lab.id} left after down: {report}"


def _tls(lab) -> ssl.SSLContext:
    certs = services.files(lab).certs
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _health_through(lab, client: str, timeout: float = 5.0) -> float:
    """GET /health through ``client``'s links listener; seconds it took."""
    endpoint = services.etcd_endpoint(lab.plan, client)
    started = time.monotonic()
    with urllib.request.urlopen(f"https://{endpoint}/health", timeout=timeout, context=_tls(lab)) as resp:
        assert b'"true"' in resp.read()
    return time.monotonic() - started


def test_etcd_is_three_members_with_one_leader(lab):
    health = services.etcd_health(lab)
    assert set(health) == {"etcd1", "etcd2", "etcd3"}
    for member, state in health.items():
        assert state["healthy"], (member, state)
        assert state["members"] == ["etcd1", "etcd2", "etcd3"]
    assert len({state["leader"] for state in health.values()}) == 1
    # every daemon's --etcd is a links listener on the root's management address, never a member
    for row in services._launches(lab)[2:]:
        for launch in row:
            if "LEENGINE_ETCD" in launch.env:
                assert launch.env["LEENGINE_ETCD"].startswith(f"{lab.plan.root_mgmt_ip}:"), launch


def test_control_answers_and_pools_and_groups_are_there(lab):
    assert services._control_ready(lab)
    assert services.create_groups(lab) == []  # "web" exists already: created by start_services
    pools = {row.get("pool"): row for row in services.pool_rows(lab)}
    assert pools["c1-pool"]["cidr"] == "10.81.0.0/24" and pools["c1-pool"]["vlan"] == 181, pools


def test_links_cut_holds_and_delay_adds_the_delay(lab):
    client = "cnictl"
    host, port = services.etcd_endpoint(lab.plan, client).split(":")
    base = statistics.median(_health_through(lab, client) for _ in range(3))

    services.set_links(lab, [client], "delay", 0.2)
    try:
        delayed = statistics.median(_health_through(lab, client) for _ in range(3))
    finally:
        services.set_links(lab, [client], "pass")
    # a TLS 1.3 handshake and one request are at least two round trips through the link, each way delayed
    # 0.2 s: the call cannot take less than 4 x 0.2 s. Not "base + 0.8": the undelayed call's own work
    # overlaps the waits (measured 0.026 -> 0.825 s), so only the floor is exact.
    assert delayed >= 0.8 and delayed - base >= 0.4, (base, delayed)

    services.set_links(lab, [client], "cut")
    try:
        raw = socket.create_connection((host, int(port)), timeout=2)  # accepted ...
        raw.settimeout(1.0)
        tls = _tls(lab).wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
        with pytest.raises((TimeoutError, socket.timeout)):
            tls.do_handshake()  # ... and held: nothing reaches etcd
        status = services.links_request(lab, {"op": "status"})["clients"][client]
        assert status["state"] == "cut" and status["held"] >= 1
        with pytest.raises(OSError):
            _health_through(lab, client, timeout=1.0)
    finally:
        services.set_links(lab, [client], "pass")
    tls.close()
    assert _health_through(lab, client) < 2.0


def test_a_stopped_member_is_survived_through_failover(lab):
    # the member cnictl's listener forwards to first
    endpoint = services.etcd_endpoint(lab.plan, "cnictl")
    link = next(k for k in lab.plan.ports.links_of("cnictl") if f"{k.listen_address}:{k.listen_port}" == endpoint)
    services.stop_member(lab, link.member)
    try:
        assert not services.alive(lab, link.member)
        deadline = time.monotonic() + 20
        while True:  # the two others keep quorum (re-election may take a moment)
            try:
                _health_through(lab, "cnictl", timeout=2.0)
                break
            except OSError:
                assert time.monotonic() < deadline, "etcd not reachable through failover"
                time.sleep(0.2)
    finally:
        services.start_member(lab, link.member)
    deadline = time.monotonic() + 30
    while not services._cluster_ready(lab):
        assert time.monotonic() < deadline, services.etcd_health(lab)
        time.sleep(0.2)


def test_kill_and_start_again_and_status(lab):
    sup = services._supervisor(lab)
    before = sup.pid("control")
    assert services.kill(lab, "control")
    assert not services.alive(lab, "control")
    after = services.start(lab, "control")
    assert after != before and services._control_ready(lab)

    rows = services.services_status(lab)
    processes = {r["name"]: r for r in rows if r["kind"] == "process"}
    expected = {"links", "etcd1", "etcd2", "etcd3", "control", "discovery", "api-c1", "registry", "registry-gate",
                *(f"slb-{h}" for hs in lab.plan.groups.values() for h in hs),
                *(f"build-agent-{h}" for h in lab.plan.build_hosts),
                *(f"cni-{n}" for n in lab.plan.nodes), *(f"runtime-{n}" for n in lab.plan.nodes), "kube-controller"}
    assert set(processes) == expected
    dead = {n: r for n, r in processes.items() if not r["alive"]}
    assert not dead, dead
    nginx = [r for r in rows if r["kind"] == "nginx"]
    assert nginx and all(r["serving"] and r["alive"] for r in nginx), nginx
    assert any(r["kind"] == "pool" and "error" not in r for r in rows), rows
    # every process carries the lab's tag, and signals reach only this lab's processes
    assert sup.pid("control") in tagged_pids(lab.plan.id)
    assert services.kill(lab, "no-such-process", signal.SIGTERM) is False


def test_metrics_are_served_where_the_plan_says(lab):
    for name in ("etcd1", "control", "discovery", "cni-" + next(iter(lab.plan.nodes))):
        url = lab.plan.ports.metrics[name].url
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and b"# TYPE" in resp.read(), url


def test_start_services_time(lab):
    # context for the README: the small lab's services come up within the target's budget
    assert lab.start_seconds < 90, lab.timings
    print(f"start_services: {lab.start_seconds:.1f}s {lab.timings}")


def test_role_scripts_refuse_bad_values(tmp_path: Path):
    import subprocess

    from lab.supervisor import ROLES_DIR

    env = {"PATH": os.environ["PATH"], "LISTEN": "1.2.3.4:80; rm -rf /", "TOKENS_FILE": "/x", "TLS_CERT": "/x",
           "TLS_KEY": "/x"}
    done = subprocess.run([str(ROLES_DIR / "control.sh")], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "LISTEN" in done.stderr and "not IPv4:port" in done.stderr
    env = {"PATH": os.environ["PATH"]}
    done = subprocess.run([str(ROLES_DIR / "etcd-member.sh")], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode != 0 and "MEMBER_NAME" in done.stderr
