"""``leengine-discovery``: run discovery against real Cells (one command to start it).

    leengine-discovery --etcd 10.0.0.10:2379 --config discovery.yaml \\
        --etcd-ca /etc/leengine/etcd-ca.crt --etcd-cert discovery.crt --etcd-key discovery.key

``discovery.yaml``::

    cells:                       # one Kubernetes API per Cell: a URL (lab, mock) or a kubeconfig
      cell-a: {api: "http://10.0.1.10:8080"}
      cell-b: {kubeconfig: /etc/leengine/cell-b.kubeconfig}
    bindings:                    # app (namespace) + Service -> the domain that serves it
      - {namespace: shop, service: shop, port: 8080, group: public, domain: shop.example.com}
    resync_seconds: 5            # optional: how often failed pushes are retried

It wires the real adapters (the ``kubernetes`` client per Cell, etcd through slb-core's
logic, asyncio) to ``control/discovery.py``. Every field is validated before anything
starts; a bad file is one line on stderr naming the field, and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from control.discovery import Binding, Discovery
from foundation.logic.slb_domain import GROUP_NAME, DomainError, check_domain_name
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

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("leengine.discovery")
NAME = GROUP_NAME  # namespaces, services and cells: DNS labels


class ConfigError(ValueError):
    pass


def load_config(path: Path) -> tuple[dict[str, dict[str, str]], list[Binding], float]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"cells", "bindings", "resync_seconds"}:
        raise ConfigError(f"{path}: expected the keys cells, bindings (and optionally resync_seconds)")
    cells = data.get("cells")
    if not isinstance(cells, dict) or not cells:
        raise ConfigError(f"{path}: cells: a mapping of at least one Cell")
    for name, spec in cells.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{path}: cells: {name!r} is not a Cell name")
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"api", "kubeconfig"} & set(spec)) \
                or not isinstance(next(iter(spec.values())), str):
            raise ConfigError(f"{path}: cells.{name}: give exactly one of api (URL) or kubeconfig (path)")
    bindings = []
    for i, item in enumerate(data.get("bindings") or []):
        where = f"{path}: bindings[{i}]"
        if not isinstance(item, dict) or set(item) != {"namespace", "service", "port", "group", "domain"}:
            raise ConfigError(f"{where}: needs exactly namespace, service, port, group, domain")
        for key in ("namespace", "service", "group"):
            if not isinstance(item[key], str) or not NAME.fullmatch(item[key]):
                raise ConfigError(f"{where}.{key}: {item[key]!r} is not a name")
        port = item["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}.port: {port!r} is not a port")
        try:
            check_domain_name(item["domain"])
        except DomainError as exc:
            raise ConfigError(f"{where}.domain: {exc}") from None
        bindings.append(Binding(item["namespace"], item["service"], port, item["group"], item["domain"]))
    resync = data.get("resync_seconds", 5)
    if isinstance(resync, bool) or not isinstance(resync, int | float) or resync <= 0:
        raise ConfigError(f"{path}: resync_seconds: {resync!r} is not a positive number")
    return cells, bindings, float(resync)


async def run_discovery(etcd: str, cells: dict[str, dict[str, str]], bindings: list[Binding], resync: float,
                        timeout: float, etcd_tls: EtcdClientTls | None = None) -> None:
    from control.slb_core import SlbCore
    from foundation.adapters.asyncio_runtime import AsyncioRuntime
    from foundation.adapters.k8s_cluster import KubeCluster

    clusters: dict[str, Any] = {
        name: KubeCluster(host=spec["api"], timeout=timeout) if "api" in spec
        else KubeCluster(kubeconfig=spec["kubeconfig"], timeout=timeout)
        for name, spec in cells.items()
    }
    store = await open_store(etcd, etcd_tls, timeout=timeout)
    runtime = AsyncioRuntime()
    discovery = Discovery(clusters, SlbCore(store, runtime), runtime, bindings, resync=resync)
    log.info("discovery: %d Cells, %d bindings", len(clusters), len(bindings))
    try:
        await discovery.run()
    finally:
        await store.close()


@app.command()
def main(
    config: Annotated[Path, typer.Option(help="YAML file: cells and bindings")],
    etcd: Annotated[str, typer.Option(envvar="LEENGINE_ETCD", help=ENDPOINT_HELP)] = "127.0.0.1:2379",
    timeout: Annotated[float, typer.Option(help="deadline of each etcd / API request, seconds")] = 5.0,
    etcd_ca: EtcdCaOpt = None,
    etcd_cert: EtcdCertOpt = None,
    etcd_key: EtcdKeyOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Feed the ready pods of every app, in every Cell, to its domains' upstreams."""
    try:
        cells, bindings, resync = load_config(config)
        etcd_tls = check_etcd_options(etcd, etcd_ca, etcd_cert, etcd_key)
    except (ConfigError, EtcdOptionError) as exc:
        print(f"leengine-discovery: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(run_discovery(etcd, cells, bindings, resync, timeout, etcd_tls=etcd_tls))
    except KeyboardInterrupt:
        return
    except (StoreError, ValueError, OSError) as exc:  # etcd unreachable, a bad kubeconfig
        print(f"leengine-discovery: error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


def entry() -> None:
    run_app(app, "leengine-discovery")


if __name__ == "__main__":
    entry()
