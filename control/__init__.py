"""The control service: slb-core, apps/versions, builds, members/roles, and discovery.

Service logic is written against ports; the gRPC server is an entry point that
wires it to adapters. Built by the load-balancing issue and later ones.
"""
