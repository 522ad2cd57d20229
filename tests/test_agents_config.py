"""Agent configuration end to end: two-step spawn, apply_commit review, bad config, notes."""

from __future__ import annotations

import json
from pathlib import Path

from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.protocol import Decide
from hive_actors.store import AgentState, ApprovalKind, EventKind, MessageKind, Role, Store
from tests.support.hive import (
    agent_whose_server_is_gone,
    commit_agent_toml,
    hive_config,
    running_hive,
    send,
)


def tool(tool_name: str, **args: object) -> str:
    return f"@tool {tool_name} {json.dumps(args)}"


def turn_end(events: object, agent: str, after: int = 0) -> object:
    return events.wait_for(  # type: ignore[attr-defined]
        lambda e: e.kind == EventKind.TURN_ENDED and e.agent == agent, after=after)


def test_two_step_spawn_starts_the_agent_from_the_committed_config(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER}) as (daemon, _root, model, events):
        send(daemon, "boss", tool("mcp__hive__request_spawn_draft", name="dora"))
        first = turn_end(events, "boss")
        with daemon.hive.open_store() as store:
            assert store.registry.get("dora").state == AgentState.DRAFT
        proposed = daemon.hive.agent_paths("dora").config / "proposed"
        # The manager edits the draft's config and commits it (here the test plays the manager).
        sha = commit_agent_toml(proposed, 'model = "claude-haiku-test"\n[limits]\nmax_turns = 5\n',
                     "dora: a smaller model")
        send(daemon, "boss", tool("mcp__hive__request_spawn_commit", name="dora", ref=sha))
        turn_end(events, "boss", after=first.id)
        with daemon.hive.open_store() as store:
            (approval,) = store.approvals.pending()
        assert (approval.kind, approval.ref) == ("spawn_commit", sha)
        assert '+model = "claude-haiku-test"' in approval.diff
        daemon.hive.directory.get("approvals").ask(Decide(approval.id, True, "operator"),
                                                   timeout=10)
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "dora"
                        and e.payload.get("to") == "idle")
        send(daemon, "dora", "hello dora")
        end = turn_end(events, "dora")
        assert end.payload["model"] == "claude-haiku-test"
        assert ConfigRepo(daemon.hive.agent_paths("dora")).head("applied") == sha
        with daemon.hive.open_store() as store:
            assert store.approvals.get(approval.id).outcome == "agent starting"


def test_an_invalid_config_is_refused_before_it_reaches_the_operator(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as (
        daemon, _root, _model, events,
    ):
        send(daemon, "alice", "wake up")  # alice's config repo exists once she ran
        turn_end(events, "alice")
        proposed = daemon.hive.agent_paths("alice").config / "proposed"
        sha = commit_agent_toml(proposed, '[bash]\nallow = ["git ("]\n', "broken pattern")
        send(daemon, "boss", tool("mcp__hive__apply_commit", name="alice", ref=sha))
        turn_end(events, "boss")
        events.wait_for(lambda e: e.kind == EventKind.TURN_LOG and e.agent == "boss"
                        and "allow[0]" in e.payload["line"] and "not a pattern" in e.payload["line"])
        with daemon.hive.open_store() as store:
            assert store.approvals.pending() == []


def test_an_agent_whose_config_no_longer_validates_is_given_up_with_the_reason(
    tmp_path: Path,
) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER}, agent_restarts=1, backoff_min=0.05,
                      backoff_max=0.1) as (daemon, _root, _model, events):
        server = agent_whose_server_is_gone(daemon, tmp_path, "eve")
        from hive_actors.agent.supervisor import SpawnAgent

        daemon.hive.directory.get("agents").tell(SpawnAgent("eve"))
        given_up = events.wait_for(lambda e: e.kind == EventKind.AGENT_GIVEN_UP
                                   and e.agent == "eve")
        reason = given_up.payload["reason"]
        assert "agent.toml" in reason and "[mcp.tools]" in reason and str(server) in reason, reason
        with daemon.hive.open_store() as store:
            assert store.registry.get("eve").state == AgentState.GIVEN_UP

        def given_up_notice(e: object) -> bool:
            if not (getattr(e, "kind", "") == EventKind.MESSAGE_SENT
                    and getattr(e, "agent", "") == "boss"
                    and getattr(e, "payload", {}).get("from") == "hive"):
                return False
            with daemon.hive.open_store() as store:
                return "given up" in store.messages.get(e.payload["id"]).body  # type: ignore[attr-defined]

        told = events.wait_for(given_up_notice)
        with daemon.hive.open_store() as store:
            notice = store.messages.get(told.payload["id"])
        assert notice.kind == MessageKind.SYSTEM
        assert "eve given up" in notice.body and "not an executable file" in notice.body, notice.body


