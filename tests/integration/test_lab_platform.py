"""The platform in a lab: ``leengine app`` against the lab's control service makes pods that really serve.

One lab (2 Cells x 2 nodes, one Nginx host, one platform app ``shop`` on port 8080 whose domain
and discovery binding the lab makes), driven as a person would, with ``leengine app`` and the
environment of ``leengine lab env``:

* ``app create --domain web/shop.example.com`` + ``app deploy`` (v1, 2 replicas per Cell): the
  control service (``--cells``) writes a replication controller per Cell, the lab's replication
  loop (lab/replication.py, in the persistent controller) makes 2 pods per Cell named
  ``shop-v1-xxxxx`` labelled app/version, started by the lab kubelets through the real CNI
  plugin; the Cells' Endpoints carry each pod's ``targetRef``; the app answers through Nginx
  with a v1 pod's name;
* a v2 with ``LEENGINE_ERROR_RATE=0.5`` in its env: not released, its share is 0, so Nginx sends
  it nothing (60 requests, all answered by v1 pods); its pods answer 500 to about half of their
  requests (busybox httpd's CGI); ``set_errors`` (the ``bad-version`` fault's primitive) makes
  v1's pods answer 500 to every request, then none;
* ``app scale shop v1 1 --cell c1``: one v1 pod of c1 is stopped (CNI DEL: its runtime no longer
  holds it); ``app delete shop v2``: v2's pods are gone from every Cell and runtime;
* ``leengine lab bind cart --domain web/cart.example.com``: an app the scenario does not name gets its
  domain and discovery binding; created and deployed by hand, it serves through Nginx;
* ``lab down`` leaves nothing.

Root only; a missing component fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from lab import services
from lab.fabric import leftovers
from lab.lab import down_lab
from lab.load import get
from lab.pod_actions import RuntimePods
from lab.record import tagged_pids
from lab.replication import replication_of
from lab.run import open_lab
from sim.scenario import load_scenario

SCENARIO = """\
name: lab-platform
seed: 3
duration: 60
topology:
  cells:
    - name: c1
      nodes: 2
      pools:
        - {name: c1-pool, cidr: 10.94.0.0/24, vlan: 194, block_size: 8}
    - name: c2
      nodes: 2
      pools:
        - {name: c2-pool, cidr: 10.95.0.0/24, vlan: 195, block_size: 8}
  groups:
    - {name: web, hosts: 1}
workload:
  apps:
    - {name: shop, cells: [c1, c2], replicas: 2, group: web, port: 8080, platform: true, requests_per_second: 4}
