"""Harness overhead per turn: a turn through the hive vs the same bare ``claude -p`` invocation.

In one run, against one loopback model server:
  - hive: an operator message to an agent → the AgentActor claims it, reads the model override,
    builds the MCP config, runs the real CLI inside the agent's container (``--backend``:
    ``process``, or ``nspawn``: an unprivileged systemd-nspawn container, the CLI entered through
    its namespaces), parses the stream, acknowledges, records the turn — timed from the send to
    the ``turn.ended`` event;
  - bare: the same CLI invocation (same argv: prompt, model, --mcp-config with the hive endpoint,
    allow-list, session handling) started directly on the host with subprocess — the ceiling.
Target: hive at most 1.15 x bare on the process backend, 1.2 x in an nspawn container (median
per turn).

Then the container start: ``create()`` + ``start()`` of a fresh container on the backend
(``--starts`` times, p50/p99; its ``stop()`` and ``destroy()`` aside), and with ``--backend
nspawn`` the process backend's start beside it as the baseline (the two take turns, so a noisy
spell of a shared machine weighs on both alike).

    python benchmarks/turn.py [--backend process|nspawn] [--turns 15] [--starts 50]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hive_actors.containers.base import ContainerBackend, ContainerSpec  # noqa: E402
from hive_actors.containers.registry import BACKENDS  # noqa: E402
from hive_actors.daemon import Daemon  # noqa: E402
from hive_actors.errors import ConfigError  # noqa: E402
from hive_actors.harness import TurnRequest, build_argv, build_env, find_claude  # noqa: E402
from hive_actors.modelserver import ModelServer  # noqa: E402
from hive_actors.protocol import Send  # noqa: E402
from hive_actors.store import EventKind, MessageKind, Role  # noqa: E402
from tests.support.hive import EventWatch, hive_config, start_tree  # noqa: E402
from tests.support.timeout import TIMEOUT  # noqa: E402

TARGETS = {"process": 1.15, "nspawn": 1.2}
"""The most a hive turn may take, as a multiple of the bare CLI's, per backend."""


def hive_turns(tmp: Path, server: ModelServer, turns: int,
               backend: str) -> tuple[list[float], dict[str, object]]:
    times: list[float] = []
    daemon = Daemon(replace(hive_config(tmp, server.url), backend=backend),
                    api_key="loopback-test-key")
    try:
        root = start_tree(daemon, {"alice": Role.AGENT})
    except BaseException:
        daemon.close()
        raise
    try:
        events = EventWatch(daemon.hive.open_store, daemon.hive.bell)
        bus = daemon.hive.directory.get("bus")
        last = 0
        for i in range(turns):
            t0 = time.perf_counter()
            bus.ask(Send("operator", "alice", f"turn {i}", MessageKind.OPERATOR), timeout=30)
            ended = events.wait_for(
                lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice", after=last,
                timeout=120)
            times.append(time.perf_counter() - t0)
            last = ended.id
        # The exact invocation of the hive's last turn, for the bare runs.
        settings = daemon.desk.settings("alice")
        token = daemon.tokens.issue("bench", "agent")
        spec = {
            "mcp": daemon.runtime.mcp_config("alice", token, settings),
            "allowed": settings.allowed_tools,
            "model": settings.model,
            "base_url": daemon.config.model.base_url,
        }
        bare = bare_turns(spec, turns)
    finally:
        root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()
    return times, {"bare": bare}


def container_starts(tmp: Path, backends: list[str], starts: int,
                     warmup: int = 2) -> dict[str, list[float]]:
    """ms of ``create()`` + ``start()`` of a fresh container, per backend, the backends taking
    turns (each container's ``stop()`` and ``destroy()`` not measured)."""
    made: dict[str, ContainerBackend] = {
        name: BACKENDS[name].make(tmp / f"starts-{name}") for name in backends}
    times: dict[str, list[float]] = {name: [] for name in backends}
    try:
        for i in range(warmup + starts):
            for name, backend in made.items():
                agent = f"s{i}"
                t0 = time.perf_counter()
                backend.create(agent, ContainerSpec())
                backend.start(agent)
                t1 = time.perf_counter()
                backend.stop(agent)
                backend.destroy(agent, keep_state=False)
                if i >= warmup:
                    times[name].append((t1 - t0) * 1000)
    finally:
        for backend in made.values():
            backend.close()
    return times


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def bare_turns(spec: dict[str, object], turns: int) -> list[float]:
    claude = find_claude()
    times = []
    with tempfile.TemporaryDirectory() as home:
        env = {"CLAUDE_CONFIG_DIR": f"{home}/claude", "HOME": home, "TMPDIR": f"{home}/tmp"}
        os.makedirs(env["TMPDIR"])
        session = str(uuid.uuid4())
        for i in range(turns):
            req = TurnRequest(
                prompt=f"1 new message(s) for alice:\n\n--- message {i} from operator "
                       f"(operator)\nturn {i}",
                model=str(spec["model"]),
                session_id=session,
                resume=i > 0,
                base_url=str(spec["base_url"]),
                api_key="loopback-test-key",
                env=env,
                mcp_config=spec["mcp"],  # type: ignore[arg-type]
                allowed_tools=spec["allowed"],  # type: ignore[arg-type]
                auto_compact=False,
            )
            mcp_file = Path(env["TMPDIR"]) / "mcp.json"
            mcp_file.write_text(json.dumps(req.mcp_config))
            argv = build_argv(req, claude.path, str(mcp_file))
            t0 = time.perf_counter()
            subprocess.run(argv, env=build_env(req, os.environ), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                           timeout=120)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(TARGETS), default="process",
                        help="where the hive's agent runs (default: process)")
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--starts", type=int, default=50,
                        help="container starts measured per backend (default: 50)")
    args = parser.parse_args()
    if args.backend == "nspawn":
        from hive_actors.containers.nspawn import preflight

        try:
            preflight()
        except ConfigError as exc:
            sys.exit(f"benchmarks/turn.py --backend nspawn cannot run here: {exc}")
    os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    print(f"parameters: backend={args.backend} turns={args.turns} (each side; the first turn of "
          f"each is a warm-up) starts={args.starts} (per backend, after 2 warm-ups)")
    with ModelServer() as server, tempfile.TemporaryDirectory() as tmp:
        hive, extra = hive_turns(Path(tmp), server, args.turns + 1, args.backend)
        backends = list(dict.fromkeys([args.backend, "process"]))
        starts = container_starts(Path(tmp), backends, args.starts)
    bare = extra["bare"]
    assert isinstance(bare, list)
    h, b = statistics.median(hive[1:]), statistics.median(bare[1:])
    print(f"hive turn  median {h * 1000:8.1f} ms   (send -> turn.ended, {args.backend} container)")
    print(f"bare claude median {b * 1000:8.1f} ms   (same argv, subprocess.run on the host)")
    print(f"ratio hive/bare: {h / b:.3f} (target <= {TARGETS[args.backend]:g})")
    for name in backends:
        what = "baseline" if name != args.backend else "create+start"
        print(f"container start {name:<8} p50 {percentile(starts[name], 50):8.1f} ms   "
              f"p99 {percentile(starts[name], 99):8.1f} ms   ({what}, n={len(starts[name])})")
    if args.backend != "process":
        ratio = percentile(starts[args.backend], 50) / percentile(starts["process"], 50)
        print(f"ratio start {args.backend}/process p50: {ratio:.2f}")


if __name__ == "__main__":
    main()
