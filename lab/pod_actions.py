"""What the lab's controller asks of a live lab (``lab.controller.PodActions``), over its real interfaces.

``RuntimePods(plan, store)`` is the one implementation, used by ``leengine lab run`` (lab/run.py's
``LiveLab`` extends it with the faults' primitives) and by the persistent controller
(``python -m lab.controller``):

* ``run_pod`` / ``stop_pod`` / ``list_pods``: one JSON line to the node's lab container runtime
  (``DIR/run/<node>.sock``, lab/container_runtime.py): RunPod with the app's port (the
  runtime executes the CNI plugin and reports the pod Ready to its Cell's API), StopPod
  (CNI DEL, the pod's processes and netns gone, the pod out of the API), the pods it holds
  (None when the runtime does not answer);
* ``forget_pod``: a dead pod's record out of its Cell's API (no CNI DEL);
* ``drain`` / ``undrain``: discovery's drain record, as ``leengine-discovery drain`` writes it,
  waited for until discovery says how it ended; then removed (discovery's forget).

Every request is bounded by a timeout; names reach the runtime as JSON fields (it checks them),
never a shell. It must not know the faults, the load or the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from control.discovery import decode_drain_record, drain_key, encode_drain_record
from foundation.ports.store import Store
from lab.controller import LabPod, Started, StartFailed

RUNTIME_TIMEOUT = 60.0  # a RunPod includes the CNI ADD: bounded, never forever
LIST_TIMEOUT = 5.0
DRAIN_TIMEOUT = 30.0


async def json_line(socket_path: Path, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """One JSON line to a unix socket, one JSON line back (the links process and the runtimes speak this)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=1 << 20)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    answer = json.loads(line or b"{}")
    if not isinstance(answer, dict):
        raise ValueError(f"{socket_path.name}: answer is not an object")
    return answer


def http_json(method: str, url: str, body: dict[str, Any] | None = None, *, timeout: float = 5.0,
              content_type: str = "application/json") -> int:
    """An HTTP call to a lab Cell's API (its mgmt address only); returns the status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # an http:// URL of the lab's plan only
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class RuntimePods:
    """``PodActions`` over the node runtimes' sockets, the Cells' APIs and discovery's drain records."""

    def __init__(self, plan: Any, store: Store, *, requested_by: str = "leengine lab") -> None:
        self.plan = plan  # lab.plan.LabPlan
        self.store = store
        self.requested_by = requested_by

    async def run_pod(self, node: str, pod: LabPod, ready_after: float) -> Started:
        # The namespace is the app, as the sim names pods (discovery binds namespace = service = app).
        # The runtime reports the pod Ready as soon as its httpd listens; the controller counts it
        # ready after the app's start + readiness seconds, as the sim's kubelet does.
        request = {"op": "run", "pod": pod.name, "app": pod.app, "namespace": pod.app, "port": pod.port}
        try:
            answer = await json_line(self.plan.runtime_socket(node), request, timeout=RUNTIME_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StartFailed(f"runtime of {node}: {exc}") from None
        if not answer.get("ok"):
            raise StartFailed(str(answer.get("error", "refused"))[:200])
        return Started(str(answer["ip"]), float(answer.get("add_seconds", 0.0)), int(answer.get("add_in_flight", 0)),
                       existing=answer.get("existing") is True)

    async def stop_pod(self, node: str, pod: LabPod) -> None:
        await json_line(self.plan.runtime_socket(node), {"op": "stop", "pod": pod.name}, timeout=RUNTIME_TIMEOUT)

    async def list_pods(self, node: str) -> list[dict[str, Any]] | None:
        """The pods the node's runtime holds (name, app, ip, port, alive, ...); None when it does not answer."""
        try:
            answer = await json_line(self.plan.runtime_socket(node), {"op": "list"}, timeout=LIST_TIMEOUT)
        except (OSError, TimeoutError, ValueError):
            return None
        pods = answer.get("pods") if answer.get("ok") else None
        return [p for p in pods if isinstance(p, dict)] if isinstance(pods, list) else None

    async def clear_node(self, node: str) -> int:
        """Stop every pod the node's runtime holds (CNI DEL each): a clean slate; how many were stopped."""
        stopped = 0
        for info in await self.list_pods(node) or []:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                answer = await json_line(self.plan.runtime_socket(node), {"op": "stop", "pod": info.get("name")},
                                         timeout=RUNTIME_TIMEOUT)
                stopped += bool(answer.get("ok"))
        return stopped

    async def forget_pod(self, pod: LabPod) -> None:
        url = f"{self.plan.cells[pod.cell].api_url}/api/v1/namespaces/{pod.app}/pods/{pod.name}"
        await asyncio.to_thread(http_json, "DELETE", url)

    async def drain(self, pod: LabPod) -> float:
        """Discovery's drain, as ``leengine-discovery drain`` asks it: a record, then its outcome."""
        key = drain_key(pod.app, pod.ip)
        started = time.monotonic()
        await self.store.put(key, encode_drain_record({"state": "requested", "timeout": DRAIN_TIMEOUT,
                                                       "requested_by": self.requested_by,
                                                       "requested_at": time.time()}))
        while time.monotonic() - started < DRAIN_TIMEOUT + 5.0:
            kv = await self.store.get(key)
            with contextlib.suppress(ValueError):
                if kv is None or decode_drain_record(kv.value)["state"] not in ("requested", "draining"):
                    break
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def undrain(self, pod: LabPod) -> None:
        await self.store.delete(drain_key(pod.app, pod.ip))
