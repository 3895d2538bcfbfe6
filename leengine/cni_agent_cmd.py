"""``leengine-cni-agent``: the long-lived per-node CNI agent daemon (one command to start it).

    leengine-cni-agent --node node-1 --etcd 10.0.0.10:2379 \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert node-1.crt --etcd-key node-1.key \\
        [--socket /run/leengine/cni.sock] [--ovsdb unix:/var/run/openvswitch/db.sock] \\
        [--bridge br-int] [--mtu 1500] [--cooldown 60]

It wires the real adapters (etcd Store, OVS + netlink Dataplane, asyncio Runtime)
to the agent logic (``node/cni_agent.py``) and serves the ``leengine-cni`` plugin on a
unix socket (``leengine/cni_agent_server.py``). While etcd cannot be reached at
start-up it retries every two seconds and does not open its socket yet, so the
plugin answers "try again later" (CNI error 11) and the runtime retries.
Bad options are one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from cni.ipam import Ipam
from cni.pools import NODE_NAME, PoolConfigError, check_name
from foundation.ports import StoreError
from leengine.etcd_options import (
    ENDPOINT_HELP,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdClientTls,
    EtcdKeyOpt,
    EtcdOptionError,
    check_etcd_options,
    open_store,
)
from leengine.typer_main import run_app
from node.cni_agent import CniAgent, NodeConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.cni_agent")
DEFAULT_SOCKET = "/run/leengine/cni.sock"


async def run_agent(*, node: str, etcd: str, socket_path: str, ovsdb: str, bridge: str, mtu: int, cooldown: float,
                    etcd_timeout: float, max_concurrency: int, stop: asyncio.Event | None = None,
                    etcd_tls: EtcdClientTls | None = None) -> None:
    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.ovs_dataplane import OvsDataplane
    from leengine.cni_agent_server import serve

    runtime = AsyncioRuntime()
    while True:
        try:
            store = await open_store(etcd, etcd_tls, timeout=etcd_timeout)
            break
        except StoreError as exc:
            log.warning("waiting for etcd: %s", exc)
            await asyncio.sleep(2)
    dataplane = OvsDataplane(ovsdb)
    agent = CniAgent(Ipam(store, runtime, node, cooldown=cooldown), dataplane, runtime,
                     NodeConfig(node, bridge=bridge, mtu=mtu))
    try:
        while True:
            try:
                await agent.start()
                break
            except StoreError as exc:
                log.warning("waiting for etcd: %s", exc)
                await asyncio.sleep(2)
        blocks = agent.ipam.owned_blocks()
        log.info("node %s: %d pools, %d blocks, %d addresses in use; serving %s", node, len(agent.ipam.pools),
                 len(blocks), sum(len(b.allocations) for b in blocks), socket_path)
        await serve(socket_path, agent, max_concurrency=max_concurrency, stop=stop)
    finally:
        await dataplane.close()
        await store.close()


@app.command()
def main(
    node: Annotated[str, typer.Option(help="this node's name, as the Kubernetes API knows it")],
    etcd: Annotated[str, typer.Option(envvar="LEENGINE_ETCD", help=ENDPOINT_HELP)] = "127.0.0.1:2379",
    socket: Annotated[str, typer.Option(help="unix socket the plugin talks to")] = DEFAULT_SOCKET,
    ovsdb: Annotated[str, typer.Option(help="OVSDB endpoint")] = "unix:/var/run/openvswitch/db.sock",
    bridge: Annotated[str, typer.Option(help="OVS bridge when the network config names none")] = "br-int",
    mtu: Annotated[int, typer.Option(help="pod MTU when the network config names none")] = 1500,
    cooldown: Annotated[float, typer.Option(help="seconds before a released address is reused")] = 60.0,
    etcd_timeout: Annotated[float, typer.Option(help="deadline of each etcd request, seconds")] = 5.0,
    max_concurrency: Annotated[int, typer.Option(help="CNI requests handled at once")] = 64,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve CNI requests of this node: IPAM in etcd, pods on the OVS bridge tagged with their pool's VLAN."""
    try:
        check_name("node name", node, NODE_NAME)
        etcd_tls = check_etcd_options(etcd, etcd_ca, etcd_cert, etcd_key)
    except (PoolConfigError, EtcdOptionError) as exc:
        print(f"leengine-cni-agent: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    if not 68 <= mtu <= 65535 or cooldown < 0 or etcd_timeout <= 0 or max_concurrency < 1:
        print("leengine-cni-agent: error: mtu must be 68-65535, cooldown >= 0, etcd-timeout > 0, "
              "max-concurrency >= 1", file=sys.stderr)
        raise typer.Exit(2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run_agent(node=node, etcd=etcd, socket_path=socket, ovsdb=ovsdb, bridge=bridge, mtu=mtu,
                          cooldown=cooldown, etcd_timeout=etcd_timeout, max_concurrency=max_concurrency,
                          etcd_tls=etcd_tls))


def entry() -> None:
    run_app(app, "leengine-cni-agent")


if __name__ == "__main__":
    entry()
