"""A throwaway Docker registry on loopback (Debian's ``docker-registry``), for tests, benches and the lab.

``running_registry()`` writes a minimal config (filesystem storage in a fresh
directory, plain HTTP on a free 127.0.0.1 port, no auth), starts ``docker-registry
serve``, waits until ``/v2/`` answers, yields a ``Registry`` handle and, on exit, stops
the process and removes its files. ``running_registry(auth=RegistryAuth(...))`` writes
Distribution's ``auth: token: {realm, service, issuer, rootcertbundle}`` section instead: the
registry then answers 401 with a Bearer challenge and trusts only tokens signed by the key of
that certificate bundle (the control service's ``/token``, docs/registry.md); it is ready once
``/v2/`` answers that 401. A missing binary is an error, never a skip
(``apt-get install docker-registry``). It knows nothing of builds or the Builder port:
it runs a process and speaks the registry's HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.nginx import free_port
from lab.processes import stop_child

BINARY = "docker-registry"
START_TIMEOUT = 15.0


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class RegistryAuth:
    """Distribution's ``auth.token`` settings: where clients get tokens (``realm``, the control service's
    ``/token`` URL), the ``service`` (the tokens' ``aud``) and ``issuer`` (their ``iss``) it accepts, and the
    PEM bundle of the certificates whose keys may sign them."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path

    def section(self) -> dict[str, dict[str, str]]:
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.rootcertbundle)}}


@dataclass
class Registry:
    address: str  # host:port
    root: Path
    process: subprocess.Popen[bytes]

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (empty when it has none yet)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/{repository}/tags/list", timeout=5) as resp:
                return sorted(json.load(resp).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise


@contextlib.contextmanager
def running_registry(auth: RegistryAuth | None = None) -> Iterator[Registry]:
    binary = shutil.which(BINARY)
    if binary is None:
        raise RegistryError(f"{BINARY} is not installed (apt-get install docker-registry)")
    root = Path(tempfile.mkdtemp(prefix="leengine-registry-"))
    address = f"127.0.0.1:{free_port()}"
    config = root / "config.yml"
    # JSON is YAML: no YAML writer needed for five settings.
    settings: dict[str, object] = {"version": 0.1, "log": {"level": "info" if auth else "warn"},
                                   "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                                               "delete": {"enabled": True}},
                                   "http": {"addr": address}}
    if auth is not None:
        settings["auth"] = auth.section()
    config.write_text(json.dumps(settings))
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                    break
            except urllib.error.HTTPError as exc:
                if auth is not None and exc.code == 401:  # token auth: the challenge is the ready answer
                    break
                raise RegistryError(f"{BINARY} on {address} answered {exc.code} to /v2/") from None
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RegistryError(f"{BINARY} did not answer on {address}: "
                                        f"{(root / 'registry.log').read_text()[-500:]}") from None
                time.sleep(0.05)
        yield Registry(address, root, process)
    finally:
        stop_child(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


MATRIX_START = "<!-- registry matrix:"
MATRIX_END = "<!-- end of the registry matrix -->"


def read_matrix(text: str) -> dict[tuple[str, str, str], int]:
    """docs/registry.md's matrix: (caller, "public" | "private", action) -> the HTTP status the registry answers.
    The tests read it from the docs so the documented table is the tested one."""
    start = text.index(MATRIX_START)
    rows = [line for line in text[start:text.index(MATRIX_END, start)].splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in rows[0].strip("|").split("|")]
    columns = []
    for cell in head[1:]:
        action, _, rest = cell.partition(" (")
        columns.append((rest.rstrip(")"), action))
    matrix: dict[tuple[str, str, str], int] = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for (visibility, action), status in zip(columns, cells[1:], strict=True):
            matrix[(cells[0], visibility, action)] = int(status)
    return matrix
