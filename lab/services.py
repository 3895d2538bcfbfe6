"""The lab's services: every process of a one-machine Region, brought up in order, watched, stopped.

``start_services(lab)`` runs, each through its role script (``lab/roles/*.sh``, started by
``lab/supervisor.py`` inside its host's netns, tagged ``LEENGINE_LAB=<id>``):

1. TLS material in ``DIR/certs`` (one CA; the server certificate carries the links address,
   the members' and the control host's addresses as IP SANs), the registry tokens' signing key and its
   certificate (``leengine registry-key DIR/certs/registry``, once) and bearer tokens in ``DIR/tokens``;
2. the links process (root netns): every etcd client's path to the members (``lab/links.py``);
3. the 3 etcd members, waited for until all three are members and one leads;
4. ``leengine-control`` (``--cells DIR/cells.yaml``: the platform's apps in every Cell's API; ``--http-address``
   on the control host's management address, HTTPS with the lab's server certificate, serving the registry's
   ``/token`` with the key step 1 made with ``leengine registry-key DIR/certs/registry``), then
   the pools registered (``cnictl pool add``) and the SLB groups created (``CreateGroup`` as the lab's admin);
5. one Kubernetes API per Cell, then discovery (one ``cells`` entry per Cell, one binding per
   app of the spec, as the sim binds them);
6. the Nginx hosts' SLB agents (each starts its private Nginx), the registry (``docker-registry`` on the
   registry host's loopback with token auth: realm = the control service's ``/token``) and
   ``leengine registry-gate`` in front of it on the registry host's address (what every client calls), the
   build agents (they push through the gate as ``build$TASK``, docs/registry.md);
7. ``leengine install-cni`` into ``DIR/cni/bin`` and, per node, a network configuration, the
   CNI agent (root netns, on the node's bridge) and the lab container runtime;
8. the lab's Kubernetes controllers (``python -m lab.controller``, root netns): the domains, the
   apps' pods on the nodes, kept and healed.

Each phase starts its processes together and then waits for every one of them to be ready
(health, a socket that answers), bounded; a process that dies or does not get ready is a
``ServiceError`` naming it, with the tail of its log.

Every etcd client talks to etcd through the links process only: its ``--etcd`` is one of its
own listeners (the one of member ``k mod 3`` for the k-th client, so load spreads); the
listener fails over to the other members when that one is stopped.

The fault driver's primitives (slice D) are here too: ``kill``, ``start`` (again, with the
same launch, waited for), ``set_links``, ``stop_member``/``start_member``.

``lab`` is any object with ``plan`` (``lab.plan.LabPlan``) and, for the apps' bindings,
``spec`` (``sim.spec.RegionSpec``; without it discovery gets no binding).

It must not know how the fabric is made (lab/fabric.py) or what a run does with the services.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.certs import CertBundle, make_certs
from lab.plan import (
    API_PORT,
    CONTROL_HOST,
    ETCD_CLIENT_PORT,
    NGINX_PORT,
    REGISTRY_HOST,
    REGISTRY_UPSTREAM,
    LabPlan,
)
from lab.processes import is_running
from lab.record import LabRecord, ProcessEntry, read_pidfile, stop_pids
from lab.supervisor import Launch, Supervisor, SupervisorError

READY_TIMEOUT = 30.0  # seconds for one process to answer after it started
ETCD_TIMEOUT = 45.0  # the cluster: 3 members electing a leader
ADMIN_TOKEN_NAME = "lab-admin"
DISCOVERY_TOKEN_NAME = "discovery"
NODE_COOLDOWN = 30.0
# The registry tokens' aud and iss: leengine-control's defaults (--registry-service/--registry-issuer), written
# into the registry's auth.token section (the four values must match, docs/registry.md).
REGISTRY_SERVICE = "leengine-registry"
REGISTRY_ISSUER = "leengine-control"


class ServiceError(RuntimeError):
    """A lab service did not start or does not answer; the message names it (and its log's tail)."""


# --------------------------------------------------------------------------- files of the lab directory


@dataclass(frozen=True)
class LabFiles:
    """Paths under the lab directory that the services share."""

    dir: Path

    @property
    def certs_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def certs(self) -> CertBundle:
        d = self.certs_dir
        return CertBundle(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "client.crt",
                          d / "client.key")

    @property
    def tokens_file(self) -> Path:
        return self.dir / "tokens" / "tokens"

    @property
    def admin_token_file(self) -> Path:
        return self.dir / "tokens" / "admin.token"

    @property
    def discovery_token_file(self) -> Path:
        return self.dir / "tokens" / "discovery.token"

    @property
    def links_config(self) -> Path:
        return self.dir / "links.json"

    @property
    def cells_config(self) -> Path:
        return self.dir / "cells.yaml"

    @property
    def extra_bindings(self) -> Path:
        """Bindings added to a live lab by ``leengine lab bind`` (apps not in its scenario)."""
        return self.dir / "bindings.json"

    @property
    def discovery_config(self) -> Path:
        return self.dir / "discovery.yaml"

    @property
    def cni_bin(self) -> Path:
        return self.dir / "cni" / "bin"

    def cni_conf(self, node: str) -> Path:
        return self.dir / "cni" / "net.d" / f"{node}.conf"

    def cni_socket(self, node: str) -> Path:
        return self.dir / "run" / f"cni-{node}.sock"

    def runtime_socket(self, node: str) -> Path:
        return self.dir / "run" / f"{node}.sock"

    def nginx_prefix(self, host: str) -> Path:
        return self.dir / "nginx" / host

    def etcd_data(self, member: str) -> Path:
        return self.dir / "etcd" / member

    @property
    def repos(self) -> Path:
        return self.dir / "repos"

    @property
    def registry_key_dir(self) -> Path:
        """``leengine registry-key``'s directory: token.key (the control service's only) and token.crt."""
        return self.certs_dir / "registry"

    @property
    def registry_root(self) -> Path:
        return self.dir / "registry"


def files(lab: Any) -> LabFiles:
    return LabFiles(Path(lab.plan.dir))


def _supervisor(lab: Any) -> Supervisor:
    return Supervisor(Path(lab.plan.dir), lab.plan.id)


def admin_token(lab: Any) -> str:
    """The lab admin's bearer token (the run driver creates domains with it)."""
    return files(lab).admin_token_file.read_text().strip()


# --------------------------------------------------------------------------- etcd clients and links


def etcd_clients(plan: LabPlan) -> list[str]:
    """Every links client, in the plan's order."""
    return list(dict.fromkeys(link.client for link in plan.ports.links))


def etcd_endpoint(plan: LabPlan, client: str) -> str:
    """The one ``--etcd`` of ``client``: its listener of member ``k mod members`` (k: the client's index)."""
    links = plan.ports.links_of(client)
    if not links:
        raise ServiceError(f"no etcd links for client {client!r} in the plan")
    k = etcd_clients(plan).index(client)
    link = links[k % len(links)]
    return f"{link.listen_address}:{link.listen_port}"


def links_config(plan: LabPlan) -> dict[str, Any]:
    """The links process's listeners: each forwards to its member first, then to the others in order."""
    members = {m: (plan.hosts[m].mgmt_ip, ETCD_CLIENT_PORT) for m in plan.etcd_members}
    order = list(members)
    listeners = []
    for link in plan.ports.links:
        i = order.index(link.member)
        targets = [members[m] for m in order[i:] + order[:i]]
        listeners.append({"client": link.client, "member": link.member,
                          "listen": f"{link.listen_address}:{link.listen_port}",
                          "targets": [f"{ip}:{port}" for ip, port in targets]})
    return {"listeners": listeners}


def _etcd_env(lab: Any, client: str) -> dict[str, str]:
    certs = files(lab).certs
    return {"LEENGINE_ETCD": etcd_endpoint(lab.plan, client), "LEENGINE_ETCD_CA": str(certs.ca_cert),
            "LEENGINE_ETCD_CERT": str(certs.client_cert), "LEENGINE_ETCD_KEY": str(certs.client_key)}


def lab_environment(lab: Any) -> dict[str, str]:
    """The variables that point the commands at this lab: etcd (as the ``cnictl`` client, through its links)
    and the control service as the lab admin (``leengine lab env`` prints them as exports)."""
    f = files(lab)
    return {**_etcd_env(lab, "cnictl"), "LEENGINE_CONTROL": lab.plan.control_address,
            "LEENGINE_TOKEN_FILE": str(f.admin_token_file), "LEENGINE_CONTROL_CA": str(f.certs.ca_cert)}


def etcd_client_args(lab: Any, client: str) -> list[str]:
    """``--etcd ... --etcd-ca ... --etcd-cert ... --etcd-key ...`` of ``client`` (cnictl, the run driver)."""
    env = _etcd_env(lab, client)
    return ["--etcd", env["LEENGINE_ETCD"], "--etcd-ca", env["LEENGINE_ETCD_CA"], "--etcd-cert",
            env["LEENGINE_ETCD_CERT"], "--etcd-key", env["LEENGINE_ETCD_KEY"]]


def links_request(lab: Any, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """One request to the links process's control socket, its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(lab.plan.links_socket))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ServiceError(f"links answered {data[:200]!r}")
    return answer


def set_links(lab: Any, clients: Iterable[str], state: str, seconds: float = 0.0) -> None:
    """Set the etcd links of ``clients`` (links client names) to pass / delay(seconds, each way) / cut."""
    request: dict[str, Any] = {"op": "set", "clients": list(clients), "state": state}
    if state == "delay":
        request["seconds"] = seconds
    answer = links_request(lab, request)
    if not answer.get("ok"):
        raise ServiceError(f"links refused {state} for {', '.join(request['clients'])[:200]}: {answer.get('error')}")


# --------------------------------------------------------------------------- probes


def _tls_context(lab: Any) -> ssl.SSLContext:
    certs = files(lab).certs
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _etcd_call(lab: Any, member: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"https://{lab.plan.hosts[member].mgmt_ip}:{ETCD_CLIENT_PORT}{path}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=2.0,
                                context=_tls_context(lab)) as resp:
        answer = json.loads(resp.read(1 << 20))
    return answer if isinstance(answer, dict) else {}


def etcd_health(lab: Any) -> dict[str, Any]:
    """Per member: healthy?, the members it lists, the leader it knows (errors as strings)."""
    out: dict[str, Any] = {}
    for member in lab.plan.etcd_members:
        try:
            health = _etcd_call(lab, member, "/health").get("health") == "true"
            members = _etcd_call(lab, member, "/v3/cluster/member/list", {}).get("members", [])
            status = _etcd_call(lab, member, "/v3/maintenance/status", {})
            out[member] = {"healthy": health, "members": sorted(m.get("name", "") for m in members),
                           "leader": status.get("leader"), "id": status.get("header", {}).get("member_id")}
        except (OSError, ValueError, urllib.error.URLError) as exc:
            out[member] = {"healthy": False, "error": str(exc)[:200]}
    return out


def _etcd_member_ready(lab: Any, member: str) -> bool:
    try:
        return _etcd_call(lab, member, "/health").get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _cluster_ready(lab: Any) -> bool:
    health = etcd_health(lab)
    leaders = {h.get("leader") for h in health.values() if h.get("healthy")}
    return (all(h.get("healthy") for h in health.values()) and len(leaders) == 1
            and all(len(h.get("members", [])) == len(lab.plan.etcd_members) for h in health.values()))


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(1 << 16)
            return bool(200 <= resp.status < 300)
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _unix_answers(path: Path, request: bytes | None = None) -> bool:
    """The unix socket accepts (and, with ``request``, answers one line)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            if request is None:
                return True
            sock.sendall(request)
            return sock.recv(65536).endswith(b"\n")
    except OSError:
        return False


def _control_ready(lab: Any) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=files(lab).certs.ca_cert.read_bytes())
    with grpc.secure_channel(lab.plan.control_address, credentials) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _launch_env(lab: Any, name: str) -> dict[str, str]:
    """The environment ``name`` was (last) started with: what this lab runs, even if made by an older checkout."""
    try:
        return dict(_supervisor(lab).launch(name).env)
    except (SupervisorError, OSError, ValueError):
        return {}


def _control_http_ready(lab: Any) -> bool:
    """The control service's HTTPS listener answers (when it was started with one): GET /token without
    credentials is an anonymous token request, 200 (or 400 when the service name is not its own)."""
    address = _launch_env(lab, "control").get("HTTP_ADDRESS")
    if not address:
        return True
    context = ssl.create_default_context(cafile=str(files(lab).certs.ca_cert))
    try:
        with urllib.request.urlopen(f"https://{address}/token?service={REGISTRY_SERVICE}", timeout=1.0,
                                    context=context) as resp:
            resp.read(1 << 16)
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def registry_challenge(lab: Any, timeout: float = 1.0) -> str | None:
    """The registry's answer to an anonymous ``GET /v2/`` through the gate: its ``WWW-Authenticate`` challenge
    (``Bearer realm=...``) when it runs with token auth, "" when it lets anyone in (200), None when it does
    not answer either way (the gate or the registry behind it down: the gate answers 503)."""
    try:
        with urllib.request.urlopen(f"http://{lab.plan.registry_address}/v2/", timeout=timeout) as resp:
            resp.read(1 << 16)
            return ""
    except urllib.error.HTTPError as exc:
        challenge = exc.headers.get("WWW-Authenticate", "")
        return challenge if exc.code == 401 and challenge.startswith("Bearer ") else None
    except (OSError, ValueError):
        return None


def _nginx_serving(lab: Any, host: str) -> int | None:
    from lab.slb import served_generation

    return served_generation(files(lab).nginx_prefix(host) / "admin" / "admin.sock")


def _metrics_url(lab: Any, process: str) -> str | None:
    endpoint = lab.plan.ports.metrics.get(process)
    return endpoint.url if endpoint is not None else None


def _metrics_listen(lab: Any, process: str) -> str:
    endpoint = lab.plan.ports.metrics.get(process)
    return endpoint.listen if endpoint is not None else ""


def probe(lab: Any, name: str) -> Callable[[], bool]:
    """The readiness check of process ``name`` (as ``start_services`` names them)."""
    plan: LabPlan = lab.plan
    f = files(lab)
    if name == "links":
        return lambda: bool(links_request(lab, {"op": "status"}, timeout=1.0).get("ok"))
    if name in plan.etcd_members:
        return lambda: _etcd_member_ready(lab, name)
    if name == "control":
        return lambda: _control_ready(lab) and _control_http_ready(lab)
    if name == "discovery" or name.startswith("build-agent-"):
        url = _metrics_url(lab, name)
        return (lambda: _http_ok(url)) if url else (lambda: True)
    if name.startswith("api-"):
        cell = plan.hosts[name].cell
        return lambda: _http_ok(f"{plan.cells[str(cell)].api_url}/api/v1/nodes")
    if name.startswith("slb-"):
        return lambda: _nginx_serving(lab, name.removeprefix("slb-")) is not None
    if name == "registry":  # its own listener is on the registry host's loopback: its debug server says it runs
        debug = _metrics_url(lab, name)
        return (lambda: _http_ok(debug)) if debug else (lambda: True)
    if name == "registry-gate":
        return lambda: registry_challenge(lab) is not None
    if name.startswith("cni-"):
        return lambda: _unix_answers(f.cni_socket(name.removeprefix("cni-")))
    if name.startswith("runtime-"):
        return lambda: _unix_answers(f.runtime_socket(name.removeprefix("runtime-")), b'{"op":"list"}\n')
    if name == "kube-controller":  # no socket of its own: alive (the supervisor's wait checks that) is ready
        return lambda: True
    raise ServiceError(f"no lab process is named {name!r}")


# --------------------------------------------------------------------------- launches


def _launches(lab: Any) -> list[list[Launch]]:
    """The phases of launches, in start order (what ``start_services`` starts)."""
    plan: LabPlan = lab.plan
    f = files(lab)
    certs = f.certs
    tls = {"TLS_CA": str(certs.ca_cert), "TLS_CERT": str(certs.server_cert), "TLS_KEY": str(certs.server_key)}
    phases: list[list[Launch]] = []
    phases.append([Launch("links", "links", {"LINKS_CONFIG": str(f.links_config),
                                             "LINKS_CONTROL": str(plan.links_socket)})])
    phases.append([Launch(m, "etcd-member", {
        "MEMBER_NAME": m, "MEMBER_IP": plan.hosts[m].mgmt_ip, "DATA_DIR": str(f.etcd_data(m)),
        "INITIAL_CLUSTER": plan.etcd_initial_cluster(), "CLUSTER_STATE": "new", "CLUSTER_TOKEN": f"lab-{plan.id}",
        "FAST_RAFT": "1", "METRICS_ADDRESS": _metrics_listen(lab, m), **tls},
        netns=plan.netns(m), host=m) for m in plan.etcd_members])
    phases.append([Launch("control", "control", {
        "LISTEN": plan.control_address, "TOKENS_FILE": str(f.tokens_file), "TLS_CERT": str(certs.server_cert),
        "TLS_KEY": str(certs.server_key), "METRICS_ADDRESS": _metrics_listen(lab, "control"),
        "CELLS_FILE": str(f.cells_config), "HTTP_ADDRESS": plan.control_http_address,
        "REGISTRY_KEY": str(f.registry_key_dir / "token.key"), "REGISTRY_CERT": str(f.registry_key_dir / "token.crt"),
        **_etcd_env(lab, "control")},
        netns=plan.netns(CONTROL_HOST), host=CONTROL_HOST)])
    apis = [Launch(cell.api_host, "api", {"LISTEN": f"{plan.hosts[cell.api_host].mgmt_ip}:{API_PORT}",
                                          "CELL": cell.name}, netns=plan.netns(cell.api_host), host=cell.api_host)
            for cell in plan.cells.values()]
    phases.append(apis)
    phases.append([Launch("discovery", "discovery", {
        "CONFIG": str(f.discovery_config), "CONTROL": plan.control_address,
        "CONTROL_TOKEN_FILE": str(f.discovery_token_file), "CONTROL_CA": str(certs.ca_cert),
        "METRICS_ADDRESS": _metrics_listen(lab, "discovery"), **_etcd_env(lab, "discovery")},
        netns=plan.netns(CONTROL_HOST), host=CONTROL_HOST)])
    hosts: list[Launch] = []
    for group, members in plan.groups.items():
        for host in members:
            hosts.append(Launch(f"slb-{host}", "nginx-host", {
                "GROUP": group, "SLB_HOST": host, "PREFIX": str(f.nginx_prefix(host)), "LISTEN_ADDRESS": "0.0.0.0",
                "METRICS_ADDRESS": _metrics_listen(lab, f"slb-{host}"), **_traffic_every(lab), **_etcd_env(lab, host)},
                netns=plan.netns(host), host=host))
    # docker-registry on the registry host's loopback, token auth; the gate on its address is what clients call.
    hosts.append(Launch("registry", "registry", {
        "LISTEN": REGISTRY_UPSTREAM, "REGISTRY_ROOT": str(f.registry_root),
        "METRICS_ADDRESS": _metrics_listen(lab, "registry"), "TOKEN_REALM": plan.token_realm,
        "TOKEN_CERT": str(f.registry_key_dir / "token.crt"), "TOKEN_SERVICE": REGISTRY_SERVICE,
        "TOKEN_ISSUER": REGISTRY_ISSUER}, netns=plan.netns(REGISTRY_HOST), host=REGISTRY_HOST))
    hosts.append(Launch("registry-gate", "registry-gate", {"LISTEN": plan.registry_address,
                                                           "UPSTREAM": REGISTRY_UPSTREAM},
                        netns=plan.netns(REGISTRY_HOST), host=REGISTRY_HOST))
    for host in plan.build_hosts:
        hosts.append(Launch(f"build-agent-{host}", "build-host", {
            "BUILD_HOST": host, "REPOS": str(f.repos), "WORKDIR": str(plan.dir / "build" / host),
            "REGISTRY": plan.registry_address, "METRICS_ADDRESS": _metrics_listen(lab, f"build-agent-{host}"),
            **_etcd_env(lab, host)}, netns=plan.netns(host), host=host))
    phases.append(hosts)
    phases.append([Launch(f"cni-{n.name}", "node", {
        "NODE_NAME": n.name, "CNI_SOCKET": str(f.cni_socket(n.name)), "OVSDB": plan.ovs_db, "BRIDGE": n.bridge,
        "COOLDOWN": repr(_cooldown(lab)), "METRICS_ADDRESS": _metrics_listen(lab, f"cni-{n.name}"),
        **_etcd_env(lab, n.name)}, args=("cni-agent",)) for n in plan.nodes.values()])
    phases.append([Launch(f"runtime-{n.name}", "node", {
        "NODE_NAME": n.name, "RUNTIME_SOCKET": str(f.runtime_socket(n.name)),
        "KUBE_URL": plan.cells[n.cell].api_url, "CNI_BIN_DIR": str(f.cni_bin), "CNI_CONF": str(f.cni_conf(n.name)),
        "NETNS_PREFIX": f"{plan.netns_prefix}p-"}, args=("runtime",)) for n in plan.nodes.values()])
    # The lab's Kubernetes controllers (lab/controller.py): the apps' pods on the nodes, kept and healed.
    phases.append([Launch("kube-controller", "kube-controller", {"LAB_DIR": str(plan.dir)})])
    return phases


def lab_spec(lab: Any) -> Any:
    """The lab's (scaled) RegionSpec: ``lab.spec``, else read again from ``lab.scenario_path``; None if neither."""
    spec = getattr(lab, "spec", None)
    if spec is None and getattr(lab, "scenario_path", None) is not None:
        from lab.lab import _scenario  # the one way the lab reads (and scales) its scenario

        spec = _scenario(Path(lab.scenario_path))[1]
        with contextlib.suppress(AttributeError):
            lab.spec = spec
    return spec


def _traffic_every(lab: Any) -> dict[str, str]:
    """TRAFFIC_EVERY of the Nginx hosts: the scenario's (scaled) ``traffic_every`` when it has platform apps."""
    spec = lab_spec(lab)
    if spec is None or not any(getattr(a, "platform", False) for a in spec.apps):
        return {}
    return {"TRAFFIC_EVERY": f"{float(getattr(spec, 'traffic_every', 5.0)):.3f}"}


def _cooldown(lab: Any) -> float:
    spec = lab_spec(lab)
    return float(spec.cooldown) if spec is not None else NODE_COOLDOWN


# --------------------------------------------------------------------------- preparation steps


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _make_credentials(lab: Any) -> None:
    plan: LabPlan = lab.plan
    f = files(lab)
    if not f.certs.client_key.exists():
        ips = [plan.root_mgmt_ip, *(plan.hosts[m].mgmt_ip for m in plan.etcd_members),
               plan.hosts[CONTROL_HOST].mgmt_ip]
        make_certs(f.certs_dir, name=f"leengine-lab-{plan.id}", server_ips=ips, server_is_client=True)
    if not (f.registry_key_dir / "token.key").exists():  # kept while the lab lives: a new key voids every token
        _registry_key(f.registry_key_dir)
    if not f.tokens_file.exists():
        admin, discovery = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        _write_secret(f.admin_token_file, admin + "\n")
        _write_secret(f.discovery_token_file, discovery + "\n")
        _write_secret(f.tokens_file,
                      f"{admin} {ADMIN_TOKEN_NAME} admin\n{discovery} {DISCOVERY_TOKEN_NAME} discovery\n")


def discovery_config(lab: Any) -> dict[str, Any]:
    """discovery.yaml: each Cell's API, one binding per app (namespace = service = the app, as the sim binds).

    The port is the app's: lab pods serve on it (the controller's run request carries it to the runtime).
    """
    plan: LabPlan = lab.plan
    spec = lab_spec(lab)
    bindings = []
    for app in (spec.apps if spec is not None else ()):
        bindings.append({"namespace": app.name, "service": app.name, "port": app.port, "group": app.group,
                         "domain": app.served_domain})
    known = {(b["namespace"], b["group"], b["domain"]) for b in bindings}
    for extra in _extra_bindings(lab):
        if (extra["namespace"], extra["group"], extra["domain"]) not in known:
            bindings.append(extra)
    return {"cells": {c.name: {"api": c.api_url} for c in plan.cells.values()}, "bindings": bindings,
            "resync_seconds": 2}


def _extra_bindings(lab: Any) -> list[dict[str, Any]]:
    """``leengine lab bind``'s bindings, each validated again (the file is ours, but a binding is a config line)."""
    from foundation.ports.proxy_domain import DomainError, check_domain_name, check_group

    path = files(lab).extra_bindings
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for b in data if isinstance(data, list) else []:
        try:
            out.append(binding(b["namespace"], check_group(b["group"]), check_domain_name(b["domain"]), b["port"]))
        except (KeyError, TypeError, ValueError, DomainError):
            continue
    return out


def binding(app: str, group: str, domain: str, port: int) -> dict[str, Any]:
    """One discovery binding: namespace = service = the app (as the platform names them); ``ValueError`` if bad."""
    from lab.kube_objects import is_dns_label

    if not is_dns_label(app):
        raise ValueError(f"app {app!r:.60} is not a DNS label")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r:.20} is not a TCP port")
    return {"namespace": app, "service": app, "port": port, "group": group, "domain": domain}


