"""The lab left up: its persistent controller serves the apps and heals a host crashed by hand; deploys build.

One lab (1 Cell x 3 nodes, one Nginx host, one build host, one app of 2 replicas on port 8080):

* after ``lab up`` the persistent controller (``python -m lab.controller``) has made the domain
  and the pods: the app answers through Nginx with a pod's name;
* ``leengine lab fault host-crash`` by hand on a node with pods (no CNI DEL: addresses leak):
  the controller sees the runtime silent, evicts the pods after the grace and runs replacements
  on the other nodes, which serve; ``--undo`` brings the node back;
* then ``lab run`` of a scenario whose deploys build on the real farm (git + buildah + the lab's
  registry) while the build host crashes: builds are submitted, finish, their times are the
  ``build_seconds`` samples, and the verdicts equal the sim's; ``lab down`` leaves nothing;
* the lab's registry runs with token auth behind the registry gate (docs/registry.md): an anonymous
  push through the gate is refused 401 with the Bearer challenge of the control service's ``/token``,
  and every build done landed as ``shop/shop:{commit}`` (read with a token of the lab's admin), its
  tags all commits of the app's repository.

Root only; a missing component fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lab.fabric import leftovers
from lab.hand import hand_fault
from lab.lab import down_lab
from lab.load import get
from lab.pod_actions import RuntimePods
from lab.record import tagged_pids
from lab.run import open_lab, run_lab
from lab.services import REGISTRY_SERVICE, admin_token, files
from sim.runner import run_scenario
from sim.scenario import Scenario, load_scenario
from sim.scenario_lab import lab_scaled

SCENARIO = """\
name: lab-controller-builds
seed: 5
duration: 70
leak_check_every: 10
leak_grace: 10
cooldown: 5
costs:  # the lab's tiny repository builds in seconds (the sim's defaults are a real app's minutes)
  builder: {clone_seconds: 0.1, compile_cold: 3, compile_warm: 3, image_seconds: 2, image_mb: 1}
topology:
  build_hosts: 1
  cells:
    - name: c1
      nodes: 3
      pools:
        - {name: c1-pool, cidr: 10.93.0.0/24, vlan: 193, block_size: 8}
  groups:
    - {name: web, hosts: 1}
workload:
  apps:
    - {name: shop, cells: [c1], replicas: 2, group: web, requests_per_second: 4,
       start_seconds: 0.5, readiness_seconds: 0.5}
  churn:
    deploys_per_hour: 300
faults:
  - kind: builder-crash
    at: 20
    duration: 10
checks:
  - kind: builds-finish
    within: 30
  - kind: apps-serve-again
    within: 30
