"""Every daemon's ``/metrics`` scraped by a real Prometheus, the values checked against what the test did.

Each test starts the real daemons (``leengine-cni-agent``, ``leengine-slb-agent``,
``leengine-control`` with ``leengine-discovery``, ``leengine-build-agent``) with
``--metrics-address 127.0.0.1:PORT``, drives them as the existing end-to-end tests do (their
fixtures and helpers are reused: ``test_cni_e2e``, ``test_slb_e2e``, ``test_kube_endpoints``,
``test_build_e2e``), and starts Debian's ``prometheus`` on loopback (``lab/prometheus.py``,
1 s scrapes) with those daemons as its targets. Values are read back with PromQL only,
never by parsing the exposition here: what Prometheus stored is what an operator sees.

Counts are exact (N ADDs -> the ADD counter is N); a value is polled until it equals the
expected one or a bound passes (scrapes are 1 s apart), and a mismatch reports the last value.
Also: a taken or malformed ``--metrics-address`` stops each daemon at start in one line.

Needs root (netns, OVS, nginx, buildah), etcd, Open vSwitch, nginx + lua, buildah,
docker-registry and prometheus; never skips.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.pools import POOLS, Pool
from control.builds import BuildScheduler
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.adapters.grpc_control import GrpcControlClient
from foundation.adapters.ovs_dataplane import OvsDataplane
from foundation.logic.build_task import BUILD
from foundation.ports import DeleteOp
from foundation.ports.control import NotFound, PermissionDenied, Unauthenticated
from lab.kube_mock import KubeApiMock
from lab.nginx import free_port
from lab.processes import freeze, stop_child
from lab.prometheus import PrometheusServer, running_prometheus
from lab.registry import running_registry
from lab.slb import PodBackends, get
from leengine.etcd_options import open_store
from tests.integration.test_build_e2e import git
from tests.integration.test_cni_e2e import NODES, Agent, Lab, bridges, sh  # noqa: F401  (bridges: a fixture)
from tests.integration.test_kube_endpoints import add_pools
from tests.integration.test_slb_e2e import ADMIN, HOST, Slb

BIN = Path(sys.executable).parent
TOKENS = {"ops": "ops-0123456789abcdef", "discovery": "disc-0123456789abcdef", "alice": "alice-0123456789abcdef"}
SETTLE = 20.0  # seconds a value may take to reach Prometheus (scrapes every second)


# ---------------------------------------------------------------------------- helpers


def metrics_address() -> str:
    return f"127.0.0.1:{free_port()}"


def wait_value(prom: PrometheusServer, promql: str, expected: float | None, timeout: float = SETTLE) -> None:
    """Poll ``promql`` until its one value is ``expected`` (None: no series)."""
    deadline = time.monotonic() + timeout
    while True:
        value = prom.query_value(promql)
        if value == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql} = {value} after {timeout:.0f}s, expected {expected}")
        time.sleep(0.25)


def value(prom: PrometheusServer, promql: str) -> float | None:
    return prom.query_value(promql)


def assert_identifies(prom: PrometheusServer, daemon: str) -> None:
    """The target says which daemon it is and which release runs it (``leengine_daemon_info``)."""
    version = importlib.metadata.version("leengine-testbed")
    assert value(prom, f'leengine_daemon_info{{daemon="{daemon}",version="{version}"}}') == 1, daemon


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"{proc.args[0]} exited {proc.returncode}:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------- CNI agent


@pytest.fixture
def cni_lab(etcd_server, ovs_server, bridges):  # noqa: F811  (the imported fixture, by name)
    """test_cni_e2e's lab with one node agent, node-1, serving its metrics."""
    workdir = Path(tempfile.mkdtemp(prefix="lemetrics-", dir="/tmp"))
    lab = Lab(etcd_server, ovs_server, workdir, "go")  # the plugin an operator installs (test_cni_e2e runs both)
    address = metrics_address()
    lab.agents = {"node-1": Agent("node-1", etcd_server, ovs_server.db, workdir,
                                  extra=("--metrics-address", address))}

    async def reset(store):
        await store.delete("/ipam/", prefix=True)

    lab.store(reset)
    out = sh(str(BIN / "cnictl"), "--etcd", etcd_server.endpoint, *etcd_server.client_args, "pool", "add", "red",
             "--cidr", "198.18.100.0/24", "--vlan", "100")
    assert "added" in out.stdout
    lab.agents["node-1"].start()
    try:
        yield lab, address
    finally:
        lab.agents["node-1"].stop()
        for netns in lab.netns:
            sh("ip", "netns", "del", netns, check=False)

        async def unplug():
            async with OvsDataplane(ovs_server.db) as dp:
                for port in await dp.ports(NODES["node-1"]):
                    await dp.detach(port.container_id, port.ifname, None)

        asyncio.run(unplug())
        lab.store(reset)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_cni_agent_counts_each_command_by_code_and_sets_the_pool_gauges(cni_lab):
    lab, address = cni_lab
    pods = {f"m-{i}": lab.pod() for i in range(5)}
    results = {c: lab.add("node-1", c, netns) for c, netns in pods.items()}  # 5 ADDs, code 0
    checked = lab.cni("CHECK", "node-1", "m-0", pods["m-0"], prev_result=results["m-0"])
    assert checked.returncode == 0, checked.stdout
    for c in ("m-3", "m-4"):  # 2 DELs
        assert lab.cni("DEL", "node-1", c, pods[c]).returncode == 0
    unknown = lab.cni("ADD", "node-1", "ghost", lab.pod(), pools=("green",))  # 1 ADD refused: code 7
    assert json.loads(unknown.stdout)["code"] == 7, unknown.stdout
    capacity = lab.store(lambda store: store.get(f"{POOLS}red"))
    capacity = Pool.from_bytes(capacity.value).capacity()

    with running_prometheus({"cni-agent": [address]}) as prom:
        prom.wait_for_target_up("cni-agent")
        assert_identifies(prom, "leengine-cni-agent")
        ours = 'node="node-1"'
        wait_value(prom, f'leengine_cni_requests_total{{{ours},command="ADD",code="0"}}', 5)
        wait_value(prom, f'leengine_cni_requests_total{{{ours},command="ADD",code="7"}}', 1)
        wait_value(prom, f'leengine_cni_requests_total{{{ours},command="CHECK",code="0"}}', 1)
        wait_value(prom, f'leengine_cni_requests_total{{{ours},command="DEL",code="0"}}', 2)
        assert value(prom, f'sum(leengine_cni_requests_total{{{ours}}})') == 9  # nothing else was counted
        assert value(prom, f'leengine_cni_request_seconds_count{{{ours},command="ADD",code="0"}}') == 5
        assert 0 < value(prom, f'leengine_cni_request_seconds_sum{{{ours},command="ADD",code="0"}}') < 30
        assert value(prom, f'leengine_ipam_allocations_in_use{{pool="red",{ours}}}') == 3
        assert value(prom, f'leengine_ipam_blocks{{pool="red",{ours}}}') == 1
        assert value(prom, 'leengine_ipam_ippool_size{pool="red"}') == capacity
        assert value(prom, f'leengine_ipam_allocation_seconds_count{{{ours}}}') >= 5  # one per address allocated
        assert value(prom, 'leengine_etcd_errors_total{component="cni-agent"}') == 0


