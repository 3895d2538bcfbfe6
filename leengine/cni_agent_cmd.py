"""``leengine-cni-agent``: the long-lived per-node CNI agent daemon (one command to start it).

    leengine-cni-agent --node node-1 --etcd 10.0.0.10:2379 \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert node-1.crt --etcd-key node-1.key \\
        [--socket /run/leengine/cni.sock] [--ovsdb unix:/var/run/openvswitch/db.sock] \\
        [--bridge br-int] [--mtu 1500] [--cooldown 60] [--metrics-address 127.0.0.1:9101]

It wires the real adapters (etcd Store, OVS + netlink Dataplane, asyncio Runtime)
to the agent logic (``node/cni_agent.py``) and serves the ``leengine-cni`` plugin on a
unix socket (``leengine/cni_agent_server.py``). While etcd cannot be reached at
start-up it retries every two seconds and does not open its socket yet, so the
plugin answers "try again later" (CNI error 11) and the runtime retries (``leengine/daemon.py``,
the same for every daemon; so are the signals, the exit codes and the flags ``--etcd``,
``--etcd-timeout``, ``--log-level``: ``leengine/command.py``, ``leengine/etcd_options.py``).
Bad options are one line on stderr and exit status 2.

``--metrics-address HOST:PORT`` serves Prometheus metrics (IPAM: addresses in use, blocks,
pool sizes, allocation latency, lost CASes; CNI commands by command and code; etcd errors)
on ``http://HOST:PORT/metrics``. It is off by default: the agent runs in the host's network
namespace, where an open port is open to whatever reaches the node, so the operator picks
a loopback or management address (``leengine/metrics_option.py``). An address that cannot
be bound stops the agent at start in one line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from cni.ipam import Ipam
from cni.pools import NODE_NAME, PoolConfigError, check_name
from foundation.ports import StoreError
from foundation.ports.metrics import (
    CNI_REQUEST_SECONDS,
    CNI_REQUESTS,
    ETCD_ERRORS,
    IPAM_ALLOCATION_SECONDS,
    IPAM_ALLOCATIONS_IN_USE,
    IPAM_BLOCKS,
    IPAM_CAS_CONFLICTS,
    IPAM_IPPOOL_SIZE,
    NO_METRICS,
    MetricDef,
    Metrics,
)
from leengine.command import BadInput, LogLevelOpt, configure_logging, run_app
from leengine.daemon import RETRY_SECONDS, connect_until_stopped, run_daemon, stop_on_signals, until_stopped
from leengine.etcd_options import (
    DEFAULT_ETCD,
    DEFAULT_TIMEOUT,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdKeyOpt,
    EtcdOpt,
    EtcdSettings,
    EtcdTimeoutOpt,
)
from leengine.metrics_option import MetricsAddressOpt, metrics_served, record_daemon_info
from node.cni_agent import COMPONENT, CniAgent, NodeConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.cni_agent")
DEFAULT_SOCKET = "/run/leengine/cni.sock"
# The families a scrape lists from the start (labelled ones get their series with the first event).
FAMILIES: tuple[MetricDef, ...] = (IPAM_ALLOCATIONS_IN_USE, IPAM_BLOCKS, IPAM_IPPOOL_SIZE, IPAM_ALLOCATION_SECONDS,
                                   IPAM_CAS_CONFLICTS, CNI_REQUESTS, CNI_REQUEST_SECONDS, ETCD_ERRORS)


async def run_agent(*, node: str, etcd: EtcdSettings, socket_path: str, ovsdb: str, bridge: str, mtu: int,
                    cooldown: float, max_concurrency: int, stop: asyncio.Event | None = None,
                    metrics: Metrics = NO_METRICS) -> None:
    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.ovs_dataplane import OvsDataplane
    from leengine.cni_agent_server import serve

    stop = stop or stop_on_signals()
    runtime = AsyncioRuntime()
    store = etcd.store()
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        dataplane = OvsDataplane(ovsdb)
        try:
            agent = CniAgent(Ipam(store, runtime, node, cooldown=cooldown, metrics=metrics), dataplane, runtime,
                             NodeConfig(node, bridge=bridge, mtu=mtu), metrics=metrics)
            while not stop.is_set():  # loading the node's blocks needs etcd too: the same retry
                try:
                    await agent.start()
                    break
                except StoreError as exc:
                    log.warning("waiting for etcd: %s", exc)
                    await until_stopped(asyncio.sleep(RETRY_SECONDS), stop, name="etcd-retry")
            if stop.is_set():
                return
            blocks = agent.ipam.owned_blocks()
            log.info("node %s: %d pools, %d blocks, %d addresses in use; serving %s", node, len(agent.ipam.pools),
                     len(blocks), sum(len(b.allocations) for b in blocks), socket_path)
            await serve(socket_path, agent, max_concurrency=max_concurrency, stop=stop)
        finally:
            await dataplane.close()
    finally:
        await store.close()


@app.command()
def main(
    node: Annotated[str, typer.Option(help="this node's name, as the Kubernetes API knows it")],
    etcd: EtcdOpt = DEFAULT_ETCD,
    socket: Annotated[str, typer.Option(help="unix socket the plugin talks to")] = DEFAULT_SOCKET,
    ovsdb: Annotated[str, typer.Option(help="OVSDB endpoint")] = "unix:/var/run/openvswitch/db.sock",
    bridge: Annotated[str, typer.Option(help="OVS bridge when the network config names none")] = "br-int",
    mtu: Annotated[int, typer.Option(help="pod MTU when the network config names none")] = 1500,
    cooldown: Annotated[float, typer.Option(help="seconds before a released address is reused")] = 60.0,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    max_concurrency: Annotated[int, typer.Option(help="CNI requests handled at once")] = 64,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    metrics_address: MetricsAddressOpt = "",
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve CNI requests of this node: IPAM in etcd, pods on the OVS bridge tagged with their pool's VLAN."""
    try:
        check_name("node name", node, NODE_NAME)
    except PoolConfigError as exc:
        raise BadInput(str(exc)) from None
    settings = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    if not 68 <= mtu <= 65535 or cooldown < 0 or max_concurrency < 1:
        raise BadInput("mtu must be 68-65535, cooldown >= 0, max-concurrency >= 1")
    configure_logging(log_level)
    with metrics_served(metrics_address, FAMILIES) as metrics:  # bound now: a bad address stops us before etcd
        record_daemon_info(metrics, "leengine-cni-agent")
        metrics.inc(ETCD_ERRORS, 0.0, component=COMPONENT)  # the series exists at 0: increase() sees the first error
        run_daemon(lambda stop: run_agent(node=node, etcd=settings, socket_path=socket, ovsdb=ovsdb, bridge=bridge,
                                          mtu=mtu, cooldown=cooldown, max_concurrency=max_concurrency, stop=stop,
                                          metrics=metrics))


def entry() -> None:
    run_app(app, "leengine-cni-agent")


if __name__ == "__main__":
    entry()
