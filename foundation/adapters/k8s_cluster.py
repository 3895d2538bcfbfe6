"""The real Cluster adapter: a Cell's Kubernetes API server through the official ``kubernetes`` client.

Connects with a kubeconfig (``kubeconfig=`` path, or the in-cluster service
account when none is given) or with an explicit ``host`` (and optional bearer
token), which is how the tests reach the Kubernetes API mock server. The client
is synchronous, so each call runs in a worker thread with a deadline; failures
become ``ClusterUnavailable`` naming the endpoint.
It must not know who reads the pods or why.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from foundation.ports.cluster import ClusterUnavailable, PodInfo


class KubeCluster:
    def __init__(self, *, host: str | None = None, token: str | None = None, kubeconfig: str | None = None,
                 timeout: float = 10.0) -> None:
        configuration = client.Configuration()
        if host:
            configuration.host = host
            if token:
                configuration.api_key = {"authorization": f"Bearer {token}"}
        elif kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        configuration.retries = 0  # a dead API server must fail within the deadline, not after urllib3's retries
        self._endpoint = configuration.host
        self._api = client.CoreV1Api(client.ApiClient(configuration))
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            raise ClusterUnavailable(self._endpoint, f"HTTP {exc.status} {exc.reason}") from None
        except (HTTPError, OSError) as exc:
            raise ClusterUnavailable(self._endpoint, str(exc)) from None

    async def list_pods(self) -> list[PodInfo]:
        pods = await self._call(self._api.list_pod_for_all_namespaces)
        result = []
        for pod in pods.items:
            status = pod.status
            conditions = (status.conditions or []) if status else []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            result.append(PodInfo(
                namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid or "",
                node=(pod.spec.node_name or "") if pod.spec else "",
                ip=(status.pod_ip or "") if status else "", phase=(status.phase or "") if status else "",
                ready=ready,
            ))
        return result

    async def list_nodes(self) -> list[str]:
        nodes = await self._call(self._api.list_node)
        return [node.metadata.name for node in nodes.items]
