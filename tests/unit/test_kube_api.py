"""The lab's Kubernetes API (lab/kube_mock.py served by ``python -m lab.kube_api``): writes as the real
``kubernetes`` client sends them, their validation, the endpoints controller, pod and node watches,
and the process' signals and exit codes. Loopback only; no root."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation.adapters.k8s_cluster import KubeCluster
from foundation.ports.cluster import Endpoints, EndpointsEvent
from lab.kube_mock import KubeApiMock

ROOT = Path(__file__).resolve().parents[2]


def pod_body(name: str, app: str = "shop", node: str = "c1-n001") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]}}


def running(ip: str, ready: bool = True) -> dict:
    return {"status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def api():
    with KubeApiMock() as mock:
        configuration = client.Configuration()
        configuration.host = mock.url
        with client.ApiClient(configuration) as api_client:
            yield mock, client.CoreV1Api(api_client)


def endpoints(mock: KubeApiMock, app: str = "shop") -> tuple[list[str], list[str]]:
    obj = mock.get("endpoints", "default", app)
    if obj is None or not obj["subsets"]:
        return [], []
    (subset,) = obj["subsets"]
    return ([a["ip"] for a in subset.get("addresses", [])], [a["ip"] for a in subset.get("notReadyAddresses", [])])


def test_pods_written_with_the_kubernetes_client_make_endpoints_of_ready_pods_on_ready_nodes(api):
    mock, core = api
    core.create_node({"metadata": {"name": "c1-n001"}})
    core.create_node({"metadata": {"name": "c1-n002"}})
    for name, node in (("shop-1", "c1-n001"), ("shop-2", "c1-n002"), ("shop-3", "c1-n002")):
        created = core.create_namespaced_pod("default", pod_body(name, node=node))
        assert created.status.phase == "Pending" and created.metadata.uid  # a create never sets status
    assert endpoints(mock) == ([], [])  # no address yet
    core.patch_namespaced_pod_status("shop-1", "default", running("10.1.0.9"))
    core.patch_namespaced_pod_status("shop-2", "default", running("10.1.0.10"))
    core.patch_namespaced_pod_status("shop-3", "default", running("10.1.0.11", ready=False))
    assert endpoints(mock) == (["10.1.0.9", "10.1.0.10"], ["10.1.0.11"])  # address order, not text order
    assert mock.get("endpoints", "default", "shop")["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]

    core.patch_node_status("c1-n002", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert endpoints(mock) == (["10.1.0.9"], ["10.1.0.10", "10.1.0.11"])
    mock.set_node_ready("c1-n002", True)
    core.delete_namespaced_pod("shop-1", "default")
    assert endpoints(mock) == (["10.1.0.10"], ["10.1.0.11"])

    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=c1-n002")
    assert sorted(p.metadata.name for p in on_node.items) == ["shop-2", "shop-3"]
    assert core.list_namespaced_pod("default", label_selector="app=blog").items == []
    pod = core.read_namespaced_pod("shop-2", "default")
    assert (pod.status.pod_ip, pod.spec.node_name, pod.metadata.labels) == ("10.1.0.10", "c1-n002", {"app": "shop"})


def test_the_cluster_adapter_lists_and_watches_what_the_controller_derives(api):
    mock, core = api
    mock.add_node("c1-n001")

    async def main():
        cluster = KubeCluster(host=mock.url, timeout=5)
        _, version = await cluster.list_endpoints()
        watch = cluster.watch_endpoints(version)
        await asyncio.to_thread(core.create_namespaced_pod, "default", pod_body("shop-1"))
        await asyncio.to_thread(core.patch_namespaced_pod_status, "shop-1", "default", running("10.1.0.5"))
        events = [await asyncio.wait_for(watch.__anext__(), 5) for _ in range(2)]
        await watch.close()
        listing, _ = await cluster.list_endpoints()
        pods = await cluster.list_pods()
        await cluster.close()
        return events, listing, pods

    events, listing, pods = asyncio.run(main())
    assert events == [EndpointsEvent("ADDED", Endpoints("default", "shop")),
                      EndpointsEvent("MODIFIED", Endpoints("default", "shop", ready=("10.1.0.5",)))]
    assert listing == [Endpoints("default", "shop", ready=("10.1.0.5",))]
    assert [(p.name, p.node, p.ip, p.phase, p.ready) for p in pods] == [("shop-1", "c1-n001", "10.1.0.5",
                                                                         "Running", True)]


@pytest.mark.parametrize(("body", "field"), [
    ({"metadata": {"name": "Shop_1"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}}, "metadata.name"),
    ({"metadata": {"name": "x" * 64}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}}, "metadata.name"),
    ({"metadata": {"name": "p", "labels": {"app": "a b"}}, "spec": {"containers": [{"name": "app", "image": "b"}]}},
     "metadata.labels.app"),
    ({"metadata": {"name": "p"}, "spec": {"nodeName": "n;rm -rf /", "containers": [{"name": "a", "image": "b"}]}},
     "spec.nodeName"),
    ({"metadata": {"name": "p"}, "spec": {}}, "spec.containers"),
    ({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "$(id)"}]}},
     "spec.containers[0].image"),
])
def test_invalid_pods_are_refused_with_422_naming_the_field_and_change_nothing(api, body, field):
    mock, _ = api
    before = mock.resource_version
    code, status = http("POST", f"{mock.url}/api/v1/namespaces/default/pods", json.dumps(body).encode())
    assert (code, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    assert status["details"]["causes"][0]["field"] == field
    assert mock.resource_version == before and mock.objects("pods") == []


def test_bad_requests_get_the_api_servers_codes(api):
    mock, core = api
    pods = f"{mock.url}/api/v1/namespaces/default/pods"
    core.create_namespaced_pod("default", pod_body("shop-1"))
    assert http("POST", pods, b"{not json")[0] == 400
    assert http("POST", pods, b"[" * 100 + b"]" * 100)[0] == 400  # nested too deep
    assert http("POST", pods, b" " * (300 * 1024))[0] == 413
    assert http("POST", pods, json.dumps(pod_body("shop-1")).encode())[0] == 409
    assert http("POST", pods, json.dumps({**pod_body("x"), "kind": "Node"}).encode())[0] == 400
    assert http("POST", f"{mock.url}/api/v1/namespaces/default/endpoints", b"{}")[0] == 405
    assert http("PATCH", f"{pods}/shop-1", b'[{"op": "remove", "path": "/spec"}]',
                "application/json-patch+json")[0] == 415
    assert http("PATCH", f"{pods}/nobody", b"{}", "application/merge-patch+json")[0] == 404
    assert http("DELETE", f"{pods}/nobody")[0] == 404
    assert http("GET", f"{mock.url}/api/v1/namespaces/Bad/pods")[0] == 404
    with pytest.raises(ApiException) as moved:  # the spec is fixed once the pod is bound
        core.patch_namespaced_pod("shop-1", "default", {"spec": {"nodeName": "c1-n002"}})
    assert moved.value.status == 422
    with pytest.raises(ApiException) as bad_ip:
        core.patch_namespaced_pod_status("shop-1", "default", running("10.1.0.999"))
    assert bad_ip.value.status == 422 and "status.podIP" in bad_ip.value.body
    # a patch of the main resource may change labels, never the status
    core.patch_namespaced_pod("shop-1", "default", {"metadata": {"labels": {"app": "blog"}}, **running("10.1.0.7")})
    pod = mock.get("pods", "default", "shop-1")
    assert pod["metadata"]["labels"] == {"app": "blog"} and pod["status"]["phase"] == "Pending"


def test_pod_watches_resume_from_a_version_and_expire_past_the_history():
    with KubeApiMock(history=4) as mock:
        mock.add_node("c1-n001")
        start = mock.resource_version
        mock.put_pod("default", "a", node="c1-n001", ip="10.1.0.1", labels={"app": "shop"})
        mock.remove_pod("default", "a")
        url = f"{mock.url}/api/v1/namespaces/default/pods?watch=true&resourceVersion={start}&timeoutSeconds=1"
        with urllib.request.urlopen(url, timeout=5) as resp:
            events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("DELETED", "a")]
        for i in range(6):
            mock.put_pod("default", f"b{i}", ip=f"10.1.0.{10 + i}")
        with urllib.request.urlopen(url, timeout=5) as resp:
            (event,) = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_process_serves_until_sigterm_and_refuses_bad_options():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lab.kube_api", "--listen", f"127.0.0.1:{port}", "--cell",
                             "c1", "--lab-id", "0a1b"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                code, listing = http("GET", f"http://127.0.0.1:{port}/api/v1/nodes")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        assert (code, listing["kind"], listing["items"]) == (200, "NodeList", [])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "Cell c1" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for argv in (["--listen", "localhost:80", "--cell", "c1"], ["--listen", "127.0.0.1:1", "--cell", "C 1"],
                 ["--listen", "192.0.2.1:8080", "--cell", "c1"]):  # the last: not this machine's address
        done = subprocess.run([sys.executable, "-m", "lab.kube_api", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2 and "error" in done.stderr and "Traceback" not in done.stderr
