"""Pod networking: the thin ``leengine-cni`` plugin, the per-node CNI agent, IPAM and cnictl.

Agent logic here imports ports (``foundation.ports``) only; the real Dataplane
adapter (pyroute2 + OVS) and the daemons are entry points. Built by the
pod-networking issue.
"""
