"""The lab: real processes on one machine for tests, benches and the one-machine lab.

Launchers of a private etcd (with TLS: ``lab.certs``), Open vSwitch, Nginx and a
registry, the Kubernetes API mock, and the SLB lab (pods in network namespaces,
the real agent daemons, wrk). Each launcher owns what it starts and stops it
(``lab.processes``), in a temporary directory of its own.

It may import anything (ports, adapters, commands' option helpers); nothing but
tests, benches and the lab itself imports it: agents, adapters, the simulator
and the commands never do.
"""
