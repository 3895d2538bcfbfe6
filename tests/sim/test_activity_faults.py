"""Activity atomicity under the sim Store's faults: control-service workers change apps and members while their
etcd clients are partitioned, the server goes down, answers come after the deadline (applied or not) and workers
crash between and during attempts; afterwards, revision by revision of the store's history, 0 changes without a
record, 0 records without a change, and the kept daily counts equal a recount from the records."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict

import pytest

from control import activity as a
from control import members as m
from control.auth import Principal
from foundation.ports import Compare, PutOp, StoreUnavailable
from foundation.ports import control as port
from foundation.ports.runtime import Cancelled
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

APPS = [m.Resource("app", f"app{i}") for i in range(3)]
USERS = ["bob", "carol", "dave", "erin"]
OWNER = Principal("alice", "user")
CHANGES = ("/test/apps/", m.MEMBERS)  # the prefixes whose writes are changes that must carry a record


def app_key(app: m.Resource) -> str:
    return f"/test/apps/{app.name}"


async def scale(store, rt, app: m.Resource, request_id: str) -> None:
    """A toy mutating call: replicas + 1 by CAS, its activity in the same transaction."""
    for _ in range(8):
        kv = await store.get(app_key(app))
        replicas = json.loads(kv.value)["replicas"]
        write = a.activity_ops(OWNER, m.Action.APP_SCALE, app, f"replicas {replicas + 1}", rt.wall_time(),
                               request_id=request_id)
        result = await store.txn([Compare.mod_is(kv.key, kv.mod_revision), *write.compares],
                                 [PutOp(kv.key, json.dumps({"replicas": replicas + 1}).encode()), *write.ops])
        if result.succeeded:
            return
    raise port.Conflict("kept changing")


class Faults:
    """The run's counters, to show the faults were really hit."""

    def __init__(self) -> None:
        self.unavailable = 0
        self.refused = 0
        self.done = 0
        self.crashes = 0
        self.outages = 0
        self.partitions = 0


async def worker(rt, store, name: str, faults: Faults, operations: int) -> None:
    members = m.Members(store, rt)
    random = rt.random
    for n in range(operations):
        request_id = f"{name}-{n}"
        app = random.choice(APPS)
        user = random.choice(USERS)
        role = random.choice(["guest", "reporter", "developer", "master"])
        op = random.choice(["scale", "add", "change", "remove"])
        for _attempt in range(6):  # the same request id on every attempt, as a client retrying a call
            try:
                if op == "scale":
                    await scale(store, rt, app, request_id)
                elif op == "add":
                    await members.add(OWNER, app, user, role, request_id=request_id)
                elif op == "change":
                    await members.change(OWNER, app, user, role, request_id=request_id)
                else:
                    await members.remove(OWNER, app, user, request_id=request_id)
                faults.done += 1
                break
            except StoreUnavailable:
                faults.unavailable += 1
                await rt.sleep(random.uniform(0.05, 0.5))
            except port.ControlError:  # AlreadyExists after an ambiguous success, NotFound, Conflict: no write
                faults.refused += 1
                break
        await rt.sleep(random.uniform(0.0, 0.2))


