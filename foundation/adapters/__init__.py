"""Real adapters of the ports, one module each.

Runtime: ``asyncio_runtime``; Store: ``etcd_store`` (aetcd's channel, TLS with client
certificates); Cluster: ``k8s_cluster`` (the official ``kubernetes`` client); Dataplane:
``ovs_dataplane`` (pyroute2 + the OVSDB IDL); Proxy: ``nginx_proxy`` + ``nginx_lua`` (nginx
with the lua module); Builder: ``buildah_builder`` (git + buildah + a registry);
ControlClient: ``grpc_control`` (the control service's gRPC API over TLS); Metrics:
``prom_metrics`` (``prometheus_client`` collectors a daemon serves on ``/metrics``).

Only entry points (commands), the lab and tests import this package; agents never do
(an import-linter contract keeps it so).
"""
