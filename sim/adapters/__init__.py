"""Sim adapters of the ports, one module each, twins of ``foundation.adapters``.

Runtime: ``runtime`` (the SimPy bridge); Store: ``store`` (in-memory MVCC server) and
``store_client`` (a client with latency, slowness and partitions); Cluster: ``cluster``;
Dataplane: ``dataplane``; Proxy: ``proxy`` (the reload cost model); Builder: ``builder``
(+ the Region's registry); ControlClient: ``control`` (slb-core in-process, same principal
and authorisation as over gRPC); Metrics: ``metrics`` (series sampled over virtual time,
written as OpenMetrics). None of them imports a real client library.
"""
