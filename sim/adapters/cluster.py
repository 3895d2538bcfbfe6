"""The sim Cluster adapter: a Cell's pods and nodes as plain records the sim world edits.

The world (or a test) adds and removes pods and nodes; agents read them through
the Cluster port exactly as they read a real API server. ``available`` switches
the API server off. It must not know any agent.
"""

from __future__ import annotations

from foundation.ports.cluster import ClusterUnavailable, PodInfo


class SimCluster:
    def __init__(self, name: str = "cell") -> None:
        self.name = name
        self.pods: dict[tuple[str, str], PodInfo] = {}
        self.nodes: dict[str, None] = {}  # ordered set
        self.available = True

    @property
    def endpoint(self) -> str:
        return f"sim:{self.name}/apiserver"

    def put_pod(self, pod: PodInfo) -> None:
        self.pods[(pod.namespace, pod.name)] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def add_node(self, name: str) -> None:
        self.nodes[name] = None

    def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    def _check(self) -> None:
        if not self.available:
            raise ClusterUnavailable(self.endpoint, "API server down")

    async def list_pods(self) -> list[PodInfo]:
        self._check()
        return list(self.pods.values())

    async def list_nodes(self) -> list[str]:
        self._check()
        return list(self.nodes)
