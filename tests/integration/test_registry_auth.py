"""The registry trusts the platform's roles: real docker-registry (Distribution 2.8) with token auth, a real
leengine-control serving /token (--http-address), skopeo as the client, real etcd.

* every caller (anonymous, guest, reporter, developer, master, owner, admin) x {pull, push, delete} x
  {public, private group}: what skopeo gets from the registry is docs/registry.md's matrix (read from the
  docs: the documented table is the tested one);
* a membership removed: the next skopeo pull is refused at once; a token taken before the removal is
  refused by the registry within one token lifetime of the removal (lifetime 70 s here: exp is 10 s, and
  Distribution's 60 s leeway after exp is inside the lifetime);
* tokens signed by an unknown key, for another service (aud), from another issuer, expired or not yet
  valid (beyond the leeway) are refused by the registry itself (crafted with control.registry_tokens);
* the token endpoint's own refusals: a scope that does not parse, a foreign service (400), wrong
  credentials (401 with a Basic challenge); a robot inside and outside its scope, and revoked.

Images: a tiny OCI layout written here (one tar layer, a config per variant, manifests): no network, no
buildah. Each delete cell deletes its own manifest (a distinct config), so cells do not share digests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from control import registry_tokens as rt
from control.auth import Principal
from control.image_groups import ImageGroups
from control.members import Members, Resource
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from lab.registry import Registry, RegistryAuth, read_matrix, running_registry
from leengine.etcd_options import open_store
from leengine.registry_key_cmd import make_key_files
from tests.integration.test_platform_grpc import _free_port, _script

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
SERVICE, ISSUER = "leengine-registry", "leengine-control"
LIFETIME = 70  # seconds the registry honours a token (exp + its 60 s leeway): the shortest allowed
ROLES = ("guest", "reporter", "developer", "master", "owner")
SUFFIX = f"{os.getpid() % 100000}-{int(time.time()) % 100000}"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
SUCCESS = {"pull": 200, "push": 201, "delete": 202}


# --------------------------------------------------------------------------- an OCI layout, by hand


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def oci_layout(root: Path, variants: list[str]) -> None:
    """An OCI image layout at ``root`` with one manifest per variant (tag = the variant), sharing one layer:
    configs differ by a label, so every variant has its own manifest digest."""
    root.mkdir(parents=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        content = b"hello from a hand-made layer\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(content), 1_700_000_000, 0o644
        tar.addfile(info, io.BytesIO(content))
    layer = buffer.getvalue()
    layer_digest, layer_size = _blob(root, layer)
    manifests = []
    for variant in variants:
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"variant": variant}},
                             "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
        config_digest, config_size = _blob(root, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": layer_size}]}).encode()
        digest, size = _blob(root, manifest)
        manifests.append({"mediaType": MANIFEST_TYPE, "digest": digest, "size": size,
                          "annotations": {"org.opencontainers.image.ref.name": variant}})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


# --------------------------------------------------------------------------- the set-up


@dataclass
class Setup:
    tmp: Path
    registry: Registry
    token_url: str
    key: rt.SigningKey
    tokens: dict[str, str]  # user -> bearer token
    groups: dict[str, str]  # "public" | "private" -> group name
    layout: Path
    env: dict[str, str]
    users: dict[str, str]  # caller row of the matrix -> user name ("" for anonymous)
    etcd: object  # the session's etcd (endpoint, client_tls)

    def skopeo(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["skopeo", "--debug", *args], capture_output=True, text=True, timeout=120,
                              env=self.env, check=False)

    def creds(self, user: str, which: str = "") -> list[str]:
        flag = f"--{which}creds" if which else "--creds"
        if not user:
            return [f"--{which}no-creds"] if which else ["--no-creds"]
        return [flag, f"{user}:{self.tokens[user]}"]

    def image(self, visibility: str, name: str, tag: str) -> str:
        return f"docker://{self.registry.address}/{self.groups[visibility]}/{name}:{tag}"

    def push(self, user: str, visibility: str, name: str, variant: str) -> subprocess.CompletedProcess[str]:
        return self.skopeo(user, "copy", "--dest-tls-verify=false", *self.creds(user, "dest-"),
                           f"oci:{self.layout}:{variant}", self.image(visibility, name, variant))

    def pull(self, user: str, visibility: str, name: str, tag: str) -> subprocess.CompletedProcess[str]:
        out = self.tmp / f"pulled-{time.monotonic_ns()}"
        try:
            return self.skopeo(user, "copy", "--src-tls-verify=false", *self.creds(user, "src-"),
                               self.image(visibility, name, tag), f"oci:{out}:x")
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def delete(self, user: str, visibility: str, name: str, tag: str) -> subprocess.CompletedProcess[str]:
        return self.skopeo(user, "delete", "--tls-verify=false", *self.creds(user), self.image(visibility, name, tag))

    def token(self, user: str, *scopes: str, service: str = SERVICE, password: str | None = None,
              ) -> tuple[int, dict[str, object], dict[str, str]]:
        query = urllib.parse.urlencode([("service", service), *(("scope", s) for s in scopes)])
        headers = {}
        if user:
            pair = f"{user}:{self.tokens.get(user, '') if password is None else password}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        request = urllib.request.Request(f"{self.token_url}?{query}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.load(resp), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)

    def registry_get(self, token: str, path: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://{self.registry.address}{path}",
                                         headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, ""
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("WWW-Authenticate", "")


# What skopeo's fatal line says when the registry refused the action's own request with 401 (Distribution's
# token auth answers a missing action with 401 insufficient_scope): the request it names, and UNAUTHORIZED.
REFUSED = {"pull": re.compile(r"reading manifest .*(unauthorized|HTTP 401)", re.S | re.I),
           "push": re.compile(r"(checking whether a blob|initiating layer upload|writing manifest|uploading manifest)"
                              r".*(unauthorized|HTTP 401)", re.S | re.I),
           "delete": re.compile(r"Failed to delete .*(UNAUTHORIZED|401 Unauthorized)", re.S)}


def outcome(done: subprocess.CompletedProcess[str], action: str) -> int:
    """The HTTP status of the action's own request: the documented success code when skopeo succeeded, 401 when
    its fatal error is the registry's 401 to that request, -1 for anything else (a failure of another kind)."""
    if done.returncode == 0:
        return SUCCESS[action]
    start = done.stderr.rfind("level=fatal")
    return 401 if start >= 0 and REFUSED[action].search(done.stderr[start:]) else -1


