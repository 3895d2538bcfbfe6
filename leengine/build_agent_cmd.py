"""``leengine-build-agent``: the daemon on every build host (one command to start it).

    leengine-build-agent --host build-1 --etcd 10.0.0.10:2379 --repos /srv/git \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert build-1.crt --etcd-key build-1.key \\
        --workdir /var/lib/leengine/build --registry registry.region:5000 [--storage DIR] [--ttl 10] \\
        [--metrics-address 127.0.0.1:9103]

It wires the real adapters (etcd Store, ``BuildahBuilder``: git + buildah + the
registry, asyncio Runtime) to the agent logic (``node/build_agent.py``): register
under a lease, build the tasks the control service queues for this host, write
results. Run as root (buildah's chroot isolation; build scripts themselves run as
nobody without capabilities). SIGTERM stops it: a build in progress is stopped (its
processes killed, its containers and checkout removed) and its task is built again by
this host when it comes back, or by the next host of the repo once the lease has
expired. Start-up, signals, retries and exit codes are every daemon's
(``leengine/command.py``, ``leengine/daemon.py``): bad options are one line on stderr and exit status 2.
It only wires: what a build is lives in the adapter, what to build in the agent.
``--metrics-address HOST:PORT`` (off by default) serves Prometheus metrics on
``http://HOST:PORT/metrics``: step durations, cache hits, results written, etcd errors
(``leengine/metrics_option.py``; a port that cannot be bound stops the agent at start in one line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Annotated

import typer

from foundation.logic.build_task import HOST_NAME
from foundation.ports.builder import Builder
from foundation.ports.metrics import (
    BUILD_CACHE_HITS,
    BUILD_RESULTS,
    BUILD_STEP_SECONDS,
    ETCD_ERRORS,
    NO_METRICS,
    MetricDef,
    Metrics,
)
from leengine.command import BadInput, LogLevelOpt, configure_logging, run_app
from leengine.daemon import agent_runtime, connect_until_stopped, fail_on_task_failures, run_daemon, until_stopped
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
from node.build_agent import COMPONENT, BuildAgent, BuildAgentConfig

ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}")  # host:port, never an option
STOP_GRACE = 30.0  # seconds a stopped build has to kill its processes and remove its containers
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.build_agent")
# The families a scrape lists from the start (labelled ones get their series with the first event).
FAMILIES: tuple[MetricDef, ...] = (BUILD_STEP_SECONDS, BUILD_CACHE_HITS, BUILD_RESULTS, ETCD_ERRORS)


async def run_agent(config: BuildAgentConfig, builder: Builder, *, etcd: EtcdSettings, stop: asyncio.Event,
                    metrics: Metrics = NO_METRICS) -> None:
    store = etcd.store()
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        runtime = agent_runtime(stop)
        agent = BuildAgent(store, builder, runtime, config, metrics=metrics)
        log.info("build agent %s registered at %s", config.host, etcd.endpoint)
        await until_stopped(agent.run(), stop, name="build-agent", grace=STOP_GRACE)
        fail_on_task_failures(runtime)
    finally:
        await store.close()


@app.command()
def main(
    host: Annotated[str, typer.Option(help="this build host's name, as it registers in etcd")],
    repos: Annotated[Path, typer.Option(help="directory of the repositories to clone ({repos}/{repo})")],
    workdir: Annotated[Path, typer.Option(help="checkouts and dependency caches")],
    registry: Annotated[str, typer.Option(help="registry host:port the images are pushed to")],
    etcd: EtcdOpt = DEFAULT_ETCD,
    storage: Annotated[Path | None, typer.Option(help="the buildah store (vfs); default: WORKDIR/storage")] = None,
    ttl: Annotated[int, typer.Option(help="lease seconds: silence after which this host's tasks move")] = 10,
    tls_verify: Annotated[bool, typer.Option(help="verify the registry's TLS (off for a loopback lab)")] = False,
    etcd_timeout: EtcdTimeoutOpt = DEFAULT_TIMEOUT,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    metrics_address: MetricsAddressOpt = "",
    log_level: LogLevelOpt = "info",
) -> None:
    """Build what the control service queues for this host, one task at a time."""
    from foundation.adapters.buildah_builder import BUSYBOX, BuildahBuilder, BuildahConfig

    problems = []
    if not HOST_NAME.fullmatch(host):
        problems.append(f"host {host!r} is not a host name")
    if not repos.is_dir():
        problems.append(f"repos {str(repos)!r} is not a directory")
    if ttl < 2:
        problems.append("need ttl >= 2")
    for name, value in (("registry", registry), ("etcd", etcd.removeprefix("https://"))):
        if not ENDPOINT.fullmatch(value):
            problems.append(f"{name} {value!r} is not host:port")
    settings = None
    try:
        settings = EtcdSettings.from_options(etcd, etcd_timeout, etcd_ca, etcd_cert, etcd_key)
    except BadInput as exc:
        problems.append(exc.message)
    for tool in ("git", "buildah", "unshare"):  # unshare: util-linux, the compile step's PID namespace
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    if os.geteuid() != 0:
        problems.append("buildah's chroot isolation needs root")
    if problems or settings is None:
        raise BadInput("; ".join(problems))
    configure_logging(log_level)
    builder = BuildahBuilder(BuildahConfig(host, repos.resolve(), workdir.resolve(), registry,
                                           storage=storage.resolve() if storage else None, tls_verify=tls_verify))
    with metrics_served(metrics_address, FAMILIES) as metrics:  # bound now: a bad address stops us before etcd
        record_daemon_info(metrics, "leengine-build-agent")
        metrics.inc(ETCD_ERRORS, 0.0, component=COMPONENT)  # the series exists at 0: increase() sees the first error
        for result in ("done", "failed"):
            metrics.inc(BUILD_RESULTS, 0.0, result=result)
        run_daemon(lambda stop: run_agent(BuildAgentConfig(host, ttl=ttl), builder, etcd=settings, stop=stop,
                                          metrics=metrics))


def entry() -> None:
    run_app(app, "leengine-build-agent")


if __name__ == "__main__":
    entry()
