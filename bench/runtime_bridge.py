"""Bridged coroutine event rate vs raw SimPy event rate, same machine, same run.

Raw: N SimPy generator processes each yield ``env.timeout`` K times.
Bridged: N ``async def`` agents each ``await runtime.sleep`` K times on the sim runtime.
Both process N*K timeout events; the ratio bridged/raw is what the bridge costs.
Also: a producer/consumer pair over the runtime's queue vs a SimPy Store.

Run: .venv/bin/python -m bench.runtime_bridge [--rounds 5]
"""

from __future__ import annotations

import argparse

import simpy

from bench.common import interleaved, median, save, show, timed
from sim.adapters.runtime import SimRuntime

PROCESSES = 1000
STEPS = 100


def raw_simpy() -> int:
    env = simpy.Environment()

    def proc(delay):
        for _ in range(STEPS):
            yield env.timeout(delay)

    for i in range(PROCESSES):
        env.process(proc(1 + i % 7))
    env.run()
    return PROCESSES * STEPS


def bridged() -> int:
    rt = SimRuntime(seed=1)

    async def agent(delay):
        for _ in range(STEPS):
            await rt.sleep(delay)

    for i in range(PROCESSES):
        rt.spawn(agent(1 + i % 7), name=f"a{i}")
    rt.run()
    return PROCESSES * STEPS


MESSAGES = 50_000


def raw_queue() -> int:
    env = simpy.Environment()
    store = simpy.Store(env)

    def producer():
        for i in range(MESSAGES):
            yield store.put(i)
            yield env.timeout(0.001)

    def consumer():
        for _ in range(MESSAGES):
            yield store.get()

    env.process(producer())
    env.process(consumer())
    env.run()
    return MESSAGES


def bridged_queue() -> int:
    rt = SimRuntime(seed=1)
    q = rt.queue()

    async def producer():
        for i in range(MESSAGES):
            q.put_nowait(i)
            await rt.sleep(0.001)

    async def consumer():
        for _ in range(MESSAGES):
            await q.get()

    rt.spawn(producer(), name="producer")
    rt.spawn(consumer(), name="consumer")
    rt.run()
    return MESSAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sleeps = interleaved({"raw": lambda: timed(raw_simpy), "bridged": lambda: timed(bridged)}, args.rounds)
    queues = interleaved({"raw": lambda: timed(raw_queue), "bridged": lambda: timed(bridged_queue)}, args.rounds)
    result = {
        "timeouts": {"events": PROCESSES * STEPS, "raw_per_s": median(sleeps["raw"]),
                     "bridged_per_s": median(sleeps["bridged"]),
                     "ratio": median(sleeps["bridged"]) / median(sleeps["raw"]), "rounds": sleeps},
        "queue": {"messages": MESSAGES, "raw_per_s": median(queues["raw"]),
                  "bridged_per_s": median(queues["bridged"]),
                  "ratio": median(queues["bridged"]) / median(queues["raw"]), "rounds": queues},
    }
    show(f"SimPy bridge: medians of {args.rounds} interleaved rounds", ["workload", "raw SimPy /s", "bridged /s",
                                                                         "bridged ÷ raw"],
         [[f"{PROCESSES} processes × {STEPS} sleeps", result["timeouts"]["raw_per_s"],
           result["timeouts"]["bridged_per_s"], result["timeouts"]["ratio"]],
          [f"queue, {MESSAGES} messages", result["queue"]["raw_per_s"], result["queue"]["bridged_per_s"],
           result["queue"]["ratio"]]])
    print(f"saved {save('runtime_bridge', result)}")


if __name__ == "__main__":
    main()
