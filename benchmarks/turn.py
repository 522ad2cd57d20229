"""Harness overhead per turn: a turn through the hive vs the same bare ``claude -p`` invocation.

In one run, against one loopback model server:
  - hive: an operator message to an agent → the AgentActor claims it, reads the model override,
    builds the MCP config, runs the real CLI inside the agent's (process) container, parses the
    stream, acknowledges, records the turn — timed from the send to the ``turn.ended`` event;
  - bare: the same CLI invocation (same argv: prompt, model, --mcp-config with the hive endpoint,
    allow-list, session handling) started directly with subprocess — the ceiling.
Target: hive at most 1.15 x bare (median per turn).

    python benchmarks/turn.py [--turns 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hive_actors.harness import TurnRequest, build_argv, build_env, find_claude  # noqa: E402
from hive_actors.modelserver import ModelServer  # noqa: E402
from hive_actors.protocol import Send  # noqa: E402
from hive_actors.store import EventKind, MessageKind, Role  # noqa: E402
from tests.support.hive import running_hive  # noqa: E402


def hive_turns(tmp: Path, server: ModelServer, turns: int) -> tuple[list[float], dict[str, object]]:
    times: list[float] = []
    with running_hive(tmp, {"alice": Role.AGENT}, server=server) as (daemon, _root, _m, events):
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
    return times, {"bare": bare}


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
    parser.add_argument("--turns", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    print(f"parameters: turns={args.turns} (each side; the first turn of each is a warm-up)")
    with ModelServer() as server, tempfile.TemporaryDirectory() as tmp:
        hive, extra = hive_turns(Path(tmp), server, args.turns + 1)
    bare = extra["bare"]
    assert isinstance(bare, list)
    h, b = statistics.median(hive[1:]), statistics.median(bare[1:])
    print(f"hive turn  median {h * 1000:8.1f} ms   (send -> turn.ended)")
    print(f"bare claude median {b * 1000:8.1f} ms   (same argv, subprocess.run)")
    print(f"ratio hive/bare: {h / b:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