def bind_app(lab: Any, app: str, group: str, domain: str, port: int) -> bool:
    """Serve a platform app made by hand through the lab's Nginx: its domain made in slb-core (owner: the app,
    as the lab's admin; one that exists is kept) and a discovery binding added, discovery restarted with it
    (its bindings are its configuration). False when the binding was there already (nothing restarted)."""
    import asyncio

    from foundation.ports.proxy_domain import check_domain_name, check_group
    from lab.run import ControlAdmin
    from sim.spec import AppSpec

    new = binding(app, check_group(group), check_domain_name(domain), port)
    f = files(lab)

    async def put() -> None:  # the channel is made inside the loop that uses it (grpc.aio)
        admin = ControlAdmin(lab.plan.control_address, admin_token(lab), f.certs.ca_cert.read_bytes())
        try:
            await admin.put_domain(AppSpec(app, cells=(), replicas=0, group=group, domain=domain, port=port))
        finally:
            await admin.close()

    try:
        asyncio.run(put())
    except Exception as exc:  # grpc's errors (the control service away, a refusal): one line
        details_of = getattr(exc, "details", None)
        details = details_of() if callable(details_of) else str(exc)
        raise ServiceError(f"PutDomain {group}/{domain}: {str(details)[:300]}") from None
    current = _extra_bindings(lab)
    if any((b["namespace"], b["group"], b["domain"]) == (app, group, domain) for b in current):
        return False
    temp = f.extra_bindings.with_suffix(".tmp")
    temp.write_text(json.dumps([*current, new], indent=1))
    os.replace(temp, f.extra_bindings)
    f.discovery_config.write_text(json.dumps(discovery_config(lab), indent=1))
    _supervisor(lab).stop("discovery")
    start(lab, "discovery")
    return True