@pytest.fixture(scope="module")
def setup(tmp_path_factory, etcd_server) -> Iterator[Setup]:  # type: ignore[no-untyped-def]
    if shutil.which("skopeo") is None:
        raise RuntimeError("skopeo is not installed (apt-get install skopeo; scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("registry-auth")
    key_path, cert_path, _ = make_key_files(tmp / "keys")
    users = {role: f"{role}-{SUFFIX}" for role in ROLES}
    users.update({"admin": f"ops-{SUFFIX}", "anonymous": "", "revoked": f"leaver-{SUFFIX}"})
    tokens = {name: hashlib.sha256(f"{name}-token".encode()).hexdigest() for name in users.values() if name}
    tokens_file = tmp / "tokens"
    tokens_file.write_text("".join(f"{tok} {name} {'admin' if name == users['admin'] else 'user'}\n"
                                   for name, tok in tokens.items()))
    tokens_file.chmod(0o600)
    http_port = _free_port()
    token_url = f"http://127.0.0.1:{http_port}/token"
    groups = {"public": f"pub-{SUFFIX}", "private": f"priv-{SUFFIX}"}

    async def prepare() -> None:
        store = await open_store(etcd_server.endpoint, etcd_server.client_tls, timeout=5.0)
        try:
            runtime = AsyncioRuntime()
            owner = Principal(users["owner"], "user")
            members = Members(store, runtime)
            for visibility, group in groups.items():
                await ImageGroups(store, runtime).create(owner, group, public=visibility == "public",
                                                         request_id=f"create-{group}")
                for role in ("guest", "reporter", "developer", "master"):
                    await members.add(owner, Resource("image_group", group), users[role], role,
                                      request_id=f"add-{group}-{role}")
            await members.add(owner, Resource("image_group", groups["private"]), users["revoked"], "reporter",
                              request_id="add-leaver")
        finally:
            await store.close()

    asyncio.run(prepare())
    layout = tmp / "layout"
    oci_layout(layout, ["base", "del-robot", *(f"del-{row}" for row in users), *(f"push-{row}" for row in users)])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "XDG_RUNTIME_DIR": str(tmp),
           "REGISTRY_AUTH_FILE": str(tmp / "auth.json"), "TMPDIR": str(tmp)}
    (tmp / "auth.json").write_text("{}")
    command = [*_script("leengine-control", "leengine.control_server"), "--tokens", str(tokens_file),
               "--etcd", etcd_server.endpoint, *etcd_server.client_args, "--listen", f"127.0.0.1:{_free_port()}",
               "--http-address", f"127.0.0.1:{http_port}", "--registry-key", str(key_path),
               "--registry-cert", str(cert_path), "--registry-token-lifetime", str(LIFETIME),
               "--reconcile-seconds", "3600"]
    log = (tmp / "control.log").open("w")
    control = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{token_url}?service={SERVICE}", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                assert control.poll() is None, (tmp / "control.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "leengine-control's /token did not answer in 60 s"
                time.sleep(0.2)
        auth = RegistryAuth(token_url, SERVICE, ISSUER, cert_path)
        with running_registry(auth=auth) as registry:
            here = Setup(tmp, registry, token_url, rt.SigningKey.from_pem(key_path.read_bytes()), tokens, groups,
                         layout, env, users, etcd_server)
            for visibility in groups:
                done = here.push(users["admin"], visibility, "app", "base")
                assert done.returncode == 0, done.stderr[-2000:]
            yield here
    finally:
        control.terminate()
        try:
            control.wait(timeout=10)
        except subprocess.TimeoutExpired:
            control.kill()
            control.wait()
        log.close()


