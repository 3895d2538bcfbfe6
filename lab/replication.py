"""The lab's replication controllers: each Cell's ReplicationControllers made into pods on its nodes.

The platform (control/apps.py through the Workloads port, lab/kube_workloads.py in the
mock) writes one ReplicationController per (app, version, Cell); on a real Cell
kube-controller-manager would make its pods. In the lab ``Replication`` does, every
``every`` seconds per Cell, from what the Cell's API lists:

* a controller whose template carries labels ``app`` (a DNS label) and ``version``
  (``v<N>``) gets ``spec.replicas`` pods named ``{controller}-{5 characters}`` (the API
  server's generateName alphabet), labelled like its template, placed on the emptier of two
  Ready nodes of the Cell drawn at random (sim/kube.py's rule) and started by that node's lab
  runtime (lab/container_runtime.py: the real CNI plugin, busybox httpd on the template's
  ``containerPort``, the Pod reported Ready to the API, whose endpoints controller lists it
  with its ``targetRef``: the k8s Cluster adapter reads the version from the pod's name);
* too many pods (a scale down): the surplus stopped by its runtime (CNI DEL), not-ready
  ones first, then the newest; pods of a controller that is gone (a deleted version) are
  orphans and are stopped the same way; a pod the runtime does not hold any more (its node
  died) is deleted from the API;
* a pod reported ``Failed`` (a restarted runtime that could not verify it), or on a node
  NotReady for ``node_grace`` seconds, leaves the API and is replaced;
* the controller's ``status`` (``replicas``, ``readyReplicas``) is written through its
  ``/status`` subresource when it changed, as the Workloads port reads it back.

Bad versions: a template env ``LEENGINE_ERROR_RATE`` (0..1) makes its pods answer 500 to
that share of their requests, and ``set_errors(app, version, rate)`` (lab/faults.py's
``bad-version``) does it to a version's running pods (every runtime's ``errors`` op) and to
the ones started later. Only pods labelled ``version`` are touched: the scenario's own pods
(lab/controller.py, label ``app`` only) are not this module's.

A Cell whose API does not answer is skipped (its pods keep running, as a cut-off Cell's
would). Names reach the runtimes and the API as JSON fields and URL path segments that are
validated DNS labels. It must not know apps' records, etcd or the faults' schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.container_runtime import (
    ERROR_RATE_ENV,
    KubeClient,
    RuntimeError_,
    check_error_rate,
    check_version,
)
from lab.kube_objects import is_dns_label
from lab.pod_actions import RUNTIME_TIMEOUT, json_line

log = logging.getLogger("leengine.lab.replication")

SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName characters
SUFFIX_LENGTH = 5
PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Template:
    """What a controller's pods run: its labels' app and version, the container's port, its error rate."""

    app: str
    version: str
    port: int
    error_rate: float


def template_of(rc: Any) -> Template | None:
    """The pods' template of a controller as the mock stores it; None if it is none this loop runs."""
    try:
        labels = rc["spec"]["template"]["metadata"]["labels"]
        container = rc["spec"]["template"]["spec"]["containers"][0]
        app, version = labels.get("app"), check_version(labels.get("version"))
        ports = container.get("ports") or [{"containerPort": 80}]
        port = ports[0]["containerPort"]
        rate = 0.0
        for var in container.get("env") or ():
            if var.get("name") == ERROR_RATE_ENV:
                rate = check_error_rate(var.get("value"))
    except (KeyError, IndexError, TypeError, AttributeError, RuntimeError_):
        return None
    if not is_dns_label(app) or not version or not isinstance(port, int) or not 1 <= port <= 65535:
        return None
    return Template(app, version, port, rate)


def owns(rc: Any, pod: Any) -> bool:
    """Does the controller's selector match the pod (same namespace, every selector label equal)?"""
    try:
        selector = rc["spec"]["selector"]
        labels = pod["metadata"].get("labels") or {}
        return bool(selector) and pod["metadata"]["namespace"] == rc["metadata"]["namespace"] and all(
            labels.get(k) == v for k, v in selector.items())
    except (KeyError, TypeError, AttributeError):
        return False


def _ready(pod: Any) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def _node_ready(node: Any) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or ())


