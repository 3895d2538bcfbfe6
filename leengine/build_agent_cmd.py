"""``leengine-build-agent``: the daemon on every build host (one command to start it).

    leengine-build-agent --host build-1 --etcd 10.0.0.10:2379 --repos /srv/git \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert build-1.crt --etcd-key build-1.key \\
        --workdir /var/lib/leengine/build --registry registry.region:5000 [--storage DIR] [--ttl 10]

It wires the real adapters (etcd Store, ``BuildahBuilder``: git + buildah + the
registry, asyncio Runtime) to the agent logic (``node/build_agent.py``): register
under a lease, build the tasks the control service queues for this host, write
results. Run as root (buildah's chroot isolation; build scripts themselves run as
nobody without capabilities). SIGTERM stops it: a build in progress is stopped (its
processes killed, its containers and checkout removed) and its task is built again by
this host when it comes back, or by the next host of the repo once the lease has
expired. Bad options are one line on stderr and exit status 2.
It only wires: what a build is lives in the adapter, what to build in the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from foundation.logic.build_task import HOST_NAME
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
from node.build_agent import BuildAgent, BuildAgentConfig

ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}")  # host:port, never an option
LOG_LEVELS = ("debug", "info", "warning", "error")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.build_agent")


async def run_agent(config: BuildAgentConfig, builder: object, *, etcd: str, etcd_timeout: float,
                    etcd_tls: EtcdClientTls | None = None) -> None:
    from foundation.adapters.asyncio_runtime import AsyncioRuntime

    stop = stop_on_signals()
    store = new_store(etcd, etcd_tls, timeout=etcd_timeout)
    try:
        if not await connect_until_stopped(store, stop, log):
            return
        agent = BuildAgent(store, builder, AsyncioRuntime(), config)  # type: ignore[arg-type]
        task = asyncio.create_task(agent.run(), name="build-agent")
        stopper = asyncio.create_task(stop.wait())
        log.info("build agent %s registered at %s", config.host, etcd)
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 30)  # let the build kill its processes and remove its containers
    finally:
        await store.close()


@app.command()
def main(
    host: Annotated[str, typer.Option(help="this build host's name, as it registers in etcd")],
    repos: Annotated[Path, typer.Option(help="directory of the repositories to clone ({repos}/{repo})")],
    workdir: Annotated[Path, typer.Option(help="checkouts and dependency caches")],
    registry: Annotated[str, typer.Option(help="registry host:port the images are pushed to")],
    etcd: Annotated[str, typer.Option(envvar="LEENGINE_ETCD", help=ENDPOINT_HELP)] = "127.0.0.1:2379",
    storage: Annotated[Path | None, typer.Option(help="the buildah store (vfs); default: WORKDIR/storage")] = None,
    ttl: Annotated[int, typer.Option(help="lease seconds: silence after which this host's tasks move")] = 10,
    tls_verify: Annotated[bool, typer.Option(help="verify the registry's TLS (off for a loopback lab)")] = False,
    etcd_timeout: Annotated[float, typer.Option(help="deadline of each etcd request, seconds")] = 5.0,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Build what the control service queues for this host, one task at a time."""
    from foundation.adapters.buildah_builder import BUSYBOX, BuildahBuilder, BuildahConfig

    problems = []
    if not HOST_NAME.fullmatch(host):
        problems.append(f"host {host!r} is not a host name")
    if not repos.is_dir():
        problems.append(f"repos {str(repos)!r} is not a directory")
    if ttl < 2 or not (math.isfinite(etcd_timeout) and etcd_timeout > 0):
        problems.append("need ttl >= 2 and a finite etcd-timeout > 0")
    for name, value in (("registry", registry), ("etcd", etcd.removeprefix("https://"))):
        if not ENDPOINT.fullmatch(value):
            problems.append(f"{name} {value!r} is not host:port")
    etcd_tls = None
    try:
        etcd_tls = check_etcd_options(etcd, etcd_ca, etcd_cert, etcd_key)
    except EtcdOptionError as exc:
        problems.append(str(exc))
    if log_level.lower() not in LOG_LEVELS:
        problems.append(f"log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    for tool in ("git", "buildah", "unshare"):  # unshare: util-linux, the compile step's PID namespace
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    if os.geteuid() != 0:
        problems.append("buildah's chroot isolation needs root")
    if problems:
        print(f"leengine-build-agent: error: {'; '.join(problems)}", file=sys.stderr)
        raise typer.Exit(2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    builder = BuildahBuilder(BuildahConfig(host, repos.resolve(), workdir.resolve(), registry,
                                           storage=storage.resolve() if storage else None, tls_verify=tls_verify))
    asyncio.run(run_agent(BuildAgentConfig(host, ttl=ttl), builder, etcd=etcd, etcd_timeout=etcd_timeout,
                          etcd_tls=etcd_tls))


def entry() -> None:
    run_app(app, "leengine-build-agent")


if __name__ == "__main__":
    entry()
