"""Pod networking's library: pool, block and handle records, IPAM, the CNI protocol, cnictl's logic.

The per-node agent that acts on CNI requests is ``node/cni_agent.py``; the thin
``leengine-cni`` plugin and the daemons are commands (``leengine/``). Code here imports
ports (``foundation.ports``) and shared logic only; ``cni.pod_pools`` answers load
balancing's one question ("is this a pod address?") from the same pool records.
"""
