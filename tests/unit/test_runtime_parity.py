"""The same bodies on both runtimes: cancellation, timeouts, queues and events behave alike.

Durations are short real seconds so that the asyncio runtime runs them quickly;
the sim runtime runs them on its virtual clock. Assertions are about order and
outcome, never about exact wall time.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from foundation.adapters.asyncio_runtime import AsyncioRuntime
from foundation.ports import Cancelled, TaskFailed
from sim.adapters.runtime import SimRuntime


@pytest.fixture(params=["sim", "asyncio"])
def run(request):
    def runner(body):
        if request.param == "sim":
            rt = SimRuntime(seed=1)
            return rt.run_until_complete(body(rt), limit=100)
        return asyncio.run(asyncio.wait_for(body(AsyncioRuntime(seed=1)), 20))

    return runner


def test_two_cancels_deliver_one_cancelled_and_cleanup_completes(run):
    async def body(rt):
        log = []

        async def victim():
            try:
                await rt.sleep(10)
            except Cancelled:
                log.append("cancelled")
                await rt.sleep(0.01)  # cleanup that awaits must not be cancelled again
                log.append("cleaned up")
                return "swallowed"

        task = rt.spawn(victim(), name="victim")
        await rt.sleep(0.001)
        task.cancel()
        task.cancel()
        return log, await task.join()

    assert run(body) == (["cancelled", "cleaned up"], "swallowed")


def test_cancelling_the_waiter_of_wait_for_propagates_even_during_inner_cleanup(run):
    async def body(rt):
        async def slow_to_die():
            try:
                await rt.sleep(10)
            except Cancelled:
                await rt.sleep(0.5)
                raise

        async def outer():
            try:
                await rt.wait_for(slow_to_die(), 0.1)
            except TimeoutError:
                return "timeout"

        task = rt.spawn(outer(), name="outer")
        await rt.sleep(0.3)  # the timeout fired; wait_for is waiting for the inner cleanup
        task.cancel()
        try:
            return await task.join()
        except Cancelled:
            return "cancelled"

    assert run(body) == "cancelled"


def test_wait_for_returns_the_result_or_raises_timeout_after_cancelling(run):
    async def body(rt):
        state = []

        async def quick():
            await rt.sleep(0.01)
            return 42

        async def slow():
            try:
                await rt.sleep(10)
            except Cancelled:
                state.append("inner cancelled")
                raise

        result = await rt.wait_for(quick(), 1)
        with pytest.raises(TimeoutError):
            await rt.wait_for(slow(), 0.05)
        return result, state

    assert run(body) == (42, ["inner cancelled"])


def test_queue_fifo_and_cancelled_getter_keeps_no_item(run):
    async def body(rt):
        q = rt.queue()
        doomed = rt.spawn(q.get(), name="doomed")
        await rt.sleep(0.01)
        doomed.cancel()
        with pytest.raises(Cancelled):
            await doomed.join()
        for item in ("a", "b", "c"):
            q.put_nowait(item)
        got = [await q.get(), q.get_nowait(), await q.get()]
        with pytest.raises(IndexError):
            q.get_nowait()
        return got

    assert run(body) == ["a", "b", "c"]


def test_event_wakes_every_waiter_once_set(run):
    async def body(rt):
        flag = rt.event()
        woken = []

        async def waiter(i):
            await flag.wait()
            woken.append(i)

        tasks = [rt.spawn(waiter(i), name=f"w{i}") for i in range(3)]
        await rt.sleep(0.01)
        assert woken == [] and not flag.is_set()
        flag.set()
        for task in tasks:
            await task.join()
        return sorted(woken)

    assert run(body) == [0, 1, 2]


def test_clock_moves_forward_with_sleep(run):
    async def body(rt):
        start, wall = rt.now(), rt.wall_time()
        await rt.sleep(0.05)
        return rt.now() - start, rt.wall_time() - wall

    elapsed, wall_elapsed = run(body)
    assert elapsed >= 0.05 and wall_elapsed >= 0.04


# ---- a failed task nobody awaits: loud on both runtimes (issue 10's divergence)


@pytest.fixture(params=["sim", "asyncio"])
def runtime(request):
    """A fresh runtime of each kind, run through its own ``run_until_complete``."""
    return SimRuntime(seed=1) if request.param == "sim" else AsyncioRuntime(seed=1)


async def _fails_soon(rt, message="membership lost"):
    await rt.sleep(0.01)
    raise ValueError(message)


def test_a_failed_task_nobody_joins_fails_the_run(runtime):
    async def main():
        runtime.spawn(_fails_soon(runtime), name="keep-registered")
        await runtime.sleep(0.05)
        return "main done"

    with pytest.raises(TaskFailed, match=r"keep-registered.*membership lost") as raised:
        runtime.run_until_complete(main(), limit=10)
    assert isinstance(raised.value.__cause__, ValueError)


def test_a_failure_some_task_awaits_is_that_task_s_error_only(runtime):
    async def main():
        task = runtime.spawn(_fails_soon(runtime), name="joined")
        with pytest.raises(ValueError, match="membership lost"):
            await task.join()
        return "handled"

    assert runtime.run_until_complete(main(), limit=10) == "handled"


def test_joining_after_the_failure_still_counts_as_observed(runtime):
    async def main():
        task = runtime.spawn(_fails_soon(runtime), name="joined-late")
        await runtime.sleep(0.05)  # it has failed by now, unobserved so far
        assert task.done()
        try:
            await task.join()
        except ValueError as exc:
            return str(exc)

    assert runtime.run_until_complete(main(), limit=10) == "membership lost"


def test_a_cancelled_task_is_no_failure(runtime):
    async def main():
        task = runtime.spawn(runtime.sleep(10), name="cancelled")
        await runtime.sleep(0.01)
        task.cancel()
        await runtime.sleep(0.01)
        return task.done()

    assert runtime.run_until_complete(main(), limit=10) is True


def test_the_main_task_s_own_error_comes_after_unjoined_failures(runtime):
    async def main():
        runtime.spawn(_fails_soon(runtime, "background"), name="background")
        await runtime.sleep(0.05)
        raise KeyError("main")

    with pytest.raises(TaskFailed, match="background"):
        runtime.run_until_complete(main(), limit=10)


def test_asyncio_logs_the_unjoined_failure_at_once_with_its_traceback(caplog):
    seen = []
    rt = AsyncioRuntime(seed=1, on_task_failed=lambda task: seen.append((task.name, rt.now())))

    async def main():
        rt.spawn(_fails_soon(rt), name="keep-registered")
        await rt.sleep(0.05)  # a daemon's on_task_failed would stop it here, before main ends
        assert [name for name, _ in seen] == ["keep-registered"]
        assert [r.levelname for r in caplog.records if r.name == "leengine.runtime"] == ["ERROR"]
        return "main done"

    with caplog.at_level(logging.ERROR, logger="leengine.runtime"), pytest.raises(TaskFailed):
        rt.run_until_complete(main(), limit=10)
    (record,) = [r for r in caplog.records if r.name == "leengine.runtime"]
    assert "keep-registered" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "_fails_soon" in caplog.text  # the traceback names where it failed


def test_a_daemon_stops_and_fails_when_a_task_of_its_agent_fails_unjoined():
    from leengine.command import Failed
    from leengine.daemon import agent_runtime, fail_on_task_failures, until_stopped

    async def daemon():
        stop = asyncio.Event()
        runtime = agent_runtime(stop)

        async def agent():  # its membership keeper dies; the agent itself would run forever
            runtime.spawn(_fails_soon(runtime), name="keep-registered")
            await runtime.sleep(3600)

        await asyncio.wait_for(until_stopped(agent(), stop, name="agent"), 10)
        assert stop.is_set()
        fail_on_task_failures(runtime)

    with pytest.raises(Failed, match=r"keep-registered.*membership lost"):
        asyncio.run(daemon())
