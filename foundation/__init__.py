"""What every box of the testbed shares: the ports, their real adapters and shared pure logic.

Agents (cni/, node/, control/) import ``foundation.ports`` and pure helpers from here,
never ``foundation.adapters``: only entry points (CLIs, daemons, the sim world) choose
adapters. The import-linter contracts in pyproject.toml enforce that.
"""