async def run(rt, server: MemoryStore) -> Faults:
    """Set up three apps, then four workers under faults until they finish; the counters of what happened."""
    faults = Faults()
    setup = server.client("setup")
    for app in APPS:
        compares, puts = m.owner_ops(app, "alice", rt.wall_time())
        write = a.activity_ops(OWNER, m.Action.APP_CREATE, app, "created", rt.wall_time(), request_id=f"c-{app.name}")
        assert (await setup.txn([*compares, *write.compares],
                                [PutOp(app_key(app), b'{"replicas":1}'), *puts, *write.ops])).succeeded
    random = rt.random
    # Some answers come after the deadline: applied or not, the worker cannot tell (it retries).
    clients = {f"w{i}": server.client(f"w{i}", latency=0.02, jitter=0.05, timeout=0.06) for i in range(4)}
    tasks = {name: rt.spawn(worker(rt, clients[name], name, faults, 40), name=name) for name in clients}

    async def cut(client, seconds: float) -> None:
        client.partition()
        await rt.sleep(seconds)
        client.heal()

    healers = []
    generation = 0
    while any(not t.done() for t in tasks.values()):
        await rt.sleep(random.uniform(0.1, 1.0))
        fault = random.choice(["partition", "outage", "crash", "none"])
        victim = random.choice(sorted(tasks))
        if fault == "crash" and not tasks[victim].done():
            tasks[victim].cancel()  # the control service dies, maybe mid-request; a new one takes over
            with contextlib.suppress(Cancelled):
                await tasks[victim].join()
            faults.crashes += 1
            generation += 1
            new = f"{victim}g{generation}"
            clients[victim] = server.client(new, latency=0.02, jitter=0.05, timeout=0.06)
            tasks[victim] = rt.spawn(worker(rt, clients[victim], new, faults, 10), name=new)
        elif fault == "outage":
            faults.outages += 1
            server.set_available(False)
            await rt.sleep(random.uniform(0.05, 0.5))
            server.set_available(True)
        elif fault == "partition":
            faults.partitions += 1
            healers.append(rt.spawn(cut(clients[victim], random.uniform(0.1, 1.0)), name=f"cut-{victim}"))
    for task in [*tasks.values(), *healers]:
        await task.join()
    return faults


def violations(server: MemoryStore) -> tuple[list[str], int]:
    """Revision by revision: a change without exactly one record and one count, or a record without a change;
    and the number of records."""
    by_revision: dict[int, list] = defaultdict(list)
    for event in server.history():
        by_revision[event.revision].append(event)
    problems, records = [], 0
    for revision, events in by_revision.items():
        changed = [e for e in events if e.kv.key.startswith(CHANGES)]
        logged = [e for e in events if e.kv.key.startswith(a.ACTIVITY) and e.type == "put"]
        counted = [e for e in events if e.kv.key.startswith(a.COUNTS) and e.type == "put"]
        erased = [e for e in events if e.kv.key.startswith((a.ACTIVITY, a.COUNTS)) and e.type == "delete"]
        if len(logged) != (1 if changed else 0) or len(counted) != len(logged) or erased:
            problems.append(f"revision {revision}: {[e.kv.key for e in events]}")
        records += len(logged)
    return problems, records


def test_the_check_catches_a_change_whose_record_is_a_second_transaction():
    """The negative control: a writer that records in a transaction of its own, crashed in between."""
    rt = SimRuntime(seed=1)
    server = MemoryStore(rt, trace=False)
    store = server.client("buggy", latency=0.01)

    async def buggy() -> None:
        await store.put(app_key(APPS[0]), b'{"replicas":2}')
        await rt.sleep(1)  # crashed here
        write = a.activity_ops(OWNER, m.Action.APP_SCALE, APPS[0], "replicas 2", rt.wall_time(), request_id="r1")
        await store.txn([], write.ops)

    async def crash() -> None:
        task = rt.spawn(buggy(), name="buggy")
        await rt.sleep(0.5)
        task.cancel()
        with contextlib.suppress(Cancelled):
            await task.join()

    rt.run_until_complete(crash())
    problems, records = violations(server)
    assert len(problems) == 1 and records == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_change_without_its_record_and_no_record_without_its_change(seed):
    rt = SimRuntime(seed=seed)
    server = MemoryStore(rt, trace=False)
    faults = rt.run_until_complete(run(rt, server))
    problems, records = violations(server)
    assert problems == [] and records > len(APPS)
    again = rt.run_until_complete(a.recount(server.client("reader")))
    assert again.equal and again.records == records and not again.invalid
    # The faults were really hit: failed or ambiguous requests, crashes, outages, partitions.
    assert faults.unavailable > 0 and faults.crashes > 0 and faults.outages > 0 and faults.partitions > 0
    assert faults.done > 20, vars(faults)


def test_the_run_is_deterministic():
    outcomes = []
    for _ in range(2):
        rt = SimRuntime(seed=7)
        server = MemoryStore(rt, trace=False)
        faults = rt.run_until_complete(run(rt, server))
        outcomes.append((vars(faults), server.revision))
    assert outcomes[0] == outcomes[1]
