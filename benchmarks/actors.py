"""Message throughput and ask latency: a supervised HiveActor vs raw pykka vs a bare queue.

In one run, for each of
  - a HiveActor running under a Supervisor (the hive's actor base),
  - a raw pykka ThreadingActor (what we build on),
  - a queue.SimpleQueue between two threads (the ceiling),
it measures tell throughput (messages/s, N tells then one ask as a barrier) and ask round-trip
latency (p50/p99 over sequential asks), and prints the ratios supervised/raw and raw/ceiling.
Targets: supervised tell throughput >= 0.9 x raw pykka; supervised ask p99 <= 1.2 x raw pykka.

    python benchmarks/actors.py [--tells 200000] [--asks 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from queue import SimpleQueue
from typing import Any, Callable

import pykka

from hive_actors import lifecycle
from hive_actors.actor import HiveActor
from hive_actors.supervisors import ChildSpec, Supervisor, SupervisorClient, SupervisorFlags


class Counter(HiveActor):
    def __init__(self) -> None:
        super().__init__(name="counter")
        self.count = 0

    def receive(self, message: Any) -> Any:
        if message is None:
            self.count += 1
            return None
        return self.count


class RawCounter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message is None:
            self.count += 1
            return None
        return self.count


def bench_actor(ref: pykka.ActorRef[Any], tells: int, asks: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    for _ in range(tells):
        ref.tell(None)
    ref.ask("count", timeout=60)
    rate = tells / (time.perf_counter() - start)
    lat = []
    for _ in range(asks):
        t0 = time.perf_counter_ns()
        ref.ask("count", timeout=60)
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    return rate, lat


def bench_queue(tells: int, asks: int) -> tuple[float, list[float]]:
    requests: SimpleQueue[Any] = SimpleQueue()
    replies: SimpleQueue[Any] = SimpleQueue()

    def serve() -> None:
        count = 0
        while True:
            msg = requests.get()
            if msg is None:
                count += 1
            elif msg == "stop":
                return
            else:
                replies.put(count)

    thread = threading.Thread(target=serve)
    thread.start()
    start = time.perf_counter()
    for _ in range(tells):
        requests.put(None)
    requests.put("count")
    replies.get()
    rate = tells / (time.perf_counter() - start)
    lat = []
    for _ in range(asks):
        t0 = time.perf_counter_ns()
        requests.put("count")
        replies.get()
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    requests.put("stop")
    thread.join()
    return rate, lat


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tells", type=int, default=200_000)
    parser.add_argument("--asks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"parameters: tells={args.tells} asks={args.asks} rounds={args.rounds} "
          "(median of rounds; latencies in microseconds)")

    sup = Supervisor.start([ChildSpec("counter", Counter.start)], SupervisorFlags(), name="bench")
    assert lifecycle.wait_ready(sup, 30)
    supervised = SupervisorClient(sup).which_children()[0].ref
    raw = RawCounter.start()
    runs: dict[str, Callable[[], tuple[float, list[float]]]] = {
        "supervised HiveActor": lambda: bench_actor(supervised, args.tells, args.asks),
        "raw pykka": lambda: bench_actor(raw, args.tells, args.asks),
        "SimpleQueue ceiling": lambda: bench_queue(args.tells, args.asks),
    }
    results: dict[str, tuple[float, float, float]] = {}
    samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    for _ in range(args.rounds):  # interleaved, so drift hits every contender alike
        for name, fn in runs.items():
            rate, lat = fn()
            samples[name].append((rate, pct(lat, 0.50), pct(lat, 0.99)))
    for name, rows in samples.items():
        results[name] = tuple(statistics.median(col) for col in zip(*rows))  # type: ignore[assignment]
        rate, p50, p99 = results[name]
        print(f"{name:22s} tell {rate:12,.0f} msg/s   ask p50 {p50:7.1f} us   p99 {p99:7.1f} us")
    s, r, q = (results[k] for k in runs)
    print(f"ratio supervised/raw: tell throughput {s[0] / r[0]:.3f} (target >= 0.9), "
          f"ask p50 {s[1] / r[1]:.3f}, ask p99 {s[2] / r[2]:.3f} (target <= 1.2)")
    print(f"ratio raw/ceiling:    tell throughput {r[0] / q[0]:.3f}, "
          f"ask p50 {r[1] / q[1]:.3f}, ask p99 {r[2] / q[2]:.3f}")
    sup.stop(block=True, timeout=30)
    raw.stop(block=True, timeout=30)


if __name__ == "__main__":
    main()