def cells_config(lab: Any) -> dict[str, Any]:
    """cells.yaml of the control service (``--cells``): each Cell's Kubernetes API, where the platform's
    Workloads port writes apps' namespaces and replication controllers (lab/replication.py runs them)."""
    return {"cells": {c.name: {"api": c.api_url} for c in lab.plan.cells.values()}}


def cni_network(lab: Any, node: str) -> dict[str, Any]:
    """The node's CNI network configuration (a single-plugin .conf)."""
    plan: LabPlan = lab.plan
    cell = plan.cells[plan.nodes[node].cell]
    return {"cniVersion": "1.0.0", "name": "leengine", "type": "leengine-cni", "bridge": plan.nodes[node].bridge,
            "pools": list(cell.pools), "agentSocket": str(files(lab).cni_socket(node))}


def _write_configs(lab: Any) -> None:
    plan: LabPlan = lab.plan
    f = files(lab)
    f.links_config.write_text(json.dumps(links_config(plan), indent=1))
    f.discovery_config.write_text(json.dumps(discovery_config(lab), indent=1))  # JSON is YAML
    f.cells_config.write_text(json.dumps(cells_config(lab), indent=1))
    for d in (f.cni_bin, f.cni_conf("x").parent, f.repos, plan.dir / "run", plan.dir / "nginx"):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(plan.dir, 0o755)  # the Nginx workers (www-data) traverse it to their prefix
    os.chmod(plan.dir / "nginx", 0o755)
    for node in plan.nodes:
        f.cni_conf(node).write_text(json.dumps(cni_network(lab, node), indent=1))


