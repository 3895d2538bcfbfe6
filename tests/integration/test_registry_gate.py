"""The registry gate end to end: ``leengine registry-gate`` in front of a real ``docker-registry``, ``skopeo`` pushing.

A tag is pushed once; the same image again under it is accepted (idempotent); another image under it is
refused with 403 and Distribution's DENIED body (skopeo fails saying so) and the tag still names the first
image; a new tag and pulls through the gate work, blobs included. Needs docker-registry and skopeo (Debian);
a missing one fails the test.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.nginx import free_port
from lab.processes import stop_child
from lab.registry import running_registry

LEENGINE = Path(sys.executable).parent / "leengine"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def oci_layout(root: Path, text: str) -> Path:
    """A one-layer OCI image layout at ``root`` (tag ``latest``) whose only file says ``text``."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "config": {}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": blob(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": blob(layer), "size": len(layer)}]}).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, "digest": blob(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return root


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (apt-get install skopeo)")
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)


def digest_of(address: str, name: str, tag: str) -> str | None:
    request = urllib.request.Request(f"http://{address}/v2/{name}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


@pytest.fixture
def gate(tmp_path):
    with running_registry() as registry:
        listen = f"127.0.0.1:{free_port()}"
        log = (tmp_path / "gate.log").open("wb")
        proc = subprocess.Popen([str(LEENGINE), "registry-gate", "--listen", listen,
                                 "--upstream", f"http://{registry.address}", "--log-level", "info"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://{listen}/v2/", timeout=1):
                        break
                except (urllib.error.URLError, OSError):
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gate.log").read_text()
                    time.sleep(0.1)
            yield listen, registry, tmp_path / "gate.log"
        finally:
            stop_child(proc)
            log.close()


def test_a_tag_holds_its_first_image_and_pushes_of_another_are_refused(gate, tmp_path):
    listen, registry, log = gate
    first, second = oci_layout(tmp_path / "one", "first image"), oci_layout(tmp_path / "two", "second image")
    tag = "c" * 40
    dest = f"docker://{listen}/shop/shop:{tag}"
    pushed = skopeo("copy", "--dest-tls-verify=false", f"oci:{first}:latest", dest)
    assert pushed.returncode == 0, pushed.stderr
    held = digest_of(registry.address, "shop/shop", tag)
    assert held is not None and held == digest_of(listen, "shop/shop", tag)  # HEAD through the gate too

    again = skopeo("copy", "--dest-tls-verify=false", f"oci:{first}:latest", dest)  # the same image: idempotent
    assert again.returncode == 0, again.stderr

    moved = skopeo("copy", "--dest-tls-verify=false", f"oci:{second}:latest", dest)
    assert moved.returncode != 0
    assert "denied" in moved.stderr.lower() and f"tag shop/shop:{tag} is immutable" in moved.stderr, moved.stderr
    assert digest_of(registry.address, "shop/shop", tag) == held

    # The gate's own answer to a raw PUT: 403, Distribution's error body.
    body = (second / "index.json").read_bytes()  # any bytes with another digest
    request = urllib.request.Request(f"http://{listen}/v2/shop/shop/manifests/{tag}", data=body, method="PUT",
                                     headers={"Content-Type": MANIFEST})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["errors"][0]["code"] == "DENIED"

    # Another tag takes the second image; pulls (manifest and blobs) go through the gate.
    other = skopeo("copy", "--dest-tls-verify=false", f"oci:{second}:latest", f"docker://{listen}/shop/shop:{'d' * 40}")
    assert other.returncode == 0, other.stderr
    # The second image's manifest (its blobs are in the registry now) PUT under the first tag by a path that reaches
    # the tag only once its dot segments are resolved: refused like the plain path, the tag keeps its image.
    second_manifest = json.loads((second / "index.json").read_text())["manifests"][0]["digest"]
    manifest_body = (second / "blobs" / "sha256" / second_manifest.removeprefix("sha256:")).read_bytes()
    host, _, port = listen.rpartition(":")
    for path in (f"/v2/shop/./shop/manifests/{tag}", f"/v2/shop/x/../shop/manifests/{tag}"):
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("PUT", path, body=manifest_body, headers={"Content-Type": MANIFEST})
        answer = connection.getresponse()
        assert answer.status == 403, (path, answer.status, answer.read()[:300])
        connection.close()
    assert digest_of(registry.address, "shop/shop", tag) == held
    pulled = skopeo("copy", "--src-tls-verify=false", dest, f"oci:{tmp_path / 'pulled'}:latest")
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(registry.tags("shop/shop")) == ["c" * 40, "d" * 40]
    assert "manifest PUT refused" in log.read_text()
