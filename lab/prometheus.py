"""A throwaway Prometheus server on loopback, for tests and the one-machine lab: scraping daemons, or a simulated run.

``running_prometheus(scrape={"job": ["127.0.0.1:9101"]}, rule_files=[...])`` starts Debian's
``prometheus`` on a free loopback port with a fresh storage directory and a generated
configuration (``scrape_interval`` and ``evaluation_interval`` 1 s), waits until
``/-/ready`` answers and yields a ``PrometheusServer``: ``query(promql, time=None)``,
``query_value``, ``query_range``, ``targets()``, ``wait_for_target_up()``, ``alerts()``,
``rules()`` over the HTTP API. On exit it stops the process and removes every file it made.

``load_openmetrics(file, storage)`` runs ``promtool tsdb create-blocks-from openmetrics``
(the simulator's series: ``sim.adapters.metrics.SimMetrics.openmetrics``) into a storage
directory, and ``prometheus_on_openmetrics(file)`` starts a server on such a storage, so
a test queries a simulated run with PromQL at its (virtual) times.

Invariants:

* Loopback only; never a shared Prometheus.
* A missing ``prometheus`` or ``promtool`` is an error, never a skip (``apt-get install
  prometheus``, or ``LEENGINE_PROMETHEUS_BIN`` / ``LEENGINE_PROMTOOL_BIN``).
* Retention is ``100y``: a simulated run's samples are stamped at the sim's epoch
  (2026-01-01) and Prometheus' default 15 days would delete blocks older than that at once.
* A query that Prometheus answers with an error raises ``PrometheusError`` with its message.

This module knows nothing about the Metrics port, the catalogue or any daemon: it runs
processes and speaks HTTP.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation.adapters.binaries import find_binary, log_tail
from lab.processes import running_service, stop_child

START_TIMEOUT = 30.0  # seconds for /-/ready (opening a storage of many blocks takes a while)
STOP_TIMEOUT = 10.0
RETENTION = "100y"


class PrometheusError(RuntimeError):
    """Prometheus refused a request (bad PromQL, ...) or could not start."""


def _find(env: str, name: str) -> str:
    return find_binary(name, env=env, hint="install Debian's prometheus package (apt-get install prometheus)")


def find_prometheus() -> str:
    """The prometheus binary: ``$LEENGINE_PROMETHEUS_BIN`` or ``prometheus`` on PATH."""
    return _find("LEENGINE_PROMETHEUS_BIN", "prometheus")


def find_promtool() -> str:
    """The promtool binary: ``$LEENGINE_PROMTOOL_BIN`` or ``promtool`` on PATH."""
    return _find("LEENGINE_PROMTOOL_BIN", "promtool")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_openmetrics(file: str | Path, storage: str | Path) -> Path:
    """Write the OpenMetrics ``file`` as TSDB blocks into ``storage`` (created if needed); returns it.

    promtool refuses samples out of timestamp order within a series, a file without ``# EOF``,
    and anything else that is not OpenMetrics: its one-line complaint is raised as ``PrometheusError``.
    """
    out = Path(storage)
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [find_promtool(), "tsdb", "create-blocks-from", "openmetrics", str(file), str(out)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise PrometheusError(
            f"promtool tsdb create-blocks-from openmetrics {file} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return out


class PrometheusServer:
    """One prometheus process: its URL and HTTP API. Use ``running_prometheus()`` to get one."""

    def __init__(self, binary: str, workdir: Path, *, scrape: Mapping[str, Sequence[str]] | None = None,
                 rule_files: Sequence[str | Path] = (), storage: Path | None = None,
                 scrape_interval: str = "1s", evaluation_interval: str = "1s") -> None:
        self.binary = binary
        self.workdir = workdir
        self.storage = storage if storage is not None else workdir / "data"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.scrape = {job: list(targets) for job, targets in (scrape or {}).items()}
        self.rule_files = [Path(f).resolve() for f in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ facts

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines, "prometheus")

    # ------------------------------------------------------------------ lifecycle

    def write_config(self) -> None:
        # JSON is YAML: no YAML emitter needed, and every string is quoted.
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.scrape.items()],
        }
        if self.rule_files:
            config["rule_files"] = [str(f) for f in self.rule_files]
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]

    def start(self) -> None:
        """Start prometheus on a fresh loopback port and wait until it is ready."""
        if self.running:
            return
        self.write_config()
        for attempt in range(3):  # a port taken between _free_port() and the bind: try another
            self.port = _free_port()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True)
            try:
                self._wait_ready()
                return
            except PrometheusError:
                exited = self._proc.poll() is not None
                self.stop()
                if not exited or attempt == 2:
                    raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with code {self._proc.returncode} while starting on "
                                      f"{self.address}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise PrometheusError(f"prometheus on {self.address} not ready after {START_TIMEOUT:.0f}s ({last}); "
                              f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_child(proc, STOP_TIMEOUT)

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises ``PrometheusError`` on an error answer)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30.0) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with Prometheus' reason in the body
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result: [{"metric": {labels}, "value": [ts, "v"]}, ...] (a scalar: one entry)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = f"{time:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_value(self, promql: str, time: float | None = None) -> float | None:
        """The one value of an instant query (None: empty result; more than one series is an error)."""
        result = self.query(promql, time)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql}: {len(result)} series, one expected: {[r['metric'] for r in result]}")
        return float(result[0]["value"][1])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's matrix: [{"metric": {labels}, "values": [[ts, "v"], ...]}, ...]."""
        data = self.api("query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, each with ``scrapeUrl``, ``health`` and ``lastError``."""
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_for_target_up(self, job: str | None = None, timeout: float = 30.0) -> None:
        """Wait until every active target (of ``job``) has been scraped successfully."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = [t for t in self.targets() if job is None or t.get("labels", {}).get("job") == job]
            if seen and all(t.get("health") == "up" for t in seen):
                return
            time.sleep(0.2)
        states = [(t.get("scrapeUrl"), t.get("health"), t.get("lastError")) for t in seen]
        configured = [a for j, targets in self.scrape.items() if job is None or j == job for a in targets]
        # Prometheus applies discovered targets every 5 s: "not listed yet" is a state of its own.
        raise PrometheusError(f"targets of {job or 'every job'} ({', '.join(configured) or 'none configured'}) "
                              f"not up after {timeout:.0f}s: {states or 'not listed yet'}")

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now, each with ``labels``, ``state`` and ``activeAt``."""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups with their rules' health and state."""
        return list(self.api("rules")["groups"])


@contextlib.contextmanager
def running_prometheus(scrape: Mapping[str, Sequence[str]] | None = None, *, rule_files: Sequence[str | Path] = (),
                       storage: str | Path | None = None, scrape_interval: str = "1s",
                       evaluation_interval: str = "1s") -> Iterator[PrometheusServer]:
    """Run a fresh prometheus on loopback for the duration of the block.

    ``scrape``: job name -> ``host:port`` targets (``/metrics`` on each). ``rule_files``: alert or
    recording rules to load. ``storage``: an existing TSDB directory to serve (kept on exit);
    default a fresh one, removed on exit with the rest of the server's files.
    """
    binary = find_prometheus()

    def make(workdir: Path) -> PrometheusServer:
        return PrometheusServer(binary, workdir, scrape=scrape, rule_files=rule_files,
                                storage=Path(storage) if storage is not None else None,
                                scrape_interval=scrape_interval, evaluation_interval=evaluation_interval)

    with running_service(make, prefix="leengine-prometheus-") as server:
        yield server


@contextlib.contextmanager
def prometheus_on_openmetrics(file: str | Path, *, rule_files: Sequence[str | Path] = ()) -> Iterator[PrometheusServer]:
    """Load an OpenMetrics file (a simulated run's series) and serve it: query it at the run's timestamps."""
    storage = Path(tempfile.mkdtemp(prefix="leengine-prometheus-tsdb-"))
    try:
        load_openmetrics(file, storage)
        with running_prometheus(rule_files=rule_files, storage=storage) as server:
            yield server
    finally:
        shutil.rmtree(storage, ignore_errors=True)
