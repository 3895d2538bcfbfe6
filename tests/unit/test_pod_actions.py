"""The lab's pod actions read the runtime's answer to ``run``: a pod the runtime already ran (a retried run
after a lost answer) is no new ADD, and the controller must not count its 0 s as an ADD's latency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from lab.controller import LabPod
from lab.pod_actions import RuntimePods


class _Plan:
    def __init__(self, path: Path) -> None:
        self.path = path

    def runtime_socket(self, node: str) -> Path:
        return self.path


async def _answering(path: Path, answer: dict[str, Any]) -> asyncio.base_events.Server:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(one, path=str(path))


def _run_pod(tmp_path: Path, answer: dict[str, Any]):
    async def main():
        sock = tmp_path / "runtime.sock"
        server = await _answering(sock, answer)
        try:
            pods = RuntimePods(_Plan(sock), store=None)  # type: ignore[arg-type]  # run_pod reads no store
            pod = LabPod(app="shop", cell="c1", name="shop-1", uid="u1", container_id="c" * 64, node="c1-n001")
            return await pods.run_pod("c1-n001", pod, 0.0)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_a_new_pod_is_an_add_and_a_pod_already_running_is_not(tmp_path):
    made = _run_pod(tmp_path, {"ok": True, "ip": "10.1.0.5", "add_seconds": 0.084, "add_in_flight": 3})
    assert (made.ip, made.add_seconds, made.add_in_flight, made.existing) == ("10.1.0.5", 0.084, 3, False)
    again = _run_pod(tmp_path, {"ok": True, "ip": "10.1.0.5", "add_seconds": 0.0, "existing": True})
    assert again.existing and again.ip == "10.1.0.5"
    odd = _run_pod(tmp_path, {"ok": True, "ip": "10.1.0.5", "add_seconds": 0.0, "existing": "yes"})
    assert not odd.existing  # only a JSON true says so