MATRIX = read_matrix((ROOT / "docs" / "registry.md").read_text())


def test_the_matrix_through_skopeo(setup: Setup) -> None:
    """Every documented cell, run with skopeo against the real registry; all cells checked, then compared."""
    seen: dict[tuple[str, str, str], int] = {}
    details: dict[tuple[str, str, str], str] = {}
    for (row, visibility, action), _ in sorted(MATRIX.items()):
        user = setup.users[row]
        if action == "pull":
            done = setup.pull(user, visibility, "app", "base")
        elif action == "push":
            done = setup.push(user, visibility, "app", f"push-{row}")
        else:
            made = setup.push(setup.users["admin"], visibility, "app", f"del-{row}")
            assert made.returncode == 0, made.stderr[-1500:]
            done = setup.delete(user, visibility, "app", f"del-{row}")
        seen[(row, visibility, action)] = outcome(done, action)
        details[(row, visibility, action)] = done.stderr.strip().splitlines()[-1:][0] if done.stderr.strip() else ""
    wrong = {cell: (MATRIX[cell], seen[cell], details[cell][-300:]) for cell in MATRIX if seen[cell] != MATRIX[cell]}
    assert not wrong, wrong
    assert len(seen) == 42
    # What the registry holds afterwards, read as admin: pushed tags exist exactly where pushes were allowed,
    # deleted manifests are gone exactly where deletes were allowed.
    for visibility, group in setup.groups.items():
        status, body, _ = setup.token(setup.users["admin"], f"repository:{group}/app:pull")
        assert status == 200
        for row in sorted({row for row, _, _ in MATRIX}):
            pushed = setup.registry_get(str(body["token"]), f"/v2/{group}/app/manifests/push-{row}")[0]
            kept = setup.registry_get(str(body["token"]), f"/v2/{group}/app/manifests/del-{row}")[0]
            assert pushed == (200 if MATRIX[(row, visibility, "push")] == 201 else 404), (row, visibility, pushed)
            assert kept == (404 if MATRIX[(row, visibility, "delete")] == 202 else 200), (row, visibility, kept)


def test_revoked_membership_loses_access(setup: Setup) -> None:
    user = setup.users["revoked"]
    assert setup.pull(user, "private", "app", "base").returncode == 0
    status, body, _ = setup.token(user, f"repository:{setup.groups['private']}/app:pull")
    assert status == 200
    held = str(body["token"])
    manifest = f"/v2/{setup.groups['private']}/app/manifests/base"
    assert setup.registry_get(held, manifest)[0] == 200
    claims = rt.decode(held, {setup.key.kid: setup.key.public}, issuer=ISSUER, audience=SERVICE, now=time.time())
    assert claims.expires - claims.issued == LIFETIME - rt.REGISTRY_LEEWAY

    async def remove() -> None:
        etcd = setup.etcd
        store = await open_store(etcd.endpoint, etcd.client_tls, timeout=5.0)  # type: ignore[attr-defined]
        try:
            await Members(store, AsyncioRuntime()).remove(Principal(setup.users["owner"], "user"),
                                                          Resource("image_group", setup.groups["private"]), user,
                                                          request_id="remove-leaver")
        finally:
            await store.close()

    asyncio.run(remove())
    removed_at = time.time()
    refused = setup.pull(user, "private", "app", "base")
    assert outcome(refused, "pull") == 401, refused.stderr[-1500:]
    status, body, _ = setup.token(user, f"repository:{setup.groups['private']}/app:pull")
    assert status == 200 and body["token"]
    fresh = rt.decode(str(body["token"]), {setup.key.kid: setup.key.public}, issuer=ISSUER, audience=SERVICE,
                      now=time.time())
    assert fresh.access == (rt.Grant("repository", f"{setup.groups['private']}/app", ()),)
    # The held token: honoured until exp + the registry's leeway = its issue + the lifetime; refused after.
    time.sleep(max(0.0, claims.expires + rt.REGISTRY_LEEWAY + 2 - time.time()))
    code, challenge = setup.registry_get(held, manifest)
    assert code == 401 and 'error="invalid_token"' in challenge, (code, challenge)
    assert time.time() - removed_at <= LIFETIME + 5  # within one token lifetime of the removal