@dataclass
class Counts:
    started: int = 0
    start_failures: int = 0
    stopped: int = 0
    forgotten: int = 0  # pods deleted from the API without a CNI DEL (their node lost, Failed)
    add_seconds: list[float] = field(default_factory=list)  # each started pod's CNI ADD, as its runtime timed it
    add_in_flight: list[int] = field(default_factory=list)  # the machine's ADDs in flight as each began


@dataclass
class _Starting:
    cell: str
    namespace: str
    controller: str
    node: str


@dataclass
class Replication:
    """The replication controllers of every Cell (module docstring); ``run()`` until cancelled."""

    cells: Mapping[str, str]  # Cell -> its API's URL (http://IP:PORT)
    nodes: Mapping[str, list[str]]  # Cell -> its nodes' names
    runtime_socket: Callable[[str], Path]  # node -> its lab runtime's socket
    seed: int = 0
    every: float = 1.0
    node_grace: float = 40.0
    counts: Counts = field(default_factory=Counts)
    error_rates: dict[tuple[str, str], float] = field(default_factory=dict)  # (app, version) -> set_errors' rate
    # app -> (lowest version number, rate): "the first version deployed after the fault began" (break_next)
    next_rules: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.kube = {cell: KubeClient(url) for cell, url in self.cells.items()}
        self.starting: dict[str, _Starting] = {}
        self.stopping: set[tuple[str, str, str]] = set()  # (cell, namespace, pod)
        self.not_ready_since: dict[tuple[str, str], float] = {}
        self.ready_since: dict[tuple[str, str], dict[str, float]] = {}  # (Cell, app) -> ready pod -> since when
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        try:
            while True:
                for cell in self.cells:
                    try:
                        await self.sync_cell(cell)
                    except (RuntimeError_, OSError, ValueError) as exc:  # the Cell's API away: skipped
                        log.debug("Cell %s not synced: %s", cell, exc)
                await asyncio.sleep(self.every)
        finally:
            await self.stop()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sync_cell(self, cell: str) -> None:
        """One pass over one Cell: replace lost pods, start what is missing, stop the surplus and orphans."""
        kube = self.kube[cell]
        rcs = (await kube.expect("GET", "/api/v1/replicationcontrollers")).get("items") or []
        pods = (await kube.expect("GET", "/api/v1/pods?labelSelector=version")).get("items") or []
        nodes = (await kube.expect("GET", "/api/v1/nodes")).get("items") or []
        now = time.monotonic()
        ready_nodes = []
        for node in nodes:
            name = node.get("metadata", {}).get("name")
            if name not in self.nodes.get(cell, ()):
                continue
            if _node_ready(node):
                self.not_ready_since.pop((cell, name), None)
                ready_nodes.append(name)
            else:
                self.not_ready_since.setdefault((cell, name), now)
        live = []
        for pod in pods:
            meta = pod.get("metadata", {})
            namespace, name = meta.get("namespace"), meta.get("name")
            if not is_dns_label(namespace) or not is_dns_label(name):
                continue
            node = (pod.get("spec") or {}).get("nodeName", "")
            lost_since = self.not_ready_since.get((cell, node))
            failed = (pod.get("status") or {}).get("phase") == "Failed"
            lost = lost_since is not None and now - lost_since >= self.node_grace
            if name not in self.starting and (failed or lost):
                self._forget(cell, namespace, name)
                continue
            live.append(pod)
        ready: dict[str, dict[str, float]] = {}
        for pod in live:
            app = (pod["metadata"].get("labels") or {}).get("app")
            node = (pod.get("spec") or {}).get("nodeName", "")
            if isinstance(app, str) and _ready(pod) and node in ready_nodes:
                before = self.ready_since.get((cell, app), {})
                ready.setdefault(app, {})[pod["metadata"]["name"]] = before.get(pod["metadata"]["name"], now)
        for key in [k for k in self.ready_since if k[0] == cell and k[1] not in ready]:
            del self.ready_since[key]
        for app, pods_ready in ready.items():
            self.ready_since[(cell, app)] = pods_ready
        for rc in sorted(rcs, key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"])):
            template = template_of(rc)
            if template is None:
                continue
            await self._keep(cell, rc, template, [p for p in live if owns(rc, p)], ready_nodes, live)
        for pod in live:  # orphans: a pod of a version whose controller is gone
            if not any(owns(rc, pod) for rc in rcs) and pod["metadata"]["name"] not in self.starting:
                self._stop(cell, pod)

    async def _keep(self, cell: str, rc: Any, template: Template, mine: list[Any], ready_nodes: list[str],
                    live: list[Any]) -> None:
        namespace, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        want = rc["spec"].get("replicas", 1)
        kept = [p for p in mine if (cell, namespace, p["metadata"]["name"]) not in self.stopping]
        names = {p["metadata"]["name"] for p in kept}
        names |= {n for n, s in self.starting.items() if (s.cell, s.namespace, s.controller) == (cell, namespace, name)}
        if len(names) < want and ready_nodes:
            load = {n: 0 for n in ready_nodes}
            for pod in live:
                node = (pod.get("spec") or {}).get("nodeName", "")
                if node in load:
                    load[node] += 1
            for s in self.starting.values():
                if s.node in load:
                    load[s.node] += 1
            for _ in range(want - len(names)):
                a, b = self.rng.choice(ready_nodes), self.rng.choice(ready_nodes)
                node = b if load[b] < load[a] else a
                load[node] += 1
                self._start(cell, namespace, name, node, template)
        elif len(names) > want:
            surplus = sorted(kept, key=lambda p: (_ready(p), p["metadata"].get("creationTimestamp", ""),
                                                  p["metadata"]["name"]))
            for pod in surplus[:len(kept) - want]:
                self._stop(cell, pod)
        ready = sum(1 for p in kept if _ready(p))
        status = rc.get("status") or {}
        if status.get("replicas") != len(kept) or status.get("readyReplicas") != ready:
            with contextlib.suppress(RuntimeError_):
                await self.kube[cell].expect(
                    "PATCH", f"/api/v1/namespaces/{namespace}/replicationcontrollers/{name}/status",
                    {"status": {"replicas": len(kept), "readyReplicas": ready}}, ok=(200, 404), content_type=PATCH)

    def ready_elsewhere(self, app: str, grace: float, out: set[str] | frozenset[str] = frozenset()) -> bool:
        """A pod of the app Ready on a Ready node for ``grace`` seconds in a Cell not cut off (``out``), as
        the last look at each Cell's API saw it (the serving check of lab/load.py)."""
        now = time.monotonic()
        return any(now - since >= grace for (cell, a), pods in self.ready_since.items()
                   if a == app and cell not in out for since in pods.values())

    # ------------------------------------------------------------------ pods
    def _pod_name(self, controller: str) -> str:
        suffix = "".join(self.rng.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
        return f"{controller}-{suffix}"[:63]

    def _start(self, cell: str, namespace: str, controller: str, node: str, template: Template) -> None:
        name = self._pod_name(controller)
        self.starting[name] = _Starting(cell, namespace, controller, node)
        rule = self.next_rules.get(template.app)
        if rule is not None and (template.app, template.version) not in self.error_rates \
                and int(template.version[1:]) >= rule[0]:
            self.error_rates[(template.app, template.version)] = rule[1]  # the first version after: this one
            del self.next_rules[template.app]
            log.info("bad version: %s %s answers %.0f %% errors", template.app, template.version, rule[1] * 100)
        rate = self.error_rates.get((template.app, template.version), template.error_rate)
        request = {"op": "run", "pod": name, "app": template.app, "namespace": namespace, "port": template.port,
                   "version": template.version, "error_rate": rate}
        self._spawn(self._run(node, name, request), f"replication/start/{name}")

    async def _run(self, node: str, name: str, request: dict[str, Any]) -> None:
        try:
            answer = await json_line(self.runtime_socket(node), request, timeout=RUNTIME_TIMEOUT)
            if answer.get("ok"):
                self.counts.started += 1
                if answer.get("existing") is not True:  # a pod already running made no ADD now: no latency sample
                    self.counts.add_seconds.append(float(answer.get("add_seconds", 0.0)))
                    self.counts.add_in_flight.append(int(answer.get("add_in_flight", 0)))
            else:
                self.counts.start_failures += 1
                log.info("pod %s on %s not started: %s", name, node, str(answer.get("error"))[:200])
        except (OSError, TimeoutError, ValueError) as exc:
            self.counts.start_failures += 1
            log.info("pod %s on %s not started: runtime: %s", name, node, exc)
        finally:
            self.starting.pop(name, None)

    def _stop(self, cell: str, pod: Any) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        key = (cell, namespace, name)
        if key in self.stopping:
            return
        self.stopping.add(key)
        node = (pod.get("spec") or {}).get("nodeName", "")
        self._spawn(self._stop_pod(key, node), f"replication/stop/{name}")

    async def _stop_pod(self, key: tuple[str, str, str], node: str) -> None:
        cell, namespace, name = key
        try:
            stopped = False
            if node in self.nodes.get(cell, ()):
                with contextlib.suppress(OSError, TimeoutError, ValueError):
                    answer = await json_line(self.runtime_socket(node), {"op": "stop", "pod": name},
                                             timeout=RUNTIME_TIMEOUT)
                    stopped = bool(answer.get("ok"))
            if stopped:
                self.counts.stopped += 1
            else:  # its runtime does not hold it (its node died, it never started there): out of the API
                await self._delete(cell, namespace, name)
        finally:
            self.stopping.discard(key)

    def _forget(self, cell: str, namespace: str, name: str) -> None:
        key = (cell, namespace, name)
        if key in self.stopping:
            return
        self.stopping.add(key)

        async def forget() -> None:
            try:
                await self._delete(cell, namespace, name)
            finally:
                self.stopping.discard(key)

        self._spawn(forget(), f"replication/forget/{name}")

    async def _delete(self, cell: str, namespace: str, name: str) -> None:
        with contextlib.suppress(RuntimeError_):
            await self.kube[cell].expect("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", ok=(200, 404))
            self.counts.forgotten += 1

    # ------------------------------------------------------------------ bad versions
    async def set_errors(self, app: str, version: str, rate: float) -> list[str]:
        """Pods of ``app`` at ``version`` answer 500 to ``rate`` of their requests, now and when started later;
        the pods changed (every node's runtime asked; one that does not answer is skipped)."""
        if not is_dns_label(app):
            raise ValueError(f"app {app!r:.60} is not a DNS label")
        version, rate = check_version(version), check_error_rate(rate)
        self.error_rates[(app, version)] = rate
        changed: list[str] = []
        for node in sorted({n for nodes in self.nodes.values() for n in nodes}):
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                answer = await json_line(self.runtime_socket(node), {"op": "errors", "app": app, "version": version,
                                                                     "error_rate": rate}, timeout=10.0)
                changed += [str(p) for p in answer.get("pods") or ()]
        return changed


    def break_next(self, app: str, lowest: int, rate: float) -> None:
        """The first version of ``app`` numbered ``lowest`` or above whose pods start from now on answers 500
        to ``rate`` of its requests (a ``bad-version`` fault of version "next")."""
        self.next_rules[app] = (lowest, check_error_rate(rate))

    async def mend(self, app: str, version: str) -> list[str]:
        """Undo ``set_errors`` / ``break_next`` (``version`` "next": whichever version the rule fell on)."""
        if version == "next":
            self.next_rules.pop(app, None)
            hit = [v for (a, v) in self.error_rates if a == app]
            changed: list[str] = []
            for v in hit:
                changed += await self.set_errors(app, v, 0.0)
                self.error_rates.pop((app, v), None)
            return changed
        changed = await self.set_errors(app, version, 0.0)
        self.error_rates.pop((app, version), None)
        return changed


def replication_of(plan: Any, *, seed: int = 0, every: float = 1.0, node_grace: float = 40.0) -> Replication:
    """The lab's ``Replication`` from its plan (lab/plan.py): every Cell's API, nodes and runtimes."""
    nodes: dict[str, list[str]] = {cell: [] for cell in plan.cells}
    for node in plan.nodes.values():
        nodes[node.cell].append(node.name)
    return Replication({c.name: c.api_url for c in plan.cells.values()}, nodes, plan.runtime_socket, seed=seed,
                       every=every, node_grace=node_grace)
