"""``leengine-slb-agent``: the daemon on every Nginx host (one command to start it).

    leengine-slb-agent --group public --host nginx-1 --etcd 10.0.0.10:2379 \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert nginx-1.crt --etcd-key nginx-1.key \\
        --prefix /var/lib/leengine/nginx [--listen-address 0.0.0.0] \\
        [--debounce 0.05] [--max-wait 0.5]

It wires the real adapters (etcd Store, a private Nginx under ``--prefix`` with the
lua module, asyncio Runtime) to the agent logic (``node/slb_agent.py``). Nginx is
started in its own session and outlives the agent: a killed agent leaves Nginx
serving; a restarted one adopts the running Nginx, serves from the saved state at
once and resumes its watch from the saved revision. SIGTERM stops the agent and
leaves Nginx running unless ``--stop-nginx`` is given. The Nginx admin endpoint is the
unix socket ``PREFIX/admin/admin.sock`` (directory mode 700), never a TCP port.
Bad options are one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from foundation.logic.slb_domain import GROUP_NAME, HOST_NAME
from leengine.daemon import connect_until_stopped, stop_on_signals
from leengine.etcd_options import (
    ENDPOINT_HELP,
    EtcdCaOpt,
    EtcdCertOpt,
    EtcdClientTls,
    EtcdKeyOpt,
    EtcdOptionError,
    check_etcd_options,
    new_store,
)
from leengine.typer_main import run_app
from node.slb_agent import SlbAgent, SlbAgentConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.slb_agent")


async def run_agent(config: SlbAgentConfig, *, etcd: str, prefix: Path, listen_address: str,
                    etcd_timeout: float, stop_nginx: bool, stop: asyncio.Event | None = None,
                    etcd_tls: EtcdClientTls | None = None) -> None:
    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.nginx_proxy import NginxProxy

    # The agent tests every batch itself just before apply: apply need not run nginx -t again
    # (a config the master still refuses is caught from its error log and rolled back).
    proxy = NginxProxy(prefix, listen_address=listen_address, retest_on_apply=False)
    await proxy.start()  # serves the saved files at once, etcd or not
    log.info("nginx on %s serving %d domains (generation %d)", prefix, len(proxy.live_domains()), proxy.generation)
    stop = stop_on_signals(stop)
    store = new_store(etcd, etcd_tls, timeout=etcd_timeout)  # connects lazily: the agent retries while etcd is away
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        agent = SlbAgent(store, proxy, AsyncioRuntime(), config)
        task = asyncio.create_task(agent.run(), name="slb-agent")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopper.cancel()
        with_errors = [t for t in (task,) if t.done() and not t.cancelled() and t.exception()]
        if with_errors:
            raise with_errors[0].exception()
    finally:
        await store.close()
        if stop_nginx:
            await proxy.stop()


@app.command()
def main(
    group: Annotated[str, typer.Option(help="the Nginx group (cluster) this host serves")],
    host: Annotated[str, typer.Option(help="this Nginx host's name, as it reports its status")],
    prefix: Annotated[Path, typer.Option(help="directory of this host's private Nginx (conf, domains, state)")],
    etcd: Annotated[str, typer.Option(envvar="LEENGINE_ETCD", help=ENDPOINT_HELP)] = "127.0.0.1:2379",
    listen_address: Annotated[str, typer.Option(help="address the domains listen on")] = "0.0.0.0",
    debounce: Annotated[float, typer.Option(help="quiet seconds that close a batch of config changes")] = 0.05,
    max_wait: Annotated[float, typer.Option(help="longest a batch waits after its first change")] = 0.5,
    etcd_timeout: Annotated[float, typer.Option(help="deadline of each etcd request, seconds")] = 5.0,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    stop_nginx: Annotated[bool, typer.Option(help="stop Nginx when the agent stops")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Keep this host's Nginx equal to its group's domains in etcd: upstreams in place, other changes reloaded."""
    problems = []
    if not GROUP_NAME.fullmatch(group):
        problems.append(f"group {group!r} is not a group name")
    if not HOST_NAME.fullmatch(host):
        problems.append(f"host {host!r} is not a host name")
    if not (0 <= debounce <= max_wait) or etcd_timeout <= 0:
        problems.append("need 0 <= debounce <= max-wait and etcd-timeout > 0")
    etcd_tls = None
    try:
        etcd_tls = check_etcd_options(etcd, etcd_ca, etcd_cert, etcd_key)
    except EtcdOptionError as exc:
        problems.append(str(exc))
    if problems:
        print(f"leengine-slb-agent: error: {'; '.join(problems)}", file=sys.stderr)
        raise typer.Exit(2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = SlbAgentConfig(group, host, debounce=debounce, max_wait=max_wait)
    asyncio.run(run_agent(config, etcd=etcd, prefix=prefix, listen_address=listen_address,
                          etcd_timeout=etcd_timeout, stop_nginx=stop_nginx, etcd_tls=etcd_tls))


def entry() -> None:
    run_app(app, "leengine-slb-agent")


if __name__ == "__main__":
    entry()