def _leengine_command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _registry_key(directory: Path) -> None:
    """``leengine registry-key DIR``, the documented command (docs/registry.md): token.key (0600) and token.crt."""
    done = subprocess.run([_leengine_command("leengine"), "registry-key", str(directory)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ServiceError(f"leengine registry-key {directory} failed: {done.stderr.strip()[-500:]}")


def _install_cni(lab: Any) -> None:
    # Up to 11 min: the first install on a machine builds the Go plugin (a cold Go cache: ~1 min on 2 busy cores).
    done = subprocess.run([_leengine_command("leengine"), "install-cni", str(files(lab).cni_bin)],
                          capture_output=True, text=True, timeout=660, check=False)
    if done.returncode != 0:
        raise ServiceError(f"leengine install-cni {files(lab).cni_bin} failed: {done.stderr.strip()[-500:]}")


def register_pools(lab: Any) -> list[str]:
    """``cnictl pool add`` for every pool of the plan (one already there with the same CIDR is fine)."""
    plan: LabPlan = lab.plan
    args = etcd_client_args(lab, "cnictl")
    added = []
    for pool in plan.pools:
        done = subprocess.run([_leengine_command("cnictl"), *args, "pool", "add", pool.name, "--cidr", pool.cidr,
                               "--vlan", str(pool.vlan), "--gateway", plan.pool_gateways[pool.name],
                               "--block-size", str(pool.block_size)],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            added.append(pool.name)
        elif pool.name not in _listed_pools(lab):
            raise ServiceError(f"cnictl pool add {pool.name} failed: {done.stderr.strip()[-500:]}")
    return added


def _listed_pools(lab: Any) -> set[str]:
    done = subprocess.run([_leengine_command("cnictl"), *etcd_client_args(lab, "cnictl"), "pool", "list", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    try:
        return {str(u.get("pool")) for u in json.loads(done.stdout)}
    except (ValueError, TypeError, AttributeError):
        return set()


def create_groups(lab: Any) -> list[str]:
    """``CreateGroup`` for every Nginx group of the plan, as the lab's admin (an existing group is fine)."""
    import grpc

    from control.generated.leengine.control.v1 import slb_pb2 as pb
    from control.generated.leengine.control.v1 import slb_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=files(lab).certs.ca_cert.read_bytes())
    metadata = (("authorization", f"Bearer {admin_token(lab)}"),)
    created = []
    with grpc.secure_channel(lab.plan.control_address, credentials) as channel:
        stub = slb_pb2_grpc.SlbCoreStub(channel)
        for group in lab.plan.groups:
            try:
                stub.CreateGroup(pb.CreateGroupRequest(name=group, description=f"lab {lab.plan.id}"),
                                 metadata=metadata, timeout=10)
                created.append(group)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise ServiceError(f"CreateGroup {group}: {exc.code().name}: {exc.details()}") from None
    return created


# --------------------------------------------------------------------------- bring-up, status, stop


def _record(lab: Any, launch: Launch) -> None:
    record = getattr(lab, "record", None) or LabRecord(Path(lab.plan.dir))
    with contextlib.suppress(Exception):  # lab.json may not exist (a test of the services alone)
        record.add_process(ProcessEntry(launch.name, str(lab.plan.pidfile(launch.name)),
                                        str(lab.plan.logfile(launch.name)), _metrics_url(lab, launch.name),
                                        launch.host))


def _start_phase(lab: Any, launches: list[Launch], timeout: float = READY_TIMEOUT) -> None:
    sup = _supervisor(lab)
    for launch in launches:
        sup.start(launch)
        _record(lab, launch)
    for launch in launches:
        try:
            sup.wait_ready(launch.name, probe(lab, launch.name), timeout=timeout, what=f"{launch.role} ready")
        except SupervisorError as exc:
            raise ServiceError(str(exc)) from None


def start_services(lab: Any, *, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Bring every service of ``lab`` up, in order; seconds per phase (``ServiceError`` on the first failure)."""
    say = log or (lambda message: None)
    timings: dict[str, float] = {}
    # Recorded before they are made, so `lab down` removes them even after a crash of this command.
    f = files(lab)
    lab.record.intend_many([{"kind": "dir", "name": str(d)} for d in (
        f.certs_dir, f.tokens_file.parent, f.dir / "etcd", f.dir / "cni", f.dir / "nginx", f.repos, f.dir / "faults")])
    phases = _launches(lab)
    (links, members, control, apis, discovery, hosts, cni_agents, runtimes, controller) = phases

    def step(name: str, body: Callable[[], object]) -> None:
        start = time.monotonic()
        body()
        timings[name] = round(time.monotonic() - start, 3)
        say(f"{name}: {timings[name]:.2f}s")

    def credentials() -> None:
        _make_credentials(lab)
        _write_configs(lab)

    def etcd() -> None:
        _start_phase(lab, members, ETCD_TIMEOUT)
        _wait_cluster(lab)

    def pools_and_groups() -> None:
        register_pools(lab)
        create_groups(lab)

    def apis_and_discovery() -> None:
        _start_phase(lab, apis)
        _start_phase(lab, discovery)

    def nodes() -> None:
        _install_cni(lab)
        _start_phase(lab, cni_agents)
        _start_phase(lab, runtimes)

    step("credentials", credentials)
    step("links", lambda: _start_phase(lab, links))
    step("etcd", etcd)
    step("control", lambda: _start_phase(lab, control))
    step("pools+groups", pools_and_groups)
    step("apis+discovery", apis_and_discovery)
    step("nginx+registry+build", lambda: _start_phase(lab, hosts))
    step("nodes", nodes)
    step("controller", lambda: _start_phase(lab, controller))
    timings["total"] = round(sum(timings.values()), 3)
    return timings


def _wait_cluster(lab: Any, timeout: float = ETCD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not _cluster_ready(lab):
        if time.monotonic() > deadline:
            sup = _supervisor(lab)
            tails = "\n".join(f"--- {m}\n{sup.log_tail(m, 10)}" for m in lab.plan.etcd_members)
            raise ServiceError(f"etcd cluster not healthy after {timeout:g}s: {etcd_health(lab)}\n{tails}")
        time.sleep(0.2)


def _nginx_master(lab: Any, host: str) -> int | None:
    """The pid of the host's Nginx master while it runs in the host's netns (else None).

    Nginx overwrites its environment area with its process title, so its ``LEENGINE_LAB`` tag
    cannot be read back: the netns it lives in (the lab's, by name) is what makes it ours.
    """
    pid = read_pidfile(files(lab).nginx_prefix(host) / "logs" / "nginx.pid")
    if pid is None:
        return None
    try:
        same = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.plan.netns(host)}").st_ino
    except OSError:
        return None
    return pid if same and is_running(pid) else None


def _stop_pid(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGKILL, 5.0)):  # SIGQUIT: nginx's graceful stop
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)


def stop_services(lab: Any, timeout: float = 5.0) -> list[str]:
    """Stop every service this lab started and the Nginx masters, all at once; the names stopped.

    Two waves: first every etcd client (SIGTERM to all, SIGQUIT to Nginx, one shared wait of
    ``timeout``, then SIGKILL for what is left), then the links and the members: a client stopping
    while etcd is already gone would spend its etcd deadline on the way out (a lease revoked, a
    status written).
    """
    sup = _supervisor(lab)
    names = [launch.name for phase in _launches(lab) for launch in phase]
    pids = {name: pid for name in names if (pid := sup.pid(name)) is not None}
    masters = {f"nginx-{host}": pid for members in lab.plan.groups.values() for host in members
               if (pid := _nginx_master(lab, host)) is not None}
    etcd = {"links", *lab.plan.etcd_members}
    for pid in masters.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # nginx's graceful stop
    stop_pids([pid for name, pid in pids.items() if name not in etcd], lab.plan.id, timeout)
    for pid in masters.values():
        _stop_pid(pid, timeout)
    stop_pids([pid for name, pid in pids.items() if name in etcd], lab.plan.id, timeout)
    return [*pids, *masters]


def services_status(lab: Any) -> list[dict[str, Any]]:
    """One row per process (kind "process"), per Nginx host (kind "nginx"), per pool (kind "pool")."""
    plan: LabPlan = lab.plan
    sup = _supervisor(lab)
    rows: list[dict[str, Any]] = []
    for phase in _launches(lab):
        for launch in phase:
            pid = sup.pid(launch.name)
            rows.append({"kind": "process", "name": launch.name, "host": launch.host or "(root)",
                         "pid": pid or sup.recorded_pid(launch.name), "alive": pid is not None,
                         "metrics": _metrics_url(lab, launch.name)})
    for group, members in plan.groups.items():
        for host in members:
            generation = _nginx_serving(lab, host)
            master = _nginx_master(lab, host)
            rows.append({"kind": "nginx", "name": f"nginx-{host}", "host": host, "group": group,
                         "pid": master, "alive": master is not None,
                         "serving": generation is not None, "generation": generation,
                         "address": f"{plan.hosts[host].mgmt_ip}:{NGINX_PORT}"})
    rows.extend(pool_rows(lab))
    return rows


def pool_rows(lab: Any) -> list[dict[str, Any]]:
    """Pool use read from etcd (``cnictl pool list --json`` through the cnictl links)."""
    done = subprocess.run([_leengine_command("cnictl"), *etcd_client_args(lab, "cnictl"), "--etcd-timeout", "3",
                           "pool", "list", "--json"], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        return [{"kind": "pool", "name": "(etcd)", "error": (done.stderr.strip() or "no answer")[-300:]}]
    try:
        usage = json.loads(done.stdout)
    except ValueError:
        return [{"kind": "pool", "name": "(etcd)", "error": "cnictl answered no JSON"}]
    return [{"kind": "pool", **u} for u in usage if isinstance(u, dict)]


# --------------------------------------------------------------------------- the fault driver's primitives


def kill(lab: Any, name: str, sig: int = signal.SIGKILL) -> bool:
    """Signal a lab process (SIGKILL by default); for an SLB agent with SIGKILL its Nginx master goes too."""
    sent = _supervisor(lab).kill(name, sig)
    if name.startswith("slb-") and sig == signal.SIGKILL:
        pid = _nginx_master(lab, name.removeprefix("slb-"))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            sent = True
    return sent


def start(lab: Any, name: str, *, wait: bool = True, timeout: float = READY_TIMEOUT) -> int:
    """Start a lab process again with its recorded launch; waits until it is ready (``ServiceError``)."""
    sup = _supervisor(lab)
    try:
        pid = sup.start(name)
        if wait:
            sup.wait_ready(name, probe(lab, name), timeout=timeout, what="ready again")
    except SupervisorError as exc:
        raise ServiceError(str(exc)) from None
    return pid


def alive(lab: Any, name: str) -> bool:
    return _supervisor(lab).alive(name)


def stop_member(lab: Any, name: str) -> None:
    """Stop etcd member ``name`` (SIGTERM; its data stays): clients fail over through the links."""
    if name not in lab.plan.etcd_members:
        raise ServiceError(f"{name!r} is not an etcd member of the lab")
    _supervisor(lab).stop(name)


def start_member(lab: Any, name: str) -> None:
    """Start etcd member ``name`` again (it rejoins with its data) and wait until it answers /health."""
    if name not in lab.plan.etcd_members:
        raise ServiceError(f"{name!r} is not an etcd member of the lab")
    start(lab, name, timeout=ETCD_TIMEOUT)
