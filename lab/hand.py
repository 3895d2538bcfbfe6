"""``leengine lab fault KIND``: one fault of lab/faults.py applied by hand to a running lab, and undone.

The same table as ``leengine lab run`` (``lab.faults.FAULTS``: the same real counterparts, the
same target selection over ``sim.targets``), applied now instead of on a schedule, with
``HandLab``: lab/run.py's ``LiveLab`` without a run around it. Nobody plays the scenario's
controller here: the lab's persistent controller (``python -m lab.controller``) sees a crashed
host, a dead runtime or a dead pod by itself and heals, and its cnictl cron releases the
leaked addresses; so the hooks that tell a run's controller (``node_down``, ``cell_out``, ...)
do nothing, and a crashed host's pods are the ones its runtime listed just before it died.

What a fault broke is written to ``DIR/faults/<kind>.json`` (atomically) as soon as it is
applied, so ``--undo`` mends it later from another process (or after this one was
interrupted during ``--duration``); the file goes once the undo is done. Kinds without an
undo (``reload-storm``) run to their end in the foreground.

It must not know the checks or the report; targets are checked against the scenario's
target universe before anything is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from cni.ipam import Ipam
from cni.pools import Handle, InvalidRecord
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.ports.store import Store
from lab.faults import FAULTS, broken_from_json, broken_to_json, describe
from lab.observe import EtcdAudit
from lab.run import ControlAdmin, LiveLab, Squatter, _kill_netns_processes, _run
from sim.spec import FAULT_KINDS, FaultKind, FaultSpec, RegionSpec, Selector
from sim.targets import target_universe


class HandFaultError(RuntimeError):
    """The fault cannot be applied or undone (one line for the command)."""


class HandFaultInput(HandFaultError):
    """Bad input: an unknown kind or target, a missing parameter, nothing to undo."""


class HandLab(LiveLab):
    """``LabOps`` for a fault applied by hand: no run's controller, no client load, no audit running."""

    def __init__(self, spec: RegionSpec, lab: Any, store: Store, control: Any) -> None:
        runtime = AsyncioRuntime(random.randrange(1 << 30))
        super().__init__(spec, lab, store, control, runtime, EtcdAudit(store))
        self.squatters = int(time.time()) % 1_000_000  # squatters' container ids differ from earlier hands'
        self._listed: dict[str, list[str]] = {}

    def node_alive(self, node: str) -> bool:
        return True

    async def kill_node_processes(self, node: str) -> None:
        self._listed[node] = [str(p.get("name")) for p in await self.list_pods(node) or [] if p.get("alive", True)]
        await super().kill_node_processes(node)

    async def kill_pods_hard(self, node: str) -> list[str]:
        """What the runtime listed before it was killed: their httpd SIGKILLed, netns deleted, no CNI DEL."""
        pods = self._listed.pop(node, [])
        for pod in pods:
            await _kill_netns_processes(self.plan.pod_netns(pod))
            await _run("ip", "netns", "delete", self.plan.pod_netns(pod))
        return pods

    # The lab's controller looks for itself: nothing to tell.
    def node_down(self, node: str, pods: list[str]) -> None: ...
    def node_up(self, node: str) -> None: ...
    def runtime_down(self, node: str, pods: list[str]) -> None: ...
    def runtime_up(self, node: str) -> None: ...
    def cell_out(self, cell: str, out: bool) -> None: ...
    def host_lost(self, host: str) -> bool:
        return False

    def clients_use_host(self, host: str, use: bool) -> None: ...

    async def allocated(self, pool: str) -> int:
        """Counted from etcd's handles in the pool's CIDR (no audit runs here)."""
        spec_pool = next(p for c in self.spec.cells for p in c.pools if p.name == pool)
        network = ipaddress.ip_network(spec_pool.cidr)
        count = 0
        for kv in (await self.store.range("/ipam/handles/")).kvs:
            with contextlib.suppress(InvalidRecord, ValueError):
                count += ipaddress.ip_address(Handle.from_bytes(kv.value).address) in network
        return count


# ------------------------------------------------------------------ the fault record


def record_path(directory: Path, kind: str) -> Path:
    if kind not in FAULT_KINDS:
        raise HandFaultInput(f"unknown fault kind {kind[:40]!r} (one of: {', '.join(FAULT_KINDS)})")
    return directory / "faults" / f"{kind}.json"