"""
IMAGE = "registry.local:5000/shop:" + "0123456789abcdef" * 2 + "01234567"
POD_NAME = re.compile(r"shop-(v[0-9]+)-[bcdfghjklmnpqrstvwxz2456789]{5}")


def _run_app(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "leengine"), "app", *argv], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _app(env: dict[str, str], *argv: str) -> str:
    done = _run_app(env, *argv)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def _api(lab, cell: str, path: str) -> dict:
    with urllib.request.urlopen(f"{lab.plan.cells[cell].api_url}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def _pods(lab, cell: str, version: str, *, ready: bool = True) -> list[str]:
    items = _api(lab, cell, f"/api/v1/namespaces/shop/pods?labelSelector=version%3D{version}")["items"]
    return sorted(p["metadata"]["name"] for p in items if not ready or (
        p["status"].get("phase") == "Running"
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))))


def _wait(what: str, look, good=bool, timeout: float = 90.0):
    """``look()`` again every 0.5 s until ``good`` holds of what it returns (that is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        got = look()
        if good(got):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s (last: {got!r:.300})")
        time.sleep(0.5)


def _addressed(lab, cell: str) -> list[str]:
    endpoints = _api(lab, cell, "/api/v1/namespaces/shop/endpoints/shop")
    assert all(a["targetRef"]["kind"] == "Pod" for s in endpoints.get("subsets", []) for a in s.get("addresses", []))
    return sorted(a["targetRef"]["name"] for s in endpoints.get("subsets", []) for a in s.get("addresses", []))


def _answers(lab, pod: str, n: int) -> list[int]:
    """HTTP status of ``n`` requests made from inside the pod's own netns to its server (busybox wget)."""
    codes = []
    for _ in range(n):
        done = subprocess.run(["ip", "netns", "exec", f"{lab.plan.netns_prefix}p-{pod}", "busybox", "wget", "-q",
                               "-O", "-", "http://127.0.0.1:8080/"], capture_output=True, text=True, timeout=10,
                              check=False)
        codes.append(200 if done.returncode == 0 and done.stdout == pod else
                     500 if "500" in done.stderr else -1)
    return codes


async def _bodies(nginx: str, n: int) -> list[str]:
    return [(await get(nginx, 80, "shop.example.com", 2.0)).body for _ in range(n)]


async def _runtime_pods(lab) -> set[str]:
    pods = RuntimePods(lab.plan, None)
    return {p["name"] for n in lab.plan.nodes for p in await pods.list_pods(n) or [] if p.get("version")}


def test_leengine_app_in_a_lab_runs_versions_as_pods_that_serve_and_answer_errors_when_bad(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the lab makes network namespaces and OVS bridges: run the integration tier as root")
    path = tmp_path / "lab-platform.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    directory = Path(tempfile.mkdtemp(prefix="le-plat-"))  # short: unix socket paths live under it
    try:
        lab, made = open_lab(scenario, directory)
        lab_id = lab.id
        assert made
        env = {**os.environ, **services.lab_environment(lab)}
        nginx = lab.plan.hosts["web-nginx-1"].mgmt_ip

        # the lab's controller makes the scenario apps' domains right after lab up: until then NOT_FOUND
        created = _wait("the app created with its domain", lambda: _run_app(
            env, "create", "shop", "--cell", "c1", "--cell", "c2", "--non-production", "--domain",
            "web/shop.example.com"), lambda done: done.returncode == 0 or "NOT_FOUND" not in done.stderr, 30)
        assert created.returncode == 0, created.stderr
        _app(env, "deploy", "shop", "--image", IMAGE, "--replicas", "2", "--port", "8080")
        v1 = {c: _wait(f"2 ready v1 pods in {c}", lambda c=c: _pods(lab, c, "v1"), lambda p: len(p) == 2)
              for c in ("c1", "c2")}
        for cell, names in v1.items():
            assert all(POD_NAME.fullmatch(n) for n in names), names
            pods = _api(lab, cell, "/api/v1/namespaces/shop/pods?labelSelector=version%3Dv1")["items"]
            assert all(p["metadata"]["labels"] == {"app": "shop", "version": "v1"} for p in pods), pods
            _wait(f"Endpoints shop/shop of {cell} list both pods", lambda cell=cell: _addressed(lab, cell),
                  lambda names, cell=cell: names == v1[cell])
            _wait("the controller's status", lambda cell=cell: _api(
                lab, cell, "/api/v1/namespaces/shop/replicationcontrollers/shop-v1")["status"],
                lambda status: status.get("readyReplicas") == 2 and status.get("replicas") == 2)

        async def served() -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                answer = await get(nginx, 80, "shop.example.com", 2.0)
                if answer.status == 200:
                    return answer.body
                await asyncio.sleep(0.5)
            return ""

        body = asyncio.run(served())
        assert body in v1["c1"] + v1["c2"], body

        _app(env, "deploy", "shop", "--replicas", "1", "--env", "LEENGINE_ERROR_RATE=0.5")
        v2 = _wait("a ready v2 pod in each Cell", lambda: _pods(lab, "c1", "v2") + _pods(lab, "c2", "v2"),
                   lambda p: len(p) == 2)
        # v2 runs with share 0 (not released): Nginx sends it nothing, though discovery pushed its pods
        time.sleep(5)
        through = asyncio.run(_bodies(nginx, 60))
        assert through and all(b in v1["c1"] + v1["c2"] for b in through), through
        codes = _answers(lab, v2[0], 40)
        assert set(codes) <= {200, 500} and 6 <= codes.count(500) <= 34, codes
        replication = replication_of(lab.plan)
        changed = asyncio.run(replication.set_errors("shop", "v1", 1.0))
        assert sorted(changed) == sorted(v1["c1"] + v1["c2"])
        assert _answers(lab, v1["c1"][0], 5) == [500] * 5
        asyncio.run(replication.set_errors("shop", "v1", 0.0))
        assert _answers(lab, v1["c1"][0], 5) == [200] * 5

        _app(env, "scale", "shop", "v1", "1", "--cell", "c1")
        kept = _wait("v1 scaled to 1 pod in c1", lambda: _pods(lab, "c1", "v1", ready=False), lambda p: len(p) == 1)
        assert kept[0] in v1["c1"]
        _app(env, "delete", "shop", "v2")
        _wait("v2's pods gone from the Cells", lambda: _pods(lab, "c1", "v2", ready=False)
              + _pods(lab, "c2", "v2", ready=False), lambda p: not p)
        held = _wait("v2's pods stopped by their runtimes", lambda: asyncio.run(_runtime_pods(lab)),
                     lambda held: not any(n.startswith("shop-v2-") for n in held))
        assert held == {*kept, *v1["c2"]}, held

        # an app the scenario does not name: `leengine lab bind` makes its domain and discovery's binding
        bound = subprocess.run([str(Path(sys.executable).parent / "leengine"), "lab", "bind", "cart", "--domain",
                                "web/cart.example.com", "--dir", str(directory)], capture_output=True, text=True,
                               timeout=120, check=False)
        assert bound.returncode == 0 and "bound" in bound.stdout, (bound.stdout, bound.stderr)
        _app(env, "create", "cart", "--cell", "c1", "--cell", "c2", "--non-production", "--domain",
             "web/cart.example.com")
        _app(env, "deploy", "cart", "--image", IMAGE.replace("/shop:", "/cart:"), "--replicas", "1")

        async def cart() -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                answer = await get(nginx, 80, "cart.example.com", 2.0)
                if answer.status == 200 and answer.body.startswith("cart-v1-"):
                    return answer.body
                await asyncio.sleep(0.5)
            return ""

        assert asyncio.run(cart()), "cart never served through Nginx"
    finally:
        down = down_lab(directory)
        shutil.rmtree(directory, ignore_errors=True)
    assert down.clean, down.left
    assert not tagged_pids(lab_id)
    assert not any(leftovers(lab_id, directory).values())
