"""Integration fixtures.

``ovs_server`` (a private Open vSwitch for the session) lives in ``tests/conftest.py``:
the Dataplane conformance suite uses it too.
"""