def save_record(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def load_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HandFaultInput(f"no {path.stem} fault applied by hand on this lab ({path} is missing)") from None
    except ValueError as exc:
        raise HandFaultError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != path.stem:
        raise HandFaultError(f"{path}: not a {path.stem} fault record")
    return data


# ------------------------------------------------------------------ the fault


def fault_spec(spec: RegionSpec, kind: str, targets: list[str], *, duration: float | None, factor: float | None,
               changes: int | None, pool: str, free: int, group: str) -> FaultSpec:
    """The ``FaultSpec`` of the command line, its targets checked against the scenario's universe."""
    if kind not in FAULT_KINDS:
        raise HandFaultInput(f"unknown fault kind {kind[:40]!r} (one of: {', '.join(FAULT_KINDS)})")
    if kind == "bad-version":  # its app, version and rate have no options here
        raise HandFaultInput("bad-version is not applied by hand: deploy the version with "
                             "`leengine app deploy APP --env LEENGINE_ERROR_RATE=0.2` (docs/lab.md)")
    if kind in ("reload-storm", "nginx-host-loss") and not group:
        group = spec.groups[0].name if len(spec.groups) == 1 else ""
        if not group:
            raise HandFaultInput(f"{kind} needs --group (one of: {', '.join(g.name for g in spec.groups)})")
    if kind == "pool-exhaustion":
        pools = [p.name for c in spec.cells for p in c.pools]
        if pool not in pools:
            raise HandFaultInput(f"pool-exhaustion needs --pool (one of: {', '.join(pools)})")
    fault = FaultSpec(cast(FaultKind, kind), at=0.0, duration=duration, target=Selector(names=tuple(targets)),
                      pool=pool, free=free, group=group)
    if factor is not None:
        fault = replace(fault, factor=factor)
    if changes is not None:
        fault = replace(fault, changes=changes)
    universe = [name for name, _ in target_universe(kind, spec.cells, spec.groups, spec.apps, fault.group,
                                                    spec.build_hosts)]
    unknown = [t for t in targets if t not in universe]
    if unknown:
        raise HandFaultInput(f"{kind}: no target named {', '.join(unknown)[:200]} (targets: "
                             f"{', '.join(universe[:30])}{' ...' if len(universe) > 30 else ''})")
    if not targets:
        fault = replace(fault, target=Selector())
    return fault


async def apply_fault(ops: HandLab, fault: FaultSpec, path: Path) -> Any:
    """Apply now; the record of what broke is written before returning (storms: run to their end)."""
    if path.exists():
        raise HandFaultInput(f"a {fault.kind} fault is already applied by hand ({path}): "
                             f"`leengine lab fault {fault.kind} --undo` first")
    broken = await FAULTS[fault.kind].apply(ops, fault, random.Random())
    if isinstance(broken, asyncio.Task):  # reload-storm: no undo, the changes run to their end
        return await broken
    data = broken_to_json(broken)
    if isinstance(broken, Squatter):
        data = {"squatter": ops.squatters, "taken": list(broken.taken)}
    save_record(path, {"kind": fault.kind, "broken": data, "applied_at": time.time(),
                       "duration": fault.duration})
    return broken


async def undo_fault(ops: HandLab, kind: str, path: Path) -> Any:
    record = load_record(path)
    undo = FAULTS[kind].undo
    if undo is None:
        path.unlink()
        return None
    data = record.get("broken")
    if kind == "pool-exhaustion":
        if not isinstance(data, dict) or not isinstance(data.get("taken"), list):
            raise HandFaultError(f"{path}: no squatter recorded")
        ipam = Ipam(ops.store, ops.runtime, f"squatter-{int(data.get('squatter', 0))}", cooldown=ops.spec.cooldown)
        broken: Any = Squatter(ipam, [str(c) for c in data["taken"]])
    else:
        try:
            broken = broken_from_json(kind, data)
        except ValueError as exc:
            raise HandFaultError(f"{path}: {exc}") from None
    await undo(ops, broken)
    path.unlink()
    return broken


async def hand_fault(lab: Any, spec: RegionSpec, kind: str, targets: list[str], *, duration: float | None,
                     undo: bool, factor: float | None = None, changes: int | None = None, pool: str = "",
                     free: int = 0, group: str = "", say: Any = print) -> None:
    """The command's work: apply (and, with ``duration``, undo after it), or undo what was applied."""
    from lab import services
    from leengine.etcd_options import EtcdClientTls, open_store

    path = record_path(Path(lab.plan.dir), kind)
    fault = None if undo else fault_spec(spec, kind, targets, duration=duration, factor=factor, changes=changes,
                                         pool=pool, free=free, group=group)
    certs = services.files(lab).certs
    tls = EtcdClientTls(Path(certs.ca_cert), Path(certs.client_cert), Path(certs.client_key))
    store = await open_store(services.etcd_endpoint(lab.plan, "cnictl"), tls, timeout=5.0)
    control = ControlAdmin(lab.plan.control_address, services.admin_token(lab), certs.ca_cert.read_bytes())
    ops = HandLab(spec, lab, store, control)
    try:
        if undo:
            broken = await undo_fault(ops, kind, path)
            say(f"{kind} undone: {_describe(broken)}")
            return
        assert fault is not None
        if kind == "reload-storm":
            await control.set_up(spec)  # the domains' names (they exist already: nothing is changed)
        broken = await apply_fault(ops, fault, path)
        say(f"{kind} applied: {_describe(broken)}" + (f"; undone in {duration:g} s" if duration and
                                                       FAULTS[kind].undo else ""))
        if duration and FAULTS[kind].undo is not None:
            await asyncio.sleep(duration)
            broken = await undo_fault(ops, kind, path)
            say(f"{kind} undone: {_describe(broken)}")
    finally:
        await control.close()
        await store.close()


def _describe(broken: Any) -> str:
    if isinstance(broken, Squatter):
        return f"{len(broken.taken)} address(es) squatted"
    if isinstance(broken, int):
        return f"{broken} change(s) made"
    if broken is None:
        return "nothing to mend"
    return describe(broken) or "nothing selected"

