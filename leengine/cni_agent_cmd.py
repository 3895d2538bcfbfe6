"""``leengine-cni-agent``: the long-lived per-node CNI agent daemon (one command to start it).

    leengine-cni-agent --node node-1 --etcd 10.0.0.10:2379 \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert node-1.crt --etcd-key node-1.key \\
        [--socket /run/leengine/cni.sock] [--ovsdb unix:/var/run/openvswitch/db.sock] \\
        [--bridge br-int] [--mtu 1500] [--cooldown 60]

It wires the real adapters (etcd Store, OVS + netlink Dataplane, asyncio Runtime)
to the agent logic (``node/cni_agent.py``) and serves the ``leengine-cni`` plugin on a
unix socket (``leengine/cni_agent_server.py``). While etcd cannot be reached at
start-up it retries every two seconds and does not open its socket yet, so the
plugin answers "try again later" (CNI error 11) and the runtime retries (``leengine/daemon.py``,
the same for every daemon; so are the signals, the exit codes and the flags ``--etcd``,
``--etcd-timeout``, ``--log-level``: ``leengine/command.py``, ``leengine/etcd_options.py``).
Bad options are one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from cni.ipam import Ipam
from cni.pools import NODE_NAME, PoolConfigError, check_name
from foundation.ports import StoreError
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
from node.cni_agent import CniAgent, NodeConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.cni_agent")
DEFAULT_SOCKET = "/run/leengine/cni.sock"


async def run_agent(*, node: str, etcd: EtcdSettings, socket_path: str, ovsdb: str, bridge: str, mtu: int,
                    cooldown: float, max_concurrency: int, stop: asyncio.Event | None = None) -> None:
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
            agent = CniAgent(Ipam(store, runtime, node, cooldown=cooldown), dataplane, runtime,
                             NodeConfig(node, bridge=bridge, mtu=mtu))
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
    run_daemon(lambda stop: run_agent(node=node, etcd=settings, socket_path=socket, ovsdb=ovsdb, bridge=bridge,
                                      mtu=mtu, cooldown=cooldown, max_concurrency=max_concurrency, stop=stop))


def entry() -> None:
    run_app(app, "leengine-cni-agent")


if __name__ == "__main__":
    entry()
