"""The other crash sources take the watcher's path: a process container killed under its agent
(``kill -9`` of the keeper) and a stalled agent (a turn past its deadline, a silent harness)
become a ContainerCrash, an ``agent.crashed`` event, a restart and the manager's notice.
Real process containers, the real claude CLI, the loopback model."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hive_actors.agent.notices import notice_text
from hive_actors.daemon import Daemon
from hive_actors.store import Event, EventKind, MessageKind, Role
from hive_actors.watcher.messages import agent_service
from tests.support.hive import EventWatch, running_hive, send
from tests.support.timeout import TIMEOUT


def crashed(events: EventWatch, agent: str, after: int = 0) -> Event:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_CRASHED and e.agent == agent,
                           after=after)


def restarting(events: EventWatch, agent: str, after: int = 0) -> Event:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING and e.agent == agent,
                           after=after)


def system_message(daemon: Daemon, events: EventWatch, manager: str) -> str:
    sent = events.wait_for(lambda e: e.kind == EventKind.MESSAGE_SENT and e.agent == manager
                           and e.payload["from"] == "hive")
    with daemon.hive.open_store() as store:
        message = store.messages.get(sent.payload["id"])
    assert message.kind == MessageKind.SYSTEM
    return notice_text(str(message.body))  # the structured notice's sentence


def test_a_killed_keeper_is_a_crash_of_its_epoch(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT},
                      backoff_min=0.05, backoff_jitter=0.0) as (daemon, _root, _model, events):
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload["to"] == "idle")
        first = daemon.backend.status("alice")
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        crash = crashed(events, "alice")
        assert {k: crash.payload[k] for k in ("source", "result", "signal", "exit_status",
                                             "epoch")} == {
            "source": "backend", "result": "signal", "signal": 9, "exit_status": None,
            "epoch": 1,
        }
        restart = restarting(events, "alice", after=crash.id)
        notice = "alice crashed: signal SIGKILL (9); restart 1 of 5 in 60 s; next try in 0.05 s"
        assert restart.payload["notice"] == notice
        assert system_message(daemon, events, "boss") == notice
        # A new container (a new keeper) for epoch 2.
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload["to"] == "idle", after=restart.id)
        again = daemon.backend.status("alice")
        assert again.state == "running" and again.pid != first.pid
        alice = daemon.hive.directory.get(agent_service("alice"))
        assert alice.proxy().epoch.get(timeout=TIMEOUT) == 2


def test_a_turn_past_its_deadline_is_a_stalled_crash(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}, turn_deadline=3.0,
                      backoff_min=0.05, backoff_jitter=0.0) as (daemon, _root, _model, events):
        send(daemon, "alice", "@sleep 30\nthink for a long time")
        crash = crashed(events, "alice")
        assert (crash.payload["source"], crash.payload["result"]) == ("stall", "stalled")
        assert crash.payload["detail"].endswith("ran past its deadline of 3 s")
        restart = restarting(events, "alice", after=crash.id)
        assert restart.payload["reason"].startswith("stalled (turn alice-1-")
        body = system_message(daemon, events, "boss")
        assert body.startswith("alice crashed: stalled (turn alice-1-"), body
        assert body.endswith("ran past its deadline of 3 s); restart 1 of 5 in 60 s; "
                             "next try in 0.05 s"), body


def test_a_silent_harness_is_a_stalled_crash(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}, heartbeat_timeout=3.0,
                      backoff_min=0.05, backoff_jitter=0.0) as (daemon, _root, _model, events):
        send(daemon, "alice", "@sleep 30\nthink without a word")
        crash = crashed(events, "alice")
        assert (crash.payload["source"], crash.payload["result"]) == ("stall", "stalled")
        assert "no output from the harness" in crash.payload["detail"]
        assert crash.payload["detail"].endswith("heartbeat timeout 3 s")
        restart = restarting(events, "alice", after=crash.id)
        assert restart.payload["reason"] == f"stalled ({crash.payload['detail']})"
        assert restart.payload["told"] == "operator"  # no manager in this hive
