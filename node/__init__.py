"""Per-node agents: the CNI agent on every node, the SLB agent on every Nginx host, the build agent on every build host.

Pure logic over ports (Store, Dataplane, Proxy, Builder, Runtime); adapters are chosen
by the commands (``leengine/*_cmd.py``) and the sim world. The agents never import each
other: they meet in the Store (an import-linter contract).
"""