# ---------------------------------------------------------------------------- SLB agent


@pytest.fixture
def slb_lab(etcd_server) -> Iterator[tuple[Slb, PodBackends, str]]:
    pods = PodBackends(2, tag=f"lm{(os.getpid() + 13) % 0x10000:04x}", subnet_base=40)
    lab = Slb(etcd_server, pods)
    address = metrics_address()
    lab.agent.extra = (*lab.agent.extra, "--metrics-address", address)  # test_slb_e2e's agent, metered
    try:
        yield lab, pods, address
    finally:
        lab.close()
        pods.close()


def test_slb_agent_counts_in_place_updates_sets_aside_a_bad_domain_and_reports_a_failed_reload(slb_lab):
    """5 upstream changes applied in place; a domain nginx -t refuses is set aside (no reload tried);
    a reload the (stopped) Nginx master never confirms is a failed reload until it comes back."""
    slb, pods, address = slb_lab
    p = [str(pod.upstream) for pod in pods.pods]
    good, bad = "good.example.com", "bad.example.com"
    slb.setup([slb.domain(good, [p[0]]), slb.domain(bad, [p[0]])])
    group = f'group="{slb.group}",host="{HOST}"'

    async def change(make) -> None:
        store, core = await slb.open()
        try:
            await make(core, store)
        finally:
            await store.close()

    async def in_place(core, store) -> None:
        # Each set differs from the one before (the order of servers is no change); one at a time, each
        # waiting for its status, so none is coalesced with another.
        for servers in ([p[1]], p, [p[0]], [p[1]], p):
            revision = await core.set_upstreams(ADMIN, slb.group, good, servers)
            await slb.wait_status(store, good, lambda s, r=revision: s.revision == r)

    async def break_bad(core, store) -> None:
        revision = (await core.put_domain(ADMIN, slb.domain(bad, [p[0]], gen="bad",
                                                             settings={"proxy_buffer_size": "999999k"}))).revision
        await slb.wait_status(store, bad, lambda s: s.wanted_revision == revision and bool(s.error))

    with running_prometheus({"slb-agent": [address]}) as prom:
        prom.wait_for_target_up("slb-agent")
        assert_identifies(prom, "leengine-slb-agent")
        wait_value(prom, f"leengine_slb_config_last_reload_successful{{{group}}}", 1)  # the first apply
        reloads = value(prom, f'leengine_slb_reloads_total{{{group},result="success"}}')
        assert reloads is not None and reloads >= 1
        wait_value(prom, f"leengine_slb_domains_set_aside{{{group}}}", 0)

        run(change(in_place))
        wait_value(prom, f"leengine_slb_upstream_updates_total{{{group}}}", 5)
        assert value(prom, f'leengine_slb_reloads_total{{{group},result="success"}}') == reloads  # none for them
        assert value(prom, f"leengine_slb_propagation_seconds_count{{{group}}}") >= 5  # each change took effect

        run(change(break_bad))
        wait_value(prom, f"leengine_slb_domains_set_aside{{{group}}}", 1)
        assert value(prom, f'leengine_slb_reloads_total{{{group},result="failure"}}') is None  # refused by the test
        assert value(prom, f"leengine_slb_config_last_reload_successful{{{group}}}") == 1
        assert get(slb.port, bad)[0] == 200  # its last good config still serves

        # Nginx's master stops answering: a change that needs a reload is never confirmed.
        master = slb.agent.nginx_pid()
        assert master is not None
        before_ok = value(prom, f"leengine_slb_config_last_reload_successful_timestamp_seconds{{{group}}}")

        async def needs_reload(core, store) -> None:  # new headers: a reload, not an in-place change
            await core.put_domain(ADMIN, slb.domain(good, [p[0]], gen="new"))

        try:
            freeze(master)  # inside the try: SIGSTOP is sent even if freeze raises
            run(change(needs_reload))
            wait_value(prom, f"leengine_slb_config_last_reload_successful{{{group}}}", 0, timeout=40)
            failures = value(prom, f'leengine_slb_reloads_total{{{group},result="failure"}}')
            assert failures is not None and failures >= 1
        finally:
            os.kill(master, signal.SIGCONT)
        # The agent retries the batch: the master, back, takes it.
        wait_value(prom, f"leengine_slb_config_last_reload_successful{{{group}}}", 1, timeout=60)
        assert value(prom, f'leengine_slb_reloads_total{{{group},result="success"}}') > reloads
        after_ok = value(prom, f"leengine_slb_config_last_reload_successful_timestamp_seconds{{{group}}}")
        assert before_ok is not None and after_ok is not None and after_ok > before_ok
        assert abs(after_ok - time.time()) < 120  # Unix seconds, not the runtime's monotonic clock
        assert value(prom, f"leengine_slb_reload_seconds_count{{{group}}}") == value(
            prom, f"sum(leengine_slb_reloads_total{{{group}}})")
        assert value(prom, 'leengine_etcd_errors_total{component="slb-agent"}') == 0


