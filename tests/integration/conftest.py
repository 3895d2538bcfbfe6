"""Integration fixtures: a private Open vSwitch for the session.

``ovs_server`` runs ``leengine.ovs_server.running_ovs()``: its own ovsdb-server and
ovs-vswitchd in a temporary directory, never the system's. It needs root and
Debian's openvswitch-switch; without them the tests fail with the reason, they
never skip.
"""

from __future__ import annotations

import pytest

from leengine.ovs_server import running_ovs


@pytest.fixture(scope="session")
def ovs_server():
    with running_ovs() as server:
        yield server
