"""Per-node agents: the SLB agent on every Nginx host and the build agent on every build host.

Pure logic over ports (Store, Proxy, Builder, Runtime); adapters are chosen by
entry points. Built by the load-balancing and build-farm issues.
"""
