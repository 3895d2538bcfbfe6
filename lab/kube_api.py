"""One lab Cell's Kubernetes API as a process: ``python -m lab.kube_api --listen IP:PORT --cell NAME``.

It serves ``lab/kube_mock.py``'s API (pods and nodes with validated writes, the endpoints
controller, list + watch with resource versions and 410 Gone) on ``IP:PORT`` until SIGTERM
or SIGINT, then closes every watch and connection and exits 0. It holds its state in
memory only: a restarted API starts empty (the lab kubelets report their pods again).
``--cell`` and ``--lab-id`` only name the process in its log lines (one API per Cell, the
lab's processes carry their lab's id); the lab runs it in the Cell's API host netns so
cutting the Cell's fabric cuts it off.

Exit codes: 0 after a signal, 2 for a bad option or an address it cannot listen on.
It must not know the lab's topology or any agent.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

from lab.kube_mock import KubeApiMock
from lab.kube_objects import is_dns_label

log = logging.getLogger("leengine.lab.kube_api")


def listen_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` (IPv4) → (ip, port); argparse turns the ValueError into a one-line usage error."""
    host, sep, port = text.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IPv4:PORT") from None
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IPv4:PORT with a port of 0-65535")
    return str(ip), int(port)


def _label(text: str) -> str:
    if not is_dns_label(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS label")
    return text


def _lab_id(text: str) -> str:
    if len(text) != 4 or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a lab id is 4 lowercase hex digits")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.kube_api", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, type=listen_address, help="IPv4:PORT to serve /api/v1 on")
    p.add_argument("--cell", required=True, type=_label, help="the Cell this API belongs to (log lines)")
    p.add_argument("--lab-id", type=_lab_id, default="", help="the lab's id (log lines)")
    p.add_argument("--history", type=int, default=50000,
                   help="changes kept for watches; older versions get 410 Gone (default 50000)")
    p.add_argument("--endpoints-port", type=int, default=80, help="the port Endpoints list (default 80)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.history <= 10_000_000 or not 1 <= args.endpoints_port <= 65535:
        print("python -m lab.kube_api: error: --history must be 1-10000000, --endpoints-port 1-65535",
              file=sys.stderr)
        return 2
    host, port = args.listen
    api = KubeApiMock(host=host, history=args.history, endpoints_port=args.endpoints_port)
    try:
        url = api.start(port)
    except OSError as exc:
        print(f"python -m lab.kube_api: error: --listen {host}:{port}: cannot listen there ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    who = f"lab {args.lab_id} " if args.lab_id else ""
    log.info("%sCell %s: Kubernetes API serving on %s", who, args.cell, url)
    while not stop.wait(3600):
        pass
    log.info("%sCell %s: stopping (resource version %s)", who, args.cell, api.resource_version)
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
