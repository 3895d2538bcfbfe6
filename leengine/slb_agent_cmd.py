"""``leengine-slb-agent``: the daemon on every Nginx host (one command to start it).

    leengine-slb-agent --group public --host nginx-1 --etcd 10.0.0.10:2379 \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert nginx-1.crt --etcd-key nginx-1.key \\
        --prefix /var/lib/leengine/nginx [--listen-address 0.0.0.0] \\
        [--debounce 0.05] [--max-wait 0.5] [--traffic-every 5] [--metrics-address 127.0.0.1:9102]

It wires the real adapters (etcd Store, a private Nginx under ``--prefix`` with the
lua module, asyncio Runtime) to the agent logic (``node/slb_agent.py``). Nginx is
started in its own session and outlives the agent: a killed agent leaves Nginx
serving; a restarted one adopts the running Nginx, serves from the saved state at
once and resumes its watch from the saved revision. SIGTERM stops the agent and
leaves Nginx running unless ``--stop-nginx`` is given. The Nginx admin endpoint is the
unix socket ``PREFIX/admin/admin.sock`` (directory mode 700), never a TCP port.
Start-up, signals, retries and exit codes are every daemon's (``leengine/command.py``,
``leengine/daemon.py``): bad options are one line on stderr and exit status 2.
``--metrics-address HOST:PORT`` (off by default) serves Prometheus metrics on
``http://HOST:PORT/metrics``: in-place upstream updates, reloads by result and their
duration, the last reload's success and time, domains set aside, the agent's share of
propagation, etcd errors (``leengine/metrics_option.py``; a port that cannot be bound stops
the agent at start in one line). ``--traffic-every S`` (default 5, 0: off): every S seconds the
host's requests per app version go to etcd (``/slb/{group}/traffic/{host}``, under the host's
lease), where the platform's gray releases compare a new version with the old one.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from foundation.logic.slb_domain import GROUP_NAME, HOST_NAME
from foundation.ports.metrics import (
    ETCD_ERRORS,
    NO_METRICS,
    SLB_DOMAINS_SET_ASIDE,
    SLB_LAST_RELOAD_SUCCESSFUL,
    SLB_LAST_RELOAD_TIMESTAMP,
    SLB_PROPAGATION_SECONDS,
    SLB_RELOAD_SECONDS,
    SLB_RELOADS,
    SLB_REQUEST_SECONDS,
    SLB_REQUESTS,
    SLB_UPSTREAM_UPDATES,
    MetricDef,
    Metrics,
)
from leengine.command import BadInput, LogLevelOpt, configure_logging, run_app
from leengine.daemon import (
    agent_runtime,
    connect_until_stopped,
    fail_on_task_failures,
    run_daemon,
    stop_on_signals,
    until_stopped,
)
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
from node.slb_agent import COMPONENT, SlbAgent, SlbAgentConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.slb_agent")
# The families a scrape lists from the start (labelled ones get their series with the first event).
FAMILIES: tuple[MetricDef, ...] = (SLB_UPSTREAM_UPDATES, SLB_RELOADS, SLB_RELOAD_SECONDS, SLB_LAST_RELOAD_SUCCESSFUL,
                                   SLB_LAST_RELOAD_TIMESTAMP, SLB_DOMAINS_SET_ASIDE, SLB_PROPAGATION_SECONDS,
                                   ETCD_ERRORS, SLB_REQUESTS, SLB_REQUEST_SECONDS)
REQUEST_METRICS_EVERY = 5.0  # seconds between copies of Nginx's request counts (per domain and version) to /metrics


async def run_agent(config: SlbAgentConfig, *, etcd: EtcdSettings, prefix: Path, listen_address: str,
                    stop_nginx: bool, stop: asyncio.Event | None = None, metrics: Metrics = NO_METRICS) -> None:
    from foundation.adapters.nginx_proxy import NginxProxy

    # The agent tests every batch itself just before apply: apply need not run nginx -t again
    # (a config the master still refuses is caught from its error log and rolled back).
    proxy = NginxProxy(prefix, listen_address=listen_address, retest_on_apply=False)
    await proxy.start()  # serves the saved files at once, etcd or not
    log.info("nginx on %s serving %d domains (generation %d)", prefix, len(proxy.live_domains()), proxy.generation)
    stop = stop or stop_on_signals()
    store = etcd.store()  # connects lazily: the agent retries while etcd is away
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        runtime = agent_runtime(stop)
        agent = SlbAgent(store, proxy, runtime, config, metrics=metrics)
        await until_stopped(agent.run(), stop, name="slb-agent")
        fail_on_task_failures(runtime)
    finally:
        await store.close()
        if stop_nginx:
            await proxy.stop()


@app.command()
def main(
    group: Annotated[str, typer.Option(help="the Nginx group (cluster) this host serves")],
    host: Annotated[str, typer.Option(help="this Nginx host's name, as it reports its status")],
    prefix: Annotated[Path, typer.Option(help="directory of this host's private Nginx (conf, domains, state)")],
    etcd: EtcdOpt = DEFAULT_ETCD,
    listen_address: Annotated[str, typer.Option(help="address the domains listen on")] = "0.0.0.0",
    debounce: Annotated[float, typer.Option(help="quiet seconds that close a batch of config changes")] = 0.05,
    max_wait: Annotated[float, typer.Option(help="longest a batch waits after its first change")] = 0.5,
    traffic_every: Annotated[float, typer.Option(
        help="seconds between writes of this host's requests per app version to etcd (0: never)")] = 5.0,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    stop_nginx: Annotated[bool, typer.Option(help="stop Nginx when the agent stops")] = False,
    metrics_address: MetricsAddressOpt = "",
    log_level: LogLevelOpt = "info",
) -> None:
    """Keep this host's Nginx equal to its group's domains in etcd: upstreams in place, other changes reloaded."""
    problems = []
    if not GROUP_NAME.fullmatch(group):
        problems.append(f"group {group!r} is not a group name")
    if not HOST_NAME.fullmatch(host):
        problems.append(f"host {host!r} is not a host name")
    if not 0 <= debounce <= max_wait:
        problems.append("need 0 <= debounce <= max-wait")
    if not 0 <= traffic_every <= 3600:  # NaN fails too
        problems.append("need 0 <= traffic-every <= 3600 (seconds; 0: off)")
    settings = None
    try:
        settings = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    except BadInput as exc:
        problems.append(exc.message)
    if problems or settings is None:
        raise BadInput("; ".join(problems))
    configure_logging(log_level)
    config = SlbAgentConfig(group, host, debounce=debounce, max_wait=max_wait, traffic_every=traffic_every,
                            request_metrics_every=REQUEST_METRICS_EVERY if metrics_address else 0.0)
    with metrics_served(metrics_address, FAMILIES) as metrics:  # bound now: a bad address stops us before nginx
        record_daemon_info(metrics, "leengine-slb-agent")
        metrics.inc(ETCD_ERRORS, 0.0, component=COMPONENT)  # the series exists at 0: increase() sees the first error
        metrics.set(SLB_DOMAINS_SET_ASIDE, 0.0, group=group, host=host)
        run_daemon(lambda stop: run_agent(config, etcd=settings, prefix=prefix, listen_address=listen_address,
                                          stop_nginx=stop_nginx, stop=stop, metrics=metrics))


def entry() -> None:
    run_app(app, "leengine-slb-agent")


if __name__ == "__main__":
    entry()
