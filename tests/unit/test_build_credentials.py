"""The fence of a build's registry credentials (control.build_credentials) over the sim store and the real scheduler.

A build attempt's ``build$TASK`` + push secret is a build Caller only while that attempt is current: the
scheduler's move mints a new secret (the old one is refused), a written result ends it, and a corrupt or
missing record refuses rather than crashes. The runtimes' ``secret_hex`` is checked too (format, the sim's
determinism, the real one's independence from the seed).
"""

from __future__ import annotations

import re

from control.build_credentials import build_caller
from control.builds import BuildScheduler
from control.registry_policy import Caller
from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.logic.build_task import Result, Task, TaskError, agent_key, image_repository, result_key, task_key
from foundation.ports import Compare, DeleteOp, PutOp
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore

C1 = "a" * 40
TASK = f"shop@{C1}"
HEX32 = re.compile(r"[0-9a-f]{32}")


class World:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=3)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)
        self.scheduler = BuildScheduler(self.store, self.rt, every=1.0)

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def register(self, *hosts: str) -> None:
        for host in hosts:
            self.run(self.store.txn([], [PutOp(agent_key(host), b"{}")]))

    def unregister(self, host: str) -> None:
        self.run(self.store.txn([], [DeleteOp(agent_key(host))]))

    def queued(self) -> tuple[str, Task]:
        kvs = self.run(self.store.range("/build/tasks/")).kvs
        assert len(kvs) == 1, kvs
        return kvs[0].key.removeprefix("/build/tasks/").partition("/")[0], Task.from_bytes(kvs[0].value)

    def caller(self, username: str, password: str) -> Caller | None:
        return self.run(build_caller(self.store, username, password))


def test_the_current_attempts_secret_is_a_build_caller_for_its_repository_only():
    w = World()
    w.register("build-a")
    assert w.run(w.scheduler.submit("shop", C1)) == TASK
    _, task = w.queued()
    assert HEX32.fullmatch(task.push_secret)
    assert task.push_secret not in repr(task)  # never in a repr (logs, tracebacks)
    caller = w.caller(f"build${TASK}", task.push_secret)
    assert caller == Caller("build", TASK, robot_scope=("image", "shop/shop"), robot_actions=("pull", "push"))
    assert image_repository("shop") == "shop/shop"
    wrong = "0" * 32 if task.push_secret != "0" * 32 else "1" * 32
    for user, password in ((f"build${TASK}", wrong), (f"build${TASK}", task.push_secret.upper()),
                           (f"build${TASK}", ""), (f"build${TASK}", task.push_secret + "0"),
                           (TASK, task.push_secret), (f"robot${TASK}", task.push_secret),
                           (f"build$shop@{'b' * 40}", task.push_secret), ("build$shop@HEAD", task.push_secret),
                           (f"build${TASK}", "é" * 32), ("build$" + "x" * 10_000, task.push_secret)):
        assert w.caller(user, password) is None, (user, password)


def test_after_a_move_the_old_secret_gets_nothing_and_the_new_one_does():
    w = World()
    w.register("build-a", "build-b")
    w.run(w.scheduler.submit("shop", C1))
    home, first = w.queued()
    w.unregister(home)  # its lease expired: the reassigner moves the task, attempt 2
    assert w.run(w.scheduler.reassign_once()) == 1
    heir, second = w.queued()
    assert heir != home and second.attempt == 2
    assert HEX32.fullmatch(second.push_secret) and second.push_secret != first.push_secret
    assert w.caller(f"build${TASK}", first.push_secret) is None  # the zombie's secret: no token
    assert w.caller(f"build${TASK}", second.push_secret) is not None


def test_a_written_result_ends_the_credentials():
    w = World()
    w.register("build-a")
    w.run(w.scheduler.submit("shop", C1))
    host, task = w.queued()
    result = Result(TASK, "done", host, 1, "r/shop/shop:" + C1)
    # As the agent does it: the result written and the task removed in one transaction...
    w.run(w.store.txn([Compare.missing(result_key(TASK))],
                      [PutOp(result_key(TASK), result.to_bytes()), DeleteOp(task_key(host, TASK))]))
    assert w.caller(f"build${TASK}", task.push_secret) is None
    # ...and a result beside a task still queued (a hand-made state) refuses too.
    w.run(w.store.txn([], [PutOp(task_key(host, TASK), task.to_bytes())]))
    assert w.caller(f"build${TASK}", task.push_secret) is None


def test_corrupt_or_missing_records_refuse_without_raising():
    w = World()
    w.register("build-a")
    w.run(w.scheduler.submit("shop", C1))
    host, task = w.queued()
    key = task_key(host, TASK)
    good = task.to_bytes()
    other = Task("cart", "cart", C1, push_secret=task.push_secret).to_bytes()  # another task's record under the key
    no_secret = Task("shop", "shop", C1).to_bytes()
    bad_secret = good.replace(task.push_secret.encode(), b"Z" * 32)
    for raw in (b"{", b"[" * 100_000, b"null", other, no_secret, bad_secret, b'{"app": "shop"}'):
        w.run(w.store.txn([], [PutOp(key, raw)]))
        assert w.caller(f"build${TASK}", task.push_secret) is None, raw[:40]
    w.run(w.store.txn([], [PutOp(key, good)]))
    assert w.caller(f"build${TASK}", task.push_secret) is not None
    for claim in (b"not a host!", b"\xff\xfe", b"build-b"):  # the claim names garbage, or a host without the task
        w.run(w.store.txn([], [PutOp(f"/build/ids/{TASK}", claim)]))
        assert w.caller(f"build${TASK}", task.push_secret) is None, claim
    w.run(w.store.txn([], [DeleteOp(f"/build/ids/{TASK}")]))
    assert w.caller(f"build${TASK}", task.push_secret) is None


def test_a_task_record_validates_its_push_secret():
    base = {"app": "shop", "commit": C1}
    assert Task.parse(base).push_secret == ""
    assert Task.parse({**base, "push_secret": "0f" * 16}).push_secret == "0f" * 16
    for bad in ("0F" * 16, "0f" * 15, "0f" * 17, 12, None, "g" * 32):
        try:
            Task.parse({**base, "push_secret": bad})
        except TaskError as exc:
            assert exc.field == "push_secret" and str(bad) not in str(exc)
        else:
            raise AssertionError(bad)
    task = Task.parse({**base, "push_secret": "0f" * 16})
    assert Task.from_bytes(task.to_bytes()) == task


def test_secret_hex_sim_is_deterministic_and_leaves_the_runs_random_alone_real_is_the_os():
    one, two = SimRuntime(seed=7), SimRuntime(seed=7)
    assert [one.secret_hex() for _ in range(3)] == [two.secret_hex() for _ in range(3)]
    assert one.random.random() == SimRuntime(seed=7).random.random()  # secrets draw from a stream of their own
    assert HEX32.fullmatch(one.secret_hex()) and len(one.secret_hex(8)) == 16
    assert SimRuntime(seed=8).secret_hex() != SimRuntime(seed=7).secret_hex()
    real_a, real_b = AsyncioRuntime(seed=1), AsyncioRuntime(seed=1)
    assert HEX32.fullmatch(real_a.secret_hex())
    assert real_a.secret_hex() != real_b.secret_hex()  # same seed, different secrets: not the Mersenne Twister