"""


async def _serving(address: str, domain: str, timeout: float) -> str:
    """The body of the first 200 through Nginx within ``timeout`` seconds ('' if none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await get(address, 80, domain, 2.0)
        if answer.status == 200:
            return answer.body
        await asyncio.sleep(0.5)
    return ""


async def _pods_by_node(lab, store=None) -> dict[str, list[str]]:
    pods = RuntimePods(lab.plan, store)
    return {n: [p["name"] for p in await pods.list_pods(n) or [] if p.get("alive")] for n in lab.plan.nodes}


def _anonymous_push(lab) -> tuple[int, str]:
    """A blob upload started through the registry gate without credentials: (status, WWW-Authenticate)."""
    request = urllib.request.Request(f"http://{lab.plan.registry_address}/v2/shop/shop/blobs/uploads/", data=b"",
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("WWW-Authenticate", "")


def _registry_tags(lab, repository: str) -> list[str]:
    """The repository's tags, read through the gate with a pull token the lab's admin got from /token."""
    query = urllib.parse.urlencode({"service": REGISTRY_SERVICE, "scope": f"repository:{repository}:pull"})
    basic = base64.b64encode(f"lab-admin:{admin_token(lab)}".encode()).decode()
    context = ssl.create_default_context(cafile=str(files(lab).certs.ca_cert))
    request = urllib.request.Request(f"{lab.plan.token_realm}?{query}", headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        token = json.load(resp)["token"]
    request = urllib.request.Request(f"http://{lab.plan.registry_address}/v2/{repository}/tags/list",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return sorted(json.load(resp).get("tags") or [])


def test_a_lab_left_up_heals_a_host_crashed_by_hand_and_deploys_build_on_the_farm(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the lab makes network namespaces and OVS bridges: run the integration tier as root")
    path = tmp_path / "controller-builds.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    spec = lab_scaled(scenario.spec)
    directory = Path(tempfile.mkdtemp(prefix="le-ctl-"))  # short: unix socket paths live under it
    out = tmp_path / "out"
    try:  # the directory goes even when lab up fails
        lab, made = open_lab(scenario, directory)
        lab_id = lab.id
        nginx = lab.plan.hosts["web-nginx-1"].mgmt_ip
        assert made

        async def by_hand():
            first = await _serving(nginx, "shop.example.com", 60)
            before = await _pods_by_node(lab)
            victim = max(before, key=lambda n: len(before[n]))
            await hand_fault(lab, spec, "host-crash", [victim], duration=None, undo=False, say=lambda _: None)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # 10 s silent + 40 s grace, then replacements
                after = await _pods_by_node(lab)
                if sum(len(p) for n, p in after.items() if n != victim) >= 2:
                    break
                await asyncio.sleep(1)
            healed = await _serving(nginx, "shop.example.com", 30)
            await hand_fault(lab, spec, "host-crash", [], duration=None, undo=True, say=lambda _: None)
            return first, before, victim, after, healed

        first, before, victim, after, healed = asyncio.run(by_hand())
        assert first.startswith("shop-c1-"), first
        assert before[victim] and not after[victim], (before, after)
        assert sum(len(p) for n, p in after.items() if n != victim) >= 2, after
        assert healed.startswith("shop-c1-") and healed not in before[victim], healed
        assert not (directory / "faults" / "host-crash.json").exists()

        report = asyncio.run(asyncio.wait_for(run_lab(scenario, spec, lab, out, code_version={}), 400))
        anonymous = _anonymous_push(lab)
        tags = _registry_tags(lab, "shop/shop")
        commits = subprocess.run(["git", "-C", str(directory / "repos" / "shop"), "rev-list", "--all"],
                                 capture_output=True, text=True, check=True, timeout=30).stdout.split()
    finally:
        down = down_lab(directory)
        shutil.rmtree(directory, ignore_errors=True)
    assert down.clean, down.left
    assert not tagged_pids(lab_id)
    assert not any(leftovers(lab_id, directory).values())

    m = report["metrics"]
    assert m["builds_submitted"] >= 1 and m["builds_done"] >= 1, (m, report["lab"]["faults"])
    assert len(report["samples"]["build_seconds"]) == m["builds_done"]
    assert all(0 < s < 60 for s in report["samples"]["build_seconds"]), report["samples"]["build_seconds"]
    assert report["counts"]["registry_images"] >= 1
    status, challenge = anonymous
    assert status == 401, anonymous
    assert challenge.startswith(f'Bearer realm="{lab.plan.token_realm}",service="{REGISTRY_SERVICE}"'), challenge
    assert "repository:shop/shop:" in challenge and "push" in challenge, challenge
    built = {r["task"].partition("@")[2] for r in report["lab"]["builds"] if r["state"] == "done"}
    assert built and built <= set(tags), (built, tags)  # every build done landed under {app}/{app}:{commit}
    assert set(tags) <= set(commits), (tags, commits)
    sim = run_scenario(Scenario(spec, scenario.sha256, str(path)))
    verdicts = {c["name"]: c["passed"] for c in report["checks"]}
    assert verdicts == {c["name"]: c["passed"] for c in sim.checks}, (report["checks"], sim.checks)
