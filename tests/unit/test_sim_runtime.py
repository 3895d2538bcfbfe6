"""The SimPy runtime bridge behaves like asyncio where agents can tell, on a virtual clock."""

from __future__ import annotations

import pytest

from foundation.ports import Cancelled
from sim.adapters.runtime import SimRuntime, TaskFailed


def test_sleep_advances_virtual_time_only():
    rt = SimRuntime()

    async def main():
        await rt.sleep(3600)
        return rt.now()

    assert rt.run_until_complete(main()) == 3600


def test_tasks_interleave_in_time_order_and_join_returns_results():
    rt = SimRuntime()
    order = []

    async def worker(name, delay):
        await rt.sleep(delay)
        order.append((rt.now(), name))
        return name.upper()

    async def main():
        tasks = [rt.spawn(worker(n, d), name=n) for n, d in [("b", 2), ("a", 1), ("c", 3)]]
        return [await t.join() for t in tasks]

    assert rt.run_until_complete(main()) == ["B", "A", "C"]
    assert order == [(1, "a"), (2, "b"), (3, "c")]


def test_cancel_raises_cancelled_at_the_await_and_cleanup_runs():
    rt = SimRuntime()
    log = []

    async def sleeper():
        try:
            await rt.sleep(100)
        except Cancelled:
            log.append(("cancelled at", rt.now()))
            raise
        finally:
            log.append("cleanup")

    async def main():
        task = rt.spawn(sleeper(), name="sleeper")
        await rt.sleep(5)
        task.cancel()
        with pytest.raises(Cancelled):
            await task.join()
        return rt.now()

    assert rt.run_until_complete(main()) == 5
    assert log == [("cancelled at", 5), "cleanup"]


def test_cancel_before_start_and_self_cancel():
    rt = SimRuntime()
    ran = []

    async def never():
        ran.append("never")

    async def self_cancelling():
        me = rt.current
        me.cancel()
        await rt.sleep(1)
        ran.append("after sleep")

    async def main():
        early = rt.spawn(never(), name="early")
        early.cancel()
        with pytest.raises(Cancelled):
            await early.join()
        selfish = rt.spawn(self_cancelling(), name="self")
        with pytest.raises(Cancelled):
            await selfish.join()

    rt.run_until_complete(main())
    assert ran == []


def test_queue_is_fifo_and_a_cancelled_getter_loses_no_item():
    rt = SimRuntime()

    async def main():
        q = rt.queue()
        got = []

        async def getter():
            got.append(await q.get())

        doomed = rt.spawn(getter(), name="doomed")
        await rt.sleep(1)
        q.put_nowait("first")  # handed to the doomed getter ...
        doomed.cancel()  # ... which is cancelled before it resumes
        with pytest.raises(Cancelled):
            await doomed.join()
        q.put_nowait("second")
        assert [await q.get(), await q.get()] == ["first", "second"]
        with pytest.raises(IndexError):
            q.get_nowait()
        return got

    assert rt.run_until_complete(main()) == []


def test_wait_for_times_out_and_cancels_the_inner_work():
    rt = SimRuntime()
    state = []

    async def slow():
        try:
            await rt.sleep(10)
            state.append("finished")
        except Cancelled:
            state.append("cancelled")
            raise

    async def main():
        assert await rt.wait_for(rt.sleep(1), 5) is None
        with pytest.raises(TimeoutError):
            await rt.wait_for(slow(), 2)
        return rt.now()

    assert rt.run_until_complete(main()) == 3
    assert state == ["cancelled"]


def test_event_wakes_every_waiter():
    rt = SimRuntime()

    async def main():
        flag = rt.event()
        woken = []

        async def waiter(i):
            await flag.wait()
            woken.append((i, rt.now()))

        tasks = [rt.spawn(waiter(i), name=f"w{i}") for i in range(3)]
        await rt.sleep(4)
        flag.set()
        for t in tasks:
            await t.join()
        await flag.wait()  # already set: returns at once
        return woken

    assert rt.run_until_complete(main()) == [(0, 4), (1, 4), (2, 4)]


def test_an_unjoined_failing_task_stops_the_run_loudly():
    rt = SimRuntime()

    async def buggy():
        await rt.sleep(1)
        raise KeyError("agent bug")

    rt.spawn(buggy(), name="buggy")
    with pytest.raises(TaskFailed, match="buggy"):
        rt.run(until=10)


def test_same_seed_same_random_stream():
    a, b, c = SimRuntime(seed=3), SimRuntime(seed=3), SimRuntime(seed=4)
    draws = [[rt.random.random() for _ in range(5)] for rt in (a, b, c)]
    assert draws[0] == draws[1] != draws[2]