def test_bad_tokens_are_refused_by_the_registry(setup: Setup) -> None:
    path = f"/v2/{setup.groups['private']}/app/manifests/base"
    grant = [rt.Grant("repository", f"{setup.groups['private']}/app", ("pull",))]
    now = time.time()

    def make(key: rt.SigningKey = setup.key, **overrides: object) -> str:
        args: dict[str, object] = {"issuer": ISSUER, "audience": SERVICE, "subject": setup.users["admin"],
                                   "access": grant, "now": now, "jti": "a" * 32, "lifetime": 300}
        args.update(overrides)
        return rt.mint(key, **args).token  # type: ignore[arg-type]

    assert setup.registry_get(make(), path)[0] == 200  # the control: a good token works
    unknown = rt.SigningKey.from_private(ec.generate_private_key(ec.SECP256R1()))
    refused = {
        "unknown key": make(unknown),
        "unknown key claiming our kid": make(rt.SigningKey(unknown.private, setup.key.kid)),
        "another aud": make(audience="another-registry"),
        "another iss": make(issuer="someone-else"),
        "expired beyond the leeway": make(now=now - 300 - rt.REGISTRY_LEEWAY - 5),
        "not yet valid beyond the leeway": make(now=now + rt.REGISTRY_LEEWAY + 30),
    }
    answers = {case: setup.registry_get(token, path) for case, token in refused.items()}
    assert all(code == 401 and 'error="invalid_token"' in header for code, header in answers.values()), answers
    # A good token without the action is refused for insufficient scope.
    code, header = setup.registry_get(make(access=[]), path)
    assert code == 401 and 'error="insufficient_scope"' in header


def test_token_endpoint_refusals(setup: Setup) -> None:
    private = f"repository:{setup.groups['private']}/app:pull"
    admin = setup.users["admin"]
    status, body, _ = setup.token(admin, private)
    assert status == 200 and set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["expires_in"] == LIFETIME - rt.REGISTRY_LEEWAY and body["token"] == body["access_token"]
    for scope in ("repository:NotAGroup/app:pull", "repository:g/app:fly", "blob:g/app:pull", "repository:g:pull"):
        status, body, _ = setup.token(admin, scope)
        assert status == 400, (scope, status, body)
    status, body, _ = setup.token(admin, private, service="another-registry")
    assert status == 400 and "service" in json.dumps(body)
    for user, password in ((admin, "wrong-token-0123456789"), (setup.users["developer"], setup.tokens[admin]),
                           ("nobody", "x" * 20), ("robot$ghost", "f" * 32), ("build$shop@" + "a" * 40, "b" * 32)):
        status, body, headers = setup.token(user, private, password=password)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic realm="), (user, status)
    # Anonymous and partial grants are answers, not errors.
    status, body, _ = setup.token("", private, f"repository:{setup.groups['public']}/app:pull,push")
    claims = rt.decode(str(body["token"]), {setup.key.kid: setup.key.public}, issuer=ISSUER, audience=SERVICE,
                       now=time.time())
    assert status == 200 and [g.actions for g in claims.access] == [(), ("pull",)]


def test_a_robot_inside_and_outside_its_scope_then_revoked(setup: Setup) -> None:
    """A robot (pull,push on the private group) pushes and pulls there with skopeo, pulls the public group as
    anyone, cannot push to the public group nor delete in its own; revoked, its next token request is 401."""
    from control.robots import Robots

    owner = Principal(setup.users["owner"], "user")
    name = f"ci-{SUFFIX}"

    async def robots(call: str) -> str:
        etcd = setup.etcd
        store = await open_store(etcd.endpoint, etcd.client_tls, timeout=5.0)  # type: ignore[attr-defined]
        try:
            bots = Robots(store, AsyncioRuntime())
            if call == "create":
                _, secret = await bots.create(owner, name, Resource("image_group", setup.groups["private"]),
                                              ["pull", "push"], request_id="robot-create")
                return secret
            await bots.revoke(owner, name, request_id="robot-revoke")
            return ""
        finally:
            await store.close()

    user = f"robot${name}"
    setup.tokens[user] = asyncio.run(robots("create"))
    assert outcome(setup.push(user, "private", "bot", "base"), "push") == 201
    assert outcome(setup.pull(user, "private", "bot", "base"), "pull") == 200
    assert outcome(setup.pull(user, "public", "app", "base"), "pull") == 200  # public: anyone
    assert outcome(setup.push(user, "public", "bot", "base"), "push") == 401  # outside its scope
    made = setup.push(setup.users["admin"], "private", "bot", "del-robot")
    assert made.returncode == 0, made.stderr[-1500:]
    assert outcome(setup.delete(user, "private", "bot", "del-robot"), "delete") == 401  # robots never delete
    asyncio.run(robots("revoke"))
    status, _, headers = setup.token(user, f"repository:{setup.groups['private']}/bot:pull")
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    refused = setup.pull(user, "private", "bot", "base")
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-1500:]
