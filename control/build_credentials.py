"""The registry credentials of a build attempt: ``build$TASK`` and the task record's push secret.

This is the **fence** against a zombie build agent. The scheduler mints a fresh
``push_secret`` (``Runtime.secret_hex``) when it queues a task and again on every move
(attempt + 1, ``control.builds``); the agent building the task hands the secret to its
Builder, which offers it to the registry's token endpoint as HTTP Basic
``build$TASK:SECRET``. ``build_caller`` answers with a build ``Caller`` (pull and push on
the task's repository ``image_repository(app)`` only; ``control.registry_policy``) only when:

* ``/build/ids/{TASK}`` names a host, and ``/build/tasks/{host}/{TASK}`` is a task record
  that decodes (``Task.from_bytes``) and is that task;
* its ``push_secret`` is not empty and equals the password (``hmac.compare_digest``);
* no ``/build/results/{TASK}`` exists (a finished build pushes nothing more).

Anything else (an unknown or malformed user name, a password that is not 32 hex digits,
a moved task whose old secret is offered, a corrupt record) is ``None``: the endpoint
answers 401 and the zombie's push fails. A token issued before the move stays valid for
its own short lifetime (``control.registry_tokens``): the fence holds for pushes that ask
for a token after the move, which is every push of a build frozen before its push step.

Store errors propagate (the endpoint answers 5xx: etcd being away is not bad credentials).
It reads only: nothing is written. The password is never logged, traced or echoed.
It must not know HTTP, JWT or the etcd client behind the Store port.
"""

from __future__ import annotations

import hmac

from control.registry_policy import Caller
from foundation.logic.build_task import (
    PUSH_SECRET,
    TASK_ID,
    Task,
    TaskError,
    check_host,
    id_key,
    image_repository,
    result_key,
    task_key,
)
from foundation.ports import GetOp, RangeResult, Store

BUILD_USER = "build$"  # the user name prefix of a build attempt's credentials
MAX_USER = 200  # characters: a task id is at most 63 + 1 + 64


async def build_caller(store: Store, username: str, password: str) -> Caller | None:
    """The build ``Caller`` for ``build$TASK`` and the current attempt's push secret; None otherwise."""
    if not isinstance(username, str) or not isinstance(password, str) or len(username) > MAX_USER:
        return None
    task = username.removeprefix(BUILD_USER)
    if task == username or not TASK_ID.fullmatch(task) or not PUSH_SECRET.fullmatch(password):
        return None
    read = await store.txn([], [GetOp(id_key(task)), GetOp(result_key(task))])
    placed, result = (r if isinstance(r, RangeResult) else RangeResult((), 0) for r in read.responses)
    if result.kvs or not placed.kvs:
        return None
    try:
        host = check_host(placed.kvs[0].value.decode("ascii"))
    except (TaskError, UnicodeDecodeError):
        return None
    kv = await store.get(task_key(host, task))
    if kv is None:  # moved between the reads (the claim names the new host now) or finished
        return None
    try:
        record = Task.from_bytes(kv.value)
    except TaskError:
        return None
    if record.id != task or not record.push_secret:
        return None
    if not hmac.compare_digest(record.push_secret.encode(), password.encode()):
        return None
    return Caller("build", task, robot_scope=("image", image_repository(record.app)),
                  robot_actions=("pull", "push"))


__all__ = ["BUILD_USER", "build_caller"]