# ---------------------------------------------------------------------------- control service + discovery


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKENS['ops']} ops admin\n{TOKENS['discovery']} discovery discovery\n"
                    f"{TOKENS['alice']} alice user\n")
    path.chmod(0o600)
    return path


def test_control_counts_rpcs_by_method_and_code_and_discovery_its_pushes_and_drains(etcd_server, tmp_path):
    """``leengine-control`` and ``leengine-discovery`` as processes: every upstream push discovery counts is a
    SetUpstreams the control service counts OK; the test's own refused calls are counted by their code."""
    certs = etcd_server.certs
    etcd_args = ["--etcd", etcd_server.endpoint, *etcd_server.client_args]
    listen = f"127.0.0.1:{free_port()}"
    control_metrics, discovery_metrics = metrics_address(), metrics_address()
    group, shop = f"metrics-{os.getpid()}", "shop.example.com"
    procs: list[subprocess.Popen] = []
    kube = KubeApiMock()
    kube.start()
    kube.set_endpoints("shop", "shop", ready=["10.1.0.5"])
    config = tmp_path / "discovery.yaml"
    config.write_text(f'cells:\n  cell-a: {{api: "{kube.url}"}}\nbindings:\n'
                      f"  - {{namespace: shop, service: shop, port: 8080, group: {group}, domain: {shop}}}\n"
                      "resync_seconds: 0.5\n")
    token = tmp_path / "discovery.token"
    token.write_text(TOKENS["discovery"] + "\n")
    token.chmod(0o600)

    async def prepare() -> list[str]:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls)
        try:
            from control.slb_core import SlbCore

            slb = SlbCore(store, AsyncioRuntime())
            pools = await add_pools(store, group)
            await slb.create_group(ADMIN, group)
            await slb.put_domain(ADMIN, {"name": shop, "group": group, "owner": "alice"})
            return pools
        finally:
            await store.close()

    async def cleanup(pools: list[str]) -> None:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls)
        try:
            await store.delete(f"/slb/{group}/", prefix=True)
            await store.delete(f"/control/slb/groups/{group}")
            await store.delete("/discovery/drains/shop/", prefix=True)
            for key in pools:
                await store.delete(key)
        finally:
            await store.close()

    def client(who: str) -> GrpcControlClient:
        return GrpcControlClient(listen, TOKENS.get(who, "nobody-0123456789abcdef"), ca=certs.ca_cert.read_bytes())

    async def calls() -> dict[str, object]:
        seen: dict[str, object] = {}
        for who, action in (("nobody", lambda c: c.get_domain(group, shop)),  # an unknown token
                            ("alice", lambda c: c.set_upstreams(group, shop, ["10.1.0.9:8080"])),  # not hers
                            ("ops", lambda c: c.get_domain(group, "missing.example.com"))):
            c = client(who)
            try:
                await action(c)
                seen[who] = "answered"
            except Exception as exc:  # the type is what the test checks
                seen[who] = type(exc)
            finally:
                await c.close()
        return seen

    pools = run(prepare())
    try:
        control_log, discovery_log = tmp_path / "control.log", tmp_path / "discovery.log"
        control = subprocess.Popen(
            [str(BIN / "leengine-control"), "--tokens", str(tokens_file(tmp_path)), *etcd_args, "--listen", listen,
             "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
             "--metrics-address", control_metrics],
            stdout=control_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(control)
        wait_log(control_log, "serving leengine.control.v1.SlbCore", control)
        discovery = subprocess.Popen(
            [str(BIN / "leengine-discovery"), "--config", str(config), "--control", listen,
             "--control-token-file", str(token), "--control-ca", str(certs.ca_cert), *etcd_args,
             "--metrics-address", discovery_metrics],
            stdout=discovery_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(discovery)
        with running_prometheus({"control": [control_metrics], "discovery": [discovery_metrics]}) as prom:
            prom.wait_for_target_up()
            assert_identifies(prom, "leengine-control")
            assert_identifies(prom, "leengine-discovery")
            pushed = 'leengine_discovery_pushes_total{result="ok"}'
            set_ok = 'leengine_control_rpcs_total{method="SetUpstreams",code="OK"}'
            wait_value(prom, pushed, 1)
            wait_value(prom, set_ok, 1)
            kube.set_endpoints("shop", "shop", ready=["10.1.0.5", "10.1.0.6"])  # one change: one push
            wait_value(prom, pushed, 2)
            wait_value(prom, set_ok, 2)

            drained = subprocess.run(
                [str(BIN / "leengine-discovery"), "drain", "--config", str(config), *etcd_args, "--drain-timeout",
                 "10", "shop", "10.1.0.6"], capture_output=True, text=True, timeout=60, check=False)
            assert drained.returncode == 0, drained.stdout + drained.stderr
            wait_value(prom, 'leengine_discovery_drains_total{result="drained"}', 1)
            assert value(prom, "leengine_discovery_drain_seconds_count") == 1
            wait_value(prom, pushed, 3)  # the drained address left the domain: one more push
            wait_value(prom, set_ok, 3)

            seen = run(calls())
            assert seen == {"nobody": Unauthenticated, "alice": PermissionDenied, "ops": NotFound}, seen
            wait_value(prom, 'leengine_control_rpcs_total{method="GetDomain",code="UNAUTHENTICATED"}', 1)
            wait_value(prom, 'leengine_control_rpcs_total{method="SetUpstreams",code="PERMISSION_DENIED"}', 1)
            wait_value(prom, 'leengine_control_rpcs_total{method="GetDomain",code="NOT_FOUND"}', 1)
            assert value(prom, 'sum(leengine_control_rpcs_total{code="UNAUTHENTICATED"})') == 1
            assert value(prom, set_ok) == value(prom, pushed) == 3  # every push discovery counted, answered OK
            codes = {r["metric"]["code"] for r in prom.query("leengine_control_rpcs_total")}
            assert codes <= {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"}, codes
            assert value(prom, 'sum(leengine_discovery_pushes_total{result!="ok"})') is None  # none failed
            assert value(prom, "leengine_discovery_domains_without_upstream") == 0
            assert value(prom, "leengine_discovery_cells_unreachable") == 0
            assert value(prom, 'leengine_etcd_errors_total{component="discovery"}') == 0
            assert value(prom, 'leengine_etcd_errors_total{component="build-scheduler"}') == 0
            assert value(prom, "leengine_build_tasks_moved_total") == 0
            assert value(prom, "leengine_build_tasks_queued") is not None  # the reassigner's pass set it
    finally:
        for proc in procs:
            stop_child(proc, 15)
        kube.stop()
        run(cleanup(pools))
    for proc, log in ((control, control_log), (discovery, discovery_log)):
        assert proc.returncode == 0, log.read_text()[-2000:]


# ---------------------------------------------------------------------------- build agent


def shop_repo(repos: Path) -> dict[str, str]:
    """Three commits of shop: v1 and v2 build, v3's script fails. Returns version -> commit id."""
    repo = repos / "shop"
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet")
    ids = {}
    for version, tail in (("v1", ""), ("v2", ""), ("v3", "echo broken >&2; exit 3\n")):
        (repo / "build.sh").write_text(f"set -e\nmkdir -p out /cache/deps\n{tail}"
                                       f"echo 'echo shop {version}' > out/start.sh\n")
        git(repo, "add", "build.sh")
        git(repo, "commit", "--quiet", "-m", version)
        ids[version] = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                      capture_output=True, text=True).stdout.strip()
    return ids


def test_build_agent_reports_step_durations_results_and_cache_hits(etcd_server, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the build agent runs buildah with chroot isolation: run the integration tier as root")
    ids = shop_repo(tmp_path / "repos")
    address = metrics_address()
    log = tmp_path / "agent.log"

    async def builds() -> list:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls)
        try:
            await store.txn([], [DeleteOp(BUILD, prefix=True)])  # nothing left from another test
            scheduler = BuildScheduler(store, AsyncioRuntime(), every=0.5)
            deadline = time.monotonic() + 30
            while await scheduler.agents() != ["build-m"]:
                assert time.monotonic() < deadline, f"the agent did not register:\n{log.read_text()[-2000:]}"
                await asyncio.sleep(0.1)
            results = []
            for version in ("v1", "v2", "v3"):
                result = await scheduler.wait(await scheduler.submit("shop", ids[version]), timeout=120)
                assert result is not None, log.read_text()[-2000:]
                results.append(result)
            await store.txn([], [DeleteOp(BUILD, prefix=True)])
            return results
        finally:
            await store.close()

    with running_registry() as registry:
        agent = subprocess.Popen(
            [str(BIN / "leengine-build-agent"), "--host", "build-m", "--etcd", etcd_server.endpoint,
             *etcd_server.client_args, "--repos", str(tmp_path / "repos"), "--workdir", str(tmp_path / "work"),
             "--registry", registry.address, "--storage", str(tmp_path / "storage"), "--ttl", "3",
             "--metrics-address", address],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            results = run(builds(), timeout=400)
            with running_prometheus({"build-agent": [address]}) as prom:
                prom.wait_for_target_up("build-agent")
                assert_identifies(prom, "leengine-build-agent")
                assert [r.state for r in results] == ["done", "done", "failed"], results
                wait_value(prom, 'leengine_build_results_total{result="done"}', 2)
                wait_value(prom, 'leengine_build_results_total{result="failed"}', 1)
                hits = sum(1 for r in results if r.cache_hit)
                assert not results[0].cache_hit  # the first build of the repo found its cache cold
                assert value(prom, "leengine_build_cache_hits_total") == hits
                for step in ("clone", "compile", "image", "push"):  # the two builds that got through
                    assert value(prom, f'leengine_build_step_seconds_count{{step="{step}"}}') == 2, step
                    recorded = sum(dict(r.steps)[step] for r in results[:2])
                    scraped = value(prom, f'leengine_build_step_seconds_sum{{step="{step}"}}')
                    assert scraped is not None and abs(scraped - recorded) < 1e-4, (step, scraped, recorded)
                assert value(prom, 'leengine_etcd_errors_total{component="build-agent"}') == 0
        finally:
            stop_child(agent, 40)  # SIGTERM: a build still running is stopped and cleaned by the agent itself
    assert agent.returncode == 0, log.read_text()[-2000:]


# ---------------------------------------------------------------------------- bad addresses


def daemon_argv(name: str, tmp_path: Path, etcd_server) -> list[str]:
    """Each daemon's otherwise valid command line (etcd and the control service need not answer)."""
    etcd = ["--etcd", etcd_server.endpoint, *etcd_server.client_args]
    if name == "leengine-cni-agent":
        return ["--node", "node-1", *etcd, "--socket", str(tmp_path / "cni.sock")]
    if name == "leengine-slb-agent":
        return ["--group", "public", "--host", "nginx-1", "--prefix", str(tmp_path / "nginx"), *etcd]
    if name == "leengine-build-agent":
        (tmp_path / "repos").mkdir(exist_ok=True)
        return ["--host", "build-1", *etcd, "--repos", str(tmp_path / "repos"), "--workdir", str(tmp_path / "w"),
                "--registry", "127.0.0.1:5000"]
    if name == "leengine-discovery":
        config = tmp_path / "discovery.yaml"
        config.write_text('cells:\n  cell-a: {api: "http://127.0.0.1:1"}\nbindings: []\n')
        token = tmp_path / "discovery.token"
        token.write_text(TOKENS["discovery"] + "\n")
        token.chmod(0o600)
        return ["--config", str(config), "--control", "127.0.0.1:50051", "--control-token-file", str(token), *etcd]
    return ["--tokens", str(tokens_file(tmp_path)), *etcd, "--listen", f"127.0.0.1:{free_port()}"]


DAEMONS = ("leengine-cni-agent", "leengine-slb-agent", "leengine-build-agent", "leengine-discovery",
           "leengine-control")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_a_taken_or_malformed_metrics_address_stops_the_daemon_at_start_in_one_line(daemon, tmp_path, etcd_server):
    argv = [str(BIN / daemon), *daemon_argv(daemon, tmp_path, etcd_server)]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        cases = {taken: "cannot listen there (Address already in use)", "127.0.0.1": "is not HOST:PORT",
                 "127.0.0.1:99999": "the port is a number", "192.0.2.1:9101": "cannot listen there"}
        for address, reason in cases.items():
            started = time.monotonic()
            done = subprocess.run([*argv, "--metrics-address", address], capture_output=True, text=True,
                                  timeout=30, check=False)
            assert done.returncode == 2, (address, done.returncode, done.stderr)
            assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.startswith(f"{daemon}: error: ") and reason in done.stderr, done.stderr
            assert time.monotonic() - started < 15  # refused at start, not after waiting for etcd or nginx
    assert not (tmp_path / "nginx" / "logs" / "nginx.pid").exists()  # the SLB agent started no Nginx
    assert not (tmp_path / "cni.sock").exists()
