"""The SimPy model of a LeEngine Region: the world, its failures and the sim adapters.

Agents run here unchanged: the world wires them to the sim adapters of the ports.
Nothing in sim/ may import a real adapter or a client library of a real component.
"""
