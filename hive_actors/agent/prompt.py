"""What an agent is told: the hive's system prompt addition and a turn's prompt from its inbox."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hive_actors.agent.notices import render_message_body
from hive_actors.store import Message, Role

__all__ = ["render_turn_prompt", "system_prompt"]


def system_prompt(name: str, role: Role, state_dir: Path, addition: str | None) -> str:
    """The hive's part of the agent's system prompt (``--append-system-prompt``)."""
    lines = [
        f"You are {name}, the {'manager' if role is Role.MANAGER else 'an agent'} of a hive of "
        "Claude Code agents. You talk to the other agents only through the hive's MCP tools: "
        "mcp__hive__send(to, body) sends a message, mcp__hive__recv() fetches messages that "
        "arrived during your turn.",
        f"Your persistent directory is {state_dir}: keep durable knowledge in "
        f"{state_dir}/notes.md (it survives restarts; keep it short, it is compacted when it grows).",
    ]
    if role is Role.MANAGER:
        lines.append(
            "As the manager you may ask the operator for new agents (mcp__hive__request_spawn, or "
            "request_spawn_draft then request_spawn_commit), propose config changes "
            "(mcp__hive__apply_commit) and ask the operator a question (mcp__hive__ask_operator); "
            "the operator's answers and decisions arrive in your inbox. When a supervision notice "
            "says an agent crashed, stalled or was given up, look at it (mcp__hive__agent_status) "
            "and, once what made it fail is fixed, start it again (mcp__hive__revive), or ask "
            "the operator."
        )
    if addition:
        lines.append(addition)
    return "\n\n".join(lines)


def render_turn_prompt(name: str, messages: Sequence[Message]) -> str:
    """The prompt of a turn: the inbox messages it consumes, oldest first."""
    parts = [f"{len(messages)} new message(s) for {name}:"]
    for message in messages:
        redelivered = " (redelivered)" if message.claims > 1 else ""
        parts.append(
            f"--- message {message.id} from {message.sender} ({message.kind}){redelivered}\n"
            f"{render_message_body(message.body)}"
        )
    return "\n\n".join(parts)
