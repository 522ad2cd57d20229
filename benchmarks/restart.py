"""A daemon restart with many agents and a backlog of queued mail, beside a cold start.

One hive (``hive serve`` as a subprocess, the process backend, the real ``claude`` CLI against
the project's loopback model server), in one run:

  1. first start: ``--agents`` agents registered, every container and config repository made;
     SIGTERM once all of them are idle;
  2. cold start (the baseline): the same hive started again with no mail: the time until every
     agent is running (idle) again; SIGTERM;
  3. the backlog: ``--backlog`` operator messages for each of ``--backlog-agents`` agents,
     committed to the hive's file while the daemon is down — exactly what acknowledged mail the
     daemon had not delivered yet looks like after it died;
  4. restart: the time until every agent is running again, and until the backlog is delivered
     (every inbox empty, every agent at rest, each message in some turn's prompt).

Prints the parameters, the times, and the ratio restart-to-running / cold-start-to-running.
Nothing leaves loopback.

    python benchmarks/restart.py [--agents 200] [--backlog-agents 20] [--backlog 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hive_actors.store import MessageKind, Role  # noqa: E402
from tests.support.daemon import DaemonProcess, RecordingModel, wait_until  # noqa: E402

RUNNING = ("idle", "busy")


def names(count: int) -> list[str]:
    return [f"agent{i:03d}" for i in range(count)]


def until_running(daemon: DaemonProcess, agents: list[str], timeout: float) -> float:
    """Start the daemon; seconds until every agent in ``agents`` is idle or busy."""
    t0 = time.monotonic()
    daemon.start()
    daemon.wait_ready(timeout)

    def running() -> bool:
        rows = daemon.agents()
        return all(rows.get(a, {}).get("state") in RUNNING for a in agents)

    wait_until(running, timeout, f"{len(agents)} agents running", interval=0.1,
               describe=daemon.describe)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--backlog-agents", type=int, default=20,
                        help="how many of the agents have queued mail at the restart")
    parser.add_argument("--backlog", type=int, default=5, help="queued messages per such agent")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    agents = names(args.agents)
    loaded = agents[: args.backlog_agents]
    print(f"restart benchmark: {args.agents} agents, backlog {args.backlog} message(s) for each "
          f"of {len(loaded)} agents ({args.backlog * len(loaded)} in all)")
    with tempfile.TemporaryDirectory(prefix="hive-restart-") as tmp, RecordingModel() as model:
        daemon = DaemonProcess(Path(tmp), model, log_level="warning")
        try:
            daemon.register({name: Role.AGENT for name in agents})
            first = until_running(daemon, agents, args.timeout)
            daemon.terminate()
            print(f"first start (containers and config repositories made): {first:.2f} s")
            cold = until_running(daemon, agents, args.timeout)
            daemon.terminate()
            print(f"cold start, no backlog: every agent running after {cold:.2f} s")
            with daemon.store() as store:
                sent = {
                    store.messages.send("operator", name, f"backlog {name} {k}",
                                        MessageKind.OPERATOR): name
                    for name in loaded for k in range(args.backlog)
                }
            restart = until_running(daemon, agents, args.timeout)
            t0 = time.monotonic() - restart
            daemon.wait_settled(agents, timeout=args.timeout)
            delivered = time.monotonic() - t0
            missing = [body for body in (f"backlog {n} {k}" for n in loaded
                                         for k in range(args.backlog))
                       if not model.received(body.split()[1], body)]
            daemon.terminate()
        finally:
            daemon.close()
    print(f"restart with backlog: every agent running after {restart:.2f} s; backlog of "
          f"{len(sent)} delivered after {delivered:.2f} s"
          + (f" — {len(missing)} NOT in any prompt: {missing[:5]}" if missing else ""))
    print(f"ratio restart-to-running / cold-start-to-running: {restart / cold:.2f}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
