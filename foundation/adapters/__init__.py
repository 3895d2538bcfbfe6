"""Real adapters of the ports: asyncio for the Runtime, etcd for the Store.

Only entry points (CLIs, daemons) and tests import this package; agents never do.
"""
