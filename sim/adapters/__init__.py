"""Sim adapters of the ports: the SimPy runtime bridge and the in-memory MVCC store."""
