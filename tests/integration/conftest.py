"""Integration fixtures.

``ovs_server`` (a private Open vSwitch for the session) lives in ``tests/conftest.py``:
the Dataplane conformance suite uses it too. So do ``etcd_server`` and ``tls_certs``: the
session's etcd runs with TLS and client-certificate auth, so every test here that reaches it
passes ``etcd_server.client_tls`` (``leengine.etcd_options.open_store``) or, to a command,
``etcd_server.client_args``; the control service is served with ``etcd_server.certs``'s
server certificate and its clients verify it against ``certs.ca_cert``.
"""