def test_notes_past_the_threshold_are_compacted_by_a_secondary_session(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, model, events):
        # Her state dir is made as she starts: wait until she is up.
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload["to"] == "idle")
        notes = daemon.hive.agent_paths("alice").state / "notes.md"
        lines = [f"- fact {i}: the build uses make" for i in range(400)] * 2
        notes.write_text("\n".join(lines) + "\n")
        before = notes.stat().st_size
        assert before > daemon.runtime.notes_threshold
        send(daemon, "alice", "carry on")
        done = events.wait_for(lambda e: e.kind == EventKind.NOTES_COMPACTED and e.agent == "alice")
        assert done.payload["outcome"] == "compacted", done.payload
        assert done.payload["before"] == before and done.payload["after"] < before
        text = notes.read_text()
        assert text.startswith("# Notes (compacted)") and "fact 0:" in text
        assert not notes.with_name("notes.md.old").exists()
        assert any(r.kind == "notes-compaction" for r in model.requests)


def test_a_missing_cli_gives_the_agent_up_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    from dataclasses import replace

    from hive_actors.daemon import Daemon
    from hive_actors.modelserver import ModelServer
    from hive_actors.supervisors.root import start_root
    from tests.support.hive import EventWatch, hive_config

    with ModelServer() as model:
        config = hive_config(tmp_path, model.url, agent_restarts=0)
        config = replace(config, model=replace(config.model, claude_path=str(tmp_path / "nope")))
        daemon = Daemon(config, api_key="k")
        with daemon.hive.open_store() as store:
            store.registry.register("alice", role=Role.AGENT)
        children, flags = daemon.tree()
        root = start_root(children, flags, ready_timeout=60)
        try:
            events = EventWatch(daemon.hive.open_store, daemon.hive.bell)
            given_up = events.wait_for(lambda e: e.kind == EventKind.AGENT_GIVEN_UP)
            reason = given_up.payload["reason"]
            assert str(tmp_path / "nope") in reason and "claude" in reason, reason
            with daemon.hive.open_store() as store:
                assert store.registry.get("alice").state == AgentState.GIVEN_UP
        finally:
            root.stop(block=True, timeout=60)
            daemon.close()


def test_a_required_mcp_server_that_fails_fails_the_turn(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, _model, events):
        send(daemon, "alice", "first")
        first = turn_end(events, "alice")
        assert first.payload["outcome"] == "ok"
        proposed = daemon.hive.agent_paths("alice").config / "proposed"
        sha = commit_agent_toml(proposed, '[mcp.broken]\ncommand = "/bin/false"\nrequired = true\n',
                     "a server that cannot start")
        daemon.desk.repo("alice").apply(sha)
        from hive_actors.agent.supervisor import StopAgent

        agents = daemon.hive.directory.get("agents")
        agents.ask(StopAgent("alice"), timeout=30)
        agents.ask(__import__("hive_actors.agent.supervisor", fromlist=["x"]).ReviveAgent("alice"),
                   timeout=60)
        send(daemon, "alice", "second")
        end = turn_end(events, "alice", after=first.id)
        assert end.payload["outcome"] == "error", end.payload
        assert "required MCP server(s) failed to start: broken" in end.payload["error"]
        with daemon.hive.open_store() as store:
            assert store.messages.inbox_depth("alice") == 1  # released for the next turn


def test_an_approval_decided_as_the_hive_went_down_is_carried_out_when_it_starts(
    tmp_path: Path,
) -> None:
    """The decision commits; applying the config is the supervisor's, afterwards. A hive that
    went down in between applies it when it starts again, before the agent runs on it, and
    records the outcome on the approval."""
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as (
        daemon, _root, _model, events,
    ):
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload.get("to") == "idle")
        proposed = daemon.hive.agent_paths("alice").config / "proposed"
        sha = commit_agent_toml(proposed, 'model = "claude-haiku-test"\n', "alice: a smaller model")
        with daemon.hive.open_store() as store:
            approval = store.approvals.request(ApprovalKind.APPLY_COMMIT, "alice", ref=sha,
                                               requested_by="boss")
    # The hive is down; the operator's decision was committed just before it went down.
    with Store.open(hive_config(tmp_path, "http://127.0.0.1:9").db_path) as store:
        store.approvals.decide(approval.id, True, "operator")
        assert [a.id for a in store.approvals.outstanding()] == [approval.id]
    with running_hive(tmp_path, {}) as (daemon, _root, _model, events):
        done = events.wait_for(lambda e: e.kind == EventKind.APPROVAL_CARRIED_OUT)
        assert done.payload == {"id": approval.id, "kind": "apply_commit",
                                "outcome": "carried out when the hive started again"}
        assert ConfigRepo(daemon.hive.agent_paths("alice")).head("applied") == sha
        send(daemon, "alice", "hello alice")
        ended = turn_end(events, "alice")
        assert ended.payload["model"] == "claude-haiku-test"  # type: ignore[attr-defined]
        with daemon.hive.open_store() as store:
            carried = store.approvals.get(approval.id)
            assert store.approvals.outstanding() == []
        assert carried.carried_out is not None and carried.outcome == done.payload["outcome"]
