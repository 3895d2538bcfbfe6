"""TLS and credentials over the wire: etcd with client-certificate auth, the control service over TLS.

etcd (the session's, started with ``--client-cert-auth``) must refuse, by itself, a
client without a certificate, one whose certificate another CA signed, and a plaintext
one; the control service must serve a client that trusts its CA and fail one that
speaks plaintext or trusts another CA; with ``--tls-client-ca`` it demands a client
certificate. The console scripts take the flags end to end (cnictl and leengine-control
against the TLS etcd, the daemons' option checks) and refuse plaintext off loopback.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.auth import TokenTable
from control.generated.leengine.control.v1 import slb_pb2 as pb
from control.generated.leengine.control.v1 import slb_pb2_grpc
from foundation.ports import StoreUnavailable
from lab.certs import CertBundle, make_certs
from leengine.control_server import ServerTls, load_server_tls, start
from leengine.etcd_options import EtcdClientTls, open_store

pytestmark = pytest.mark.etcd

TOKEN = "admin-0123456789abcdef"
TABLE = TokenTable.from_entries([(TOKEN, "ops", "admin")])
AUTH = (("authorization", f"Bearer {TOKEN}"),)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> CertBundle:
    """A second, unrelated CA with its own server and client certificates."""
    return make_certs(tmp_path_factory.mktemp("other-ca"), name="stranger")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                        cert.read_bytes() if cert else None)


# ------------------------------------------------------------------ etcd refuses clients without our certificate


def test_etcd_serves_a_client_with_our_certificate_over_tls_and_https(etcd_server):
    async def main() -> None:
        for endpoint in (etcd_server.endpoint, etcd_server.url):
            store = await open_store(endpoint, etcd_server.client_tls, timeout=2.0)
            try:
                put = await store.put("/tls/ok", endpoint.encode())
                got = await store.get("/tls/ok")
                assert got is not None and got.value == endpoint.encode() and got.mod_revision == put.revision
            finally:
                await store.close()

    assert etcd_server.url.startswith("https://")
    asyncio.run(main())


@pytest.mark.parametrize("client", ["plaintext", "ca-only", "stranger-cert", "trusts-stranger"])
def test_etcd_itself_refuses_a_client_without_our_certificate(etcd_server, other_certs, client):
    ours = etcd_server.certs
    tls = {
        "plaintext": None,
        "ca-only": EtcdClientTls(ours.ca_cert),  # TLS, but no client certificate
        "stranger-cert": EtcdClientTls(ours.ca_cert, other_certs.client_cert, other_certs.client_key),
        "trusts-stranger": EtcdClientTls(other_certs.ca_cert, ours.client_cert, ours.client_key),
    }[client]

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await open_store(etcd_server.endpoint, tls, timeout=2.0)
        assert caught.value.endpoint == etcd_server.endpoint
        assert time.monotonic() - started < 5  # refused at the handshake, not a timeout
        # Nothing was written by the refused client: the key is still absent for us.
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=2.0)
        try:
            assert await store.get(f"/tls/refused/{client}") is None
        finally:
            await store.close()

    asyncio.run(main())


def test_etcd_http_endpoints_refuse_a_tls_client_without_a_certificate(etcd_server):
    context = ssl.create_default_context(cafile=str(etcd_server.certs.ca_cert))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"{etcd_server.url}/v3/kv/range", data=b'{"key": "Lw=="}', timeout=5,
                               context=context).read()
    context.load_cert_chain(str(etcd_server.certs.client_cert), str(etcd_server.certs.client_key))
    with urllib.request.urlopen(f"{etcd_server.url}/health", timeout=5, context=context) as answer:
        assert b'"true"' in answer.read()


# ------------------------------------------------------------------ the control service over TLS


def _serve_and_call(etcd_server, server_tls: ServerTls | None, credentials: grpc.ChannelCredentials | None,
                    *, listen: str = "127.0.0.1:0") -> list[str]:
    """Start the control service, call ListGroups once with ``credentials`` (None: plaintext); group names."""

    async def main() -> list[str]:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=2.0)
        server = await start(store, TABLE, listen=listen, tls=server_tls)
        target = f"127.0.0.1:{server.port}"
        channel = (grpc.aio.insecure_channel(target) if credentials is None
                   else grpc.aio.secure_channel(target, credentials))
        try:
            reply = await slb_pb2_grpc.SlbCoreStub(channel).ListGroups(pb.ListGroupsRequest(), metadata=AUTH,
                                                                       timeout=5)
            return [g.name for g in reply.groups]
        finally:
            await channel.close()
            await server.stop(0)
            await store.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def _server_tls(certs: CertBundle, client_ca: Path | None = None) -> ServerTls:
    tls = load_server_tls(certs.server_cert, certs.server_key, client_ca)
    assert tls is not None
    return tls


def test_control_over_tls_serves_a_client_that_trusts_its_ca(etcd_server):
    certs = etcd_server.certs
    groups = _serve_and_call(etcd_server, _server_tls(certs), _credentials(certs.ca_cert))
    assert isinstance(groups, list)


@pytest.mark.parametrize("client", ["plaintext", "trusts-stranger"])
def test_control_over_tls_fails_a_plaintext_client_and_one_trusting_another_ca(etcd_server, other_certs, client):
    credentials = None if client == "plaintext" else _credentials(other_certs.ca_cert)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _serve_and_call(etcd_server, _server_tls(etcd_server.certs), credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", ["no-cert", "stranger-cert"])
def test_control_with_a_client_ca_refuses_clients_without_its_certificate(etcd_server, other_certs, client):
    certs = etcd_server.certs
    credentials = (_credentials(certs.ca_cert) if client == "no-cert"
                   else _credentials(certs.ca_cert, other_certs.client_cert, other_certs.client_key))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _serve_and_call(etcd_server, _server_tls(certs, certs.ca_cert), credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and serves one with it.
    groups = _serve_and_call(etcd_server, _server_tls(certs, certs.ca_cert),
                             _credentials(certs.ca_cert, certs.client_cert, certs.client_key))
    assert isinstance(groups, list)


def test_control_refuses_plaintext_off_loopback(etcd_server):
    with pytest.raises(ValueError, match="not loopback: serving it needs TLS"):
        _serve_and_call(etcd_server, None, None, listen="0.0.0.0:0")


def test_server_tls_options_are_checked_naming_the_flag(tmp_path, other_certs):
    ours = make_certs(tmp_path / "ours")
    cases = [
        ((ours.server_cert, None, None), "--tls-cert needs --tls-key"),
        ((None, None, ours.ca_cert), "--tls-client-ca needs --tls-cert and --tls-key"),
        ((ours.server_cert, other_certs.server_key, None), f"--tls-key {other_certs.server_key}: does not match"),
        ((tmp_path / "missing.crt", ours.server_key, None), f"--tls-cert {tmp_path / 'missing.crt'}: no such file"),
        ((ours.server_cert, ours.server_key, ours.ca_key), f"--tls-client-ca {ours.ca_key}: no certificate in it"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            load_server_tls(*args)


# ------------------------------------------------------------------ console scripts end to end


def _run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def test_cnictl_against_tls_etcd_needs_the_client_certificate(etcd_server):
    cnictl = str(BIN / "cnictl")
    plain = _run(cnictl, "--etcd", etcd_server.endpoint, "--timeout", "2", "pool", "list", "--json")
    assert plain.returncode == 1
    assert plain.stderr.startswith(f"cnictl: error: etcd at {etcd_server.endpoint} unavailable")
    assert len(plain.stderr.strip().splitlines()) == 1
    with_cert = _run(cnictl, "--etcd", etcd_server.url, *etcd_server.client_args, "pool", "list", "--json")
    assert with_cert.returncode == 0, with_cert.stderr
    assert isinstance(__import__("json").loads(with_cert.stdout), list)


def test_leengine_control_serves_tls_against_tls_etcd(etcd_server, tmp_path, other_certs):
    certs = etcd_server.certs
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} ops admin\n")
    tokens.chmod(0o600)
    port = _free_port()
    log = tmp_path / "control.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "leengine-control"), "--tokens", str(tokens), "--etcd", etcd_server.endpoint,
                                 *etcd_server.client_args, "--listen", f"127.0.0.1:{port}",
                                 "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
                                stdout=out, stderr=subprocess.STDOUT)

    async def client() -> None:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", _credentials(certs.ca_cert)) as channel:
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    break
                except grpc.aio.AioRpcError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.1)
            # A call that reads etcd: the service reached the TLS etcd with its client certificate.
            groups = await slb_pb2_grpc.SlbCoreStub(channel).ListGroups(pb.ListGroupsRequest(), metadata=AUTH)
            assert isinstance(list(groups.groups), list)
        for credentials in (None, _credentials(other_certs.ca_cert)):
            target = f"127.0.0.1:{port}"
            channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(
                target, credentials)
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    try:
        asyncio.run(client())
    finally:
        proc.terminate()
        proc.wait(15)
    assert "TLS" in log.read_text()


def test_leengine_control_refuses_plaintext_off_loopback_in_one_line(etcd_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} ops admin\n")
    tokens.chmod(0o600)
    done = _run(str(BIN / "leengine-control"), "--tokens", str(tokens), "--etcd", etcd_server.endpoint,
                *etcd_server.client_args, "--listen", "0.0.0.0:50051")
    assert done.returncode == 2
    assert done.stderr.strip() == ("leengine-control: error: --listen 0.0.0.0 is not loopback: serving it needs TLS "
                                   "(--tls-cert and --tls-key), the bearer tokens would cross the network in clear")
